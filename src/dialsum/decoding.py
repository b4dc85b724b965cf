"""The decoding search: the generation settings, length caps and post-edits that score best on a trained
model's own held-out rows, found without re-training (stage decode@<model>; predict reads its choice).

Competition write-ups on DialogSum-ko gain more from decoding than from training (length_penalty 1.0 -> 0.5:
+11 points; beams, repetition penalties and trimming unfinished sentences on an untouched SOLAR QLoRA: +7).
Each trial decodes the same out-of-fold rows (dev rows for fold ``full``) with the fold models already
trained and scores them with the run's own :class:`~dialsum.metrics.Scorer`. Trial 0 is the settings
params.yaml already has, so the chosen settings never score below them on the searched rows.

- length control ``quantile``: per-dialogue ``min/max_new_tokens`` from the training split, by bins of source
  length: the summaries' lower and upper ``decode.quantile`` in tokens of the dialogue's own bin;
- post-edits: ``trim_unfinished`` (a summary cut by the length limit loses its unfinished last sentence),
  ``drop_fillers`` (standalone filler words), ``drop_repeats`` (a sentence or clause said again);
- MBR decoding (``generation.mbr: k``): the consensus of a beam search's k best hypotheses, compared in the
  run's metric tokens (the cohort winner of DialogSum-ko used MBR; on DialogSum the consensus of a beam-16
  n-best gained +.034 rouge_sum on test over the top beam, BENCHMARKS.md "Candidate pools").

Everything that writes summaries with a trained model (predict, model averaging, ``dialsum summarize``, the
search, tuning trials) calls the functions here, so a setting means the same thing in all of them, but for
MBR under model averaging (its one beam search keeps the top beam of the chosen width).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .metrics import CachedTokenizer, Scorer, consensus_scores, kiwi, tag_spans
from .params import DECODE_GENERATION_KEYS, POST_EDITS, Candidates, Decode, Generation, Params

log = logging.getLogger(__name__)

# a sentence's stop (Latin, ideographic), with the quotes and brackets that may close after it
_END = re.compile(r"[.!?。][\"'”’)\]」』]*(?=\s|$)")
# kiwipiepy's tags that finish a text: a final ending (했다, 해요, 확인함), a stop, a closing quote or bracket,
# a nominalising ending (확인함 as 하 + ㅁ)
_DONE = ("EF", "SF", "SSC", "ETN")
# interjections only: 그 (that), 저 (I, that) and 뭐 (what) are words too, and were deleted with them
_FILLERS = {"음", "어", "아", "음.", "어.", "음,", "어,", "아,", "um", "uh", "er", "hmm", "um,", "uh,"}


@dataclass(frozen=True)
class Settings:
    """One decoding choice: ``generation`` keys over params' generation section, the length control, the
    post-edits switched on."""

    generation: dict = field(default_factory=dict)
    length_control: str = "none"
    post_edits: tuple[str, ...] = ()

    @classmethod
    def from_choice(cls, choice: dict) -> "Settings":
        gen = {k: v for k, v in choice.items() if k in DECODE_GENERATION_KEYS}
        edits = tuple(e for e in POST_EDITS if choice.get(e))
        return cls(gen, choice.get("length_control", "none"), edits)

    def as_dict(self) -> dict:
        return {
            "generation": dict(self.generation),
            "length_control": self.length_control,
            "post_edits": list(self.post_edits),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        return cls(dict(d.get("generation") or {}), d.get("length_control", "none"), tuple(d.get("post_edits") or ()))

    def generation_section(self, base: Generation) -> Generation:
        from pydantic import ValidationError

        try:
            return Generation.model_validate({**base.model_dump(), **self.generation})
        except ValidationError as e:  # a stored choice that params.yaml has since made invalid: one line
            why = e.errors(include_url=False)[0]["msg"]
            raise ValueError(f"decoding choice {self.generation} does not fit params' generation: {why}") from None


# ------------------------------------------------------------------------------------------------ post-edits
def trim_unfinished(text: str) -> str:
    """Drop an unfinished last sentence when an earlier one ended (a summary stopped by the length limit).

    Sentences end at a stop (``.``, ``!``, ``?``, ``。``, closing quotes after it) or where kiwipiepy's Korean
    analysis ends one without a stop (``예약했다 그리고``). A text is finished when it ends at a stop or its last
    morpheme finishes a sentence. A word that merely ends in 다/요/음 (다음, 필요, 모임, 다 같이) ends nothing:
    before session 28 each one did, and ``다음 주에 여행을`` was cut to ``다음``."""
    text = text.rstrip()
    sents = kiwi().tokenize(text, split_sents=True, pretokenized=tag_spans(text)) if text else []
    stops = [m.end() for m in _END.finditer(text)]
    if not sents or sents[-1][-1].tag in _DONE or (stops and stops[-1] == len(text)):
        return text
    cuts = [c for c in stops + [s[-1].start + s[-1].len for s in sents[:-1]] if c < len(text)]
    return text[: max(cuts)].rstrip() if cuts else text


def drop_fillers(text: str) -> str:
    return " ".join(w for w in text.split() if w.lower() not in _FILLERS)


def drop_repeats(text: str) -> str:
    """Drop a sentence or comma-clause that repeats an earlier one word for word (spaces and case aside)."""
    pieces = re.split(r"(?<=[.!?,。])\s+", text.strip())
    seen, kept = set(), []
    for piece in pieces:
        key = re.sub(r"[\s.!?,。]+", " ", piece).strip().lower()
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(piece)
    out = " ".join(kept)
    return out[:-1] + "." if out.endswith(",") and text.rstrip().endswith(".") else out


EDITS = {"trim_unfinished": trim_unfinished, "drop_fillers": drop_fillers, "drop_repeats": drop_repeats}


def post_edit(texts, edits) -> list[str]:
    out = list(texts)
    for name in POST_EDITS:  # a fixed order, whatever order the settings list them in
        if name in edits:
            out = [EDITS[name](t) for t in out]
    return out


# ------------------------------------------------------------------------------------------------ MBR
def consensus_pick(texts, logprobs, tokens: CachedTokenizer) -> int:
    """The index of the candidate with the highest mean ROUGE-1/2 F1 to the other candidates (minimum Bayes
    risk with ROUGE as the utility and the candidates as samples of the model); a tie goes to the higher
    log-prob, then to the earlier (higher-ranked) candidate. The ensemble's ``majority_vote`` ranks alike."""
    s = np.round(consensus_scores(list(texts), tokens), 9)
    top = np.flatnonzero(s == s.max())
    if len(top) > 1:
        lp = np.asarray(logprobs, dtype=float)[top]
        top = top[lp == lp.max()]
    return int(top[0])


