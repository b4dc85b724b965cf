"""Dialogue transforms for test-time augmentation (views) and training-time augmentation.

Each transform returns the new dialogue and, when it can be undone, how to map a summary of the new
dialogue back to the original one:

- ``reorder``: permutes speaker *identities* (``#Person1#`` <-> ``#Person2#`` ...), nothing else. The turn
  order stays as it is: a dialogue's meaning lives in its order (a question before its answer), while which
  tag a speaker wears carries none, so the permuted dialogue says the same thing. The summary is mapped back
  by the inverse permutation, and Korean particles after a tag are re-chosen for the new number
  (``#Person2#는`` -> ``#Person1#은``). Invertible.
- ``mask``: drops a seeded fraction of fillers and interjections (음, 어, 아, 글쎄요, um, uh, well ...). The
  summary needs no mapping.
- ``synonym``: swaps words for synonyms from a table shipped with dialsum (Korean + English,
  ``resources/synonyms.tsv``), extendable with a user file of the same format. No mapping.
- ``paraphrase``: rewrites each utterance with a seq2seq paraphrase model (``tta.paraphrase_model``); the
  model must be configured and loadable, otherwise the stage stops with one line. No mapping.

Tags (speaker and PII masks) are never altered except by ``reorder``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import pandas as pd

from .data import TAG_RE, josa
from .params import AUGMENTATIONS, TTA, Augmentation, section

STRATEGIES = AUGMENTATIONS
PERSON_RE = re.compile(r"#Person(\d+)#")
# particle pairs (after a final consonant / after a vowel); longest first so 이랑 wins over 이
_PARTICLES = [("이랑", "랑"), ("으로", "로"), ("은", "는"), ("이", "가"), ("을", "를"), ("과", "와"), ("아", "야")]
_PARTICLE_RE = re.compile(
    r"(#Person\d+#)("
    + "|".join(sorted({p for pair in _PARTICLES for p in pair}, key=len, reverse=True))
    + r")(?![가-힣])"
)
# Fillers wherever they stand alone (interjections), and words that are fillers only as a discourse marker:
# opening an utterance or clause and set off by a comma ("Well, I ..." but not "doing well" or "I think so.";
# "뭐, 괜찮아" but not "뭐 먹을래?", "저, 실례지만" but not "저 사람").
FILLERS_KO = ["음", "음음", "흠", "어", "아", "에", "아이고", "어머", "글쎄요", "글쎄"]
MARKERS_KO = ["그", "저", "뭐", "저기", "있잖아"]
FILLERS_EN = ["um", "uh", "erm", "er", "hmm", "oh", "ah"]
MARKERS_EN = ["well", "like", "you know", "i mean", "so", "okay so"]


def _alternatives(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


# Only spaces after a dropped word are taken with it, never a line break: turns stay turns.
_FILLER_RE = re.compile(
    rf"(?<![\w#])(?:(?:{_alternatives(FILLERS_KO + FILLERS_EN)})(?:[,.…]+|(?=\s))"
    rf"|(?:(?<=[:,.!?…] )|^)(?:{_alternatives(MARKERS_KO + MARKERS_EN)})[,…]+)[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class View:
    """One augmented dialogue and the way back for its summary."""

    name: str
    dialogue: str
    inverse: Callable[[str], str] = field(default=lambda s: s)  # summary of the view -> of the original
    forward: Callable[[str], str] = field(default=lambda s: s)  # summary of the original -> of the view


def fix_particles(text: str) -> str:
    """Re-choose the particle after each ``#PersonN#`` for that number's reading (1 일 -> 은, 2 이 -> 는)."""

    def repl(m: re.Match) -> str:
        tag, particle = m.group(1), m.group(2)
        for with_final, without in _PARTICLES:
            if particle in (with_final, without):
                return josa(tag, f"{with_final}/{without}")
        return m.group(0)

    return _PARTICLE_RE.sub(repl, text)


def permute_speakers(text: str, mapping: dict[int, int]) -> str:
    out = PERSON_RE.sub(lambda m: f"#Person{mapping.get(int(m.group(1)), int(m.group(1)))}#", text)
    return fix_particles(out)


def reorder(dialogue: str, rng: random.Random) -> View:
    people = sorted({int(n) for n in PERSON_RE.findall(dialogue)})
    if len(people) < 2:
        return View("reorder", dialogue)
    perm = people[:]
    while perm == people:  # a real permutation (a derangement is not needed, any change will do)
        rng.shuffle(perm)
    mapping = dict(zip(people, perm))
    inverse = {v: k for k, v in mapping.items()}
    return View(
        "reorder",
        permute_speakers(dialogue, mapping),
        lambda s: permute_speakers(s, inverse),
        lambda s: permute_speakers(s, mapping),
    )


