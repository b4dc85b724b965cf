"""Speed figures of dialsum against the usual competition-script habits, and of the DVC pipeline itself.

    python benchmarks/run.py --quick     # <= 5 min on a 2-core CPU
    python benchmarks/run.py             # bigger samples, steadier figures

Human-readable rows first; the last stdout line is one JSON object:

- ``train_speedup``: real (non-pad) source tokens/s of our training batches (dynamic padding to a multiple
  of 8, length-grouped sampling) / the same with every batch padded to ``max_source_len`` in random order;
  one epoch over the same rows, same model (the ``tiny-bart`` architecture), same Trainer.
- ``generate_speedup``: summaries/s of ``dialsum.generation.Summarizer`` (length-sorted batches, beam 4) /
  one ``generate`` call per dialogue (beam 4); the same fixed number of new tokens on both sides.
- ``mbr_seconds``: MBR consensus over 25 candidates x 500 dialogues (``benchmarks/mbr_speed.py``'s set-up).
- ``default_repro_seconds``: ``dvc repro`` of the default params in a fresh clone of HEAD.
- ``noop_repro_seconds``: ``dvc repro`` right after, nothing changed.
- ``incremental_fraction``: ``dvc repro`` after changing only ``ensemble.strategy`` / the full run.

Data: DialogSum from ``../shared/data/dialogsum`` when present, else the embedded sample. The pipeline
figures measure the committed HEAD (uncommitted edits are not in the clone).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DIALOGSUM = ROOT.parent / "shared" / "data" / "dialogsum"


def load_texts(n: int) -> tuple[pd.DataFrame, str]:
    if (DIALOGSUM / "train.csv").exists():
        return pd.read_csv(DIALOGSUM / "train.csv").head(n), "DialogSum train"
    return pd.read_csv(ROOT / "data/sample/train.csv").head(n), "embedded sample"


def tiny_model(df: pd.DataFrame, out: Path, max_source_len: int):
    import yaml

    from dialsum import models

    entry = dict(yaml.safe_load((ROOT / "params.yaml").read_text())["zoo"]["tiny-bart"])
    entry["max_source_len"] = max_source_len
    models.build_init(entry, list(df["dialogue"]) + list(df["summary"]), out, seed=0)
    return entry


def train_speed(df: pd.DataFrame, entry: dict, init: Path, work: Path, batch_size: int) -> dict:
    """One epoch over ``df`` with our batching and with pad-to-max batching; tokens/s of each."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    from dialsum.sequences import build_features

    tok = AutoTokenizer.from_pretrained(init)
    feats, _ = build_features(df, tok, entry)
    real_tokens = sum(len(f["input_ids"]) for f in feats)
    out = {}
    for name, ours in (("dialsum", True), ("pad-to-max", False)):
        torch.manual_seed(0)
        model = AutoModelForSeq2SeqLM.from_pretrained(init)
        if ours:
            collator = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100, pad_to_multiple_of=8)
        else:
            collator = DataCollatorForSeq2Seq(
                tok, model=model, label_pad_token_id=-100, padding="max_length", max_length=entry["max_source_len"]
            )
            # labels to their own maximum, as fixed-length scripts do
            feats_fixed = [
                dict(f, labels=f["labels"] + [-100] * (entry["max_target_len"] - len(f["labels"]))) for f in feats
            ]
        args = Seq2SeqTrainingArguments(
            output_dir=str(work / name),
            num_train_epochs=1,
            per_device_train_batch_size=batch_size,
            learning_rate=1e-3,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            logging_steps=1000,
            train_sampling_strategy="group_by_length" if ours else "random",
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Seq2SeqTrainer(
            model=model,
            args=args,
            data_collator=collator,
            processing_class=tok,
            train_dataset=Dataset.from_list(feats if ours else feats_fixed),
        )
        t = time.perf_counter()
        trainer.train()
        sec = time.perf_counter() - t
        out[name] = {"seconds": round(sec, 2), "tokens_per_s": round(real_tokens / sec, 1)}
    out["speedup"] = round(out["dialsum"]["tokens_per_s"] / out["pad-to-max"]["tokens_per_s"], 2)
    return out


def generate_speed(df: pd.DataFrame, entry: dict, init: Path, new_tokens: int, batch_size: int) -> dict:
    import torch

    from dialsum import generation, models, sequences

    model, tok, family = models.load_for_inference(init, entry)
    tok.padding_side = "left"
    dialogues = list(df["dialogue"])
    gen = {"num_beams": 4, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    t = time.perf_counter()
    generation.Summarizer(model, tok, family, gen, entry["max_source_len"], None, batch_size)(dialogues, progress=False)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        conv = sequences.conventions(tok, family, model.config)
        for d in dialogues:  # the one-at-a-time loop of a typical inference script
            ids, _ = sequences.source_ids(tok, d, conv, entry["max_source_len"])
            model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                **generation.generation_kwargs(gen),
            )
    single = time.perf_counter() - t
    n = len(dialogues)
    return {
        "dialsum": {"seconds": round(ours, 2), "summaries_per_s": round(n / ours, 2)},
        "one-at-a-time": {"seconds": round(single, 2), "summaries_per_s": round(n / single, 2)},
        "speedup": round(single / ours, 2),
    }


def mbr_speed() -> float | None:
    test = DIALOGSUM / "test.csv"
    if not test.exists():
        return None
    from dialsum import ensemble as E
    from dialsum.metrics import CachedTokenizer

    dev = pd.read_csv(test).head(500)
    pool = pd.concat([dev["summary1"], dev["summary2"], dev["summary3"]]).tolist()
    rng = np.random.default_rng(0)
    rows = []
    for i, f in enumerate(dev["fname"]):
        own = [dev.loc[i, f"summary{k}"] for k in (1, 2, 3)]
        for j, s in enumerate(own + list(rng.choice(pool, 22, replace=False))):
            rows.append({"fname": f, "source": f"s{j}", "model": f"m{j % 5}", "view": "orig", "summary": s})
    cands = pd.DataFrame(rows)
    t = time.perf_counter()
    E.mbr_select(cands, CachedTokenizer("default"), list(dev["fname"]))
    return round(time.perf_counter() - t, 2)


def pipeline_times(work: Path) -> dict:
    clone = work / "clone"
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="offline",
    )
    env.pop("PYTHONPATH", None)

    def sh(cmd, cwd):
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True)
        if p.returncode:
            raise RuntimeError(f"{cmd} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return time.perf_counter() - t

    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    dvc = f"{sys.executable} -m dvc"
    full = sh(f"{dvc} repro", clone)
    noop = sh(f"{dvc} repro", clone)
    params = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(params.replace("strategy: majority_vote", "strategy: rouge_weighted", 1))
    incremental = sh(f"{dvc} repro", clone)
    return {
        "default_repro_seconds": round(full, 1),
        "noop_repro_seconds": round(noop, 2),
        "incremental_seconds": round(incremental, 1),
        "incremental_fraction": round(incremental / full, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small samples: <= 5 min on 2 cores")
    ap.add_argument("--skip-pipeline", action="store_true", help="leave out the dvc repro figures")
    a = ap.parse_args()
    random.seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    n_train, n_gen = (128, 24) if a.quick else (512, 96)
    df, source = load_texts(max(n_train, n_gen))
    import torch

    result: dict = {
        "quick": a.quick,
        "data": source,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        entry = tiny_model(df, work / "init", max_source_len=512)
        tr = train_speed(df.head(n_train), entry, work / "init", work, batch_size=16)
        print(
            f"train, {n_train} rows x 1 epoch ({source}): dialsum {tr['dialsum']['tokens_per_s']} tok/s "
            f"({tr['dialsum']['seconds']} s), pad-to-max {tr['pad-to-max']['tokens_per_s']} tok/s "
            f"({tr['pad-to-max']['seconds']} s): x{tr['speedup']}",
            flush=True,
        )
        ge = generate_speed(df.head(n_gen), entry, work / "init", new_tokens=32, batch_size=32)
        print(
            f"generate, {n_gen} dialogues, beam 4, 32 new tokens: dialsum {ge['dialsum']['summaries_per_s']}/s, "
            f"one at a time {ge['one-at-a-time']['summaries_per_s']}/s: x{ge['speedup']}",
            flush=True,
        )
        mbr = mbr_speed()
        print(f"MBR, 25 candidates x 500 dialogues: {mbr} s", flush=True)
        result.update(
            train_speedup=tr["speedup"], generate_speedup=ge["speedup"], mbr_seconds=mbr, train=tr, generate=ge
        )
        if not a.skip_pipeline:
            pipe = pipeline_times(work)
            print(
                f"dvc repro, fresh clone, default params: {pipe['default_repro_seconds']} s; nothing changed: "
                f"{pipe['noop_repro_seconds']} s; ensemble.strategy changed: {pipe['incremental_seconds']} s "
                f"({pipe['incremental_fraction']:.1%} of the full run)",
                flush=True,
            )
            result.update(pipe)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
