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

from dialsum import data, ensemble as E
from dialsum.metrics import Scorer
from dialsum.report import paired_bootstrap


def cached(cache: Path, pool: str, split: str, fnames) -> pd.DataFrame:
    """The pool of ``fnames`` from the smallest cached CSV of ``split`` that holds them all."""
    want = set(fnames)
    for path in sorted(cache.glob(f"{pool}-{split}-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        df = pd.read_csv(path, dtype={"fname": str, "summary": str}, keep_default_na=False)
        if want <= set(df["fname"]):
            return df[df["fname"].isin(want)]
    raise SystemExit(f"{cache}: no cached {pool} pool of {split} with these {len(want)} dialogues")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--cache", default="/tmp/dialsum-pools")
    ap.add_argument("--pool", default="beam-16")
    ap.add_argument("--baseline", default="beam-4", help="its candidate 0 is the plain output")
    ap.add_argument("--dev-rows", type=int, default=300)
    ap.add_argument("--test-rows", type=int, default=300)
    ap.add_argument("--fit-rows", type=int, nargs="+", default=[300, 1000, 2000])
    ap.add_argument("--variants", action="store_true", help="also centered targets, a larger regressor, gap columns")
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
    groups, targets, X, refs = {}, {}, {}, {}
    for s, f in frames.items():
        df = cached(cache, a.pool, s, f["fname"]).assign(source=f"m/{a.pool}", model="m", view="orig")
        refs[s] = list(data.references(f))
        groups[s] = E.build_groups(df, scorer.tokenizer, list(f["fname"]), dict(zip(f["fname"], f["dialogue"])))
        targets[s] = E.candidate_targets(groups[s], dict(zip(f["fname"], refs[s])), scorer)
        X[s] = [E.candidate_features(g, ["m"], {}, scorer.tokenizer) for g in groups[s]]
    base = {}
    for s in ("dev", "test"):
        plain = cached(cache, a.baseline, s, frames[s]["fname"]).query("candidate == 0").set_index("fname")["summary"]
        base[s] = scorer.per_row([plain[f] for f in frames[s]["fname"]], refs[s]).sum(axis=1)

    ncol = X["train"][0].shape[1]
    length_cols = [ncol - len(E.VIEW_TYPES) - 2, ncol - len(E.VIEW_TYPES) - 1]  # just before the view one-hots
    every = list(range(ncol))
    without = [c for c in every if c not in length_cols]

    def gaps(x):  # each pool-relative column as its distance to the pool's best and its rank there
        cons, lp, length = x[:, 4], x[:, 5], x[:, 2]
        rank = (-cons).argsort(kind="stable").argsort() / max(len(cons) - 1, 1)
        return np.column_stack([x, cons - cons.max(), rank, lp - lp.max(), length - np.median(length)])

    def fit_and_score(n, cols=every, centered=False, big=False, transform=None):
        fx = transform or (lambda x: x[:, cols])
        reg = GradientBoostingRegressor(
            n_estimators=400 if big else 150, max_depth=4 if big else 3, learning_rate=0.05, random_state=0
        )
        y = [t - (t.mean() if centered else 0.0) for t in targets["train"][:n]]
        t0 = time.perf_counter()
        reg.fit(np.concatenate([fx(x) for x in X["train"][:n]]), np.concatenate(y))
        per = {"fit_seconds": round(time.perf_counter() - t0, 1)}
        for s in ("dev", "test"):
            chosen = [g.cands["summary"].iloc[int(np.argmax(reg.predict(fx(x))))] for g, x in zip(groups[s], X[s])]
            per[s] = scorer.per_row(chosen, refs[s]).sum(axis=1)
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
    if a.json:
        Path(a.json).write_text(json.dumps({"pool": a.pool, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
