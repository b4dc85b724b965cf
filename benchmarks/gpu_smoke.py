"""GPU smoke run: the GPU paths of the train and predict stages on replicas with random weights (no hub, no data
download), with tokens/s, peak GPU memory and MFU. One command, a few minutes on one GPU:

    python benchmarks/gpu_smoke.py              # prints a table and a JSON line last
    python benchmarks/gpu_smoke.py --record     # also appends the table to BENCHMARKS.md

What it runs, each through the library functions the stages call (``training.train``, ``Summarizer.load``):
1. KoBART replica (full size, 124 M, KoBART's real tokenizer) trained in every precision this GPU has (bf16 where
   native, fp16 with a gradient scaler, fp32 with TF32 on Ampere+), then predicted on the GPU;
2. 4-bit QLoRA + gradient checkpointing on SOLAR and Polyglot-ko replicas at full width, fewer layers;
3. the same QLoRA recipe in 2 DDP processes (``training.launcher: accelerate``) when 2 GPUs are visible;
4. the generation's out-of-memory halving, under a memory cap, with the same summaries as uncapped;
5. a causal model's ``no_repeat_ngram_size`` and ``repetition_penalty`` on the GPU, on its generated tokens only
   (``generation.generated_only``): no trigram repeats within a summary, and the summaries may copy the prompt's;
6. the memory check (``dialsum.device.check_memory``) for every 10B zoo entry on this GPU's free memory.
On a machine without a CUDA GPU it prints one line and exits 0.

MFU = 6 x parameters x trained tokens / (seconds x the GPU's dense peak for the precision): the convention of
benchmarks/replica_full.py; for LoRA runs it overstates the work (frozen weights get no weight gradient) and
understates it with checkpointing (one more forward), so read it as a rough utilisation figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Dense tensor-core peaks in TFLOP/s (vendor data sheets): (16-bit, TF32). Unknown GPUs get no MFU.
PEAKS = {
    "H200": (989, 494),
    "H100": (989, 494),
    "A100": (312, 156),
    "A10": (125, 62),
    "L40S": (362, 183),
    "L40": (181, 90),
    "L4": (121, 60),
    "RTX 4090": (165, 83),
    "RTX 3090": (71, 36),
    "V100": (125, 16),
    "T4": (65, 8),
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def peak_flops(name: str, precision: str) -> float | None:
    """The dense peak for ``precision`` (``auto``: what the run resolved it to, as ``device.precision`` does); the
    longest matching key first, so an L40 is not read as an L4."""
    if precision == "auto":
        from dialsum import device

        precision = next(iter(device.precision("auto", device.Device.probe())), "no")
    for key, (half, tf32) in sorted(PEAKS.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return 1e12 * (half if precision in ("bf16", "fp16") else tf32)
    return None


class StepClock:
    """Wall time from the first to the last optimizer step (evaluations excluded: they come after it)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            start = end = None

            def on_train_begin(self, args, state, control, **kw):
                _sync()
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync()
                self.end = time.perf_counter()

        return _Clock()


def base_params(entry_name: str, entry: dict, **training):
    from dialsum.params import load, typed

    p = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    p["zoo"][entry_name] = entry
    p["models"] = [entry_name]
    p["training"].update(
        epochs=1, eval_every_epochs=1, eval_rows=16, resume="never", save_total_limit=1, launcher="python", **training
    )
    p["tracking"]["wandb"]["enabled"] = False
    return typed(p)


def sample():
    train = pd.read_csv(ROOT / "data/sample/train.csv", dtype=str, keep_default_na=False)
    dev = pd.read_csv(ROOT / "data/sample/dev.csv", dtype=str, keep_default_na=False)
    return train, dev


def trained_tokens(params, name: str, df: pd.DataFrame, init_dir: Path) -> int:
    from transformers import AutoConfig, AutoTokenizer

    from dialsum.sequences import build_features

    tok = AutoTokenizer.from_pretrained(init_dir)
    feats, _ = build_features(df, tok, params.zoo[name], AutoConfig.from_pretrained(params.zoo[name].pretrained))
    return sum(len(f["input_ids"]) + (len(f["labels"]) if params.zoo[name].family == "seq2seq" else 0) for f in feats)


