"""Optuna study: search space checks, pruning, resume, every sampler and pruner, two workers, apply."""

import os
import shutil
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from dialsum import models, tuning
from dialsum.data import clean_text, read_csv
from dialsum.params import ParamsError, load, override
from conftest import ROOT

SMALL = {"type": "bart", "d_model": 32, "layers": 1, "heads": 2, "ffn": 64}


def base_params(**tune):
    p = load(ROOT / "params.yaml").model_dump(exclude_unset=True)  # as written: a dict to edit
    p["zoo"]["tiny-bart"].update(arch=SMALL, vocab_size=400, max_source_len=96, max_target_len=24)
    p["training"].update(batch_size=8, eval_batch_size=32)
    p["metrics"]["tokenize"] = "whitespace"
    p["tune"].update({"model": "tiny-bart", "train_rows": 0, "val_rows": 0, "epochs": None, "enqueue": [], **tune})
    return tuning.settings(p)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    df = read_csv(ROOT / "data/sample/train.csv", "train")
    for c in ("dialogue", "summary"):
        df[c] = df[c].map(clean_text)
    init = tmp_path_factory.mktemp("init")
    entry = base_params().zoo["tiny-bart"]
    models.build_init(entry, list(df["dialogue"]) + list(df["summary"]), init, seed=0)
    return df.iloc[:48].reset_index(drop=True), df.iloc[48:64].reset_index(drop=True), init


def test_search_space_mistakes_are_one_line_params_errors():
    with pytest.raises(
        ParamsError, match="tune.search_space.training.learning_rat .*unknown key training.learning_rat"
    ):
        tuning.check_space(base_params(search_space={"training.learning_rat": {"low": 1e-4, "high": 1e-3}}))
    with pytest.raises(ParamsError, match="low <= high"):
        tuning.check_space(base_params(search_space={"training.learning_rate": {"low": 1e-2, "high": 1e-3}}))
    with pytest.raises(ParamsError, match="tune.search_space.training.epochs = -2 .*training.epochs must be >= 0"):
        tuning.check_space(base_params(search_space={"training.epochs": {"type": "int", "low": -2, "high": 3}}))
    with pytest.raises(ParamsError, match="tune.model"):
        tuning.check_space(base_params(model="gpt-17"))
    with pytest.raises(ParamsError, match="tune.sampler"):
        tuning.make_sampler("annealing", 0)


def test_overrides_follow_params_key_paths():
    p = base_params()
    # a zoo name with a dot, and a null lora block that becomes a mapping
    out = tuning.apply_overrides(
        p, {"zoo.solar-10_7b.lora.r": 64, "zoo.tiny-bart.lora.r": 8, "training.learning_rate": 0.01}
    )
    assert out.zoo["solar-10_7b"].lora.r == 64 and out.zoo["solar-10_7b"].lora.alpha == 32
    assert out.zoo["tiny-bart"].lora.model_dump(exclude_unset=True) == {"r": 8}
    assert out.training.learning_rate == 0.01 and p.training.learning_rate is None
    assert tuning.full_key("model.lora.r", "tiny-bart") == "zoo.tiny-bart.lora.r"


