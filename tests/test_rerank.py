"""The ``rerank`` strategy: a cross-encoder over (dialogue, candidate) pairs, trained on scored candidates."""

import numpy as np
import pandas as pd

from conftest import spy_references
from dialsum import ensemble as E
from dialsum.metrics import CachedTokenizer, Scorer
from dialsum.params import Ensemble

TOK = CachedTokenizer("whitespace")
WORDS = "tom mary doctor school tomorrow today goes comes booking phone market apple train ticket".split()


def pool_world(n, seed, split, dialogue, candidates):
    """``n`` dialogues, each with a random six-word reference and a wrong sentence; ``dialogue(i, ref, wrong)``
    writes the dialogue and ``candidates(i, ref, wrong)`` the pool as ``(model, summary)`` pairs."""
    rng = np.random.default_rng(seed)
    rows, refs, dialogues = [], {}, {}
    for i in range(n):
        f = f"{split}_{i}"
        ref, wrong = " ".join(rng.choice(WORDS, 6)), " ".join(rng.choice(WORDS, 6))
        refs[f], dialogues[f] = [ref], dialogue(i, ref, wrong)
        for m, text in candidates(i, ref, wrong):
            rows.append({"fname": f, "model": m, "source": f"{m}/0", "view": "orig", "candidate": 0, "summary": text})
    frame = pd.DataFrame(rows)
    return E.build_groups(frame, TOK, list(dict.fromkeys(frame["fname"])), dialogues), refs


def world(n, seed, split):
    """Each dialogue states its summary; `good` restates it, `bad` says something else, `flat` the same
    sentence for everything."""
    return pool_world(
        n,
        seed,
        split,
        lambda i, ref, wrong: f"#Person1#: {ref} #Person2#: okay",
        lambda i, ref, wrong: [("good", ref), ("bad", wrong), ("flat", "two people talk")],
    )


CFG = {"rerank_epochs": 6, "rerank_lr": 1e-4, "rerank_tokens": 1024}


def test_rerank_learns_to_rank_a_hand_made_pool():
    groups, refs = world(16, 0, "fit")
    scorer = Scorer("whitespace")
    targets = E.candidate_targets(groups, refs, scorer)
    reranker = E.fit_reranker(groups, targets, Ensemble(**CFG), seed=0)
    pool = pd.DataFrame(
        {
            "fname": "new",
            "model": ["bad", "good", "flat"],
            "source": ["bad/0", "good/0", "flat/0"],
            "view": "orig",
            "candidate": 0,
            "summary": ["apple market phone today comes", "mary books a train ticket tomorrow", "two people talk"],
        }
    )
    g = E.build_groups(pool, TOK, ["new"], {"new": "#Person1#: mary books a train ticket tomorrow #Person2#: okay"})
    s = E.rerank_scores(reranker, g[0])
    assert int(np.argmax(s)) == 1
    held, _ = world(10, 1, "held")
    chosen = E.select(held, lambda g: E.rerank_scores(reranker, g))
    assert (chosen["source"] == "good/0").mean() >= 0.8
    again = E.fit_reranker(groups, targets, Ensemble(**CFG), seed=0)  # seeded: the same fit
    assert np.array_equal(E.rerank_scores(again, g[0]), s)


def test_rerank_never_sees_dev_or_test_references_when_oof_exists(monkeypatch):
    oof, oof_refs = world(12, 0, "oof")
    dev, dev_refs = world(6, 1, "dev")
    test, test_refs = world(6, 2, "test")
    scorer = Scorer("whitespace")
    seen = spy_references(monkeypatch, scorer)
    out, info = E.combine(
        "rerank",
        {**CFG, "rerank_epochs": 1},
        ["good", "bad", "flat"],
        {"dev": dev, "test": test},
        oof,
        oof_refs,
        "oof",
        {},
        scorer,
        0,
    )
    assert len(out["dev"]) == 6 and len(out["test"]) == 6 and "crossfitted_on" not in info
    assert info["fitted_on"] == {"oof_dialogues": 12, "oof_candidates": 36}
    held_out = {r for refs in (dev_refs, test_refs) for x in refs.values() for r in x}
    assert seen and set(seen) <= {r for x in oof_refs.values() for r in x} and not (set(seen) & held_out)


def swapped_world(n, seed, split):
    """Two models, each right on half the dialogues; the other writes what the first speaker said. Both
    candidates overlap the dialogue alike and have the same length, so no model alone and no reference-free
    feature of stacking tells them apart; a reader of (dialogue, candidate) can: the summary is the answer."""
    return pool_world(
        n,
        seed,
        split,
        lambda i, ref, wrong: f"#Person1#: {wrong} #Person2#: {ref}",
        lambda i, ref, wrong: [(m, ref if m == ("a", "b")[i % 2] else wrong) for m in ("a", "b")],
    )


def test_auto_weighs_rerank_only_when_asked_and_then_chooses_it_where_it_wins():
    oof, oof_refs = swapped_world(40, 0, "oof")
    test, _ = swapped_world(8, 1, "test")
    scorer = Scorer("whitespace")
    cfg = {**CFG, "crossfit_folds": 2}
    _, plain = E.combine("auto", cfg, ["a", "b"], {"test": test}, oof, oof_refs, "oof", {}, scorer, 0)
    assert "rerank" not in plain["auto"]["rouge_sum_by_option"]
    out, info = E.combine(
        "auto", {**cfg, "auto_also": ["rerank"]}, ["a", "b"], {"test": test}, oof, oof_refs, "oof", {}, scorer, 0
    )
    table = info["auto"]["rouge_sum_by_option"]
    assert info["auto"]["chosen"] == "rerank", table
    assert table["rerank"] > max(table["single:a/0"], table["single:b/0"], table["stacking"])
    right = [f"{('a', 'b')[i % 2]}/0" for i in range(8)]
    assert (out["test"]["source"].to_numpy() == np.array(right)).mean() >= 0.75  # and it reads the new dialogues


