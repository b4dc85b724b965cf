"""Do pools depend on how the dialogues are batched? Diverse-beam pools and plain beam output of one trained
model for the first N dev dialogues, with the default `generation.batch_tokens` and a small budget.

    python benchmarks/pool_batching.py --workspace /path/to/trained/workspace --model minilm2minilm --fold full
"""

import argparse
from pathlib import Path

import yaml

from dialsum import data, generation, models

ap = argparse.ArgumentParser()
ap.add_argument("--workspace", required=True)
ap.add_argument("--model", default="minilm2minilm")
ap.add_argument("--fold", default="full")
ap.add_argument("--rows", type=int, default=24)
ap.add_argument("--small-budget", type=int, default=3000)
a = ap.parse_args()
ws = Path(a.workspace)
params = yaml.safe_load((ws / "params.yaml").read_text())
entry, gen = params["zoo"][a.model], params["generation"]
model, tok, family = models.load_for_inference(ws / f"models/{a.model}/{a.fold}", entry)
tok.padding_side = "left"
dialogues = list(data.load_processed(ws / "data/processed")["dev"].head(a.rows)["dialogue"])
n = entry["max_source_len"]
pool = {**gen, "candidates": {"k": 4, "method": "diverse", "group_beams": 2}}
x = generation.Summarizer(model, tok, family, pool, n, None, 64).pool(dialogues, progress=False)
small_pool = {**pool, "batch_tokens": a.small_budget}
y = generation.Summarizer(model, tok, family, small_pool, n, None, 64).pool(dialogues, progress=False)
same = sum([c[0] for c in u] == [c[0] for c in v] for u, v in zip(x, y))
print(f"diverse k=4: {same} of {len(x)} pools identical (batch_tokens {gen.get('batch_tokens')} vs {a.small_budget})")
p = generation.Summarizer(model, tok, family, gen, n, None, 64)(dialogues, progress=False)[0]
small = {**gen, "batch_tokens": a.small_budget}
q = generation.Summarizer(model, tok, family, small, n, None, 64)(dialogues, progress=False)[0]
print(f"plain beam: {sum(u == v for u, v in zip(p, q))} of {len(p)} summaries identical")
