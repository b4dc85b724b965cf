"""Combining candidate summaries from models x folds x TTA views, one choice per dialogue.

Every strategy scores the candidates of one dialogue (every source x view x pool candidate) and takes the
best (ties: the higher model log-prob, then the first candidate in source order, so choices are
deterministic). ``auto`` (the default) chooses among the others and each model alone by their cross-fitted
out-of-fold score (:func:`combine`); collapsed sources are left out before (:func:`collapsed_sources`).

- ``majority_vote``: MBR consensus, each candidate's mean ROUGE-1/2 F1 to all candidates.
- ``rouge_weighted``: the same vote with each candidate's vote weighted by its source's out-of-fold ROUGE
  (or ``ensemble.weights``).
- ``blending``: per-model vote weights fitted on the out-of-fold rows (seeded search over the simplex,
  maximising the ROUGE of the selection against the OOF references), then applied to dev/test.
- ``stacking``: a reranker: a gradient-boosted regressor trained on out-of-fold candidates predicts each
  candidate's ROUGE from features that need no reference (:func:`candidate_features`); the argmax is chosen.
- ``averaging`` / ``weighted_avg`` average log-probabilities *during* generation (see
  :meth:`dialsum.generation.Summarizer.averaged`); across models with other tokenizers their outputs are
  combined here by ``majority_vote`` / ``rouge_weighted``.

Similarities: each distinct text is tokenized once and its n-gram counts built once; a pair then costs a
Counter intersection. ROUGE-L is left out of the vote on purpose: its LCS is quadratic in pure Python and
ranks candidates almost as ROUGE-1/2 do.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .metrics import CachedTokenizer, ngram_counts
from . import paths
from .params import AVERAGING, ENSEMBLE_STRATEGIES, Ensemble, Params, ParamsError, section, typed

log = logging.getLogger(__name__)
STRATEGIES = ENSEMBLE_STRATEGIES
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
    """The candidates of one dialogue (every source x view x pool candidate), their pairwise similarities
    and the dialogue itself (for reference-free features; may be empty)."""

    fname: str
    cands: pd.DataFrame
    sim: np.ndarray
    dialogue: str = ""


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
            raise ValueError(f"no candidate summary for {fname}")
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


# --- stacking ---------------------------------------------------------------------------------------------

TAG = re.compile(r"#[A-Za-z]+\d*#")


def candidate_features(g: Group, models: Sequence[str], model_score: dict, tokenizer: CachedTokenizer) -> np.ndarray:
    """Reference-free features per candidate (the same columns on OOF, dev and test): model, its OOF ROUGE,
    length and its ratio to the pool median, MBR consensus, length-normalised log-prob and its rank in the
    pool, rank in its own n-best, n-gram novelty against the dialogue, speaker tags the dialogue does not
    have, repeated bigrams, view type."""
    c = g.cands
    toks = [tokenizer.tokenize(t) for t in c["summary"]]
    lengths = np.array([len(t) for t in toks], dtype=float)
    median = float(np.median(lengths)) or 1.0
    consensus = weighted_consensus(g.sim, np.ones(len(c)))
    logprob = c["logprob"].astype(float).clip(lower=-50).to_numpy() if "logprob" in c else np.zeros(len(c))
    lp_rank = (-logprob).argsort(kind="stable").argsort() / max(len(c) - 1, 1)
    rank = c["candidate"].astype(float).to_numpy() if "candidate" in c else np.zeros(len(c))
    view_type = [str(v).split("-")[0] for v in c.get("view", pd.Series(["orig"] * len(c)))]
    src1 = set(ngram_counts(tokenizer.tokenize(g.dialogue), 1)) if g.dialogue else set()
    src2 = set(ngram_counts(tokenizer.tokenize(g.dialogue), 2)) if g.dialogue else set()
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
):
    """A regressor from OOF candidates' features to their ROUGE against the OOF reference."""
    from sklearn.ensemble import GradientBoostingRegressor

    X = np.concatenate([candidate_features(g, models, model_score, tokenizer) for g in groups])
    y = np.concatenate(targets)
    reg = GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=1.0, random_state=seed)
    reg.fit(X, y)
    return reg


