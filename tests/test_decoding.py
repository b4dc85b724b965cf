"""The decoding search (dialsum.decoding): post-edits, length caps, the study over a trained model without
re-training, and predict's views under a choice."""

from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, micro_entry
from dialsum import decoding, generation, models
from dialsum.metrics import Scorer
from dialsum.params import Generation, load, override, typed


def test_trim_unfinished_keeps_whole_sentences():
    assert decoding.trim_unfinished("#Person1#은 방을 예약했다. #Person2#는 내일") == "#Person1#은 방을 예약했다."
    assert decoding.trim_unfinished("He booked a room. She will") == "He booked a room."
    assert decoding.trim_unfinished("He booked a room.") == "He booked a room."
    assert decoding.trim_unfinished("no sentence end at all") == "no sentence end at all"  # nothing to fall back to
    assert decoding.trim_unfinished("방을 예약했다 그리고") == "방을 예약했다"  # a Korean declarative ends a sentence
    # words that end in 다/요/음 end no sentence (before session 28 each did), closing quotes and brackets
    # after a finished sentence finish the text, and a nominalised ending (확인함) finishes one
    for done in (
        '#Person1#은 떠난다. #Person2#는 "좋아요."',
        "#Person1#은 떠났다. 일정을 확인함(오후 3시)",
        "#Person1#은 떠났다. #Person2#는 일정을 확인함",
        "#Person1#은 다음 주에 #Person2#와 여행을",  # no earlier sentence to fall back to (was cut to 다음)
    ):
        assert decoding.trim_unfinished(done) == done
    cut = "#Person1#은 떠났다. #Person2#는 다 같이 가자고 제안하고 #Person1#은 필요한"
    assert decoding.trim_unfinished(cut) == "#Person1#은 떠났다."


def test_fillers_and_repeats_are_dropped():
    assert decoding.drop_fillers("음 #Person1#은 어 방을 예약했다.") == "#Person1#은 방을 예약했다."
    assert decoding.drop_fillers("그는 um 간다") == "그는 간다"
    kept = "#Person1#은 그 책을 빌려주고 저 건물로 가서 뭐 먹을지 정한다."  # 그, 저, 뭐: words, not fillers
    assert decoding.drop_fillers(kept) == kept
    assert decoding.drop_repeats("방을 예약했다. 방을 예약했다. 내일 간다.") == "방을 예약했다. 내일 간다."
    assert decoding.drop_repeats("he came, he came, and left.") == "he came, and left."
    assert decoding.drop_repeats("one. two.") == "one. two."
    # a fixed order whatever the settings list
    text = "음 끝났다. 끝났다. 그리고"
    assert decoding.post_edit([text], ("drop_repeats", "trim_unfinished", "drop_fillers")) == ["끝났다."]


@pytest.fixture(scope="module")
def sample():
    return pd.read_csv(ROOT / "data/sample/train.csv"), pd.read_csv(ROOT / "data/sample/dev.csv")


@pytest.fixture(scope="module")
def summarizer(tmp_path_factory, sample):
    train, _ = sample
    entry = micro_entry("llama", max_target_len=12)
    out = tmp_path_factory.mktemp("decode") / "init"
    models.build_init(entry, list(train["dialogue"]) + list(train["summary"]), out, seed=0)
    return generation.Summarizer.load(out, entry, Generation())