def train_case(label: str, name: str, entry: dict, work: Path, rows: int, precision: str, **training) -> dict:
    """One train-stage run (``training.train``) of ``entry`` on the sample's first ``rows`` rows."""
    from transformers import AutoConfig

    from dialsum import memory, models, training as T

    train, dev = sample()
    train, dev = train.head(rows), dev.head(16)
    init = work / f"{label}-init"
    models.build_init(entry, [], init, seed=0)
    params = base_params(name, entry, mixed_precision=precision, **training)
    clock = StepClock()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = T.Run(name, 0, init, work / f"{label}-out", work / f"{label}-ckpt", None, "smoke")
    metrics = T.train(params, run, train, dev, callbacks=[clock], track=False)
    seconds = clock.end - clock.start
    tokens = trained_tokens(params, name, train, init) * params.training.epochs
    n_params = memory.estimate(memory.build_meta(AutoConfig.from_pretrained(entry["pretrained"])))["params"]
    peak = peak_flops(torch.cuda.get_device_name(0), precision) if torch.cuda.is_available() else None
    return {
        "case": label,
        "precision": precision,
        "steps": metrics["steps"],
        "tokens_per_s": round(tokens / seconds),
        "peak_gib": _peak_gib(),
        "mfu": round(6 * n_params * tokens / seconds / peak, 3) if peak else None,
        "eval_loss": metrics.get("loss"),
        "model_dir": str(run.out_dir),
    }


def predict_case(model_dir: str, entry: dict) -> dict:
    from dialsum import generation
    from dialsum.params import Generation

    _, dev = sample()
    s = generation.Summarizer.load(Path(model_dir), entry, Generation(num_beams=4))
    assert next(s.model.parameters()).is_cuda == torch.cuda.is_available(), "predict loaded the model off the GPU"
    _sync()
    t = time.perf_counter()
    texts, _ = s(list(dev["dialogue"]), progress=False)
    _sync()
    return {"case": "predict kobart beam-4", "dialogues_per_s": round(len(texts) / (time.perf_counter() - t), 1)}


