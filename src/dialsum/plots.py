"""PNG figures of a run (matplotlib, headless): dev ROUGE per source and per model, learning curves from
dvclive, and length distributions of the data. ``dvc plots show`` renders them next to dvclive's curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROUGE = ("rouge1", "rouge2", "rougeL")


def _bars(ax, names: list[str], scores: dict, title: str) -> None:
    x = np.arange(len(names))
    for k, metric in enumerate(ROUGE):
        ax.bar(x + (k - 1) * 0.27, [scores[n][metric] for n in names], 0.27, label=metric)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (dev)")
    ax.set_title(title)
    ax.legend(fontsize=8)


def source_bars(ensemble: dict, out: Path) -> None:
    """Dev ROUGE of every model/fold source and of the ensemble."""
    scores = {**ensemble["sources"], "ensemble": {m: ensemble[m] for m in ROUGE}}
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(scores) + 2), 4))
    how = ensemble["strategy"] + (f": {ensemble['auto']['chosen']}" if "auto" in ensemble else "")
    _bars(ax, list(scores), scores, f"dev ROUGE per source ({how})")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def model_bars(ensemble: dict, out: Path) -> None:
    """Each model over its folds against the ensemble."""
    scores = {**ensemble.get("models", {}), "ensemble": {m: ensemble[m] for m in ROUGE}}
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(scores) + 2), 4))
    _bars(ax, list(scores), scores, "model comparison (dev)")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def learning_curves(live_dirs: list[Path], out: Path) -> None:
    """Train loss and eval rouge_sum against the step, one line per model/fold."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for d in live_dirs:
        m = d / "plots/metrics"
        # the Trainer logs the running train loss as `loss` (dvclive: loss.tsv) and eval ROUGE under eval/
        for ax, files, col in (
            (a, [m / "loss.tsv", m / "train/loss.tsv"], "loss"),
            (b, [m / "eval/rouge_sum.tsv"], "rouge_sum"),
        ):
            f = next((f for f in files if f.exists()), None)
            if f is not None:
                t = pd.read_csv(f, sep="\t")
                ax.plot(t["step"], t[col], marker="." if len(t) < 20 else None, label=d.name)
    a.set_title("train loss")
    b.set_title("eval rouge_sum")
    for ax in (a, b):
        ax.set_xlabel("dvclive step (one per logging event)")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def length_hist(frames: dict[str, pd.DataFrame], out: Path) -> None:
    """Dialogue and summary lengths (whitespace tokens) per split."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for split, df in frames.items():
        a.hist(df["dialogue"].str.split().str.len(), bins=30, alpha=0.5, label=split)
        if "summary" in df:
            b.hist(df["summary"].str.split().str.len(), bins=30, alpha=0.5, label=split)
    a.set_title("dialogue length (words)")
    b.set_title("summary length (words)")
    for ax in (a, b):
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_all(out_dir: Path, ensemble_json: Path, live_dirs: list[Path], frames: dict) -> list[Path]:
    ensemble = json.loads(Path(ensemble_json).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / n for n in ("dev_rouge_by_source.png", "model_comparison.png", "learning_curves.png", "lengths.png")
    ]
    source_bars(ensemble, paths[0])
    model_bars(ensemble, paths[1])
    learning_curves([p for p in live_dirs if p.is_dir()], paths[2])
    length_hist(frames, paths[3])
    return paths
