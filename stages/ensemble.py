"""ensemble: combine every model x fold on dev and test -> predictions/ensemble/, submission.csv and
metrics/ensemble.json (dev ROUGE of each source and of the ensemble)."""
import logging

import pandas as pd

from dialsum import data, ensemble, io, params as P
from dialsum.metrics import Scorer
from dialsum.tracking import run_stage, setup_logging

log = logging.getLogger("ensemble")


def main():
    params = P.load()
    setup_logging("ensemble", level=params.get("tracking", {}).get("log_level", "INFO"))
    d = data.load_processed()
    scorer = Scorer.from_params(params)
    refs = data.references(d["dev"])
    cands = {"dev": [], "test": []}
    sources = {}
    for model in params["models"]:
        for fold in params["cv"]["folds"]:
            src = f"{model}/{fold}"
            for split in ("dev", "test"):
                df = pd.read_csv(f"predictions/{src}/{split}.csv", dtype={"summary": str}, keep_default_na=False)
                cands[split].append(df.assign(source=src))
            dev = cands["dev"][-1].set_index("fname").loc[d["dev"]["fname"]]
            sources[src] = scorer.score(list(dev["summary"]), refs)
            log.info("dev %s: rouge_sum %.4f", src, sources[src]["rouge_sum"])
    strategy = params["ensemble"]["strategy"]
    result = {}
    for split in ("dev", "test"):
        allc = pd.concat(cands[split], ignore_index=True)
        result[split] = ensemble.mbr_select(allc, scorer.tokenizer, list(d[split]["fname"]))
        io.write_csv(f"predictions/ensemble/{split}.csv", result[split])
    ens = scorer.score(list(result["dev"]["summary"]), refs)
    best = max(sources, key=lambda s: sources[s]["rouge_sum"])
    metrics = {**{k: ens[k] for k in ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")},
               "strategy": strategy, "n_dev": ens["n"], "sources": sources, "best_single": best,
               "best_single_rouge_sum": sources[best]["rouge_sum"],
               "gain": round(ens["rouge_sum"] - sources[best]["rouge_sum"], 6)}
    io.write_json("metrics/ensemble.json", metrics)
    io.write_csv("submission.csv", result["test"][["fname", "summary"]])
    log.info("ensemble dev rouge_sum %.4f (best single %s %.4f, gain %+.4f)", ens["rouge_sum"], best,
             sources[best]["rouge_sum"], metrics["gain"])


if __name__ == "__main__":
    run_stage("ensemble", main)
