"""Faithful replicas of the real checkpoints: their published architecture and tokenizer conventions, with
random weights, so every convention dialsum relies on can be exercised where the hub cannot be reached.

What is real and what is a stand-in (docs/models.md, "Using real checkpoints"):

- ``kobart``: KoBART's released tokenizer itself (``--tokenizer``, default ``../shared/fixtures/kobart-tokenizer``)
  and ``gogamza/kobart-base-v2``'s config (BART, d_model 768, 6+6 layers, 16 heads, FFN 3072, 30,000 tokens,
  1,026 positions; bos 1, eos 1, pad 3, decoder start 1, forced EOS 1).
- ``solar``: ``upstage/SOLAR-10.7B-Instruct-v1.0``'s config (Llama, hidden 4096, 48 layers, 32 heads, 8 KV heads,
  FFN 14336, 32,000 tokens, 4,096 positions; bos 1, eos 2, pad 2) and chat template; the tokenizer is a
  SentencePiece-style BPE trained here (Llama's legacy form: ``Prepend("▁")`` normalizer, byte fallback,
  ``<unk>``=0 ``<s>``=1 ``</s>``=2, BOS added, no EOS, no pad token) on ``--train``.
- ``polyglot``: ``EleutherAI/polyglot-ko-12.8b``'s config (GPT-NeoX, hidden 5120, 40 layers, 40 heads, FFN 20480,
  30,080 embedding rows, 2,048 positions, rotary_pct 0.5, parallel residual; bos 0, eos 2); the tokenizer is a
  byte-level BPE trained here with Polyglot's special tokens (``<|endoftext|>``=2 as EOS and pad, no BOS, no
  unk, nothing added by a post-processor).

``layers`` / ``d_model`` shrink a replica for CPU tests; heads keep the published head width where they can.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

KINDS = ("kobart", "solar", "polyglot")
KOBART_TOKENIZER = Path("../shared/fixtures/kobart-tokenizer")

# upstage/SOLAR-10.7B-Instruct-v1.0, tokenizer_config.json "chat_template" (verbatim)
SOLAR_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{% if message['content']%}"
    "{{'### System:\\n' + message['content']+'\\n\\n'}}{% endif %}{% elif message['role'] == 'user' %}"
    "{{'### User:\\n' + message['content']+'\\n\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'### Assistant:\\n'  + message['content']}}{% endif %}{% if loop.last and add_generation_prompt %}"
    "{{ '### Assistant:\\n' }}{% endif %}{% endfor %}"
)

POLYGLOT_SPECIAL = ["<|sep|>", "<|acc|>", "<|endoftext|>", "<|tel|>", "<|rrn|>"]  # <|endoftext|> = 2 (eos)


HUB = {
    "kobart": "gogamza/kobart-base-v2",
    "solar": "upstage/SOLAR-10.7B-Instruct-v1.0",
    "polyglot": "EleutherAI/polyglot-ko-12.8b",
}


def _heads(d_model: int, head_dim: int) -> int:
    heads = max(1, d_model // head_dim)
    while d_model % heads:
        heads -= 1
    return heads


# every dropout rate a replica's config family has (bart; llama; gpt_neox)
DROPOUT_KEYS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "classifier_dropout")


def published_config(kind: str, layers: int | None = None, d_model: int | None = None):
    """The checkpoint's config (:data:`dialsum.memory.REFERENCE_CONFIGS`), optionally with fewer layers or a
    narrower width; heads keep the published head width where they can, FFNs their published ratio."""
    from transformers import AutoConfig

    from .memory import REFERENCE_CONFIGS

    cfg = dict(REFERENCE_CONFIGS[HUB[kind]])
    if cfg["model_type"] == "bart":
        d0, heads0 = cfg["d_model"], cfg["encoder_attention_heads"]
        if layers:
            cfg.update(encoder_layers=layers, decoder_layers=layers)
        if d_model and d_model != d0:
            heads = _heads(d_model, d0 // heads0)
            ffn = cfg["encoder_ffn_dim"] * d_model // d0
            cfg.update(
                d_model=d_model,
                encoder_attention_heads=heads,
                decoder_attention_heads=heads,
                encoder_ffn_dim=ffn,
                decoder_ffn_dim=ffn,
            )
    else:
        d0, heads0 = cfg["hidden_size"], cfg["num_attention_heads"]
        if layers:
            cfg["num_hidden_layers"] = layers
        if d_model and d_model != d0:
            heads = _heads(d_model, d0 // heads0)
            cfg.update(
                hidden_size=d_model,
                num_attention_heads=heads,
                intermediate_size=cfg["intermediate_size"] * d_model // d0,
            )
            if "num_key_value_heads" in cfg:  # grouped-query attention keeps its group size where it can
                kv = max(1, heads * cfg["num_key_value_heads"] // heads0)
                while heads % kv:
                    kv -= 1
                cfg["num_key_value_heads"] = kv
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _bpe_vocab(texts: list[str], vocab_size: int, pre_tokenizer, special: list[str], alphabet=()) -> tuple[dict, list]:
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=special,
        initial_alphabet=list(alphabet),
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def solar_tokenizer(texts: list[str], vocab_size: int = 4000):
    """Llama's tokenizer.json form: byte-fallback BPE, legacy ``Prepend("▁")`` normalizer, BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>"]
    learned, merges = _bpe_vocab(texts, vocab_size, pre_tokenizers.Metaspace(prepend_scheme="always"), special)
    vocab = {t: i for i, t in enumerate(special + [f"<0x{b:02X}>" for b in range(256)])}
    for t in sorted((t for t in learned if t not in special), key=learned.get):
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = SOLAR_CHAT_TEMPLATE
    return fast


def polyglot_tokenizer(texts: list[str], vocab_size: int = 4000):
    """GPT-NeoX's form: byte-level BPE, no post-processor tokens, ``<|endoftext|>`` as EOS and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab, merges = _bpe_vocab(texts, vocab_size, byte_level, POLYGLOT_SPECIAL, pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(POLYGLOT_SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in POLYGLOT_SPECIAL if t != "<|endoftext|>"],
    )


def kobart_tokenizer(path: str | Path = KOBART_TOKENIZER):
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path}: KoBART's tokenizer not found (pass --tokenizer DIR with its tokenizer.json)")
    return AutoTokenizer.from_pretrained(path)


def build(
    kind: str,
    out: str | Path,
    texts: list[str],
    layers: int | None = None,
    d_model: int | None = None,
    tokenizer_path: str | Path = KOBART_TOKENIZER,
    vocab_size: int = 4000,
    seed: int = 0,
    dropout: float | None = None,
) -> Path:
    """Write a ``save_pretrained`` folder (safetensors + tokenizer) that loads like the hub checkpoint.
    ``dropout`` replaces the published dropout rates: a narrow random-weight KoBART trained on the sample
    with BART's 0.1 learns only the summaries' language model (docs/source-dependence.md)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if kind not in KINDS:
        raise ValueError(f"replica: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "kobart":
        tokenizer = kobart_tokenizer(tokenizer_path)
    elif kind == "solar":
        tokenizer = solar_tokenizer(texts, vocab_size)
    else:
        tokenizer = polyglot_tokenizer(texts, vocab_size)
    config = published_config(kind, layers, d_model)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, float(dropout))
    torch.manual_seed(seed)
    cls = AutoModelForSeq2SeqLM if kind == "kobart" else AutoModelForCausalLM
    model = cls.from_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    log.info("%s replica: %.1f M parameters (random), tokenizer %d tokens -> %s", kind, n / 1e6, len(tokenizer), out)
    return out
