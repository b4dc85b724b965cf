"""The decoding search (decode@<model>) on a workspace's trained models, and what its choice is worth on dev.

    python benchmarks/decode_search.py [--trials 20] [--rows 200] [--models tiny-bart tiny-llama]

For each model: the search exactly as the stage runs it (``decoding.search`` on the first fold model's
out-of-fold rows, trial 0 = params' generation), its wall time, and then the first fold model on dev with
params' settings and with the choice: rouge_sum of each and the paired bootstrap 95 % interval of the gain
(2,000 resamples of the dialogues). Dev rows are never seen by the search. Prints a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    from dialsum import data, decoding, generation, paths
    from dialsum.metrics import Scorer
    from dialsum.params import load, typed
    from dialsum.report import paired_bootstrap
    from dialsum.tracking import seed_everything

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--models", nargs="*")
    a = ap.parse_args()
    raw = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    raw["decode"].update(trials=a.trials, rows=a.rows)
    params = typed(raw)
    seed_everything(params.seed)
    d = data.load_processed(ROOT / paths.PROCESSED)
    scorer = Scorer.from_params(params)
    refs = data.references(d["dev"])
    out = []
    for name in a.models or params.models:
        entry, fold = params.zoo[name], params.cv.folds[0]
        summ = generation.Summarizer.load(ROOT / paths.model_dir(name, fold), entry, params.generation)
        rows = d["train"][d["train"]["fold"] == fold].head(a.rows).reset_index(drop=True)
        lengths = decoding.LengthModel.fit(
            summ.tokenizer, d["train"]["dialogue"], d["train"]["summary"], params.decode.quantile
        )
        t = time.perf_counter()
        result = decoding.search(params, [summ], [rows], lengths)
        seconds = time.perf_counter() - t
        chosen = decoding.Settings.from_dict(result["settings"])
        base = scorer.per_row(decoding.summarize(summ, d["dev"]["dialogue"], decoding.Settings(), lengths), refs).sum(1)
        best = scorer.per_row(decoding.summarize(summ, d["dev"]["dialogue"], chosen, lengths), refs).sum(1)
        lo, hi = paired_bootstrap(best - base)
        out.append(
            {
                "model": f"{name}/{fold}",
                "search_rows": len(rows),
                "trials": a.trials,
                "search_s": round(seconds, 1),
                "oof_default": result["default_rouge_sum"],
                "oof_best": result["best_rouge_sum"],
                "dev_default": round(float(np.mean(base)), 4),
                "dev_chosen": round(float(np.mean(best)), 4),
                "dev_gain_ci": [round(lo, 4), round(hi, 4)],
                "chosen": result["settings"],
            }
        )
        print(json.dumps(out[-1], ensure_ascii=False))
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
