"""Combining candidate summaries from models x folds x TTA views, one choice per dialogue.

Every strategy scores the candidates of one dialogue and takes the best (ties: the first candidate in
source order, so choices are deterministic):

- ``majority_vote``: MBR consensus, each candidate's mean ROUGE-1/2 F1 to all candidates.
- ``rouge_weighted``: the same vote with each candidate's vote weighted by its source's out-of-fold ROUGE
  (or ``ensemble.weights``).
- ``blending``: per-model vote weights fitted on the out-of-fold rows (seeded search over the simplex,
  maximising the ROUGE of the selection against the OOF references), then applied to dev/test.
- ``stacking``: a gradient-boosted regressor trained on out-of-fold candidates predicts each candidate's
  ROUGE from features that need no reference (model, its OOF ROUGE, length, length ratio, consensus,
  mean log-prob, view type); the argmax is chosen.
- ``averaging`` / ``weighted_avg`` average log-probabilities *during* generation (see
  :func:`dialsum.generation.summarize_averaged`); across models with other tokenizers their outputs are
  combined here by ``majority_vote`` / ``rouge_weighted``.

Similarities: each distinct text is tokenized once and its n-gram counts built once; a pair then costs a
Counter intersection. ROUGE-L is left out of the vote on purpose: its LCS is quadratic in pure Python and
ranks candidates almost as ROUGE-1/2 do.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .metrics import CachedTokenizer, ngram_counts

log = logging.getLogger(__name__)
STRATEGIES = ("averaging", "weighted_avg", "majority_vote", "rouge_weighted", "stacking", "blending")
VIEW_TYPES = ("orig", "reorder", "mask", "synonym", "paraphrase")


def _overlap(a: dict, b: dict) -> int:
    if len(a) > len(b):
        a, b = b, a
    get = b.get
    return sum(min(c, get(k, 0)) for k, c in a.items())


def similarity_matrix(texts: Sequence[str], tokenizer: CachedTokenizer) -> np.ndarray:
    """Pairwise mean of ROUGE-1 and ROUGE-2 F1 (1 on the diagonal).

    F1 = 2 * overlap / (|a| + |b|) on clipped n-gram counts (rouge-score's definition); each distinct text
    is counted once and duplicates share its row.
    """
    uniq = list(dict.fromkeys(texts))
    index = [uniq.index(t) for t in texts] if len(uniq) < len(texts) else list(range(len(texts)))
    toks = tokenizer.tokenize_many(uniq)
    grams = []
    for t in toks:
        g1, g2 = ngram_counts(t, 1), ngram_counts(t, 2)
        grams.append((g1, sum(g1.values()), g2, sum(g2.values())))
    m = len(uniq)
    u = np.eye(m)
    for i in range(m):
        a1, n1, a2, n2 = grams[i]
        for j in range(i + 1, m):
            b1, k1, b2, k2 = grams[j]
            f1 = 2 * _overlap(a1, b1) / (n1 + k1) if n1 + k1 else 0.0
            f2 = 2 * _overlap(a2, b2) / (n2 + k2) if n2 + k2 else 0.0
            u[i, j] = u[j, i] = (f1 + f2) / 2
    sim = u[np.ix_(index, index)]
    np.fill_diagonal(sim, 1.0)
    return sim


def weighted_consensus(sim: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Score of each candidate = weighted mean similarity to all candidates, itself included (so a lone
    heavy voter can still pick its own candidate; with equal weights the ranking is plain MBR)."""
    w = np.asarray(w, dtype=float)
    total = w.sum()
    return (sim @ w) / total if total > 0 else sim.mean(axis=1)


def consensus_scores(candidates: Sequence[str], tokenizer: CachedTokenizer) -> np.ndarray:
    """Mean ROUGE-1/2 F1 of each candidate against the *others* (1 candidate: 1.0)."""
    n = len(candidates)
    if n == 1:
        return np.ones(1)
    sim = similarity_matrix(candidates, tokenizer)
    return (sim.sum(axis=1) - 1.0) / (n - 1)


@dataclass
class Group:
    """The candidates of one dialogue and their pairwise similarities."""
    fname: str
    cands: pd.DataFrame
    sim: np.ndarray


def build_groups(cands: pd.DataFrame, tokenizer: CachedTokenizer, order: Sequence[str]) -> list[Group]:
    """One :class:`Group` per fname in ``order`` from ``cands`` [fname, source, model, view, summary, ...]."""
    tokenizer.tokenize_many(cands["summary"].unique())  # one batch: kiwipiepy is much faster that way
    groups = dict(tuple(cands.groupby("fname", sort=False)))
    out = []
    for fname in order:
        g = groups.get(fname)
        if g is None:
            raise ValueError(f"no candidate summary for {fname}")
        g = g.reset_index(drop=True)
        out.append(Group(fname, g, similarity_matrix(list(g["summary"]), tokenizer)))
    return out


def select(groups: list[Group], score) -> pd.DataFrame:
    """The argmax of ``score(group) -> array`` per group."""
    rows = []
    for g in groups:
        s = np.asarray(score(g), dtype=float)
        best = int(np.argmax(s))
        c = g.cands.iloc[best]
        rows.append({"fname": g.fname, "summary": c["summary"], "source": c["source"],
                     "view": c.get("view", "orig"), "score": round(float(s[best]), 6)})
    return pd.DataFrame(rows)


def mbr_select(cands: pd.DataFrame, tokenizer: CachedTokenizer, order: Sequence[str]) -> pd.DataFrame:
    """``majority_vote`` on a candidate frame (kept for callers that have no groups yet)."""
    groups = build_groups(cands, tokenizer, order)
    return select(groups, lambda g: weighted_consensus(g.sim, np.ones(len(g.cands)))).rename(
        columns={"score": "consensus"})


def vote_weights(cands: pd.DataFrame, weights: dict) -> np.ndarray:
    """Per-candidate weight: by source (``model/fold``), else by model, else 1."""
    return np.array([float(weights.get(s, weights.get(m, 1.0))) for s, m in zip(cands["source"], cands["model"])])


# --- stacking ---------------------------------------------------------------------------------------------

def candidate_features(g: Group, models: Sequence[str], model_score: dict, tokenizer: CachedTokenizer) -> np.ndarray:
    """Reference-free features per candidate (the same columns on OOF, dev and test)."""
    c = g.cands
    lengths = np.array([len(tokenizer.tokenize(t)) for t in c["summary"]], dtype=float)
    median = float(np.median(lengths)) or 1.0
    consensus = weighted_consensus(g.sim, np.ones(len(c)))
    logprob = c["logprob"].astype(float).clip(lower=-50).to_numpy() if "logprob" in c else np.zeros(len(c))
    view_type = [str(v).split("-")[0] for v in c.get("view", pd.Series(["orig"] * len(c)))]
    cols = [
        *[(c["model"] == m).astype(float).to_numpy() for m in models],
        np.array([model_score.get(m, 0.0) for m in c["model"]]),
        lengths, lengths / median, consensus, logprob,
        *[np.array([v == t for v in view_type], dtype=float) for t in VIEW_TYPES],
    ]
    return np.stack(cols, axis=1)


def fit_stacker(groups: list[Group], targets: list[np.ndarray], models: Sequence[str], model_score: dict,
                tokenizer: CachedTokenizer, seed: int):
    """A regressor from OOF candidates' features to their ROUGE against the OOF reference."""
    from sklearn.ensemble import GradientBoostingRegressor

    X = np.concatenate([candidate_features(g, models, model_score, tokenizer) for g in groups])
    y = np.concatenate(targets)
    reg = GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=1.0,
                                    random_state=seed)
    reg.fit(X, y)
    return reg


