"""ensemble: one summary per dialogue from every model x fold x TTA view by `ensemble.strategy` ->
predictions/ensemble/{dev,test}.csv, submission.csv and metrics/ensemble.json (dev ROUGE of every source,
of each model over its folds, and of the ensemble; best_single and gain)."""

from dialsum import ensemble, io, params as P, paths
from dialsum.tracking import log_level, run_stage, setup_logging


def main():
    params = P.load()
    setup_logging("ensemble", level=log_level(params))
    result, metrics = ensemble.run(params)
    for split in ("dev", "test"):
        io.write_csv(paths.ENSEMBLE_PREDICTIONS / f"{split}.csv", result[split])
    io.write_json(paths.ENSEMBLE_METRICS, metrics)
    io.write_csv(paths.SUBMISSION, result["test"][["fname", "summary"]])


if __name__ == "__main__":
    run_stage("ensemble", main)
