"""A dialogue's candidate pool (:class:`Group`) and choosing one candidate from it: pairwise ROUGE-1/2
similarities (:func:`dialsum.metrics.similarity_matrix`, shared with MBR decoding), weighted MBR consensus, the
deterministic :func:`pick` and :func:`select`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import DataError
from ..metrics import CachedTokenizer, similarity_matrix


def seeded_parts(n: int, k: int, seed: int) -> np.ndarray:
    """Which of ``min(k, n)`` parts each of ``n`` dialogues falls in: a seeded permutation, cut round-robin, so
    the parts differ in size by at most one (cross-fitting's split, and the cross-encoder feature's)."""
    return np.random.default_rng(seed).permutation(n) % max(1, min(k, n))


def training_rows(t: np.ndarray, n: int) -> np.ndarray:
    """Which of a pool's candidates (targets ``t``) to train on when ``n`` per dialogue are asked for (0 = all):
    the best, the worst and evenly spaced ranks between, so that every pool still shows its full spread."""
    if not n or n >= len(t):
        return np.arange(len(t))
    order = np.argsort(-np.asarray(t, dtype=float), kind="stable")
    return np.sort(order[np.unique(np.round(np.linspace(0, len(t) - 1, n)).astype(int))])


def weighted_consensus(sim: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Score of each candidate = weighted mean similarity to all candidates, itself included (so a lone
    heavy voter can still pick its own candidate; with equal weights the ranking is plain MBR)."""
    w = np.asarray(w, dtype=float)
    total = w.sum()
    return (sim @ w) / total if total > 0 else sim.mean(axis=1)


@dataclass
class Group:
    """The candidates of one dialogue (every source x view x pool candidate), their pairwise similarities
    and the dialogue itself (for reference-free features; may be empty). ``references``: only on the groups a
    fitted strategy learns from (set by ``combine`` where it makes their targets): never on the pools it only
    chooses for, but on dev's with fold ``full``, where dev is what it learns from (cross-fitted)."""

    fname: str
    cands: pd.DataFrame
    sim: np.ndarray
    dialogue: str = ""
    references: tuple[str, ...] = ()


def build_groups(
    cands: pd.DataFrame, tokenizer: CachedTokenizer, order: Sequence[str], dialogues: dict | None = None
) -> list[Group]:
    """One :class:`Group` per fname in ``order`` from ``cands`` [fname, source, model, view, summary, ...];
    ``dialogues`` (fname -> text) feeds the features that compare a summary with its dialogue."""
    tokenizer.tokenize_many(cands["summary"].unique())  # one batch: kiwipiepy is much faster that way
    groups = dict(tuple(cands.groupby("fname", sort=False)))
    out = []
    for fname in order:
        g = groups.get(fname)
        if g is None:
            raise DataError(f"no candidate summary for {fname}: re-run predict (dvc repro)")
        g = g.reset_index(drop=True)
        out.append(Group(fname, g, similarity_matrix(list(g["summary"]), tokenizer), (dialogues or {}).get(fname, "")))
    return out


def pick(g: Group, s: np.ndarray) -> int:
    """The index of the best score; a tie goes to the higher model log-prob, then to the first candidate."""
    s = np.round(np.asarray(s, dtype=float), 9)
    top = np.flatnonzero(s == s.max())
    if len(top) > 1 and "logprob" in g.cands:
        lp = g.cands["logprob"].astype(float).to_numpy()[top]
        top = top[lp == lp.max()]
    return int(top[0])


def select(groups: list[Group], score) -> pd.DataFrame:
    """The :func:`pick` of ``score(group) -> array`` per group."""
    rows = []
    for g in groups:
        s = np.asarray(score(g), dtype=float)
        best = pick(g, s)
        c = g.cands.iloc[best]
        rows.append(
            {
                "fname": g.fname,
                "summary": c["summary"],
                "source": c["source"],
                "view": c.get("view", "orig"),
                "candidate": int(c.get("candidate", 0)),
                "score": round(float(s[best]), 6),
            }
        )
    return pd.DataFrame(rows)


def mbr_select(cands: pd.DataFrame, tokenizer: CachedTokenizer, order: Sequence[str]) -> pd.DataFrame:
    """``majority_vote`` on a candidate frame (kept for callers that have no groups yet)."""
    groups = build_groups(cands, tokenizer, order)
    return select(groups, lambda g: weighted_consensus(g.sim, np.ones(len(g.cands)))).rename(
        columns={"score": "consensus"}
    )


def vote_weights(cands: pd.DataFrame, weights: dict) -> np.ndarray:
    """Per-candidate weight: by source (``model/fold``), else by model, else 1."""
    return np.array([float(weights.get(s, weights.get(m, 1.0))) for s, m in zip(cands["source"], cands["model"])])