# --- blending ---------------------------------------------------------------------------------------------

def fit_blend(groups: list[Group], targets: list[np.ndarray], models: Sequence[str], n_trials: int,
              seed: int) -> tuple[dict, float]:
    """Per-model vote weights maximising the mean OOF ROUGE of the weighted-MBR choice.

    Tries equal weights, each model alone, and ``n_trials`` seeded Dirichlet draws; the first best wins.
    """
    rng = np.random.default_rng(seed)
    k = len(models)
    trials = [np.ones(k)] + [np.eye(k)[i] + 1e-3 for i in range(k)] + list(rng.dirichlet(np.ones(k), n_trials))
    idx = [np.array([models.index(m) for m in g.cands["model"]]) for g in groups]
    best_w, best = trials[0], -1.0
    for w in trials:
        value = float(np.mean([t[int(np.argmax(weighted_consensus(g.sim, w[i])))]
                               for g, t, i in zip(groups, targets, idx)]))
        if value > best + 1e-12:
            best_w, best = w, value
    best_w = best_w / best_w.sum()
    return {m: round(float(x), 6) for m, x in zip(models, best_w)}, best


# --- one entry point for the ensemble stage and `dialsum summarize --ensemble` ----------------------------

def strategy_scorer(strategy: str, cfg: dict, models: Sequence[str], oof_cands: pd.DataFrame, oof_refs: dict,
                    oof_scores: dict, scorer, seed: int) -> tuple:
    """``(score(group) -> array, info)`` for ``strategy``: vote weights, or a stacker / blend fitted on the
    out-of-fold candidates ``oof_cands`` and their references ``oof_refs`` (fname -> [ref, ...]) only.

    ``oof_scores`` maps each source (``model/fold``) to its OOF ``rouge_sum``. For ``averaging`` /
    ``weighted_avg`` this scores the *across-model* step (the token-level averaging happened before).
    """
    tok = scorer.tokenizer
    model_oof = {m: float(np.mean([v for s, v in oof_scores.items() if s.split("/")[0] == m]))
                 for m in models if any(s.split("/")[0] == m for s in oof_scores)}
    weights = dict(cfg.get("weights") or {})
    info: dict = {}
    if strategy in ("majority_vote", "averaging"):
        return (lambda g: weighted_consensus(g.sim, np.ones(len(g.cands)))), info
    if strategy in ("rouge_weighted", "weighted_avg"):
        weights = weights or ({**oof_scores, **model_oof} if strategy == "rouge_weighted" else model_oof)
        if not weights:
            log.warning("%s: no out-of-fold scores (fold `full` only); votes are equal", strategy)
        info["weights"] = {k: round(float(v), 6) for k, v in weights.items()}
        return (lambda g: weighted_consensus(g.sim, vote_weights(g.cands, weights))), info
    if oof_cands.empty:
        raise ValueError(f"ensemble.strategy = {strategy} is fitted on out-of-fold predictions; "
                         "cv.folds must list fold indices (fold `full` has none)")
    oof_order = list(dict.fromkeys(oof_cands["fname"]))
    oof_groups = build_groups(oof_cands, tok, oof_order)
    # each OOF candidate's own ROUGE against its reference: the target; dev/test references never seen
    targets = [scorer.per_row(list(g.cands["summary"]), [oof_refs[g.fname]] * len(g.cands))[:, :3].mean(axis=1)
               for g in oof_groups]
    info["fitted_on"] = {"oof_dialogues": len(oof_groups), "oof_candidates": int(sum(map(len, targets)))}
    if strategy == "stacking":
        reg = fit_stacker(oof_groups, targets, models, model_oof, tok, seed)
        return (lambda g: reg.predict(candidate_features(g, models, model_oof, tok))), info
    if strategy == "blending":
        bw, oof_value = fit_blend(oof_groups, targets, list(models), cfg.get("blend_trials", 64), seed)
        info.update(blend_weights=bw, blend_oof_rouge=round(oof_value, 6))
        return (lambda g: weighted_consensus(g.sim, np.array([bw[m] for m in g.cands["model"]]))), info
    raise ValueError(f"unknown ensemble.strategy {strategy!r} (known: {', '.join(STRATEGIES)})")


