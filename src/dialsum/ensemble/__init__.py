"""Combining candidate summaries from models x folds x TTA views, one choice per dialogue.

Every strategy scores the candidates of one dialogue (every source x view x pool candidate) and takes the
best (ties: the higher model log-prob, then the first candidate in source order, so choices are
deterministic). ``auto`` (the default) chooses among the others and each fold model alone
(``single:<model>/<fold>``, scored on its own fold's out-of-fold rows: on dev and test a dialogue has a
candidate per model x fold, so "a model alone" must name the fold it uses) by their cross-fitted
out-of-fold score, a fold model winning ties (:func:`combine`); collapsed sources are left out before
(:func:`collapsed_sources`).

- ``majority_vote``: MBR consensus, each candidate's mean ROUGE-1/2 F1 to all candidates.
- ``rouge_weighted``: the same vote with each candidate's vote weighted by its source's out-of-fold ROUGE
  (or ``ensemble.weights``).
- ``blending``: per-model vote weights fitted on the out-of-fold rows (seeded search over the simplex,
  maximising the ROUGE of the selection against the OOF references), then applied to dev/test.
- ``stacking``: a reranker: a gradient-boosted regressor trained on out-of-fold candidates predicts each
  candidate's ROUGE from features that need no reference (:func:`candidate_features`); the argmax is chosen.
- ``rerank``: a cross-encoder over (dialogue, candidate) pairs trained on out-of-fold candidates to predict
  their ROUGE (:mod:`.rerank`); the argmax is chosen. ``auto`` does not consider it (it trains an encoder per
  cross-fitting part).
- ``averaging`` / ``weighted_avg`` average log-probabilities *during* generation (see
  :meth:`dialsum.generation.Summarizer.averaged`); across models with other tokenizers their outputs are
  combined here by ``majority_vote`` / ``rouge_weighted``.

Modules: :mod:`.pools` (a dialogue's candidates, similarities, MBR, the deterministic pick),
:mod:`.candidates` (the stored candidates, OOF scores, collapse check, targets), :mod:`.strategies` (the
registry of strategies), :mod:`.stacking` and :mod:`.blending` (their fits), :mod:`.fitting` (cross-fitting,
``auto``, :func:`combine` / :func:`choose`), :mod:`.averaging` (fold averaging for the average stage) and
:mod:`.stage` (the ensemble stage's :func:`run`, ``dialsum summarize --ensemble``'s :func:`summarize_new`).
Every public name is importable from here.
"""

from .averaging import average_folds, fold_members, fold_weights
from .blending import fit_blend
from .candidates import (
    candidate_targets,
    collapsed_sources,
    drop_collapsed,
    load_candidates,
    oof_rouge,
    read_candidates,
)
from .fitting import FITTED, choose, combine, crossfit, fit_set, options
from .embed import Embeddings, embed_columns, embeddings
from .rerank import Reranker, fit_reranker, rerank_columns, rerank_scores
from ..metrics import consensus_scores, similarity_matrix  # MBR's utility, shared with MBR decoding
from .pools import (
    Group,
    build_groups,
    mbr_select,
    pick,
    seeded_parts,
    select,
    vote_weights,
    weighted_consensus,
)
from .stacking import TAG, VIEW_TYPES, candidate_features, fit_ranker, fit_stacker, pool_ranks
from .stage import KEYS, run, summarize_new
from .strategies import REGISTRY, STRATEGIES, Fit, Strategy, fit_strategy, is_fitted

__all__ = [
    "Reranker",
    "fit_reranker",
    "Embeddings",
    "embed_columns",
    "embeddings",
    "rerank_columns",
    "rerank_scores",
    "FITTED",
    "KEYS",
    "REGISTRY",
    "STRATEGIES",
    "TAG",
    "VIEW_TYPES",
    "Fit",
    "Group",
    "Strategy",
    "average_folds",
    "build_groups",
    "candidate_features",
    "candidate_targets",
    "choose",
    "collapsed_sources",
    "combine",
    "consensus_scores",
    "crossfit",
    "drop_collapsed",
    "fit_blend",
    "fit_set",
    "fit_ranker",
    "fit_stacker",
    "fit_strategy",
    "fold_members",
    "fold_weights",
    "is_fitted",
    "load_candidates",
    "mbr_select",
    "oof_rouge",
    "options",
    "pick",
    "pool_ranks",
    "read_candidates",
    "run",
    "seeded_parts",
    "select",
    "similarity_matrix",
    "summarize_new",
    "vote_weights",
    "weighted_consensus",
]
