"""The HTML report: diagnostics on hand-made summaries, and the rendered page read back with html.parser."""

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dialsum import report
from dialsum.cli import main as dialsum
from conftest import stand_in_params
from dialsum.metrics import Scorer

HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
SCORER = Scorer("whitespace")


def test_foreign_tags_and_role_swap():
    dialogue = "#Person1#: Can you book a table?\n#Person2#: Sure."
    assert report.foreign_tags(dialogue, "#Person3# books a table for #Person1#.") == ["#Person3#"]
    assert report.foreign_tags(dialogue, "#Person2# books a table for #Person1#.") == []
    refs = [["#Person1# asks #Person2# to book a table for two."]] * 3
    summaries = [
        "#Person2# asks #Person1# to book a table for two.",  # roles swapped
        "#Person1# asks #Person2# to book a table for two.",  # right
        "Someone books a table.",
    ]  # no tags: nothing to swap
    flags = report.diagnose([dialogue] * 3, refs, summaries, SCORER, report.Settings())
    assert ["role_swap" in f for f in flags] == [True, False, False]


def test_role_swap_in_korean_rechooses_particles():
    assert report.swap_roles("#Person1#은 #Person2#에게 책을 빌려준다.") == "#Person2#는 #Person1#에게 책을 빌려준다."
    refs = [["#Person1#은 #Person2#에게 책을 빌려준다."]]
    flags = report.diagnose(
        ["#Person1#: 책 있어?\n#Person2#: 응."],
        refs,
        ["#Person2#는 #Person1#에게 책을 빌려준다."],
        Scorer("morpheme"),
        report.Settings(),
    )
    assert flags == [["role_swap"]]


def test_length_empty_repeat_duplicate_and_ratio_checks():
    d = "#Person1#: hi\n#Person2#: hello"
    ref = ["#Person1# greets #Person2# and they talk about the weather today."]  # 11 words
    summaries = [
        "#Person1# greets #Person2# about the weather.",  # fine
        "",  # empty
        "the weather is nice the weather is nice today",  # repeats
        "#Person1# greets.",  # too short (2/11)
        " ".join(["#Person1# greets #Person2# and they talk about it."] * 3),  # too long, repeats
        "#Person1# greets #Person2# about the weather.",
    ]  # duplicate of row 0
    tokens, limits = [9, 0, 10, 3, 64, 9], [65] * 6
    flags = report.diagnose([d] * 6, [ref] * 6, summaries, SCORER, report.Settings(), tokens, limits)
    assert flags == [
        ["duplicate"],
        ["empty"],
        ["repeats"],
        ["too_short"],
        ["length_limit", "repeats", "too_long"],
        ["duplicate"],
    ]
    # without token counts the length check is skipped, not guessed
    assert "length_limit" not in report.diagnose([d], [ref], [summaries[4]], SCORER, report.Settings())[0]


def test_overlap_marks():
    marks = report.overlap_marks("Tom buys a red bag, then leaves.", ["Tom buys a bag."])
    assert marks == [("Tom", "b"), ("buys", "b"), ("a", "b"), ("red", ""), ("bag,", "u"), ("then", ""), ("leaves.", "")]


def test_paired_bootstrap_brackets_the_mean():
    diff = np.random.default_rng(1).normal(0.05, 0.1, 400)
    lo, hi = report.paired_bootstrap(diff)
    assert lo < diff.mean() < hi and lo > 0
    assert report.paired_bootstrap(diff) == (lo, hi)  # seeded


