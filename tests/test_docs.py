"""The Markdown docs hold together: every relative link reaches a file, every #anchor a heading, and the README
stays a newcomer's page. Pure text, no rendering: GitHub's heading slugs are recomputed here."""

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

# [text](target) and ![alt](target); the target stops at whitespace (a "title") or the closing parenthesis
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# what a link target may start with and not be a file in the repository
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
INLINE_CODE = re.compile(r"(`+)(?:.+?)\1")


def doc_files():
    names = ["README.md", "CHANGELOG.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
    return [ROOT / n for n in names] + sorted((ROOT / "docs").glob("*.md"))


def prose_lines(text):
    """(line number, line) outside fenced code blocks: a `# comment` in a bash block is not a heading."""
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)
                continue
            if stripped.startswith(fence):
                fence = None
                continue
        if fence is None:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading's text: markup dropped, lowercase, punctuation but - and _ removed,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    seen, out = Counter(), set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        out.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def links(path):
    """(line number, target) of every link in prose, leaving out inline code spans."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, m.group(1)


def test_slug_follows_github():
    assert slug("Reports: where the summaries go wrong") == "reports-where-the-summaries-go-wrong"
    assert slug("Using real checkpoints: what dialsum does with each family's conventions") == (
        "using-real-checkpoints-what-dialsum-does-with-each-familys-conventions"
    )
    assert slug("Warm-started encoder–decoders (BERT2BERT)") == "warm-started-encoderdecoders-bert2bert"
    assert slug("Stage deps = code (no stale results)") == "stage-deps--code-no-stale-results"
    assert slug("`dialsum_x` and **bold**") == "dialsum_x-and-bold"


def test_anchors_number_duplicates_and_skip_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n\n### Notes\n", encoding="utf-8")
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_links_skip_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        'See [a](a.md#x) and ![pic](img.png "t"), not `[b](b.md)`.\n```\n[c](c.md)\n```\n[e](https://e.org)\n',
        encoding="utf-8",
    )
    assert [t for _, t in links(page)] == ["a.md#x", "img.png", "https://e.org"]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path):
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    broken = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading #{anchor} in {dest.relative_to(ROOT)})")
        elif anchor and dest.suffix != ".md":
            broken.append(f"{where} (an anchor into a file that is not Markdown)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md") if not EXTERNAL.match(t)}
    pages = set(p.resolve() for p in (ROOT / "docs").glob("*.md")) | {(ROOT / "CHANGELOG.md").resolve()}
    assert pages <= linked, sorted(str(p.relative_to(ROOT)) for p in pages - linked)


def test_readme_is_short_and_keeps_its_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}: move detail into docs/)"
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && dvc repro" in text
    assert ". .venv/bin/activate && pytest" in text
