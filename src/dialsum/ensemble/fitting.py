"""Fitted selection: what the fitted strategies learn from (:func:`fit_set`), cross-fitting (:func:`crossfit`),
``auto``'s options and choice, and :func:`combine` / :func:`choose`, the one entry point of the ensemble stage
and ``dialsum summarize --ensemble``."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..data import DataError
from ..metrics import CachedTokenizer
from ..params import Ensemble, Params, ParamsError, section
from .candidates import candidate_targets
from .pools import Group, build_groups, pick, seeded_parts, select
from .strategies import REGISTRY, fit_strategy, has_source, is_fitted

log = logging.getLogger(__package__)


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
    per-group ``{id(group): score array}`` and the mean target of the choices (x 3: a rouge_sum).

    ``single:<model>/<fold>`` is scored on the dialogues that fold model has a candidate for only: out of
    fold, the rows of its own fold (its own out-of-fold score), so fold models compete by their own rows."""
    if strategy.startswith("single:") and "/" in strategy:
        keep = [i for i, g in enumerate(groups) if has_source(g, strategy.split(":", 1)[1])]
        if keep:
            groups, targets = [groups[i] for i in keep], [targets[i] for i in keep]
    fitted = is_fitted(strategy)
    if fitted and len(groups) < 2:
        raise ValueError(
            f"ensemble.strategy = {strategy} needs at least 2 scored dialogues to cross-fit on, got {len(groups)}"
        )
    parts = seeded_parts(len(groups), folds, seed) if fitted else np.zeros(len(groups), int)
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


def paired_scores(runs: dict, groups: list[Group], targets: list[np.ndarray]) -> tuple[dict, str | None]:
    """Every option's rouge_sum on the same rows, for ``auto`` to compare: an option scored on every dialogue
    keeps its score; a fold model scored on its own fold's rows only gets the reference option's score on every
    dialogue plus its paired difference to that option on its own rows. The reference: the best option scored
    on every dialogue. Returns ``({option: score}, reference)``; no reference (nothing covers every dialogue):
    the scores as they are.

    Out of fold, a fold's rows may be easier than the others: ranked by its own rows' score, a fold model beat a
    combined option that beats it on those very rows (the default run: ``single:tiny-bart/1`` 2.9136 on fold 1's
    rows against ``stacking`` 2.8953 on all of them, 2.9174 on fold 1's; on dev 2.9015 against 2.9209)."""
    value = {id(g): t for g, t in zip(groups, targets)}
    per_row = {
        o: {k: float(value[k][pick(g, run[0][k])]) for g in groups if (k := id(g)) in run[0]} for o, run in runs.items()
    }
    whole = [o for o in runs if len(per_row[o]) == len(groups)]
    if not whole:
        return {o: run[1] for o, run in runs.items()}, None
    ref = max(whole, key=lambda o: round(runs[o][1], 6))  # the first best, as auto's own choice
    out = {}
    for o, run in runs.items():
        rows = per_row[o]
        if o in whole or not rows:
            out[o] = run[1]
        else:
            out[o] = runs[ref][1] + 3 * float(np.mean([v - per_row[ref][k] for k, v in rows.items()]))
    return out, ref


def options(models: Sequence[str], groups: list[Group], weighted: bool, also: Sequence[str] = ()) -> list[str]:
    """What ``auto`` chooses among: each fold model alone first (so a tie goes to the simplest), then the
    registry's strategies that offer themselves for this pool (``weighted``: there are OOF scores or
    ``ensemble.weights``), then those of ``also`` (``ensemble.auto_also``) it can score: the costly ones."""
    present = set().union(*(set(g.cands["model"]) for g in groups)) if groups else set()
    sources = set().union(*(set(g.cands["source"]) for g in groups)) if groups else set()
    # each fold model on its own: on dev and test a dialogue has a candidate per model x fold, so "the model
    # alone" must say which fold, and the choice among them is made on each fold's own out-of-fold rows
    opts = [f"single:{s}" for m in models for s in sorted(sources) if s.split("/")[0] == m]
    opts += [n for n, s in REGISTRY.items() if s.offer and s.offer(present, groups, weighted)]
    return opts + [n for n in also if n not in opts and len(groups) >= 2]  # fitted: cross-fitted on the groups


