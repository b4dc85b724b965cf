"""train@<model>-<fold>: fine-tune on the fold's training rows, keep the best by eval ROUGE ->
models/<model>/<fold>/ and metrics/train/<model>-<fold>.json. Checkpoints live in checkpoints/ (not a
DVC output) so an interrupted run resumes."""

import logging

from dialsum import data, io, params as P, paths, training
from dialsum.tracking import matrix_item, run_stage

log = logging.getLogger("train")


def main():
    params, model, fold = matrix_item("train")
    merged = P.for_model(params, model)
    # the zoo entry's keys win over `-S training.<key>=...`: say so rather than ignore the user's value silently
    shadowed = {k: v for k, v in P.written(merged.training).items() if P.written(params.training).get(k) != v}
    if shadowed:
        log.info("zoo.%s.training sets %s over the training section", model, shadowed)
    params = merged
    if training.relaunch(params, model, ["stages/train.py", "--model", model, "--fold", str(fold)]):
        return  # training.launcher: accelerate ran this script in num_processes workers
    d = data.load_processed()
    train_df, val_df = data.split_fold(d["train"], d["dev"], fold, d["augmented"])
    sig = training.run_signature(params, model, fold, [paths.PROCESSED / f for f in paths.TRAINING_DATA])
    metrics = training.train(params, training.Run.of(model, fold, sig), train_df, val_df)
    if training.rank() == 0:
        io.write_json(paths.train_metrics(model, fold), metrics)


if __name__ == "__main__":
    run_stage("train", main)
