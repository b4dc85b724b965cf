"""Sequence conventions: how a model's inputs and labels are built, whatever its tokenizer adds.

Tokenizers disagree about special tokens. dialsum's stand-ins add ``<s> … </s>`` through a post-processor;
KoBART's released tokenizer adds nothing (so labels built with it would never end in ``</s>`` and the model
would never learn to stop); BERT adds ``[CLS] … [SEP]``; Llama adds ``<s>`` but no ``</s>``; GPT-NeoX adds
nothing. So every id sequence here is built from ``add_special_tokens=False`` pieces, and the special tokens
are put in by hand, once, by the checkpoint's convention (:class:`Conventions`):

- seq2seq source: ``bos + dialogue + eos`` (BART/KoBART ``<s> … </s>``, BERT2BERT ``[CLS] … [SEP]``);
- seq2seq labels: ``bos + summary + eos``, minus a leading token equal to the decoder start (BERT2BERT starts
  the decoder with ``[CLS]``; learning "[CLS] -> [CLS]" would make greedy search repeat it forever);
- causal rows: ``[bos] + prompt + summary + eos``, the prompt's labels -100; ``bos`` only for
  architectures pretrained with one (Llama/SOLAR yes, GPT-NeoX/Polyglot no).

Tags (``#Person1#``) are added as normal tokens, and a Metaspace (``▁``) pre-tokenizer is told not to
invent a word boundary after them, so ``#Person1#과`` decodes as ``#Person1#과``, not ``#Person1# 과``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from .data import PII_TAGS, SPEAKER_TAGS
from .params import ZooEntry, section

TAGS = SPEAKER_TAGS + PII_TAGS
DEFAULT_PROMPT = "다음 대화를 요약하세요.\n### 대화:\n{dialogue}\n### 요약:\n"

# Causal architectures whose pretraining put a BOS token before every document. Others: whatever the
# tokenizer itself adds (its post-processor is the checkpoint author's statement of the convention).
CAUSAL_BOS = {
    "llama": True,
    "mistral": True,
    "gemma": True,
    "gemma2": True,
    "gpt_neox": False,
    "gpt2": False,
    "gptj": False,
    "qwen2": False,
}


@dataclass(frozen=True)
class Conventions:
    family: str
    bos: int | None  # opens the source (seq2seq) / the prompt (causal); None = nothing
    eos: int  # closes the source (seq2seq) and every target
    decoder_start: int | None  # seq2seq: the decoder's first input, never a label


def conventions(tokenizer, family: str, config=None) -> Conventions:
    """The conventions of ``config``'s checkpoint (a transformers config, or None: the tokenizer decides)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token: summaries could never end")
    if isinstance(config, int):
        raise TypeError("conventions/build_features take the model's config, not a decoder start id")
    if family == "seq2seq":
        start = None
        if config is not None:  # as generate starts the decoder (models.sync_generation_ids' fallback: EOS)
            start = getattr(config, "decoder_start_token_id", None)
            start = tokenizer.eos_token_id if start is None else start
        return Conventions(family, tokenizer.bos_token_id, tokenizer.eos_token_id, start)
    bos = None
    if tokenizer.bos_token_id is not None:
        model_type = getattr(config, "model_type", None)
        wanted = CAUSAL_BOS.get(model_type) if model_type in CAUSAL_BOS else _tokenizer_adds_bos(tokenizer)
        bos = tokenizer.bos_token_id if wanted else None
    return Conventions(family, bos, tokenizer.eos_token_id, None)


def _tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def source_ids(
    tokenizer, dialogue: str, conv: Conventions, max_len: int, prompt: str | None = None
) -> tuple[list[int], bool]:
    """Token ids of the model input and whether the dialogue was truncated.

    seq2seq: the wrapped dialogue, cut inside the wrapping. causal: the prompt around the dialogue; only the
    dialogue is cut, so the instruction and the answer cue always survive. A chat template (SOLAR-Instruct)
    wraps the prompt as a user turn and adds the assistant cue.
    """
    dia = _ids(tokenizer, dialogue)
    if conv.family == "seq2seq":
        head = [conv.bos] if conv.bos is not None else []
        budget = max(max_len - len(head) - 1, 1)
        return head + dia[:budget] + [conv.eos], len(dia) > budget
    template = prompt or DEFAULT_PROMPT
    head, tail = template.split("{dialogue}")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": template.format(dialogue="\0")}], add_generation_prompt=True, tokenize=False
        )
        head, tail = text.split("\0")
    head_ids, tail_ids = _ids(tokenizer, head), _ids(tokenizer, tail)
    if conv.bos is not None and head_ids[:1] != [conv.bos]:  # a template may have written it already
        head_ids = [conv.bos] + head_ids
    budget = max(max_len - len(head_ids) - len(tail_ids), 1)
    return head_ids + dia[:budget] + tail_ids, len(dia) > budget