def read_candidates(path) -> pd.DataFrame:
    """One predictions CSV (fname, view, summary, logprob, ...); files without a ``view`` column are the
    original view. Summaries stay strings: an empty summary must not become NaN."""
    df = pd.read_csv(path, dtype={"summary": str, "view": str}, keep_default_na=False)
    return df if "view" in df else df.assign(view="orig")


def load_candidates(params: dict, splits: Sequence[str], root: Path = Path(".")) -> tuple[dict, dict]:
    """What the predict stage wrote for every model x fold of ``params``: ``{split: candidates}`` (every view,
    with ``source`` = "model/fold" and ``model`` columns) for each of ``splits`` (oof, dev, test), and
    ``{source: predict metrics}`` (dev scores and, for CV folds, ``oof``)."""
    cands: dict = {s: [] for s in splits}
    scored = {}
    for m in params["models"]:
        for f in params["cv"]["folds"]:
            src = f"{m}/{f}"
            for s in splits:
                cands[s].append(read_candidates(root / f"predictions/{src}/{s}.csv").assign(source=src, model=m))
            scored[src] = json.loads((root / f"metrics/predict/{m}-{f}.json").read_text())
    return {s: pd.concat(v, ignore_index=True) for s, v in cands.items()}, scored


def oof_rouge(scored: dict) -> dict:
    """``{source: OOF rouge_sum}`` of the sources that have out-of-fold rows (fold ``full`` has none)."""
    return {src: m["oof"]["rouge_sum"] for src, m in scored.items() if m.get("oof")}


