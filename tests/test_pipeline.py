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

from dialsum import training
from dialsum.cli import main as dialsum

pytestmark = pytest.mark.slow
COPY = [
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    "dvc.yaml",
    "params.yaml",
    "stages",
    "src",
    "data/sample",
]


# Fake secrets in every run's environment: no output, log or lock may ever contain them.
SECRETS = {"WANDB_API_KEY": "dialsum-fake-wandb-key-5f3a9c", "HF_TOKEN": "hf_dialsumFakeToken7788"}


def run(cmd, cwd, check=True):
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(Path(cwd) / "src"),
        # `dvc exp run` commits through scmrepo, which needs an identity a bare CI box may not configure
        GIT_AUTHOR_NAME="dialsum tests",
        GIT_AUTHOR_EMAIL="tests@dialsum.invalid",
        GIT_COMMITTER_NAME="dialsum tests",
        GIT_COMMITTER_EMAIL="tests@dialsum.invalid",
        **SECRETS,
    )
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
        (shutil.copytree if src.is_dir() else shutil.copy2)(
            src, dst / item, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {})
        )
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
    expected = (
        {"prepare", "ensemble", "tune", "plots", "report"}
        | {f"init@{m}" for m in p["models"]}
        | {f"average@{m}" for m in p["models"]}
        | {f"decode@{m}" for m in p["models"]}
    )
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
    # auto chooses on out-of-fold pools and reports every option on the test-shaped dev pools too
    auto = ens["auto"]
    assert auto["dev_rouge_sum_by_option"].keys() == auto["rouge_sum_by_option"].keys()
    assert auto["dev_rouge_sum_by_option"][auto["chosen"]] == ens["rouge_sum"]
    sub = pd.read_csv(dst / "submission.csv")
    test = pd.read_csv(dst / "data/processed/test.csv")
    assert list(sub.columns) == ["fname", "summary"] and list(sub["fname"]) == list(test["fname"])
    assert sub["summary"].notna().all()
    assert (dst / "logs/ensemble.log").exists()
    page = (dst / "reports/index.html").read_text(encoding="utf-8")
    dev = pd.read_csv(dst / "data/processed/dev.csv")
    assert page.count("<tr data-fname=") == len(dev) and all(f'data-source="{s}"' in page for s in ens["sources"])
    for png in ("dev_rouge_by_source", "model_comparison", "learning_curves", "lengths"):
        assert (dst / f"plots/{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # timing figures (runtime, samples/s) change on every run: kept out of dvclive, hence out of dvc.lock
    assert not [f for f in (dst / "dvclive").rglob("*") if "runtime" in f.name or "per_second" in f.name]
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
    files = [
        "predictions/tiny-bart/0/dev.csv",
        "predictions/tiny-bart/0/test.csv",
        "predictions/tiny-bart/0/oof.csv",
        "metrics/train/tiny-bart-0.json",
        "metrics/predict/tiny-bart-0.json",
        "metrics/ensemble.json",
        "submission.csv",
        "predictions/ensemble/test.csv",
        "data/processed/train.csv",
    ]
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
        proc = subprocess.Popen(
            [sys.executable, "stages/train.py", "--model", "tiny-bart", "--fold", "0"],
            cwd=dst,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and not list(ckpts.glob("checkpoint-*/trainer_state.json")):
            time.sleep(0.2)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # the kill may land mid-save: resuming takes the newest checkpoint whose save finished
        saved = sorted(
            (c for c in ckpts.glob("checkpoint-*") if training._complete(c)), key=lambda c: int(c.name.split("-")[1])
        )
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


def test_accelerate_launcher_trains_in_two_gloo_processes(project, tmp_path):
    """Issue 9: `training.launcher: accelerate` re-runs the train stage under `accelerate launch` in 2 CPU
    processes (DDP over gloo): each sees half the batches, rank 0 alone writes the model and metrics."""
    dst, _ = project
    work = tmp_path / "acc"
    for item in ("stages", "src", "data/processed", "models/tiny-bart/init"):
        shutil.copytree(dst / item, work / item, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["training"].update(launcher="accelerate", num_processes=2, epochs=1, eval_every_epochs=1)
    (work / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    run([sys.executable, "stages/train.py", "--model", "tiny-bart", "--fold", "0"], work)
    metrics = json.loads((work / "metrics/train/tiny-bart-0.json").read_text())
    train = pd.read_csv(work / "data/processed/train.csv")
    rows = int((train["fold"] != 0).sum())
    bs = p["training"]["batch_size"]
    assert metrics["steps"] == -(-rows // (bs * 2)) and metrics["rouge_sum"] >= 0  # 2 ranks split each epoch
    assert (work / "models/tiny-bart/0/model.safetensors").exists()
    rank0, rank1 = (
        (work / "logs/train@tiny-bart-0.log").read_text(),
        (work / "logs/train@tiny-bart-0.rank1.log").read_text(),
    )
    assert "rank 0 of 2 processes" in rank0 and "rank 1 of 2 processes" in rank1
    assert rank0.index("launching 2 processes") < rank0.index("rank 0 of 2")  # one log for the launcher + rank 0


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gptneox"])
def test_qlora_with_checkpointing_trains_in_two_gloo_processes(project, tmp_path, model):
    """Issue 35, finding 1: the zoo's LLM recipe (4-bit QLoRA + LoRA + gradient checkpointing) under
    `launcher: accelerate` with 2 processes died on both ranks at the first backward ("marked as ready twice"):
    peft left torch on reentrant checkpointing. Both causal stand-ins now train and write their adapter."""
    dst, _ = project
    work = tmp_path / "qlora"
    for item in ("stages", "src", "data/processed"):
        shutil.copytree(dst / item, work / item, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["training"].update(launcher="accelerate", num_processes=2, epochs=1, eval_every_epochs=1)
    p["zoo"][model].update(quantization="4bit", gradient_checkpointing=True, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    (work / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    run([sys.executable, "stages/init.py", "--model", model], work)
    run([sys.executable, "stages/train.py", "--model", model, "--fold", "0"], work)
    metrics = json.loads((work / f"metrics/train/{model}-0.json").read_text())
    assert metrics["steps"] >= 1 and metrics["loss"] > 0
    out = work / "models" / model / "0"
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert "rank 1 of 2 processes" in (work / f"logs/train@{model}-0.rank1.log").read_text()


def test_second_repro_is_noop_and_generation_change_reruns_predict_only(project):
    dst, _ = project
    assert stages_run(run([sys.executable, "-m", "dvc", "repro"], dst).stdout) == set()
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["generation"]["num_beams"] = 2
    (dst / "params.yaml").write_text(yaml.safe_dump(p, allow_unicode=True, sort_keys=False))
    ran = stages_run(run([sys.executable, "-m", "dvc", "repro"], dst).stdout)
    # decode@ reads generation.* for its trial 0; with decode.trials: 0 it rewrites the same empty choice. tune's
    # trials generate with it when its search space has generation.* keys: it re-runs, and with its study already
    # full (same name: generation is not searched here) adds no trial
    assert ran and all(
        s.startswith(("decode@", "predict@", "average@")) or s in ("ensemble", "plots", "report", "tune") for s in ran
    ), ran
    assert not any(s.startswith(("train@", "init@", "prepare")) for s in ran), ran


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
    # the team remote exists before any experiment, as in real use: `dvc exp push` reads the DVC remote from
    # the experiment's own commit (test_team_shares_results_through_a_dvc_remote pushes this experiment)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "-f", "team", str(dst.parent / "dvc-remote")], dst)
    run("git add -A && git -c user.email=t@t -c user.name=t commit -qm baseline", dst)
    # one source instead of four: the ensemble changes, training is restored from DVC's cache (quick)
    out = run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-n",
            "llama-fold0",
            "-S",
            "models=[tiny-llama]",
            "-S",
            "cv.folds=[0]",
        ],
        dst,
    ).stdout
    assert not any(s.startswith(("train@", "predict@")) for s in stages_run(out))
    show = run([sys.executable, "-m", "dvc", "exp", "show", "--csv"], dst).stdout
    assert "llama-fold0" in show and "rouge_sum" in show
    diff = run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--json"], dst).stdout
    assert json.loads(diff)  # the metrics differ from the committed baseline


def test_report_compares_a_revision_with_an_experiment(project):
    """Issue 23: `dialsum report --compare A B` with a git revision and a DVC experiment name (read through
    DVC's API: the workspace stays as it is), and with `workspace`."""
    dst, _ = project
    if "llama-fold0" not in run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], dst).stdout:
        test_exp_run_changes_metrics(project)
    # the workspace holds the llama-fold0 experiment's results (dvc exp run leaves them there), HEAD the baseline
    before = run("git status --porcelain && md5sum submission.csv params.yaml", dst).stdout
    cli = [sys.executable, "-m", "dialsum.cli", "report", "--compare"]
    out = run(cli + ["HEAD", "llama-fold0"], dst).stdout.strip().splitlines()[-1]
    assert out == "reports/compare-HEAD-llama-fold0.html"
    page = (dst / out).read_text(encoding="utf-8")
    dev = pd.read_csv(dst / "data/processed/dev.csv")
    assert page.count("<tr data-fname=") == len(dev)
    # the page's B - A is the two runs' metrics difference (same dev, same scorer)
    diff = json.loads(run([sys.executable, "-m", "dvc", "exp", "diff", "HEAD", "llama-fold0", "--json"], dst).stdout)
    want = diff["metrics"]["metrics/ensemble.json"]["rouge_sum"]["diff"]
    shown = float(page.split("Mean rouge_sum change B − A: <b>")[1].split("<")[0])
    assert shown == pytest.approx(want, abs=2e-4)
    assert "models" in page and "paired-bootstrap 95 % interval" in page
    assert run("git status --porcelain && md5sum submission.csv params.yaml", dst).stdout == before  # untouched
    same = (dst / run(cli + ["llama-fold0", "workspace"], dst).stdout.strip().splitlines()[-1]).read_text(
        encoding="utf-8"
    )
    assert "<b>+0.0000</b>" in same and "0 dialogues improved, 0 degraded" in same
    bad = run(cli + ["HEAD", "no-such-exp"], dst, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no-such-exp" in bad.stderr


def test_team_shares_results_through_a_dvc_remote(project, tmp_path):
    """Issue 10: push to a remote, clone afresh, pull: nothing to re-run and the same bytes; an experiment
    travels between clones with `dvc exp push/pull`; named artifacts are fetched by registered version."""
    dst, _ = project
    dvc = [sys.executable, "-m", "dvc"]
    origin = tmp_path / "origin.git"
    # back from the llama-fold0 experiment (test above) to the committed baseline, whose .dvc/config names
    # the DVC remote "team"
    run("git reset -q --hard && git clean -qfd -e models -e predictions -e data -e metrics", dst)
    run(dvc + ["checkout", "-f"], dst)
    assert "team" in run(dvc + ["remote", "list"], dst).stdout
    run(
        "git -c user.email=t@t -c user.name=t tag -a dialsum-models@v0.1.0 -m register", dst
    )  # GTO reads annotated tags
    run(["git", "init", "-q", "--bare", str(origin)], dst)
    run(f"git remote add origin {origin} && git push -q origin HEAD:refs/heads/main --tags", dst)
    run(dvc + ["push"], dst)

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", "-b", "main", str(origin), str(clone)], tmp_path)
    run(dvc + ["pull"], clone)
    assert "up to date" in run(dvc + ["status"], clone).stdout
    assert stages_run(run(dvc + ["repro"], clone).stdout) == set()  # no GPU hour spent twice
    shared = [
        "submission.csv",
        "metrics/ensemble.json",
        "predictions/ensemble/test.csv",
        "models/tiny-bart/0/model.safetensors",
        "data/processed/train.csv",
    ]
    assert [f for f in shared if (clone / f).read_bytes() != (dst / f).read_bytes()] == []
    for private in ("logs", "wandb", "checkpoints"):  # per machine, never shared
        assert not (clone / private).exists()

    got = tmp_path / "artifact"
    run(dvc + ["artifacts", "get", str(dst), "dialsum-models", "--rev", "v0.1.0", "-o", str(got)], tmp_path)
    assert (got / "tiny-bart/0/model.safetensors").read_bytes() == (
        dst / "models/tiny-bart/0/model.safetensors"
    ).read_bytes()

    run(dvc + ["exp", "push", "origin", "llama-fold0"], dst)
    run(dvc + ["exp", "pull", "origin", "llama-fold0"], clone)
    assert "llama-fold0" in run(dvc + ["exp", "list", "--all-commits", "--name-only"], clone).stdout
    run(dvc + ["exp", "apply", "llama-fold0"], clone)
    run(dvc + ["checkout"], clone)
    theirs_metrics = json.loads((clone / "metrics/ensemble.json").read_text())
    p = yaml.safe_load((clone / "params.yaml").read_text())
    assert p["models"] == ["tiny-llama"] and p["cv"]["folds"] == [0]
    assert theirs_metrics == _exp_metrics(dst, "llama-fold0")
    assert "up to date" in run(dvc + ["status"], clone).stdout


def _exp_metrics(repo, name):
    """metrics/ensemble.json as committed in experiment ``name``."""
    ref = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    ref = next(r for r in ref if r.endswith("/" + name))
    return json.loads(run(["git", "show", f"{ref}:metrics/ensemble.json"], repo).stdout)


def test_dvc_queue_runs_two_experiments_in_parallel_workers(project):
    """Issue 9: experiments queued with `dvc exp run --queue` run in `dvc queue start -j 2` workers."""
    import time

    dst, _ = project
    dvc = [sys.executable, "-m", "dvc"]
    for strategy in ("rouge_weighted", "blending"):
        run(dvc + ["exp", "run", "--queue", "-n", f"q-{strategy}", "-S", f"ensemble.strategy={strategy}"], dst)
    run(dvc + ["queue", "start", "-j", "2"], dst)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(dvc + ["queue", "status"], dst).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") >= 2 and "Failed" not in status, status
    run(dvc + ["queue", "stop"], dst, check=False)
    shown = run(dvc + ["exp", "show", "--csv"], dst).stdout
    rows = {line.split(",")[0]: line for line in shown.splitlines()}
    assert {"q-rouge_weighted", "q-blending"} <= set(rows), shown[:2000]


def test_dialsum_summarize_and_env(project, capsys):
    dst, _ = project
    p = yaml.safe_load((dst / "params.yaml").read_text())
    for m in p["models"]:
        out = dst / f"adhoc-{m}.csv"
        assert (
            dialsum(
                [
                    "summarize",
                    "--model",
                    str(dst / f"models/{m}/{p['cv']['folds'][0]}"),
                    "--input",
                    str(dst / "data/sample/test.csv"),
                    "--output",
                    str(out),
                    "--params",
                    str(dst / "params.yaml"),
                ]
            )
            == 0
        )
        got = pd.read_csv(out, keep_default_na=False)
        assert list(got["fname"]) == list(pd.read_csv(dst / "data/sample/test.csv")["fname"])
        assert (got["summary"].str.len() > 0).all()
    assert dialsum(["env"]) == 0
    assert "torch" in capsys.readouterr().out


def oof_dialogues_of_kept_folds(dst, ens):
    """Training rows held out by the folds whose sources the ensemble kept: what a fitted strategy may see."""
    train = pd.read_csv(dst / "data/processed/train.csv")
    kept = {int(s.split("/")[1]) for s in ens["sources"] if s not in ens["collapsed"]}
    return int(train["fold"].isin(kept).sum())


def test_ensemble_strategies_never_retrain(project):
    """Issue 5: switching ensemble.strategy re-runs only average@ (which generates only for averaging) and
    ensemble; stacking is fitted on out-of-fold rows."""
    dst, _ = project
    for strategy in ("stacking", "auto", "weighted_avg"):
        out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", f"ensemble.strategy={strategy}"], dst).stdout
        ran = stages_run(out)
        # auto is the default the fixture ran with: DVC may restore its ensemble from the run cache
        assert (ran or strategy == "auto") and all(
            s in ("ensemble", "plots", "report") or s.startswith("average@") for s in ran
        ), ran
        ens = json.loads((dst / "metrics/ensemble.json").read_text())
        assert ens["strategy"] == strategy and {"gain", "best_single", "models", "sources"} <= set(ens)
        if strategy == "stacking":  # fitted on exactly the out-of-fold rows of the folds that ran (and kept
            # a source: a collapsed one is left out, issue 22)
            assert ens["fitted_on"]["oof_dialogues"] == oof_dialogues_of_kept_folds(dst, ens) > 0
        # `dialsum summarize --ensemble` on the dev dialogues makes the stage's very choices (issue 7): for
        # stacking, four sources generate and the stacker is re-fitted from the stored out-of-fold
        # predictions; for weighted_avg, each model's folds are averaged token by token in one beam search
        adhoc = dst / f"adhoc-ensemble-{strategy}.csv"
        assert (
            dialsum(
                [
                    "summarize",
                    "--ensemble",
                    "--input",
                    str(dst / "data/processed/dev.csv"),
                    "--output",
                    str(adhoc),
                    "--params",
                    str(dst / "params.yaml"),
                ]
            )
            == 0
        )
        got = pd.read_csv(adhoc, keep_default_na=False)
        stage = pd.read_csv(dst / "predictions/ensemble/dev.csv", keep_default_na=False)
        assert list(got["fname"]) == list(stage["fname"]) and list(got["summary"]) == list(stage["summary"])
        assert list(got["source"]) == list(stage["source"])
    assert ens["averaging"]["token_level"]["tiny-bart"]["computed"] is True
    assert (dst / "predictions/tiny-bart/avg/dev.csv").exists()


def test_rerank_strategy_reruns_only_the_ensemble_side(project):
    """Issue 34: `-S ensemble.strategy=rerank` fits the cross-encoder on the out-of-fold candidates of the folds
    that ran and re-runs neither training nor predict."""
    dst, _ = project
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "ensemble.strategy=rerank"], dst).stdout
    ran = stages_run(out)
    assert "ensemble" in ran and all(s in ("ensemble", "plots", "report") or s.startswith("average@") for s in ran), ran
    ens = json.loads((dst / "metrics/ensemble.json").read_text())
    assert ens["strategy"] == "rerank" and ens["gain"] is not None
    assert ens["fitted_on"]["oof_dialogues"] == oof_dialogues_of_kept_folds(dst, ens) > 0
    chosen = pd.read_csv(dst / "predictions/ensemble/dev.csv", keep_default_na=False)
    assert set(chosen["source"]) <= set(ens["sources"]) and (chosen["summary"].str.len() > 0).all()


def test_tta_views_reach_the_ensemble(project):
    dst, _ = project
    # two sources keep it quick; each summarises every dialogue and its views
    run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-S",
            "tta.strategies=[reorder,mask]",
            "-S",
            "tta.num_aug=1",
            "-S",
            "ensemble.strategy=majority_vote",
            "-S",
            "models=[tiny-bart]",
        ],
        dst,
    )
    ens = json.loads((dst / "metrics/ensemble.json").read_text())
    assert {"orig", "reorder-0", "mask-0"} <= set(ens["views"]) and ens["candidates_per_dialogue"] > 2
    dev = pd.read_csv(dst / "predictions/tiny-bart/0/dev.csv", keep_default_na=False)
    assert set(dev["view"]) >= {"orig", "reorder-0"}
    good = (dst / "params.yaml").read_text()
    bad = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tta.strategies=[paraphrase]"], dst, check=False)
    (dst / "params.yaml").write_text(good)  # a failed experiment leaves its params in the workspace
    assert bad.returncode != 0 and "tta.paraphrase_model is not set" in bad.stderr + bad.stdout


def test_candidate_pools_reach_the_ensemble_and_selection_never_regenerates(project):
    """Issue 22: `-S generation.candidates.k=4` (beam, sample) writes 4 candidates per member per view, the
    ensemble chooses among them, and switching the selection strategy re-runs neither training nor predict."""
    dst, _ = project
    good = (dst / "params.yaml").read_text()
    try:
        _pools_in_the_pipeline(dst)
    finally:
        (dst / "params.yaml").write_text(good)  # later tests start from the one-candidate params


def _pools_in_the_pipeline(dst):
    common = ["-S", "models=[tiny-bart]", "-S", "tta.strategies=[]", "-S", "generation.candidates.k=4"]
    # diverse beams take the beam path here with one more generate argument (tests/test_pools.py runs all three)
    for method in ("beam", "sample"):
        out = run(
            [
                sys.executable,
                "-m",
                "dvc",
                "exp",
                "run",
                *common,
                "-S",
                f"generation.candidates.method={method}",
                "-S",
                "ensemble.strategy=auto",
            ],
            dst,
        ).stdout
        assert not any(s.startswith("train@") for s in stages_run(out))
        for f in (0, 1):
            dev = pd.read_csv(dst / f"predictions/tiny-bart/{f}/dev.csv", keep_default_na=False)
            assert list(dev.columns) == ["fname", "view", "candidate", "summary", "logprob", "tokens"]
            per_input = dev.groupby(["fname", "view"])["candidate"].apply(tuple)
            assert len(per_input) == 40 and set(per_input) == {(0, 1, 2, 3)}
        ens = json.loads((dst / "metrics/ensemble.json").read_text())
        kept = 2 - len(ens["collapsed"]) if len(ens["collapsed"]) < 2 else 2  # all collapsed: all kept
        assert ens["candidates_per_dialogue"] == 4 * kept, ens
        assert ens["auto"]["chosen_on"] == "oof" and ens["auto"]["chosen"] in ens["auto"]["rouge_sum_by_option"]
    out = run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            *common,
            "-S",
            "generation.candidates.method=sample",
            "-S",
            "ensemble.strategy=stacking",
        ],
        dst,
    ).stdout
    ran = stages_run(out)  # average@ only records that it does not average
    assert "ensemble" in ran and all(s in ("ensemble", "plots", "report") or s.startswith("average@") for s in ran), ran


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