def mask(dialogue: str, rng: random.Random, fraction: float = 0.5) -> View:
    """Drop each filler with probability ``fraction`` (at least one when there is any)."""
    hits = list(_FILLER_RE.finditer(dialogue))
    if not hits:
        return View("mask", dialogue)
    k = max(1, round(fraction * len(hits)))
    drop = set(rng.sample(range(len(hits)), k))
    out, last = [], 0
    for i, m in enumerate(hits):
        if i in drop:
            out.append(dialogue[last : m.start()])
            last = m.end()
    out.append(dialogue[last:])
    text = "".join(out)
    # an utterance may start lower-case now; keep the speaker prefix tidy
    text = re.sub(r"(#Person\d+#:)[ \t]*", r"\1 ", text)
    return View("mask", text)


def load_synonyms(extra: str | Path | None = None) -> dict[str, list[str]]:
    """The shipped table plus a user's file (``word<TAB>syn|syn``; ``#`` comments); user entries win."""
    table: dict[str, list[str]] = {}
    texts = [resources.files("dialsum").joinpath("resources/synonyms.tsv").read_text(encoding="utf-8")]
    if extra:
        path = Path(extra)
        if not path.exists():
            from .params import ParamsError

            raise ParamsError(f"synonym table {path}: file not found")
        texts.append(path.read_text(encoding="utf-8"))
    for text in texts:
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            word, _, syns = line.partition("\t")
            if syns.strip():
                table[word.strip()] = [s.strip() for s in syns.split("|") if s.strip()]
    return table


def synonym(dialogue: str, rng: random.Random, table: dict[str, list[str]], fraction: float = 0.3) -> View:
    """Replace a seeded ``fraction`` of the words found in ``table`` (whole words, outside tags)."""
    words = list(re.finditer(r"[^\s#,.!?]+|#[A-Za-z0-9]+#", dialogue))
    hits = [
        m for m in words if not TAG_RE.fullmatch(m.group(0)) and (m.group(0) in table or m.group(0).lower() in table)
    ]
    if not hits:
        return View("synonym", dialogue)
    k = max(1, round(fraction * len(hits)))
    chosen = sorted(rng.sample(range(len(hits)), k))
    out, last = [], 0
    for i in chosen:
        m = hits[i]
        w = m.group(0)
        syn = rng.choice(table.get(w) or table[w.lower()])
        if w[:1].isupper():
            syn = syn[:1].upper() + syn[1:]
        out += [dialogue[last : m.start()], syn]
        last = m.end()
    out.append(dialogue[last:])
    return View("synonym", "".join(out))


class Paraphraser:
    """Utterance-level paraphrases with a seq2seq model (a hub id or local folder). ``key``: the params section
    its errors name (``tta`` for test-time views, ``data.augmentation`` for training copies)."""

    MAX_TOKENS = 512  # a turn longer than this is cut (it was 128: long turns lost their end)

    def __init__(self, model: str | None, trust_remote_code: bool = False, key: str = "tta"):
        from .params import ParamsError

        if not model:
            raise ParamsError(
                f"params.yaml: {key}.strategies has paraphrase but {key}.paraphrase_model is not set "
                "(a seq2seq paraphrase model: hub id or local path)"
            )
        try:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            from .device import Device, placement

            # on this process's GPU when there is one: a paraphrase per utterance is a generate call each
            self.model = AutoModelForSeq2SeqLM.from_pretrained(
                model, trust_remote_code=trust_remote_code, **placement(Device.probe())
            ).eval()
        except (OSError, ValueError) as e:
            raise ParamsError(
                f"params.yaml: {key}.paraphrase_model {model!r} cannot be loaded "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            ) from None
        self.max_tokens = min(int(getattr(self.tok, "model_max_length", None) or 0) or self.MAX_TOKENS, self.MAX_TOKENS)
        # within the decoder's positions: a turn near 512 tokens would otherwise index past learned ones
        self.positions = getattr(self.model.config.get_text_config(decoder=True), "max_position_embeddings", None)

    def __call__(self, dialogue: str, rng: random.Random) -> View:
        import torch

        heads, bodies = [], []
        for line in dialogue.split("\n"):
            m = re.match(r"(#Person\d+#:\s*)(.*)", line)
            heads.append(m.group(1) if m else "")
            bodies.append(m.group(2) if m else line)
        texts = list(bodies)
        # a blank line has nothing to paraphrase: generated from an empty input it was invented text
        todo = [i for i, b in enumerate(bodies) if b.strip()]
        if todo:
            enc = self.tok(
                [bodies[i] for i in todo],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
            )
            enc = enc.to(self.model.device)
            with torch.no_grad():
                torch.manual_seed(rng.randrange(2**31))
                # room for a paraphrase somewhat longer than its turn, as in the summaries' length caps
                longest = int(enc["input_ids"].shape[1])
                room = longest + longest // 2 + 8
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    top_p=0.9,
                    max_new_tokens=min(room, self.positions - 2) if self.positions else room,
                )
            for i, t in zip(todo, self.tok.batch_decode(out, skip_special_tokens=True)):
                texts[i] = t.strip()
        return View("paraphrase", "\n".join(h + t for h, t in zip(heads, texts)))


