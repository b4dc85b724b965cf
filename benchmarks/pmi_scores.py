"""Each pool candidate's likelihood with and without its dialogue (issue 34, session 29): teacher-forced mean
token log-prob under the trained model given the dialogue, and given an empty one, for ``stacking_fit_rows.py
--pmi``. Pointwise mutual information between a summary and its dialogue: a generic summary is likely without
the dialogue, one that only this dialogue makes likely is not.

    python benchmarks/pmi_scores.py --workspace WS --cache /tmp/pools --split dev --rows 300

Reads ``<pool>-<split>-<N>.csv`` from ``--cache`` (``candidate_pools.py``'s) and writes ``pmi-<split>-<rows>.csv``
(fname, candidate, lp_cond, lp_empty: summed log-probs, ntok: target tokens with EOS, pmi_min: the smallest
per-token difference) beside it. The conditional log-prob equals the pool's own ``logprob`` column (checked).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from candidate_pools import cached_pool  # benchmarks/ is the script's directory: its first sys.path entry
from dialsum import data, models
from dialsum.sequences import conventions, source_ids, target_ids


@torch.no_grad()
def token_logprobs(model, start: int, src: list[int], targets: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(per-token log-probs, mask), one row per target, of an encoder-decoder given ``src`` (encoded once)."""
    n, width = len(targets), max(map(len, targets))
    labels = torch.full((n, width), -100)
    for i, t in enumerate(targets):
        labels[i, : len(t)] = torch.tensor(t)
    dec = torch.cat([torch.full((n, 1), start), labels[:, :-1].clamp(min=0)], 1)
    mask = labels != -100
    enc = model.get_encoder()(input_ids=torch.tensor([src])).last_hidden_state.expand(n, -1, -1)
    dec_mask = torch.cat([torch.ones(n, 1, dtype=torch.long), mask[:, :-1].long()], 1)
    logits = model(encoder_outputs=(enc,), decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    lp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).numpy(), mask.numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--model", default="minilm2minilm")
    ap.add_argument("--fold", default="full")
    ap.add_argument("--cache", default="/tmp/dialsum-pools")
    ap.add_argument("--pool", default="beam-16")
    ap.add_argument("--split", required=True, choices=["train", "dev", "test"])
    ap.add_argument("--rows", type=int, required=True)
    a = ap.parse_args()
    ws, cache = Path(a.workspace), Path(a.cache)
    entry = yaml.safe_load((ws / "params.yaml").read_text())["zoo"][a.model]
    model, tok, family = models.load_for_inference(ws / f"models/{a.model}/{a.fold}", entry)
    if family != "seq2seq":
        raise SystemExit("pmi_scores.py scores encoder-decoders only")
    conv = conventions(tok, family, model.config)
    frame = data.load_processed(ws / "data/processed")[a.split].head(a.rows)
    pool = cached_pool(cache, a.pool, a.split, frame["fname"])
    if pool is None:
        raise SystemExit(f"{cache}: no cached {a.pool} pool of {a.split} with these {a.rows} dialogues")
    empty = source_ids(tok, "", conv, entry["max_source_len"])[0]
    rows, t0 = [], time.perf_counter()
    for fname, dialogue in zip(frame["fname"], frame["dialogue"]):
        g = pool[pool["fname"] == fname]
        targets = [target_ids(tok, s, conv, entry["max_target_len"]) for s in g["summary"]]
        src = source_ids(tok, dialogue, conv, entry["max_source_len"])[0]
        cond, mask = token_logprobs(model, model.config.decoder_start_token_id, src, targets)
        bare, _ = token_logprobs(model, model.config.decoder_start_token_id, empty, targets)
        pmi_min = np.where(mask, cond - bare, np.inf).min(axis=1)
        for c, lc, le, n, pm in zip(g["candidate"], cond.sum(1), bare.sum(1), mask.sum(1), pmi_min):
            rows.append((fname, int(c), float(lc), float(le), int(n), float(pm)))
    out = pd.DataFrame(rows, columns=["fname", "candidate", "lp_cond", "lp_empty", "ntok", "pmi_min"])
    check = out.merge(pool, on=["fname", "candidate"])
    gap = float(np.abs(check["lp_cond"] / check["ntok"] - check["logprob"]).max())
    out.to_csv(cache / f"pmi-{a.split}-{a.rows}.csv", index=False)
    print(
        f"{a.split}: {a.rows} dialogues in {time.perf_counter() - t0:.1f} s; conditional vs the pool's logprob: max gap {gap:.2e}"
    )


if __name__ == "__main__":
    main()