def mbr_beams(num_beams: int, mbr: int) -> int:
    """The beam width a decode runs: under ``generation.mbr`` k >= 2, :func:`generate`'s k-best beam search
    (``Summarizer.pool``, method ``beam``) is max(num_beams, k) wide; otherwise num_beams."""
    return max(num_beams, mbr) if mbr > 1 else num_beams


def generate(summarizer, dialogues, tokens: CachedTokenizer | None, desc="generate", progress=True):
    """(texts, log-probs) in input order under the summarizer's generation section: its top beam, or with
    ``generation.mbr`` k >= 2 the :func:`consensus_pick` of a k-best beam search (with the chosen hypothesis's
    beam score, as the top beam's is stored)."""
    gen = summarizer.gen
    if gen.mbr < 2:
        return summarizer(dialogues, desc=desc, progress=progress)
    if tokens is None:
        raise ValueError("generation.mbr needs the metric's tokenizer (metrics.tokenize) to compare candidates")
    summarizer.gen = gen.model_copy(update={"candidates": Candidates(k=gen.mbr, method="beam"), "mbr": 0})
    try:
        pools = summarizer.pool(dialogues, desc=desc, progress=progress, raw_logprobs=False)
    finally:
        summarizer.gen = gen
    texts, lps = [], []
    for cands in pools:
        best = consensus_pick([c[0] for c in cands], [c[1] for c in cands], tokens)
        texts.append(cands[best][0])
        lps.append(cands[best][1])
    return texts, lps