def oom_case(model_dir: str, entry: dict) -> dict:
    """Generation under a memory cap that one big batch exceeds: it must halve, retry, and give the same text."""
    from dialsum import generation
    from dialsum.params import Generation

    _, dev = sample()
    dialogues = list(dev["dialogue"]) * 4
    generation._halved = False  # set by this case only, not by an earlier one
    gen = Generation(num_beams=8, batch_size=len(dialogues), batch_tokens=None)
    s = generation.Summarizer.load(Path(model_dir), entry, gen)
    free, total = torch.cuda.mem_get_info()
    reference, _ = s(dialogues[:8], progress=False)
    torch.cuda.empty_cache()
    cap = (torch.cuda.memory_allocated() + 512 * 2**20) / total  # the weights and 0.5 GiB
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        texts, _ = s(dialogues, progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {"case": "generation OOM halving", "halved": generation._halved, "same_text": texts[:8] == reference}


def causal_processors_case(model_dir: str, entry: dict) -> dict:
    """A causal model's repetition controls on the GPU: they must run on the model's device, keep every summary
    free of a repeated trigram, and never see the prompt (so copying a phrase of the dialogue stays possible)."""
    from dialsum import generation
    from dialsum.params import Generation

    _, dev = sample()
    s = generation.Summarizer.load(
        Path(model_dir), entry, Generation(num_beams=2, no_repeat_ngram_size=3, repetition_penalty=1.2)
    )
    outputs, generate = [], s.model.generate

    def spy(*args, **kw):  # the generated ids, as generate returns them (the prompt cut off below)
        res = generate(*args, **kw)
        outputs.append((kw["input_ids"].shape[1], res.sequences.cpu()))
        return res

    s.model.generate = spy
    texts, _ = s(list(dev["dialogue"].head(8)), progress=False)
    eos, repeated, copied = s.tokenizer.eos_token_id, 0, 0
    for width, seqs in outputs:
        for prompt, row in zip(seqs[:, :width].tolist(), seqs[:, width:].tolist()):
            row = row[: row.index(eos)] if eos in row else row
            grams = [tuple(row[i : i + 3]) for i in range(len(row) - 2)]
            repeated += len(grams) - len(set(grams))
            copied += len(set(grams) & {tuple(prompt[i : i + 3]) for i in range(len(prompt) - 2)})
    return {
        "case": "causal no_repeat 3 + repetition penalty 1.2",
        "device": str(next(s.model.parameters()).device),
        "summaries": len(texts),
        "repeated_trigrams": repeated,  # must be 0
        "trigrams_copied_from_prompt": copied,  # allowed (before session 28 always 0)
    }


def memory_case() -> list[dict]:
    import gc

    from dialsum import device, memory
    from dialsum.params import ParamsError, for_model, load

    gc.collect()  # the earlier cases' models: their cached blocks would read as used memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    params = load(ROOT / "params.yaml")
    dev = device.Device.probe()
    out = []
    for name, entry in params.zoo.items():
        if entry.pretrained not in memory.REFERENCE_CONFIGS or entry.quantization == "none":
            continue
        model = memory.build_meta(memory.REFERENCE_CONFIGS[entry.pretrained])
        for p in model.parameters():
            p.requires_grad_(False)
        weights = memory.estimate(model)["nf4_bytes"]
        after_load = device.Device(**{**dev.__dict__, "free_bytes": int(dev.free_bytes - weights)})
        if not dev.cuda:
            out.append({"case": f"memory check {name}", "verdict": "not checked (no GPU)"})
            continue
        try:
            device.check_memory(model, entry, for_model(params, name).training, after_load)
            verdict = "fits"
        except ParamsError as e:
            verdict = str(e).split(": set ")[-1] if ": set " in str(e) else "does not fit"
        out.append({"case": f"memory check {name}", "verdict": verdict})
    return out


def ddp_case(work: Path, solar: dict) -> dict:
    """The QLoRA recipe in 2 processes: this script re-launched under accelerate (the train stage's launcher)."""
    from dialsum import training as T
    from dialsum.params import Training

    from dialsum import models

    models.build_init(solar, [], work / "ddp-init", seed=0)
    cmd = T.launch_command(Training(launcher="accelerate", num_processes=2), [__file__, "--ddp-worker", str(work)])
    (work / "solar.json").write_text(json.dumps(solar))
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=480)
    ok = p.returncode == 0 and (work / "ddp-out" / "adapter_config.json").exists()
    return {
        "case": "QLoRA solar-replica, 2 DDP processes",
        "ok": ok,
        "seconds": round(time.perf_counter() - t, 1),
        **({} if ok else {"error": p.stderr[-400:]}),
    }


def ddp_worker(work: Path) -> None:
    from dialsum import training as T

    solar = json.loads((work / "solar.json").read_text())
    train, dev = sample()
    init = work / "ddp-init"
    params = base_params("solar-replica", solar, batch_size=4, gradient_accumulation_steps=1)
    run = T.Run("solar-replica", 0, init, work / "ddp-out", work / "ddp-ckpt", None, "smoke")
    T.train(params, run, train.head(64), dev.head(16), track=False)


KOBART_TOKENIZER = ROOT.parent / "shared/fixtures/kobart-tokenizer"


