"""Issue 22: candidate pools per member (n-best, diverse beams, sampling) and choosing among them (MBR, a
reranker, `auto` that is never below the best member on out-of-fold rows)."""

import numpy as np
import pandas as pd
import pytest

from conftest import micro_entry, spy_references
from dialsum import ensemble as E
from dialsum import generation, models
from dialsum.metrics import CachedTokenizer, Scorer

TEXTS = [
    "#Person1#: 안녕하세요, 내일 오후 3시에 예약할게요. 전화번호는 #PhoneNumber#입니다.",
    "#Person2#: 네, 예약되었습니다. 성함이 어떻게 되세요?",
]
BART, LLAMA = micro_entry("bart"), micro_entry("llama")
TOK = CachedTokenizer("whitespace")


@pytest.fixture(scope="module", params=[BART, LLAMA], ids=["seq2seq", "causal"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("pool")
    models.build_init(request.param, TEXTS, path, seed=0)
    model, tok, family = models.load_for_inference(path)
    tok.padding_side = "left"
    return model, tok, family


DIALOGUES = [TEXTS[i % 2][: 12 + 6 * i] for i in range(5)]
GEN = {"num_beams": 2, "max_new_tokens": 8, "no_repeat_ngram_size": 0}


@pytest.mark.parametrize("method", ["beam", "diverse", "sample"])
def test_pools_are_k_candidates_deterministic_and_start_with_the_plain_summary(tiny, method):
    model, tok, family = tiny
    plain, _ = generation.Summarizer(model, tok, family, GEN, 64)(DIALOGUES, progress=False)
    gen = {**GEN, "candidates": {"k": 2 if method == "beam" else 3, "method": method, "seed": 7}}
    k = gen["candidates"]["k"]
    pool = generation.Summarizer(model, tok, family, gen, 64).pool(DIALOGUES, progress=False)
    again = generation.Summarizer(model, tok, family, gen, 64).pool(DIALOGUES, progress=False)
    assert pool == again  # the same seed, params and data: the same pool, log-probs included
    assert [len(p) for p in pool] == [k] * len(DIALOGUES)
    # candidate 0 is what k = 1 gives (beam: k <= num_beams); every candidate is scored by the raw model
    assert [p[0][0] for p in pool] == plain
    for cands in pool:
        for text, lp, n in cands:
            assert isinstance(text, str) and lp <= 0 and 1 <= n <= GEN["max_new_tokens"]
    if method != "beam":  # the extra candidates are not copies of the first
        assert any(len({c[0] for c in p}) > 1 for p in pool)
    if method == "sample":  # another seed, other samples
        reseeded = {**gen, "candidates": {**gen["candidates"], "seed": 8}}
        other = generation.Summarizer(model, tok, family, reseeded, 64).pool(DIALOGUES, progress=False)
        assert [p[1:] for p in other] != [p[1:] for p in pool]
    else:  # beam-based pools do not depend on how the inputs were batched
        small = generation.Summarizer(model, tok, family, {**gen, "batch_tokens": 1}, 64).pool(
            DIALOGUES, progress=False
        )
        assert [[c[0] for c in p] for p in small] == [[c[0] for c in p] for p in pool]


def test_diverse_groups_penalise_what_earlier_groups_chose():
    """The Hamming penalty: group 1 loses `penalty` per earlier-group beam that chose a token at that
    position; group 0 is untouched, and it records what its beams chose."""
    import torch

    history: dict = {}
    g0 = generation._HammingDiversity(history, ["a"], 0, 2.0, start=1, num_beams=2)
    scores = torch.zeros(2, 5)
    g0(torch.tensor([[0], [0]]), scores)  # position 0: nothing recorded yet
    assert torch.equal(g0(torch.tensor([[0, 3], [0, 4]]), scores), scores)  # position 1; records 3 and 4
    g1 = generation._HammingDiversity(history, ["a"], 1, 2.0, start=1, num_beams=2)
    out = g1(torch.tensor([[0], [0]]), torch.zeros(2, 5))  # group 1 chooses position 0
    assert out[:, 3].tolist() == [-2.0, -2.0] and out[:, 4].tolist() == [-2.0, -2.0] and out[:, 0].tolist() == [0, 0]


def test_summarize_views_writes_a_candidate_index(tiny):
    from dialsum import tta

    model, tok, family = tiny
    aug = tta.Augmenter.from_params({"strategies": [], "num_aug": 1}, 0)
    gen = {**GEN, "candidates": {"k": 3, "method": "sample"}}
    out = generation.Summarizer(model, tok, family, gen, 64).views(["a", "b"], DIALOGUES[:2], aug, "dev")
    assert list(out.columns) == ["fname", "view", "candidate", "summary", "logprob", "tokens"]
    assert out.groupby(["fname", "view"])["candidate"].apply(list).tolist() == [[0, 1, 2], [0, 1, 2]]
    plain = generation.Summarizer(model, tok, family, GEN, 64).views(["a", "b"], DIALOGUES[:2], aug, "dev")
    assert list(plain.columns) == ["fname", "view", "summary", "logprob"]  # k = 1: the old columns exactly
    assert list(out[out["candidate"] == 0]["summary"]) == list(plain["summary"])


# --- choosing among pools ---------------------------------------------------------------------------------


def pool_frame(fname, rows):
    """rows: (model, fold, candidate, summary, logprob)"""
    return pd.DataFrame(
        [
            {
                "fname": fname,
                "model": m,
                "source": f"{m}/{f}",
                "view": "orig",
                "candidate": c,
                "summary": s,
                "logprob": lp,
            }
            for m, f, c, s, lp in rows
        ]
    )


def test_mbr_over_a_hand_made_pool_picks_the_consensus_and_breaks_ties_by_model_score():
    c = pool_frame(
        "d",
        [
            ("a", 0, 0, "철수 가 병원 에 간다", -0.9),
            ("a", 0, 1, "철수 가 병원 에 간다 오늘", -0.5),
            ("a", 0, 2, "영희 가 시장 에 간다", -0.1),
            ("b", 0, 0, "철수 가 병원 에 간다 내일", -0.7),
        ],
    )
    g = E.build_groups(c, TOK, ["d"])
    out = E.select(g, lambda g: E.weighted_consensus(g.sim, np.ones(len(g.cands))))
    assert out["summary"][0] == "철수 가 병원 에 간다" and out["candidate"][0] == 0  # closest to all others
    tie = pool_frame("t", [("a", 0, 0, "하나 둘", -0.9), ("a", 0, 1, "셋 넷", -0.2), ("a", 0, 2, "다섯 여섯", -0.5)])
    out = E.select(E.build_groups(tie, TOK, ["t"]), lambda g: np.zeros(3))
    assert out["summary"][0] == "셋 넷" and out["candidate"][0] == 1  # equal scores: the higher log-prob


def test_pool_features_see_the_dialogue():
    dialogue = "#Person1#: 내일 병원 에 가요 #Person2#: 몇 시 에 가요"
    c = pool_frame(
        "d",
        [
            ("a", 0, 0, "#Person1# 이 내일 병원 에 간다", -0.2),
            ("a", 0, 1, "#Person3# 이 어제 학교 에 간다 간다 간다", -0.4),
        ],
    )
    g = E.build_groups(c, TOK, ["d"], {"d": dialogue})[0]
    X = E.candidate_features(g, ["a"], {"a": 1.0}, TOK)
    assert X.shape[0] == 2
    assert X[1].tolist() != X[0].tolist()
    # columns: model one-hot (0), model score, length, ratio, consensus, logprob, lp rank, rank, novelty 1/2,
    # foreign tags, repeated bigrams, dialogue length, length over it, views
    novelty1, tags, repeats = X[:, 8], X[:, 10], X[:, 11]
    assert novelty1[0] < novelty1[1] and tags.tolist() == [0.0, 1.0] and repeats[0] == 0 < repeats[1]
    source = len(TOK.tokenize(dialogue))
    assert X[:, 12].tolist() == [source, source] and X[:, 13].tolist() == pytest.approx(list(X[:, 2] / source))


def collapsed_world(n=40, seed=0):
    """OOF/dev/test pools of 4 members: `good` writes the reference; `echo`/`echo2` agree with each other on a
    wrong but shared sentence (they outvote `good` in MBR); `flat` writes one sentence for everything."""
    rng = np.random.default_rng(seed)
    words = ["철수", "영희", "병원", "학교", "내일", "오늘", "간다", "온다", "예약", "전화", "시장", "사과"]
    frames, refs, dialogues = {}, {}, {}
    for split in ("oof", "dev", "test"):
        rows = []
        for i in range(n):
            fname = f"{split}_{i}"
            ref = " ".join(rng.choice(words, 6))
            wrong = " ".join(rng.choice(words, 6))
            refs[fname], dialogues[fname] = [ref], f"#Person1#: {ref} #Person2#: 네"
            noisy = ref.split()
            noisy[int(rng.integers(0, 6))] = "음"
            for m, text in (
                ("good", " ".join(noisy)),
                ("echo", wrong),
                ("echo2", wrong + " 요"),
                ("flat", "두 사람 이 이야기 한다"),
            ):
                rows.append(
                    {
                        "fname": fname,
                        "model": m,
                        "source": f"{m}/0",
                        "view": "orig",
                        "candidate": 0,
                        "summary": text,
                        "logprob": -1.0,
                    }
                )
        frames[split] = pd.DataFrame(rows)
    return frames, refs, dialogues


def test_seeded_parts_are_balanced_seeded_and_never_more_than_the_dialogues():
    parts = E.seeded_parts(23, 5, seed=3)
    assert sorted(np.bincount(parts).tolist()) == [4, 4, 5, 5, 5]  # sizes differ by at most one
    assert (parts == E.seeded_parts(23, 5, seed=3)).all() and (parts != E.seeded_parts(23, 5, seed=4)).any()
    assert sorted(set(E.seeded_parts(3, 5, seed=0).tolist())) == [0, 1, 2]  # 5 parts of 3 dialogues: 3 parts
    assert E.seeded_parts(0, 5, seed=0).size == 0


def test_auto_is_never_below_the_best_member_and_flags_the_collapsed_one():
    frames, refs, dialogues = collapsed_world()
    scorer = Scorer("whitespace")
    collapsed = E.collapsed_sources(pd.concat([frames["dev"], frames["test"]]), 0.1)
    assert set(collapsed) == {"flat/0"} and collapsed["flat/0"]["distinct_summaries"] == 1
    kept = {s: f[~f["source"].isin(collapsed)] for s, f in frames.items()}
    order = {s: list(dict.fromkeys(f["fname"])) for s, f in kept.items()}
    groups = {s: E.build_groups(kept[s], TOK, order[s], dialogues) for s in ("oof", "dev", "test")}
    models = ["good", "echo", "echo2"]
    oof_scores = {"good/0": 2.0, "echo/0": 0.5, "echo2/0": 0.5}
    cfg = {"crossfit_folds": 5, "blend_trials": 16}
    out, info = E.combine(
        "auto",
        cfg,
        models,
        {"dev": groups["dev"], "test": groups["test"]},
        groups["oof"],
        refs,
        "oof",
        oof_scores,
        scorer,
        0,
    )
    table = info["auto"]["rouge_sum_by_option"]
    best_single = max(v for k, v in table.items() if k.startswith("single:"))
    assert table[info["auto"]["chosen"]] >= best_single and info["auto"]["chosen_on"] == "oof"
    assert table["majority_vote"] < table["single:good/0"]  # the echoes outvote the good member
    dev_sum = scorer.score(list(out["dev"]["summary"]), [refs[f] for f in out["dev"]["fname"]])["rouge_sum"]
    mv = E.select(groups["dev"], lambda g: E.weighted_consensus(g.sim, np.ones(len(g.cands))))
    mv_sum = scorer.score(list(mv["summary"]), [refs[f] for f in mv["fname"]])["rouge_sum"]
    good = scorer.score(list(frames["dev"].query("model == 'good'")["summary"]), [refs[f] for f in order["dev"]])[
        "rouge_sum"
    ]
    assert dev_sum >= good - 1e-9 > mv_sum


def test_fitted_strategies_never_see_dev_or_test_references_when_oof_exists(monkeypatch):
    frames, refs, dialogues = collapsed_world(n=20)
    scorer = Scorer("whitespace")
    order = {s: list(dict.fromkeys(f["fname"])) for s, f in frames.items()}
    groups = {s: E.build_groups(frames[s], TOK, order[s], dialogues) for s in frames}
    seen = spy_references(monkeypatch, scorer)
    oof_refs = {f: refs[f] for f in order["oof"]}
    for strategy in ("auto", "stacking", "blending"):
        out, info = E.combine(
            strategy,
            {"crossfit_folds": 4},
            ["good", "echo", "echo2", "flat"],
            {"dev": groups["dev"], "test": groups["test"]},
            groups["oof"],
            oof_refs,
            "oof",
            {},
            scorer,
            0,
        )
        assert len(out["dev"]) == 20 and "crossfitted_on" not in info
    held_out = {r for s in ("dev", "test") for f in order[s] for r in refs[f]}
    assert seen and not (set(seen) & held_out)


def test_fold_full_only_learns_on_dev_cross_fitted_and_says_so():
    frames, refs, dialogues = collapsed_world(n=20)
    scorer = Scorer("whitespace")
    order = {s: list(dict.fromkeys(f["fname"])) for s, f in frames.items()}
    groups = {s: E.build_groups(frames[s], TOK, order[s], dialogues) for s in ("dev", "test")}
    dev_refs = {f: refs[f] for f in order["dev"]}
    out, info = E.combine(
        "stacking",
        {"crossfit_folds": 4},
        ["good", "echo", "echo2", "flat"],
        groups,
        groups["dev"],
        dev_refs,
        "dev",
        {},
        scorer,
        0,
    )
    assert info["crossfitted_on"].startswith("dev (4 folds") and info["fitted_on"]["dev_dialogues"] == 20
    assert len(out["test"]) == 20
    out, info = E.combine(
        "auto",
        {"crossfit_folds": 4},
        ["good", "echo", "echo2", "flat"],
        groups,
        groups["dev"],
        dev_refs,
        "dev",
        {},
        scorer,
        0,
    )
    assert info["auto"]["chosen_on"].startswith("dev (no out-of-fold rows")


def auto_over_folds(oof, dev, models, refs, source_scores, scorer):
    """``auto`` chosen on the out-of-fold pools ``oof`` (2 cross-fitting parts), applied to and scored on ``dev``."""
    oof_groups = E.build_groups(oof, TOK, list(dict.fromkeys(oof["fname"])))
    dev_groups = E.build_groups(dev, TOK, list(dict.fromkeys(dev["fname"])))
    return E.combine(
        "auto",
        {"crossfit_folds": 2},
        models,
        {"dev": dev_groups},
        oof_groups,
        refs,
        "oof",
        source_scores,
        scorer,
        0,
        dev_refs=refs,
    )


def test_auto_compares_a_fold_model_with_a_combined_option_on_the_fold_models_own_rows():
    """Out of fold, fold 1's rows are easy and fold 0's hard. Every fold model loses to the vote of three models on
    its own rows, yet `a/1`'s score on the easy rows alone (2.25) is above the vote's on all rows: ranked that
    way, auto took `single:a/1` (the default run: `tiny-bart/1` over `stacking`, -.019 on dev)."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()
    ref = {f"d{i}": " ".join(words[i : i + 10]) for i in range(8)}
    junk = "nothing to see here today"

    def text(model: str, f: str) -> str:
        i = int(f[1:])
        wrong = "cabcccba"[i]  # on each row two of three agree, and the third writes junk
        if i < 4:  # fold 0: hard, no model gets more than the first three words
            return junk if model == wrong else " ".join(ref[f].split()[:3])
        return junk if model == wrong else ref[f]  # fold 1: easy

    def rows(fnames, folds):
        return pd.concat(
            [pool_frame(f, [(m, fold, 0, text(m, f), -1.0) for m in "abc" for fold in folds]) for f in fnames],
            ignore_index=True,
        )

    oof = pd.concat([rows(["d0", "d1", "d2", "d3"], [0]), rows(["d4", "d5", "d6", "d7"], [1])])
    dev = rows(["d4", "d5", "d6", "d7"], [0, 1])
    refs = {f: [t] for f, t in ref.items()}
    scorer = Scorer("whitespace")
    out, info = auto_over_folds(oof, dev, ["a", "b", "c"], refs, {}, scorer)
    auto = info["auto"]
    table, paired = auto["rouge_sum_by_option"], auto["paired_rouge_sum_by_option"]
    assert table["single:a/1"] == pytest.approx(2.25) and table["single:a/1"] > table["majority_vote"]  # the trap
    assert auto["paired_against"] == "majority_vote" and auto["chosen"] == "majority_vote"
    assert paired["single:a/1"] == pytest.approx(table["majority_vote"] - 0.75)  # a/1 is .75 behind on its rows
    assert all(paired[o] < paired["majority_vote"] for o in paired if o.startswith("single:"))
    dev_sum = scorer.score(list(out["dev"]["summary"]), [refs[f] for f in out["dev"]["fname"]])["rouge_sum"]
    assert dev_sum == pytest.approx(3.0) and dev_sum > auto["dev_rouge_sum_by_option"]["single:a/1"]


def test_auto_chooses_among_fold_models_by_their_own_out_of_fold_rows():
    """Issue 34: out of fold a dialogue has one candidate per model, on dev one per model x fold. With one good
    fold model and one poor one (whose candidates have the higher log-prob, so a vote between the two picks
    it), auto must end at or above the good fold on dev, not at the mean of the folds or below."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    ref = {f"d{i}": " ".join(words[i : i + 5]) for i in range(8)}
    poor = {f: "nothing to see here today" for f in ref}

    def rows(fnames, sources):
        return pd.DataFrame(
            [
                {
                    "fname": f,
                    "model": "m",
                    "source": src,
                    "view": "orig",
                    "candidate": 0,
                    "summary": ref[f] if src == "m/0" else poor[f],
                    "logprob": -1.0 if src == "m/0" else -0.5,
                }
                for f in fnames
                for src in sources
            ]
        )

    oof = pd.concat([rows(["d0", "d1", "d2", "d3"], ["m/0"]), rows(["d4", "d5", "d6", "d7"], ["m/1"])])
    dev = rows(["d0", "d2", "d4", "d6"], ["m/0", "m/1"])  # dev reuses texts: only the pool shape matters
    refs = {f: [t] for f, t in ref.items()}
    scorer = Scorer("whitespace")
    out, info = auto_over_folds(oof, dev, ["m"], refs, {"m/0": 3.0, "m/1": 0.3}, scorer)
    table, chosen = info["auto"]["rouge_sum_by_option"], info["auto"]["chosen"]
    assert chosen == "single:m/0" and table["single:m/0"] == pytest.approx(3.0)
    assert table["single:m/1"] < table["majority_vote"] < table["single:m/0"]
    dev_sum = scorer.score(list(out["dev"]["summary"]), [refs[f] for f in out["dev"]["fname"]])["rouge_sum"]
    good_fold = info["auto"]["dev_rouge_sum_by_option"]["single:m/0"]
    assert dev_sum >= good_fold - 1e-9 and dev_sum == pytest.approx(3.0)
    assert info["auto"]["dev_rouge_sum_by_option"]["majority_vote"] < good_fold  # the vote follows the log-prob