class Page(HTMLParser):
    """Rows of the per-dialogue table, cells with data-* attributes, script elements and all visible text."""

    def __init__(self):
        super().__init__()
        self.rows, self.headers, self.counts, self.scripts, self.text = [], [], {}, 0, []
        self._cell, self._in_rows, self._row = None, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self._in_rows = a.get("id") == "rows"
        if tag == "tr" and "data-fname" in a:
            self._row = {"fname": a["data-fname"], "flags": a.get("data-flags", "").split(), "sums": {}}
            self.rows.append(self._row)
        if tag == "th" and self._in_rows and "data-source" in a:
            self.headers.append(a["data-source"])
        if tag == "td" and "data-diag" in a:
            self._cell = (a["data-diag"], a["data-source"])
        if tag == "td" and self._row is not None and "data-v" in a:
            self._row["sums"][a.get("data-source", len(self._row["sums"]))] = float(a["data-v"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_rows = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None and data.strip():
            self.counts[self._cell] = int(data)
            self._cell = None


def _workspace(root: Path) -> dict:
    """A run's outputs, written by hand: 4 dev dialogues, sources a/0 (a pool with token counts) and b/0."""
    dev = pd.DataFrame(
        {
            "fname": ["d1", "d2", "d3", "d4"],
            "dialogue": [
                "#Person1#: Book a table?\n#Person2#: Sure.",
                f"#Person1#: {HOSTILE}\n#Person2#: ok",
                "#Person1#: hi\n#Person2#: hello",
                "#Person1#: bye\n#Person2#: bye",
            ],
            "summary": [
                "#Person1# asks #Person2# to book a table.",
                "#Person1# sends a script tag.",
                "#Person1# greets #Person2#.",
                "They say goodbye.",
            ],
            "topic": ["booking", "web", "greeting", "greeting"],
        }
    )
    a = pd.DataFrame(
        {
            "fname": ["d1", "d2", "d3", "d4"],
            "view": "orig",
            "candidate": 0,
            "summary": [
                "#Person2# asks #Person1# to book a table.",  # role swap
                f"#Person1# sends {HOSTILE}",
                "#Person3# greets #Person2#.",  # foreign tag
                "They say goodbye.",
            ],
            "logprob": -0.5,
            "tokens": [9, 12, 64, 4],
        }
    )  # d3 at the limit (65 - 1)
    b = pd.DataFrame(
        {
            "fname": ["d1", "d2", "d3", "d4"],
            "view": "orig",
            "summary": [
                "#Person1# asks #Person2# to book a table.",
                "",
                "#Person1# greets #Person2#.",
                "They say goodbye.",
            ],
            "logprob": -0.4,
        }
    )
    ens = pd.DataFrame(
        {
            "fname": ["d1", "d2", "d3", "d4"],
            "summary": [b.summary[0], a.summary[1], a.summary[2], b.summary[3]],
            "source": ["b/0", "a/0", "a/0", "b/0"],
            "view": "orig",
            "candidate": 0,
            "score": 1.0,
        }
    )
    for path, df in (
        ("data/processed/dev.csv", dev),
        ("predictions/a/0/dev.csv", a),
        ("predictions/b/0/dev.csv", b),
        ("predictions/ensemble/dev.csv", ens),
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(root / path, index=False)
    scores = {k: 0.5 for k in report.KEYS}
    metrics = {
        **scores,
        "strategy": "auto",
        "best_single": "b/0",
        "gain": 0.0,
        "collapsed": {},
        "sources": {"a/0": scores, "b/0": scores},
    }
    (root / "metrics").mkdir()
    (root / "metrics/ensemble.json").write_text(json.dumps(metrics))
    return stand_in_params(
        ["a", "b"],
        metrics={"tokenize": "whitespace"},
        report={"worst_n": 2},  # limit: max_target_len + 1
    )


def test_page_has_every_row_and_source_escapes_text_and_counts_diagnostics(tmp_path):
    params = _workspace(tmp_path)
    out = report.write_index(params, tmp_path / "reports/index.html", tmp_path)
    html = out.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    assert [r["fname"] for r in page.rows] == ["d1", "d2", "d3", "d4"]
    assert page.headers == ["a/0", "b/0"]
    assert all(set(r["sums"]) >= {"a/0", "b/0"} for r in page.rows)
    # hostile text is text: our own script is the page's only script element, and the text survives whole
    assert page.scripts == 1 and "<script>alert" not in html and html.count("&lt;script&gt;alert") >= 3
    assert "".join(page.text).count(HOSTILE) >= 2 and "src=x onerror" not in html.replace("&lt;img src=x onerror", "")
    # b/0 has no token counts and no tokenizer here: its length check is skipped, a/0's uses the pool's column
    expected = {
        ("role_swap", "a/0"): 1,
        ("foreign_tag", "a/0"): 1,
        ("length_limit", "a/0"): 1,
        ("empty", "b/0"): 1,
        ("role_swap", "b/0"): 0,
        ("foreign_tag", "ensemble"): 1,
        ("length_limit", "ensemble"): 1,
        ("empty", "ensemble"): 0,
        ("role_swap", "ensemble"): 0,
    }
    assert {k: page.counts[k] for k in expected} == expected
    assert {r["fname"]: r["flags"] for r in page.rows}["d3"] == ["foreign_tag", "length_limit"]
    # the table's per-row ROUGE is the metrics' scorer: its mean is the corpus score
    refs = [[s] for s in pd.read_csv(tmp_path / "data/processed/dev.csv")["summary"]]
    ens = pd.read_csv(tmp_path / "predictions/ensemble/dev.csv", keep_default_na=False)["summary"]
    want = SCORER.score(list(ens), refs)["rouge_sum"]
    assert np.mean([r["sums"][0] for r in page.rows]) == pytest.approx(want, abs=1e-6)
    assert html.count('class="card"') == 2  # worst_n
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch


def test_page_is_deterministic_and_a_missing_input_is_one_line(tmp_path, capsys):
    params = _workspace(tmp_path)
    one = report.write_index(params, tmp_path / "a.html", tmp_path).read_bytes()
    two = report.write_index(params, tmp_path / "b.html", tmp_path).read_bytes()
    assert one == two
    (tmp_path / "predictions/b/0/dev.csv").unlink()
    with pytest.raises(report.ReportError, match=r"predictions/b/0/dev.csv: not found"):
        report.write_index(params, tmp_path / "c.html", tmp_path)
    assert not (tmp_path / "c.html").exists()
    capsys.readouterr()
    assert dialsum(["report", "--compare", "HEAD", "nope", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a DVC repository" in err


def test_each_model_folds_source_dependence_is_shown_and_an_ignoring_one_is_named(tmp_path):
    params = _workspace(tmp_path)
    (tmp_path / "metrics/train").mkdir(parents=True)
    (tmp_path / "metrics/train/a-0.json").write_text(json.dumps({"rouge_sum": 1.0, "source_dependence": 0.004}))
    (tmp_path / "metrics/train/b-0.json").write_text(json.dumps({"rouge_sum": 1.0, "source_dependence": 0.61}))
    index = report.build_index(params, tmp_path)
    assert {h["name"]: h.get("source_dependence") for h in index["header"][1:]} == {"a/0": 0.004, "b/0": 0.61}
    html = report.write_index(params, tmp_path / "reports/index.html", tmp_path).read_text(encoding="utf-8")
    assert "0.0040" in html and "0.6100" in html and html.count("ignores its input") == 1


def test_length_limit_is_the_one_the_decode_stages_choice_set(tmp_path):
    """predict decodes under decoding/<model>.yaml; the report checked cut-off summaries against generation.*."""
    import yaml

    from dialsum import decoding

    params = _workspace(tmp_path)
    (tmp_path / "decoding").mkdir()
    choice = decoding.Settings({"max_new_tokens": 13}).as_dict()
    (tmp_path / "decoding/a.yaml").write_text(yaml.safe_dump(choice, sort_keys=False))
    page = Page()
    page.feed(report.write_index(params, tmp_path / "reports/index.html", tmp_path).read_text(encoding="utf-8"))
    flags = {r["fname"]: r["flags"] for r in page.rows}
    assert page.counts[("length_limit", "a/0")] == 2  # d2's 12 tokens reach the choice's 13, d3's 64 too
    assert "length_limit" in flags["d2"] and "length_limit" in flags["d3"]


def test_the_init_tokenizer_is_loaded_once_per_folder_and_a_missing_one_is_a_warning(tmp_path, caplog):
    from conftest import micro_entry
    from dialsum import models, paths

    assert report._init_tokenizer(tmp_path, "m", "length_limit not checked") is None
    assert "m: no tokenizer in" in caplog.text and "length_limit not checked" in caplog.text
    models.build_init(
        micro_entry("bart"), ["#Person1#: 안녕하세요. #Person2#: 네."] * 8, tmp_path / paths.init_dir("m"), 0
    )
    first = report._init_tokenizer(tmp_path, "m", "")
    assert first is report._init_tokenizer(tmp_path, "m", "") and first("안녕하세요")["input_ids"]
