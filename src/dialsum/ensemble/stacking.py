"""``stacking``'s reranker: reference-free features per candidate and gradient-boosted trees from them to a
score, trained on out-of-fold candidates: a regressor to each candidate's ROUGE, or a LambdaMART ranker of each
pool's candidates (``ensemble.stacking_objective``)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

from ..metrics import CachedTokenizer, ngram_counts
from .pools import Group, weighted_consensus

VIEW_TYPES = ("orig", "reorder", "mask", "synonym", "paraphrase")


TAG = re.compile(r"#[A-Za-z]+\d*#")


def candidate_features(g: Group, models: Sequence[str], model_score: dict, tokenizer: CachedTokenizer) -> np.ndarray:
    """Reference-free features per candidate (the same columns on OOF, dev and test): model, its OOF ROUGE,
    length and its ratio to the pool median, MBR consensus, length-normalised log-prob and its rank in the
    pool, rank in its own n-best, n-gram novelty against the dialogue, speaker tags the dialogue does not
    have, repeated bigrams, the dialogue's length and the candidate's length over it, view type."""
    c = g.cands
    toks = [tokenizer.tokenize(t) for t in c["summary"]]
    lengths = np.array([len(t) for t in toks], dtype=float)
    median = float(np.median(lengths)) or 1.0
    consensus = weighted_consensus(g.sim, np.ones(len(c)))
    logprob = c["logprob"].astype(float).clip(lower=-50).to_numpy() if "logprob" in c else np.zeros(len(c))
    lp_rank = (-logprob).argsort(kind="stable").argsort() / max(len(c) - 1, 1)
    rank = c["candidate"].astype(float).to_numpy() if "candidate" in c else np.zeros(len(c))
    view_type = [str(v).split("-")[0] for v in c.get("view", pd.Series(["orig"] * len(c)))]
    source = tokenizer.tokenize(g.dialogue) if g.dialogue else []
    src1, src2 = set(ngram_counts(source, 1)), set(ngram_counts(source, 2))
    tags = set(TAG.findall(g.dialogue))

    def novelty(t, n, seen):
        grams = ngram_counts(t, n)
        return sum(v for k, v in grams.items() if k not in seen) / max(sum(grams.values()), 1) if seen else 0.0

    def repeated(t):
        grams = ngram_counts(t, 2)
        return sum(v - 1 for v in grams.values() if v > 1) / max(sum(grams.values()), 1)

    cols = [
        *[(c["model"] == m).astype(float).to_numpy() for m in models],
        np.array([model_score.get(m, 0.0) for m in c["model"]]),
        lengths,
        lengths / median,
        consensus,
        logprob,
        lp_rank,
        rank,
        np.array([novelty(t, 1, src1) for t in toks]),
        np.array([novelty(t, 2, src2) for t in toks]),
        np.array([len(set(TAG.findall(t)) - tags) if g.dialogue else 0 for t in c["summary"]], dtype=float),
        np.array([repeated(t) for t in toks]),
        # how long a reference is follows how long its dialogue is: F1 rewards the length the reference has
        np.full(len(c), float(len(source))),
        lengths / max(len(source), 1),
        *[np.array([v == t for v in view_type], dtype=float) for t in VIEW_TYPES],
    ]
    return np.stack(cols, axis=1)


def fit_stacker(
    groups: list[Group],
    targets: list[np.ndarray],
    models: Sequence[str],
    model_score: dict,
    tokenizer: CachedTokenizer,
    seed: int,
    extra: list[np.ndarray] | None = None,
    objective: str = "regression",
):
    """Trees from OOF candidates' features to a score whose argmax is chosen; ``extra``: more columns per group
    (:func:`with_scores`), appended to :func:`candidate_features`'. ``objective`` (``ensemble.stacking_objective``):
    ``regression`` predicts each candidate's ROUGE against the OOF reference; ``lambdarank`` learns only the order
    within each pool (:func:`fit_ranker`). Either has a ``predict(features) -> scores``."""
    X = [candidate_features(g, models, model_score, tokenizer) for g in groups]
    if extra is not None:
        X = [np.hstack([x, e]) for x, e in zip(X, extra)]
    if objective == "lambdarank":
        return fit_ranker(X, targets, seed)
    from sklearn.ensemble import GradientBoostingRegressor

    reg = GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=1.0, random_state=seed)
    reg.fit(np.concatenate(X), np.concatenate(targets))
    return reg


def pool_ranks(t: np.ndarray) -> np.ndarray:
    """How many of its pool's candidates each candidate beats (ties share a rank): 0 .. len-1, the best highest."""
    t = np.round(np.asarray(t, dtype=float), 9)  # float noise must not split a tie
    return (t[None, :] < t[:, None]).sum(axis=1)


MAX_QUERY = 10_000  # lightgbm's limit on the rows of one query (here: a pool's candidates)


def lightgbm():
    """The lightgbm module, or a one-line error; called before the expensive part of a fit that needs it."""
    try:
        import lightgbm as lgb
    except (ImportError, OSError) as e:  # OSError: the wheel's libgomp is missing
        raise ValueError(  # the ensemble stage's one-line error, naming the key
            f"ensemble.stacking_objective = lambdarank needs lightgbm ({e}): pip install -r requirements.txt"
        ) from None
    return lgb


def fit_ranker(X: list[np.ndarray], targets: list[np.ndarray], seed: int, gain_power: int = 1):
    """LambdaMART (lightgbm's ``LGBMRanker``) on one query per pool, each candidate's relevance the number of
    pool candidates it beats, truncation level 4 (only pairs with one of a pool's 4 top-scored candidates get a
    gradient): the fit goes to the top of each pool, where the argmax is decided. A relevance r gains
    ``r ** gain_power`` (1: linear, what ``stacking_objective: lambdarank`` uses; 2 weighs the top more).
    Single-threaded and ``deterministic``, so a CPU fit is byte-identical run to run."""
    lgb = lightgbm()
    if big := [len(t) for t in targets if len(t) > MAX_QUERY]:
        raise ValueError(
            f"ensemble.stacking_objective = lambdarank: a pool of {big[0]} candidates is over lightgbm's "
            f"{MAX_QUERY} per query; use regression"
        )
    rel = [pool_ranks(t) for t in targets]
    top = max((int(r.max()) for r in rel if len(r)), default=0)
    ranker = lgb.LGBMRanker(
        n_estimators=300,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=20,
        # a pool of n candidates has relevances 0 .. n-1
        label_gain=[float(r**gain_power) for r in range(top + 1)],
        lambdarank_truncation_level=4,
        random_state=seed,
        deterministic=True,
        force_row_wise=True,  # lightgbm otherwise picks row- or column-wise by timing: not reproducible
        n_jobs=1,
        verbose=-1,
    )
    ranker.fit(np.concatenate(X), np.concatenate(rel), group=[len(t) for t in targets])
    return ranker


def with_scores(score: np.ndarray) -> np.ndarray:
    """A model's score of a pool's candidates as two stacking columns: the score and its gap to the pool's best."""
    score = np.asarray(score, dtype=float)
    return np.stack([score, score - score.max()], axis=1) if len(score) else np.zeros((0, 2))
