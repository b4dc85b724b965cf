import json

import pandas as pd

from dialsum.ensemble import mbr_select
from dialsum.metrics import CachedTokenizer
from conftest import stand_in_params


def test_mbr_picks_the_consensus_candidate():
    cands = pd.DataFrame(
        {
            "fname": ["d1"] * 4 + ["d2"] * 3,
            "source": ["a", "b", "c", "d", "a", "b", "c"],
            "summary": [
                "철수가 내일 병원에 간다",
                "철수가 내일 병원을 간다",
                "철수는 내일 병원에 간다",
                "영희가 시장에서 사과를 산다",
                "비가 온다",
                "눈이 온다",
                "비가 많이 온다",
            ],
        }
    )
    out = mbr_select(cands, CachedTokenizer("whitespace"), ["d2", "d1"])
    assert list(out["fname"]) == ["d2", "d1"]
    assert out.set_index("fname").loc["d1", "summary"] == "철수가 내일 병원에 간다"
    assert out.set_index("fname").loc["d2", "summary"] == "비가 온다"


def test_mbr_single_candidate_and_ties_are_deterministic():
    cands = pd.DataFrame({"fname": ["x", "y", "y"], "source": ["a", "a", "b"], "summary": ["하나", "둘", "셋"]})
    out = mbr_select(cands, CachedTokenizer("whitespace"), ["x", "y"])
    assert list(out["summary"]) == ["하나", "둘"]  # a tie goes to the first source


import numpy as np  # noqa: E402

from dialsum import ensemble as E  # noqa: E402

TOK = CachedTokenizer("whitespace")


def frame(fname, rows):
    """rows: (model, fold, view, summary, logprob)"""
    return pd.DataFrame(
        [
            {"fname": fname, "model": m, "source": f"{m}/{f}", "view": v, "summary": s, "logprob": lp}
            for m, f, v, s, lp in rows
        ]
    )


def test_rouge_weighted_follows_the_heavier_voter():
    # two "bad" voters agree with each other; one "good" voter disagrees
    c = frame(
        "d",
        [
            ("bad", 0, "orig", "비가 온다 오늘", -1),
            ("bad", 1, "orig", "비가 온다 내일", -1),
            ("good", 0, "orig", "눈이 많이 내린다", -1),
        ],
    )
    g = E.build_groups(c, TOK, ["d"])
    equal = E.select(g, lambda g: E.weighted_consensus(g.sim, np.ones(3)))
    assert equal["summary"][0].startswith("비가 온다")  # plain majority
    w = {"good": 10.0, "bad": 1.0}
    heavy = E.select(g, lambda g: E.weighted_consensus(g.sim, E.vote_weights(g.cands, w)))
    assert heavy["summary"][0] == "눈이 많이 내린다"
    # a per-source weight beats the model's weight
    w2 = {"good": 10.0, "bad": 1.0, "good/0": 0.0}
    assert E.vote_weights(c, w2).tolist() == [1.0, 1.0, 0.0]


def synthetic_oof(n=30, seed=0):
    """Model `good` writes the reference; model `bad` writes something else; two views each."""
    rng = np.random.default_rng(seed)
    groups, targets = [], []
    words = ["철수", "영희", "병원", "학교", "내일", "오늘", "간다", "온다", "예약", "전화"]
    for i in range(n):
        ref = " ".join(rng.choice(words, 5))
        other = " ".join(rng.choice(words, 5))
        c = frame(
            f"o{i}",
            [
                ("good", 0, "orig", ref, -1.0),
                ("good", 0, "mask-0", ref, -1.2),
                ("bad", 0, "orig", other, -0.5),
                ("bad", 0, "mask-0", other + " 다시", -0.6),
            ],
        )
        g = E.build_groups(c, TOK, [f"o{i}"])[0]
        groups.append(g)
        targets.append(np.array([1.0, 1.0, 0.0, 0.1]))
    return groups, targets


import pytest  # noqa: E402