def test_rerank_scores_a_candidate_longer_than_its_window():
    """A barely trained model can ramble past rerank_max_len: the pair is cut, never an error."""
    from dialsum.ensemble.rerank import Reranker

    r = Reranker(Ensemble(rerank_max_len=32), seed=0)
    pairs = [("#Person1#: " + "hello there " * 40, "word " * 100), ("#Person1#: hi", "a short one")]
    ids, _ = r._encode(pairs)
    assert max(map(len, ids)) <= 32 and len(ids[1]) < 32
    assert np.isfinite(r.predict(pairs)).all()


def test_training_rows_keep_the_best_the_worst_and_the_spread():
    from dialsum.ensemble.rerank import training_rows

    t = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8])
    assert training_rows(t, 0).tolist() == list(range(6)) and training_rows(t, 9).tolist() == list(range(6))
    assert training_rows(t, 2).tolist() == [1, 2]  # best (0.9) and worst (0.1)
    assert sorted(t[training_rows(t, 3)].tolist()) == [0.1, 0.7, 0.9]  # and a middle rank (the 3rd of 6)


def test_rerank_with_centered_targets_on_a_subset_of_each_pool_still_ranks():
    """``rerank_target: centered`` and ``rerank_pairs``: trained on 2 of each pool's 3 candidates (best and
    worst), regressing the gap to the pool's mean (fewer steps: a higher rate), it still puts the right summary first on new dialogues."""
    groups, refs = world(16, 0, "fit")
    targets = E.candidate_targets(groups, refs, Scorer("whitespace"))
    seen = []
    real = E.Reranker.fit
    E.Reranker.fit = lambda self, pairs, y: seen.append((len(pairs), np.asarray(y))) or real(self, pairs, y)
    try:
        reranker = E.fit_reranker(
            groups, targets, Ensemble(**{**CFG, "rerank_lr": 2e-4}, rerank_pairs=2, rerank_target="centered"), 0
        )
    finally:
        E.Reranker.fit = real
    assert seen[0][0] == 32  # 16 pools x 2
    means = np.array([t.mean() for t in targets])
    assert np.allclose(
        seen[0][1].reshape(16, 2).sum(axis=1), np.array([t.max() + t.min() for t in targets]) - 2 * means
    )
    held, _ = world(10, 1, "held")
    assert (E.select(held, lambda g: E.rerank_scores(reranker, g))["source"] == "good/0").mean() >= 0.8


def test_stacking_reads_the_cross_encoders_score_out_of_sample(monkeypatch):
    """``stacking_features: [rerank]``: where no reference-free feature tells two models apart (swapped_world)
    stacking alone is a coin toss; with the cross-encoder's score as a feature it picks the right one. The
    score a fitting row gets comes from a cross-encoder that was not fitted on that dialogue, and no dev or
    test reference is ever scored."""
    from dialsum.ensemble import rerank as R

    oof, oof_refs = swapped_world(40, 0, "oof")
    test, test_refs = swapped_world(8, 1, "test")
    scorer = Scorer("whitespace")
    fitted_on: list = []
    real_fit = R.fit_reranker
    monkeypatch.setattr(
        R, "fit_reranker", lambda g, t, c, s: fitted_on.append({x.fname for x in g}) or real_fit(g, t, c, s)
    )
    scored: list = []
    real_columns = R.rerank_columns
    monkeypatch.setattr(R, "rerank_columns", lambda r, g: scored.append((id(r), g.fname)) or real_columns(r, g))
    pooled: list = []  # every cross-encoder's scores of a pool
    real_score = R.Reranker.score
    monkeypatch.setattr(R.Reranker, "score", lambda self, g: pooled.append((id(self), g.fname)) or real_score(self, g))
    seen = spy_references(monkeypatch, scorer)
    right = np.array([f"{('a', 'b')[i % 2]}/0" for i in range(8)])

    plain, _ = E.combine("stacking", CFG, ["a", "b"], {"test": test}, oof, oof_refs, "oof", {}, scorer, 0)
    assert not fitted_on
    out, info = E.combine(
        "stacking",
        {**CFG, "stacking_features": ["rerank"]},
        ["a", "b"],
        {"test": test},
        oof,
        oof_refs,
        "oof",
        {},
        scorer,
        0,
    )
    assert info["stacking_features"] == ["rerank"] and info["fitted_on"] == {"oof_dialogues": 40, "oof_candidates": 80}
    assert len(fitted_on) == 2 and not (fitted_on[0] & fitted_on[1]) and len(fitted_on[0] | fitted_on[1]) == 40
    assert len(scored) == 40  # the fitting rows' columns, each row once; new pools take the mean below
    tested, both = {g.fname for g in test}, {rid for rid, _ in scored}  # the two cross-encoders
    by_pool: dict = {}
    for rid, fname in pooled:
        if fname in tested:
            by_pool.setdefault(fname, set()).add(rid)
    assert len(both) == 2 and set(by_pool) == tested and all(ids == both for ids in by_pool.values())
    first_fit_ids = {}
    for rid, fname in scored:  # the fitting rows' scores: each from the cross-encoder that never saw it
        first_fit_ids.setdefault(rid, set()).add(fname)
    assert len(first_fit_ids) == 2 and all(not (names & fit) for names, fit in zip(first_fit_ids.values(), fitted_on))
    assert (
        (out["test"]["source"].to_numpy() == right).mean()
        >= 0.75
        > (plain["test"]["source"].to_numpy() == right).mean()
    )
    held_out = {r for x in test_refs.values() for r in x}
    assert seen and not (set(seen) & held_out)
