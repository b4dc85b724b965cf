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

from .params import FALLBACK_NEW_TOKENS, Candidates, Generation, ZooEntry, new_tokens, section
from .sequences import conventions, decode, source_ids

log = logging.getLogger(__name__)


def generation_kwargs(gen: dict | Generation, max_target_len: int | None = None) -> dict:
    """``model.generate`` keyword arguments from ``generation`` (a mapping or the typed section)."""
    g = section(Generation, gen, "generation")
    kw = dict(
        num_beams=g.num_beams,
        max_new_tokens=new_tokens(g, max_target_len),
        min_new_tokens=g.min_new_tokens,
        do_sample=g.do_sample,
        repetition_penalty=g.repetition_penalty,
        no_repeat_ngram_size=g.no_repeat_ngram_size,
        length_penalty=g.length_penalty,
    )
    if g.do_sample:
        kw.update(temperature=g.temperature, top_p=g.top_p)
    return kw


class GeneratedOnly:
    """A logits processor shown only the tokens generated so far, not the ``width`` prompt tokens before them."""

    def __init__(self, processor, width: int):
        self.processor, self.width = processor, width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.processor(input_ids[:, self.width :], scores)


def generated_only(kw: dict, width: int) -> list:
    """A causal model's ``repetition_penalty`` and ``no_repeat_ngram_size`` taken out of ``kw`` (set neutral in
    place) and returned as processors of the generated tokens only. transformers applies both to the whole sequence,
    and a causal model's sequence starts with its prompt: with ``no_repeat_ngram_size: 3`` it could never copy a
    name, a time or a three-token phrase from the dialogue, and every dialogue token was penalised. An
    encoder-decoder's sequence is its summary alone, so it keeps transformers' own."""
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    out, penalty, n = [], kw.get("repetition_penalty"), kw.get("no_repeat_ngram_size")
    if penalty not in (None, 1.0):
        out.append(GeneratedOnly(RepetitionPenaltyLogitsProcessor(penalty), width))
    if n:
        out.append(GeneratedOnly(NoRepeatNGramLogitsProcessor(n), width))
    # neutral, not left out: generate would fall back to the checkpoint's generation_config for a missing key
    kw.update(repetition_penalty=1.0, no_repeat_ngram_size=0)
    return out


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
    side = "left" if conv.family == "causal" else "right"
    batch = tokenizer.pad({"input_ids": seqs}, padding_side=side, return_tensors="pt")
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    extra, kw = {}, dict(kw)
    proc = processor(inputs, kw["num_beams"], width, keys) if processor is not None else None
    procs = [proc] if proc is not None else []
    if conv.family == "causal":
        procs += generated_only(kw, width)  # after model averaging's: they penalise the averaged scores
    if procs:
        from transformers import LogitsProcessorList

        extra["logits_processor"] = LogitsProcessorList(procs)
    extra.update(beam_cache(model, kw["num_beams"]))
    # sampled and diversity-penalised candidates are scored by the model's own distribution (before
    # temperature, top-p or penalties), from the raw logits along each returned sequence's beam path
    raw = kw.pop("raw_logprobs", False) or kw.get("do_sample", False) or getattr(proc, "penalizes", False)
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
    # HF's beam score is sum / length ** length_penalty: the stored log-prob must be a plain mean (pick's tie
    # break and the stacker compare it across sources), so any other penalty takes the per-token path
    if not raw and kw.get("length_penalty", 1.0) == 1.0 and getattr(res, "sequences_scores", None) is not None:
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