class Augmenter:
    """``views(fname, dialogue)``: ``num_aug`` seeded variants per strategy, identical on every run."""

    def __init__(
        self,
        strategies: list[str],
        num_aug: int,
        seed: int,
        synonym_path: str | None = None,
        paraphrase_model: str | None = None,
        mask_fraction: float = 0.5,
        synonym_fraction: float = 0.3,
        key: str = "tta",
    ):
        self.strategies, self.num_aug, self.seed = list(strategies), num_aug, seed
        self.table = load_synonyms(synonym_path) if "synonym" in strategies else {}
        self.paraphraser = Paraphraser(paraphrase_model, key=key) if "paraphrase" in strategies else None
        self.mask_fraction, self.synonym_fraction = mask_fraction, synonym_fraction

    @classmethod
    def from_params(cls, cfg: dict | TTA, seed: int) -> "Augmenter":
        """From the ``tta`` section."""
        t = section(TTA, cfg, "tta")
        return cls(t.strategies, t.num_aug, seed, t.synonym_path, t.paraphrase_model)

    def transform(self, strategy: str, dialogue: str, rng: random.Random) -> View:
        if strategy == "reorder":
            return reorder(dialogue, rng)
        if strategy == "mask":
            return mask(dialogue, rng, self.mask_fraction)
        if strategy == "synonym":
            return synonym(dialogue, rng, self.table, self.synonym_fraction)
        if strategy == "paraphrase":
            return self.paraphraser(dialogue, rng)
        raise ValueError(f"unknown augmentation {strategy!r} (known: {', '.join(STRATEGIES)})")

    def views(self, key: str, dialogue: str) -> list[View]:
        """Variants of one dialogue; the RNG is seeded from (seed, key, strategy, i), so a row's views do not
        depend on which other rows are processed or in what order."""
        out, seen = [], {dialogue}
        for strategy in self.strategies:
            for i in range(self.num_aug):
                rng = random.Random(f"{self.seed}/{key}/{strategy}/{i}")
                v = self.transform(strategy, dialogue, rng)
                # A variant equal to the original or to an earlier one (two speakers have one permutation;
                # a dialogue without fillers has nothing to mask) would only repeat a candidate.
                if v.dialogue in seen:
                    continue
                seen.add(v.dialogue)
                v.name = f"{strategy}-{i}"
                out.append(v)
        return out


def augment_rows(train: pd.DataFrame, cfg: dict, seed: int) -> pd.DataFrame:
    """``data.augmentation``: ``factor`` transformed copies per strategy of every training row, with the
    summary carried over (speaker tags permuted along for ``reorder``). Each copy keeps its original's
    ``fold`` so that no fold ever trains on a copy of its own validation rows."""
    cols = ["fname", "orig_fname", "fold", "view", "dialogue", "summary"]
    a = section(Augmentation, cfg, "data.augmentation")
    if not a.strategies or not a.factor:
        return pd.DataFrame(columns=cols)
    aug = Augmenter(a.strategies, a.factor, seed, a.synonym_path, a.paraphrase_model, key="data.augmentation")
    rows = []
    for fname, dialogue, summary, fold in zip(train["fname"], train["dialogue"], train["summary"], train["fold"]):
        for v in aug.views(f"train/{fname}", dialogue):
            rows.append(
                {
                    "fname": f"{fname}#{v.name}",
                    "orig_fname": fname,
                    "fold": int(fold),
                    "view": v.name,
                    "dialogue": v.dialogue,
                    "summary": v.forward(summary),
                }
            )
    return pd.DataFrame(rows, columns=cols)