# ------------------------------------------------------------------------------------------------ length control
@dataclass(frozen=True)
class LengthModel:
    """Summary-length caps by source-length bin: ``edges`` (source tokens) and per bin (min, max) new tokens."""

    edges: tuple[float, ...]
    limits: tuple[tuple[int, int], ...]

    @classmethod
    def fit(cls, tokenizer, dialogues, summaries, quantile: float, bins: int = 5) -> "LengthModel":
        src = np.array([len(tokenizer(d).input_ids) for d in dialogues])
        tgt = np.array([len(tokenizer(s).input_ids) for s in summaries])
        edges = tuple(np.unique(np.quantile(src, np.linspace(0, 1, bins + 1)[1:-1])).tolist())
        which = np.searchsorted(edges, src, side="right")
        limits = []
        for b in range(len(edges) + 1):
            t = tgt[which == b] if (which == b).any() else tgt
            lo, hi = np.quantile(t, 1 - quantile), np.quantile(t, quantile)
            limits.append((int(math.floor(lo * 0.8)), int(math.ceil(hi * 1.1)) + 2))
        return cls(edges, tuple(limits))

    @classmethod
    def fit_unseen(cls, tokenizer, train: pd.DataFrame, searched: list[pd.DataFrame], quantile: float) -> "LengthModel":
        """Caps from the train rows the search does not score: an out-of-fold row's own summary length must not
        set the cap it is then scored under (on the 400-row sample, a 200-row search is half of train)."""
        seen = set().union(*(set(df["fname"]) for df in searched)) if searched else set()
        kept = train[~train["fname"].isin(seen)]
        kept = kept if len(kept) else train  # every train row searched: nothing else to learn lengths from
        return cls.fit(tokenizer, kept["dialogue"], kept["summary"], quantile)

    def as_dict(self) -> dict:
        return {"edges": list(self.edges), "limits": [list(x) for x in self.limits]}

    @classmethod
    def from_dict(cls, d: dict) -> "LengthModel":
        return cls(tuple(d["edges"]), tuple(tuple(x) for x in d["limits"]))

    def bins(self, tokenizer, dialogues) -> list[int]:
        return np.searchsorted(self.edges, [len(tokenizer(d).input_ids) for d in dialogues], side="right").tolist()


def _by_length(summarizer, settings: Settings, lengths: LengthModel | None, dialogues):
    """(rows, generation section) groups: one group with the settings' generation, or one per length bin."""
    gen = settings.generation_section(summarizer.gen)
    if settings.length_control == "none" or lengths is None:
        return [(list(range(len(dialogues))), gen)]
    groups = {}
    for i, b in enumerate(lengths.bins(summarizer.tokenizer, dialogues)):
        groups.setdefault(b, []).append(i)
    out = []
    for b, rows in sorted(groups.items()):
        lo, hi = lengths.limits[b]
        out.append((rows, gen.model_copy(update={"min_new_tokens": min(lo, hi - 1), "max_new_tokens": hi})))
    return out


def _grouped(summarizer, settings: Settings, lengths: LengthModel | None, dialogues, call) -> tuple[list, list]:
    """(texts, log-probs) in input order: ``call(dialogues of a group)`` once per length group, with the
    summarizer's generation section set to the group's; post-edits applied to the texts."""
    dialogues, base = list(dialogues), summarizer.gen
    texts, lps = [""] * len(dialogues), [0.0] * len(dialogues)
    try:
        for rows, gen in _by_length(summarizer, settings, lengths, dialogues):
            summarizer.gen = gen
            out, lp = call([dialogues[i] for i in rows])
            for i, t, x in zip(rows, out, lp):
                texts[i], lps[i] = t, x
    finally:
        summarizer.gen = base
    return post_edit(texts, settings.post_edits), lps


