"""Encoding inputs and batched, length-sorted generation for both model families."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .params import Candidates, Generation, ZooEntry, section
from .sequences import conventions, decode, source_ids

log = logging.getLogger(__name__)


def generation_kwargs(gen: dict | Generation, max_target_len: int | None = None) -> dict:
    """``model.generate`` keyword arguments from ``generation`` (a mapping or the typed section)."""
    g = section(Generation, gen, "generation")
    kw = dict(
        num_beams=g.num_beams,
        max_new_tokens=g.max_new_tokens,
        min_new_tokens=g.min_new_tokens,
        do_sample=g.do_sample,
        repetition_penalty=g.repetition_penalty,
        no_repeat_ngram_size=g.no_repeat_ngram_size,
        length_penalty=g.length_penalty,
    )
    if g.do_sample:
        kw.update(temperature=g.temperature, top_p=g.top_p)
    if max_target_len:
        kw["max_new_tokens"] = min(kw["max_new_tokens"], max_target_len + 1)
    return kw


def token_batches(
    lengths: list[int], max_count: int, max_tokens: int | None, num_beams: int = 1, max_new_tokens: int = 0
) -> list[list[int]]:
    """Consecutive index batches over ``lengths`` (sorted longest first) whose cost stays within
    ``max_tokens``: dialogues x beams x (padded source + new tokens), the size of what generation holds per
    layer (encoder states or prompt cache, beam caches, scores). Long inputs get small batches, short ones
    large; never more than ``max_count`` dialogues; a single dialogue over the budget goes alone."""
    batches: list[list[int]] = []
    for i, n in enumerate(lengths):
        if batches:
            b = batches[-1]
            width = max(lengths[b[0]], n)
            if len(b) < max_count and (
                not max_tokens or (len(b) + 1) * num_beams * (width + max_new_tokens) <= max_tokens
            ):
                b.append(i)
                continue
        batches.append([i])
    return batches


@functools.cache
def _beam_cache_class():
    from transformers import EncoderDecoderCache

    class BeamSharedCrossCache(EncoderDecoderCache):
        """Beam search reorders beams only within one input, and the beams of one input share its encoder
        output, so reordering the cross-attention keys/values is a copy that changes nothing. transformers 5
        does it at every step anyway (the largest cost of CPU beam search over long dialogues, profiled in
        BENCHMARKS.md); this cache skips it. The self-attention cache is reordered as usual."""

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.self_attention_cache.reorder_cache(beam_idx)

    return BeamSharedCrossCache


def beam_cache(model, num_beams: int) -> dict:
    """``past_key_values`` for ``generate``: a cache that leaves the cross-attention alone in beam search
    over an encoder-decoder; nothing (transformers' default) otherwise."""
    if num_beams <= 1 or not model.config.is_encoder_decoder or model.generation_config.cache_implementation:
        return {}
    from transformers import DynamicCache

    cfg = model.config.get_text_config(decoder=True)
    return {"past_key_values": _beam_cache_class()(DynamicCache(config=cfg), DynamicCache(config=cfg))}


@torch.no_grad()
def summarize(
    model,
    tokenizer,
    family: str,
    dialogues: list[str],
    gen: dict,
    max_source_len: int,
    batch_size: int = 32,
    prompt: str | None = None,
    desc: str = "generate",
    progress: bool = True,
    processor=None,
) -> tuple[list[str], list[float]]:
    """Summaries and their mean token log-probability, in input order.

    Inputs are sorted by length and cut into :func:`token_batches` (at most ``batch_size`` dialogues and
    ``gen["batch_tokens"]`` tokens each), then put back in order. ``processor(inputs, num_beams, width)``,
    when given, makes a logits processor per batch whose output scores are already log-probabilities (model
    averaging).
    """
    if not dialogues:
        return [], []
    was_training = model.training
    conv, encoded, order = _encode_sorted(model, tokenizer, family, dialogues, max_source_len, prompt)
    kw = generation_kwargs(gen)
    out_text: list[str] = [""] * len(dialogues)
    out_lp: list[float] = [0.0] * len(dialogues)
    batches = token_batches(
        [len(encoded[i]) for i in order],
        batch_size,
        section(Generation, gen, "generation").batch_tokens,
        kw["num_beams"],
        kw["max_new_tokens"],
    )
    batches = [[order[j] for j in b] for b in batches]
    fits = None  # after an out-of-memory error: the most dialogues that then fitted in one call
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        for part in (batch[k : k + fits] for k in range(0, len(batch), fits)) if fits else [batch]:
            texts, lps, _, fitted = _generate_halving(model, tokenizer, conv, [encoded[i] for i in part], kw, processor)
            if fitted < len(part):
                fits = fitted
            for j, i in enumerate(part):
                out_text[i], out_lp[i] = texts[j], lps[j]
    model.train(was_training)
    return out_text, out_lp


def _encode_sorted(model, tokenizer, family: str, dialogues: list[str], max_source_len: int, prompt):
    """Puts ``model`` in eval mode; returns its conventions, each dialogue's source ids, and the indices
    longest first (the order batches are cut in)."""
    model.eval()
    conv = conventions(tokenizer, family, model.config)
    encoded = [source_ids(tokenizer, d, conv, max_source_len, prompt)[0] for d in dialogues]
    return conv, encoded, sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))