# --- blending ---------------------------------------------------------------------------------------------


def fit_blend(
    groups: list[Group], targets: list[np.ndarray], models: Sequence[str], n_trials: int, seed: int
) -> tuple[dict, float]:
    """Per-model vote weights maximising the mean OOF ROUGE of the weighted-MBR choice.

    Tries equal weights, each model alone, and ``n_trials`` seeded Dirichlet draws; the first best wins.
    """
    rng = np.random.default_rng(seed)
    k = len(models)
    trials = [np.ones(k)] + [np.eye(k)[i] + 1e-3 for i in range(k)] + list(rng.dirichlet(np.ones(k), n_trials))
    idx = [np.array([models.index(m) for m in g.cands["model"]]) for g in groups]
    best_w, best = trials[0], -1.0
    for w in trials:
        value = float(np.mean([t[pick(g, weighted_consensus(g.sim, w[i]))] for g, t, i in zip(groups, targets, idx)]))
        if value > best + 1e-12:
            best_w, best = w, value
    best_w = best_w / best_w.sum()
    return {m: round(float(x), 6) for m, x in zip(models, best_w)}, best


# --- one entry point for the ensemble stage and `dialsum summarize --ensemble` ----------------------------


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


def candidate_targets(groups: list[Group], refs: dict, scorer) -> list[np.ndarray]:
    """Each candidate's mean ROUGE-1/2/L F1 against its dialogue's references (``refs``: fname -> [ref])."""
    return [
        scorer.per_row(list(g.cands["summary"]), [refs[g.fname]] * len(g.cands))[:, :3].mean(axis=1) for g in groups
    ]


def _is_single(g: Group, model: str) -> np.ndarray:
    c = g.cands
    cand = c["candidate"] if "candidate" in c else 0
    return ((c["model"] == model) & (c["view"] == "orig") & (cand == 0)).to_numpy()


