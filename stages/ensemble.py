"""ensemble: one summary per dialogue from every model x fold x TTA view by `ensemble.strategy` ->
predictions/ensemble/{dev,test}.csv, submission.csv and metrics/ensemble.json (dev ROUGE of every source,
of each model over its folds, and of the ensemble; best_single and gain)."""
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dialsum import data, ensemble as E, io, params as P
from dialsum.metrics import Scorer
from dialsum.params import ParamsError
from dialsum.tracking import run_stage, setup_logging

log = logging.getLogger("ensemble")
KEYS = ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")


def read(path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"summary": str, "view": str}, keep_default_na=False)
    if "view" not in df:
        df["view"] = "orig"
    return df


def main():
    params = P.load()
    setup_logging("ensemble", level=params.get("tracking", {}).get("log_level", "INFO"))
    cfg, seed = params["ensemble"], params["seed"]
    strategy = cfg["strategy"]
    d = data.load_processed()
    scorer = Scorer.from_params(params)
    tok = scorer.tokenizer
    refs = {"dev": data.references(d["dev"]), "oof": dict(zip(d["train"]["fname"], data.references(d["train"])))}
    pick = lambda s: {k: s[k] for k in KEYS}  # noqa: E731

    cands = {"oof": [], "dev": [], "test": []}
    sources, oof_scores = {}, {}
    for model in params["models"]:
        for fold in params["cv"]["folds"]:
            src = f"{model}/{fold}"
            for split in cands:
                cands[split].append(read(f"predictions/{src}/{split}.csv").assign(source=src, model=model))
            # predict@ scored the original view on dev and on its OOF rows with these same metrics settings
            scored = json.loads(Path(f"metrics/predict/{model}-{fold}.json").read_text())
            sources[src] = pick(scored)
            if scored.get("oof"):
                oof_scores[src] = scored["oof"]["rouge_sum"]
            log.info("dev %s: rouge_sum %.4f (oof %s)", src, sources[src]["rouge_sum"], oof_scores.get(src))
    cands = {k: pd.concat(v, ignore_index=True) for k, v in cands.items()}
    views = sorted(set(cands["dev"]["view"]))
    order = {"dev": list(d["dev"]["fname"]), "test": list(d["test"]["fname"])}
    # per model: OOF ROUGE averaged over its folds (what weights and stacking features use)
    model_oof = {m: float(np.mean([v for s, v in oof_scores.items() if s.split("/")[0] == m]))
                 for m in params["models"] if any(s.split("/")[0] == m for s in oof_scores)}

    # each model over its folds (original view, MBR): the "model" level of the report
    per_model = {}
    for m in params["models"]:
        mc = cands["dev"].query("model == @m and view == 'orig'")
        sel = E.mbr_select(mc, tok, order["dev"])
        per_model[m] = pick(scorer.score(list(sel["summary"]), refs["dev"]))

    info: dict = {}
    weights = dict(cfg.get("weights") or {})
    needs_oof = strategy in ("stacking", "blending")
    if needs_oof and cands["oof"].empty:
        raise ParamsError(f"params.yaml: ensemble.strategy = {strategy} is fitted on out-of-fold predictions; "
                          "cv.folds must list fold indices (fold `full` has none)")
    if strategy in ("averaging", "weighted_avg"):
        # token-level averaging happened in average@<model> (folds share a tokenizer); models differ in
        # tokenizer, so across models it falls back to candidate selection
        pool = {s: pd.concat([read(f"predictions/{m}/avg/{s}.csv").assign(source=f"{m}/avg", model=m)
                              for m in params["models"]]) for s in ("dev", "test")}
        across = "majority_vote" if strategy == "averaging" else "rouge_weighted"
        info["averaging"] = {"token_level": {m: json.loads(Path(f"metrics/average/{m}.json").read_text())
                                             for m in params["models"]},
                             "across_models": across + (" (tokenizers differ)" if len(params["models"]) > 1 else "")}
        for m in params["models"]:
            a = info["averaging"]["token_level"][m]
            sources[f"{m}/avg"] = {k: a[k] for k in KEYS}
        weights = weights or (model_oof if strategy == "weighted_avg" else {})
    else:
        pool = {s: cands[s] for s in ("dev", "test")}
        if strategy == "rouge_weighted":
            weights = weights or {**oof_scores, **model_oof}
            if not weights:
                log.warning("rouge_weighted: no out-of-fold scores (fold `full` only); votes are equal")

    groups = {s: E.build_groups(pool[s], tok, order[s]) for s in ("dev", "test")}
    if strategy in ("majority_vote", "averaging"):
        def score(g):
            return E.weighted_consensus(g.sim, np.ones(len(g.cands)))
    elif strategy in ("rouge_weighted", "weighted_avg"):
        info["weights"] = {k: round(float(v), 6) for k, v in weights.items()}

        def score(g):
            return E.weighted_consensus(g.sim, E.vote_weights(g.cands, weights))
    else:
        oof_order = list(dict.fromkeys(cands["oof"]["fname"]))
        oof_groups = E.build_groups(cands["oof"], tok, oof_order)
        # each OOF candidate's own ROUGE against its reference: the target; dev/test references never seen
        targets = [scorer.per_row(list(g.cands["summary"]), [refs["oof"][g.fname]] * len(g.cands))[:, :3].mean(axis=1)
                   for g in oof_groups]
        info["fitted_on"] = {"oof_dialogues": len(oof_groups), "oof_candidates": int(sum(map(len, targets)))}
        if strategy == "stacking":
            reg = E.fit_stacker(oof_groups, targets, params["models"], model_oof, tok, seed)

            def score(g):
                return reg.predict(E.candidate_features(g, params["models"], model_oof, tok))
        else:
            bw, oof_value = E.fit_blend(oof_groups, targets, list(params["models"]), cfg.get("blend_trials", 64), seed)
            info.update(blend_weights=bw, blend_oof_rouge=round(oof_value, 6))

            def score(g):
                return E.weighted_consensus(g.sim, np.array([bw[m] for m in g.cands["model"]]))

    result = {s: E.select(groups[s], score) for s in ("dev", "test")}
    for s in ("dev", "test"):
        io.write_csv(f"predictions/ensemble/{s}.csv", result[s])
    ens = scorer.score(list(result["dev"]["summary"]), refs["dev"])
    best = max(sources, key=lambda s: sources[s]["rouge_sum"])
    chosen_views = result["dev"]["view"].value_counts().to_dict()
    metrics = {**pick(ens), "strategy": strategy, "n_dev": ens["n"], "views": views,
               "candidates_per_dialogue": round(float(np.mean([len(g.cands) for g in groups["dev"]])), 2),
               "chosen_views": {k: int(v) for k, v in sorted(chosen_views.items())},
               "sources": sources, "models": per_model, "oof": {k: round(v, 6) for k, v in oof_scores.items()},
               "best_single": best, "best_single_rouge_sum": sources[best]["rouge_sum"],
               "gain": round(ens["rouge_sum"] - sources[best]["rouge_sum"], 6), **info}
    io.write_json("metrics/ensemble.json", metrics)
    io.write_csv("submission.csv", result["test"][["fname", "summary"]])
    log.info("ensemble (%s) dev rouge_sum %.4f (best single %s %.4f, gain %+.4f)", strategy, ens["rouge_sum"],
             best, sources[best]["rouge_sum"], metrics["gain"])


if __name__ == "__main__":
    run_stage("ensemble", main)
