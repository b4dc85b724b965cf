"""plots: PNG figures of the run -> plots/ (dev ROUGE per source and per model, learning curves, lengths)."""
import logging
from pathlib import Path

from dialsum import data, io, params as P, plots
from dialsum.tracking import log_level, run_stage, setup_logging

log = logging.getLogger("plots")


def main():
    params = P.load()
    setup_logging("plots", level=log_level(params))
    d = data.load_processed()
    with io.atomic_dir("plots") as tmp:
        live = [Path(f"dvclive/{m}-{f}") for m in params.models for f in params.cv.folds]
        paths = plots.write_all(tmp, Path("metrics/ensemble.json"), live,
                                {s: d[s] for s in ("train", "dev", "test")})
    log.info("wrote %s", ", ".join(f"plots/{p.name}" for p in paths))


if __name__ == "__main__":
    run_stage("plots", main)