def test_length_caps_grow_with_the_dialogue(summarizer, sample):
    train, _ = sample
    # summaries as long as a tenth of their dialogue: caps must follow the source length
    long_short = train.assign(summary=[d[: max(4, len(d) // 10)] for d in train["dialogue"]])
    lm = decoding.LengthModel.fit(summarizer.tokenizer, long_short["dialogue"], long_short["summary"], 0.9)
    highs = [hi for _, hi in lm.limits]
    assert len(highs) >= 2 and highs == sorted(highs) and highs[0] < highs[-1]
    assert all(lo < hi for lo, hi in lm.limits)
    assert decoding.LengthModel.from_dict(lm.as_dict()) == lm


def test_length_caps_never_learn_from_the_rows_searched(summarizer, sample):
    train, _ = sample
    searched = train.head(40).assign(summary="x " * 200)  # outlandish lengths: a cap fitted on them would show it
    rest = train.iloc[40:]
    with_searched = pd.concat([searched, rest])
    unseen = decoding.LengthModel.fit_unseen(
        summarizer.tokenizer, with_searched, [searched.head(25), searched.iloc[25:]], 0.9
    )
    assert unseen == decoding.LengthModel.fit(summarizer.tokenizer, rest["dialogue"], rest["summary"], 0.9)
    leaky = decoding.LengthModel.fit(summarizer.tokenizer, with_searched["dialogue"], with_searched["summary"], 0.9)
    assert max(hi for _, hi in leaky.limits) > max(hi for _, hi in unseen.limits)
    # every train row searched (a tiny train split): the caps still come from train, not from nothing
    everything = decoding.LengthModel.fit_unseen(summarizer.tokenizer, rest, [rest], 0.9)
    assert everything == decoding.LengthModel.fit(summarizer.tokenizer, rest["dialogue"], rest["summary"], 0.9)


def _params(**decode):
    p = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    p["metrics"]["tokenize"] = "whitespace"
    p["decode"].update(decode)
    return typed(p)


@contextmanager
def generate_calls(summarizer):
    """The list of the summarizer's generate calls made inside the block (one entry per call or pool)."""
    cls = summarizer.__class__
    calls, real, pool = [], cls.__call__, cls.pool
    cls.__call__ = lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1]
    cls.pool = lambda self, *a, **k: (calls.append(1), pool(self, *a, **k))[1]
    try:
        yield calls
    finally:
        cls.__call__, cls.pool = real, pool


def test_search_starts_from_the_defaults_never_ends_below_them_and_repeats_itself(summarizer, sample):
    train, dev = sample
    rows = [dev.head(6)]
    lm = decoding.LengthModel.fit(summarizer.tokenizer, train["dialogue"], train["summary"], 0.9)
    params = _params(trials=5, seed=3)
    with generate_calls(summarizer) as calls:
        first = decoding.search(params, [summarizer], rows, lm)
    again = decoding.search(params, [summarizer], rows, lm)
    assert first == again  # seeded: the same trials, scores and choice
    t0 = first["trials"][0]
    assert t0["num_beams"] == params.generation.num_beams and t0["length_control"] == "none"
    assert not any(t0[e] for e in ("trim_unfinished", "drop_fillers", "drop_repeats"))
    assert first["default_rouge_sum"] == t0["rouge_sum"]
    assert first["best_rouge_sum"] >= first["default_rouge_sum"]
    assert first["best_rouge_sum"] == max(t["rouge_sum"] for t in first["trials"])
    assert len(first["trials"]) == 5 and summarizer.gen == Generation()  # the summarizer's own settings restored
    distinct = {
        tuple(sorted((k, str(v)) for k, v in t.items() if k not in ("number", "rouge_sum"))) for t in first["trials"]
    }
    assert len(calls) <= len(distinct) * 5  # a repeated choice is scored from the cache (at most 5 length bins each)
    # a study over post-edits alone decodes once: switching an edit re-scores the same summaries
    edits_only = _params(trials=4, seed=0, space={"trim_unfinished": [False, True], "drop_repeats": [False, True]})
    with generate_calls(summarizer) as calls:
        edits = decoding.search(edits_only, [summarizer], rows, lm)
    assert len(edits["trials"]) == 4 and len(calls) == 1
    # under greedy search the length penalty changes no summary, so its choices share one decode too
    greedy = override(_params(trials=4, seed=0, space={"length_penalty": [0.5, 1.0, 2.0]}), {"generation.num_beams": 1})
    same = [
        decoding.summarize(
            summarizer, rows[0]["dialogue"], decoding.Settings({"num_beams": 1, "length_penalty": lp}), lm
        )
        for lp in (0.5, 2.0)
    ]
    assert same[0] == same[1]
    with generate_calls(summarizer) as calls:
        r = decoding.search(greedy, [summarizer], rows, lm)
    assert len({t["length_penalty"] for t in r["trials"]}) > 1 and len(calls) == 1


def test_views_under_a_choice_keep_the_plain_row_order(summarizer, sample):
    train, dev = sample
    lm = decoding.LengthModel.fit(summarizer.tokenizer, train["dialogue"], train["summary"], 0.9)
    dev = dev.head(8)
    from dialsum import tta

    aug = tta.Augmenter([], 0, seed=0)
    plain = decoding.views(summarizer, dev["fname"], dev["dialogue"], aug, decoding.Settings(), lm)
    assert plain.equals(summarizer.views(dev["fname"], dev["dialogue"], aug))
    capped = decoding.views(
        summarizer, dev["fname"], dev["dialogue"], aug, decoding.Settings({}, "quantile", ("trim_unfinished",)), lm
    )
    assert list(capped["fname"]) == list(plain["fname"]) and list(capped["view"]) == list(plain["view"])
    # fold `full` predicts an empty out-of-fold split: no length bin, no crash (it raised "No objects to concatenate")
    none = decoding.views(summarizer, [], [], aug, decoding.Settings({}, "quantile", ("trim_unfinished",)), lm)
    assert none.empty and list(none.columns) == list(plain.columns)
    settings, _ = (
        decoding.Settings.from_dict(decoding.Settings({"num_beams": 2}, "quantile", ("drop_fillers",)).as_dict()),
        lm,
    )
    assert settings.generation == {"num_beams": 2} and settings.post_edits == ("drop_fillers",)


def test_bad_space_is_a_one_line_error():
    from dialsum.params import ParamsError

    with pytest.raises(ParamsError, match="decode.*unknown key 'beams'"):
        _params(space={"beams": [1, 2]})
    with pytest.raises(ParamsError, match="decode.space.length_control choices are none, quantile"):
        _params(space={"length_control": ["median"]})


def test_search_finds_a_planted_winner_and_reports_its_real_score(summarizer, sample):
    """The references are the model's own output at 2 beams and 6 new tokens, so one setting scores far above
    params.yaml's (4 beams, the entry's length); the reported score is what re-generating with the choice gives."""
    _, dev = sample
    params = _params(trials=12, seed=0, space={"num_beams": [1, 2], "max_new_tokens": [6]})
    rows = dev.head(10).copy()
    base = summarizer.gen
    try:
        summarizer.gen = params.generation.model_copy(update={"num_beams": 2, "max_new_tokens": 6})
        rows["summary"] = summarizer(list(rows["dialogue"]), progress=False)[0]
        summarizer.gen = params.generation  # what the stage loads it with
        r = decoding.search(params, [summarizer], [rows], None)
        t0 = r["trials"][0]
        assert (t0["num_beams"], t0["max_new_tokens"]) == (
            params.generation.num_beams,
            params.generation.max_new_tokens,
        )
        assert r["best_rouge_sum"] > r["default_rouge_sum"] + 1.0
        assert r["settings"]["generation"] == {"num_beams": 2, "max_new_tokens": 6}
        chosen = decoding.Settings.from_dict(r["settings"])
        again = decoding.summarize(summarizer, rows["dialogue"], chosen, None)
    finally:
        summarizer.gen = base
    score = Scorer.from_params(params).score(again, [[s] for s in rows["summary"]])["rouge_sum"]
    assert score == pytest.approx(r["best_rouge_sum"], abs=1e-6)


def test_model_averaging_and_the_cli_decode_under_the_choice(summarizer, sample, tmp_path, capsys):
    """average@ and `dialsum summarize` generate with decode@'s choice as predict does (before session 19 they
    used params.generation whatever the search chose). Two folds of one model average to that model, so the
    averaged beam search under the choice must give exactly what the choice gives the model alone."""
    import yaml

    from dialsum import ensemble, paths
    from dialsum.cli import main as dialsum

    from dialsum.data import clean_text

    train, dev = sample
    dev = dev.head(6).assign(dialogue=lambda d: [clean_text(x) for x in d["dialogue"]])  # as the CLI reads them
    p = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    p["zoo"]["m"] = micro_entry("llama", max_target_len=12)
    p.update(models=["m"])
    p["cv"]["folds"] = [0, 1]
    p["ensemble"]["strategy"] = "averaging"
    params = typed(p)
    init = Path(summarizer.model.name_or_path)
    for f in (0, 1):
        (tmp_path / paths.model_dir("m", f)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / paths.model_dir("m", f)).symlink_to(init, target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="decoding/m.yaml"):
        ensemble.average_folds(params, "m", {"dev": dev}, tmp_path)
    lm = decoding.LengthModel.fit(summarizer.tokenizer, train["dialogue"], train["summary"], 0.9)
    chosen = decoding.Settings({"num_beams": 2}, "quantile", ("trim_unfinished",))
    (tmp_path / "decoding").mkdir()
    (tmp_path / paths.decoding("m")).write_text(yaml.safe_dump({**chosen.as_dict(), "lengths": lm.as_dict()}))
    got = ensemble.average_folds(params, "m", {"dev": dev}, tmp_path)[0]["dev"]
    base = summarizer.gen
    try:
        summarizer.gen = params.generation
        want = decoding.summarize(summarizer, dev["dialogue"], chosen, lm)
        plain = decoding.summarize(summarizer, dev["dialogue"], decoding.Settings(), None)
    finally:
        summarizer.gen = base
    assert list(got["summary"]) == want and want != plain
    # `dialsum summarize --model models/m/0` in that project: the same choice
    pfile, inp, out = tmp_path / "params.yaml", tmp_path / "in.csv", tmp_path / "out.csv"
    pfile.write_text(yaml.safe_dump(p))
    dev[["fname", "dialogue"]].to_csv(inp, index=False)
    argv = ["summarize", "--model", str(tmp_path / paths.model_dir("m", 0)), "--input", str(inp)]
    assert dialsum([*argv, "--output", str(out), "--params", str(pfile)]) == 0
    assert list(pd.read_csv(out, keep_default_na=False)["summary"]) == want
    # a stored MBR choice that params.yaml has since made invalid (a pool for the ensemble): one line, exit 2
    (tmp_path / paths.decoding("m")).write_text(yaml.safe_dump(decoding.Settings({"mbr": 4}).as_dict()))
    p["generation"]["candidates"] = {"k": 2}
    pfile.write_text(yaml.safe_dump(p))
    capsys.readouterr()
    assert dialsum([*argv, "--output", str(tmp_path / "stale.csv"), "--params", str(pfile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "does not fit params' generation" in err[-1] and not (tmp_path / "stale.csv").exists()
    # a valid MBR choice says the width it decodes: a 4-best MBR over a 2-beam choice runs a 4-beam search
    (tmp_path / paths.decoding("m")).write_text(yaml.safe_dump(decoding.Settings({"mbr": 4, "num_beams": 2}).as_dict()))
    del p["generation"]["candidates"]
    pfile.write_text(yaml.safe_dump(p))
    assert dialsum([*argv, "--output", str(tmp_path / "mbr.csv"), "--params", str(pfile)]) == 0
    assert "MBR over the 4-best (generation.mbr) of a 4-beam search" in capsys.readouterr().err


def test_consensus_pick_is_the_candidate_closest_to_the_others():
    from dialsum.metrics import CachedTokenizer

    tok = CachedTokenizer("whitespace")
    # the top-ranked candidate is the outlier: MBR takes the one the others agree with
    assert decoding.consensus_pick(["q r s", "a b c", "a b d", "a b c e"], [-1, -2, -3, -4], tok) == 1
    # equal consensus: the higher log-prob, then the higher rank
    assert decoding.consensus_pick(["a b", "b a"], [-2.0, -1.0], tok) == 1
    assert decoding.consensus_pick(["a b", "b a"], [-1.0, -1.0], tok) == 0
    assert decoding.consensus_pick(["only one"], [-1.0], tok) == 0


def _mbr_by_hand(summarizer, dialogues, k, tok):
    """The consensus of each dialogue's k-best, from the pool itself."""
    base = summarizer.gen
    try:
        summarizer.gen = base.model_copy(update={"candidates": generation.Candidates(k=k, method="beam"), "mbr": 0})
        pools = summarizer.pool(list(dialogues), progress=False, raw_logprobs=False)
    finally:
        summarizer.gen = base
    return [c[decoding.consensus_pick([t for t, *_ in c], [lp for _, lp, _ in c], tok)][0] for c in pools]


def test_mbr_reaches_predicts_views_and_the_search(summarizer, sample):
    """generation.mbr set in params (no search) is applied by predict's views, and a search over `mbr` scores
    and chooses what MBR decoding really gives."""
    from dialsum import tta
    from dialsum.metrics import CachedTokenizer

    _, dev = sample
    dev = dev.head(10).reset_index(drop=True)
    tok = CachedTokenizer("whitespace")
    base = summarizer.gen
    aug = tta.Augmenter([], 0, seed=0)
    try:
        summarizer.gen = Generation(num_beams=1, mbr=4)
        want = _mbr_by_hand(summarizer, dev["dialogue"], 4, tok)
        got = decoding.views(summarizer, dev["fname"], dev["dialogue"], aug, decoding.Settings(), None, tokens=tok)
        assert list(got["summary"]) == want
        summarizer.gen = Generation(num_beams=1)
        top = decoding.summarize(summarizer, dev["dialogue"], decoding.Settings(), None)
        assert top != want  # on these rows the consensus is not always the top beam, so the test can tell them apart
        # the references are the MBR summaries: the search must find mbr 4 and report its real score
        params = override(_params(trials=6, seed=0, space={"mbr": [0, 4]}), {"generation.num_beams": 1})
        rows = dev.assign(summary=want)
        r = decoding.search(params, [summarizer], [rows], None)
        # the written choice names the width that was decoded (what model averaging then runs)
        assert r["trials"][0]["mbr"] == 0 and r["settings"]["generation"] == {"mbr": 4, "num_beams": 4}
        assert r["best_rouge_sum"] > r["default_rouge_sum"]
        assert r["best_rouge_sum"] == pytest.approx(3.0)  # the whitespace-token ROUGE of a summary with itself
        # under MBR the beam is max(num_beams, mbr) wide: narrower num_beams choices share one decode
        wide = override(_params(trials=6, seed=0, space={"mbr": [4], "num_beams": [1, 2, 4]}), {"generation.mbr": 4})
        with generate_calls(summarizer) as calls:
            w = decoding.search(wide, [summarizer], [rows], None)
        assert len({t["num_beams"] for t in w["trials"]}) > 1 and len(calls) == 1
        assert w["best_rouge_sum"] == r["best_rouge_sum"] and w["settings"]["generation"]["num_beams"] == 4
        with pytest.raises(ValueError, match="metric's tokenizer"):
            decoding.summarize(summarizer, dev["dialogue"], decoding.Settings({"mbr": 4}), None)
        # a run that keeps pools for the ensemble (candidates.k > 1) searches without mbr
        pooled = override(params, {"generation.candidates.k": 2})
        assert all("mbr" not in t for t in decoding.search(pooled, [summarizer], [rows], None)["trials"])
    finally:
        summarizer.gen = base


def test_mbr_and_a_pool_are_one_choice_too_many():
    from dialsum.params import ParamsError

    with pytest.raises(ParamsError, match="mbr and candidates.k > 1"):
        override(_params(), {"generation.mbr": 4, "generation.candidates.k": 4})
    with pytest.raises(ParamsError, match="decode.space.mbr choice -1 is not a valid generation.mbr"):
        _params(space={"mbr": [0, -1]})
    with pytest.raises(ParamsError, match="mbr chooses among a beam search's k best: it needs do_sample: false"):
        override(_params(), {"generation.mbr": 4, "generation.do_sample": True})
    # a stored choice that params.yaml has since made invalid is one line, not a pydantic dump
    pooled = Generation(candidates=generation.Candidates(k=2))
    with pytest.raises(
        ValueError, match=r"^decoding choice \{'mbr': 4\} does not fit params' generation: .*candidates"
    ):
        decoding.Settings({"mbr": 4}).generation_section(pooled)
