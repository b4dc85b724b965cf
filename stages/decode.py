"""decode@<model>: the decoding search over the model's trained fold models (no re-training) ->
decoding/<model>.yaml (what predict decodes with) and metrics/decode/<model>.json. With decode.trials: 0 it
writes an empty choice at once: predict then decodes with generation.* as params.yaml has it."""

import yaml

from dialsum import data, decoding, generation, io, paths
from dialsum.tracking import matrix_item, run_stage, seed_everything


def main():
    params, model_name, _ = matrix_item("decode", with_fold=False)
    dec, entry = params.decode, params.zoo[model_name]
    if dec.trials == 0:
        io.write_text(paths.decoding(model_name), yaml.safe_dump(decoding.Settings().as_dict(), sort_keys=False))
        io.write_json(paths.decode_metrics(model_name), {"trials": 0})
        return
    seed_everything(params.seed)
    d = data.load_processed()
    folds = list(params.cv.folds)[: dec.folds]
    summarizers, rows = [], []
    for fold in folds:
        df = d["dev"] if fold == "full" else d["train"][d["train"]["fold"] == fold]
        rows.append(df.head(max(1, dec.rows // len(folds))).reset_index(drop=True))
        summarizers.append(generation.Summarizer.load(paths.model_dir(model_name, fold), entry, params.generation))
    lengths = decoding.LengthModel.fit_unseen(summarizers[0].tokenizer, d["train"], rows, dec.quantile)
    result = decoding.search(params, summarizers, rows, lengths)
    choice = result["settings"]
    kept = {**choice, "lengths": lengths.as_dict()} if choice["length_control"] != "none" else choice
    io.write_text(paths.decoding(model_name), yaml.safe_dump(kept, sort_keys=False))
    io.write_json(
        paths.decode_metrics(model_name),
        {
            "trials": dec.trials,
            "searched_on": "dev" if folds == ["full"] else "out-of-fold",
            "rows": sum(len(r) for r in rows),
            "default_rouge_sum": result["default_rouge_sum"],
            "best_rouge_sum": result["best_rouge_sum"],
            "gain": round(result["best_rouge_sum"] - result["default_rouge_sum"], 6),
            "chosen": {
                **choice["generation"],
                "length_control": choice["length_control"],
                "post_edits": ",".join(choice["post_edits"]) or "none",
            },
        },
    )


if __name__ == "__main__":
    run_stage("decode", main)
