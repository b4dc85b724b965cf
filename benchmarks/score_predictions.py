"""Score a predictions CSV against the references of a data CSV, exactly as the pipeline scores.

    python benchmarks/score_predictions.py predictions/minilm2minilm/full/test.csv \
        ../shared/data/dialogsum/test.csv --tokenize default

Rows are matched by ``fname``; a file with several rows per dialogue (TTA views of one source) is filtered
to ``--view`` (default ``orig``); an ensemble's file (one chosen row each) is scored as it is.
Test files with ``summary1..K`` are scored against all K references (``--multi-ref max``, the pipeline's
default). Also prints how many distinct summaries there are: a collapsed model writes one for every row.
"""

import argparse
import json
import sys

import pandas as pd

from dialsum.data import references
from dialsum.metrics import Scorer

ap = argparse.ArgumentParser()
ap.add_argument("predictions")
ap.add_argument("data")
ap.add_argument("--tokenize", default="morpheme")
ap.add_argument("--multi-ref", default="max")
ap.add_argument("--rouge", default="rouge-score", choices=["rouge-score", "rouge"])  # metrics.rouge
ap.add_argument("--view", default="orig")
a = ap.parse_args()
pred = pd.read_csv(a.predictions, dtype=str, keep_default_na=False)
if "view" in pred.columns and pred["fname"].duplicated().any():  # an ensemble's file has one row each
    pred = pred[pred["view"] == a.view]
data = pd.read_csv(a.data, dtype=str, keep_default_na=False)
missing = set(data["fname"]) - set(pred["fname"])
if missing:
    sys.exit(
        f"{a.predictions}: no summary for {len(missing)} of {len(data)} dialogues in {a.data} "
        f"(e.g. {sorted(missing)[0]})"
    )
summary = pred.drop_duplicates("fname").set_index("fname")["summary"]
preds = [summary[f] for f in data["fname"]]
scores = Scorer(a.tokenize, a.multi_ref, rouge=a.rouge).score(preds, references(data))
print(json.dumps({**scores, "distinct_summaries": len(set(preds))}))
