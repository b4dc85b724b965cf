"""The selection strategies, one registry: each name maps to a :class:`Strategy` whose ``fit`` returns
``(score(group) -> array, info)``. A new strategy is one function here (or in a module of its own) and one
line in :data:`REGISTRY`, plus its name in :data:`dialsum.params.ENSEMBLE_STRATEGIES` (the ``ensemble.strategy``
choices); ``offer`` says when ``auto`` considers it, ``fitted`` that it learns from scored candidates (and is
then cross-fitted wherever it chooses for the rows it learnt from)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..metrics import CachedTokenizer
from ..params import ENSEMBLE_STRATEGIES, STACKING_FEATURES, Ensemble, section
from .blending import fit_blend
from .embed import embed_columns, embeddings
from .pools import Group, vote_weights, weighted_consensus
from .rerank import fit_reranker, rerank_feature, rerank_scores
from .stacking import candidate_features, fit_stacker, lightgbm

log = logging.getLogger(__package__)
STRATEGIES = ENSEMBLE_STRATEGIES


@dataclass(frozen=True)
class Fit:
    """What a strategy is fitted with: ``groups`` and their candidates' ``targets`` (empty for the strategies
    that learn nothing), ``source_scores`` ({model/fold: OOF rouge_sum}) and their per-model means
    ``model_oof``."""

    name: str
    cfg: Ensemble
    models: Sequence[str]
    groups: list[Group]
    targets: list[np.ndarray]
    source_scores: dict
    model_oof: dict
    tok: CachedTokenizer
    seed: int


@dataclass(frozen=True)
class Strategy:
    fit: Callable[[Fit], tuple]
    fitted: bool = False
    # auto considers it when offer(models present in the pools, the groups it chooses on, weighted) is true;
    # None: never (the averaging strategies need the average stage's outputs, not pools)
    offer: Callable[[set, list, bool], bool] | None = None


def _consensus(fit: Fit) -> tuple:
    return (lambda g: weighted_consensus(g.sim, np.ones(len(g.cands)))), {}


def _weighted(fit: Fit) -> tuple:
    weights = dict(fit.cfg.weights or {})
    if not weights:
        weights = {**fit.source_scores, **fit.model_oof} if fit.name == "rouge_weighted" else fit.model_oof
    if not weights:
        log.warning("%s: no out-of-fold scores (fold `full` only); votes are equal", fit.name)
    info = {"weights": {k: round(float(v), 6) for k, v in weights.items()}}
    return (lambda g: weighted_consensus(g.sim, vote_weights(g.cands, weights))), info


def _stacking(fit: Fit) -> tuple:
    models, model_oof, tok, objective = fit.models, fit.model_oof, fit.tok, fit.cfg.stacking_objective
    features = fit.cfg.stacking_features
    info = {"stacking_objective": objective} if objective != "regression" else {}  # the default's info as before
    if objective == "lambdarank":
        lightgbm()  # missing: said before any cross-encoder trains
    if not features:
        reg = fit_stacker(fit.groups, fit.targets, models, model_oof, tok, fit.seed, objective=objective)
        return (lambda g: reg.predict(candidate_features(g, models, model_oof, tok))), info
    extra, scorers = [[] for _ in fit.groups], []  # more columns per fitting group; how to make them for others
    if "rerank" in features:
        held_out, rerank = rerank_feature(fit.groups, fit.targets, fit.cfg, fit.seed)
        extra = [e + [c] for e, c in zip(extra, held_out)]
        scorers.append(rerank)
        info["rerank_backbone"] = fit.cfg.rerank_backbone
    if "embed" in features:
        emb = embeddings(fit.cfg.embed_backbone)  # combine encoded every split's texts already
        extra = [e + [embed_columns(g, emb)] for e, g in zip(extra, fit.groups)]
        scorers.append(lambda g: embed_columns(g, emb))
        info["embed_backbone"] = fit.cfg.embed_backbone
    reg = fit_stacker(
        fit.groups, fit.targets, models, model_oof, tok, fit.seed, [np.hstack(e) for e in extra], objective
    )
    info = {"stacking_features": [f for f in STACKING_FEATURES if f in features], **info}
    return (
        lambda g: reg.predict(np.hstack([candidate_features(g, models, model_oof, tok), *(f(g) for f in scorers)]))
    ), info


def _blending(fit: Fit) -> tuple:
    bw, value = fit_blend(fit.groups, fit.targets, list(fit.models), fit.cfg.blend_trials, fit.seed)
    info = {"blend_weights": bw, "blend_fit_rouge": round(value, 6)}
    return (lambda g: weighted_consensus(g.sim, np.array([bw.get(m, 0.0) for m in g.cands["model"]]))), info


def _rerank(fit: Fit) -> tuple:
    reranker = fit_reranker(fit.groups, fit.targets, fit.cfg, fit.seed)
    return (lambda g: rerank_scores(reranker, g)), {"rerank_backbone": fit.cfg.rerank_backbone}


REGISTRY: dict[str, Strategy] = {
    "majority_vote": Strategy(_consensus, offer=lambda present, groups, weighted: True),
    "averaging": Strategy(_consensus),  # across models; token-level averaging happened in the average stage
    "rouge_weighted": Strategy(_weighted, offer=lambda present, groups, weighted: weighted),
    "weighted_avg": Strategy(_weighted),
    # the fitted ones need dialogues to learn from and others to be scored on
    "stacking": Strategy(_stacking, fitted=True, offer=lambda present, groups, weighted: len(groups) >= 2),
    "blending": Strategy(
        _blending, fitted=True, offer=lambda present, groups, weighted: len(groups) >= 2 and len(present) > 1
    ),
    # auto weighs it only when ensemble.auto_also lists it: crossfit_folds + 1 encoder trainings per run
    "rerank": Strategy(_rerank, fitted=True),
}


def is_fitted(strategy: str) -> bool:
    return strategy in REGISTRY and REGISTRY[strategy].fitted


def _is_single(g: Group, model: str) -> np.ndarray:
    c = g.cands
    cand = c["candidate"] if "candidate" in c else 0
    return ((c["model"] == model) & (c["view"] == "orig") & (cand == 0)).to_numpy()


def _is_source(g: Group, source: str) -> np.ndarray:
    c = g.cands
    cand = c["candidate"] if "candidate" in c else 0
    return ((c["source"] == source) & (c["view"] == "orig") & (cand == 0)).to_numpy()


def has_source(g: Group, source: str) -> bool:
    return bool(_is_source(g, source).any())


def _single_source(source: str) -> Callable:
    def single(g):
        mine = _is_source(g, source)
        if not mine.any():  # the source has no candidate here (collapsed and left out): MBR instead
            return weighted_consensus(g.sim, np.ones(len(g.cands)))
        return mine.astype(float)

    return single


def _single(model: str, source_scores: dict) -> Callable:
    rank = {s: v for s, v in source_scores.items() if s.split("/")[0] == model}

    def single(g):
        mine = _is_single(g, model)
        if not mine.any():  # the model has no candidate here (a collapsed fold left out): MBR instead
            return weighted_consensus(g.sim, np.ones(len(g.cands)))
        return mine * (2.0 + np.array([rank.get(s, 0.0) for s in g.cands["source"]]))

    return single


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
    OOF score where a dialogue has several; ``single:<model>/<fold>`` that one fold model alone."""
    model_oof = {
        m: float(np.mean([v for s, v in source_scores.items() if s.split("/")[0] == m]))
        for m in models
        if any(s.split("/")[0] == m for s in source_scores)
    }
    cfg = section(Ensemble, cfg, "ensemble")
    if strategy.startswith("single:"):
        target = strategy.split(":", 1)[1]
        return (_single_source(target) if "/" in target else _single(target, source_scores)), {}
    if strategy not in REGISTRY:
        raise ValueError(f"unknown ensemble.strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    entry, info = REGISTRY[strategy], {}
    if entry.fitted:
        if not groups:
            raise ValueError(f"ensemble.strategy = {strategy} is fitted on scored candidates and there are none")
        info["fitted_on"] = {"dialogues": len(groups), "candidates": int(sum(map(len, targets)))}
    score, more = entry.fit(Fit(strategy, cfg, models, groups, targets, source_scores, model_oof, tok, seed))
    return score, {**info, **more}
