"""A report-sized workspace from real data: DialogSum dev (500 dialogues) and N sources, to time the report
stage at its documented scale (`dialsum report --repo WS`).

The sources are real summaries of other kinds, not a trained model's: source k is the dialogue's first
k + 1 utterances with the speaker colon removed (LEAD-k style, so lengths grow with k and the diagnostics
have real work: foreign tags, length limit, repeats). With `--pool CSV` (a predictions CSV of a trained
model, e.g. a candidate pool) the first sources are its candidates 0..K-1 instead, where it has them. The
ensemble takes, per dialogue, the source with the highest consensus (MBR over the sources). Each source's
tokenizer is `--tokenizer` (default: the minilm2minilm stand-in's), so the length check loads and runs it.

    python benchmarks/report_speed.py --dev ../shared/data/dialogsum/dev.csv --sources 10 --out /tmp/report-ws
    python -m dialsum.cli report --repo /tmp/report-ws     # time this (BENCHMARKS.md "Reports")
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dialsum import ensemble as E
from dialsum.metrics import Scorer

TURN_RE = re.compile(r"^(#Person\d+#):\s*")


def lead(dialogue: str, k: int) -> str:
    turns = [TURN_RE.sub(r"\1 ", t).strip() for t in dialogue.split("\n") if t.strip()]
    return " ".join(turns[:k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev", required=True)
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--pool", default=None, help="a predictions CSV with fname, candidate, summary")
    ap.add_argument("--tokenizer", default="/tmp/ds22/models/minilm2minilm/init")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    dev = pd.read_csv(a.dev, dtype=str, keep_default_na=False)
    refs = [[r] for r in dev["summary"]]
    (out / "data/processed").mkdir(parents=True)
    dev.to_csv(out / "data/processed/dev.csv", index=False)
    pool = pd.read_csv(a.pool, dtype={"summary": str}, keep_default_na=False) if a.pool else None
    scorer = Scorer("default")
    names, frames, metrics = [], {}, {}
    for k in range(a.sources):
        summaries = [lead(d, k + 1) for d in dev["dialogue"]]
        name = f"lead{k + 1}"
        if pool is not None and k < pool["candidate"].nunique():
            got = pool[pool["candidate"] == k].set_index("fname")["summary"]
            summaries = [got.get(f, s) for f, s in zip(dev["fname"], summaries)]
            name = f"pool{k}"
        names.append(name)
        frames[name] = pd.DataFrame({"fname": dev["fname"], "view": "orig", "summary": summaries, "logprob": 0.0})
        folder = out / f"predictions/{name}/full"
        folder.mkdir(parents=True)
        frames[name].to_csv(folder / "dev.csv", index=False)
        s = scorer.score(summaries, refs)
        metrics[f"{name}/full"] = {k2: s[k2] for k2 in ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")}
        if Path(a.tokenizer).exists():
            shutil.copytree(
                a.tokenizer,
                out / f"models/{name}/init",
                ignore=lambda d, files: [f for f in files if f.endswith((".safetensors", ".bin"))],
            )
    cands = pd.concat([f.assign(source=f"{n}/full", model=n, candidate=0) for n, f in frames.items()])
    sel = E.mbr_select(cands, scorer.tokenizer, list(dev["fname"]))
    ens = sel[["fname", "summary", "source", "view", "candidate"]].assign(score=0.0)
    (out / "predictions/ensemble").mkdir(parents=True)
    ens.to_csv(out / "predictions/ensemble/dev.csv", index=False)
    e = scorer.score(list(ens["summary"]), refs)
    best = max(metrics, key=lambda n: metrics[n]["rouge_sum"])
    (out / "metrics").mkdir()
    (out / "metrics/ensemble.json").write_text(
        json.dumps(
            {
                **{k: e[k] for k in ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")},
                "strategy": "majority_vote",
                "sources": metrics,
                "best_single": best,
                "gain": e["rouge_sum"] - metrics[best]["rouge_sum"],
                "collapsed": {},
            },
            indent=1,
        )
    )
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    params.update(
        models=names,
        cv={**params["cv"], "folds": ["full"]},
        metrics={**params["metrics"], "tokenize": "default"},
        zoo={
            n: {"family": "seq2seq", "pretrained": f"models/{n}/init", "max_source_len": 384, "max_target_len": 64}
            for n in names
        },
    )
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    print(
        json.dumps(
            {
                "workspace": str(out),
                "dialogues": len(dev),
                "sources": len(names),
                "ensemble_rouge_sum": e["rouge_sum"],
                "mean_summary_words": round(
                    float(np.mean([len(s.split()) for f in frames.values() for s in f["summary"]])), 1
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
