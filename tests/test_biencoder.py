"""``rerank_encoder: bi``: a bi-encoder fine-tuned with SimCLS's ranking loss to put each pool's better candidates
nearer their dialogue."""

import numpy as np
import torch

from conftest import spy_references
from dialsum import ensemble as E
from dialsum.ensemble.biencoder import BiEncoder, margin_loss, pool_batches
from dialsum.metrics import Scorer
from dialsum.params import Ensemble
from test_rerank import swapped_world

BI = {"rerank_encoder": "bi", "rerank_epochs": 6, "rerank_lr": 1e-4, "rerank_tokens": 1024}
RIGHT = np.array([f"{('a', 'b')[i % 2]}/0" for i in range(10)])


def test_bi_encoder_learns_which_speaker_states_the_summary():
    """swapped_world: both candidates are sentences of the dialogue, so an encoder's untrained cosine to the
    dialogue cannot tell them apart; fitted on 40 pools it picks the right one on new dialogues, and a refit
    with the same seed gives the same scores."""
    groups, refs = swapped_world(40, 0, "fit")
    targets = E.candidate_targets(groups, refs, Scorer("whitespace"))
    held, _ = swapped_world(10, 1, "held")
    cfg = Ensemble(**BI)
    untrained = E.select(held, BiEncoder(cfg, 0).score)["source"].to_numpy()
    bi = E.fit_reranker(groups, targets, cfg, 0)
    assert isinstance(bi, BiEncoder)
    chosen = E.select(held, lambda g: E.rerank_scores(bi, g))["source"].to_numpy()
    assert (chosen == RIGHT).mean() >= 0.9 > (untrained == RIGHT).mean()
    again = E.fit_reranker(groups, targets, cfg, 0)
    assert np.array_equal(E.rerank_scores(again, held[0]), E.rerank_scores(bi, held[0]))
    # as stacking's [rerank] columns: [embed]'s six from the tuned embeddings, the first its score
    cols = E.rerank_columns(bi, held[0])
    assert cols.shape == (2, 6) and np.allclose(cols[:, 0], E.rerank_scores(bi, held[0]))


def test_margin_loss_is_zero_only_when_the_order_holds_by_the_margin():
    d = torch.tensor([1.0, 0.0])
    c = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])  # cosines to d: .9, .5, .1
    assert float(margin_loss(d, c, np.array([0.8, 0.5, 0.2]), 0.01)) == 0.0
    # the best target has the worst score: it falls short of the other two by .8 + .01 and .4 + .02
    assert np.isclose(float(margin_loss(d, c, np.array([0.8, 0.5, 0.9]), 0.01)), 0.8 + 0.01 + 0.4 + 0.02)
    assert float(margin_loss(d, c, np.array([0.5, 0.5, 0.5]), 0.01)) == 0.0  # ties teach nothing
    # a margin the scores do not keep: .5 per rank apart is asked, the scores are .4 apart per rank
    assert np.isclose(float(margin_loss(d, c, np.array([0.8, 0.5, 0.2]), 0.5)), 0.2 + 0.1 + 0.1)


def test_margin_loss_puts_each_reference_above_every_candidate():
    d = torch.tensor([1.0, 0.0])
    c = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])  # cosines to d: .9, .5, .1, in target order
    t = np.array([0.8, 0.5, 0.2])
    r = torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # cosines .6 and 1: the first falls .3 short of the best candidate
    assert np.isclose(float(margin_loss(d, c, t, 0.01, r)), 0.3 / 2)  # averaged over the two references
    assert np.isclose(float(margin_loss(d, c, np.full(3, 0.5), 0.01, r[:1])), 0.3)  # ties: the reference alone
    assert float(margin_loss(d, c, t, 0.01, r[1:])) == 0.0


