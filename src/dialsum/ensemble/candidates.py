"""The stored candidates: what the predict stage wrote per model x fold (:func:`load_candidates`), their
out-of-fold scores, the collapse check that leaves near-constant sources out, and each candidate's ROUGE
against its references (the targets the fitted strategies learn from)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import paths
from ..params import Params, typed
from .pools import Group

log = logging.getLogger(__package__)


def read_candidates(path) -> pd.DataFrame:
    """One predictions CSV (fname, view, summary, logprob, ...); files without a ``view`` column are the
    original view. Text stays strings: an empty summary must not become NaN, nor fname 001 the number 1."""
    df = pd.read_csv(path, dtype={"fname": str, "summary": str, "view": str}, keep_default_na=False)
    df = df if "view" in df else df.assign(view="orig")
    return df if "candidate" in df else df.assign(candidate=0)


def check_rows(df: pd.DataFrame, path, want: Sequence[str] | None) -> None:
    """One original-view summary (candidate 0) per dialogue, and, with ``want``, one for each of those fnames: a
    file that lost or repeated rows would otherwise be read as it is (a missing dialogue silently voted on, a
    repeated one voted twice)."""
    from ..data import DataError

    orig = df[(df["view"] == "orig") & (df["candidate"] == 0)]["fname"]
    if orig.duplicated().any():
        fname = orig[orig.duplicated()].iloc[0]
        raise DataError(f"{path}: fname {fname} has {int((orig == fname).sum())} original summaries; re-run predict")
    if want is not None and (missing := [f for f in want if f not in set(orig)]):
        raise DataError(
            f"{path}: no summary for fname {missing[0]} ({len(missing)} of {len(want)} dialogues missing); re-run predict"
        )


def load_candidates(
    params: Params | dict, splits: Sequence[str], root: Path = Path("."), expected: dict | None = None
) -> tuple[dict, dict]:
    """What the predict stage wrote for every model x fold of ``params``: ``{split: candidates}`` (every view,
    with ``source`` = "model/fold" and ``model`` columns) for each of ``splits`` (oof, dev, test), and
    ``{source: predict metrics}`` (dev scores and, for CV folds, ``oof``). Each file has one original summary per
    dialogue, and one for every fname of ``expected[split]`` (:func:`check_rows`), or a one-line DataError."""
    params = typed(params)
    cands: dict = {s: [] for s in splits}
    scored = {}
    for m in params.models:
        for f in params.cv.folds:
            src = f"{m}/{f}"
            for s in splits:
                path = root / paths.predictions(src, s)
                df = read_candidates(path)
                check_rows(df, path, (expected or {}).get(s))
                cands[s].append(df.assign(source=src, model=m))
            scored[src] = json.loads((root / paths.predict_metrics(m, f)).read_text())
    return {s: pd.concat(v, ignore_index=True) for s, v in cands.items()}, scored


def oof_rouge(scored: dict) -> dict:
    """``{source: OOF rouge_sum}`` of the sources that have out-of-fold rows (fold ``full`` has none)."""
    return {src: m["oof"]["rouge_sum"] for src, m in scored.items() if m.get("oof")}


def collapsed_sources(cands: pd.DataFrame, ratio: float) -> dict:
    """Sources whose own summaries (original view, candidate 0) are near-constant: fewer distinct texts than
    ``ratio`` x their dialogues, or only one (``ratio`` 0: none). Reference-free, so it may look at dev and
    test."""
    orig = cands[(cands["view"] == "orig") & (cands.get("candidate", 0) == 0)]
    out = {}
    for src, g in orig.groupby("source", sort=True):
        n, distinct = g["fname"].nunique(), g["summary"].nunique()
        if ratio > 0 and distinct < max(2.0, ratio * n):
            out[src] = {"distinct_summaries": int(distinct), "dialogues": int(n)}
    return out


def drop_collapsed(cands: dict, ratio: float, n_sources: int) -> tuple[dict, dict]:
    """``cands`` ({split: candidates}) without the collapsed sources (:func:`collapsed_sources` over dev and
    test), unless all ``n_sources`` collapsed; and ``{source: counts}`` of the collapsed. A near-constant
    member would win every vote among its own copies."""
    collapsed = collapsed_sources(pd.concat([cands["dev"], cands["test"]]), ratio)
    for src, c in collapsed.items():
        log.warning(
            "%s collapsed: %d distinct summaries for %d dialogues; left out of the ensemble",
            src,
            c["distinct_summaries"],
            c["dialogues"],
        )
    if collapsed and len(collapsed) < n_sources:
        return {s: c[~c["source"].isin(collapsed)] for s, c in cands.items()}, collapsed
    if collapsed:
        log.warning("every source collapsed: all are kept")
    return cands, collapsed


def candidate_targets(groups: list[Group], refs: dict, scorer) -> list[np.ndarray]:
    """Each candidate's mean ROUGE-1/2/L F1 against its dialogue's references (``refs``: fname -> [ref])."""
    return [
        scorer.per_row(list(g.cands["summary"]), [refs[g.fname]] * len(g.cands))[:, :3].mean(axis=1) for g in groups
    ]
