"""Hyper-parameter search with Optuna: every trial trains through :func:`dialsum.training.train`.

The study lives in an Optuna storage (SQLite under ``tuning/`` by default, any RDB URL, or a journal file),
so it survives between runs, grows when ``tune.n_trials`` grows, and is shared by any number of worker
processes (``dialsum tune worker``) — Optuna's storage is the queue, there is no other.

Search-space keys are params.yaml key paths (``training.learning_rate``; ``model.`` is short for
``zoo.<tune.model>.``), so the best trial maps straight back onto ``dvc exp run -S key=value``.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from transformers import TrainerCallback

from .metrics import TOKENIZER_REVISION
from .params import PRUNERS, SAMPLERS, Params, ParamsError, for_model, override, typed, written

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///tuning/study.db"


class PruningCallback(TrainerCallback):
    """Report each evaluation's ROUGE to the trial; stop training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str = "eval_rouge_sum"):
        self.trial, self.metric, self.reported = trial, metric, set()

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        step = max(1, round(state.epoch or 0))
        # the closing evaluation of the best model repeats the last epoch: report each epoch once
        if not metrics or self.metric not in metrics or step in self.reported:
            return
        self.reported.add(step)
        self.trial.report(float(metrics[self.metric]), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {step} ({self.metric} = {metrics[self.metric]:.4f})")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles only numbers; categorical dimensions fall back to a seeded random sampler.
        return optuna.samplers.CmaEsSampler(
            seed=seed, warn_independent_sampling=False, independent_sampler=optuna.samplers.RandomSampler(seed=seed)
        )
    raise ParamsError(f"params.yaml: tune.sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")


def make_pruner(name: str, max_epochs: int, n_startup_trials: int = 2, n_warmup_steps: int = 1):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(int(max_epochs), 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ParamsError(f"params.yaml: tune.pruner must be one of {', '.join(PRUNERS)}; got {name!r}")


def make_storage(spec: str | None):
    """``None`` = SQLite under tuning/; ``journal:PATH`` or a ``*.log``/``*.jsonl`` path = journal file
    (safe for many processes on one file system); ``*.db`` path = SQLite; anything else = an RDB URL."""
    spec = spec or DEFAULT_STORAGE
    if spec.startswith("journal:") or spec.endswith((".log", ".jsonl")):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in spec:
        spec = f"sqlite:///{spec}"
    if spec.startswith("sqlite:///"):
        Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return spec


# A trial whose process died without a word (SIGKILL, the OOM killer, a lost session) stays RUNNING, and running
# trials fill n_trials (COUNTED); with a heartbeat, optuna fails it once its beat is GRACE_S old.
HEARTBEAT_S, GRACE_S = 10, 60


class _Heartbeat(optuna.storages.RDBStorage):
    """optuna's heartbeat thread ends at its first failed write (a busy SQLite file), and a live trial whose
    beat then ages past GRACE_S is failed under it: a failed beat is logged and the next one tried."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError as e:
            log.warning("trial heartbeat not recorded (%s); retrying in %d s", type(e).__name__, HEARTBEAT_S)


def with_heartbeat(storage):
    """An RDB URL as storage with a heartbeat (:data:`GRACE_S`); other storages as they are (optuna's journal
    storage has no heartbeat: a hard-killed trial there stays RUNNING until `optuna` is told otherwise)."""
    if isinstance(storage, str):
        with warnings.catch_warnings():  # the heartbeat is "experimental" since optuna 2.9: a warning per study
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _Heartbeat(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    return storage


def full_key(key: str, model: str) -> str:
    return f"zoo.{model}.{key.removeprefix('model.')}" if key.startswith("model.") else key


def epochs_spec(space: dict, model: str) -> dict | None:
    """The search-space spec of the epochs a trial trains (``training.epochs`` or ``model.training.epochs``),
    if searched."""
    specs = [s for k, s in space.items() if full_key(k, model) in ("training.epochs", f"zoo.{model}.training.epochs")]
    return specs[-1] if specs else None


def apply_overrides(params: Params | dict, overrides: dict) -> Params:
    """A validated copy of params with dotted keys set (:func:`dialsum.params.override`)."""
    return override(params, overrides)


def suggest(trial: optuna.Trial, space: dict, model: str) -> dict:
    """One value per search-space key: ``{type: float|int|categorical, low, high, log, step, choices}``."""
    values = {}
    for key, spec in space.items():
        name = full_key(key, model)
        kind = spec.get("type", "float")
        if kind == "float":
            values[name] = trial.suggest_float(
                name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        elif kind == "int":
            values[name] = trial.suggest_int(
                name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        elif kind == "categorical":
            values[name] = trial.suggest_categorical(name, spec["choices"])
        else:
            raise ParamsError(f"params.yaml: tune.search_space.{key}.type must be float, int or categorical")
    return values


def settings(params: Params | dict) -> Params:
    """params as the tuned model trains: with its ``zoo.<model>.training`` overrides (``tune.model`` has no
    default: it must be named)."""
    params = typed(params)
    if params.tune.model is None:
        raise ParamsError("params.yaml: tune.model is required to tune (a zoo name)")
    # an unknown tune.model is reported by check_space() with its key; only a known one has overrides
    return for_model(params, params.tune.model) if params.tune.model in params.zoo else params


def load_data(params: Params):
    """(train, validation) rows of ``tune.fold`` from data/processed, train cut to ``tune.train_rows``."""
    from .data import load_processed, split_fold

    t = params.tune
    d = load_processed()
    train_df, val_df = split_fold(d["train"], d["dev"], t.fold, d["augmented"])
    if t.train_rows:
        train_df = train_df.iloc[: t.train_rows]
    if t.val_rows:
        val_df = val_df.iloc[: t.val_rows]
    return train_df, val_df


def build_init(params: Params, out_dir: Path) -> Path:
    """The tuned model's tokenizer (+ random init), exactly as the init stage builds it."""
    from .data import load_processed
    from .io import atomic_dir
    from .models import build_init as build

    full = load_processed()["train"]  # the init stage's vocabulary: the whole train split, like every fold
    with atomic_dir(out_dir) as tmp:
        build(params.zoo[params.tune.model], list(full["dialogue"]) + list(full["summary"]), tmp, params.seed)
    return Path(out_dir)


def check_space(params: Params) -> None:
    """Fail before any training when a search-space key or range is wrong."""
    t = params.tune
    if t.model not in params.zoo:
        raise ParamsError(f"params.yaml: tune.model = {t.model!r} is not in zoo")
    if t.fold != "full" and t.fold >= params.cv.n_splits:
        raise ParamsError(f"params.yaml: tune.fold = {t.fold} is out of range for cv.n_splits")
    if not t.search_space:
        raise ParamsError("params.yaml: tune.search_space is empty; nothing to tune")
    over = params.zoo[t.model].training
    set_by_model = set(written(over)) if over is not None else set()  # keys the train stage takes from the entry
    for key, spec in t.search_space.items():
        name = full_key(key, t.model)
        if not name.startswith(("training.", "generation.", "zoo.")):
            raise ParamsError(
                f"params.yaml: tune.search_space key {key} must start with training., generation., zoo. or model."
            )
        if not isinstance(spec, dict):
            raise ParamsError(f"params.yaml: tune.search_space.{key} must be a mapping with type/low/high or choices")
        kind = spec.get("type", "float")
        if kind in ("float", "int") and not ("low" in spec and "high" in spec and spec["low"] <= spec["high"]):
            raise ParamsError(f"params.yaml: tune.search_space.{key} needs low <= high")
        if kind == "categorical" and not spec.get("choices"):
            raise ParamsError(f"params.yaml: tune.search_space.{key} needs a non-empty choices list")
        if kind not in ("float", "int", "categorical"):
            raise ParamsError(f"params.yaml: tune.search_space.{key}.type must be float, int or categorical")
        field = name.removeprefix("training.")
        if name.startswith("training.") and field in set_by_model:
            raise ParamsError(
                f"params.yaml: tune.search_space.{key}: zoo.{t.model}.training sets {field}, which wins over "
                f"training.* when {t.model} trains; search model.training.{field} instead"
            )
        # The key must exist and accept the values: try both ends of the range.
        for v in [spec["low"], spec["high"]] if kind != "categorical" else spec["choices"]:
            try:
                apply_overrides(params, {name: v})
            except ParamsError as e:
                raise ParamsError(
                    f"params.yaml: tune.search_space.{key} = {v!r} is not valid: {str(e).removeprefix('params.yaml: ')}"
                ) from None


# What a trial's score depends on; n_trials, timeout, n_jobs, storage and enqueue only decide how many trials
# run where, so changing them continues the same study.
IDENTITY_KEYS = (
    "model",
    "fold",
    "sampler",
    "pruner",
    "n_startup_trials",
    "n_warmup_steps",
    "seed",
    "train_rows",
    "val_rows",
    "epochs",
    "search_space",
)


def study_name(params: Params, train_df: pd.DataFrame, val_df: pd.DataFrame) -> str:
    """``tune.study_name``, or (null) a name derived from everything that defines the objective: another
    search space, model, data, training or metrics setting starts a new study instead of mixing trials."""
    import hashlib
    import json

    t = params.tune
    if t.study_name:
        return t.study_name
    ident = {k: getattr(t, k) for k in IDENTITY_KEYS}
    # as written in params.yaml, so that a default added to dialsum.params does not orphan a study
    ident.update(
        seed_all=params.seed,
        training=written(params.training),
        metrics=written(params.metrics),
        zoo=written(params.zoo[t.model]),
    )
    if revision := TOKENIZER_REVISION.get(params.metrics.tokenize):  # only then: other studies keep their names
        ident["tokenizer_revision"] = revision
    if any(full_key(k, t.model).startswith("generation.") for k in t.search_space):
        # only then do trials generate with `generation` (else in-training eval settings score them), and
        # only then is it part of the objective; otherwise a beam change would orphan the study
        ident["generation"] = written(params.generation)
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
    for df in (train_df, val_df):
        h.update(df[["fname", "dialogue", "summary"]].to_csv(index=False).encode())
    return f"{t.model}-fold{t.fold}-{h.hexdigest()[:10]}"


def create_study(
    params: Params, storage=None, sampler_seed: int | None = None, name: str | None = None
) -> optuna.Study:
    """Create or load the study; ``sampler_seed`` defaults to ``tune.seed`` (extra workers pass their own, or
    two workers would propose the very same configurations)."""
    t = params.tune
    seed = t.seed if sampler_seed is None else sampler_seed
    max_epochs = t.epochs or params.training.epochs
    if spec := epochs_spec(t.search_space, t.model):
        max_epochs = spec.get("high", max(spec.get("choices", [max_epochs])))
    storage = storage if storage is not None else make_storage(t.storage)
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            study = optuna.create_study(
                study_name=name or t.study_name or "dialsum",
                storage=with_heartbeat(storage),
                sampler=make_sampler(t.sampler, seed),
                pruner=make_pruner(t.pruner, max_epochs, t.n_startup_trials, t.n_warmup_steps),
                direction="maximize",
                load_if_exists=True,
            )
            if study.trials:  # a study grown by a re-run: a sampler seeded as before would replay its first draws
                # mixed, not added: workers' seeds are tune.seed + their (often consecutive) process ids
                grown = int(np.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
                study.sampler = make_sampler(t.sampler, grown)
            return study
        except SQLAlchemyError as e:
            # Workers started together race to create the same new database schema; the loser retries.
            if attempt == 5:
                raise
            log.info("storage busy (%s), retrying", type(e).__name__)
            time.sleep(0.5 * (attempt + 1))


def finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


# What fills the study's n_trials: running trials count, so parallel workers do not overshoot; failed ones (an
# interrupted run leaves its trial failed; a killed one is failed by the heartbeat) do not, or a re-run would
# stop short of tune.n_trials.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


class Surplus(Exception):
    """A trial asked for after the study was full: it samples and trains nothing, and ends failed."""


def surplus(trial: optuna.Trial, target: int) -> bool:
    """Whether ``target`` counted trials were asked for before this one.

    MaxTrialsCallback counts after a trial ends, so two workers that finish together both see room and both ask
    for one more. Trial numbers are handed out in order by the storage, so the later of the two sees the
    earlier as running, and stands down.
    """
    earlier = trial.study.get_trials(deepcopy=False, states=COUNTED)
    return sum(t.number < trial.number for t in earlier) >= target


class _QuietSurplus(logging.Filter):
    """Optuna logs a caught exception as a failure with its traceback; a surplus trial is not one."""

    def __init__(self):
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.getMessage().startswith(f"Trial {n} failed ") for n in self.numbers)


def run_study(
    params: Params,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    init_dir: Path,
    work_dir: Path,
    n_trials: int | None = None,
    storage=None,
    progress: bool = True,
    sampler_seed: int | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` finished (complete or pruned) trials.

    ``n_trials`` is the size of the *study*, not of this run: re-running adds only the missing trials, and
    several workers on one storage stop together when the total is reached.
    """
    from .training import Run, train
    from . import decoding, generation
    from .data import references
    from .metrics import Scorer

    params = settings(params)
    t = params.tune
    check_space(params)
    target = n_trials if n_trials is not None else t.n_trials
    model = t.model
    name = study_name(params, train_df, val_df)
    study = create_study(params, storage, sampler_seed, name)
    if t.enqueue:
        done = {tuple(sorted(tr.params.items())) for tr in study.get_trials(deepcopy=False)}
        for values in t.enqueue:
            full = {full_key(k, model): v for k, v in values.items()}
            if tuple(sorted(full.items())) not in done:
                study.enqueue_trial(full, skip_if_exists=True)
    remaining = target - finished(study)
    if remaining <= 0:
        log.info(
            "study %r already has %d finished trials (tune.n_trials = %d): nothing to run",
            name,
            finished(study),
            target,
        )
        return study
    log.info(
        "study %r: %d finished, running %d more (sampler %s, pruner %s)",
        name,
        finished(study),
        remaining,
        t.sampler,
        t.pruner,
    )
    space = t.search_space
    epochs_tuned = epochs_spec(space, model) is not None
    tunes_generation = any(full_key(k, model).startswith("generation.") for k in space)
    scorer = Scorer.from_params(params)

    quiet = _QuietSurplus()

    def objective(trial: optuna.Trial) -> float:
        if surplus(trial, target):
            trial.set_user_attr("surplus", True)
            quiet.numbers.add(trial.number)
            trial.study.stop()
            log.info(
                "trial %d: not run, the study already has %d trials (tune.n_trials); stopping", trial.number, target
            )
            raise Surplus(trial.number)
        values = suggest(trial, space, model)
        # merged again as the train stage merges (zoo.<model>.training over training.*): a searched
        # model.training.* key reaches the trial, as `dialsum tune apply` then gives it to the train stage
        merged = for_model(override(params, values), model)
        # Pruning needs a ROUGE after every epoch; a trial never resumes another's checkpoints; the study is
        # tracked by Optuna, not W&B.
        trial_params = override(
            merged,
            {
                **({"training.epochs": t.epochs} if t.epochs and not epochs_tuned else {}),
                "training.eval_every_epochs": 1,
                "training.resume": "never",
                "training.early_stopping_patience": 0,
                "tracking.wandb.enabled": False,
            },
        )
        tdir = Path(work_dir) / f"trial-{trial.number}"
        shutil.rmtree(tdir, ignore_errors=True)
        log.info("trial %d: %s", trial.number, values)
        try:
            out_dir = tdir / "model" if tunes_generation else None
            run = Run(model, t.fold, init_dir, out_dir, tdir / "ckpt", signature=f"trial-{trial.number}")
            metrics = train(trial_params, run, train_df, val_df, callbacks=[PruningCallback(trial)], track=False)
            value = metrics["rouge_sum"]
            if tunes_generation:
                summarizer = generation.Summarizer.load(out_dir, trial_params.zoo[model], trial_params.generation)
                preds, _ = decoding.generate(summarizer, val_df["dialogue"], scorer.tokenizer, "trial generate")
                value = scorer.score(preds, references(val_df))["rouge_sum"]
            log.info("trial %d: rouge_sum %.4f", trial.number, value)
            return value
        except optuna.TrialPruned as e:
            log.info("trial %d: %s", trial.number, e)
            raise
        finally:
            shutil.rmtree(tdir, ignore_errors=True)

    from optuna.study import MaxTrialsCallback

    # the logger that reports finished trials; a filter on a parent logger would not see its records
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    try:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=t.timeout,
            n_jobs=t.n_jobs,
            catch=(Surplus,),
            callbacks=[MaxTrialsCallback(target, states=COUNTED)],
            gc_after_trial=True,
            show_progress_bar=progress and t.n_jobs == 1,
        )
    finally:
        optuna_log.removeFilter(quiet)
    return study


def best_params_nested(study: optuna.Study, model: str) -> dict:
    """The best trial's values in params.yaml's own layout (the model name kept whole, dots included)."""
    nested: dict = {}
    for key, value in study.best_trial.params.items():
        prefix = f"zoo.{model}."
        parts = ["zoo", model, *key[len(prefix) :].split(".")] if key.startswith(prefix) else key.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def write_outputs(study: optuna.Study, params: dict, out_dir: Path, metrics_path: Path) -> dict:
    """best_params.yaml, trials.csv, plots/*.png and the metrics JSON, from the whole study."""
    import yaml

    from .io import write_csv, write_json, write_text

    out_dir = Path(out_dir)
    # A surplus trial (a worker that asked as the study filled up) ran nothing: it is not part of the result.
    trials = [tr for tr in study.get_trials(deepcopy=False) if not tr.user_attrs.get("surplus")]
    states = pd.Series([tr.state.name for tr in trials])
    summary = {
        "study_name": study.study_name,
        "direction": "maximize",
        "n_trials": len(trials),
        "n_complete": int((states == "COMPLETE").sum()),
        "n_pruned": int((states == "PRUNED").sum()),
        "n_failed": int((states == "FAIL").sum()),
    }
    rows = [
        {
            "number": tr.number,
            "state": tr.state.name,
            "value": tr.value,
            "last_epoch": max(tr.intermediate_values) if tr.intermediate_values else None,
            **{f"params.{k}": v for k, v in tr.params.items()},
        }
        for tr in trials
    ]
    write_csv(out_dir / "trials.csv", pd.DataFrame(rows))
    if summary["n_complete"]:
        best = study.best_trial
        summary.update(best_value=round(float(best.value), 6), best_trial=best.number)
        nested = best_params_nested(study, params.tune.model)
        flags = " ".join(f"-S '{k}={v}'" for k, v in best.params.items())
        header = (
            f"# Best of study {study.study_name!r}: trial {best.number}, rouge_sum {best.value:.4f} "
            f"({summary['n_complete']} complete, {summary['n_pruned']} pruned).\n"
            f"# Apply: dialsum tune apply   (= dvc exp run {flags})\n"
        )
        write_text(out_dir / "best_params.yaml", header + yaml.safe_dump(nested, allow_unicode=True, sort_keys=True))
    else:
        write_text(out_dir / "best_params.yaml", "# no completed trial yet\n{}\n")
    _plots(study, out_dir / "plots")
    write_json(metrics_path, summary)
    return summary


def _plots(study: optuna.Study, plot_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    from .io import atomic_dir

    with atomic_dir(plot_dir) as tmp:
        for name, fn in (
            ("optimization_history", ovm.plot_optimization_history),
            ("param_importances", ovm.plot_param_importances),
            ("intermediate_values", ovm.plot_intermediate_values),
        ):
            try:
                ax = fn(study)
                ax.figure.savefig(tmp / f"{name}.png", dpi=100, bbox_inches="tight")
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                # importances need >= 2 complete trials with different values; say so, don't fail the study
                log.info("plot %s skipped: %s", name, e)
            finally:
                plt.close("all")


def apply_args(best_file: Path) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run`` from best_params.yaml."""
    import yaml

    nested = yaml.safe_load(Path(best_file).read_text()) or {}
    flat: list[str] = []

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, key)
            else:
                flat.append(f"{key}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")

    walk(nested, "")
    return [a for kv in flat for a in ("-S", kv)]
