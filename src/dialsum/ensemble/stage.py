"""The ensemble stage (:func:`run`: the choices and metrics/ensemble.json) and ``dialsum summarize --ensemble``
(:func:`summarize_new`: new dialogues through the same choice)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..params import AVERAGING, Params, typed
from .averaging import _check_trained, _load_member, average_folds
from .candidates import drop_collapsed, load_candidates, oof_rouge, read_candidates
from .fitting import FITTED, choose
from .pools import mbr_select

log = logging.getLogger(__package__)


KEYS = ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")  # the scores metrics/ensemble.json reports


def _scores(s: dict, where: object = "scores") -> dict:
    if missing := [k for k in KEYS if k not in s]:
        from ..data import DataError

        raise DataError(f"{where}: no {', '.join(missing)}; re-run the stage that wrote it (dvc repro)")
    return {k: s[k] for k in KEYS}


def run(params: Params | dict, root: Path = Path(".")) -> tuple[dict[str, pd.DataFrame], dict]:
    """The ensemble stage: every model x fold x view's stored candidates (or, for the averaging strategies,
    each model's fold average) combined by ``ensemble.strategy`` over dev and test. Returns the chosen rows
    ``{dev, test}`` and metrics/ensemble.json: dev ROUGE of the ensemble, of every source and of each model
    over its folds, the best single source and the gain."""
    from ..data import load_processed, references
    from ..metrics import Scorer

    params = typed(params)
    strategy = params.ensemble.strategy
    d = load_processed(root / paths.PROCESSED)
    scorer = Scorer.from_params(params)
    refs = references(d["dev"])
    expected = {s: list(d[s]["fname"]) for s in ("dev", "test")}
    cands, scored = load_candidates(params, ("oof", "dev", "test"), root, expected)
    # predict@ scored the original view on dev and on its OOF rows with these same metrics settings
    sources = {src: _scores(m, paths.predict_metrics(*src.split("/"))) for src, m in scored.items()}
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
    token_level = {}
    for m in params.models:
        path = root / paths.average_metrics(m)
        token_level[m] = json.loads(path.read_text())
        _scores(token_level[m], path)
    return {
        "token_level": token_level,
        "across_models": across + (" (tokenizers differ)" if len(params.models) > 1 else ""),
    }


def _averaged_pool(params: Params, split: str, root: Path) -> pd.DataFrame:
    return pd.concat(
        [
            read_candidates(root / paths.predictions(f"{m}/avg", split)).assign(source=f"{m}/avg", model=m)
            for m in params.models
        ]
    )


def summarize_new(
    params: Params | dict, df: pd.DataFrame, root: Path = Path("."), generation: dict | None = None
) -> tuple[pd.DataFrame, dict]:
    """Summaries of new dialogues (``df``: fname, dialogue) by the pipeline's final ensemble: every trained
    model x fold of ``params`` (with its TTA views, decoded under decode@model's choice as predict does;
    ``generation`` keys win over it), combined by ``ensemble.strategy`` exactly as the ensemble stage does;
    stacking and blending are re-fitted from the stored out-of-fold predictions (seeded, so the same fit).
    Returns [fname, summary, source, view, score] and the strategy's info."""
    from .. import data, decoding, tta
    from ..metrics import Scorer

    params = typed(params)
    strategy = params.ensemble.strategy
    augmenter = tta.Augmenter.from_params(params.tta, params.seed)
    choices = {}
    for m in params.models:  # every model before the first generates: no hour lost to a missing fold or choice
        for f in params.cv.folds:
            _check_trained(root / paths.model_dir(m, f))
        choices[m] = decoding.choice_for(m, root, generation)
    scorer = Scorer.from_params(params)
    pool = []
    for m in params.models:
        if strategy in AVERAGING:
            out = average_folds(params, m, {"input": df}, root, generation)[0]["input"]
            pool.append(out.assign(source=f"{m}/avg", model=m))
            continue
        settings, lengths = choices[m]
        for f in params.cv.folds:  # one fold model in memory at a time
            member = _load_member(params, m, root / paths.model_dir(m, f))
            out = decoding.views(
                member, df["fname"], df["dialogue"], augmenter, settings, lengths, f"{m}/{f}", scorer.tokenizer
            )
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
    out, info, _ = choose(params, {"input": pool}, {"input": df}, stored, frames, oof_rouge(scored), scorer)
    return out["input"], {"strategy": strategy, "sources": sorted(set(pool["source"])), "collapsed": collapsed, **info}