def fold_weights(params: dict, model: str, folds: list, root: Path = Path(".")) -> list[float]:
    """averaging: equal. weighted_avg: ``ensemble.weights`` by ``model/fold``, else each fold model's OOF ROUGE
    (from predict's metrics)."""
    if params["ensemble"]["strategy"] == "averaging":
        return [1.0] * len(folds)
    given = params["ensemble"].get("weights") or {}
    out = []
    for f in folds:
        if f"{model}/{f}" in given:
            out.append(float(given[f"{model}/{f}"]))
            continue
        oof = json.loads((root / f"metrics/predict/{model}-{f}.json").read_text()).get("oof")
        out.append(oof["rouge_sum"] if oof else 1.0)  # fold `full` has no OOF rows: weight 1
    return out


def summarize_new(params: dict, df: pd.DataFrame, root: Path = Path(".")) -> tuple[pd.DataFrame, dict]:
    """Summaries of new dialogues (``df``: fname, dialogue) by the pipeline's final ensemble: every trained
    model x fold of ``params`` (with its TTA views), combined by ``ensemble.strategy`` exactly as the ensemble
    stage does; stacking and blending are re-fitted from the stored out-of-fold predictions (seeded, so the
    same fit). Returns [fname, summary, source, view, score] and the strategy's info."""
    from . import data, generation, models, tta
    from .metrics import Scorer

    cfg, strategy, gen = params["ensemble"], params["ensemble"]["strategy"], params["generation"]
    folds = list(params["cv"]["folds"])
    scorer = Scorer.from_params(params)
    augmenter = tta.Augmenter.from_params(params["tta"], params["seed"])
    fnames, dialogues = list(df["fname"]), list(df["dialogue"])
    pool = []
    for m in params["models"]:
        entry = params["zoo"][m]
        dirs = [root / f"models/{m}/{f}" for f in folds]
        for d in dirs:
            if not (d / "config.json").exists() and not (d / "adapter_config.json").exists():
                raise FileNotFoundError(f"{d}: no trained model; run `dvc repro` (or `dvc pull`) first")
        if strategy in ("averaging", "weighted_avg"):
            loaded = [models.load_for_inference(d, entry) for d in dirs]
            tok, family = loaded[0][1], loaded[0][2]
            tok.padding_side = "left"
            texts, lps = generation.summarize_averaged(
                [x[0] for x in loaded], fold_weights(params, m, folds, root), tok, family, dialogues, gen,
                entry["max_source_len"], gen["batch_size"], entry.get("prompt"), desc=f"{m} averaged")
            pool.append(pd.DataFrame({"fname": fnames, "view": "orig", "summary": texts, "logprob": lps,
                                      "source": f"{m}/avg", "model": m}))
            continue
        for f, d in zip(folds, dirs):
            model, tok, family = models.load_for_inference(d, entry)
            tok.padding_side = "left"
            out = generation.summarize_views(model, tok, family, fnames, dialogues, augmenter, "input", gen,
                                             entry["max_source_len"], gen["batch_size"], entry.get("prompt"),
                                             desc=f"{m}/{f}")
            pool.append(out.assign(source=f"{m}/{f}", model=m))
            del model
    pool = pd.concat(pool, ignore_index=True)
    oof_splits = ["oof"] if strategy in ("stacking", "blending") else []
    stored, scored = load_candidates(params, oof_splits, root)
    oof_scores = oof_rouge(scored)
    oof_cands = stored["oof"] if oof_splits else pd.DataFrame(columns=["fname"])
    oof_refs = {}
    if strategy in ("stacking", "blending"):
        train = data.load_processed(root / "data/processed")["train"]
        oof_refs = dict(zip(train["fname"], data.references(train)))
    score, info = strategy_scorer(strategy, cfg, params["models"], oof_cands, oof_refs, oof_scores, scorer,
                                  params["seed"])
    groups = build_groups(pool, scorer.tokenizer, fnames)
    return select(groups, score), {"strategy": strategy, "sources": sorted(set(pool["source"])), **info}
