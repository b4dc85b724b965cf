"""``rerank``: a cross-encoder over (dialogue, candidate) pairs (``ensemble.rerank_backbone``, by default the
packaged MiniLM) with a one-output regression head, trained on the out-of-fold candidates to predict each
one's ROUGE against its references; a dialogue's candidates are then ranked by the prediction
(``rerank_encoder: bi``: a bi-encoder instead, :mod:`.biencoder`). Seeded,
length-sorted token-budget batches, CPU-deterministic. :func:`rerank_feature` offers its score (the bi-encoder: its cosines) to
``stacking``."""

from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ..params import Ensemble
from .biencoder import BiEncoder, padded
from .pools import Group, seeded_parts, training_rows
from .stacking import with_scores


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices in length order, cut so that a batch's padded size (count x its longest) stays within budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out, cur, longest = [], [], 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if cur and longest_if * (len(cur) + 1) > budget:
            out.append(cur)
            cur, longest_if = [], lengths[i]
        cur.append(i)
        longest = longest_if
    return out + ([cur] if cur else [])


class Reranker:
    def __init__(self, cfg: Ensemble, seed: int):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import resolve_checkpoint

        path = resolve_checkpoint(cfg.rerank_backbone)
        torch.manual_seed(seed)  # the new regression head's initial weights
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.cfg, self.seed = cfg, seed

    def _encode(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        # the candidate is what is being judged: the (longer) dialogue gives way when the pair is too long, and a
        # candidate longer than what is left of the dialogue is cut too (only_first raised on a rambling
        # candidate of a barely trained model longer than rerank_max_len: the ensemble stage died)
        enc = self.tok(
            [d for d, _ in pairs], [c for _, c in pairs], truncation="longest_first", max_length=self.cfg.rerank_max_len
        )
        return enc["input_ids"], enc.get("token_type_ids")

    def _tensors(self, ids, types, idx):
        x, mask = padded([ids[i] for i in idx], self.tok.pad_token_id or 0)
        out = {"input_ids": x, "attention_mask": mask}
        if types is not None:
            out["token_type_ids"] = padded([types[i] for i in idx], 0)[0]
        return out

    def fit(self, pairs: list[tuple[str, str]], y: np.ndarray) -> "Reranker":
        import torch

        ids, types = self._encode(pairs)
        batches = _batches([len(i) for i in ids], self.cfg.rerank_tokens)
        opt = torch.optim.AdamW(self.model.parameters(), lr=float(self.cfg.rerank_lr))
        rng = np.random.default_rng(self.seed)
        target = torch.tensor(np.asarray(y, dtype=np.float32))
        self.model.train()
        bar = tqdm(total=self.cfg.rerank_epochs * len(batches), desc=f"rerank: fit on {len(ids)} pairs", leave=False)
        for _ in range(self.cfg.rerank_epochs):
            for b in rng.permutation(len(batches)):
                bar.update()
                idx = batches[b]
                pred = self.model(**self._tensors(ids, types, idx)).logits.squeeze(-1)
                loss = torch.nn.functional.mse_loss(pred, target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        bar.close()
        self.model.eval()
        return self

    def score(self, g: Group) -> np.ndarray:
        return self.predict(_pairs(g))

    def columns(self, g: Group) -> np.ndarray:
        return with_scores(self.score(g))

    @staticmethod
    def mean_columns(rerankers: list["Reranker"], g: Group) -> np.ndarray:
        """A new pool's columns from several cross-encoders: of their mean score (the gap is taken after)."""
        return with_scores(np.mean([r.score(g) for r in rerankers], axis=0))

    def predict(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        ids, types = self._encode(pairs)
        out = np.zeros(len(ids))
        with torch.no_grad():
            batches = _batches([len(i) for i in ids], self.cfg.rerank_tokens)
            for idx in tqdm(batches, desc=f"rerank: score {len(ids)} pairs", leave=False, disable=len(batches) < 8):
                out[idx] = self.model(**self._tensors(ids, types, idx)).logits.squeeze(-1).double().numpy()
        return out


def _pairs(g: Group) -> list[tuple[str, str]]:
    return [(g.dialogue, s) for s in g.cands["summary"]]


def fit_reranker(groups: list[Group], targets: list[np.ndarray], cfg: Ensemble, seed: int) -> Reranker | BiEncoder:
    """A cross-encoder trained on ``groups``' candidates and their ``targets`` only (``rerank_pairs`` of each
    pool; ``rerank_target: centered`` regresses each target minus its pool's mean), or with ``rerank_encoder:
    bi`` a bi-encoder trained to order each pool (:mod:`.biencoder`)."""
    if cfg.rerank_encoder == "bi":
        return BiEncoder(cfg, seed).fit(groups, targets)
    pairs, y = [], []
    for g, t in zip(groups, targets):
        t = np.asarray(t, dtype=float)
        keep = training_rows(t, cfg.rerank_pairs)
        all_pairs = _pairs(g)
        pairs += [all_pairs[i] for i in keep]
        y.append(t[keep] - (t.mean() if cfg.rerank_target == "centered" else 0.0))
    return Reranker(cfg, seed).fit(pairs, np.concatenate(y))


def rerank_scores(reranker: Reranker | BiEncoder, g: Group) -> np.ndarray:
    return reranker.score(g)


def rerank_columns(reranker: Reranker | BiEncoder, g: Group) -> np.ndarray:
    """What one reranker adds to stacking's columns: the cross-encoder's score and its gap to the pool's best;
    the bi-encoder's tuned embeddings as ``[embed]``'s six columns (:meth:`BiEncoder.columns`)."""
    return reranker.columns(g)


def rerank_feature(
    groups: list[Group], targets: list[np.ndarray], cfg: Ensemble, seed: int, parts: int = 2
) -> tuple[list[np.ndarray], Callable[[Group], np.ndarray]]:
    """The reranker's :func:`rerank_columns` as features of a regressor fitted on ``groups``: out-of-sample there
    (each of ``parts`` seeded parts of the dialogues scored by a reranker fitted on the others: an in-sample score
    would look better than it will on new pools, and the regressor would trust it too much), and for new pools
    from the mean of those rerankers (of their scores for the cross-encoder, of their columns for the
    bi-encoder). Returns (the columns of each group, columns(new group))."""
    split = seeded_parts(len(groups), parts, seed)
    rerankers, columns = [], [None] * len(groups)
    for f in sorted(set(split.tolist())):
        fit_on = [i for i in range(len(groups)) if split[i] != f] or list(range(len(groups)))
        r = fit_reranker([groups[i] for i in fit_on], [targets[i] for i in fit_on], cfg, seed)
        rerankers.append(r)
        for i in np.flatnonzero(split == f):
            columns[i] = rerank_columns(r, groups[i])
    return columns, lambda g: type(rerankers[0]).mean_columns(rerankers, g)