def test_study_identity(small_data, monkeypatch):
    train_df, val_df, _ = small_data
    p = base_params()
    name = tuning.study_name(p, train_df, val_df)
    assert name.startswith("tiny-bart-fold0-")
    more = override(
        p,
        {"tune.n_trials": 50, "tune.timeout": 60, "tune.n_jobs": 2, "tune.enqueue": [{"training.learning_rate": 0.01}]},
    )
    assert tuning.study_name(more, train_df, val_df) == name  # how many / where: same study, resumed
    for change in (
        {"sampler": "gp"},
        {"train_rows": 7},
        {"search_space": {"training.warmup_ratio": {"low": 0, "high": 1}}},
    ):
        other = override(p, {f"tune.{k}": v for k, v in change.items()})
        assert tuning.study_name(other, train_df, val_df) != name, change
    assert tuning.study_name(p, train_df.iloc[:-1], val_df) != name  # other data, other study
    beams = override(p, {"generation.num_beams": p.generation.num_beams + 3})
    assert tuning.study_name(beams, train_df, val_df) == name  # generation is not part of this objective...
    gen = override(
        p, {"tune.search_space": {**p.tune.search_space, "generation.length_penalty": {"low": 0.5, "high": 2.0}}}
    )
    gen_beams = override(gen, {"generation.num_beams": p.generation.num_beams + 3})
    assert tuning.study_name(gen_beams, train_df, val_df) != tuning.study_name(gen, train_df, val_df)  # ...unless tuned
    named = override(p, {"tune.study_name": "mine"})
    assert tuning.study_name(named, train_df, val_df) == "mine"
    # trials scored by tokens dialsum has since changed (session 28: morpheme) go to a study of their own
    morpheme = override(p, {"metrics.tokenize": "morpheme"})  # p scores whitespace tokens
    before = tuning.study_name(morpheme, train_df, val_df)
    monkeypatch.setitem(tuning.TOKENIZER_REVISION, "morpheme", 99)
    assert tuning.study_name(morpheme, train_df, val_df) != before
    assert tuning.study_name(p, train_df, val_df) == name  # whitespace: its tokens did not change


