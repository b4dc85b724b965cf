"""LEAD-N baseline: the first N utterances as the summary, scored exactly as the pipeline scores.

python benchmarks/lead_baseline.py data/processed/dev.csv --n 1 [--tokenize morpheme]
"""

import argparse
import json

import pandas as pd

from dialsum.data import references
from dialsum.metrics import Scorer

ap = argparse.ArgumentParser()
ap.add_argument("csv")
ap.add_argument("--n", type=int, default=1)
ap.add_argument("--tokenize", default="morpheme")
ap.add_argument("--multi-ref", default="max")
ap.add_argument("--rouge", default="rouge-score", choices=["rouge-score", "rouge"])  # metrics.rouge
ap.add_argument("--limit", type=int, default=0)
a = ap.parse_args()
df = pd.read_csv(a.csv, dtype=str, keep_default_na=False)
if a.limit:
    df = df.head(a.limit)
preds = [" ".join(d.split("\n")[: a.n]) for d in df["dialogue"]]
print(
    json.dumps(
        {"baseline": f"LEAD-{a.n}", **Scorer(a.tokenize, a.multi_ref, rouge=a.rouge).score(preds, references(df))}
    )
)
