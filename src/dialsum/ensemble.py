"""Combining candidate summaries from models x folds (x TTA views).

``majority_vote`` is MBR consensus: per dialogue, the candidate whose mean ROUGE-1/2 F1 against all the
other candidates is highest. Each distinct text is tokenized once and its n-gram counts are built once;
pairs then cost a Counter intersection. ROUGE-L is left out of the consensus on purpose: its LCS is
quadratic in pure Python and ranks candidates almost as ROUGE-1/2 do.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from .metrics import CachedTokenizer, ngram_counts, ngram_f1

log = logging.getLogger(__name__)
STRATEGIES = ("majority_vote",)


def consensus_scores(candidates: Sequence[str], tokenizer: CachedTokenizer) -> np.ndarray:
    """Mean ROUGE-1/2 F1 of each candidate against the others (1 candidate: 1.0)."""
    n = len(candidates)
    if n == 1:
        return np.ones(1)
    toks = tokenizer.tokenize_many(candidates)
    grams = [(ngram_counts(t, 1), ngram_counts(t, 2)) for t in toks]
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if candidates[i] == candidates[j]:
                s = 1.0
            else:
                s = (ngram_f1(grams[i][0], grams[j][0]) + ngram_f1(grams[i][1], grams[j][1])) / 2
            sim[i, j] = sim[j, i] = s
    return sim.sum(axis=1) / (n - 1)


def mbr_select(cands: pd.DataFrame, tokenizer: CachedTokenizer, order: Sequence[str]) -> pd.DataFrame:
    """One row per fname (in ``order``) from ``cands`` [fname, source, view, summary]; ties go to the
    first candidate in source order, so the choice is deterministic."""
    # Pre-tokenize every distinct text in one batch (kiwipiepy is much faster that way).
    tokenizer.tokenize_many(cands["summary"].unique())
    out = []
    groups = dict(tuple(cands.groupby("fname", sort=False)))
    for fname in order:
        g = groups.get(fname)
        if g is None:
            raise ValueError(f"no candidate summary for {fname}")
        scores = consensus_scores(list(g["summary"]), tokenizer)
        best = int(np.argmax(scores))
        out.append({"fname": fname, "summary": g["summary"].iloc[best], "source": g["source"].iloc[best],
                    "consensus": round(float(scores[best]), 6)})
    return pd.DataFrame(out)