_halved = False


def _generate_halving(model, tokenizer, conv, seqs: list[list[int]], kw: dict, processor=None, keys=None):
    """:func:`_generate_batch`, halving the batch and retrying on a GPU out-of-memory error (logged once per
    process) instead of losing the run; also returns the most dialogues that fitted in one call, so the
    caller sizes later batches by it. Per-dialogue outputs do not depend on the split. ``keys`` (one per
    input, e.g. its index) travel with the inputs to ``processor``."""
    global _halved
    keys = list(range(len(seqs))) if keys is None else keys
    try:
        return (*_generate_batch(model, tokenizer, conv, seqs, kw, processor, keys), len(seqs))
    except torch.OutOfMemoryError:
        if len(seqs) == 1:
            raise
        if not _halved:
            log.warning(
                "out of memory generating %d dialogues at once: halving the batch and retrying "
                "(lower generation.batch_tokens to avoid the retries)",
                len(seqs),
            )
            _halved = True
    if torch.cuda.is_available():  # outside the handler: the traceback no longer holds the failed tensors
        torch.cuda.empty_cache()
    half = len(seqs) // 2
    a = _generate_halving(model, tokenizer, conv, seqs[:half], kw, processor, keys[:half])
    b = _generate_halving(model, tokenizer, conv, seqs[half:], kw, processor, keys[half:])
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], max(a[3], b[3])


def _generate_batch(model, tokenizer, conv, seqs: list[list[int]], kw: dict, processor=None, keys=None):
    """One ``generate`` call: (texts, mean token log-probs, generated token counts), ``num_return_sequences``
    rows per input (input-major). Everything it allocates (the beam search's per-step scores, the KV caches
    the output holds) dies when it returns, before the next batch starts.

    ``processor(inputs, num_beams, width, keys)`` makes a logits processor for this call; unless it has a
    ``logprobs = False`` attribute its output scores are taken as log-probabilities (model averaging)."""
    pad, device = tokenizer.pad_token_id, next(model.parameters()).device
    width = max(map(len, seqs))
    # causal models continue the prompt, so pad on the left; encoders pad on the right
    if conv.family == "causal":
        ids = [[pad] * (width - len(s)) + s for s in seqs]
        mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
    else:
        ids = [s + [pad] * (width - len(s)) for s in seqs]
        mask = [[1] * len(s) + [0] * (width - len(s)) for s in seqs]
    inputs = dict(input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device))
    extra = {}
    if processor is not None:
        from transformers import LogitsProcessorList

        proc = processor(inputs, kw["num_beams"], width, keys)
        extra["logits_processor"] = LogitsProcessorList([proc])
    extra.update(beam_cache(model, kw["num_beams"]))
    # sampled and diversity-penalised candidates are scored by the model's own distribution (before
    # temperature, top-p or penalties), from the raw logits along each returned sequence's beam path
    kw = dict(kw)
    raw = (
        kw.pop("raw_logprobs", False)
        or kw.get("do_sample", False)
        or getattr(extra.get("logits_processor", [None])[0], "penalizes", False)
    )
    res = model.generate(
        **inputs,
        **kw,
        **extra,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        **({"output_logits": True} if raw else {}),
    )
    new = res.sequences[:, width:] if conv.family == "causal" else res.sequences
    if not raw and getattr(res, "sequences_scores", None) is not None:
        lps = res.sequences_scores.tolist()
    else:
        # raw logits need a log-softmax; a processor's averaged log-probs are taken as they are
        normalize = processor is None or not getattr(proc, "logprobs", True) or raw
        trans = model.compute_transition_scores(
            res.sequences,
            res.logits if raw else res.scores,
            getattr(res, "beam_indices", None),
            normalize_logits=normalize,
        )
        # up to and including the first EOS (whether or not the pad token is the EOS, as in most causal LMs)
        is_eos = new[:, -trans.shape[1] :] == tokenizer.eos_token_id
        valid = torch.isfinite(trans) & ((is_eos.long().cumsum(1) - is_eos.long()) == 0)
        lps = [(t[v].sum() / max(int(v.sum()), 1)).item() for t, v in zip(trans, valid)]
    texts = [decode(tokenizer, row.tolist(), conv) for row in new]
    return texts, [float(lp) if math.isfinite(lp) else -1e9 for lp in lps], _lengths(new, tokenizer, conv)


