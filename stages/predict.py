"""predict@<model>-<fold>: batched generation for the fold's out-of-fold rows, dev and test ->
predictions/<model>/<fold>/{oof,dev,test}.csv (fname, view, summary, logprob) and the dev ROUGE in
metrics/predict/<model>-<fold>.json."""
import hashlib
import logging
from pathlib import Path

import pandas as pd

from dialsum import data, generation, io, models, training
from dialsum.metrics import Scorer
from dialsum.tracking import matrix_item, run_stage

log = logging.getLogger("predict")


def main():
    params, model_name, fold = matrix_item("predict")
    entry = params["zoo"][model_name]
    training.seed_everything(params["seed"])
    model, tok, family = models.load_for_inference(f"models/{model_name}/{fold}", entry)
    tok.padding_side = "left"
    d = data.load_processed()
    splits = {"oof": d["train"][d["train"]["fold"] == fold] if fold != "full" else d["train"].iloc[:0],
              "dev": d["dev"], "test": d["test"]}
    gen = params["generation"]
    digest = hashlib.sha256()
    for split, df in splits.items():
        texts, lps = generation.summarize(model, tok, family, list(df["dialogue"]), gen, entry["max_source_len"],
                                          gen["batch_size"], entry.get("prompt"), desc=f"{split}")
        out = pd.DataFrame({"fname": list(df["fname"]), "view": "orig", "summary": texts,
                            "logprob": [round(x, 6) for x in lps]})
        io.write_csv(f"predictions/{model_name}/{fold}/{split}.csv", out)
        digest.update(Path(f"predictions/{model_name}/{fold}/{split}.csv").read_bytes())
        log.info("%s: %d summaries", split, len(out))
        if split == "dev":
            scores = Scorer.from_params(params).score(texts, data.references(df))
    # The ensemble depends on metrics/predict/ (DVC cannot list a matrix's outputs as deps, and
    # predictions/ holds the ensemble's own output); the hash makes any change of predictions visible.
    io.write_json(f"metrics/predict/{model_name}-{fold}.json",
                  {**scores, "predictions_sha256": digest.hexdigest()[:16]})


if __name__ == "__main__":
    run_stage("predict", main)
