"""``blending``: per-model vote weights fitted on the out-of-fold rows by a seeded search over the simplex."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .pools import Group, pick, weighted_consensus


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