def fit_strategy(
    strategy: str,
    cfg: dict,
    models: Sequence[str],
    groups: list[Group],
    targets: list[np.ndarray],
    source_scores: dict,
    tok: CachedTokenizer,
    seed: int,
) -> tuple:
    """``(score(group) -> array, info)`` for ``strategy``, fitted (stacking, blending) on ``groups`` and their
    candidates' ``targets`` only. ``source_scores`` maps sources (``model/fold``) to their OOF ``rouge_sum``.

    ``single:<model>`` is that model alone: its original view's first candidate, from the fold with the best
    OOF score where a dialogue has several."""
    model_oof = {
        m: float(np.mean([v for s, v in source_scores.items() if s.split("/")[0] == m]))
        for m in models
        if any(s.split("/")[0] == m for s in source_scores)
    }
    cfg = section(Ensemble, cfg, "ensemble")
    weights = dict(cfg.weights or {})
    info: dict = {}
    if strategy.startswith("single:"):
        m = strategy.split(":", 1)[1]
        rank = {s: v for s, v in source_scores.items() if s.split("/")[0] == m}

        def single(g):
            mine = _is_single(g, m)
            if not mine.any():  # the model has no candidate here (a collapsed fold left out): MBR instead
                return weighted_consensus(g.sim, np.ones(len(g.cands)))
            return mine * (2.0 + np.array([rank.get(s, 0.0) for s in g.cands["source"]]))

        return single, info
    if strategy in ("majority_vote", "averaging"):
        return (lambda g: weighted_consensus(g.sim, np.ones(len(g.cands)))), info
    if strategy in ("rouge_weighted", "weighted_avg"):
        weights = weights or ({**source_scores, **model_oof} if strategy == "rouge_weighted" else model_oof)
        if not weights:
            log.warning("%s: no out-of-fold scores (fold `full` only); votes are equal", strategy)
        info["weights"] = {k: round(float(v), 6) for k, v in weights.items()}
        return (lambda g: weighted_consensus(g.sim, vote_weights(g.cands, weights))), info
    if strategy not in ("stacking", "blending"):
        raise ValueError(f"unknown ensemble.strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    if not groups:
        raise ValueError(f"ensemble.strategy = {strategy} is fitted on scored candidates and there are none")
    info["fitted_on"] = {"dialogues": len(groups), "candidates": int(sum(map(len, targets)))}
    if strategy == "stacking":
        reg = fit_stacker(groups, targets, models, model_oof, tok, seed)
        return (lambda g: reg.predict(candidate_features(g, models, model_oof, tok))), info
    bw, value = fit_blend(groups, targets, list(models), cfg.blend_trials, seed)
    info.update(blend_weights=bw, blend_fit_rouge=round(value, 6))
    return (lambda g: weighted_consensus(g.sim, np.array([bw.get(m, 0.0) for m in g.cands["model"]]))), info


def crossfit(
    strategy: str,
    cfg: dict,
    models,
    groups: list[Group],
    targets: list[np.ndarray],
    source_scores: dict,
    tok: CachedTokenizer,
    seed: int,
    folds: int,
) -> tuple[list[float], dict]:
    """Scores ``strategy`` on ``groups`` without letting a fitted strategy see the dialogue it chooses for:
    each of ``folds`` seeded parts of the dialogues is chosen for by a fit on the others. Returns the
    per-group ``{id(group): score array}`` and the mean target of the choices (x 3: a rouge_sum)."""
    fitted = strategy in ("stacking", "blending")
    if fitted and len(groups) < 2:
        raise ValueError(
            f"ensemble.strategy = {strategy} needs at least 2 scored dialogues to cross-fit on, got {len(groups)}"
        )
    folds = min(folds, len(groups))
    parts = np.random.default_rng(seed).permutation(len(groups)) % folds if fitted else np.zeros(len(groups), int)
    scores, values = {}, []
    for f in sorted(set(parts.tolist())):
        held = [i for i in range(len(groups)) if parts[i] == f]
        fit_on = [i for i in range(len(groups)) if parts[i] != f] if fitted else []
        score, _ = fit_strategy(
            strategy, cfg, models, [groups[i] for i in fit_on], [targets[i] for i in fit_on], source_scores, tok, seed
        )
        for i in held:
            s = np.asarray(score(groups[i]), dtype=float)
            scores[id(groups[i])] = s
            values.append(float(targets[i][pick(groups[i], s)]))
    return scores, 3 * float(np.mean(values)) if values else float("nan")


def options(models: Sequence[str], groups: list[Group], weighted: bool) -> list[str]:
    """What ``auto`` chooses among: each model alone first (so a tie goes to the simplest), then the
    strategies that make sense for this pool (``weighted``: there are OOF scores or ``ensemble.weights``)."""
    present = set().union(*(set(g.cands["model"]) for g in groups)) if groups else set()
    opts = [f"single:{m}" for m in models if m in present] + ["majority_vote"]
    opts += ["rouge_weighted"] if weighted else []
    if len(groups) >= 2:  # the fitted ones need dialogues to learn from and others to be scored on
        opts += ["stacking"] + (["blending"] if len(present) > 1 else [])
    return opts


def combine(
    strategy: str,
    cfg: dict,
    models: Sequence[str],
    pools: dict,
    fit_groups: list[Group],
    fit_refs: dict,
    fit_on: str,
    source_scores: dict,
    scorer,
    seed: int,
    dev_refs: dict | None = None,
) -> tuple[dict, dict]:
    """The ensemble: one summary per dialogue for every split of ``pools`` ({split: [Group]}).

    Fitted strategies (and ``auto``'s choice) learn from ``fit_groups`` with references ``fit_refs``:
    the out-of-fold pools (``fit_on`` = "oof"), or, with fold `full` only, the dev pools (``fit_on`` =
    "dev"): then the dev choices are cross-fitted (each dev dialogue chosen for by a fit on the others) and
    the metrics say so, and test is chosen by a fit on all of dev. With ``dev_refs`` ({fname: [reference]})
    and out-of-fold fitting, ``auto`` also reports each option's dev score: dev pools are shaped like test
    (a candidate per model x fold), out-of-fold pools are not. Returns ({split: selection}, info)."""
    cfg = section(Ensemble, cfg, "ensemble")
    tok, folds = scorer.tokenizer, cfg.crossfit_folds
    targets = candidate_targets(fit_groups, fit_refs, scorer) if fit_groups else []
    info: dict = {}
    runs: dict = {}  # option -> crossfit(...) on fit_groups, reused for the cross-fitted choices below
    fits: dict = {}  # option -> fit_strategy(...) on all of fit_groups, when auto scored the options on dev
    if strategy == "auto":
        if not fit_groups:
            raise ValueError("ensemble.strategy = auto chooses on scored candidates and there are none")
        for o in options(models, fit_groups, bool(source_scores or cfg.weights)):
            runs[o] = crossfit(o, cfg, models, fit_groups, targets, source_scores, tok, seed, folds)
        table = {o: round(run[1], 6) for o, run in runs.items()}
        chosen = max(table, key=lambda o: table[o])  # first best: a model alone wins ties
        info["auto"] = {
            "chosen": chosen,
            "chosen_on": fit_on
            if fit_on == "oof"
            else "dev (no out-of-fold rows: cross-fitted on dev, so its dev score is optimistic)",
            "rouge_sum_by_option": table,
        }
        log.info("auto: %s (rouge_sum on %s: %s)", chosen, fit_on, ", ".join(f"{k} {v:.4f}" for k, v in table.items()))
        if dev_refs and fit_on == "oof" and pools.get("dev"):
            # for the reader only: the choice stays the out-of-fold one, dev is what it is scored on
            dev_table = {}
            for o in table:
                fits[o] = fit_strategy(o, cfg, models, fit_groups, targets, source_scores, tok, seed)
                sel = select(pools["dev"], fits[o][0])
                dev_table[o] = round(
                    scorer.score(list(sel["summary"]), [dev_refs[f] for f in sel["fname"]])["rouge_sum"], 6
                )
            info["auto"]["dev_rouge_sum_by_option"] = dev_table
        strategy = chosen
    score, fitted = fits.get(strategy) or fit_strategy(
        strategy, cfg, models, fit_groups, targets, source_scores, tok, seed
    )
    if "fitted_on" in fitted:
        fitted["fitted_on"] = {f"{fit_on}_{k}": v for k, v in fitted["fitted_on"].items()}
    info.update(fitted)
    out = {}
    for split, groups in pools.items():
        if split == fit_on and strategy in ("stacking", "blending"):
            if groups is fit_groups and strategy in runs:  # auto cross-fitted exactly this already
                dev_scores = runs[strategy][0]
            else:
                dev_targets = targets if groups is fit_groups else candidate_targets(groups, fit_refs, scorer)
                dev_scores, _ = crossfit(strategy, cfg, models, groups, dev_targets, source_scores, tok, seed, folds)
            out[split] = select(groups, lambda g: dev_scores[id(g)])
            info["crossfitted_on"] = f"{split} ({folds} folds: each {split} dialogue chosen by a fit on the others)"
        else:
            out[split] = select(groups, score)
    return out, info


def read_candidates(path) -> pd.DataFrame:
    """One predictions CSV (fname, view, summary, logprob, ...); files without a ``view`` column are the
    original view. Text stays strings: an empty summary must not become NaN, nor fname 001 the number 1."""
    df = pd.read_csv(path, dtype={"fname": str, "summary": str, "view": str}, keep_default_na=False)
    df = df if "view" in df else df.assign(view="orig")
    return df if "candidate" in df else df.assign(candidate=0)


def load_candidates(params: Params | dict, splits: Sequence[str], root: Path = Path(".")) -> tuple[dict, dict]:
    """What the predict stage wrote for every model x fold of ``params``: ``{split: candidates}`` (every view,
    with ``source`` = "model/fold" and ``model`` columns) for each of ``splits`` (oof, dev, test), and
    ``{source: predict metrics}`` (dev scores and, for CV folds, ``oof``)."""
    params = typed(params)
    cands: dict = {s: [] for s in splits}
    scored = {}
    for m in params.models:
        for f in params.cv.folds:
            src = f"{m}/{f}"
            for s in splits:
                cands[s].append(read_candidates(root / paths.predictions(src, s)).assign(source=src, model=m))
            scored[src] = json.loads((root / paths.predict_metrics(m, f)).read_text())
    return {s: pd.concat(v, ignore_index=True) for s, v in cands.items()}, scored


def oof_rouge(scored: dict) -> dict:
    """``{source: OOF rouge_sum}`` of the sources that have out-of-fold rows (fold ``full`` has none)."""
    return {src: m["oof"]["rouge_sum"] for src, m in scored.items() if m.get("oof")}


def fold_weights(params: Params | dict, model: str, folds: list, root: Path = Path(".")) -> list[float]:
    """averaging: equal. weighted_avg: ``ensemble.weights`` by ``model/fold``, else each fold model's OOF ROUGE
    (from predict's metrics)."""
    params = typed(params)
    if params.ensemble.strategy == "averaging":
        return [1.0] * len(folds)
    given = params.ensemble.weights or {}
    out = []
    for f in folds:
        if f"{model}/{f}" in given:
            out.append(float(given[f"{model}/{f}"]))
            continue
        oof = json.loads((root / paths.predict_metrics(model, f)).read_text()).get("oof")
        out.append(oof["rouge_sum"] if oof else 1.0)  # fold `full` has no OOF rows: weight 1
    return out


FITTED = ("auto", "stacking", "blending")  # strategies that learn from scored candidates


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


def fit_set(strategy: str, cands: dict, frames: dict, tok: CachedTokenizer) -> tuple[list, dict, str]:
    """What a fitted strategy (and ``auto``'s choice) learns from: ``(groups, {fname: references}, on)``, the
    out-of-fold pools (``on`` = "oof"), or with fold ``full`` only the dev pools ("dev", cross-fitted by
    :func:`combine`); nothing ("none") for the other strategies. ``frames``: the processed train and dev."""
    if strategy not in FITTED:
        return [], {}, "none"
    split = "oof" if not cands["oof"].empty else "dev"
    frame = frames["train"] if split == "oof" else frames["dev"]
    from .data import references

    refs = dict(zip(frame["fname"], references(frame)))
    order = list(dict.fromkeys(cands[split]["fname"]))
    return build_groups(cands[split], tok, order, dict(zip(frame["fname"], frame["dialogue"]))), refs, split


KEYS = ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")  # the scores metrics/ensemble.json reports


def _scores(s: dict) -> dict:
    return {k: s[k] for k in KEYS}


def fold_members(params: Params | dict, model: str, root: Path = Path(".")) -> list:
    """``model``'s trained fold models (``cv.folds``) as :class:`~dialsum.generation.Summarizer` objects;
    a missing folder or a fold with another vocabulary (log-probs that cannot be averaged) stops here."""
    params = typed(params)
    members = []
    for f in params.cv.folds:
        d = root / paths.model_dir(model, f)
        member = _load_member(params, model, d)
        if members and member.tokenizer.get_vocab() != members[0].tokenizer.get_vocab():
            raise ValueError(
                f"{d} has another vocabulary than fold {params.cv.folds[0]}; "
                "log-probabilities of different tokenizers cannot be averaged"
            )
        members.append(member)
    return members


def _load_member(params: Params, model: str, model_dir: Path):
    from .generation import Summarizer

    _check_trained(model_dir)
    return Summarizer.load(model_dir, params.zoo[model], params.generation)


def _check_trained(model_dir: Path) -> None:
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no trained model; run `dvc repro` (or `dvc pull`) first")


def average_folds(
    params: Params | dict, model: str, frames: dict[str, pd.DataFrame], root: Path = Path(".")
) -> tuple[dict[str, pd.DataFrame], list[float]]:
    """Model averaging (the average stage, and ``dialsum summarize --ensemble``): one beam search per dialogue
    of each frame (fname, dialogue) on the weighted mean of ``model``'s fold models' next-token log-probs.
    Returns ``{split: [fname, view, summary, logprob]}`` and the fold weights (:func:`fold_weights`)."""
    params = typed(params)
    members = fold_members(params, model, root)
    weights = fold_weights(params, model, list(params.cv.folds), root)
    log.info("averaging %d fold models of %s, weights %s", len(members), model, weights)
    out = {}
    for split, df in frames.items():
        texts, lps = members[0].averaged(members[1:], weights, df["dialogue"], desc=f"{split} averaged")
        out[split] = pd.DataFrame(
            {"fname": list(df["fname"]), "view": "orig", "summary": texts, "logprob": [round(x, 6) for x in lps]}
        )
    return out, weights


def choose(
    params: Params, pools: dict, inputs: dict, stored: dict, frames: dict, oof_scores: dict, scorer
) -> tuple[dict, dict, dict]:
    """One summary per dialogue of each ``inputs[split]`` (fname, dialogue) from ``pools[split]`` by
    ``ensemble.strategy``; fitted strategies learn from the ``stored`` candidates (:func:`fit_set`; ``frames``:
    the processed train and dev). Returns ``({split: chosen rows}, strategy info, {split: groups})``."""
    cfg, tok = params.ensemble, scorer.tokenizer
    groups = {
        s: build_groups(pools[s], tok, list(df["fname"]), dict(zip(df["fname"], df["dialogue"])))
        for s, df in inputs.items()
    }
    fit_groups, fit_refs, fit_on = fit_set(cfg.strategy, stored, frames, tok)
    dev_refs = None
    if "dev" in groups and any(c.startswith("summary") for c in frames["dev"]):
        from .data import references

        dev_refs = dict(zip(frames["dev"]["fname"], references(frames["dev"])))
    try:
        result, info = combine(
            cfg.strategy,
            cfg,
            params.models,
            groups,
            fit_groups,
            fit_refs,
            fit_on,
            oof_scores,
            scorer,
            params.seed,
            dev_refs=dev_refs,
        )
    except ValueError as e:
        raise ParamsError(f"params.yaml: {e}") from None
    return result, info, groups


def run(params: Params | dict, root: Path = Path(".")) -> tuple[dict[str, pd.DataFrame], dict]:
    """The ensemble stage: every model x fold x view's stored candidates (or, for the averaging strategies,
    each model's fold average) combined by ``ensemble.strategy`` over dev and test. Returns the chosen rows
    ``{dev, test}`` and metrics/ensemble.json: dev ROUGE of the ensemble, of every source and of each model
    over its folds, the best single source and the gain."""
    from .data import load_processed, references
    from .metrics import Scorer

    params = typed(params)
    strategy = params.ensemble.strategy
    d = load_processed(root / paths.PROCESSED)
    scorer = Scorer.from_params(params)
    refs = references(d["dev"])
    cands, scored = load_candidates(params, ("oof", "dev", "test"), root)
    # predict@ scored the original view on dev and on its OOF rows with these same metrics settings
    sources = {src: _scores(m) for src, m in scored.items()}
    oof_scores = oof_rouge(scored)
    for src in sources:
        log.info("dev %s: rouge_sum %.4f (oof %s)", src, sources[src]["rouge_sum"], oof_scores.get(src))
    cands, collapsed = drop_collapsed(cands, params.ensemble.collapse_ratio, len(sources))
    info: dict = {}
    if strategy in AVERAGING:
        info["averaging"] = _averaging_info(params, root)
        sources.update({f"{m}/avg": _scores(a) for m, a in info["averaging"]["token_level"].items()})
        pools = {s: _averaged_pool(params, s, root) for s in ("dev", "test")}
    else:
        pools = {s: cands[s] for s in ("dev", "test")}
    result, fitted, groups = choose(params, pools, {s: d[s] for s in ("dev", "test")}, cands, d, oof_scores, scorer)
    ens = scorer.score(list(result["dev"]["summary"]), refs)
    best = max(sources, key=lambda s: sources[s]["rouge_sum"])
    chosen_views = result["dev"]["view"].value_counts().to_dict()
    ranks = result["dev"]["candidate"].value_counts().to_dict()
    metrics = {
        **_scores(ens),
        "strategy": strategy,
        "n_dev": ens["n"],
        "views": sorted(set(cands["dev"]["view"])),
        "candidates_per_dialogue": round(float(np.mean([len(g.cands) for g in groups["dev"]])), 2),
        "chosen_views": {k: int(v) for k, v in sorted(chosen_views.items())},
        **({"chosen_candidates": {int(k): int(v) for k, v in sorted(ranks.items())}} if len(ranks) > 1 else {}),
        "collapsed": collapsed,
        "sources": sources,
        "models": _per_model(params, cands["dev"], list(d["dev"]["fname"]), refs, scorer),
        "oof": {k: round(v, 6) for k, v in oof_scores.items()},
        "best_single": best,
        "best_single_rouge_sum": sources[best]["rouge_sum"],
        "gain": round(ens["rouge_sum"] - sources[best]["rouge_sum"], 6),
        **info,
        **fitted,
    }
    log.info(
        "ensemble (%s) dev rouge_sum %.4f (best single %s %.4f, gain %+.4f)",
        strategy,
        ens["rouge_sum"],
        best,
        sources[best]["rouge_sum"],
        metrics["gain"],
    )
    return result, metrics


def _per_model(params: Params, dev: pd.DataFrame, order: list, refs: list, scorer) -> dict:
    """Each model over its folds (original view, MBR): the "model" level of the report."""
    out = {}
    for m in params.models:
        mc = dev.query("model == @m and view == 'orig'")
        if not mc.empty:
            sel = mbr_select(mc, scorer.tokenizer, order)
            out[m] = _scores(scorer.score(list(sel["summary"]), refs))
    return out


def _averaging_info(params: Params, root: Path) -> dict:
    """Token-level averaging happened in average@<model> (folds share a tokenizer); models differ in
    tokenizer, so across models the ensemble falls back to candidate selection."""
    across = "majority_vote" if params.ensemble.strategy == "averaging" else "rouge_weighted"
    return {
        "token_level": {m: json.loads((root / paths.average_metrics(m)).read_text()) for m in params.models},
        "across_models": across + (" (tokenizers differ)" if len(params.models) > 1 else ""),
    }


def _averaged_pool(params: Params, split: str, root: Path) -> pd.DataFrame:
    return pd.concat(
        [
            read_candidates(root / paths.predictions(f"{m}/avg", split)).assign(source=f"{m}/avg", model=m)
            for m in params.models
        ]
    )


def summarize_new(params: Params | dict, df: pd.DataFrame, root: Path = Path(".")) -> tuple[pd.DataFrame, dict]:
    """Summaries of new dialogues (``df``: fname, dialogue) by the pipeline's final ensemble: every trained
    model x fold of ``params`` (with its TTA views), combined by ``ensemble.strategy`` exactly as the ensemble
    stage does; stacking and blending are re-fitted from the stored out-of-fold predictions (seeded, so the
    same fit). Returns [fname, summary, source, view, score] and the strategy's info."""
    from . import data, tta
    from .metrics import Scorer

    params = typed(params)
    strategy = params.ensemble.strategy
    augmenter = tta.Augmenter.from_params(params.tta, params.seed)
    for m in params.models:  # every model before the first generates: no hour lost to a missing fold
        for f in params.cv.folds:
            _check_trained(root / paths.model_dir(m, f))
    pool = []
    for m in params.models:
        if strategy in AVERAGING:
            out = average_folds(params, m, {"input": df}, root)[0]["input"]
            pool.append(out.assign(source=f"{m}/avg", model=m))
            continue
        for f in params.cv.folds:  # one fold model in memory at a time
            member = _load_member(params, m, root / paths.model_dir(m, f))
            out = member.views(df["fname"], df["dialogue"], augmenter, desc=f"{m}/{f}")
            pool.append(out.assign(source=f"{m}/{f}", model=m))
            del member
    pool = pd.concat(pool, ignore_index=True)
    if "candidate" not in pool:
        pool = pool.assign(candidate=0)
    stored, scored = load_candidates(params, ["oof", "dev", "test"], root)
    stored, collapsed = drop_collapsed({**stored, "input": pool}, params.ensemble.collapse_ratio, len(scored))
    pool = stored.pop("input")
    # learn exactly what the ensemble stage learnt: the stored out-of-fold pools, else the dev pools
    frames = data.load_processed(root / paths.PROCESSED) if strategy in FITTED else {}
    scorer = Scorer.from_params(params)
    out, info, _ = choose(params, {"input": pool}, {"input": df}, stored, frames, oof_rouge(scored), scorer)
    return out["input"], {"strategy": strategy, "sources": sorted(set(pool["source"])), "collapsed": collapsed, **info}
