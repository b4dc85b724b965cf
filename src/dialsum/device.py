"""The GPU facts a run depends on, and every decision dialsum takes from them.

Each decision is a function of a :class:`Device` (``Device.probe()`` reads this process's; tests build one
by hand), so the branch a T4, a 24 GB RTX card or an 8-GPU node takes is tested on a CPU:

- precision: bf16 only where the GPU computes it natively (Ampere and later), fp16 (with the Trainer's
  gradient scaler) on older GPUs, fp32 on CPU; TF32 matmuls on Ampere and later;
- placement: a k-bit model goes to this rank's own GPU, never all to GPU 0;
- processes: one process sees one GPU (the Trainer would otherwise wrap DataParallel around every GPU it
  sees and multiply the batch by their count);
- memory: a training run whose activations cannot fit the GPU stops before it starts, with the settings
  that would fit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .params import ParamsError, Training, ZooEntry

log = logging.getLogger(__name__)

GiB = 2**30
ADAM_BYTES = 4 + 4 + 4 + 4  # fp32 master weight, gradient, Adam m and v per trainable parameter


@dataclass(frozen=True)
class Device:
    """What this process has: ``n_gpu`` visible CUDA devices; ``name``, ``capability``, ``total_bytes`` and
    ``free_bytes`` of the one it uses (``local_rank``'s); ``world_size`` processes in its launch."""

    n_gpu: int = 0
    name: str = "cpu"
    capability: tuple[int, int] = (0, 0)
    total_bytes: int = 0
    free_bytes: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def cuda(self) -> bool:
        return self.n_gpu > 0

    @property
    def native_bf16(self) -> bool:
        """torch's ``is_bf16_supported()`` also says yes where bf16 is only emulated (T4, V100), which is slower
        than fp32; native bf16 needs compute capability 8.0."""
        return self.cuda and self.capability >= (8, 0)

    @property
    def index(self) -> int:
        """The GPU this process uses: its local rank's under a launcher, else the first visible one."""
        return self.local_rank if self.world_size > 1 else 0

    @classmethod
    def probe(cls, memory: bool = True) -> "Device":
        """This process's facts. ``memory`` False: no free-memory query (``free_bytes`` 0), which would create a
        CUDA context on the GPU, a few hundred MB a process that does not compute there holds for nothing."""
        local_rank, world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if not torch.cuda.is_available():
            return cls(local_rank=local_rank, world_size=world)
        n = torch.cuda.device_count()
        idx = local_rank if world > 1 else 0
        props = torch.cuda.get_device_properties(idx)
        free, total = torch.cuda.mem_get_info(idx) if memory else (0, props.total_memory)
        return cls(n, props.name, (props.major, props.minor), total, free, local_rank, world)

    def describe(self) -> str:
        if not self.cuda:
            return "CPU"
        cap = ".".join(map(str, self.capability))
        return f"GPU {self.index} ({self.name}, compute capability {cap}, {self.total_bytes / GiB:.0f} GiB)"


def precision(choice: str, dev: Device) -> dict:
    """The Trainer's ``bf16``/``fp16`` argument for ``training.mixed_precision``."""
    if choice == "auto":
        if not dev.cuda:
            return {}
        return {"bf16": True} if dev.native_bf16 else {"fp16": True}
    if choice in ("fp16", "bf16") and not dev.cuda:
        raise ParamsError(f"params.yaml: training.mixed_precision = {choice} needs a CUDA GPU; use auto or no")
    if choice == "bf16" and not dev.native_bf16:
        raise ParamsError(
            f"params.yaml: training.mixed_precision = bf16, but {dev.describe()} only emulates bf16 (slower than "
            "fp32; native from compute capability 8.0): use fp16 or auto"
        )
    return {choice: True} if choice in ("fp16", "bf16") else {}


def compute_dtype(dev: Device) -> torch.dtype:
    """The dtype 4-bit layers compute in and quantized models load in: bf16 where native, fp16 on older GPUs,
    fp32 on CPU."""
    if not dev.cuda:
        return torch.float32
    return torch.bfloat16 if dev.native_bf16 else torch.float16


def placement(dev: Device) -> dict:
    """``from_pretrained``'s ``device_map``: all of the model on this process's own GPU (under a launcher, the
    rank's: accelerate refuses to train a k-bit model placed on another rank's device); nothing on CPU."""
    return {"device_map": {"": dev.index}} if dev.cuda else {}


def enable_tf32(dev: Device) -> bool:
    """TF32 matmuls and convolutions (fp32 range, 10-bit mantissa) on Ampere and later, where fp32 work
    (KoBART in fp32, predict, the in-training generation) runs on tensor cores; off elsewhere."""
    on = dev.cuda and dev.capability >= (8, 0)
    if on:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return on


def one_gpu_per_process(args, dev: Device) -> bool:
    """Keep a lone process (``launcher: python``) on one GPU. Seeing several, the Trainer would wrap the model
    in DataParallel and multiply ``per_device_train_batch_size`` by their count: results that depend on the
    box, a k-bit model's batches all on GPU 0. ``args._n_gpu = 1`` is the Trainer's own way of saying so (it
    does the same for models spread over GPUs by a device map). Returns True when it pinned."""
    if args.world_size > 1 or dev.n_gpu <= 1:
        return False
    args._n_gpu = 1
    log.warning(
        "%d GPUs visible but training.launcher is python: training on GPU 0 alone, at the batch size params "
        "set; to use all of them: training.launcher=accelerate training.num_processes=%d",
        dev.n_gpu,
        dev.n_gpu,
    )
    return True


def distributed_type(config_file: str | Path | None) -> str:
    """``distributed_type`` of an accelerate config file (MULTI_GPU, FSDP, DEEPSPEED, ...); NO without one."""
    if not config_file:
        return "NO"
    import yaml

    try:
        cfg = yaml.safe_load(Path(config_file).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ParamsError(f"params.yaml: training.accelerate_config {config_file}: cannot be read ({e})") from None
    return str(cfg.get("distributed_type", "NO")).upper()


def check_launch(tcfg: Training, entry: ZooEntry) -> None:
    """Combinations that would crash or hang hours in, refused before anything loads."""
    kind = distributed_type(tcfg.accelerate_config) if tcfg.launcher == "accelerate" else "NO"
    where = f"training.accelerate_config {tcfg.accelerate_config} (distributed_type {kind})"
    if kind in ("FSDP", "DEEPSPEED") and entry.quantization != "none":
        raise ParamsError(
            f"params.yaml: {where} with quantization {entry.quantization}: sharding k-bit weights needs a "
            "quantization storage dtype and no device map, which dialsum does not set up; QLoRA trains under "
            "plain DDP (drop training.accelerate_config, keep training.launcher=accelerate)"
        )
    if kind in ("FSDP", "DEEPSPEED") and entry.lora and entry.lora.merge:
        raise ParamsError(
            f"params.yaml: {where} with lora.merge: true: merging needs the whole model in one process; train with "
            "lora.merge: false and merge the saved adapter afterwards"
        )
    if tcfg.launcher == "accelerate" and tcfg.num_processes > 1 and tcfg.batch_size == "auto":
        raise ParamsError(
            "params.yaml: training.batch_size = auto with training.num_processes > 1: each rank would halve its "
            "batch on its own after an out-of-memory error and the others would wait for it forever; set a number"
        )


# Bytes per token and layer of a transformer block's activations in half precision (Korthikanti et al.
# 2022, "Reducing Activation Recomputation", eq. 2 without dropout masks' sequence term: 34 h + 5 a s).
def _block_bytes(hidden: int, heads: int, seq: int) -> int:
    return 34 * hidden + 5 * heads * seq


def _stack_depths(config) -> tuple[int, int]:
    """(encoder layers, decoder layers) of an encoder-decoder config, (0, 0) for anything else: BART's
    encoder_layers / decoder_layers, T5's num_layers / num_decoder_layers, a warm-started EncoderDecoderConfig's
    two sub-configs (minilm2minilm, klue-bert2bert)."""
    if getattr(config, "is_encoder_decoder", False) and hasattr(config, "encoder") and hasattr(config, "decoder"):
        return config.encoder.num_hidden_layers, config.decoder.num_hidden_layers
    if getattr(config, "encoder_layers", 0) and getattr(config, "decoder_layers", 0):
        return config.encoder_layers, config.decoder_layers
    if getattr(config, "num_decoder_layers", 0) and getattr(config, "num_layers", 0):
        return config.num_layers, config.num_decoder_layers
    return 0, 0


def activation_need(config, entry: ZooEntry, tcfg: Training) -> dict:
    """Estimated peak bytes of one training step and of one evaluation loss pass beyond the weights, for the
    model ``config`` under ``entry``'s lengths and ``tcfg``'s batch sizes. The output layer's logits dominate
    for big vocabularies: k-bit preparation keeps ``lm_head`` in fp32, and the loss holds them twice (logits
    and their log-softmax), in training and in evaluation alike."""
    c = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    hidden = getattr(c, "hidden_size", None) or getattr(c, "d_model")
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "decoder_layers", 0) + getattr(c, "encoder_layers", 0)
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "decoder_attention_heads", 1)
    vocab = c.vocab_size
    seq = entry.max_source_len + entry.max_target_len if entry.family == "causal" else entry.max_source_len
    target = seq if entry.family == "causal" else entry.max_target_len  # positions that produce logits
    bs = 64 if tcfg.batch_size == "auto" else int(tcfg.batch_size)
    logits = lambda rows: rows * target * vocab * 4 * 2  # noqa: E731
    # (tokens, layers, bytes per token and layer) of each stack: an encoder-decoder's decoder runs at the target
    # length and attends to the source too (BART's num_hidden_layers is its encoder's depth alone)
    enc, dec = _stack_depths(config)
    if entry.family == "seq2seq" and enc and dec:
        src, tgt = entry.max_source_len, entry.max_target_len
        stacks = [
            (src, enc, _block_bytes(hidden, heads, src)),
            (tgt, dec, _block_bytes(hidden, heads, tgt) + 5 * heads * src),
        ]
    else:
        stacks = [(seq, layers, _block_bytes(hidden, heads, seq))]
    if entry.gradient_checkpointing:  # each block's input kept, one block's internals at a time
        blocks = bs * (sum(n * k * hidden * 2 for n, k, _ in stacks) + max(n * b for n, _, b in stacks))
    else:
        blocks = bs * sum(n * k * b for n, k, b in stacks)
    return {
        "train": blocks + logits(bs),
        "eval": logits(tcfg.eval_batch_size) + tcfg.eval_batch_size * seq * hidden * 4,
    }


