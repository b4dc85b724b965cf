"""average@<model>: model averaging of the model's fold models — one beam search on the weighted mean of their
next-token log-probabilities (they share one tokenizer) -> predictions/<model>/avg/{dev,test}.csv and
metrics/average/<model>.json. Computed only when ensemble.strategy is averaging or weighted_avg; otherwise
the stage records that it was not needed (so switching between other strategies never generates)."""

import hashlib
import logging

from dialsum import io, paths
from dialsum.tracking import matrix_item, run_stage, seed_everything

log = logging.getLogger("average")


def main():
    params, model_name, _ = matrix_item("average", with_fold=False)
    out_dir = paths.prediction_dir(f"{model_name}/avg")
    strategy = params.ensemble.strategy
    if strategy not in ("averaging", "weighted_avg"):
        with io.atomic_dir(out_dir) as tmp:
            (tmp / "NOT_COMPUTED").write_text(f"ensemble.strategy = {strategy} does not use model averaging\n")
        io.write_json(paths.average_metrics(model_name), {"computed": False})
        return
    # torch and friends only when there is something to generate: the not-computed path stays ~1 s
    import pandas as pd

    from dialsum import data, ensemble as E, generation
    from dialsum.metrics import Scorer

    entry = params.zoo[model_name]
    folds = list(params.cv.folds)
    seed_everything(params.seed)
    members = []
    for f in folds:
        member = generation.Summarizer.load(paths.model_dir(model_name, f), entry, params.generation)
        if members and member.tokenizer.get_vocab() != members[0].tokenizer.get_vocab():
            raise ValueError(
                f"{paths.model_dir(model_name, f)} has another vocabulary than fold {folds[0]}; "
                "log-probabilities of different tokenizers cannot be averaged"
            )
        members.append(member)
    weights = E.fold_weights(params, model_name, folds)
    log.info("averaging %d fold models of %s, weights %s", len(members), model_name, weights)
    d = data.load_processed()
    digest = hashlib.sha256()
    with io.atomic_dir(out_dir) as tmp:
        for split in ("dev", "test"):
            df = d[split]
            texts, lps = members[0].averaged(members[1:], weights, df["dialogue"], desc=f"{split} averaged")
            out = pd.DataFrame(
                {"fname": df["fname"], "view": "orig", "summary": texts, "logprob": [round(x, 6) for x in lps]}
            )
            io.write_csv(tmp / f"{split}.csv", out)
            digest.update((tmp / f"{split}.csv").read_bytes())
            if split == "dev":
                scores = Scorer.from_params(params).score(texts, data.references(df))
    io.write_json(
        paths.average_metrics(model_name),
        {
            "computed": True,
            "strategy": strategy,
            "members": [f"{model_name}/{f}" for f in folds],
            "weights": [round(w, 6) for w in weights],
            **scores,
            "predictions_sha256": digest.hexdigest()[:16],
        },
    )


if __name__ == "__main__":
    run_stage("average", main)