def _lengths(new: torch.Tensor, tokenizer, conv) -> list[int]:
    """Generated tokens per row up to and including the first EOS (a seq2seq decoder's start token and the
    padding after EOS not counted)."""
    rows = new[:, 1:] if conv.family == "seq2seq" else new
    is_eos = rows == tokenizer.eos_token_id
    upto = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # before or at the first EOS
    return [int(x) for x in upto.sum(1).tolist()]


def candidate_settings(gen: dict | Generation) -> Candidates:
    """``generation.candidates`` with its defaults (k = 1: one summary per input, as without pools)."""
    return section(Generation, gen, "generation").candidates


class _HammingDiversity:
    """Diverse beam search (Vijayakumar et al., 2018) one group at a time. Group g at output position t
    loses ``penalty`` x (how often groups 0..g-1 chose each token at position t) from its scores. Groups
    never look at later groups, so decoding them one after another is the interleaved algorithm exactly;
    it needs only transformers' plain beam search (its own group beam search now lives on the Hub).

    ``history[key][g]`` is the list, per output position, of the tokens group g's beams chose for input
    ``key``; the processor of group g writes its own list and reads those of the groups before it."""

    logprobs = False  # greedy groups see raw logits; beam groups are rescored from raw logits anyway

    def __init__(self, history: dict, keys, group: int, penalty: float, start: int, num_beams: int):
        self.history, self.keys, self.group, self.penalty = history, list(keys), group, penalty
        self.start, self.num_beams = start, num_beams
        self.penalizes = group > 0 and penalty > 0
        for key in self.keys:  # a retried call (GPU OOM halving) starts its record afresh
            self.history.setdefault(key, {})[group] = []

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.start  # tokens generated so far: this call chooses position t
        if t > 0:
            last = input_ids[:, -1].view(len(self.keys), -1)
            for key, row in zip(self.keys, last):
                self.history[key][self.group].append(row.clone())
        if not self.penalizes:
            return scores
        vocab = scores.shape[-1]
        counts = torch.zeros(len(self.keys), vocab, dtype=scores.dtype, device=scores.device)
        for i, key in enumerate(self.keys):
            chosen = [steps[t] for g, steps in self.history[key].items() if g < self.group and len(steps) > t]
            if chosen:
                counts[i] = torch.bincount(torch.cat(chosen), minlength=vocab)[:vocab].to(scores.dtype)
        return scores - self.penalty * counts.repeat_interleave(scores.shape[0] // len(self.keys), dim=0)


@torch.no_grad()
def summarize_pool(
    model,
    tokenizer,
    family: str,
    dialogues: list[str],
    gen: dict,
    max_source_len: int,
    batch_size: int = 32,
    prompt: str | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[list[tuple[str, float, int]]]:
    """``generation.candidates.k`` candidates per dialogue, each ``(summary, mean token log-prob, tokens)``,
    in input order; batching as :func:`summarize` (the budget counts every beam of a call).

    - ``beam``: the k best hypotheses of one beam search of width max(num_beams, k); candidate 0 is what
      k = 1 gives whenever k <= num_beams.
    - ``diverse``: k groups of ``group_beams`` (default num_beams) beams with a Hamming diversity penalty;
      group 0 is the plain beam search, so candidate 0 is what k = 1 gives.
    - ``sample``: candidate 0 is the k = 1 output, then k - 1 samples (temperature, top-p, epsilon) seeded
      per batch by ``candidates.seed``: the same params and data give the same pool.

    Log-probs (k > 1): every candidate's mean token log-prob under the raw model (before length penalty,
    temperature, top-p or diversity penalties), so candidates of every method compare."""
    cand = candidate_settings(gen)
    k, method = cand.k, cand.method
    if not dialogues:
        return []
    was_training = model.training
    conv, encoded, order = _encode_sorted(model, tokenizer, family, dialogues, max_source_len, prompt)
    kw = generation_kwargs(gen)
    nb = kw["num_beams"]
    group_beams = int(cand.group_beams or nb)
    beams = {"beam": max(nb, k), "diverse": group_beams, "sample": max(nb, k - 1)}[method]
    batches = token_batches(
        [len(encoded[i]) for i in order],
        batch_size,
        section(Generation, gen, "generation").batch_tokens,
        beams,
        kw["max_new_tokens"],
    )
    pool: list[list[tuple[str, float, int]]] = [[] for _ in dialogues]

    def run(batch, kw_call, per_input, processor=None):
        # every candidate of a pool is scored alike: the raw model's mean token log-prob
        texts, lps, lens, _ = _generate_halving(
            model,
            tokenizer,
            conv,
            [encoded[i] for i in batch],
            {**kw_call, "raw_logprobs": k > 1},
            processor,
            list(batch),
        )
        for j, i in enumerate(batch):
            rows = range(j * per_input, (j + 1) * per_input)
            pool[i] += [(texts[r], lps[r], lens[r]) for r in rows]
        return lens

    for number, batch in enumerate(
        tqdm([[order[j] for j in b] for b in batches], desc=desc, disable=not progress, leave=False)
    ):
        if k == 1:
            run(batch, kw, 1)
        elif method == "beam":
            run(batch, {**kw, "num_beams": max(nb, k), "num_return_sequences": k}, k)
        elif method == "sample":
            torch.manual_seed(int(cand.seed) * 1_000_003 + number)  # before candidate 0 (do_sample: true)
            run(batch, kw, 1)
            sampling = {
                **kw,
                "do_sample": True,
                "num_beams": 1,
                "num_return_sequences": k - 1,
                "temperature": cand.temperature,
                "top_p": cand.top_p,
            }
            if cand.epsilon:
                sampling["epsilon_cutoff"] = cand.epsilon
            run(batch, sampling, k - 1)
        else:
            history: dict = {}
            start = None if conv.family == "causal" else 1
            for g in range(k):

                def processor(inputs, num_beams, width, keys, g=g):
                    return _HammingDiversity(
                        history, keys, g, cand.diversity_penalty, width if start is None else start, num_beams
                    )

                lens = run(batch, {**kw, "num_beams": group_beams}, 1, processor)
                # an input whose search ended keeps being extended while others in its batch run: what its
                # beams "chose" after its own end is not part of its search and would make the pool depend on
                # the batching. Alone, its last token (position n - 1) is never recorded either (no call
                # follows it), so later groups see positions 0 .. n - 2 only, batched or not
                for i, n in zip(batch, lens):
                    history[i][g] = history[i][g][: max(n - 1, 0)]
    model.train(was_training)
    return pool


class _AveragedLogProbs:
    """A logits processor that replaces the primary model's next-token log-probs by the weighted mean of
    every member's, so HF's own beam search runs on the averaged distribution ("model averaging").

    The other members see exactly the beams of the primary: their encoder states (seq2seq) or prompt
    masks (causal) are computed once per batch and repeated per beam. Each keeps a KV cache across steps.
    A logits processor is not told how beam search reordered the beams, so the reordering is recovered from
    the sequences themselves: every row of this step extends a row of the previous step within its input's
    beams, and that row's cache is the one to continue. Re-reading every beam's tokens at every step instead
    (the first version) made averaged beam search over 384-token dialogues ~12x slower than one model's.
    """

    def __init__(self, others, weights, family, batch_inputs, num_beams, prompt_width):
        self.others, self.weights, self.family = others, weights, family
        self.num_beams, self.prompt_width = num_beams, prompt_width
        mask = batch_inputs["attention_mask"].repeat_interleave(num_beams, dim=0)
        self.mask = mask
        self.encoded = []
        self.caches: list = [None] * len(others)
        self.prev = None  # input_ids of the previous step
        if family == "seq2seq":
            for m in others:
                enc = m.get_encoder()(
                    input_ids=batch_inputs["input_ids"], attention_mask=batch_inputs["attention_mask"]
                )
                self.encoded.append(enc.last_hidden_state.repeat_interleave(num_beams, dim=0))

    def _parents(self, input_ids):
        """For each row, the previous step's row it extends (the beam search's reordering), or None when
        the previous step is unknown (first call, or the sequences do not continue it)."""
        prev, k = self.prev, self.num_beams
        if prev is None or prev.shape[1] != input_ids.shape[1] - 1 or prev.shape[0] != input_ids.shape[0]:
            return None
        t = prev.shape[1]
        same = (input_ids[:, :-1].view(-1, k, 1, t) == prev.view(-1, 1, k, t)).all(-1)  # [inputs, beam, beam]
        if not bool(same.any(-1).all()):
            return None
        offset = torch.arange(same.shape[0], device=input_ids.device).unsqueeze(1) * k
        return (same.float().argmax(-1) + offset).reshape(-1)

    def __call__(self, input_ids, scores):
        from transformers.modeling_outputs import BaseModelOutput

        vocab = scores.shape[-1]
        primary = torch.log_softmax(scores.float(), dim=-1)
        # a weight of 0 must not turn the -inf of HF's constraints (min length, no-repeat n-grams) into NaN
        total = self.weights[0] * primary if self.weights[0] else torch.zeros_like(primary)
        parents = self._parents(input_ids)
        for k, m in enumerate(self.others):
            cache = self.caches[k] if parents is not None else None
            if cache is not None:
                cache.reorder_cache(parents)
                step = input_ids[:, -1:]
            else:  # from the start (the cross-attention need not follow the beams: see beam_cache)
                cache = beam_cache(m, self.num_beams).get("past_key_values")
                step = input_ids
            if self.family == "seq2seq":
                out = m(
                    encoder_outputs=BaseModelOutput(last_hidden_state=self.encoded[k]),
                    attention_mask=self.mask,
                    decoder_input_ids=step,
                    past_key_values=cache,
                    use_cache=True,
                )
            else:
                gen_len = input_ids.shape[1] - self.prompt_width
                mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], gen_len)], dim=1)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1] :]
                out = m(input_ids=step, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
            self.caches[k] = out.past_key_values
            logits = out.logits[:, -1, :vocab].float()
            if logits.shape[-1] < vocab:  # padded embedding rows of another size: never valid tokens
                logits = torch.nn.functional.pad(logits, (0, vocab - logits.shape[-1]), value=-1e9)
            total = total + self.weights[k + 1] * torch.log_softmax(logits, dim=-1)
        self.prev = input_ids.clone()
        # HF's constraints act on the primary's scores before this processor; they stay in force
        return (total / sum(self.weights)).masked_fill(primary == float("-inf"), float("-inf"))


def summarize_averaged(
    members,
    weights,
    tokenizer,
    family: str,
    dialogues: list[str],
    gen: dict,
    max_source_len: int,
    batch_size: int = 32,
    prompt: str | None = None,
    desc: str = "averaged generate",
    progress: bool = True,
) -> tuple[list[str], list[float]]:
    """:func:`summarize` with several models that share ``tokenizer`` (the folds of one model): one beam
    search whose next-token log-probabilities are the ``weights``-weighted mean of all members'."""
    for m in members[1:]:
        m.eval()

    def processor(inputs, num_beams, width, keys):
        return _AveragedLogProbs(members[1:], list(weights), family, inputs, num_beams, width)

    return summarize(
        members[0],
        tokenizer,
        family,
        dialogues,
        gen,
        max_source_len,
        batch_size,
        prompt,
        desc,
        progress,
        processor=processor if len(members) > 1 else None,
    )


def summarize_views(
    model,
    tokenizer,
    family: str,
    fnames,
    dialogues,
    augmenter,
    key_prefix: str,
    gen: dict,
    max_source_len: int,
    batch_size: int = 32,
    prompt: str | None = None,
    desc: str = "generate",
) -> pd.DataFrame:
    """Summaries of every dialogue and of its TTA views [fname, view, summary, logprob], view summaries mapped
    back to the original speakers; with ``generation.candidates.k`` > 1, k rows per view [fname, view,
    candidate, summary, logprob, tokens] (see :func:`summarize_pool`). Views are seeded by ``key_prefix/fname``, so every model x fold
    summarises the very same augmented inputs."""
    rows = []
    for fname, dialogue in zip(fnames, dialogues):
        rows.append((fname, "orig", dialogue, None))
        rows += [(fname, v.name, v.dialogue, v.inverse) for v in augmenter.views(f"{key_prefix}/{fname}", dialogue)]
    if candidate_settings(gen).k > 1:
        pool = summarize_pool(
            model, tokenizer, family, [r[2] for r in rows], gen, max_source_len, batch_size, prompt, desc=desc
        )
        out = [
            (r[0], r[1], c, r[3](t) if r[3] else t, round(lp, 6), n)
            for r, cands in zip(rows, pool)
            for c, (t, lp, n) in enumerate(cands)
        ]
        return pd.DataFrame(out, columns=["fname", "view", "candidate", "summary", "logprob", "tokens"])
    texts, lps = summarize(
        model, tokenizer, family, [r[2] for r in rows], gen, max_source_len, batch_size, prompt, desc=desc
    )
    texts = [inv(t) if inv else t for t, (_, _, _, inv) in zip(texts, rows)]
    return pd.DataFrame(
        {
            "fname": [r[0] for r in rows],
            "view": [r[1] for r in rows],
            "summary": texts,
            "logprob": [round(x, 6) for x in lps],
        }
    )


@dataclass
class Summarizer:
    """A loaded model that summarizes: the model with its tokenizer and family, the zoo entry's input limit and
    prompt, and the generation settings. predict, average, tuning trials, the in-training evaluation,
    ``dialsum summarize`` and its ``--ensemble`` summarize through one."""

    model: Any
    tokenizer: Any
    family: str
    gen: Generation
    max_source_len: int
    prompt: str | None = None
    batch_size: int | None = None  # dialogues per generate call; None = gen.batch_size

    @classmethod
    def load(
        cls,
        model_dir,
        entry: ZooEntry | dict | None,
        gen: Generation | dict,
        max_source_len: int | None = None,
        batch_size: int | None = None,
    ) -> "Summarizer":
        """A trained folder (full weights or a LoRA adapter) with ``entry``'s settings (None: what the folder
        says, for ``dialsum summarize --model``), ready to generate (left padding)."""
        from .models import load_for_inference

        entry = section(ZooEntry, entry, "zoo entry") if entry else None
        model, tokenizer, family = load_for_inference(model_dir, entry)
        tokenizer.padding_side = "left"
        return cls(
            model,
            tokenizer,
            family,
            section(Generation, gen, "generation"),
            max_source_len or entry.max_source_len,
            entry.prompt if entry else None,
            batch_size,
        )

    def __call__(self, dialogues, desc: str = "generate", progress: bool = True) -> tuple[list[str], list[float]]:
        """:func:`summarize`: summaries and mean token log-probabilities, in input order."""
        return summarize(
            self.model,
            self.tokenizer,
            self.family,
            list(dialogues),
            self.gen,
            self.max_source_len,
            self.batch_size or self.gen.batch_size,
            self.prompt,
            desc,
            progress,
        )

    def views(self, fnames, dialogues, augmenter, key_prefix: str, desc: str = "generate") -> pd.DataFrame:
        """:func:`summarize_views`: every dialogue and its TTA views (or candidate pools)."""
        return summarize_views(
            self.model,
            self.tokenizer,
            self.family,
            fnames,
            dialogues,
            augmenter,
            key_prefix,
            self.gen,
            self.max_source_len,
            self.batch_size or self.gen.batch_size,
            self.prompt,
            desc=desc,
        )

    def averaged(
        self, others: list, weights, dialogues, desc: str = "averaged generate"
    ) -> tuple[list[str], list[float]]:
        """:func:`summarize_averaged` of this model and ``others`` (same tokenizer), weighted by ``weights``."""
        return summarize_averaged(
            [self.model, *(o.model for o in others)],
            weights,
            self.tokenizer,
            self.family,
            list(dialogues),
            self.gen,
            self.max_source_len,
            self.batch_size or self.gen.batch_size,
            self.prompt,
            desc,
        )
