"""How much GPU memory a zoo model needs: weights at bf16 / 8-bit / 4-bit and LoRA training state.

The figures are computed, not guessed: the architecture is instantiated on PyTorch's ``meta`` device (no
memory, no download) from the hyper-parameters in each checkpoint's ``config.json`` (copied below, because
the hub is not reachable from every machine), and every parameter is counted. Activations are not
included: they depend on batch size and sequence length and are what gradient checkpointing trades away.
"""

from __future__ import annotations

import torch

from .device import ADAM_BYTES
from .models import LORA_TARGETS, lora_targets, scratch_config
from .params import ZooEntry, section

# config.json of each hub checkpoint: the keys that decide the parameter count, plus the published token ids
# and positions, which `dialsum replica` builds its random-weight replicas from (sources: docs/models.md, "Using
# real checkpoints").
REFERENCE_CONFIGS = {
    "gogamza/kobart-base-v2": dict(
        model_type="bart",
        vocab_size=30000,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1026,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=3,
        decoder_start_token_id=1,
        forced_eos_token_id=1,
    ),
    "upstage/SOLAR-10.7B-Instruct-v1.0": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
    # KoSOLAR's extended Korean vocabulary (48,000 tokens); otherwise SOLAR's architecture.
    "LDCC/LDCC-SOLAR-10.7B": dict(
        model_type="llama",
        vocab_size=48000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "EleutherAI/polyglot-ko-12.8b": dict(
        model_type="gpt_neox",
        vocab_size=30080,
        hidden_size=5120,
        intermediate_size=20480,
        num_hidden_layers=40,
        num_attention_heads=40,
        max_position_embeddings=2048,
        rotary_pct=0.5,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=2,
    ),
}
# Fine-tunes that keep their base model's architecture.
REFERENCE_CONFIGS["nlpai-lab/kullm-polyglot-12.8b-v2"] = REFERENCE_CONFIGS["EleutherAI/polyglot-ko-12.8b"]
REFERENCE_CONFIGS["beomi/KoAlpaca-Polyglot-12.8B"] = REFERENCE_CONFIGS["EleutherAI/polyglot-ko-12.8b"]

# bitsandbytes' NF4 with double quantisation: 4 bits per weight + an 8-bit absmax per 64 weights +
# a 32-bit constant per 256 absmax blocks (QLoRA paper, section 3).
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
INT8_BITS = 8 + 32 / 4096  # LLM.int8: int8 weights + one fp32 scale per row (rows ~4k wide)


def build_meta(config):
    """The model on the meta device (shapes only), from a config dict or a ``PretrainedConfig``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if isinstance(config, dict):
        cfg = dict(config)
        cfg_obj = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    else:
        cfg_obj = config
    cls = AutoModelForSeq2SeqLM if cfg_obj.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(cfg_obj)


def estimate(model, lora: dict | None = None) -> dict:
    """Parameter counts and bytes for one (meta or real) model.

    Quantised = every ``nn.Linear`` except the output head (bitsandbytes keeps ``lm_head`` and embeddings
    in 16 bit); LoRA adds ``r * (in + out)`` per targeted linear layer.
    """
    total = sum(p.numel() for p in _unique_params(model))
    out_emb = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out_emb)
    rest = total - linear
    lora_params = 0
    if lora:
        targets = set(lora_targets(model.config.model_type, lora.get("target_modules", "auto")))
        r = lora.get("r", 8)
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                lora_params += r * (m.in_features + m.out_features)
    return {
        "params": total,
        "bf16_bytes": 2 * total,
        "int8_bytes": linear * INT8_BITS / 8 + 2 * rest,
        "nf4_bytes": linear * NF4_BITS / 8 + 2 * rest,
        "lora_params": lora_params,
        "lora_train_bytes": lora_params * ADAM_BYTES,
        "full_train_bytes": total * ADAM_BYTES,
    }


def _unique_params(model):
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:  # tied embeddings count once
            seen.add(id(p))
            yield p


def zoo_table(zoo: dict, default_lora: dict | None = None) -> list[dict]:
    """One row per zoo entry whose architecture is known (a hub id above or a local ``arch``)."""
    rows = []
    for name, entry in zoo.items():
        entry = section(ZooEntry, entry, f"zoo.{name}")
        hub = entry.pretrained
        if hub in REFERENCE_CONFIGS:
            config = REFERENCE_CONFIGS[hub]
        elif hub is None and entry.arch is not None:
            # the very config the init stage builds (vocab_size stands in for the trained tokenizer's size)
            config = scratch_config(entry, _VocabSize(entry.vocab_size))
        else:
            continue
        # the QLoRA recipe's r=16 for entries trained without adapters
        lora = (
            entry.lora.model_dump() if entry.lora else default_lora or {"r": 16, "alpha": 32, "target_modules": "auto"}
        )
        model_type = config["model_type"] if isinstance(config, dict) else config.model_type
        if model_type not in LORA_TARGETS:
            continue
        rows.append(
            {
                "model": name,
                "checkpoint": hub or "(random init)",
                "lora_r": lora.get("r", 8),
                **estimate(build_meta(config), lora),
            }
        )
    return rows


class _VocabSize:
    """What :func:`dialsum.models.scratch_config` reads from a tokenizer: its size and special ids."""

    pad_token_id, bos_token_id, eos_token_id = 2, 0, 1

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def format_table(rows: list[dict]) -> str:
    """Markdown, in GiB (2**30 bytes; MiB below 0.01 GiB)."""

    def g(b: float) -> str:
        return f"{b / 2**30:.2f}" if b >= 0.01 * 2**30 else f"{b / 2**20:.1f} MiB"

    lines = [
        "| model | checkpoint | params | bf16 weights GiB | 8-bit GiB | 4-bit (NF4+DQ) GiB "
        "| LoRA r | LoRA params | LoRA AdamW state GiB | full fine-tune AdamW state GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["params"]
        size = f"{p / 1e9:.2f} B" if p >= 1e9 else f"{p / 1e6:.2f} M"
        lines.append(
            f"| {r['model']} | {r['checkpoint']} | {size} | {g(r['bf16_bytes'])} | {g(r['int8_bytes'])} "
            f"| {g(r['nf4_bytes'])} | {r['lora_r']} | {r['lora_params'] / 1e6:.2f} M "
            f"| {g(r['lora_train_bytes'])} | {g(r['full_train_bytes'])} |"
        )
    return "\n".join(lines)
