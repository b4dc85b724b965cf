"""MBR consensus speed: 25 candidates x 500 dialogues (issue 5's goal: <= 5 s).

Candidates are real DialogSum summaries: for each DialogSum test dialogue its three references plus 22 summaries of
other dialogues, so lengths and vocabulary are realistic. Run: python benchmarks/mbr_speed.py [--tokenize default]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dialsum import ensemble as E
from dialsum.metrics import CachedTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dialogsum/test.csv"))
ap.add_argument("--tokenize", default="default", choices=["default", "whitespace", "morpheme"])
ap.add_argument("--n-cands", type=int, default=25)
a = ap.parse_args()

dev = pd.read_csv(a.data).head(500)
pool = pd.concat([dev["summary1"], dev["summary2"], dev["summary3"]]).tolist()
rng = np.random.default_rng(0)
rows = []
for i, f in enumerate(dev["fname"]):
    own = [dev.loc[i, f"summary{k}"] for k in (1, 2, 3)]
    others = list(rng.choice(pool, a.n_cands - 3, replace=False))
    for j, s in enumerate(own + others):
        rows.append({"fname": f, "source": f"m{j % 5}/{j // 5}", "model": f"m{j % 5}", "view": "orig", "summary": s})
cands = pd.DataFrame(rows)
tok = CachedTokenizer(a.tokenize)
t0 = time.perf_counter()
groups = E.build_groups(cands, tok, list(dev["fname"]))
sel = E.select(groups, lambda g: E.weighted_consensus(g.sim, np.ones(len(g.cands))))
seconds = time.perf_counter() - t0
own_chosen = float(
    np.mean([s in set(dev.loc[i, ["summary1", "summary2", "summary3"]]) for i, s in enumerate(sel["summary"])])
)
print(
    f"MBR {a.n_cands} candidates x {len(dev)} dialogues ({a.tokenize} tokens): {seconds:.2f} s; "
    f"a reference chosen for {own_chosen:.0%} of dialogues"
)
print(
    json.dumps(
        {"mbr_seconds": round(seconds, 3), "tokenize": a.tokenize, "n_dialogues": len(dev), "n_candidates": a.n_cands}
    )
)
