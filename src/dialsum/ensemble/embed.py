"""``stacking_features: [embed]``: what a candidate means rather than which words it shares. A sentence encoder
(``ensemble.embed_backbone``, by default the packaged all-MiniLM-L6-v2; for Korean a Korean sentence encoder
such as ``jhgan/ko-sroberta-multitask``) embeds each dialogue and each candidate once; stacking gets each
candidate's cosine to its dialogue and to the mean of its pool's other candidates (a consensus by meaning, where
the MBR column counts shared n-grams), each with its rank and its gap to the pool's best. Nothing is fitted and
no reference is read, so the columns need no cross-fitting. The encoder reads at most its own
``max_seq_length`` tokens (256 for MiniLM): a longer dialogue is embedded by its beginning."""

from __future__ import annotations

import logging

import numpy as np

from .pools import Group

log = logging.getLogger(__package__)

_ENCODERS: dict[str, "Embeddings"] = {}  # one encoder per backbone and process: auto scores stacking many times


class Embeddings:
    """Unit-length embeddings of texts, each text encoded once (``prime`` encodes many in one call)."""

    def __init__(self, backbone: str, trust_remote_code: bool = False):
        from sentence_transformers import SentenceTransformer

        from ..models import resolve_checkpoint

        self.backbone = backbone
        try:
            self.model = SentenceTransformer(str(resolve_checkpoint(backbone)), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            from ..params import ParamsError

            raise ParamsError(
                f"params.yaml: ensemble.embed_backbone {backbone!r} cannot be loaded "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            ) from None
        self.vectors: dict[str, np.ndarray] = {}

    def prime(self, texts, progress: bool = False) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if not todo:
            return
        # encode sorts by length before batching: a batch holds texts of about one length, 32 at most
        out = self.model.encode(
            todo, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
        )
        # rounded: a text's vector moves by ~1e-7 with the batch it was encoded in (padding), and the stage and
        # `dialsum summarize --ensemble` encode different batches; the columns must be the same in both
        self.vectors.update(zip(todo, np.round(out.astype(np.float64), 5)))

    def __call__(self, texts) -> np.ndarray:
        texts = list(texts)
        self.prime(texts)
        return np.stack([self.vectors[t] for t in texts])


def embeddings(backbone: str) -> Embeddings:
    if backbone not in _ENCODERS:
        _ENCODERS[backbone] = Embeddings(backbone)
    return _ENCODERS[backbone]


def prime(emb: Embeddings, groups: list[Group]) -> None:
    """Every dialogue and candidate of ``groups`` in one pass, with a progress bar when there are many."""
    texts = [g.dialogue for g in groups] + [t for g in groups for t in g.cands["summary"]]
    log.info("embedding %d texts with %s", len(set(texts) - set(emb.vectors)), emb.backbone)
    emb.prime(texts, progress=len(texts) > 2000)


def embed_columns(g: Group, emb: Embeddings) -> np.ndarray:
    """Six columns per candidate: cosine to the dialogue, its rank in the pool (0 = nearest) and its gap to the
    pool's nearest; cosine to the mean of the other candidates, its rank and its gap."""
    c = emb(g.cands["summary"])
    k = len(c)
    to_dialogue = c @ emb([g.dialogue])[0]
    others = (c.sum(axis=0, keepdims=True) - c) / max(k - 1, 1)
    norms = np.linalg.norm(others, axis=1)
    consensus = np.where(norms > 1e-9, np.einsum("ij,ij->i", c, others) / np.maximum(norms, 1e-9), 0.0)
    cols = []
    for v in (to_dialogue, consensus):
        v = v.astype(float)
        cols += [v, (-v).argsort(kind="stable").argsort() / max(k - 1, 1), v - v.max()]
    return np.column_stack(cols)
