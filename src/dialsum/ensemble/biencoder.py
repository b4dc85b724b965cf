"""``rerank_encoder: bi``: a sentence encoder fine-tuned so that, within each pool, a better candidate's
embedding lies nearer its dialogue's (SimCLS, Liu & Liu 2021). A candidate's score is the cosine of its mean-pooled
embedding to the dialogue's; the loss asks, for every pair of a pool's candidates ranked i < j by their targets,
``s_j - s_i + rerank_margin * (j - i) <= 0``, and with ``rerank_reference`` each of the dialogue's references
above every candidate (SimCLS's second term). Only the order within a pool is learnt, so ``rerank_target`` does
not apply. The dialogue is encoded once per pool and each candidate alone, so it costs a fraction of the
cross-encoder, which reads the dialogue again with every candidate (BENCHMARKS.md "Session 31")."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..params import Ensemble
from .embed import embed_columns
from .pools import Group, training_rows


def padded(rows: list[list[int]], pad: int):
    """Token id lists as one batch: the ids padded to the longest, and the attention mask."""
    import torch

    n = max(map(len, rows))
    return (
        torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
        torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]),
    )


def pool_batches(costs: list[int], budget: int, order: list[int]) -> list[list[int]]:
    """Consecutive runs of ``order`` (pool indices) whose summed ``costs`` (a pool's tokens) stay within budget;
    a pool over budget is a batch of its own."""
    out, cur, used = [], [], 0
    for i in order:
        if cur and used + costs[i] > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += costs[i]
    return out + ([cur] if cur else [])


def margin_loss(d, c, t: np.ndarray, margin: float, r=None):
    """SimCLS's ranking loss of one pool: dialogue embedding ``d``, candidate embeddings ``c``, targets ``t``;
    pairs with equal targets are left out. ``r`` (reference embeddings, one per row): each must score at
    least as high as every candidate; averaged over the references, so that a dialogue with three counts as
    much as one with one."""
    import torch

    order = np.argsort(-np.asarray(t, dtype=float), kind="stable")
    s, ts = (c @ d)[torch.as_tensor(order)], np.asarray(t, dtype=float)[order]
    i, j = np.triu_indices(len(ts), 1)
    keep = ts[i] - ts[j] > 1e-9
    loss = s.sum() * 0.0
    if keep.any():
        i, j = torch.as_tensor(i[keep]), torch.as_tensor(j[keep])
        loss = loss + torch.clamp(s[j] - s[i] + margin * (j - i).to(s.dtype), min=0).sum()
    if r is not None and len(r):
        loss = loss + torch.clamp(s[None, :] - (r @ d)[:, None], min=0).sum() / len(r)
    return loss


class BiEncoder:
    """Seeded, length-sorted token-budget batches, CPU-deterministic (the same fit and scores run to run)."""

    def __init__(self, cfg: Ensemble, seed: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ..models import resolve_checkpoint

        path = resolve_checkpoint(cfg.rerank_backbone)
        torch.manual_seed(seed)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path)
        self.model.eval()
        self.cfg, self.seed = cfg, seed

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(list(texts), truncation=True, max_length=self.cfg.rerank_max_len)["input_ids"]

    def _embed(self, ids: list[list[int]]):
        """Unit-length mean-pooled embeddings of token id lists, one padded batch."""
        import torch

        x, mask = padded(ids, self.tok.pad_token_id or 0)
        h = self.model(input_ids=x, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def fit(self, groups: list[Group], targets: list[np.ndarray]) -> "BiEncoder":
        import torch
        from transformers import get_linear_schedule_with_warmup

        # (dialogue ids, candidate ids, their targets, reference ids) per pool with something to learn: an order,
        # or references to put above its candidates (those rerank_pairs keeps, as the order term)
        pools = []
        for g, t in zip(groups, targets):
            t = np.asarray(t, dtype=float)
            keep = training_rows(t, self.cfg.rerank_pairs)
            refs = self._ids(g.references) if self.cfg.rerank_reference and g.references else []
            if (len(keep) > 1 and np.ptp(t[keep]) > 1e-9) or refs:
                pools.append((self._ids([g.dialogue])[0], self._ids(g.cands["summary"].iloc[keep]), t[keep], refs))
        if not pools:
            return self
        # a pool's padded size: its dialogue plus its candidates and references padded to the longest
        costs = [len(d) + (len(c) + len(r)) * max(len(x) for x in c + r) for d, c, _, r in pools]
        by_length = sorted(range(len(pools)), key=lambda i: (len(pools[i][0]), i))
        batches = pool_batches(costs, self.cfg.rerank_tokens, by_length)
        steps = self.cfg.rerank_epochs * len(batches)
        opt = torch.optim.AdamW(self.model.parameters(), lr=float(self.cfg.rerank_lr))
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)
        rng = np.random.default_rng(self.seed)
        self.model.train()
        bar = tqdm(total=steps, desc=f"rerank (bi-encoder): fit on {len(pools)} pools", leave=False)
        for _ in range(self.cfg.rerank_epochs):
            for b in rng.permutation(len(batches)):
                bar.update()
                idx = batches[b]
                d = self._embed([pools[i][0] for i in idx])
                c = self._embed([x for i in idx for x in pools[i][1] + pools[i][3]])
                loss, start = 0.0, 0
                for n, i in enumerate(idx):
                    k, m = len(pools[i][1]), len(pools[i][3])
                    cands, refs = c[start : start + k], c[start + k : start + k + m]
                    loss = loss + margin_loss(d[n], cands, pools[i][2], float(self.cfg.rerank_margin), refs)
                    start += k + m
                opt.zero_grad()
                (loss / len(idx)).backward()
                opt.step()
                sched.step()
        bar.close()
        self.model.eval()
        return self

    def __call__(self, texts) -> np.ndarray:
        """The tuned embeddings of ``texts``, one batch (a pool's candidates are always batched together, so
        their numbers are the same wherever they are scored); what ``embed_columns`` reads."""
        import torch

        with torch.no_grad():
            return self._embed(self._ids(list(texts))).double().numpy()

    def score(self, g: Group) -> np.ndarray:
        """Each candidate's cosine to its dialogue."""
        return self(g.cands["summary"]) @ self([g.dialogue])[0]

    def columns(self, g: Group) -> np.ndarray:
        """Stacking's columns: ``[embed]``'s six (cosine to the dialogue and to the pool's other candidates, each
        with its rank and gap) from the tuned embeddings."""
        return embed_columns(g, self)

    @staticmethod
    def mean_columns(encoders: list["BiEncoder"], g: Group) -> np.ndarray:
        return np.mean([e.columns(g) for e in encoders], axis=0)
