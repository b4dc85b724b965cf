"""plots: PNG figures of the run -> plots/ (dev ROUGE per source and per model, learning curves, lengths)."""

import logging

from dialsum import data, io, params as P, paths, plots
from dialsum.tracking import log_level, run_stage, setup_logging

log = logging.getLogger("plots")


def main():
    params = P.load()
    setup_logging("plots", level=log_level(params))
    d = data.load_processed()
    with io.atomic_dir(paths.PLOTS) as tmp:
        live = [paths.live_dir(m, f) for m in params.models for f in params.cv.folds]
        written = plots.write_all(tmp, paths.ENSEMBLE_METRICS, live, {s: d[s] for s in ("train", "dev", "test")})
    log.info("wrote %s", ", ".join(f"{paths.PLOTS}/{p.name}" for p in written))


if __name__ == "__main__":
    run_stage("plots", main)