@pytest.mark.parametrize("objective", ["regression", "lambdarank"])
def test_stacking_learns_which_candidates_score_from_oof_only(objective):
    groups, targets = synthetic_oof()
    reg = E.fit_stacker(groups, targets, ["good", "bad"], {"good": 2.0, "bad": 0.5}, TOK, seed=0, objective=objective)
    # a dev dialogue whose majority is the bad model (three bad candidates vs one good)
    dev = frame(
        "x",
        [
            ("bad", 0, "orig", "영희 학교 오늘 온다", -0.1),
            ("bad", 1, "orig", "영희 학교 오늘 온다 다시", -0.1),
            ("bad", 1, "mask-0", "영희 학교 오늘", -0.1),
            ("good", 1, "orig", "철수 병원 내일 간다", -2.0),
        ],
    )
    g = E.build_groups(dev, TOK, ["x"])
    out = E.select(g, lambda g: reg.predict(E.candidate_features(g, ["good", "bad"], {"good": 2.0, "bad": 0.5}, TOK)))
    assert out["source"][0] == "good/1"
    mv = E.select(g, lambda g: E.weighted_consensus(g.sim, np.ones(len(g.cands))))
    assert mv["source"][0].startswith("bad")  # what plain voting would have chosen


def test_lambdarank_ranks_pools_it_never_saw_and_is_seeded():
    """Pools whose ROUGE level varies from dialogue to dialogue and whose order follows the candidates' n-best
    rank (reversed: the last is best): the ranker puts each new pool's best first, and two seeded fits predict
    byte-identical scores; relevance is how many candidates of the pool each one beats, ties sharing a rank."""
    assert E.pool_ranks(np.array([0.2, 0.3, 0.2, 0.1 + 0.2])).tolist() == [0, 2, 0, 2]  # 0.1 + 0.2 != 0.3 unrounded
    rng = np.random.default_rng(1)
    words = ["철수", "영희", "병원", "학교", "내일", "오늘", "간다", "온다", "예약", "전화"]

    def pool(i, best_last=True):
        texts = [" ".join(rng.choice(words, 4 + k)) for k in range(4)]
        c = frame(f"p{i}", [("m", 0, "orig", t, -1.0) for t in texts]).assign(candidate=range(4))
        g = E.build_groups(c, TOK, [f"p{i}"], {f"p{i}": " ".join(rng.choice(words, int(rng.integers(5, 60))))})[0]
        level = rng.uniform(0, 2)  # how well any summary of this dialogue scores: the regressor must learn it too
        return g, level + 0.05 * (np.arange(4) if best_last else -np.arange(4))

    fit = [pool(i) for i in range(60)]
    groups, targets = [g for g, _ in fit], [t for _, t in fit]
    a = E.fit_stacker(groups, targets, ["m"], {}, TOK, seed=0, objective="lambdarank")
    b = E.fit_stacker(groups, targets, ["m"], {}, TOK, seed=0, objective="lambdarank")
    new = [pool(100 + i)[0] for i in range(20)]
    for g in new:
        x = E.candidate_features(g, ["m"], {}, TOK)
        assert np.argmax(a.predict(x)) == 3
        assert a.predict(x).tobytes() == b.predict(x).tobytes()


def test_lambdarank_without_lightgbm_is_a_one_line_error_before_any_fit(monkeypatch):
    import sys

    groups, targets = synthetic_oof()
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # what an environment built before session 28 has
    with pytest.raises(
        ValueError, match=r"stacking_objective = lambdarank needs lightgbm .*pip install -r requirements"
    ):
        E.fit_strategy("stacking", {"stacking_objective": "lambdarank"}, ["good", "bad"], groups, targets, {}, TOK, 0)


def test_stacking_objective_reaches_the_fit_and_its_info():
    """``ensemble.stacking_objective`` from params to the fitted trees, and into the metrics' info; the default
    (regression) writes the info it always wrote."""
    groups, targets = synthetic_oof()
    score, info = E.fit_strategy(
        "stacking", {"stacking_objective": "lambdarank"}, ["good", "bad"], groups, targets, {}, TOK, 0
    )
    assert info["stacking_objective"] == "lambdarank"
    assert np.argmax(score(groups[0])) in (0, 1)  # a `good` candidate
    _, info = E.fit_strategy("stacking", {}, ["good", "bad"], groups, targets, {}, TOK, 0)
    assert "stacking_objective" not in info


