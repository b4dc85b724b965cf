"""predict@<model>-<fold>: batched generation for the fold's out-of-fold rows, dev and test, for the original
dialogue and every TTA view -> predictions/<model>/<fold>/{oof,dev,test}.csv (fname, view, summary, logprob;
view summaries mapped back to the original speakers) and the dev ROUGE of the original view in
metrics/predict/<model>-<fold>.json."""

import hashlib
import logging

from dialsum import data, decoding, generation, io, paths, tta
from dialsum.metrics import Scorer
from dialsum.tracking import matrix_item, run_stage, seed_everything

log = logging.getLogger("predict")


def main():
    params, model_name, fold = matrix_item("predict")
    entry = params.zoo[model_name]
    seed_everything(params.seed)
    augmenter = tta.Augmenter.from_params(params.tta, params.seed)  # fails fast on a bad paraphraser
    settings, lengths = decoding.load_choice(paths.decoding(model_name))  # decode@model's search, if it ran
    gen = settings.generation_section(params.generation) if settings.generation else params.generation
    summarizer = generation.Summarizer.load(paths.model_dir(model_name, fold), entry, gen)
    d = data.load_processed()
    scorer = Scorer.from_params(params)  # also the tokens MBR decoding (generation.mbr) compares candidates in
    splits = {
        "oof": d["train"][d["train"]["fold"] == fold] if fold != "full" else d["train"].iloc[:0],
        "dev": d["dev"],
        "test": d["test"],
    }
    digest = hashlib.sha256()
    oof = None
    for split, df in splits.items():
        out = decoding.views(
            summarizer, df["fname"], df["dialogue"], augmenter, settings, lengths, split, scorer.tokenizer
        )
        out_csv = paths.predictions(f"{model_name}/{fold}", split)
        io.write_csv(out_csv, out)
        digest.update(out_csv.read_bytes())
        log.info("%s: %d summaries (%d dialogues x views)", split, len(out), len(df))
        orig = out[out["view"] == "orig"]
        if "candidate" in orig:  # a pool: the member's own summary is its first candidate
            orig = orig[orig["candidate"] == 0]
        if split == "dev":
            scores = scorer.score(list(orig["summary"]), data.references(df))
        elif split == "oof" and len(df):
            # the fold model on its own held-out rows: what rouge_weighted / weighted_avg weigh sources by
            oof = scorer.score(list(orig["summary"]), data.references(df))
    # The ensemble depends on metrics/predict/ (DVC cannot list a matrix's outputs as deps, and
    # predictions/ holds the ensemble's own output); the hash makes any change of predictions visible.
    io.write_json(
        paths.predict_metrics(model_name, fold), {**scores, "oof": oof, "predictions_sha256": digest.hexdigest()[:16]}
    )


if __name__ == "__main__":
    run_stage("predict", main)
