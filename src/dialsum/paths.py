"""Where the stages write (and later stages, reports and the CLI read): every output path of dvc.yaml,
spelled once. ``tests/test_deps.py`` checks that dvc.yaml's ``outs`` are these. Paths are relative to the
project root; join them to ``root`` to read another checkout."""

from __future__ import annotations

from pathlib import Path

PROCESSED = Path("data/processed")  # prepare: {train,dev,test,augmented}.csv
ENSEMBLE_PREDICTIONS = Path("predictions/ensemble")  # ensemble: {dev,test}.csv
ENSEMBLE_METRICS = Path("metrics/ensemble.json")
SUBMISSION = Path("submission.csv")
REPORT = Path("reports/index.html")
PLOTS = Path("plots")
TUNING = Path("tuning")  # tune: best_params.yaml, trials.csv, plots/ (the study beside them is no output)
TUNE_METRICS = Path("metrics/tune.json")


def init_dir(model: str) -> Path:
    """init@model: the tokenizer (+ random weights for a from-scratch entry), shared by the model's folds."""
    return Path(f"models/{model}/init")


def model_dir(model: str, fold) -> Path:
    """train@model-fold: the kept model."""
    return Path(f"models/{model}/{fold}")


def checkpoint_dir(model: str, fold) -> Path:
    """train@model-fold's checkpoints: no DVC output, since DVC deletes outputs before a run and these must
    survive one to be resumed."""
    return Path(f"checkpoints/{model}/{fold}")


def live_dir(model: str, fold) -> Path:
    """train@model-fold's dvclive folder (its ``plots/metrics`` curves are the DVC output)."""
    return Path(f"dvclive/{model}-{fold}")


def train_metrics(model: str, fold) -> Path:
    return Path(f"metrics/train/{model}-{fold}.json")


def prediction_dir(source: str) -> Path:
    """predict@model-fold (``source`` = ``model/fold``) or average@model (``model/avg``)."""
    return Path(f"predictions/{source}")


def predictions(source: str, split: str) -> Path:
    """One split's summaries of a source: ``predictions/<model>/<fold|avg>/<split>.csv``."""
    return prediction_dir(source) / f"{split}.csv"


# what training reads of data/processed (the train, decode and tune stages' deps and a run's signature): test.csv
# is not among them, so a new test set re-runs predict and not training
TRAINING_DATA = ("train.csv", "augmented.csv", "dev.csv")


def predict_metrics(model: str, fold) -> Path:
    return Path(f"metrics/predict/{model}-{fold}.json")


def decoding(model: str) -> Path:
    """decode@model: the chosen decoding settings predict reads (generation keys, length control, post-edits)."""
    return Path(f"decoding/{model}.yaml")


def decode_metrics(model: str) -> Path:
    return Path(f"metrics/decode/{model}.json")


def average_metrics(model: str) -> Path:
    return Path(f"metrics/average/{model}.json")
