"""average@<model>: model averaging of the model's fold models — one beam search on the weighted mean of their
next-token log-probabilities (they share one tokenizer) -> predictions/<model>/avg/{dev,test}.csv and
metrics/average/<model>.json. Computed only when ensemble.strategy is averaging or weighted_avg; otherwise
the stage records that it was not needed (so switching between other strategies never generates)."""

import hashlib

from dialsum import io, paths
from dialsum.params import AVERAGING
from dialsum.tracking import matrix_item, run_stage, seed_everything


def main():
    params, model_name, _ = matrix_item("average", with_fold=False)
    out_dir = paths.prediction_dir(f"{model_name}/avg")
    strategy = params.ensemble.strategy
    if strategy not in AVERAGING:
        with io.atomic_dir(out_dir) as tmp:
            (tmp / "NOT_COMPUTED").write_text(f"ensemble.strategy = {strategy} does not use model averaging\n")
        io.write_json(paths.average_metrics(model_name), {"computed": False})
        return
    # torch and friends only when there is something to generate: the not-computed path stays ~1 s
    from dialsum import data, ensemble
    from dialsum.metrics import Scorer

    seed_everything(params.seed)
    d = data.load_processed()
    preds, weights = ensemble.average_folds(params, model_name, {s: d[s] for s in ("dev", "test")})
    digest = hashlib.sha256()
    with io.atomic_dir(out_dir) as tmp:
        for split, out in preds.items():
            io.write_csv(tmp / f"{split}.csv", out)
            digest.update((tmp / f"{split}.csv").read_bytes())
    scores = Scorer.from_params(params).score(list(preds["dev"]["summary"]), data.references(d["dev"]))
    io.write_json(
        paths.average_metrics(model_name),
        {
            "computed": True,
            "strategy": strategy,
            "members": [f"{model_name}/{f}" for f in params.cv.folds],
            "weights": [round(w, 6) for w in weights],
            **scores,
            "predictions_sha256": digest.hexdigest()[:16],
        },
    )


if __name__ == "__main__":
    run_stage("average", main)