def target_ids(tokenizer, summary: str, conv: Conventions, max_len: int) -> list[int]:
    """The summary's labels: ending in exactly one EOS (seq2seq: at most ``max_len`` ids in all; causal:
    the summary's first ``max_len`` ids, then EOS)."""
    ids = _ids(tokenizer, summary)
    if conv.family != "seq2seq":
        return ids[:max_len] + [conv.eos]
    # never a label equal to the decoder start, and never EOS twice (a tokenizer whose bos is its eos)
    head = [conv.bos] if conv.bos not in (None, conv.decoder_start, conv.eos) else []
    return head + ids[: max(max_len - len(head) - 1, 0)] + [conv.eos]


def build_features(df: pd.DataFrame, tokenizer, entry: ZooEntry | dict, config=None) -> tuple[list[dict], int]:
    """Token ids per row (``input_ids``, ``attention_mask``, ``labels``: nothing else reaches the model) and
    how many dialogues were cut to ``max_source_len``. ``config``: the model's, for its conventions."""
    entry = section(ZooEntry, entry, "zoo entry")
    conv = conventions(tokenizer, entry.family, config)
    max_src, max_tgt = entry.max_source_len, entry.max_target_len
    feats, truncated = [], 0
    for dialogue, summary in zip(df["dialogue"], df["summary"]):
        src, cut = source_ids(tokenizer, dialogue, conv, max_src, entry.prompt)
        truncated += cut
        tgt = target_ids(tokenizer, summary, conv, max_tgt)
        if conv.family == "seq2seq":
            feats.append({"input_ids": src, "attention_mask": [1] * len(src), "labels": tgt})
        else:
            ids = src + tgt
            feats.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(src) + tgt})
    return feats, truncated


def decode(tokenizer, ids, conv: Conventions | None = None) -> str:
    """Generated ids as text: leading start tokens dropped, cut at the first EOS, every added token (tags)
    kept; any stray pad/bos/eos/unk text removed; whitespace collapsed."""
    ids = list(ids)
    # BART's decoder starts with EOS; a causal model's leading EOS (an empty summary) is followed only by pads
    start = {tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}
    if conv is not None and conv.decoder_start is not None:
        start.add(conv.decoder_start)
    while ids and ids[0] in start:
        ids.pop(0)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for tok in {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token} - {None}:
        text = text.replace(tok, "")
    return " ".join(text.split())


def prepare_tokenizer(tokenizer) -> int:
    """Tags as single, non-special tokens (``skip_special_tokens`` can never delete them) that round-trip
    with whatever follows them; a pad token (most causal LMs ship without one: EOS, as their authors
    advise). Returns how many tags were new."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [AddedToken(t, normalized=False, special=False) for t in TAGS if t not in vocab]
    n = tokenizer.add_tokens(new) if new else 0
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    glue_after_added_tokens(tokenizer)
    return n


def glue_after_added_tokens(tokenizer) -> bool:
    """Stop a SentencePiece-style tokenizer from starting a new word after every added token.

    The tokenizer splits the text at added tokens and pre-tokenizes each piece on its own; a Metaspace
    pre-tokenizer with ``prepend_scheme: always`` (KoBART) or a ``Prepend("▁")`` normalizer (Llama's legacy
    form) then marks every piece as a new word, so ``#Person1#과`` and ``#Person1# 과`` encode alike and
    decode as the latter. ``prepend_scheme: first`` (what transformers does for Llama with
    ``legacy=False``) marks only the text's start. Returns whether anything changed."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    changed = False

    def first(node):
        nonlocal changed
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "always":
                node["prepend_scheme"] = "first"
                changed = True
            for v in node.values():
                first(v)
        elif isinstance(node, list):
            for v in node:
                first(v)

    first(spec.get("pre_tokenizer"))
    first(spec.get("decoder"))
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    prepend = [s for s in steps if s.get("type") == "Prepend" and s.get("prepend") == "▁"]
    if prepend and spec.get("pre_tokenizer") is None:
        steps = [
            s
            for s in steps
            if s not in prepend
            and not (
                s.get("type") == "Replace" and s.get("content") == "▁" and s.get("pattern", {}).get("String") == " "
            )
        ]
        spec["normalizer"] = {"type": "Sequence", "normalizers": steps} if steps else None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        changed = True
    if changed:
        fixed = Tokenizer.from_str(json.dumps(spec))
        backend.normalizer = fixed.normalizer
        backend.pre_tokenizer = fixed.pre_tokenizer
        backend.decoder = fixed.decoder
    return changed
