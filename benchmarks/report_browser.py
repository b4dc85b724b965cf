"""Open the HTML reports in headless Chromium: screenshots, and a check that sorting and filtering work in a
real browser (by hand, not in CI: it needs `apt-get install chromium`).

The pages keep their table state in the URL fragment (#sort=<column>&dir=asc|desc&q=<text>&flag=<check>&at=<id>);
on load the page's own script clicks the column header and types into the filter box, so `chromium
--dump-dom` returns the DOM after real click and input events. This script reads the rows back from that DOM
and checks their order and which are hidden against the values in the page.

    python benchmarks/report_browser.py --index reports/index.html \\
        --compare reports/compare-main-beams1.html --out docs
Last stdout line: JSON with every check and the screenshots written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path


class Rows(HTMLParser):
    """table#rows in DOM order: each row's fname, hidden flag, data-flags, text and the data-v of column `col`."""

    def __init__(self, col: str):
        super().__init__()
        self.col, self.rows, self.sorted_by = col, [], None
        self._in, self._row, self._i, self._th = False, None, 0, 0
        self._col_index = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "rows":
            self._in = True
        if not self._in:
            return
        if tag == "th":
            if a.get("data-key") == self.col:
                self._col_index = self._th
            if a.get("aria-sort"):
                self.sorted_by = (a.get("data-key"), a["aria-sort"])
            self._th += 1
        if tag == "tr" and "data-fname" in a:
            self._row = {
                "fname": a["data-fname"],
                "hidden": "hidden" in a,
                "flags": a.get("data-flags", "").split(),
                "v": None,
                "text": [],
            }
            self._i = 0
            self.rows.append(self._row)
        if tag == "td" and self._row is not None:
            if self._i == self._col_index and "data-v" in a:
                self._row["v"] = float(a["data-v"])
            self._i += 1

    def handle_endtag(self, tag):
        if tag == "table" and self._in:
            self._in, self._row = False, None

    def handle_data(self, data):
        if self._row is not None:
            self._row["text"].append(data)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no Chromium found: `apt-get install chromium` (Debian) or put chrome on PATH")


def browse(page: Path, fragment: str, *, dump: bool = True, shot: Path | None = None) -> str:
    # absolute(), not resolve(): a symlink into DVC's cache has no .html suffix, and Chromium would show text
    url = page.absolute().as_uri() + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--virtual-time-budget=3000",
        ]
        cmd += [f"--screenshot={shot}"] if shot else ["--dump-dom"]
        p = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sys.exit(f"chromium failed on {url}: {p.stderr[-500:]}")
    return p.stdout


def rows_after(page: Path, fragment: str, col: str) -> Rows:
    r = Rows(col)
    r.feed(browse(page, fragment))
    return r


def check_page(page: Path, sort_col: str, queries: list[str], flag: str | None) -> list[dict]:
    checks = []
    static = Rows(sort_col)
    static.feed(page.read_text(encoding="utf-8"))
    values = [r["v"] for r in static.rows]
    for direction in ("asc", "desc"):
        got = rows_after(page, f"sort={sort_col}&dir={direction}", sort_col)
        vs = [r["v"] for r in got.rows]
        want = sorted(values, reverse=direction == "desc")
        ok = vs == want and got.sorted_by == (sort_col, "ascending" if direction == "asc" else "descending")
        checks.append(
            {"page": page.name, "check": f"sort {sort_col} {direction}", "ok": ok, "rows": len(vs), "first": vs[:3]}
        )
    for q in queries:
        got = rows_after(page, f"q={q}", sort_col)
        shown = [r["fname"] for r in got.rows if not r["hidden"]]
        want = [r["fname"] for r in static.rows if q.lower() in "".join(r["text"]).lower()]
        checks.append(
            {
                "page": page.name,
                "check": f"filter {q!r}",
                "ok": shown == want and 0 < len(shown) < len(values),
                "shown": len(shown),
                "of": len(values),
            }
        )
    if flag:
        got = rows_after(page, f"flag={flag}", sort_col)
        shown = [r["fname"] for r in got.rows if not r["hidden"]]
        want = [r["fname"] for r in static.rows if flag in r["flags"]]
        checks.append(
            {
                "page": page.name,
                "check": f"diagnostic {flag}",
                "ok": shown == want,
                "shown": len(shown),
                "of": len(values),
            }
        )
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="reports/index.html")
    ap.add_argument("--compare", default=None, help="a reports/compare-A-B.html")
    ap.add_argument("--out", default="docs", help="folder for the screenshots")
    ap.add_argument("--flag", default="duplicate", help="a diagnostic to filter the run report by")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    index = Path(a.index)
    static = Rows("fname")
    static.feed(index.read_text(encoding="utf-8"))
    middle = static.rows[len(static.rows) // 2]
    probe = middle["fname"]
    word = max(" ".join(middle["text"]).split(), key=len)  # some rows have it, most do not
    checks = check_page(index, "rouge_sum", [probe, word], a.flag)
    shots = {"index": out / "report-index.png"}
    browse(index, "", shot=shots["index"])
    if a.compare:
        checks += check_page(Path(a.compare), "delta", [probe], None)
        shots["compare"] = out / "report-compare.png"
        browse(Path(a.compare), "", shot=shots["compare"])
    for c in checks:
        print(("ok  " if c["ok"] else "FAIL") + f" {c['page']}: {c['check']}")
    print(
        json.dumps(
            {
                "checks": checks,
                "screenshots": {k: str(v) for k, v in shots.items()},
                "ok": all(c["ok"] for c in checks),
            },
            ensure_ascii=False,
        )
    )
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
