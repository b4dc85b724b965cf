"""W&B with no account and no network: the run logs offline, is finished, and leaks no secret."""

import time

import pandas as pd
import pytest

from conftest import tiny_bart_params
from dialsum import models, tracking

pytest.importorskip("wandb")


def _tiny_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "dialsum-fake-wandb-key-5f3a9c")  # a key, but no network here
    monkeypatch.delenv("WANDB_MODE", raising=False)
    # mode auto probes api.wandb.ai: a box that reaches it would go online with the fake key
    monkeypatch.setattr(tracking, "_wandb_reachable", lambda *a, **k: False)
    params, e = tiny_bart_params(epochs=2, batch_size=4, eval_every_epochs=1, resume="never")
    params["tracking"]["wandb"].update(enabled=True, tags=["unit"], group="g1", mode="auto")
    df = pd.DataFrame(
        {
            "fname": [f"t{i}" for i in range(8)],
            "dialogue": [f"#Person1#: {i}번 방에 오세요. #Person2#: 네." for i in range(8)],
            "summary": [f"#Person1#은 {i}번 방에 오라고 한다." for i in range(8)],
        }
    )
    models.build_init(e, list(df["dialogue"]) + list(df["summary"]), tmp_path / "init", seed=0)
    return params, df


def test_wandb_offline_run_with_full_params(tmp_path, monkeypatch):
    from dialsum.training import Run, train

    params, df = _tiny_run(tmp_path, monkeypatch)
    train(params, Run("tiny-bart", 0, tmp_path / "init", None, tmp_path / "ckpt", signature="sig"), df, df)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    files = list(runs[0].rglob("*"))
    path = next(f for f in files if f.suffix == ".wandb")  # offline: config + history in here
    # wandb-core writes this file from its own process and may still be flushing it after finish() returns
    # (seen once in CI: only the 7-byte header); the content is what is asserted, not the timing
    for _ in range(300):
        record = path.read_bytes()
        if b"rouge_sum" in record:
            break
        time.sleep(0.2)
    assert b"tiny-bart" in record and b"eval_every_epochs" in record and b"rouge_sum" in record  # full params, metrics
    assert "finishing run" in (runs[0] / "logs" / "debug.log").read_text()
    for f in files:
        if f.is_file():
            assert b"dialsum-fake-wandb-key-5f3a9c" not in f.read_bytes(), f


def test_crashed_training_marks_the_wandb_run_failed(tmp_path, monkeypatch):
    """A crash mid-training finishes the W&B run with a non-zero exit code (shown as failed, never left
    'running'), and the error still reaches the caller."""
    import transformers

    from dialsum.training import Run, train

    params, df = _tiny_run(tmp_path, monkeypatch)
    calls = {"n": 0}
    real_step = transformers.Seq2SeqTrainer.training_step

    def crash_on_second_step(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated CUDA OOM")
        return real_step(self, *a, **kw)

    monkeypatch.setattr(transformers.Seq2SeqTrainer, "training_step", crash_on_second_step)
    with pytest.raises(RuntimeError, match="simulated CUDA OOM"):
        train(params, Run("tiny-bart", 0, tmp_path / "init", None, tmp_path / "ckpt", signature="sig"), df, df)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = (runs[0] / "logs" / "debug.log").read_text()
    assert "finishing run" in log and "got exitcode: 1" in log, log[-2000:]