def test_storage_specs(tmp_path):
    assert tuning.make_storage(None) == tuning.DEFAULT_STORAGE
    assert tuning.make_storage(str(tmp_path / "s.db")) == f"sqlite:///{tmp_path}/s.db"
    assert isinstance(tuning.make_storage(f"journal:{tmp_path}/j.log"), optuna.storages.JournalStorage)
    assert tuning.make_storage("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_trial_trains_what_the_train_stage_would(small_data, tmp_path, monkeypatch):
    """A model's own training keys win in the train stage. Searching training.X that the zoo entry sets would
    tune nothing (refused); model.training.X reaches the trial (before session 27 it was dropped there, and
    training.X was tuned in trials but ignored by the train stage)."""
    from dialsum import training

    train_df, val_df, init = small_data
    space = {"type": "categorical", "choices": [0.15]}
    p = base_params(search_space={"training.label_smoothing": space}, sampler="random", pruner="none", epochs=1)
    p = override(p, {"zoo.tiny-bart.training": {"label_smoothing": 0.1}})
    with pytest.raises(
        ParamsError, match="zoo.tiny-bart.training sets label_smoothing.*model.training.label_smoothing"
    ):
        tuning.check_space(p)
    seen = []

    def fake_train(params, run, *a, **kw):
        seen.append((params.training.label_smoothing, params.training.epochs, params.training.eval_every_epochs))
        return {"rouge_sum": 0.5}

    monkeypatch.setattr(training, "train", fake_train)
    p = override(p, {"tune.search_space": {"model.training.label_smoothing": space}, "tune.epochs": 2})
    tuning.run_study(p, train_df, val_df, init, tmp_path / "w", n_trials=1, storage=f"sqlite:///{tmp_path}/s.db")
    assert seen == [(0.15, 2, 1)]


def test_bad_trial_is_pruned_and_the_study_resumes(small_data, tmp_path):
    train_df, val_df, init = small_data
    storage = f"sqlite:///{tmp_path}/study.db"
    space = {"training.learning_rate": {"type": "float", "low": 1e-8, "high": 1e-2, "log": True}}
    p = base_params(
        search_space=space,
        sampler="random",
        pruner="median",
        n_startup_trials=1,
        n_warmup_steps=2,
        epochs=6,
        enqueue=[{"training.learning_rate": 0.01}],
    )
    study = tuning.run_study(p, train_df, val_df, init, tmp_path / "work", n_trials=1, storage=storage, progress=False)
    good = study.trials[0]
    assert good.state == optuna.trial.TrialState.COMPLETE and good.value > 0
    assert sorted(good.intermediate_values) == [1, 2, 3, 4, 5, 6]  # a report after every epoch

    # Re-run with a larger study: the same study grows by one trial, built to be bad (no learning).
    p = override(p, {"tune.enqueue": [{"training.learning_rate": 0.01}, {"training.learning_rate": 1e-8}]})
    study = tuning.run_study(p, train_df, val_df, init, tmp_path / "work", n_trials=2, storage=storage, progress=False)
    assert [t.number for t in study.trials] == [0, 1]
    assert study.trials[0].params == good.params and study.trials[0].value == good.value
    bad = study.trials[1]
    assert bad.params == {"training.learning_rate": 1e-8}
    assert bad.state == optuna.trial.TrialState.PRUNED, (bad.intermediate_values, good.intermediate_values)
    assert max(bad.intermediate_values) < 6  # stopped before the last epoch
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # scratch cleaned

    # Same n_trials again: nothing to do.
    again = tuning.run_study(p, train_df, val_df, init, tmp_path / "work", n_trials=2, storage=storage, progress=False)
    assert len(again.trials) == 2

    summary = tuning.write_outputs(study, p, tmp_path / "out", tmp_path / "tune.json")
    assert summary["n_complete"] == 1 and summary["n_pruned"] == 1 and summary["best_trial"] == 0
    trials = pd.read_csv(tmp_path / "out/trials.csv")
    assert list(trials["state"]) == ["COMPLETE", "PRUNED"]
    assert (tmp_path / "out/plots/optimization_history.png").stat().st_size > 1000


def test_an_interrupted_trial_does_not_count_towards_n_trials(small_data, tmp_path):
    """Ctrl-C during a trial leaves it failed in the study; the re-run still completes tune.n_trials."""
    train_df, val_df, init = small_data
    storage = f"sqlite:///{tmp_path}/study.db"
    space = {"training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    p = base_params(search_space=space, sampler="random", pruner="none", epochs=1, train_rows=16, val_rows=8)
    study = tuning.create_study(p, storage, name=tuning.study_name(p, train_df, val_df))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # what the interrupted run left
    study = tuning.run_study(p, train_df, val_df, init, tmp_path / "w", n_trials=2, storage=storage, progress=False)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_killed_trial_is_failed_by_its_heartbeat_and_a_rerun_samples_anew(small_data, tmp_path, monkeypatch):
    """SIGKILL leaves its trial RUNNING, and running trials fill n_trials: before session 27 every re-run stood
    down short. And a re-run that grows the study draws new values (a sampler seeded as the first run's replayed
    its draws: trial 1 repeated trial 0)."""
    import time

    train_df, val_df, init = small_data
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    storage = f"sqlite:///{tmp_path}/study.db"
    space = {"training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    p = base_params(search_space=space, sampler="random", pruner="none", epochs=1, train_rows=16, val_rows=8)
    study = tuning.run_study(p, train_df, val_df, init, tmp_path / "w", n_trials=1, storage=storage, progress=False)
    killed = study.ask()  # a worker that beat once, then died
    study._storage.record_heartbeat(killed._trial_id)
    time.sleep(2.5)
    study = tuning.run_study(p, train_df, val_df, init, tmp_path / "w", n_trials=2, storage=storage, progress=False)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params != trials[0].params


def test_a_worker_that_asks_as_the_study_fills_stands_down(small_data, tmp_path, caplog):
    """Two workers finishing together both saw room and asked; the later trial trains nothing and ends failed."""
    train_df, val_df, init = small_data
    storage = f"sqlite:///{tmp_path}/study.db"
    space = {"training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    p = base_params(search_space=space, sampler="random", pruner="none", epochs=1, train_rows=16, val_rows=8)
    study = tuning.create_study(p, storage, name=tuning.study_name(p, train_df, val_df))
    study.tell(study.ask({"training.learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}), 1.0)
    study.ask()  # the other worker's trial, running: it holds the last of the 2 places
    study = tuning.run_study(p, train_df, val_df, init, tmp_path / "w", n_trials=2, storage=storage, progress=False)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "FAIL"]
    assert trials[2].user_attrs == {"surplus": True} and trials[2].params == {}  # nothing sampled or trained
    assert not (tmp_path / "w").exists()
    assert "Trial 2" not in caplog.text  # no failure warning, no traceback
    study.tell(1, 0.5)  # the other worker finishes
    summary = tuning.write_outputs(study, p, tmp_path / "out", tmp_path / "tune.json")
    assert (summary["n_trials"], summary["n_complete"], summary["n_failed"]) == (2, 2, 0)
    assert list(pd.read_csv(tmp_path / "out/trials.csv")["number"]) == [0, 1]


@pytest.mark.parametrize(
    "sampler,pruner", [("tpe", "median"), ("gp", "percentile"), ("cmaes", "hyperband"), ("random", "none")]
)
def test_every_sampler_and_pruner_runs(small_data, tmp_path, sampler, pruner):
    train_df, val_df, init = small_data
    space = {
        "training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
        "model.lora.r": {"type": "categorical", "choices": [4, 8]},
    }
    p = base_params(search_space=space, sampler=sampler, pruner=pruner, epochs=2, train_rows=24, val_rows=8)
    study = tuning.run_study(
        p, train_df, val_df, init, tmp_path / "w", n_trials=2, storage=f"sqlite:///{tmp_path}/s.db", progress=False
    )
    assert len(study.trials) == 2
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert all(t.params["zoo.tiny-bart.lora.r"] in (4, 8) for t in study.trials)


def test_best_params_apply_back_to_params(small_data, tmp_path):
    train_df, val_df, init = small_data
    space = {
        "training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "model.lora.r": {"type": "categorical", "choices": [4, 8]},
        "generation.num_beams": {"type": "int", "low": 1, "high": 2},
    }
    p = base_params(search_space=space, sampler="random", pruner="none", epochs=1, train_rows=16, val_rows=8)
    study = tuning.run_study(
        p, train_df, val_df, init, tmp_path / "w", n_trials=2, storage=f"sqlite:///{tmp_path}/s.db", progress=False
    )
    tuning.write_outputs(study, p, tmp_path / "tuning", tmp_path / "tune.json")
    best_file = tmp_path / "tuning/best_params.yaml"
    nested = yaml.safe_load(best_file.read_text())
    assert set(nested) == {"training", "zoo", "generation"} and set(nested["zoo"]) == {"tiny-bart"}
    args = tuning.apply_args(best_file)
    overrides = dict(a.split("=", 1) for a in args[1::2])
    applied = tuning.apply_overrides(p, {k: yaml.safe_load(v) for k, v in overrides.items()})
    best = study.best_trial.params
    assert applied.training.learning_rate == best["training.learning_rate"]
    assert applied.zoo["tiny-bart"].lora.r == best["zoo.tiny-bart.lora.r"]
    assert applied.generation.num_beams == best["generation.num_beams"]
    assert args[0] == "-S" and len(args) == 6


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    """Two `dialsum tune worker` processes on one SQLite study finish 4 trials between them, no duplicates."""
    for item in ("params.yaml", "stages", "data/sample"):
        src = ROOT / item
        (tmp_path / item).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item)
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["debug"]["subsample"] = 40
    p["zoo"]["tiny-bart"].update(arch=SMALL, vocab_size=400, max_target_len=24)
    p["tune"].update(n_trials=4, sampler="random", pruner="none", epochs=1, train_rows=16, val_rows=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    # one thread each: two workers on a 2-core box would otherwise oversubscribe it
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "stages/prepare.py"], cwd=tmp_path, env=env, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "dialsum.cli", "tune", "worker"]
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outs]
    storage = f"sqlite:///{tmp_path}/tuning/study.db"
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1  # both workers joined the same study
    study = optuna.load_study(study_name=names[0], storage=storage)
    trials = study.get_trials()
    # Workers that finish together may each ask for one more trial; the later ones stand down untrained.
    real = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in real] == ["COMPLETE"] * 4, [(t.number, t.state.name) for t in trials]
    assert [t.number for t in real] == [0, 1, 2, 3]
    assert all(t.state.name == "FAIL" and not t.params for t in trials if t.user_attrs.get("surplus"))
    assert len({tuple(sorted(t.params.items())) for t in real}) == 4, [
        (t.number, t.params, t.datetime_start) for t in trials
    ]
    logs = sorted((tmp_path / "logs").glob("tune@worker-*.log"))
    ran = [
        sum("finished with value" in line or "rouge_sum" in line for line in f.read_text().splitlines()) for f in logs
    ]
    assert len(logs) == 2 and all(n > 0 for n in ran), ran  # both workers did trials
