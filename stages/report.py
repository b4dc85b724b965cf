"""report: per-dialogue error analysis of the dev split -> reports/index.html (one self-contained page: scores,
diagnostics, worst dialogues, a sortable and filterable table of every source's summary; docs/reports.md)."""

import logging

from dialsum import params as P, paths, report
from dialsum.tracking import log_level, run_stage, setup_logging

log = logging.getLogger("report")


def main():
    params = P.load()
    setup_logging("report", level=log_level(params))
    path = report.write_index(params, paths.REPORT)
    log.info("wrote %s (%.0f KB): open it in a browser", path, path.stat().st_size / 1024)


if __name__ == "__main__":
    run_stage("report", main)
