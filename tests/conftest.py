import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest runs two workers (pyproject's addopts): one torch thread each, inherited by every dvc stage a test
    # starts, so two workers share 2 cores instead of four OpenMP threads spinning on them
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DIALOGSUM = ROOT.parent / "shared" / "data" / "dialogsum"
# KoBART's released tokenizer, beside the checkout as CI lays it out; DIALSUM_KOBART_TOKENIZER points elsewhere
KOBART_TOKENIZER = Path(
    os.environ.get("DIALSUM_KOBART_TOKENIZER") or ROOT.parent / "shared" / "fixtures" / "kobart-tokenizer"
)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def kobart_tokenizer() -> Path:
    """KoBART's tokenizer folder; without it the replica tests stop on one line that says where it is looked
    for, instead of a traceback each (the tokenizer is not in the repo: it is read where CI places it)."""
    if not (KOBART_TOKENIZER / "tokenizer.json").is_file():
        pytest.fail(
            f"KoBART's tokenizer not found at {KOBART_TOKENIZER}: the replica tests need it "
            "(set DIALSUM_KOBART_TOKENIZER to its folder)",
            pytrace=False,
        )
    return KOBART_TOKENIZER


def stand_in_params(models, folds=(0,), max_target_len=64, **sections):
    """Valid params (dialsum.params.Params) for ``models`` that exist only as files a test writes: each a
    seq2seq entry named after a made-up checkpoint; ``sections`` are further params.yaml sections."""
    from dialsum.params import typed

    zoo = {
        m: {"family": "seq2seq", "pretrained": f"stand-in/{m}", "max_source_len": 64, "max_target_len": max_target_len}
        for m in models
    }
    return typed({"models": list(models), "zoo": zoo, "cv": {"folds": list(folds)}, **sections})


MICRO_ARCH = {"d_model": 32, "layers": 1, "heads": 2, "ffn": 64}  # one layer, 32 wide: seconds per test


def micro_entry(arch_type: str = "bart", family: str | None = None, **kw) -> dict:
    """A zoo entry for a from-scratch model of ``arch_type`` in MICRO_ARCH's size (a 400-token vocabulary, 64
    source and 16 target tokens); ``family`` follows the architecture unless given; ``kw`` overrides keys."""
    return {
        "family": family or ("seq2seq" if arch_type == "bart" else "causal"),
        "pretrained": None,
        "vocab_size": 400,
        "max_source_len": 64,
        "max_target_len": 16,
        "arch": {"type": arch_type, **MICRO_ARCH},
        **kw,
    }


def tiny_bart_params(**training):
    """params.yaml as written (a dict to edit) with ``tiny-bart`` shrunk to a one-layer, 32-wide BART (a
    300-token vocabulary, 48 source and 12 target tokens), whitespace ROUGE, and ``training`` keys set:
    what the tests that run the Trainer itself build on. Returns (params, the zoo entry)."""
    from dialsum.params import load

    params = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    entry = {
        **params["zoo"]["tiny-bart"],
        "vocab_size": 300,
        "max_source_len": 48,
        "max_target_len": 12,
        "arch": {"type": "bart", **MICRO_ARCH},
    }
    params["zoo"]["tiny-bart"] = entry
    params["training"].update(training)
    params["metrics"]["tokenize"] = "whitespace"
    return params, entry


def spy_references(monkeypatch, scorer) -> list:
    """Every reference ``scorer.per_row`` is given from now on, in order: what a fitted strategy has read."""
    seen: list = []
    real = scorer.per_row
    monkeypatch.setattr(scorer, "per_row", lambda preds, rs: seen.extend(r for x in rs for r in x) or real(preds, rs))
    return seen


def pytest_collection_modifyitems(items):
    """The end-to-end module first: one worker takes it (the longest file, one shared project) while the other
    works through the rest, so the suite takes about as long as that file."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")  # stable: each file keeps its order