def summarize(
    summarizer,
    dialogues,
    settings: Settings,
    lengths: LengthModel | None,
    desc="decode",
    progress=False,
    tokens: CachedTokenizer | None = None,
):
    """One summary per dialogue under ``settings`` (post-edits applied), in input order. ``tokens``: the
    metric's tokenizer, which MBR (``generation.mbr``) compares candidates in."""
    texts, _ = _grouped(
        summarizer, settings, lengths, dialogues, lambda ds: generate(summarizer, ds, tokens, desc, progress)
    )
    return texts


def averaged(members: list, weights, dialogues, settings: Settings, lengths: LengthModel | None, desc="averaged"):
    """:meth:`Summarizer.averaged` (one beam search on the fold models' weighted mean log-probs) under
    ``settings``: the first member's generation section per length group, post-edits applied. Returns
    (texts, log-probs) in input order."""
    head, rest = members[0], list(members[1:])
    if settings.generation_section(head.gen).mbr > 1:
        log.warning("generation.mbr is not applied to model averaging: the averaged beam search keeps its top beam")
    return _grouped(head, settings, lengths, dialogues, lambda ds: head.averaged(rest, weights, ds, desc=desc))


def views(
    summarizer,
    fnames,
    dialogues,
    augmenter,
    settings: Settings,
    lengths: LengthModel | None,
    desc="generate",
    tokens: CachedTokenizer | None = None,
):
    """:meth:`Summarizer.views` under ``settings``: each length bin decoded with its caps, post-edits applied,
    rows in the order the plain call gives (by input, then view); MBR (``generation.mbr``) compares in
    ``tokens``, the metric's tokenizer."""
    fnames, dialogues, base = list(fnames), list(dialogues), summarizer.gen

    def call(inputs, desc):
        return generate(summarizer, inputs, tokens, desc)

    if settings == Settings() or not dialogues:  # none: fold `full`'s empty out-of-fold split (no bins to concat)
        return summarizer.views(fnames, dialogues, augmenter, desc=desc, call=call)
    index = {f: i for i, f in enumerate(fnames)}  # fnames are unique within a split (data checks them)
    parts = []
    try:
        for rows, gen in _by_length(summarizer, settings, lengths, dialogues):
            summarizer.gen = gen
            out = summarizer.views(
                [fnames[i] for i in rows], [dialogues[i] for i in rows], augmenter, desc=desc, call=call
            )
            out["_row"] = out["fname"].map(index)
            parts.append(out)
    finally:
        summarizer.gen = base
    df = pd.concat(parts).sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)
    df["summary"] = post_edit(df["summary"], settings.post_edits)
    return df


# ------------------------------------------------------------------------------------------------ the search
def defaults(space: dict, gen: Generation) -> dict:
    """Trial 0: what params.yaml already decodes with (no length control, no post-edit)."""
    out = {}
    for key in space:
        if key in DECODE_GENERATION_KEYS:
            out[key] = getattr(gen, key)
        else:
            out[key] = "none" if key == "length_control" else False
    return out


