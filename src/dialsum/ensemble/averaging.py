"""Model averaging over one model's fold models (the average stage; ``averaging`` / ``weighted_avg``): the fold
weights, loading the fold models, one beam search on their mean log-probs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .. import paths
from ..params import Params, typed

log = logging.getLogger(__package__)


def fold_weights(params: Params | dict, model: str, folds: list, root: Path = Path(".")) -> list[float]:
    """averaging: equal. weighted_avg: ``ensemble.weights`` by ``model/fold``, else each fold model's OOF ROUGE
    (from predict's metrics)."""
    params = typed(params)
    if params.ensemble.strategy == "averaging":
        return [1.0] * len(folds)
    given = params.ensemble.weights or {}
    oof = {}
    for f in folds:
        if f"{model}/{f}" not in given:
            scored = json.loads((root / paths.predict_metrics(model, f)).read_text()).get("oof")
            oof[f] = scored["rouge_sum"] if scored else None
    # fold `full` has no out-of-fold rows: the mean of the model's fold models' scores (weight 1 used to put it at
    # about a third of a fold model's ~2.8), or 1 when there are none either
    known = [v for v in oof.values() if v is not None]
    stand_in = sum(known) / len(known) if known else 1.0
    return [float(given[f"{model}/{f}"]) if f not in oof else (stand_in if oof[f] is None else oof[f]) for f in folds]


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
    from ..generation import Summarizer

    _check_trained(model_dir)
    return Summarizer.load(model_dir, params.zoo[model], params.generation)


def _check_trained(model_dir: Path) -> None:
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no trained model; run `dvc repro` (or `dvc pull`) first")


def average_folds(
    params: Params | dict,
    model: str,
    frames: dict[str, pd.DataFrame],
    root: Path = Path("."),
    generation: dict | None = None,
) -> tuple[dict[str, pd.DataFrame], list[float]]:
    """Model averaging (the average stage, and ``dialsum summarize --ensemble``): one beam search per dialogue
    of each frame (fname, dialogue) on the weighted mean of ``model``'s fold models' next-token log-probs,
    under decode@model's choice (generation keys, length caps, post-edits: what predict decodes with;
    ``generation`` keys win over it). Returns ``{split: [fname, view, summary, logprob]}`` and the fold
    weights (:func:`fold_weights`)."""
    from .. import decoding

    params = typed(params)
    settings, lengths = decoding.choice_for(model, root, generation)
    members = fold_members(params, model, root)
    weights = fold_weights(params, model, list(params.cv.folds), root)
    log.info("averaging %d fold models of %s, weights %s, decoding %s", len(members), model, weights, settings)
    out = {}
    for split, df in frames.items():
        texts, lps = decoding.averaged(members, weights, df["dialogue"], settings, lengths, desc=f"{split} averaged")
        out[split] = pd.DataFrame(
            {"fname": list(df["fname"]), "view": "orig", "summary": texts, "logprob": [round(x, 6) for x in lps]}
        )
    return out, weights
