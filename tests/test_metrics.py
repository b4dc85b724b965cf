import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from conftest import DIALOGSUM
from dialsum.cli import main
from dialsum.metrics import Scorer

MODES = ["morpheme", "whitespace", "default"]


@pytest.mark.parametrize("mode", MODES)
def test_identical_korean_is_one(mode):
    s = Scorer(mode).score(["철수가 학교에 갔다"], [["철수가 학교에 갔다"]])
    assert s["rouge1"] == s["rouge2"] == s["rougeL"] == 1.0 and s["rouge_sum"] == 3.0


@pytest.mark.parametrize("mode", MODES)
def test_partial_korean_overlap_is_between(mode):
    s = Scorer(mode).score(["철수가 학교에 갔다 오늘"], [["철수가 집에 갔다"]])
    assert 0 < s["rouge1"] < 1 and 0 < s["rougeL"] < 1


@pytest.mark.parametrize("mode", MODES)
def test_decomposed_references_score_like_composed_ones(mode):
    import unicodedata

    text = "철수가 학교에 갔다 ㅋㅋ"
    s = Scorer(mode).score([text], [[unicodedata.normalize("NFD", text)]])
    assert s["rouge_sum"] == 3.0
    assert Scorer(mode).bleu([text], [[unicodedata.normalize("NFD", text)]]) > 0.99


def test_rouge_score_default_tokenizer_really_drops_korean():
    # The trap this module exists for: plain rouge-score gives 0 for identical Korean.
    plain = rouge_scorer.RougeScorer(["rouge1"]).score("철수가 학교에 갔다", "철수가 학교에 갔다")
    assert plain["rouge1"].fmeasure == 0.0


def test_tags_are_whole_tokens():
    tok = Scorer("morpheme").tokenizer
    assert tok.tokenize("#Person1#은 #PhoneNumber#로 전화했다")[:3] == ["#Person1#", "은", "#PhoneNumber#"]
    # the particle after a tag is read as one (cut off from its tag, 는 was the verb 늘다: 늘 ᆫ), in the batch
    # form and one text at a time alike
    want = ["#Person1#", "는", "회의", "에", "가", "었", "다", ".", "#Person2#", "를", "만나", "었", "다"]
    text = "#Person1#는 회의에 갔다. #Person2#를 만났다"
    assert tok.tokenize(text) == want
    assert Scorer("morpheme").tokenizer.tokenize_many(["철수", text]) == [("철수",), tuple(want)]
    assert "#Person2#" in Scorer("whitespace").tokenizer.tokenize("#Person2# 가 왔다")


def _by_hand(pred: list[str], ref: list[str]) -> tuple[float, float, float]:
    def f1(p, r, overlap):
        if not p or not r or not overlap:
            return 0.0
        prec, rec = overlap / len(p), overlap / len(r)
        return 2 * prec * rec / (prec + rec)

    def grams(t, n):
        return Counter(tuple(t[i : i + n]) for i in range(len(t) - n + 1))

    r1 = f1(pred, ref, sum((grams(pred, 1) & grams(ref, 1)).values()))
    p2, q2 = grams(pred, 2), grams(ref, 2)
    r2 = f1(list(p2.elements()), list(q2.elements()), sum((p2 & q2).values()))
    # LCS by dynamic programming
    t = [[0] * (len(ref) + 1) for _ in range(len(pred) + 1)]
    for i in range(len(pred)):
        for j in range(len(ref)):
            t[i + 1][j + 1] = t[i][j] + 1 if pred[i] == ref[j] else max(t[i][j + 1], t[i + 1][j])
    rl = f1(pred, ref, t[-1][-1])
    return r1, r2, rl


@pytest.mark.parametrize(
    "pred, ref",
    [
        ("#Person1#은 내일 오후 3시에 병원 예약을 한다", "#Person1#은 내일 병원 예약을 한다 오후 3시에"),
        ("가 나 다 라 가 나", "나 다 가 나 라"),
        ("완전히 다른 문장", "전혀 겹치지 않음"),
    ],
)
def test_whitespace_mode_equals_rouge_by_hand(pred, ref):
    s = Scorer("whitespace").score([pred], [[ref]])
    r1, r2, rl = _by_hand(pred.split(), ref.split())
    assert s["rouge1"] == pytest.approx(r1, abs=1e-6)
    assert s["rouge2"] == pytest.approx(r2, abs=1e-6)
    assert s["rougeL"] == pytest.approx(rl, abs=1e-6)


