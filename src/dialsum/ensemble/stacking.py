"""``stacking``'s reranker: reference-free features per candidate and a gradient-boosted regressor from them
to the candidate's ROUGE, trained on out-of-fold candidates."""

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
):
    """A regressor from OOF candidates' features to their ROUGE against the OOF reference; ``extra``: more
    columns per group (:func:`with_scores`), appended to :func:`candidate_features`'."""
    from sklearn.ensemble import GradientBoostingRegressor

    X = [candidate_features(g, models, model_score, tokenizer) for g in groups]
    X = np.concatenate([np.hstack([x, e]) for x, e in zip(X, extra)] if extra is not None else X)
    y = np.concatenate(targets)
    reg = GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=1.0, random_state=seed)
    reg.fit(X, y)
    return reg


def with_scores(score: np.ndarray) -> np.ndarray:
    """A model's score of a pool's candidates as two stacking columns: the score and its gap to the pool's best."""
    score = np.asarray(score, dtype=float)
    return np.stack([score, score - score.max()], axis=1) if len(score) else np.zeros((0, 2))
