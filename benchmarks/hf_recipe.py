"""Hugging Face's own recipe, the peer dialsum's train and predict stages are timed against (issue 21).

What `examples/pytorch/summarization/run_summarization.py` does, on a dialsum workspace's data and initial
model: `tokenizer(dialogue, truncation=True)` and `tokenizer(text_target=summary)` per row,
`DataCollatorForSeq2Seq` padding each batch to its longest row, batches in data order (no length grouping),
`Seq2SeqTrainer` with `predict_with_generate` (one evaluation at the end of the epoch, greedy as dialsum's
`training.eval_num_beams`), and `trainer.predict` for the generation, with count-based batches of the same
size dialsum's params give (`training.eval_batch_size`, `generation.batch_size`). The model, its frozen
encoder (the `minilm2minilm` recipe), learning rate, epochs, batch size, lengths and beams are the
workspace's params, so the two sides differ only in how they batch and generate.

    python benchmarks/hf_recipe.py train   --workspace W --model minilm2minilm --out /tmp/hf
    python benchmarks/hf_recipe.py predict --workspace W --model minilm2minilm --out /tmp/hf
`predict` decodes dev and test with the model dialsum's train stage saved (models/<model>/full), so the
generation comparison uses one and the same set of weights; it writes dev ROUGE (dialsum's scorer, as the
predict stage) to OUT/predict.json. `train` writes the model and its final eval ROUGE to OUT/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def _datasets(tokenizer, frame: pd.DataFrame, src_len: int, tgt_len: int, with_labels: bool):
    from datasets import Dataset

    enc = tokenizer(list(frame["dialogue"]), max_length=src_len, truncation=True)
    rows = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if with_labels:  # run_summarization's predict set has labels too (test: the first of summary1..K)
        refs = frame["summary"] if "summary" in frame else frame["summary1"]
        rows["labels"] = tokenizer(text_target=list(refs), max_length=tgt_len, truncation=True)["input_ids"]
    return Dataset.from_dict(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["train", "predict"])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--model", default="minilm2minilm")
    ap.add_argument("--fold", default="full")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    from dialsum.data import references
    from dialsum.metrics import Scorer

    ws, out = Path(a.workspace), Path(a.out)
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    entry, tcfg, gen = params["zoo"][a.model], params["training"], params["generation"]
    src_len, tgt_len = entry["max_source_len"], entry["max_target_len"]
    set_seed(params["seed"])
    train = pd.read_csv(ws / "data/processed/train.csv", dtype=str, keep_default_na=False)
    dev = pd.read_csv(ws / "data/processed/dev.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(ws / "data/processed/test.csv", dtype=str, keep_default_na=False)
    scorer = Scorer.from_params(params)
    folder = ws / f"models/{a.model}/" / ("init" if a.what == "train" else a.fold)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    if entry.get("freeze_encoder"):
        for p in model.get_encoder().parameters():
            p.requires_grad = False
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    eval_rows = dev.head(tcfg["eval_rows"]) if tcfg.get("eval_rows") else dev

    def rouge(frame, preds):
        s = scorer.score(preds, references(frame))
        return {k: s[k] for k in ("rouge1", "rouge2", "rougeL", "rouge_sum")}

    def decode(ids) -> list[str]:  # -100 pads the generated rows of different lengths
        return [
            t.strip()
            for t in tokenizer.batch_decode(np.where(ids >= 0, ids, tokenizer.pad_token_id), skip_special_tokens=True)
        ]

    def compute_metrics(p):
        return rouge(eval_rows, decode(p.predictions))

    args = Seq2SeqTrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=tcfg["batch_size"],
        per_device_eval_batch_size=tcfg["eval_batch_size"] if a.what == "train" else gen["batch_size"],
        learning_rate=tcfg.get("learning_rate") or entry["learning_rate"],
        num_train_epochs=tcfg["epochs"],
        weight_decay=tcfg["weight_decay"],
        lr_scheduler_type=tcfg["lr_scheduler"],
        warmup_steps=int(tcfg["warmup_ratio"] * -(-len(train) // tcfg["batch_size"]) * tcfg["epochs"]),
        max_grad_norm=tcfg["max_grad_norm"],
        eval_strategy="no",
        save_strategy="epoch",
        save_total_limit=2,
        predict_with_generate=True,
        generation_num_beams=tcfg["eval_num_beams"],
        generation_max_length=None,
        seed=params["seed"],
        report_to=[],
        logging_strategy="epoch",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        data_collator=collator,
        processing_class=tokenizer,
        train_dataset=_datasets(tokenizer, train, src_len, tgt_len, True),
        eval_dataset=_datasets(tokenizer, eval_rows, src_len, tgt_len, True),
        compute_metrics=compute_metrics,
    )
    out.mkdir(parents=True, exist_ok=True)
    if a.what == "train":
        trainer.train()  # then one evaluation by generation, as dialsum's eval_every_epochs: 1 does
        metrics = trainer.evaluate(
            max_new_tokens=gen["max_new_tokens"] or tgt_len + 1, num_beams=tcfg["eval_num_beams"]
        )
        trainer.save_model(str(out / "model"))
        (out / "train.json").write_text(json.dumps(metrics, indent=1))
        return
    result = {}
    kw = dict(
        num_beams=gen["num_beams"],
        max_new_tokens=gen["max_new_tokens"] or tgt_len + 1,
        min_new_tokens=gen.get("min_new_tokens", 0),
        length_penalty=gen.get("length_penalty", 1.0),
    )
    for split, frame in (("dev", dev), ("test", test)):
        texts = decode(trainer.predict(_datasets(tokenizer, frame, src_len, tgt_len, True), **kw).predictions)
        pd.DataFrame({"fname": frame["fname"], "summary": texts}).to_csv(out / f"{split}.csv", index=False)
        if split == "dev":
            result = rouge(frame, texts)
    (out / "predict.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