def replica(kind: str, work: Path, layers: int | None, texts: list[str], d_model: int | None = None) -> str:
    """A replica folder; KoBART's needs its real tokenizer (../shared/fixtures): without it, the SOLAR replica's
    trained tokenizer stands in (the speed and memory figures depend on the shapes, not on the vocabulary's words)."""
    from dialsum import replica as R

    out = work / f"hub-{kind}"
    if kind == "kobart" and not (KOBART_TOKENIZER / "tokenizer.json").exists():
        print(f"gpu_smoke: {KOBART_TOKENIZER} not found: the KoBART replica gets a tokenizer trained here")
        config = R.published_config(kind, layers, d_model)
        tok = R.solar_tokenizer(texts, 8000)
        tok.pad_token = tok.unk_token if tok.pad_token is None else tok.pad_token
        config.update(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            decoder_start_token_id=tok.eos_token_id,
            forced_eos_token_id=tok.eos_token_id,
        )
        from transformers import AutoModelForSeq2SeqLM

        torch.manual_seed(0)
        AutoModelForSeq2SeqLM.from_config(config).save_pretrained(out)
        tok.save_pretrained(out)
        return str(out)
    R.build(kind, out, texts, layers=layers, d_model=d_model, tokenizer_path=KOBART_TOKENIZER)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--dry-run", action="store_true", help="the same code on this CPU with 1-layer, 64-wide replicas")
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if a.ddp_worker:
        ddp_worker(Path(a.ddp_worker))
        return 0
    if not torch.cuda.is_available() and not a.dry_run:
        print(f"gpu_smoke: no CUDA GPU here (torch {torch.__version__}): nothing to measure; run it on a GPU machine")
        return 0
    from dialsum import device

    logging.basicConfig(level=logging.WARNING)
    dev = device.Device.probe()
    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    train, _ = sample()
    texts = list(train["dialogue"]) + list(train["summary"])
    rows = []
    small = dict(layers=1, d_model=64) if a.dry_run else {}
    kobart = {
        "family": "seq2seq",
        "pretrained": replica("kobart", work, small.get("layers"), texts, small.get("d_model")),
        "max_source_len": 256,
        "max_target_len": 64,
        "learning_rate": 5e-5,
    }
    precisions = (["bf16"] if dev.native_bf16 else []) + (["fp16"] if dev.cuda else []) + ["no"]
    n_rows = 32 if a.dry_run else 320
    for prec in precisions:
        rows.append(train_case(f"kobart-{prec}", "kobart-replica", kobart, work, n_rows, prec, batch_size=16))
    rows.append(predict_case(rows[0]["model_dir"], kobart))
    qlora = {
        "quantization": "4bit",
        "gradient_checkpointing": True,
        "learning_rate": 2e-4,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "max_source_len": 512,
        "max_target_len": 64,
    }
    solar = {
        "family": "causal",
        "pretrained": replica("solar", work, small.get("layers", 4), texts, small.get("d_model")),
        **qlora,
    }
    polyglot = {
        "family": "causal",
        "pretrained": replica("polyglot", work, small.get("layers", 2), texts, small.get("d_model")),
        **qlora,
    }
    auto = "auto"
    rows.append(train_case("qlora-solar-4-layers", "solar-replica", solar, work, 64, auto, batch_size=4))
    rows.append(causal_processors_case(rows[-1]["model_dir"], solar))
    # merged after training: the 16-bit base loads on the CPU (the GPU still holds the trainer's leftovers)
    polyglot["lora"] = {**qlora["lora"], "merge": True}
    rows.append(
        train_case("qlora-polyglot-2-layers-merged", "polyglot-replica", polyglot, work, 64, auto, batch_size=4)
    )
    merged = Path(rows[-1]["model_dir"])
    rows[-1]["merged"] = not (merged / "adapter_config.json").exists() and any(merged.glob("*.safetensors"))
    if dev.n_gpu >= 2 or a.dry_run:  # a dry run: gloo on the CPU
        rows.append(ddp_case(work, solar))
    else:
        rows.append({"case": "QLoRA in 2 DDP processes", "ok": None, "note": "1 GPU visible: not run"})
    if dev.cuda:
        rows.append(oom_case(rows[0]["model_dir"], kobart))
    rows += memory_case()
    for r in rows:
        r.pop("model_dir", None)
    table = "\n".join(
        ["| case | figures |", "|---|---|"]
        + [f"| {r['case']} | {', '.join(f'{k} {v}' for k, v in r.items() if k != 'case')} |" for r in rows]
    )
    head = f"{dev.describe()}, {dev.n_gpu} visible, torch {torch.__version__}, CUDA {torch.version.cuda}"
    print(head)
    print(table)
    if a.record:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(
                f"\n## GPU smoke run ({time.strftime('%Y-%m-%d')})\n\n{head}; `python benchmarks/gpu_smoke.py`\n\n"
                f"{table}\n"
            )
    print(json.dumps({"device": head, "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
