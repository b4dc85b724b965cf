"""The decoding search (decode@<model>) on a workspace's trained models, and what its choice is worth on rows
the search never saw.

    python benchmarks/decode_search.py [--workspace .] [--trials 20] [--rows 200] [--models tiny-bart]
        [--eval-rows 0] [--each-alone] [--both-metrics]

For each model: the search exactly as the stage runs it (``decoding.search`` on the first fold model's
out-of-fold rows, or with fold ``full`` on the first ``--rows`` dev rows; trial 0 = params' generation), its
wall time, and then that fold model on the evaluation rows (dev for CV folds; test, scored against all its
references, for fold ``full``, whose search used dev) with params' settings and with the choice: rouge_sum of
each and the paired bootstrap 95 % interval of the gain (2,000 resamples of the dialogues). With
``--each-alone``, the length control alone, MBR alone (each ``mbr`` k of the space) and each post-edit alone
on top of params' settings (a post-edit edits the params' summaries: no generation); with ``--both-metrics``, every row
is also scored with the other ROUGE implementation (``metrics.rouge``: rouge-score | rouge). Prints a JSON
line per model.
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
    from dialsum.params import POST_EDITS, load, typed
    from dialsum.report import paired_bootstrap
    from dialsum.tracking import seed_everything

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=ROOT)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rows", type=int, default=200, help="rows the search scores (out-of-fold, or dev for `full`)")
    ap.add_argument("--eval-rows", type=int, default=0, help="first N evaluation rows (0 = all)")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--each-alone", action="store_true")
    ap.add_argument("--both-metrics", action="store_true")
    a = ap.parse_args()
    ws = a.workspace.resolve()
    raw = load(ws / "params.yaml").model_dump(exclude_unset=True)
    raw["decode"].update(trials=a.trials, rows=a.rows)
    params = typed(raw)
    seed_everything(params.seed)
    d = data.load_processed(ws / paths.PROCESSED)
    scorer = Scorer.from_params(params)
    other = None
    if a.both_metrics:
        m = params.metrics
        other = Scorer(m.tokenize, m.multi_ref, m.remove_tokens, "rouge" if m.rouge == "rouge-score" else "rouge-score")
    for name in a.models or params.models:
        entry, fold = params.zoo[name], params.cv.folds[0]
        summ = generation.Summarizer.load(ws / paths.model_dir(name, fold), entry, params.generation)
        if fold == "full":
            rows, split = d["dev"].head(a.rows).reset_index(drop=True), "test"
        else:
            rows, split = d["train"][d["train"]["fold"] == fold].head(a.rows).reset_index(drop=True), "dev"
        ev = d[split].head(a.eval_rows) if a.eval_rows else d[split]
        refs = data.references(ev)
        lengths = decoding.LengthModel.fit(
            summ.tokenizer, d["train"]["dialogue"], d["train"]["summary"], params.decode.quantile
        )
        t = time.perf_counter()
        result = decoding.search(params, [summ], [rows], lengths)
        seconds = time.perf_counter() - t
        chosen = decoding.Settings.from_dict(result["settings"])
        runs = {"params": decoding.Settings(), "chosen": chosen}
        if a.each_alone:
            runs["length_control"] = decoding.Settings(length_control="quantile")
            for k in sorted({int(v) for v in params.decode.space.get("mbr", []) if int(v) > 1}):
                runs[f"mbr_{k}"] = decoding.Settings({"mbr": k})
        texts, secs = {}, {}
        for k, s in runs.items():
            same = (s.generation_section(summ.gen), s.length_control, s.post_edits) == (summ.gen, "none", ())
            if k == "chosen" and same:  # the search kept params' own settings
                texts[k], secs[k] = texts["params"], secs["params"]
                continue
            t0 = time.perf_counter()
            texts[k] = decoding.summarize(summ, ev["dialogue"], s, lengths, tokens=scorer.tokenizer)
            secs[k] = round(time.perf_counter() - t0, 1)
        if a.each_alone:  # post-edits act on the decoded text: the params' summaries, edited
            for e in POST_EDITS:
                texts[e], secs[e] = decoding.post_edit(texts["params"], (e,)), 0.0
        rec = {
            "model": f"{name}/{fold}",
            "searched_on": f"{len(rows)} {'dev' if fold == 'full' else 'out-of-fold'} rows",
            "trials": a.trials,
            "search_s": round(seconds, 1),
            "search_default": result["default_rouge_sum"],
            "search_best": result["best_rouge_sum"],
            "chosen": result["settings"],
            "eval": f"{len(ev)} {split} rows",
            "metrics": {},
        }
        for label, sc in (("main", scorer), ("other", other)):
            if sc is None:
                continue
            per = {k: sc.per_row(v, refs).sum(1) for k, v in texts.items()}
            table = {}
            for k, v in per.items():
                lo, hi = paired_bootstrap(v - per["params"])
                table[k] = {
                    "rouge_sum": round(float(np.mean(v)), 4),
                    "gain": round(float(np.mean(v - per["params"])), 4),
                    "ci": [round(lo, 4), round(hi, 4)],
                    "decode_s": secs[k],
                }
            rec["metrics"][f"{sc.rouge}"] = table
        print(json.dumps(rec, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
