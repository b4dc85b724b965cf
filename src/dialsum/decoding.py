"""Decoding search: an Optuna study over ``generation.*`` for already-trained models, scored on their
out-of-fold rows by :class:`~dialsum.metrics.Scorer` (so ``metrics.*``, ``metrics.rouge`` included, decide
what "better" means).

Training is not repeated: each trial re-generates the same rows with other settings. ``members`` are
``(trained folder, its out-of-fold rows)`` pairs, e.g. ``models/kobart/0`` with the train rows of fold 0;
the row budget is split evenly over them (a seeded sample of each member's rows), and every trial scores all
the rows of every member together. Each member's model is loaded once and kept for the whole study, so the
members must fit in memory together.

Not wired into dvc.yaml yet: call :func:`search` and write ``result["best"]`` into ``generation``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import optuna
import pandas as pd

from .data import references
from .params import Generation, Params, ParamsError, typed

log = logging.getLogger(__name__)

KEYS = ("num_beams", "length_penalty", "no_repeat_ngram_size", "repetition_penalty", "max_new_tokens")


def default_space(max_target_len: int) -> dict[str, tuple]:
    """``{key: (low, high)}``; ints for ints. ``max_new_tokens`` around the entry's trained target length."""
    return {
        "num_beams": (1, 6),
        "length_penalty": (0.6, 2.0),
        "no_repeat_ngram_size": (0, 4),
        "repetition_penalty": (1.0, 1.5),
        "max_new_tokens": (max(4, max_target_len // 2), 2 * max_target_len),
    }


def _check_space(space: dict) -> None:
    for k, bounds in space.items():
        if k not in KEYS:
            raise ParamsError(f"decoding search: generation.{k} is not searchable; choose from {', '.join(KEYS)}")
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise ParamsError(f"decoding search: generation.{k} needs (low, high) with low <= high; got {bounds!r}")


def suggest(trial: optuna.Trial, space: dict) -> dict:
    out = {}
    for k, (lo, hi) in space.items():
        ints = isinstance(Generation.model_fields[k].default, int) or k == "max_new_tokens"
        out[k] = trial.suggest_int(k, int(lo), int(hi)) if ints else trial.suggest_float(k, float(lo), float(hi))
    return out


def budget_rows(members: Sequence[tuple], max_rows: int | None, seed: int) -> list[pd.DataFrame]:
    """Each member's rows, at most ``max_rows`` in all (split evenly; a seeded sample, in the rows' order)."""
    if not members:
        raise ValueError("decoding search: no trained model to search with")
    share = None if not max_rows else max(1, max_rows // len(members))
    out = []
    for folder, rows in members:
        if not len(rows):
            raise ValueError(f"decoding search: {folder}: no out-of-fold rows")
        if share and len(rows) > share:
            rows = rows.sample(n=share, random_state=seed).sort_index()
        out.append(rows.reset_index(drop=True))
    return out


def search(
    params: Params | dict,
    model: str,
    members: Sequence[tuple[str | Path, pd.DataFrame]],
    n_trials: int = 20,
    max_rows: int | None = 200,
    space: dict | None = None,
    timeout: float | None = None,
    summarizers: Sequence | None = None,
) -> dict:
    """Run the study for zoo entry ``model``; returns ``{best, best_value, baseline, rows, trials}`` where
    ``best`` holds the chosen ``generation.*`` values, ``baseline`` the score of ``params``' own generation
    settings (trial 0 is always those, so ``best_value >= baseline``) and ``trials`` every trial's values and
    ``rouge_sum``. ``summarizers`` (one per member) skips loading, for callers that hold the models already."""
    from .generation import Summarizer
    from .metrics import Scorer
    from .tuning import make_sampler

    params = typed(params)
    entry = params.zoo[model]
    space = dict(space or default_space(entry.max_target_len))
    _check_space(space)
    rows = budget_rows(members, max_rows, params.seed)
    if summarizers is None:
        summarizers = [Summarizer.load(folder, entry, params.generation) for folder, _ in members]
    scorer = Scorer.from_params(params)
    refs = [r for df in rows for r in references(df)]

    def score(values: dict) -> float:
        gen = params.generation.model_copy(update=values)
        preds = []
        for s, df in zip(summarizers, rows):
            s.gen = gen
            preds += s(list(df["dialogue"]), desc="decoding trial", progress=False)[0]
        return scorer.score(preds, refs)["rouge_sum"]

    study = optuna.create_study(direction="maximize", sampler=make_sampler(params.tune.sampler, params.seed))
    # trial 0 = today's settings (clipped into the space): the search can only report an improvement on them
    current = {k: getattr(params.generation, k) for k in space}
    if current.get("max_new_tokens") is None and "max_new_tokens" in space:
        current["max_new_tokens"] = entry.max_target_len + 1
    study.enqueue_trial({k: min(max(v, space[k][0]), space[k][1]) for k, v in current.items()})

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        value = score(values)
        log.info("decoding trial %d: %s -> rouge_sum %.4f", trial.number, values, value)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "best": dict(study.best_params),
        "best_value": round(study.best_value, 6),
        "baseline": round(done[0].value, 6),
        "rows": sum(len(df) for df in rows),
        "trials": [{"number": t.number, **t.params, "rouge_sum": round(t.value, 6)} for t in done],
    }