def _source_room(model, gen: Generation | dict, max_target_len: int | None = None, default: int = 512) -> int:
    """Source tokens for a folder without a zoo entry: ``default``, within the positions the model has (a
    decoder-only model's source and summary share them)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if not positions:
        return default
    if not model.config.is_encoder_decoder:
        positions -= new_tokens(gen, max_target_len)
    return max(1, min(default, positions))


def _target_room(model) -> int:
    """A summary length for a folder without a zoo entry: up to FALLBACK_NEW_TOKENS, at most half the
    positions (a decoder's positions bound what it writes; a decoder-only model shares them with the source)."""
    positions = getattr(model.config, "max_position_embeddings", None) or 2 * FALLBACK_NEW_TOKENS
    return min(FALLBACK_NEW_TOKENS, positions // 2) - 1


@dataclass
class Summarizer:
    """A loaded model that summarizes: the model with its tokenizer and family, the zoo entry's input limit and
    prompt, and the generation settings. predict, average, tuning trials, the in-training evaluation,
    ``dialsum summarize`` and its ``--ensemble`` summarize through one.

    Every way of summarizing shares one plan (:meth:`_batches`): inputs encoded, sorted longest first and cut
    into :func:`token_batches` (at most ``batch_size`` dialogues and ``gen.batch_tokens`` tokens each, every
    beam counted); outputs come back in input order and do not depend on the batching."""

    model: Any
    tokenizer: Any
    family: str
    gen: Generation
    max_source_len: int
    prompt: str | None = None
    batch_size: int | None = None  # dialogues per generate call; None = gen.batch_size
    max_target_len: int | None = None  # the entry's: new tokens when generation.max_new_tokens is None

    def __post_init__(self):
        self.gen = section(Generation, self.gen, "generation")  # a mapping is validated once, here

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
        prompt = entry.prompt if entry else None
        target = entry.max_target_len if entry else _target_room(model)
        if max_source_len is None:
            max_source_len = entry.max_source_len if entry else _source_room(model, gen, target)
        return cls(model, tokenizer, family, gen, max_source_len, prompt, batch_size, target)

    def _batches(self, dialogues: list[str], beams: int, desc: str, progress: bool, members: int = 1):
        """(conventions, each dialogue's source ids, index batches longest first under a progress bar).
        ``members`` models decode each batch together (averaging), each with its own caches, so the token
        budget is shared among them. Puts the model in eval mode; callers restore its training mode."""
        self.model.eval()
        conv = conventions(self.tokenizer, self.family, self.model.config)
        encoded = [source_ids(self.tokenizer, d, conv, self.max_source_len, self.prompt)[0] for d in dialogues]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        cut = token_batches(
            [len(encoded[i]) for i in order],
            self.batch_size or self.gen.batch_size,
            self.gen.batch_tokens and max(1, self.gen.batch_tokens // members),
            beams,
            new_tokens(self.gen, self.max_target_len),
        )
        batches = [[order[j] for j in b] for b in cut]
        return conv, encoded, tqdm(batches, desc=desc, disable=not progress, leave=False)

    @torch.no_grad()
    def __call__(
        self, dialogues, desc: str = "generate", progress: bool = True, processor=None, members: int = 1
    ) -> tuple[list[str], list[float]]:
        """Summaries and their mean token log-probability, in input order. ``processor(inputs, num_beams,
        width, keys)``, when given, makes a logits processor per batch whose output scores are already
        log-probabilities (model averaging over ``members`` models)."""
        dialogues = list(dialogues)
        if not dialogues:
            return [], []
        was_training = self.model.training
        kw = generation_kwargs(self.gen, self.max_target_len)
        conv, encoded, batches = self._batches(dialogues, kw["num_beams"], desc, progress, members)
        texts, lps = [""] * len(dialogues), [0.0] * len(dialogues)
        fits = None  # after an out-of-memory error: the most dialogues that then fitted in one call
        for batch in batches:
            for part in (batch[k : k + fits] for k in range(0, len(batch), fits)) if fits else [batch]:
                seqs = [encoded[i] for i in part]
                t, lp, _, fitted = _generate_halving(self.model, self.tokenizer, conv, seqs, kw, processor)
                fits = fitted if fitted < len(part) else fits
                for j, i in enumerate(part):
                    texts[i], lps[i] = t[j], lp[j]
        self.model.train(was_training)
        return texts, lps

    @torch.no_grad()
    def pool(
        self, dialogues, desc: str = "generate", progress: bool = True, raw_logprobs: bool | None = None
    ) -> list[list[tuple[str, float, int]]]:
        """``generation.candidates.k`` candidates per dialogue, each ``(summary, mean token log-prob, tokens)``,
        in input order; batched as :meth:`__call__` (the budget counts every beam of a call).

        - ``beam``: the k best hypotheses of one beam search of width max(num_beams, k); candidate 0 is what
          k = 1 gives whenever k <= num_beams.
        - ``diverse``: k groups of ``group_beams`` (default num_beams) beams with a Hamming diversity penalty;
          group 0 is the plain beam search, so candidate 0 is what k = 1 gives.
        - ``sample``: candidate 0 is the k = 1 output, then k - 1 samples (temperature, top-p, epsilon)
          seeded per batch by ``candidates.seed``: the same params and data give the same pool.

        Log-probs (k > 1): every candidate's mean token log-prob under the raw model (before length penalty,
        temperature, top-p or diversity penalties), so candidates of every method compare. ``raw_logprobs``
        False: the beam search's own scores instead (what k = 1 stores), which spares keeping every step's
        logits (a fifth of a beam-8 pool's time on DialogSum): MBR decoding compares one beam search's
        hypotheses only."""
        dialogues = list(dialogues)
        if not dialogues:
            return []
        cand, kw = self.gen.candidates, generation_kwargs(self.gen, self.max_target_len)
        k, nb = cand.k, kw["num_beams"]
        raw = k > 1 if raw_logprobs is None else raw_logprobs
        group_beams = int(cand.group_beams or nb)
        beams = {"beam": max(nb, k), "diverse": group_beams, "sample": max(nb, k - 1)}[cand.method]
        was_training = self.model.training
        conv, encoded, batches = self._batches(dialogues, beams, desc, progress)
        pool: list[list[tuple[str, float, int]]] = [[] for _ in dialogues]

        def run(batch, kw_call, per_input, processor=None):
            # every candidate of a pool is scored alike: the raw model's mean token log-prob
            seqs, kw_call = [encoded[i] for i in batch], {**kw_call, "raw_logprobs": raw}
            texts, lps, lens, _ = _generate_halving(
                self.model, self.tokenizer, conv, seqs, kw_call, processor, list(batch)
            )
            for j, i in enumerate(batch):
                pool[i] += [(texts[r], lps[r], lens[r]) for r in range(j * per_input, (j + 1) * per_input)]
            return lens

        for number, batch in enumerate(batches):
            if k == 1:
                run(batch, kw, 1)
            elif cand.method == "beam":
                run(batch, {**kw, "num_beams": max(nb, k), "num_return_sequences": k}, k)
            elif cand.method == "sample":
                torch.manual_seed(int(cand.seed) * 1_000_003 + number)  # before candidate 0 (do_sample: true)
                run(batch, kw, 1)
                run(batch, _sampling_kwargs(kw, cand), k - 1)
            else:
                self._diverse_groups(batch, run, conv, group_beams)
        self.model.train(was_training)
        return pool

    def _diverse_groups(self, batch, run, conv, group_beams: int) -> None:
        """The ``diverse`` pool of one batch: k beam groups, each penalized by the tokens of the ones before."""
        cand, history = self.gen.candidates, {}
        start = None if conv.family == "causal" else 1
        for g in range(cand.k):

            def processor(inputs, num_beams, width, keys, g=g):
                first = width if start is None else start
                return _HammingDiversity(history, keys, g, cand.diversity_penalty, first, num_beams)

            lens = run(
                batch, {**generation_kwargs(self.gen, self.max_target_len), "num_beams": group_beams}, 1, processor
            )
            # an input whose search ended keeps being extended while others in its batch run: what its beams
            # "chose" after its own end is not part of its search and would make the pool depend on the
            # batching. Alone, its last token (position n - 1) is never recorded either (no call follows
            # it), so later groups see positions 0 .. n - 2 only, batched or not
            for i, n in zip(batch, lens):
                history[i][g] = history[i][g][: max(n - 1, 0)]

    def averaged(
        self, others: list["Summarizer"], weights, dialogues, desc: str = "averaged generate", progress: bool = True
    ) -> tuple[list[str], list[float]]:
        """:meth:`__call__` with ``others`` (the folds of one model, sharing this tokenizer): one beam search
        whose next-token log-probabilities are the ``weights``-weighted mean of all members'."""
        if not others:
            return self(dialogues, desc, progress)
        models = [o.model for o in others]
        for m in models:
            m.eval()

        def processor(inputs, num_beams, width, keys):
            return _AveragedLogProbs(models, list(weights), self.family, inputs, num_beams, width)

        return self(dialogues, desc, progress, processor=processor, members=1 + len(others))

    def views(self, fnames, dialogues, augmenter, desc: str = "generate", call=None) -> pd.DataFrame:
        """Summaries of every dialogue and of its TTA views [fname, view, summary, logprob], view summaries
        mapped back to the original speakers; with ``generation.candidates.k`` > 1, k rows per view [fname,
        view, candidate, summary, logprob, tokens] (see :meth:`pool`). Views are seeded by the fname alone
        (not the split), so every model x fold, and ``dialsum summarize --ensemble`` given the same rows,
        summarise the very same augmented inputs. ``call(inputs, desc)`` -> (texts, log-probs) replaces the
        plain call (``decoding.generate``: MBR)."""
        rows = []
        for fname, dialogue in zip(fnames, dialogues):
            rows.append((fname, "orig", dialogue, None))
            rows += [(fname, v.name, v.dialogue, v.inverse) for v in augmenter.views(fname, dialogue)]
        inputs = [r[2] for r in rows]
        if self.gen.candidates.k > 1:
            out = [
                (fname, view, c, inv(t) if inv else t, round(lp, 6), n)
                for (fname, view, _, inv), cands in zip(rows, self.pool(inputs, desc))
                for c, (t, lp, n) in enumerate(cands)
            ]
            return pd.DataFrame(out, columns=["fname", "view", "candidate", "summary", "logprob", "tokens"])
        texts, lps = (call or self)(inputs, desc)
        return pd.DataFrame(
            {
                "fname": [r[0] for r in rows],
                "view": [r[1] for r in rows],
                "summary": [inv(t) if inv else t for t, (_, _, _, inv) in zip(texts, rows)],
                "logprob": [round(x, 6) for x in lps],
            }
        )


def _sampling_kwargs(kw: dict, cand: Candidates) -> dict:
    """``generate`` arguments for a pool's k - 1 samples."""
    out = {
        **kw,
        "do_sample": True,
        "num_beams": 1,
        "num_return_sequences": cand.k - 1,
        "temperature": cand.temperature,
        "top_p": cand.top_p,
    }
    if cand.epsilon:
        out["epsilon_cutoff"] = cand.epsilon
    return out
