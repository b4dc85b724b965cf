"""Does a trained model read its dialogue? Loss of the gold summaries with each dialogue's own source vs a
shuffled one (a seeded derangement), and how many distinct greedy summaries it writes.

    python benchmarks/source_dependence.py models/tiny-bart/0 data/processed/dev.csv [--rows 40]

A model that ignores its input scores the same either way (other - own ~ 0 nats/token) and writes one or
two summaries for every dialogue. Sequences are built by dialsum's conventions (BART: <s> dialogue </s> ->
<s> summary </s>; causal: prompt + summary, the prompt's labels -100), as training builds them.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from dialsum.models import load_for_inference
from dialsum.params import ZooEntry
from dialsum.generation import Summarizer
from dialsum.params import Generation
from dialsum.sequences import build_features


def derangement(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return ((torch.arange(n) + torch.randint(1, n, (1,), generator=g)) % n).tolist() if n > 1 else [0]


@torch.no_grad()
def mean_loss(model, feats: list[dict]) -> float:
    total, count = 0.0, 0
    for f in feats:
        ids = torch.tensor([f["input_ids"]])
        labels = torch.tensor([f["labels"]])
        if model.config.is_encoder_decoder:
            logits = model(input_ids=ids, labels=labels).logits
        else:
            logits = model(input_ids=ids).logits[:, :-1]
            labels = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
        total += nll.item()
        count += int((labels != -100).sum())
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("dev_csv")
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--max-source-len", type=int, default=256)
    ap.add_argument("--max-target-len", type=int, default=64)
    args = ap.parse_args()
    model, tok, family = load_for_inference(args.model_dir)
    df = pd.read_csv(args.dev_csv, dtype=str, keep_default_na=False).head(args.rows)
    entry = ZooEntry(
        family=family, pretrained=args.model_dir, max_source_len=args.max_source_len, max_target_len=args.max_target_len
    )
    own, cut = build_features(df, tok, entry, model.config)
    other_df = df.assign(dialogue=df["dialogue"].iloc[derangement(len(df))].tolist())
    other, _ = build_features(other_df, tok, entry, model.config)
    lo, lx = mean_loss(model, own), mean_loss(model, other)
    gen = Generation(num_beams=1, max_new_tokens=args.max_target_len + 1)
    tok.padding_side = "left"
    summaries, _ = Summarizer(model, tok, family, gen, args.max_source_len, None, 16)(
        list(df["dialogue"]), desc="generate", progress=False
    )
    print(
        f"{args.model_dir}: {len(df)} rows ({cut} truncated)  loss own {lo:.3f}  other {lx:.3f}  "
        f"other-own {lx - lo:+.3f} nats/token  distinct greedy summaries {len(set(summaries))}/{len(df)}"
    )


if __name__ == "__main__":
    main()