def learning_targets(groups: list[Group], refs: dict, scorer) -> list[np.ndarray]:
    """The candidates' targets of groups a strategy learns from; each group also keeps its references (the
    bi-encoder's reference term reads them), in place: a group learnt from carries the references its targets
    were made from. Groups only chosen for never get them."""
    for g in groups:
        g.references = tuple(refs[g.fname])
    return candidate_targets(groups, refs, scorer)


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
    targets = learning_targets(fit_groups, fit_refs, scorer) if fit_groups else []
    if "embed" in cfg.stacking_features and strategy in ("stacking", "auto") and len(fit_groups) >= 2:
        from .embed import embeddings, prime

        # every text of every split in one pass: stacking then scores group by group from the cache
        prime(embeddings(cfg.embed_backbone), [*fit_groups, *(g for gs in pools.values() for g in gs)])
    info: dict = {}
    runs: dict = {}  # option -> crossfit(...) on fit_groups, reused for the cross-fitted choices below
    fits: dict = {}  # option -> fit_strategy(...) on all of fit_groups, when auto scored the options on dev
    if strategy == "auto":
        if not fit_groups:
            raise ValueError("ensemble.strategy = auto chooses on scored candidates and there are none")
        for o in options(models, fit_groups, bool(source_scores or cfg.weights), cfg.auto_also):
            runs[o] = crossfit(o, cfg, models, fit_groups, targets, source_scores, tok, seed, folds)
        table = {o: round(run[1], 6) for o, run in runs.items()}
        paired, ref = paired_scores(runs, fit_groups, targets)
        paired = {o: round(v, 6) for o, v in paired.items()}
        # a tie goes to a model alone, and between fold models to the one better on its own rows: when the
        # out-of-fold rows cannot tell a fold model from a combined option (one model: a candidate per dialogue)
        chosen = max(table, key=lambda o: (paired[o], o.startswith("single:"), table[o]))
        info["auto"] = {
            "chosen": chosen,
            "chosen_on": fit_on
            if fit_on == "oof"
            else "dev (no out-of-fold rows: cross-fitted on dev, so its dev score is optimistic)",
            "rouge_sum_by_option": table,
        }
        if fit_on == "oof":
            info["auto"]["single_options_scored_on"] = "each fold model's own out-of-fold rows"
        if fit_on == "oof" and ref is not None:
            info["auto"].update(
                chosen_by="paired_rouge_sum_by_option",
                paired_rouge_sum_by_option=paired,
                paired_against=ref,
            )
        log.info(
            "auto: %s (rouge_sum on %s%s: %s)",
            chosen,
            fit_on,
            f", fold models paired against {ref} on their own rows" if fit_on == "oof" and ref else "",
            ", ".join(f"{k} {v:.4f}" for k, v in paired.items()),
        )
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
        if split == fit_on and is_fitted(strategy):
            if groups is fit_groups and strategy in runs:  # auto cross-fitted exactly this already
                dev_scores = runs[strategy][0]
            else:
                dev_targets = targets if groups is fit_groups else learning_targets(groups, fit_refs, scorer)
                dev_scores, _ = crossfit(strategy, cfg, models, groups, dev_targets, source_scores, tok, seed, folds)
            out[split] = select(groups, lambda g: dev_scores[id(g)])
            info["crossfitted_on"] = f"{split} ({folds} folds: each {split} dialogue chosen by a fit on the others)"
        else:
            out[split] = select(groups, score)
    return out, info


FITTED = ("auto", *(n for n, s in REGISTRY.items() if s.fitted))  # strategies that learn from scored candidates


def fit_set(strategy: str, cands: dict, frames: dict, tok: CachedTokenizer) -> tuple[list, dict, str]:
    """What a fitted strategy (and ``auto``'s choice) learns from: ``(groups, {fname: references}, on)``, the
    out-of-fold pools (``on`` = "oof"), or with fold ``full`` only the dev pools ("dev", cross-fitted by
    :func:`combine`); nothing ("none") for the other strategies. ``frames``: the processed train and dev."""
    if strategy not in FITTED:
        return [], {}, "none"
    split = "oof" if not cands["oof"].empty else "dev"
    frame = frames["train"] if split == "oof" else frames["dev"]
    from ..data import references

    refs = dict(zip(frame["fname"], references(frame)))
    order = list(dict.fromkeys(cands[split]["fname"]))
    return build_groups(cands[split], tok, order, dict(zip(frame["fname"], frame["dialogue"]))), refs, split


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
        from ..data import references

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
    except (DataError, ParamsError):
        raise  # the data's fault, or a message that already names its params key
    except ValueError as e:
        raise ParamsError(f"params.yaml: {e}") from None
    return result, info, groups
