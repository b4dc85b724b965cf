"""The one ROUGE/BLEU implementation every stage uses (training's compute_metrics, predict, ensemble,
tuning, ``dialsum score``).

rouge-score does the ROUGE; we only hand it a tokenizer, because its default one deletes every non-ASCII
character (Korean scores 0). Modes (``metrics.tokenize``):

- ``morpheme``: kiwipiepy morphemes (the default for Korean);
- ``whitespace``: split on spaces, like the competition baseline;
- ``default``: rouge-score's own rule (lowercase, runs of ``[a-z0-9]``), extended to keep Hangul so that
  Korean is not deleted; on text without Hangul the tokens are exactly rouge-score's.

Speaker and PII tags (``#Person1#``, ``#PhoneNumber#``) are one token in every mode (in ``default``
rouge-score turns them into ``person1``). ``metrics.remove_tokens`` (model special tokens such as
``<s>``) are removed from predictions before scoring.

``metrics.rouge`` picks the arithmetic on those tokens: ``rouge-score`` (n-gram counts, sentence-level LCS)
or ``rouge``, the PyPI ``rouge`` 1.0.1 package the DialogSum-ko leaderboard scores with: it is handed the
tokens joined by spaces (as the competition feeds it space-joined morphemes), splits that text into
sentences at ".", counts n-gram *sets* and takes a summary-level (union) LCS for ROUGE-L. A prediction or
reference that leaves that package no sentence (no token, or only ".") scores 0 where the package would raise.

Corpus scores are the mean over dialogues of per-dialogue F1; with several references (``summary1..K``)
each metric takes the ``max`` or the ``mean`` over references, per dialogue (the leaderboard: ``mean``).
``rouge_sum`` = rouge1 + rouge2 + rougeL (x 100: the leaderboard's score). ``bleu`` is sacrebleu's corpus
BLEU on the same tokens, scaled to 0–1. See docs/scoring-leaderboard.md.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from rouge_score import rouge_scorer

from .data import TAG_RE
from .params import MULTI_REF, ROUGE_IMPLS, TOKENIZE_MODES, Metrics, Params, section

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Source dependence (the references' loss with another dialogue minus with their own, nats/token; training.py
# measures it at each evaluation): below this a model ignores its input (issue 33's tiny-bart: 0.008)
SOURCE_DEPENDENCE_MIN = 0.05
# rouge-score keeps runs of [a-z0-9] after lowercasing; we add Hangul syllables, compatibility and conjoining jamo.
_DEFAULT_RE = re.compile(r"[a-z0-9\uac00-\ud7a3\u3131-\u318e\u1100-\u11ff]+")


# A mode's revision goes up when dialsum changes the tokens it gives (2: session 28, speaker tags handed to
# kiwipiepy whole). Scores of different revisions are not comparable: a tuning study's name includes it
# (tuning.study_name), so trials scored before stay in a study of their own instead of competing with new ones.
TOKENIZER_REVISION = {"morpheme": 2}


@lru_cache(maxsize=1)
def kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


class CachedTokenizer:
    """A rouge-score tokenizer (has ``tokenize(text)``) that tokenizes each distinct text once."""

    def __init__(self, mode: str = "morpheme"):
        if mode not in TOKENIZE_MODES:
            raise ValueError(f"metrics.tokenize must be one of {', '.join(TOKENIZE_MODES)}; got {mode!r}")
        self.mode = mode
        self._cache: dict[str, tuple[str, ...]] = {}

    def tokenize(self, text: str) -> list[str]:
        toks = self._cache.get(text)
        if toks is None:
            toks = self._cache[text] = tuple(self._tokenize(text))
        return list(toks)

    def tokenize_many(self, texts: Iterable[str]) -> list[tuple[str, ...]]:
        """Batch form; kiwipiepy tokenizes the uncached texts in one call."""
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo and self.mode == "morpheme":
            for text, morphs in zip(todo, kiwi().tokenize(todo, pretokenized=tag_spans)):
                self._cache[text] = tuple(t.form for t in morphs)
        for t in todo:
            if t not in self._cache:
                self._cache[t] = tuple(self._tokenize(t))
        return [self._cache[t] for t in texts]

    def _tokenize(self, text: str) -> list[str]:
        if self.mode == "default":
            return _DEFAULT_RE.findall(text.lower())
        if self.mode == "whitespace":
            return text.split()
        return [t.form for t in kiwi().tokenize(text, pretokenized=tag_spans(text))]


def tag_spans(text: str) -> list[tuple[int, int, str]]:
    """Each ``#Tag#`` as a fixed proper noun for kiwipiepy: it stays one token, and the particle after it is read
    in context. Cut out of the text instead (before session 28), ``#Person1#는`` left ``는`` alone at the start of
    a piece, read as the verb 늘다 (``늘 ᆫ``): a made-up unigram and bigram in nearly every DialogSum-ko summary."""
    return [(m.start(), m.end(), "NNP") for m in TAG_RE.finditer(text)]


def strip_tokens(text: str, remove_tokens: Sequence[str]) -> str:
    for tok in remove_tokens:
        text = text.replace(tok, " ")
    return re.sub(r"[ \t]+", " ", text).strip()


class Scorer:
    """ROUGE-1/2/L F1 and BLEU on one tokenization; reuse one instance to share the token cache."""

    def __init__(
        self,
        tokenize: str = "morpheme",
        multi_ref: str = "max",
        remove_tokens: Sequence[str] = (),
        rouge: str = "rouge-score",
    ):
        if multi_ref not in MULTI_REF:
            raise ValueError(f"metrics.multi_ref must be one of {', '.join(MULTI_REF)}; got {multi_ref!r}")
        if rouge not in ROUGE_IMPLS:
            raise ValueError(f"metrics.rouge must be one of {', '.join(ROUGE_IMPLS)}; got {rouge!r}")
        self.tokenizer = CachedTokenizer(tokenize)
        self.multi_ref = multi_ref
        self.rouge = rouge
        self.remove_tokens = list(remove_tokens)
        self._rouge = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=self.tokenizer)

    @classmethod
    def from_params(cls, params: Params | dict) -> "Scorer":
        """From the ``metrics`` section of params (or of a params mapping, e.g. another revision's file)."""
        m = params.metrics if isinstance(params, Params) else section(Metrics, params.get("metrics"), "metrics")
        return cls(m.tokenize, m.multi_ref, m.remove_tokens, m.rouge)

    def _texts(self, preds: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
        # NFC on both sides: a decomposed reference (macOS-exported CSV) would share no token with a prediction
        preds = [unicodedata.normalize("NFC", strip_tokens(p, self.remove_tokens)) for p in preds]
        return preds, [[unicodedata.normalize("NFC", r) for r in rs] for rs in refs]

    def per_row(self, preds: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
        """Array (n, 3) of per-dialogue F1 for rouge1, rouge2, rougeL."""
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions but {len(refs)} reference rows")
        preds, refs = self._texts(preds, refs)
        self.tokenizer.tokenize_many(list(preds) + [r for rs in refs for r in rs])
        out = np.zeros((len(preds), len(ROUGE_TYPES)))
        agg = np.max if self.multi_ref == "max" else np.mean
        for i, rs in enumerate(refs):
            if not rs:
                raise ValueError(f"row {i + 1}: no reference summary")
        if self.rouge == "rouge":
            return self._per_row_package(preds, refs, agg)
        for i, (p, rs) in enumerate(zip(preds, refs)):
            s = [self._rouge.score(r, p) for r in rs]
            out[i] = [agg([x[t].fmeasure for x in s]) for t in ROUGE_TYPES]
        return out

    def _per_row_package(self, preds: list[str], refs: list[list[str]], agg) -> np.ndarray:
        from rouge import Rouge

        join = {t: " ".join(self.tokenizer.tokenize(t)) for t in list(preds) + [r for rs in refs for r in rs]}
        longest = max((len(s.split()) for t in join.values() for s in t.split(".")), default=0)
        package = Rouge(metrics=["rouge-1", "rouge-2", "rouge-l"], stats=["f"])
        out = np.zeros((len(preds), len(ROUGE_TYPES)))
        # the package rebuilds each LCS recursively, one frame per step: a long "."-free sentence (a degenerate
        # generation) would otherwise hit Python's recursion limit
        with _recursion_room(2 * longest + 100):
            for i, (p, rs) in enumerate(zip(preds, refs)):
                hyp = join[p]
                s = [
                    package.get_scores(hyp, join[r])[0] if _has_sentence(hyp) and _has_sentence(join[r]) else None
                    for r in rs
                ]
                out[i] = [agg([x[k]["f"] if x else 0.0 for x in s]) for k in ("rouge-1", "rouge-2", "rouge-l")]
        return out

    def bleu(self, preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
        import sacrebleu

        preds, refs = self._texts(preds, refs)
        hyps = [" ".join(self.tokenizer.tokenize(p)) for p in preds]
        k = max(len(rs) for rs in refs)
        # sacrebleu wants K equally long reference streams; a row with fewer refs repeats its first.
        streams = [
            [" ".join(self.tokenizer.tokenize(rs[j] if j < len(rs) else rs[0])) for rs in refs] for j in range(k)
        ]
        return sacrebleu.corpus_bleu(hyps, streams, tokenize="none").score / 100.0

    def score(self, preds: Sequence[str], refs: Sequence[Sequence[str]]) -> dict:
        if not preds:
            raise ValueError("nothing to score: 0 predictions")
        rows = self.per_row(preds, refs)
        out = {t: float(v) for t, v in zip(ROUGE_TYPES, rows.mean(axis=0))}
        out["rouge_sum"] = out["rouge1"] + out["rouge2"] + out["rougeL"]
        out["bleu"] = float(self.bleu(preds, refs))
        out["n"] = len(preds)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def _has_sentence(text: str) -> bool:
    """Whether the ``rouge`` package finds a sentence in ``text`` (it raises on none)."""
    return any(len(s) > 0 for s in text.split("."))


@contextmanager
def _recursion_room(depth: int):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, depth + 1000))  # 1000: room for the frames already on the stack
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def ngram_counts(tokens: Sequence[str], n: int):
    return rouge_scorer._create_ngrams(list(tokens), n)


def ngram_f1(target_counts, prediction_counts) -> float:
    """F1 of two n-gram Counters, with rouge-score's own arithmetic."""
    return rouge_scorer._score_ngrams(target_counts, prediction_counts).fmeasure


# ---- similarity between summaries: MBR's utility (the ensemble's majority_vote, MBR decoding)
# Each distinct text is tokenized once and its n-gram counts built once; a pair then costs a Counter intersection.
# ROUGE-L is left out on purpose: its LCS is quadratic in pure Python and ranks candidates almost as ROUGE-1/2 do.
def _overlap(a: dict, b: dict) -> int:
    if len(a) > len(b):
        a, b = b, a
    get = b.get
    return sum(min(c, get(k, 0)) for k, c in a.items())


def similarity_matrix(texts: Sequence[str], tokenizer: CachedTokenizer) -> np.ndarray:
    """Pairwise mean of ROUGE-1 and ROUGE-2 F1 (1 on the diagonal; 0 between two texts without a token).

    F1 = 2 * overlap / (|a| + |b|) on clipped n-gram counts (rouge-score's definition); each distinct text
    is counted once and duplicates share its row.
    """
    uniq = list(dict.fromkeys(texts))
    index = [uniq.index(t) for t in texts] if len(uniq) < len(texts) else list(range(len(texts)))
    toks = tokenizer.tokenize_many(uniq)
    grams = []
    for t in toks:
        g1, g2 = ngram_counts(t, 1), ngram_counts(t, 2)
        grams.append((g1, sum(g1.values()), g2, sum(g2.values())))
    m = len(uniq)
    u = np.eye(m)
    for i in range(m):
        a1, n1, a2, n2 = grams[i]
        for j in range(i + 1, m):
            b1, k1, b2, k2 = grams[j]
            f1 = 2 * _overlap(a1, b1) / (n1 + k1) if n1 + k1 else 0.0
            f2 = 2 * _overlap(a2, b2) / (n2 + k2) if n2 + k2 else 0.0
            u[i, j] = u[j, i] = (f1 + f2) / 2
    sim = u[np.ix_(index, index)]
    # two texts without a token share nothing (ROUGE gives them 0): as duplicates they agreed fully, and a vote
    # among a pool with two empty summaries chose an empty one
    empty = [i for i, k in enumerate(index) if grams[k][1] == 0]
    sim[empty, :] = 0.0
    sim[:, empty] = 0.0
    np.fill_diagonal(sim, 1.0)
    return sim


def consensus_scores(candidates: Sequence[str], tokenizer: CachedTokenizer) -> np.ndarray:
    """Mean ROUGE-1/2 F1 of each candidate against the *others* (1 candidate: 1.0)."""
    n = len(candidates)
    if n == 1:
        return np.ones(1)
    sim = similarity_matrix(candidates, tokenizer)
    return (sim.sum(axis=1) - 1.0) / (n - 1)