def test_the_reference_term_alone_teaches_it_what_the_summary_is():
    """With targets that tell the candidates of no pool apart, the ranking term has nothing to learn: only the
    fitting dialogues' references (``rerank_reference``) make it pick the right speaker on new dialogues. Each
    reference is the right summary reworded (its words reversed), so it is no candidate's text."""
    groups, refs = swapped_world(40, 0, "fit")
    for g in groups:
        g.references = tuple(" ".join(reversed(r.split())) for r in refs[g.fname])
        assert not set(g.references) & set(g.cands["summary"])
    ties = [np.full(len(g.cands), 0.5) for g in groups]
    held, _ = swapped_world(10, 1, "held")
    cfg = Ensemble(**BI)
    with_refs = E.select(held, E.fit_reranker(groups, ties, cfg, 0).score)["source"].to_numpy()
    without = E.select(held, E.fit_reranker(groups, ties, cfg.model_copy(update={"rerank_reference": False}), 0).score)
    assert (with_refs == RIGHT).mean() >= 0.9 > (without["source"].to_numpy() == RIGHT).mean()


def test_pool_batches_keep_to_the_token_budget():
    costs = [300, 500, 200, 900, 1500, 100]
    batches = pool_batches(costs, 1000, list(range(6)))
    assert [i for b in batches for i in b] == list(range(6))
    assert all(sum(costs[i] for i in b) <= 1000 or len(b) == 1 for b in batches)
    assert batches == [[0, 1, 2], [3], [4], [5]]


def test_bi_rerank_and_its_stacking_feature_never_read_dev_or_test_references(monkeypatch):
    """Neither the targets (spied at the scorer) nor the reference term (spied at the loss: it reads
    ``Group.references``, which only the fitting groups get) see a dev or test reference."""
    from dialsum.ensemble import biencoder as B

    oof, oof_refs = swapped_world(24, 0, "oof")
    dev, dev_refs = swapped_world(4, 1, "dev")
    test, test_refs = swapped_world(4, 2, "test")
    scorer = Scorer("whitespace")
    seen = spy_references(monkeypatch, scorer)
    with_refs: list = []
    real_loss = B.margin_loss
    monkeypatch.setattr(B, "margin_loss", lambda *a: with_refs.append(len(a[4])) or real_loss(*a))
    fits: list = []  # {fname: references} of the groups of every bi-encoder fit
    real_fit = B.BiEncoder.fit
    monkeypatch.setattr(
        B.BiEncoder, "fit", lambda self, g, t: fits.append({x.fname: x.references for x in g}) or real_fit(self, g, t)
    )
    held_out = {r for refs in (dev_refs, test_refs) for x in refs.values() for r in x}
    for strategy, extra in (("rerank", {}), ("stacking", {"stacking_features": ["rerank"]})):
        out, info = E.combine(
            strategy,
            {**BI, "rerank_epochs": 1, **extra},
            ["a", "b"],
            {"dev": dev, "test": test},
            oof,
            oof_refs,
            "oof",
            {},
            scorer,
            0,
        )
        assert len(out["dev"]) == 4 and len(out["test"]) == 4
        assert info["fitted_on"] == {"oof_dialogues": 24, "oof_candidates": 48}
    assert seen and set(seen) <= {r for x in oof_refs.values() for r in x} and not (set(seen) & held_out)
    assert with_refs and min(with_refs) == 1  # every fitting pool put its reference above its candidates
    assert fits and all(refs == tuple(oof_refs[f]) for fit in fits for f, refs in fit.items())
    assert all(g.references == () for g in dev + test)
    # fold `full`: dev is what it learns from, cross-fitted; test still never carries a reference
    fits.clear()
    dev, dev_refs = swapped_world(6, 3, "fdev")
    for strategy, extra in (("rerank", {}), ("stacking", {"stacking_features": ["rerank"]})):
        out, info = E.combine(
            strategy,
            {**BI, "rerank_epochs": 1, "crossfit_folds": 3, **extra},
            ["a", "b"],
            {"dev": dev, "test": test},
            dev,
            dev_refs,
            "dev",
            {},
            scorer,
            0,
        )
        assert "crossfitted_on" in info and len(out["test"]) == 4
    assert fits and all(set(fit) <= set(dev_refs) for fit in fits)
    assert all(refs == tuple(dev_refs[f]) for fit in fits for f, refs in fit.items())
    assert any(len(fit) < len(dev) for fit in fits)  # the cross-fitted ones: each without its held-out dialogues
    assert all(g.references == () for g in test) and not (set(seen) & {r for x in test_refs.values() for r in x})
