import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
DIALOGSUM = ROOT.parent / "shared" / "data" / "dialogsum"


@pytest.fixture
def root() -> Path:
    return ROOT


def stand_in_params(models, folds=(0,), max_target_len=64, **sections):
    """Valid params (dialsum.params.Params) for ``models`` that exist only as files a test writes: each a
    seq2seq entry named after a made-up checkpoint; ``sections`` are further params.yaml sections."""
    from dialsum.params import typed

    zoo = {
        m: {"family": "seq2seq", "pretrained": f"stand-in/{m}", "max_source_len": 64, "max_target_len": max_target_len}
        for m in models
    }
    return typed({"models": list(models), "zoo": zoo, "cv": {"folds": list(folds)}, **sections})
