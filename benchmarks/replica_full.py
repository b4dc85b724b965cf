"""Full-size figures for the real checkpoints' replicas (issue 19), on whatever machine runs it.

    python benchmarks/replica_full.py kobart     # 124 M KoBART replica: training tokens/s, MFU, generation, peak RSS
    python benchmarks/replica_full.py layers     # one full-width SOLAR / Polyglot layer in 4-bit + LoRA: memory
                                                 # measured vs `dialsum memory`, extrapolated to the full depth

Each prints a JSON line last. KoBART's tokenizer is read from ../shared/fixtures/kobart-tokenizer (--tokenizer).
MFU = model FLOPs / (seconds x this machine's measured fp32 matmul peak): 6 FLOPs per parameter per token
(forward + backward), the encoder's parameters over source tokens, the decoder's and the output projection
over target tokens; attention's sequence-squared term is left out (small at these lengths).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """fp32 FLOP/s of torch.mm at n x n (median of reps), with torch's default threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def kobart(args) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from dialsum import generation, models, replica, sequences

    peak = matmul_peak()
    df = pd.read_csv(ROOT / "data/sample/train.csv", dtype=str, keep_default_na=False)
    dev = pd.read_csv(ROOT / "data/sample/dev.csv", dtype=str, keep_default_na=False)
    work = Path(tempfile.mkdtemp(prefix="kobart-full-"))
    replica.build("kobart", work / "hub", [], tokenizer_path=args.tokenizer)
    entry = {"family": "seq2seq", "pretrained": str(work / "hub"), "max_source_len": 256, "max_target_len": 64}
    models.build_init(entry, [], work / "init", seed=0)
    model, tok = models.load_for_training(entry, work / "init", seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    enc = sum(p.numel() for p in model.get_encoder().parameters()) - emb
    dec = sum(p.numel() for p in model.get_decoder().parameters()) - emb
    rows = df.head(args.steps * args.batch_size)
    feats, _ = sequences.build_features(rows, tok, entry, model.config)
    src = sum(len(f["input_ids"]) for f in feats)
    tgt = sum(len(f["labels"]) for f in feats)
    flops = 6 * (enc * src + (dec + emb) * tgt)
    targs = Seq2SeqTrainingArguments(
        output_dir=str(work / "ckpt"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=5e-5,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        train_sampling_strategy="group_by_length",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=targs,
        train_dataset=Dataset.from_list(feats),
        data_collator=DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100, pad_to_multiple_of=8),
        processing_class=tok,
    )
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    train_rss = rss_gib()
    tok.padding_side = "left"
    dialogues = list(dev["dialogue"].head(args.generate))
    t = time.perf_counter()
    summarizer = generation.Summarizer(model, tok, "seq2seq", {"num_beams": 4, "max_new_tokens": 64}, 256, None, 16)
    preds, _ = summarizer(dialogues, progress=False)
    gen_s = time.perf_counter() - t
    return {
        "model": "kobart replica (full size)",
        "params_M": round(n_params / 1e6, 1),
        "threads": torch.get_num_threads(),
        "matmul_peak_GFLOPs": round(peak / 1e9, 1),
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "source_tokens": src,
            "target_tokens": tgt,
            "seconds": round(train_s, 1),
            "tokens_per_s": round((src + tgt) / train_s, 1),
            "MFU": round(flops / train_s / peak, 3),
            "peak_rss_GiB": round(train_rss, 2),
        },
        "generate": {
            "dialogues": len(dialogues),
            "num_beams": 4,
            "max_new_tokens": 64,
            "seconds": round(gen_s, 1),
            "summaries_per_s": round(len(dialogues) / gen_s, 2),
            "peak_rss_GiB": round(rss_gib(), 2),
        },
    }


def layer_bytes(module) -> int:
    """Bytes of every tensor a module holds: 4-bit packed weights plus their quantization state."""
    total, seen = 0, set()
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if getattr(state, "state2", None) is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
                total += state.state2.code.numel() * state.state2.code.element_size()
            total += state.code.numel() * state.code.element_size()
    return total


def layers(args) -> dict:
    """One full-width decoder layer (vocabulary cut to 256 rows: embeddings are not per-layer) loaded in 4-bit
    NF4 + double quantization with LoRA r=16 on every projection, as the zoo's QLoRA entries train."""
    from transformers import AutoModelForCausalLM

    from dialsum import memory, models, replica

    out = {}
    for name in ("solar", "polyglot"):
        hub = replica.HUB[name]
        cfg = replica.published_config(name, layers=1)
        cfg.vocab_size = 256
        work = Path(tempfile.mkdtemp(prefix=f"{name}-layer-"))
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(work, safe_serialization=True)
        entry = {"quantization": "4bit", "lora": {"r": 16, "alpha": 32, "target_modules": "auto"}}
        before = rss_gib()
        model = AutoModelForCausalLM.from_pretrained(
            work, quantization_config=models.quantization_config(entry), dtype=models.compute_dtype()
        )
        models.guard_cpu_4bit_packing(model)
        layer = model.model.layers[0] if name == "solar" else model.gpt_neox.layers[0]
        measured = layer_bytes(layer)
        lora_model = models.apply_lora(model, models.lora_settings(entry), "causal")
        lora_params = sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" in n)
        full = memory.REFERENCE_CONFIGS[hub]
        est_full = memory.estimate(memory.build_meta(full), entry["lora"])
        est_one = memory.estimate(memory.build_meta({**full, "num_hidden_layers": 1, "vocab_size": 256}), entry["lora"])
        est_zero = memory.estimate(
            memory.build_meta({**full, "num_hidden_layers": 0, "vocab_size": 256}), entry["lora"]
        )
        predicted_layer = est_one["nf4_bytes"] - est_zero["nf4_bytes"]
        n_layers = full["num_hidden_layers"]
        rest = est_full["nf4_bytes"] - n_layers * predicted_layer
        out[name] = {
            "hidden": cfg.hidden_size,
            "layers_full": n_layers,
            "layer_4bit_MiB_measured": round(measured / 2**20, 1),
            "layer_4bit_MiB_predicted": round(predicted_layer / 2**20, 1),
            "ratio_measured_to_predicted": round(measured / predicted_layer, 3),
            "lora_params_per_layer": lora_params,
            "lora_params_per_layer_predicted": (est_one["lora_params"] - est_zero["lora_params"]),
            "full_model_4bit_GiB_extrapolated": round((n_layers * measured + rest) / 2**30, 2),
            "full_model_4bit_GiB_predicted": round(est_full["nf4_bytes"] / 2**30, 2),
            "rss_delta_loading_GiB": round(rss_gib() - before, 2),
        }
        del model, lora_model
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["kobart", "layers"])
    ap.add_argument("--tokenizer", default=str(ROOT.parent / "shared/fixtures/kobart-tokenizer"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--generate", type=int, default=32, help="dev dialogues to summarise (beam 4)")
    args = ap.parse_args(argv)
    result = kobart(args) if args.what == "kobart" else layers(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