def test_decode_search_reruns_predict_and_ensemble_never_train(project):
    """Issue 32: `dvc exp run -S decode.trials=N` searches decoding settings on the trained models, then re-runs
    predict and the ensemble with the choice; no model is trained again. The metrics show what was chosen."""
    dst, _ = project
    pfile = dst / "params.yaml"
    good = pfile.read_text()
    try:
        p = yaml.safe_load(good)  # the workspace's models and folds, as the experiments before this one left them
        cmd = [sys.executable, "-m", "dvc", "exp", "run", "-S", "decode.trials=3", "-S", "decode.rows=12"]
        ran = stages_run(run(cmd, dst).stdout)
        assert {f"decode@{m}" for m in p["models"]} | {"ensemble"} <= ran, ran
        assert any(s.startswith("predict@") for s in ran) and not any(s.startswith(("train@", "init@")) for s in ran)
        train = pd.read_csv(dst / "data/processed/train.csv")
        first = p["cv"]["folds"][0]
        oof_rows = min(12, int((train["fold"] == first).sum()))  # the first fold model's own held-out rows
        for m in p["models"]:
            d = json.loads((dst / f"metrics/decode/{m}.json").read_text())
            assert d["trials"] == 3 and d["searched_on"] == "out-of-fold" and d["rows"] == oof_rows
            assert d["best_rouge_sum"] >= d["default_rouge_sum"] and "num_beams" in d["chosen"]
            chosen = yaml.safe_load((dst / f"decoding/{m}.yaml").read_text())
            assert chosen["generation"]["num_beams"] == d["chosen"]["num_beams"]
        shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], dst).stdout
        assert "best_rouge_sum" in shown
        # `dialsum summarize --ensemble` decodes under the same choice: the stage's summaries, row for row
        # (all of dev: the same rows batch the same way, so not even rounding can differ)
        out = dst / "adhoc-decoded.csv"
        argv = ["summarize", "--ensemble", "--input", str(dst / "data/processed/dev.csv"), "--output", str(out)]
        assert dialsum([*argv, "--params", str(pfile)]) == 0
        stage = pd.read_csv(dst / "predictions/ensemble/dev.csv", keep_default_na=False)
        assert list(pd.read_csv(out, keep_default_na=False)["summary"]) == list(stage["summary"])
    finally:
        pfile.write_text(good)  # the next experiment starts from the committed settings


