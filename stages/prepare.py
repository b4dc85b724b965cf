"""prepare: validate + clean the competition CSVs, assign CV folds -> data/processed/."""

import logging

from dialsum import data, io, params as P, tta
from dialsum.tracking import log_level, run_stage, setup_logging

log = logging.getLogger("prepare")


def main():
    params = P.load()
    setup_logging("prepare", level=log_level(params))
    d, cv = params.data, params.cv
    frames = {s: data.read_csv(getattr(d, s), s, d.on_invalid) for s in ("train", "dev", "test")}
    n = params.debug.subsample
    for split, df in frames.items():
        df = data.check_cleaned(data.clean_frame(df, d.clean), getattr(d, split), split, d.on_invalid)
        if n:
            if split == "test" and len(df) > n:  # the submission is then short of rows: say so where it is made
                log.warning(
                    "debug.subsample: test cut to %d of %d rows; submission.csv will not be complete", n, len(df)
                )
            df = df.head(n).reset_index(drop=True)
        frames[split] = df
        log.info("%s: %d rows from %s", split, len(df), getattr(d, split))
    frames["train"]["fold"] = data.assign_folds(frames["train"], cv.n_splits, cv.seed)
    for split in ("dev", "test"):
        if shared := data.shared_dialogues(frames["train"], frames[split]):
            log.warning("%s: %d dialogues also appear in train (scores on them favour memorising)", split, shared)
    # Augmented training copies go to their own file: dev, test and out-of-fold rows are never augmented.
    frames["augmented"] = tta.augment_rows(frames["train"], d.augmentation, params.seed)
    if len(frames["augmented"]):
        log.info(
            "augmented: %d training copies (%s x %d)",
            len(frames["augmented"]),
            ", ".join(d.augmentation.strategies),
            d.augmentation.factor,
        )
    for split, df in frames.items():
        io.write_csv(f"data/processed/{split}.csv", df)


if __name__ == "__main__":
    run_stage("prepare", main)
