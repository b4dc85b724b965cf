"""End to end: the real dvc.yaml on tiny settings in a throwaway git repo."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dialsum.cli import main as dialsum

pytestmark = pytest.mark.slow
COPY = [".dvc", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml", "stages", "src", "data/sample"]


# Fake secrets in every run's environment: no output, log or lock may ever contain them.
SECRETS = {"WANDB_API_KEY": "dialsum-fake-wandb-key-5f3a9c", "HF_TOKEN": "hf_dialsumFakeToken7788"}


def run(cmd, cwd, check=True):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(Path(cwd) / "src"), **SECRETS)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory, root=Path(__file__).resolve().parents[1]):
    dst = tmp_path_factory.mktemp("proj")
    for item in COPY:
        src = root / item
        (dst / item).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / item,
                                                            **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["debug"]["subsample"] = 40
    p["training"].update(epochs=2, eval_every_epochs=1)
    p["generation"]["num_beams"] = 1
    (dst / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", dst)
    out = run([sys.executable, "-m", "dvc", "repro"], dst)
    return dst, out.stdout


def test_repro_builds_every_output(project):
    dst, out = project
    p = yaml.safe_load((dst / "params.yaml").read_text())
    expected = {"prepare", "ensemble", "tune", "plots"} | {f"init@{m}" for m in p["models"]} | {f"average@{m}" for m in p["models"]}
    for m in p["models"]:
        for f in p["cv"]["folds"]:
            expected |= {f"train@{m}-{f}", f"predict@{m}-{f}"}
            assert (dst / f"models/{m}/{f}/model.safetensors").exists()
            assert (dst / f"models/{m}/{f}/tokenizer.json").exists()
            for split in ("oof", "dev", "test"):
                assert (dst / f"predictions/{m}/{f}/{split}.csv").exists()
            tm = json.loads((dst / f"metrics/train/{m}-{f}.json").read_text())
            assert tm["rouge_sum"] > 0
            oof = pd.read_csv(dst / f"predictions/{m}/{f}/oof.csv")
            train = pd.read_csv(dst / "data/processed/train.csv")
            assert sorted(oof["fname"]) == sorted(train.loc[train["fold"] == f, "fname"])
    assert stages_run(out) == expected
    ens = json.loads((dst / "metrics/ensemble.json").read_text())
    assert ens["rouge1"] > 0 and {"best_single", "gain", "sources"} <= set(ens)
    sub = pd.read_csv(dst / "submission.csv")
    test = pd.read_csv(dst / "data/processed/test.csv")
    assert list(sub.columns) == ["fname", "summary"] and list(sub["fname"]) == list(test["fname"])
    assert sub["summary"].notna().all()
    assert (dst / "logs/ensemble.log").exists()
    for png in ("dev_rouge_by_source", "model_comparison", "learning_curves", "lengths"):
        assert (dst / f"plots/{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], dst).stdout)["data"]
    assert any(k.endswith("eval/rouge_sum.tsv") for k in shown) and "plots/learning_curves.png" in shown


def test_eval_metric_agrees_with_dialsum_score(project, capsys):
    dst, _ = project
    p = yaml.safe_load((dst / "params.yaml").read_text())
    m, f = p["models"][0], p["cv"]["folds"][0]
    pred = pd.read_csv(dst / f"predictions/{m}/{f}/dev.csv")[["fname", "summary"]].fillna("")
    pred.to_csv(dst / "pred.csv", index=False)
    assert dialsum(["score", str(dst / "pred.csv"), str(dst / "data/processed/dev.csv")]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stage = json.loads((dst / f"metrics/predict/{m}-{f}.json").read_text())
    for k in ("rouge1", "rouge2", "rougeL", "rouge_sum"):
        assert cli[k] == pytest.approx(stage[k], abs=1e-6)


def test_forced_rerun_is_byte_identical(project):
    """Determinism: re-running training, prediction and the ensemble from scratch gives the same bytes."""
    dst, _ = project
    files = ["predictions/tiny-bart/0/dev.csv", "predictions/tiny-bart/0/test.csv", "predictions/tiny-bart/0/oof.csv",
             "metrics/train/tiny-bart-0.json", "metrics/predict/tiny-bart-0.json", "metrics/ensemble.json",
             "submission.csv", "predictions/ensemble/test.csv", "data/processed/train.csv"]
    before = {f: (dst / f).read_bytes() for f in files}
    for stage in ("prepare", "train@tiny-bart-0", "predict@tiny-bart-0", "ensemble"):
        run([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], dst)
    after = {f: (dst / f).read_bytes() for f in files}
    assert [f for f in files if before[f] != after[f]] == []
    weights = dst / "models/tiny-bart/0/model.safetensors"
    assert weights.exists() and not list((dst / "models").rglob("*.bin")) and not list((dst / "models").rglob("*.pt"))


def test_killed_training_resumes_from_its_checkpoint(project):
    """Kill train mid-way: the checkpoint survives, the old model folder is untouched, the next run resumes."""
    import signal
    import time

    dst, _ = project
    pfile = dst / "params.yaml"
    good = pfile.read_text()
    p = yaml.safe_load(good)
    p["training"].update(epochs=10, eval_every_epochs=1)
    pfile.write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    model_dir = dst / "models/tiny-bart/0"
    old_weights = (model_dir / "model.safetensors").read_bytes()
    ckpts = dst / "checkpoints/tiny-bart/0"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(dst / "src"))
    try:
        proc = subprocess.Popen([sys.executable, "stages/train.py", "--model", "tiny-bart", "--fold", "0"], cwd=dst,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not list(ckpts.glob("checkpoint-*/trainer_state.json")):
            time.sleep(0.2)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        saved = sorted(ckpts.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
        assert saved, "no checkpoint written before the kill"
        assert (model_dir / "model.safetensors").read_bytes() == old_weights  # no half-written output
        step = int(saved[-1].name.split("-")[1])
        assert step > 0
        out = run([sys.executable, "stages/train.py", "--model", "tiny-bart", "--fold", "0"], dst)
        log = (dst / "logs/train@tiny-bart-0.log").read_text()
        assert f"resuming from checkpoints/tiny-bart/0/checkpoint-{step}" in log, out.stderr[-2000:]
        metrics = json.loads((dst / "metrics/train/tiny-bart-0.json").read_text())
        assert metrics["steps"] > step and (model_dir / "model.safetensors").exists()
        assert not ckpts.exists()  # removed only after the best model was saved
    finally:
        pfile.write_text(good)
    run([sys.executable, "-m", "dvc", "repro"], dst)  # back to the committed state for the tests below


def test_second_repro_is_noop_and_generation_change_reruns_predict_only(project):
    dst, _ = project
    assert stages_run(run([sys.executable, "-m", "dvc", "repro"], dst).stdout) == set()
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["generation"]["num_beams"] = 2
    (dst / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    ran = stages_run(run([sys.executable, "-m", "dvc", "repro"], dst).stdout)
    assert ran and all(s.startswith(("predict@", "average@")) or s in ("ensemble", "plots") for s in ran), ran


def test_stage_list_has_every_item(project):
    dst, _ = project
    out = run([sys.executable, "-m", "dvc", "stage", "list"], dst).stdout
    p = yaml.safe_load((dst / "params.yaml").read_text())
    for m in p["models"]:
        for f in p["cv"]["folds"]:
            assert f"train@{m}-{f}" in out and f"predict@{m}-{f}" in out


def test_bad_params_fail_with_one_line(project):
    dst, _ = project
    bad = dst / "params.yaml"
    good = bad.read_text()
    try:
        bad.write_text(good.replace("on_invalid: error", "on_invalid: sometimes"))
        p = run([sys.executable, "stages/prepare.py"], dst, check=False)
        assert p.returncode == 2
        assert "data.on_invalid" in p.stderr and "Traceback" not in p.stderr
    finally:
        bad.write_text(good)


def test_exp_run_changes_metrics(project):
    dst, _ = project
    run("git add -A && git -c user.email=t@t -c user.name=t commit -qm baseline", dst)
    run([sys.executable, "-m", "dvc", "exp", "run", "-n", "one-epoch", "-S", "training.epochs=1"], dst)
    show = run([sys.executable, "-m", "dvc", "exp", "show", "--csv"], dst).stdout
    assert "one-epoch" in show and "rouge_sum" in show
    diff = run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--json"], dst).stdout
    assert json.loads(diff)  # the metrics differ from the committed baseline


def test_dialsum_summarize_and_env(project, capsys):
    dst, _ = project
    p = yaml.safe_load((dst / "params.yaml").read_text())
    for m in p["models"]:
        out = dst / f"adhoc-{m}.csv"
        assert dialsum(["summarize", "--model", str(dst / f"models/{m}/{p['cv']['folds'][0]}"),
                        "--input", str(dst / "data/sample/test.csv"), "--output", str(out),
                        "--params", str(dst / "params.yaml")]) == 0
        got = pd.read_csv(out, keep_default_na=False)
        assert list(got["fname"]) == list(pd.read_csv(dst / "data/sample/test.csv")["fname"])
        assert (got["summary"].str.len() > 0).all()
    assert dialsum(["env"]) == 0
    assert "torch" in capsys.readouterr().out


def test_ensemble_strategies_never_retrain(project):
    """Issue 5: switching ensemble.strategy re-runs only average@ (which generates only for averaging) and
    ensemble; stacking is fitted on out-of-fold rows."""
    dst, _ = project
    for strategy in ("stacking", "weighted_avg"):
        out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", f"ensemble.strategy={strategy}"], dst).stdout
        ran = stages_run(out)
        assert ran and all(s in ("ensemble", "plots") or s.startswith("average@") for s in ran), ran
        ens = json.loads((dst / "metrics/ensemble.json").read_text())
        assert ens["strategy"] == strategy and {"gain", "best_single", "models", "sources"} <= set(ens)
        if strategy == "stacking":  # fitted on exactly the out-of-fold rows of the folds that ran
            train = pd.read_csv(dst / "data/processed/train.csv")
            p = yaml.safe_load((dst / "params.yaml").read_text())
            assert ens["fitted_on"]["oof_dialogues"] == int(train["fold"].isin(p["cv"]["folds"]).sum())
    assert ens["averaging"]["token_level"]["tiny-bart"]["computed"] is True
    assert (dst / "predictions/tiny-bart/avg/dev.csv").exists()


def test_tta_views_reach_the_ensemble(project):
    dst, _ = project
    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tta.strategies=[reorder,mask]", "-S", "tta.num_aug=1",
         "-S", "ensemble.strategy=majority_vote"], dst)
    ens = json.loads((dst / "metrics/ensemble.json").read_text())
    assert {"orig", "reorder-0", "mask-0"} <= set(ens["views"]) and ens["candidates_per_dialogue"] > 4
    dev = pd.read_csv(dst / "predictions/tiny-bart/0/dev.csv", keep_default_na=False)
    assert set(dev["view"]) >= {"orig", "reorder-0"}
    good = (dst / "params.yaml").read_text()
    bad = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tta.strategies=[paraphrase]"], dst, check=False)
    (dst / "params.yaml").write_text(good)  # a failed experiment leaves its params in the workspace
    assert bad.returncode != 0 and "tta.paraphrase_model is not set" in bad.stderr + bad.stdout


def test_tune_stage_resumes_its_study_through_dvc(project):
    dst, _ = project
    first = json.loads((dst / "metrics/tune.json").read_text())
    assert first["n_trials"] == 2 and (dst / "tuning/best_params.yaml").exists()
    out = run([sys.executable, "-m", "dvc", "exp", "run", "tune", "-S", "tune.n_trials=3"], dst).stdout
    assert stages_run(out) == {"tune"}
    again = json.loads((dst / "metrics/tune.json").read_text())
    assert again["study_name"] == first["study_name"] and again["n_trials"] == 3  # one trial added, not three
    trials = pd.read_csv(dst / "tuning/trials.csv")
    assert list(trials["number"]) == [0, 1, 2]
    applied = run([sys.executable, "-m", "dialsum.cli", "tune", "apply", "--print-only"], dst).stdout
    assert applied.startswith("dvc exp run -S") and "training.learning_rate=" in applied


def test_qlora_gptneox_experiment(project):
    """Issue 4's acceptance line: a 4-bit Polyglot-architecture stand-in through the whole pipeline."""
    dst, _ = project
    run([sys.executable, "-m", "dvc", "exp", "run", "-n", "qlora", "-S", "models=[tiny-gptneox]",
         "-S", "cv.folds=[0]", "-S", "zoo.tiny-gptneox.quantization=4bit", "-S", "training.epochs=1"], dst)
    out = dst / "models/tiny-gptneox/0"
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    ens = json.loads((dst / "metrics/ensemble.json").read_text())
    assert list(ens["sources"]) == ["tiny-gptneox/0"]
    assert len(pd.read_csv(dst / "submission.csv")) == len(pd.read_csv(dst / "data/processed/test.csv"))


def test_no_secret_reaches_any_output(project):
    """WANDB_API_KEY / HF_TOKEN were set for every run above: grep everything the runs wrote."""
    dst, _ = project
    hits = []
    for f in dst.rglob("*"):
        if f.is_file() and ".git" not in f.parts and f.stat().st_size < 50_000_000:
            data = f.read_bytes()
            hits += [f"{f.relative_to(dst)}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    assert hits == []
    assert any((dst / "logs").iterdir()) and (dst / "dvc.lock").exists()
