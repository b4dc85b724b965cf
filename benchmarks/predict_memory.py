"""RSS per generate batch across a predict-like run on real DialogSum (issue 21: the 24 GiB peak).

    python benchmarks/predict_memory.py --splits dev,test --views reorder,mask,synonym          # the OOM setting
    python benchmarks/predict_memory.py --splits dev --longest 200 --batch-size 64 --batch-tokens 0

Runs dialsum's own predict path (generation.Summarizer.views, TTA views included) with an *untrained*
minilm2minilm, so every summary runs to max_new_tokens (the worst case), and records after every
model.generate call: the batch's size and padded width, the process's current RSS and its peak so far
(VmRSS / VmHWM from /proc/self/status), and the bytes of the beam search's per-step score tensors.
Last stdout line: JSON with the per-batch rows and the totals.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DIALOGSUM = ROOT.parent / "shared" / "data" / "dialogsum"


def status_gib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--views", default="", help="TTA strategies, e.g. reorder,mask,synonym (num_aug 1)")
    ap.add_argument("--longest", type=int, default=0, help="only the N longest dialogues of each split")
    ap.add_argument("--batch-size", type=int, default=None, help="default: params.yaml generation.batch_size")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: params.yaml (0 = no token budget)")
    ap.add_argument("--num-beams", type=int, default=None)
    ap.add_argument("--max-batches", type=int, default=0, help="stop after N batches (0 = all)")
    args = ap.parse_args(argv)

    from dialsum import generation, models
    from dialsum.data import clean_text
    from dialsum.params import load
    from dialsum.tta import Augmenter

    params = load(ROOT / "params.yaml")
    gen = params.generation.model_dump()
    if args.batch_size is not None:
        gen["batch_size"] = args.batch_size
    if args.batch_tokens is not None:
        gen["batch_tokens"] = args.batch_tokens or None
    if args.num_beams is not None:
        gen["num_beams"] = args.num_beams
    entry = params.zoo["minilm2minilm"]
    init = Path(tempfile.mkdtemp(prefix="minilm-untrained-"))
    models.build_init(entry, [], init, seed=0)
    model, tok, family = models.load_for_inference(init, entry)
    tok.padding_side = "left"
    vocab = model.config.decoder.vocab_size
    rows, stop = [], [False]
    real_generate = model.generate

    def generate(*a, **kw):
        if stop[0]:
            raise StopIteration
        t = time.perf_counter()
        out = real_generate(*a, **kw)
        n, width = kw["input_ids"].shape
        steps = len(out.scores) if getattr(out, "scores", None) else 0
        rows.append(
            {
                "batch": len(rows),
                "dialogues": n,
                "width": width,
                "seconds": round(time.perf_counter() - t, 2),
                "rss_GiB": round(status_gib("VmRSS"), 3),
                "peak_GiB": round(status_gib("VmHWM"), 3),
                "scores_GiB": round(steps * n * kw.get("num_beams", 1) * vocab * 4 / 2**30, 3),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        stop[0] = bool(args.max_batches) and len(rows) >= args.max_batches
        return out

    model.generate = generate
    tta = dict(
        params.tta.model_dump(), strategies=[v for v in args.views.split(",") if v], num_aug=1 if args.views else 0
    )
    augmenter = Augmenter.from_params(tta, params.seed)
    start = time.perf_counter()
    for split in args.splits.split(","):
        df = pd.read_csv(DIALOGSUM / f"{split}.csv", dtype=str, keep_default_na=False)
        if args.longest:
            df = df.loc[df["dialogue"].str.len().sort_values(ascending=False).index[: args.longest]]
        df = df.assign(dialogue=[clean_text(d) for d in df["dialogue"]])  # as the prepare stage does
        try:
            summarizer = generation.Summarizer(model, tok, family, gen, entry.max_source_len, entry.prompt)
            summarizer.views(df["fname"], df["dialogue"], augmenter, desc=split)
        except StopIteration:
            break
    print(
        json.dumps(
            {
                "batches": rows,
                "seconds": round(time.perf_counter() - start, 1),
                "peak_GiB": round(status_gib("VmHWM"), 3),
                "batch_size": gen["batch_size"],
                "batch_tokens": gen.get("batch_tokens"),
                "num_beams": gen["num_beams"],
                "views": args.views,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