def test_default_mode_equals_rouge_score_on_english():
    if (DIALOGSUM / "dev.csv").exists():
        dev = pd.read_csv(DIALOGSUM / "dev.csv").head(100)
        preds = [d.split("\n")[0] for d in dev["dialogue"]]
        refs = list(dev["summary"])
    else:
        preds, refs = ["The cat sat on the mat, didn't it?"], ["A cat was sitting on a mat."]
    ours = Scorer("default").per_row(preds, [[r] for r in refs])
    rs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for i, (p, r) in enumerate(zip(preds, refs)):
        want = rs.score(r, p)
        assert list(ours[i]) == pytest.approx([want[t].fmeasure for t in ("rouge1", "rouge2", "rougeL")], abs=1e-12)


def test_multi_ref_max_and_mean():
    pred, refs = "철수가 학교에 갔다", ["철수가 학교에 갔다", "영희가 집에 왔다"]
    mx = Scorer("whitespace", "max").score([pred], [refs])
    mean = Scorer("whitespace", "mean").score([pred], [refs])
    assert mx["rouge1"] == 1.0
    assert mean["rouge1"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2


def test_remove_tokens_before_scoring():
    s = Scorer("whitespace", remove_tokens=["<s>", "</s>"]).score(
        ["<s> 철수가 학교에 갔다 </s>"], [["철수가 학교에 갔다"]]
    )
    assert s["rouge1"] == 1.0


def test_cli_score_json_last_line(tmp_path, capsys):
    pd.DataFrame({"fname": ["a", "b"], "summary": ["철수가 학교에 갔다", "비가 온다"]}).to_csv(
        tmp_path / "p.csv", index=False
    )
    pd.DataFrame(
        {
            "fname": ["b", "a"],
            "summary1": ["비가 온다", "철수가 학교에 갔다"],
            "summary2": ["눈이 온다", "철수는 집에 있다"],
        }
    ).to_csv(tmp_path / "r.csv", index=False)
    assert main(["score", str(tmp_path / "p.csv"), str(tmp_path / "r.csv"), "--tokenize", "whitespace"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rouge1"] == 1.0 and out["n"] == 2
    assert {"rouge1", "rouge2", "rougeL", "rouge_sum", "bleu", "n"} <= set(out)


def test_cli_score_refuses_missing_fnames(tmp_path, capsys):
    pd.DataFrame({"fname": ["a"], "summary": ["x"]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"fname": ["a", "b", "c"], "summary": ["x", "y", "z"]}).to_csv(tmp_path / "r.csv", index=False)
    assert main(["score", str(tmp_path / "p.csv"), str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert "2 fname(s) missing in predictions" in err and "'b'" in err


@pytest.mark.parametrize(
    "refs, needle",
    [
        ({"fname": ["a", "b"], "summary": ["x", " "]}, "r.csv: fname 'b' has no reference summary"),
        ({"fname": ["a", "b", "b"], "summary": ["x", "y", "z"]}, "r.csv: duplicate fname 'b'"),
    ],
)
def test_cli_score_names_the_reference_row_it_cannot_score(tmp_path, capsys, refs, needle):
    """Both were tracebacks (a ValueError from the scorer, a count mismatch) rather than one line."""
    pd.DataFrame({"fname": ["a", "b"], "summary": ["x", "y"]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(refs).to_csv(tmp_path / "r.csv", index=False)
    assert main(["score", str(tmp_path / "p.csv"), str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


# --- metrics.rouge: rouge, the DialogSum-ko leaderboard's package ------------------------------------------


def _package_rows(scorer: Scorer, preds, refs, agg) -> np.ndarray:
    """The `rouge` package called the way the competition calls it: space-joined tokens, one pair at a time."""
    from rouge import Rouge

    package, out = Rouge(), []
    for p, rs in zip(preds, refs):
        hyp = " ".join(scorer.tokenizer.tokenize(p))
        s = [package.get_scores(hyp, " ".join(scorer.tokenizer.tokenize(r)))[0] for r in rs]
        out.append([agg([x[k]["f"] for x in s]) for k in ("rouge-1", "rouge-2", "rouge-l")])
    return np.array(out)


def test_rouge_package_counts_ngram_sets():
    pred, ref = ["a a a b"], [["a b b b"]]
    assert Scorer("whitespace", rouge="rouge").score(pred, ref)["rouge1"] == 1.0  # {a, b} == {a, b}
    assert Scorer("whitespace").score(pred, ref)["rouge1"] == 0.5  # clipped counts: 2 of 4


def test_rouge_package_rouge_l_is_summary_level():
    # two reference sentences in the opposite order: rouge-score's one LCS covers one of them, the package's
    # union LCS over sentences covers both
    pred, ref = ["가 나 다 . 라 마 바"], [["라 마 바 . 가 나 다"]]
    assert Scorer("whitespace", rouge="rouge").per_row(pred, ref)[0, 2] == pytest.approx(1.0, abs=1e-6)
    assert Scorer("whitespace").per_row(pred, ref)[0, 2] == pytest.approx(3 / 7)  # one LCS of 7 tokens, "." one


def _korean_pairs():
    """LEAD-3 of every sample dialogue, and the same summaries shuffled across dialogues, against the
    references: about 960 real Korean pairs."""
    df = pd.concat([pd.read_csv(f"data/sample/{s}.csv") for s in ("train", "dev")], ignore_index=True)
    lead = [" ".join(d.split("\n")[:3]) for d in df["dialogue"]]
    shuffled = list(df["summary"].sample(frac=1.0, random_state=0))
    return lead + shuffled, [[r] for r in df["summary"]] * 2


@pytest.mark.parametrize("mode", ["morpheme", "whitespace"])
def test_rouge_choice_equals_the_package_on_korean(mode):
    preds, refs = _korean_pairs()
    assert len(preds) >= 900
    scorer = Scorer(mode, rouge="rouge")
    ours = scorer.per_row(preds, refs)
    np.testing.assert_allclose(ours, _package_rows(scorer, preds, refs, np.max), atol=1e-6, rtol=0)
    assert ours[:, 0].mean() > ours[len(preds) // 2 :, 0].mean() > 0  # shuffled summaries still share particles
    assert not np.allclose(ours, Scorer(mode).per_row(preds, refs), atol=1e-3)  # it is another metric


@pytest.mark.parametrize("multi_ref", ["max", "mean"])
def test_rouge_choice_equals_the_package_on_english_three_refs(multi_ref):
    if (DIALOGSUM / "test.csv").exists():
        df = pd.read_csv(DIALOGSUM / "test.csv").head(300)
        preds = [" ".join(d.split("\n")[:3]) for d in df["dialogue"]]
        refs = [list(r) for r in df[["summary1", "summary2", "summary3"]].itertuples(index=False)]
    else:
        preds, refs = ["The cat sat. On the mat, didn't it?"], [["A cat was sitting on a mat.", "A cat sat."]]
    scorer = Scorer("default", multi_ref, rouge="rouge")
    agg = np.max if multi_ref == "max" else np.mean
    np.testing.assert_allclose(scorer.per_row(preds, refs), _package_rows(scorer, preds, refs, agg), atol=1e-6)


def test_rouge_choice_multi_ref_rules():
    pred, refs = ["철수가 학교에 갔다"], [["철수가 학교에 갔다", "영희가 집에 왔다", "철수가 집에 왔다"]]
    mx = Scorer("whitespace", "max", rouge="rouge").per_row(pred, refs)[0]
    mean = Scorer("whitespace", "mean", rouge="rouge").per_row(pred, refs)[0]
    assert mx[0] == pytest.approx(1.0, abs=1e-6)
    assert mean[0] == pytest.approx((1.0 + 0.0 + 1 / 3) / 3, abs=1e-6)  # 1 of 3 unigrams matches the third


def test_rouge_choice_empty_prediction_scores_zero_and_long_sentences_do_not_recurse_out():
    s = Scorer("whitespace", rouge="rouge")
    assert s.per_row(["", ". ."], [["가 나"], ["가 나"]]).tolist() == [[0.0] * 3, [0.0] * 3]
    long = " ".join(f"w{i}" for i in range(1100))  # no ".": one 1100-word sentence, 1100 frames of LCS rebuild
    assert s.per_row([long], [[long + " 끝"]])[0, 2] == pytest.approx(1.0, abs=1e-3)


def test_rouge_setting_reaches_from_params_and_rejects_unknown_values():
    from conftest import stand_in_params
    from dialsum.params import ParamsError

    params = stand_in_params(["m"], metrics={"tokenize": "whitespace", "multi_ref": "mean", "rouge": "rouge"})
    for source in (params, {"metrics": {"tokenize": "whitespace", "rouge": "rouge"}}):
        scorer = Scorer.from_params(source)
        assert scorer.rouge == "rouge" and scorer.score(["a a a b"], [["a b b b"]])["rouge1"] == 1.0
    assert Scorer.from_params(stand_in_params(["m"])).rouge == "rouge-score"
    with pytest.raises(ParamsError, match="metrics.rouge"):
        stand_in_params(["m"], metrics={"rouge": "pyrouge"})


def test_cli_score_rouge_flag(tmp_path, capsys):
    pd.DataFrame({"fname": ["a"], "summary": ["a a a b"]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"fname": ["a"], "summary": ["a b b b"]}).to_csv(tmp_path / "r.csv", index=False)
    args = ["score", str(tmp_path / "p.csv"), str(tmp_path / "r.csv"), "--tokenize", "whitespace"]
    assert main(args + ["--rouge", "rouge"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rouge1"] == 1.0 and out["rouge"] == "rouge"
    assert {"rouge1", "rouge2", "rougeL", "rouge_sum", "bleu", "n"} <= set(out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rouge1"] == 0.5
