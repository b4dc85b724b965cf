"""init@<model>: tokenizer (trained on the train split for from-scratch models) + initial weights ->
models/<model>/init/. Once per model, so every fold shares one vocabulary."""
import argparse
import logging

from dialsum import data, io, models, params as P
from dialsum.tracking import run_stage, setup_logging


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    params = P.load()
    setup_logging("init", a.model, params.get("tracking", {}).get("log_level", "INFO"))
    entry = P.zoo_entry(params, a.model)
    train = data.load_processed()["train"]
    texts = list(train["dialogue"]) + list(train["summary"])
    with io.atomic_dir(f"models/{a.model}/init") as tmp:
        models.build_init(entry, texts, tmp, params["seed"])


if __name__ == "__main__":
    run_stage("init", main)
