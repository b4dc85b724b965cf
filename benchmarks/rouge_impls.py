"""Both ROUGE implementations (metrics.rouge: rouge-score | rouge) side by side on extractive baselines:
does the ranking of LEAD-1 / LEAD-3 / first-N-words change between them?

python benchmarks/rouge_impls.py CSV [--tokenize morpheme] [--multi-ref mean] [--limit 0]

CSV has dialogue and summary (or summary1..K); last stdout line = JSON {baseline: {impl: scores}}.
"""

import argparse
import json

import pandas as pd

from dialsum.data import references
from dialsum.metrics import Scorer

ap = argparse.ArgumentParser()
ap.add_argument("csv")
ap.add_argument("--tokenize", default="morpheme")
ap.add_argument("--multi-ref", default="mean")
ap.add_argument("--limit", type=int, default=0)
a = ap.parse_args()
df = pd.read_csv(a.csv, dtype=str, keep_default_na=False)
if a.limit:
    df = df.head(a.limit)
refs = references(df)
baselines = {
    "LEAD-1": [d.split("\n")[0] for d in df["dialogue"]],
    "LEAD-3": [" ".join(d.split("\n")[:3]) for d in df["dialogue"]],
    "first-20-words": [" ".join(d.split()[:20]) for d in df["dialogue"]],
    "first-40-words": [" ".join(d.split()[:40]) for d in df["dialogue"]],
}
out = {}
for impl in ("rouge-score", "rouge"):
    scorer = Scorer(a.tokenize, a.multi_ref, rouge=impl)  # one per implementation: the token cache is shared
    for name, preds in baselines.items():
        s = scorer.score(preds, refs)
        out.setdefault(name, {})[impl] = {k: s[k] for k in ("rouge1", "rouge2", "rougeL", "rouge_sum")}
for impl in ("rouge-score", "rouge"):
    ranking = sorted(out, key=lambda b: -out[b][impl]["rouge_sum"])
    print(f"{impl:>12}: " + " > ".join(f"{b} ({out[b][impl]['rouge_sum'] * 100:.1f})" for b in ranking))
print(json.dumps(out))
