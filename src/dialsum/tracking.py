"""Logging for stages: ``logs/<stage>[@item].log`` plus the console, and one-line errors for users."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable


def setup_logging(stage: str, item: str | None = None, level: str = "INFO", log_dir: str | Path = "logs") -> Path:
    name = f"{stage}@{item}" if item else stage
    rank = int(os.environ.get("RANK", "0"))
    path = Path(log_dir) / (f"{name}.rank{rank}.log" if rank else f"{name}.log")  # accelerate workers
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not ("LOCAL_RANK" in os.environ and not rank):
        path.write_text("", encoding="utf-8")  # a fresh log per run; rank 0 of an `accelerate launch` continues
    # append mode (O_APPEND) for all: the launcher and its rank 0 write to one file without overwriting
    for h in (logging.FileHandler(path, mode="a", encoding="utf-8"), logging.StreamHandler(sys.stderr)):
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "matplotlib", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def run_stage(name: str, main: Callable[[], object]) -> None:
    """Run a stage's main; user errors (bad params/data) print one line and exit 2, no traceback."""
    from .data import DataError
    from .params import ParamsError

    start = time.time()
    try:
        main()
    except (ParamsError, DataError) as e:
        logging.getLogger(name).error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.getLogger(name).info("done in %.1fs", time.time() - start)


def matrix_item(stage: str, with_fold: bool = True):
    """(params, model, fold) for a matrix stage's ``--model M [--fold F]``, logging set up, model checked."""
    import argparse

    from .params import load, parse_fold, zoo_entry

    ap = argparse.ArgumentParser(prog=f"stages/{stage}.py")
    ap.add_argument("--model", required=True)
    if with_fold:
        ap.add_argument("--fold", required=True)
    a = ap.parse_args()
    params = load()
    fold = parse_fold(a.fold) if with_fold else None
    item = f"{a.model}-{fold}" if with_fold else a.model
    setup_logging(stage, item, log_level(params))
    zoo_entry(params, a.model)
    return params, a.model, fold


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (``transformers.set_seed``) and deterministic kernels where torch has them:
    every stage that trains or generates calls it first, so its outputs depend on params and data only."""
    import torch
    from transformers import set_seed

    set_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def log_level(params) -> str:
    from .params import typed

    return typed(params).tracking.log_level


def _wandb_reachable(timeout: float = 1.5) -> bool:
    import socket

    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def start_wandb(params: dict, name: str, extra_tags: tuple = ()):
    """A W&B run for one training (None when disabled). Never prompts and never blocks: without a key
    in the environment, or without network, it logs offline under ``wandb/`` (sync later with
    ``wandb sync wandb/offline-run-*``). The HF WandbCallback then logs into this run."""
    import os

    from .params import typed, written

    params = typed(params)
    cfg = params.tracking.wandb
    if not cfg.enabled:
        return None
    mode = cfg.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") and _wandb_reachable() else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_LOG_MODEL"] = "false"  # models are DVC's business
    import wandb

    group = cfg.group or os.environ.get("DVC_EXP_NAME") or "dvc-repro"
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=name,
        group=group,
        tags=[*cfg.tags, *extra_tags],
        mode=mode,
        dir=".",
        reinit="finish_previous",
        config={k: v for k, v in written(params).items() if k != "tune"},
    )
    logging.getLogger(__name__).info("W&B run %s (%s, group %s)", name, mode, group)
    return run
