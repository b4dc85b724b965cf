"""train@<model>-<fold>: fine-tune on the fold's training rows, keep the best by eval ROUGE ->
models/<model>/<fold>/ and metrics/train/<model>-<fold>.json. Checkpoints live in checkpoints/ (not a
DVC output) so an interrupted run resumes."""
import argparse
from pathlib import Path

from dialsum import data, io, params as P, training
from dialsum.tracking import run_stage, setup_logging


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", required=True)
    a = ap.parse_args()
    params = P.load()
    fold = P.parse_fold(a.fold)
    setup_logging("train", f"{a.model}-{fold}", params.get("tracking", {}).get("log_level", "INFO"))
    P.zoo_entry(params, a.model)
    d = data.load_processed()
    train_df, val_df = data.split_fold(d["train"], d["dev"], fold)
    init = Path(f"models/{a.model}/init")
    sig = training.run_signature(params, a.model, fold, [Path("data/processed/train.csv"),
                                                         Path("data/processed/dev.csv")])
    metrics = training.train(params, a.model, fold, train_df, val_df, init, Path(f"models/{a.model}/{fold}"),
                             Path(f"checkpoints/{a.model}/{fold}"), Path(f"dvclive/{a.model}-{fold}"), sig)
    io.write_json(f"metrics/train/{a.model}-{fold}.json", metrics)


if __name__ == "__main__":
    run_stage("train", main)