def search(params: Params, summarizers: list, rows: list[pd.DataFrame], lengths: LengthModel | None) -> dict:
    """The Optuna study of ``params.decode`` over the fold models' ``summarizers``, each scored on its own
    ``rows`` (fname, dialogue, summary...). Returns the chosen settings, the default's and the best score,
    and every trial. Identical settings sampled twice are scored once."""
    import optuna

    from .data import references

    dec: Decode = params.decode
    scorer = Scorer.from_params(params)
    refs = [r for df in rows for r in references(df)]
    space = {k: list(v) for k, v in dec.space.items()}
    if params.generation.candidates.k > 1 and "mbr" in space:
        # the run keeps a pool for the ensemble to choose from: a second choice at decoding cannot apply
        log.info("decode.space.mbr left out: generation.candidates.k > 1 (the ensemble chooses among the pool)")
        space.pop("mbr")
    start = defaults(space, params.generation)
    for k, v in start.items():  # the defaults are always a choice, so trial 0 can be them
        if v not in space[k]:
            space[k] = [v, *space[k]]
    cache: dict = {}
    # what changes the decoded summaries -> the summaries before post-edits: a post-edit (or a length penalty
    # under greedy search, or num_beams up to mbr under MBR) costs no decode
    decoded: dict = {}

    def score(choice: dict) -> float:
        key = tuple(sorted((k, str(v)) for k, v in choice.items()))
        if key not in cache:
            s = Settings.from_choice(choice)
            gen = {**params.generation.model_dump(include=set(DECODE_GENERATION_KEYS)), **s.generation}
            if gen.get("mbr", 0) > 1:  # a num_beams narrower than the MBR beam is the same decode
                gen["num_beams"] = mbr_beams(gen.get("num_beams", 1), gen["mbr"])
            else:
                gen["mbr"] = 0  # 0 and 1 both keep the top beam
            if gen["num_beams"] == 1 and gen["mbr"] == 0:
                gen.pop("length_penalty", None)  # greedy: the length penalty only ranks beams, it changes no summary
            how = (tuple(sorted((k, str(v)) for k, v in gen.items())), s.length_control)
            if how not in decoded:
                bare = Settings(s.generation, s.length_control)
                decoded[how] = [
                    t
                    for summ, df in zip(summarizers, rows)
                    for t in summarize(summ, df["dialogue"], bare, lengths, tokens=scorer.tokenizer)
                ]
            cache[key] = scorer.score(post_edit(decoded[how], s.post_edits), refs)["rouge_sum"]
        return cache[key]

    def objective(trial) -> float:
        choice = {k: trial.suggest_categorical(k, choices) for k, choices in space.items()}
        return score(choice)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=dec.seed))
    study.enqueue_trial(start)
    study.optimize(objective, n_trials=max(1, dec.trials), show_progress_bar=True)
    best = study.best_trial
    trials = [{"number": t.number, "rouge_sum": round(t.value, 6), **t.params} for t in study.trials]
    chosen = Settings.from_choice(best.params)
    mbr = chosen.generation.get("mbr", params.generation.mbr)
    if mbr > 1:  # the width that was decoded (a narrower num_beams twin scored the same): what averaging runs
        beams = mbr_beams(chosen.generation.get("num_beams", params.generation.num_beams), mbr)
        chosen = Settings({**chosen.generation, "num_beams": beams}, chosen.length_control, chosen.post_edits)
    return {
        "settings": chosen.as_dict(),
        "default_rouge_sum": round(study.trials[0].value, 6),
        "best_rouge_sum": round(best.value, 6),
        "trials": trials,
    }


def load_choice(path: Path) -> tuple[Settings, LengthModel | None]:
    """decode@model's choice: the settings and the length caps they were searched with."""
    import yaml

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no decoding choice (run `dvc repro decode`)")
    d = yaml.safe_load(Path(path).read_text()) or {}
    return Settings.from_dict(d), LengthModel.from_dict(d["lengths"]) if d.get("lengths") else None


def choice_for(
    model: str, root: Path = Path("."), generation: dict | None = None, required: bool = True
) -> tuple[Settings, LengthModel | None]:
    """decode@``model``'s choice in the project at ``root`` (what predict decoded with), so that every later
    generation of the model (model averaging, ``dialsum summarize``) decodes as predict did; ``generation``
    keys (e.g. a command line's ``--num-beams``) win over the choice's. ``required`` False: the plain settings
    when the project has none (a model folder used outside its pipeline)."""
    path = Path(root) / paths.decoding(model)
    settings, lengths = load_choice(path) if required or path.exists() else (Settings(), None)
    if generation:
        settings = Settings({**settings.generation, **generation}, settings.length_control, settings.post_edits)
    return settings, lengths
