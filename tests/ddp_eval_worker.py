"""One process of the sharded in-training evaluation test (tests/test_device.py): EvalRouge over 15 sample
dev dialogues with a random-weight causal stand-in, under torchrun (gloo) or alone. Writes
OUT/rank<N>.json: the metrics, every summary, and how many rows this process generated itself.
Usage: python tests/ddp_eval_worker.py INIT_DIR OUT"""

import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch.distributed as dist

from dialsum import generation, models
from dialsum.metrics import Scorer
from dialsum.params import Generation
from dialsum.training import EvalRouge

ROOT = Path(__file__).resolve().parents[1]


def main(init_dir: str, out: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    model, tokenizer, family = models.load_for_inference(init_dir)
    df = pd.read_csv(ROOT / "data/sample/dev.csv").head(15)
    # one dialogue per generate call: each summary is then independent of which rank's batch it sits in
    summarizer = generation.Summarizer(model, tokenizer, family, Generation(max_new_tokens=8), 64, None, 1)
    rouge = EvalRouge(summarizer, list(df["dialogue"]), [[s] for s in df["summary"]], Scorer("whitespace"))
    generated = []
    real = rouge._summarize
    rouge._summarize = lambda m, rows, desc, progress: (generated.extend(rows), real(m, rows, desc, progress))
    rouge.reset(model)
    metrics = rouge.compute_metrics(None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    Path(out).mkdir(parents=True, exist_ok=True)
    record = {"metrics": metrics, "predictions": rouge.predictions, "generated": len(generated)}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