def test_blending_fits_weights_on_oof():
    groups, targets = synthetic_oof()
    # on OOF both models have two candidates, so equal votes tie and the first (good) wins; make bad the
    # majority by giving it a third candidate per dialogue
    for g, t in zip(groups, targets):
        extra = g.cands.iloc[[2]].assign(view="synonym-0")
        g.cands = pd.concat([g.cands, extra], ignore_index=True)
        g.sim = E.similarity_matrix(list(g.cands["summary"]), TOK)
    targets = [np.append(t, 0.0) for t in targets]
    weights, value = E.fit_blend(groups, targets, ["good", "bad"], n_trials=32, seed=0)
    assert weights["good"] > weights["bad"] and value == 1.0
    assert weights == E.fit_blend(groups, targets, ["good", "bad"], n_trials=32, seed=0)[0]  # seeded


def test_consensus_excludes_self_and_similarity_is_symmetric():
    texts = ["a b c", "a b d", "x y z"]
    sim = E.similarity_matrix(texts, TOK)
    assert np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1)
    cs = E.consensus_scores(texts, TOK)
    assert cs[2] == 0.0 and cs[0] == cs[1] > 0


def test_fast_similarity_equals_rouge_score_arithmetic():
    import random

    from dialsum.metrics import ngram_counts, ngram_f1

    tok = CachedTokenizer("default")
    rng = random.Random(0)
    words = "a b c d e f the cat sat on mat".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 10))) for _ in range(25)] + ["", "a b", "", "a b"]
    sim = E.similarity_matrix(texts, tok)
    for i in range(len(texts)):
        for j in range(len(texts)):
            ti, tj = tok.tokenize(texts[i]), tok.tokenize(texts[j])
            want = (
                1.0
                if i == j or (texts[i] == texts[j] and ti)
                else (
                    ngram_f1(ngram_counts(ti, 1), ngram_counts(tj, 1))
                    + ngram_f1(ngram_counts(ti, 2), ngram_counts(tj, 2))
                )
                / 2
            )
            assert abs(sim[i, j] - want) < 1e-12


def test_a_vote_never_prefers_two_empty_summaries_to_two_that_agree():
    pool = ["", "", "철수 가 내일 병원 에 간다", "철수 가 오늘 병원 에 간다"]
    sim = E.similarity_matrix(pool, CachedTokenizer("whitespace"))
    assert sim[0, 1] == 0.0 and sim[0, 0] == 1.0
    assert int(np.argmax(E.weighted_consensus(sim, np.ones(4)))) in (2, 3)


def test_load_candidates_reads_every_source_and_keeps_empty_summaries(tmp_path):
    from dialsum.data import DataError

    # what the predict stage leaves behind for 2 models x 2 folds; one file predates the view column
    params = stand_in_params(["a", "b"], folds=[0, 1])
    for m in ("a", "b"):
        for f in (0, 1):
            d = tmp_path / f"predictions/{m}/{f}"
            d.mkdir(parents=True)
            pd.DataFrame({"fname": ["x", "x"], "view": ["orig", "mask-0"], "summary": [f"{m}{f}", ""]}).to_csv(
                d / "dev.csv", index=False
            )
            oof = pd.DataFrame({"fname": [f"t{f}"], "summary": ["NA"]})
            oof.to_csv(d / "oof.csv", index=False)
            (tmp_path / "metrics/predict").mkdir(parents=True, exist_ok=True)
            oof_metrics = {"rouge_sum": 0.1 * (f + 1)} if m == "a" else None
            (tmp_path / f"metrics/predict/{m}-{f}.json").write_text(json.dumps({"rouge_sum": 0.5, "oof": oof_metrics}))
    cands, scored = E.load_candidates(params, ("oof", "dev"), tmp_path)
    assert sorted(set(cands["dev"]["source"])) == ["a/0", "a/1", "b/0", "b/1"]
    assert list(cands["dev"].query("source == 'b/1'")["summary"]) == ["b1", ""]  # not NaN
    assert set(cands["oof"]["view"]) == {"orig"} and set(cands["oof"]["summary"]) == {"NA"}
    assert list(cands["oof"]["model"]) == ["a", "a", "b", "b"]
    assert E.oof_rouge(scored) == {"a/0": 0.1, "a/1": 0.2}  # sources without OOF rows get no OOF weight
    E.load_candidates(params, ("dev",), tmp_path, {"dev": ["x"]})
    # a file that lost a dialogue, or repeats one, is refused by name (it was voted on as it was)
    with pytest.raises(DataError, match=r"predictions/a/0/dev.csv: no summary for fname y \(1 of 2 dialogues"):
        E.load_candidates(params, ("dev",), tmp_path, {"dev": ["x", "y"]})
    twice = tmp_path / "predictions/b/1/dev.csv"
    pd.read_csv(twice).pipe(lambda df: pd.concat([df, df.head(1)])).to_csv(twice, index=False)
    with pytest.raises(DataError, match=r"predictions/b/1/dev.csv: fname x has 2 original summaries"):
        E.load_candidates(params, ("dev",), tmp_path, {"dev": ["x"]})


