"""ensemble: one summary per dialogue from every model x fold x TTA view by `ensemble.strategy` ->
predictions/ensemble/{dev,test}.csv, submission.csv and metrics/ensemble.json (dev ROUGE of every source,
of each model over its folds, and of the ensemble; best_single and gain)."""

import json
import logging

import numpy as np
import pandas as pd

from dialsum import data, ensemble as E, io, params as P, paths
from dialsum.metrics import Scorer
from dialsum.params import ParamsError
from dialsum.tracking import log_level, run_stage, setup_logging

log = logging.getLogger("ensemble")
KEYS = ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")


def main():
    params = P.load()
    setup_logging("ensemble", level=log_level(params))
    cfg, seed = params.ensemble, params.seed
    strategy = cfg.strategy
    d = data.load_processed()
    scorer = Scorer.from_params(params)
    tok = scorer.tokenizer
    refs = {"dev": data.references(d["dev"])}
    pick = lambda s: {k: s[k] for k in KEYS}  # noqa: E731

    cands, scored = E.load_candidates(params, ("oof", "dev", "test"))
    # predict@ scored the original view on dev and on its OOF rows with these same metrics settings
    sources = {src: pick(m) for src, m in scored.items()}
    oof_scores = E.oof_rouge(scored)
    for src in sources:
        log.info("dev %s: rouge_sum %.4f (oof %s)", src, sources[src]["rouge_sum"], oof_scores.get(src))
    cands, collapsed = E.drop_collapsed(cands, cfg.collapse_ratio, len(sources))
    views = sorted(set(cands["dev"]["view"]))
    order = {"dev": list(d["dev"]["fname"]), "test": list(d["test"]["fname"])}
    dialogues = {s: dict(zip(d[s]["fname"], d[s]["dialogue"])) for s in ("train", "dev", "test")}

    # each model over its folds (original view, MBR): the "model" level of the report
    per_model = {}
    for m in params.models:
        mc = cands["dev"].query("model == @m and view == 'orig'")
        if mc.empty:
            continue
        sel = E.mbr_select(mc, tok, order["dev"])
        per_model[m] = pick(scorer.score(list(sel["summary"]), refs["dev"]))

    info: dict = {}
    if strategy in ("averaging", "weighted_avg"):
        # token-level averaging happened in average@<model> (folds share a tokenizer); models differ in
        # tokenizer, so across models it falls back to candidate selection
        pool = {
            s: pd.concat(
                [
                    E.read_candidates(paths.predictions(f"{m}/avg", s)).assign(source=f"{m}/avg", model=m)
                    for m in params.models
                ]
            )
            for s in ("dev", "test")
        }
        across = "majority_vote" if strategy == "averaging" else "rouge_weighted"
        info["averaging"] = {
            "token_level": {m: json.loads(paths.average_metrics(m).read_text()) for m in params.models},
            "across_models": across + (" (tokenizers differ)" if len(params.models) > 1 else ""),
        }
        for m in params.models:
            a = info["averaging"]["token_level"][m]
            sources[f"{m}/avg"] = {k: a[k] for k in KEYS}
    else:
        pool = {s: cands[s] for s in ("dev", "test")}
    groups = {s: E.build_groups(pool[s], tok, order[s], dialogues[s]) for s in ("dev", "test")}
    fit_groups, fit_refs, fit_on = E.fit_set(strategy, cands, d, tok)
    try:
        result, fitted_info = E.combine(
            strategy, cfg, params.models, groups, fit_groups, fit_refs, fit_on, oof_scores, scorer, seed
        )
    except ValueError as e:
        raise ParamsError(f"params.yaml: {e}") from None
    info.update(fitted_info)
    for s in ("dev", "test"):
        io.write_csv(paths.ENSEMBLE_PREDICTIONS / f"{s}.csv", result[s])
    ens = scorer.score(list(result["dev"]["summary"]), refs["dev"])
    best = max(sources, key=lambda s: sources[s]["rouge_sum"])
    chosen_views = result["dev"]["view"].value_counts().to_dict()
    ranks = result["dev"]["candidate"].value_counts().to_dict()
    metrics = {
        **pick(ens),
        "strategy": strategy,
        "n_dev": ens["n"],
        "views": views,
        "candidates_per_dialogue": round(float(np.mean([len(g.cands) for g in groups["dev"]])), 2),
        "chosen_views": {k: int(v) for k, v in sorted(chosen_views.items())},
        **({"chosen_candidates": {int(k): int(v) for k, v in sorted(ranks.items())}} if len(ranks) > 1 else {}),
        "collapsed": collapsed,
        "sources": sources,
        "models": per_model,
        "oof": {k: round(v, 6) for k, v in oof_scores.items()},
        "best_single": best,
        "best_single_rouge_sum": sources[best]["rouge_sum"],
        "gain": round(ens["rouge_sum"] - sources[best]["rouge_sum"], 6),
        **info,
    }
    io.write_json(paths.ENSEMBLE_METRICS, metrics)
    io.write_csv(paths.SUBMISSION, result["test"][["fname", "summary"]])
    log.info(
        "ensemble (%s) dev rouge_sum %.4f (best single %s %.4f, gain %+.4f)",
        strategy,
        ens["rouge_sum"],
        best,
        sources[best]["rouge_sum"],
        metrics["gain"],
    )


if __name__ == "__main__":
    run_stage("ensemble", main)