def check_memory(model, entry: ZooEntry, tcfg: Training, dev: Device) -> None:
    """Stop before training when a step or an evaluation would not fit the GPU's free memory, naming the batch
    sizes that would: an out-of-memory error would otherwise come at the first step, or at the first evaluation
    hours in. AdamW's state, created later, is counted too, and so are weights still on the CPU (an unquantized
    model, which the Trainer moves to the GPU after this check; a k-bit model is placed there as it loads)."""
    if not dev.cuda:
        return
    # batch_size: auto starts at 64 and halves on an out-of-memory error: only its floor, batch 1, must fit
    # (evaluation keeps eval_batch_size whatever the training batch became)
    auto = tcfg.batch_size == "auto"
    need = activation_need(model.config, entry, tcfg.model_copy(update={"batch_size": 1}) if auto else tcfg)
    optimizer = ADAM_BYTES * sum(p.numel() for p in model.parameters() if p.requires_grad)
    # an unquantized model loads on the CPU and the Trainer moves it later: its weights are not yet in free_bytes
    pending = sum(
        t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.device.type == "cpu"
    )
    room = 0.9 * dev.free_bytes - optimizer - pending  # 10 %: the allocator's fragmentation, CUDA's workspaces
    if max(need.values()) <= room:
        return
    fits = suggest(model.config, entry, tcfg, room)
    raise ParamsError(
        f"params.yaml: training would need ~{need['train'] / GiB:.1f} GiB per step"
        + (" at batch size 1 (batch_size: auto halves down to it)" if auto else "")
        + f" and ~{need['eval'] / GiB:.1f} GiB "
        f"per evaluation batch beyond the weights, and {dev.describe()} has {dev.free_bytes / GiB:.1f} GiB free"
        + (f" before {pending / GiB:.1f} GiB of weights move there" if pending >= GiB / 10 else "")
        + ": "
        + (
            f"set {fits} (the same effective batch)"
            if fits
            else "even batch size 1 does not fit; shorten max_source_len"
            + (" or load the weights in 4 bits (zoo.<model>.quantization: 4bit)" if pending >= GiB else "")
        )
    )


def suggest(config, entry: ZooEntry, tcfg: Training, room: float) -> str | None:
    """The largest power-of-two batch sizes that fit ``room`` bytes, with gradient accumulation keeping the
    effective batch, as ``-S`` settings; None when batch size 1 does not fit."""
    want = (64 if tcfg.batch_size == "auto" else int(tcfg.batch_size)) * tcfg.gradient_accumulation_steps
    train_bs = eval_bs = None
    b = 1
    while b <= max(want, tcfg.eval_batch_size):
        t = tcfg.model_copy(update={"batch_size": b, "eval_batch_size": b})
        need = activation_need(config, entry, t)
        if b <= want and need["train"] <= room:
            train_bs = b
        if b <= tcfg.eval_batch_size and need["eval"] <= room:
            eval_bs = b
        b *= 2
    if train_bs is None or eval_bs is None:
        return None
    accum = max(1, -(-want // train_bs))
    return f"training.batch_size={train_bs} training.gradient_accumulation_steps={accum} training.eval_batch_size={eval_bs}"