def test_numeric_looking_fnames_stay_text(tmp_path):
    path = tmp_path / "dev.csv"
    path.write_text("fname,summary,logprob\n001,a,-1.0\n010,,-2.0\n")
    df = E.read_candidates(path)
    assert list(df["fname"]) == ["001", "010"] and list(df["summary"]) == ["a", ""]


def test_the_registry_is_the_strategy_choices():
    # a strategy missing from either side would pass validation and fail at fit time, or never be selectable
    from dialsum.params import ENSEMBLE_STRATEGIES

    assert set(E.REGISTRY) == set(ENSEMBLE_STRATEGIES) - {"auto"}
    assert E.FITTED == ("auto", "stacking", "blending", "rerank")
    groups = E.build_groups(
        pd.concat([frame(f, [("a", 0, "orig", "비가 온다", -1), ("b", 0, "orig", "눈이 온다", -2)]) for f in "xy"]),
        TOK,
        ["x", "y"],
    )
    assert E.options(["a", "b"], groups, True) == [
        "single:a/0",
        "single:b/0",
        "majority_vote",
        "rouge_weighted",
        "stacking",
        "blending",
    ]
    assert E.options(["a", "b"], groups[:1], False) == ["single:a/0", "single:b/0", "majority_vote"]


def test_weighted_avg_weighs_fold_full_like_the_fold_models_not_at_one(tmp_path):
    """Fold `full` has no out-of-fold score: its weight was 1 against ~2.8 for each fold model's rouge_sum."""
    for fold, oof in ((0, {"rouge_sum": 2.6}), (1, {"rouge_sum": 3.0}), ("full", None)):
        path = tmp_path / f"metrics/predict/m-{fold}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"oof": oof}))
    params = stand_in_params(
        ["m"], folds=(0, 1, "full"), cv={"folds": [0, 1, "full"], "n_splits": 2}, ensemble={"strategy": "weighted_avg"}
    )
    assert E.fold_weights(params, "m", [0, 1, "full"], tmp_path) == pytest.approx([2.6, 3.0, 2.8])
    given = stand_in_params(
        ["m"],
        cv={"folds": [0, 1, "full"], "n_splits": 2},
        ensemble={"strategy": "weighted_avg", "weights": {"m/full": 5.0}},
    )
    assert E.fold_weights(given, "m", [0, 1, "full"], tmp_path) == pytest.approx([2.6, 3.0, 5.0])
    alone = stand_in_params(["m"], cv={"folds": ["full"]}, ensemble={"strategy": "weighted_avg"})
    assert E.fold_weights(alone, "m", ["full"], tmp_path) == [1.0]


def test_a_pool_or_metrics_file_missing_a_row_or_key_is_a_data_error_not_a_params_one(tmp_path):
    from dialsum.data import DataError
    from dialsum.ensemble.stage import _averaging_info

    pool = pd.DataFrame({"fname": ["x"], "model": ["m"], "source": ["m/0"], "view": ["orig"], "summary": ["hi"]})
    with pytest.raises(DataError, match="no candidate summary for y") as e:
        E.build_groups(pool, TOK, ["x", "y"])
    assert "params.yaml" not in str(e.value)
    path = tmp_path / "metrics/average/m.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"rouge2": 0.1, "rougeL": 0.2, "rouge_sum": 0.3, "bleu": 0.0}))
    params = stand_in_params(["m"], ensemble={"strategy": "averaging"})
    with pytest.raises(DataError, match=r"metrics/average/m.json: no rouge1; re-run"):
        _averaging_info(params, tmp_path)
