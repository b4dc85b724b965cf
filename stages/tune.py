"""tune: an Optuna study over `tune.search_space`, each trial trained like train@<tune.model>-<tune.fold> ->
tuning/best_params.yaml, tuning/trials.csv, tuning/plots/, metrics/tune.json.

The study itself (tuning/study.db by default) is not a DVC output: DVC deletes outputs before a stage runs,
and the study must survive so that a larger `tune.n_trials` adds trials instead of starting over."""

import logging
from dialsum import paths, tuning
from dialsum.params import load
from dialsum.tracking import log_level, run_stage, seed_everything, setup_logging

log = logging.getLogger("tune")


def main():
    params = tuning.settings(load())
    setup_logging("tune", None, log_level(params))
    tuning.check_space(params)
    seed_everything(params.seed)
    train_df, val_df = tuning.load_data(params)
    init = tuning.build_init(params, paths.TUNING / "init")
    study = tuning.run_study(params, train_df, val_df, init, paths.TUNING / "trials")
    summary = tuning.write_outputs(study, params, paths.TUNING, paths.TUNE_METRICS)
    log.info("study %s: %s", study.study_name, summary)


if __name__ == "__main__":
    run_stage("tune", main)