def test_qlora_gptneox_experiment(project):
    """Issue 4's acceptance line: a 4-bit Polyglot-architecture stand-in through the whole pipeline."""
    dst, _ = project
    run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-n",
            "qlora",
            "-S",
            "models=[tiny-gptneox]",
            "-S",
            "cv.folds=[0]",
            "-S",
            "zoo.tiny-gptneox.quantization=4bit",
            "-S",
            "training.epochs=1",
            "-S",
            "generation.max_new_tokens=16",
        ],
        dst,
    )  # 4-bit generation on a CPU is slow; short is enough
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


def test_replicas_run_through_the_pipeline_and_load_in_plain_transformers(project, monkeypatch, kobart_tokenizer):
    """Issue 19: KoBART / SOLAR-Instruct / Polyglot-ko replicas (real tokenizer conventions, random weights) as
    `pretrained:` entries: init -> train -> predict in the matrix, and the saved folders (full weights, a
    LoRA adapter) load and generate with transformers / peft alone."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    dst, _ = project
    for kind in ("kobart", "solar", "polyglot"):
        run(
            [
                sys.executable,
                "-m",
                "dialsum.cli",
                "replica",
                kind,
                "--out",
                f"models/replicas/{kind}",
                "--layers",
                "1",
                "--d-model",
                "64",
                "--tokenizer",
                str(kobart_tokenizer),
            ],
            dst,
        )
    names = ["kobart-replica", "solar-replica", "polyglot-replica"]
    out = run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-S",
            f"models=[{','.join(names)}]",
            "-S",
            "cv.folds=[0]",
            "-S",
            "training.epochs=1",
            "-S",
            "generation.max_new_tokens=12",
            "-S",
            "generation.num_beams=1",  # greedy: what is checked is that the folders load and generate
            "-S",
            "tta.strategies=[]",
        ],
        dst,
    ).stdout
    assert {f"init@{m}" for m in names} | {f"{s}@{m}-0" for m in names for s in ("train", "predict")} <= stages_run(out)
    ens = json.loads((dst / "metrics/ensemble.json").read_text())
    assert sorted(ens["sources"]) == sorted(f"{m}/0" for m in names)
    monkeypatch.chdir(dst)  # the adapter names its base by the zoo entry's relative path
    dialogue = pd.read_csv(dst / "data/processed/dev.csv")["dialogue"][0]
    for name, load in (
        ("kobart-replica", AutoModelForSeq2SeqLM.from_pretrained),
        ("solar-replica", AutoPeftModelForCausalLM.from_pretrained),
        ("polyglot-replica", AutoModelForCausalLM.from_pretrained),
    ):
        folder = dst / f"models/{name}/0"
        assert (folder / ("adapter_model.safetensors" if name == "solar-replica" else "model.safetensors")).exists()
        model, tok = load(str(folder)).eval(), AutoTokenizer.from_pretrained(folder)
        enc = tok(dialogue, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        new = ids.shape[1] - (1 if name == "kobart-replica" else enc["input_ids"].shape[1])  # decoder start / prompt
        assert new == 4, (name, ids.shape)
        dev = pd.read_csv(dst / f"predictions/{name}/0/dev.csv", keep_default_na=False)
        assert sorted(dev["fname"]) == sorted(pd.read_csv(dst / "data/processed/dev.csv")["fname"])


def test_exp_run_tune_in_a_fresh_clone(tmp_path, root=Path(__file__).resolve().parents[1]):
    """Issue 20: a clone that has neither run nor pulled the pipeline can run `dvc exp run tune` (it used to
    fail while saving the experiment: `failed to load directory ('plots',)`, the committed lock's plots folder
    not being in the clone's cache)."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    out = run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "tune",
            "-S",
            "tune.n_trials=1",
            "-S",
            "debug.subsample=40",
            "-S",
            "training.epochs=1",
        ],
        clone,
    )
    assert stages_run(out.stdout) == {"prepare", "tune"}
    assert json.loads((clone / "metrics/tune.json").read_text())["n_trials"] == 1
