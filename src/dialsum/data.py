"""Competition CSVs: load, validate, clean, assign folds.

Errors are :class:`DataError` with one line naming the file and, where it applies, the row (1-based data
row, as a spreadsheet would show it after the header) and the column.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
import warnings
from pathlib import Path

import pandas as pd

from .params import Clean, section
from .paths import PROCESSED

log = logging.getLogger(__name__)

SPEAKER_TAGS = [f"#Person{i}#" for i in range(1, 8)]
PII_TAGS = [
    "#PhoneNumber#",
    "#Address#",
    "#DateOfBirth#",
    "#PassportNumber#",
    "#SSN#",
    "#CardNumber#",
    "#CarNumber#",
    "#Email#",
    "#AccountNumber#",
]
TAG_RE = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")


class DataError(ValueError):
    """A problem with an input file; the message is one line naming file, row and column."""


REQUIRED = {"train": ["fname", "dialogue", "summary"], "dev": ["fname", "dialogue"], "test": ["fname", "dialogue"]}


def read_csv(path: str | Path, split: str, on_invalid: str = "error") -> pd.DataFrame:
    """Read one competition CSV as strings, check it, and return the valid rows.

    ``split`` is train, dev or test: train needs ``summary``; dev needs ``summary`` or ``summary1..K``;
    test needs only ``fname,dialogue`` (extra columns are kept, never required).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (data.{split} in params.yaml)")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (undecodable byte at offset {e.start}); save it as UTF-8 CSV"
        ) from None
    if "\x00" in text:
        raise DataError(f"{path}: contains NUL bytes; this is not a CSV text file")
    try:
        # index_col=False: a trailing comma on the data rows must not turn fname into the index
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(
                io.StringIO(text), dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL, index_col=False
            )
    except (pd.errors.ParserError, csv.Error) as e:
        raise DataError(f"{path}: cannot be parsed as CSV ({str(e).splitlines()[0]})") from None
    header = list(df.columns)
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        _check_extra_fields(path, text, len(header))
    if len(header) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if sep in header[0]:
                raise DataError(f"{path}: columns are separated by {name}, expected commas (fname,dialogue,...)")
    required = list(REQUIRED[split])
    # summary1..K are references; a column such as summary_ko is not one (a bare pandas error used to follow)
    if split == "dev" and "summary" not in header and not any(re.fullmatch(r"summary\d+", c) for c in header):
        required.append("summary")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column {', '.join(missing)} (found: {', '.join(header)})")
    if len(df) == 0:
        raise DataError(f"{path}: header only, no data rows")

    problems = _blank_rows(df, path, split)
    dup = df["fname"].duplicated(keep="first")
    for i in df.index[dup]:
        problems.append((i, f"row {i + 1}, column fname: duplicate fname {df.at[i, 'fname']!r}"))
    for i in df.index[df["fname"].str.strip() == ""]:
        problems.append((i, f"row {i + 1}, column fname: empty"))
    return _settle(df, problems, path, split, on_invalid, "invalid rows")


def check_cleaned(df: pd.DataFrame, path, split: str, on_invalid: str) -> pd.DataFrame:
    """The blank checks of :func:`read_csv` again after :func:`clean_frame`: a cell that cleaning empties (a summary
    of only ``<br>``) passed them as raw text, and failed as "no reference summary" after training."""
    return _settle(
        df, _blank_rows(df, path, split, " after cleaning"), path, split, on_invalid, "rows empty after cleaning"
    )


def _blank_rows(df: pd.DataFrame, path, split: str, after: str = "") -> list[tuple[int, str]]:
    """(row index, message) for each train or dev row without a dialogue or a reference (``summary``, or all
    of ``summary1..K``: a blank extra reference is fine). An empty test dialogue is kept with a warning: every
    test row needs a line in the submission, and it is summarised as it is. ``after``: said after "empty"."""
    refs = [c for c in df.columns if re.fullmatch(r"summary\d*", c)]
    dialogue = df["dialogue"].str.strip() == ""
    if split == "test":
        for i in df.index[dialogue]:
            log.warning(
                "%s: row %d, column dialogue: empty%s; kept (the submission needs every test row)", path, i + 1, after
            )
        return []
    problems = [(i, f"row {i + 1}, column dialogue: empty{after}") for i in df.index[dialogue]]
    if refs:
        empty = pd.concat([df[c].str.strip() == "" for c in refs], axis=1)
        if "summary" in refs:
            problems += [(i, f"row {i + 1}, column summary: empty{after}") for i in df.index[empty["summary"]]]
        else:
            cols = ", ".join(refs)
            problems += [(i, f"row {i + 1}, columns {cols}: all empty{after}") for i in df.index[empty.all(axis=1)]]
    return problems


def _settle(df: pd.DataFrame, problems: list, path, split: str, on_invalid: str, what: str) -> pd.DataFrame:
    """``problems`` as ``data.on_invalid`` says: an error naming the first (file, row, column), or those rows
    dropped with a warning; a test row is never dropped (the submission needs every one)."""
    if not problems:
        return df
    problems.sort()
    if split == "test":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{path}: {problems[0][1]}{more}; test rows are never dropped")
    if on_invalid == "error":
        more = f" (and {len(problems) - 1} more; data.on_invalid: drop skips them)" if len(problems) > 1 else ""
        raise DataError(f"{path}: {problems[0][1]}{more}")
    bad = sorted({i for i, _ in problems})
    log.warning("%s: dropped %d %s (data.on_invalid=drop), first: %s", path, len(bad), what, problems[0][1])
    df = df.drop(index=bad).reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"{path}: no rows left after dropping {len(bad)} {what}")
    return df


def _check_extra_fields(path: Path, text: str, width: int) -> None:
    """pandas drops fields past the header's width with only a warning: allow empty ones (a trailing comma)."""
    csv.field_size_limit(1 << 30)
    for i, row in enumerate(csv.reader(io.StringIO(text))):
        if i and any(f.strip() for f in row[width:]):
            raise DataError(
                f"{path}: row {i}: {len(row)} fields but the header has {width} (an unquoted comma in a text?)"
            )


# [ \t]*, not \s*: a tag or a turn's opening never reaches across a line break into the next turn
_SPEAKER_RE = re.compile(r"#[ \t]*[Pp][Ee][Rr][Ss][Oo][Nn][ \t]*(\d+)[ \t]*#")
_LINE_SPEAKER_RE = re.compile(r"^(?:#Person(\d+)#|[Pp]erson[ \t]*(\d+))[ \t]*:[ \t]*", re.M)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\ufeff]")
_BR_RE = re.compile(r"<br\s*/?>", re.I)
_SPACES_RE = re.compile(r"[ \t\u00a0\u3000]+")
_PUNCT_RE = re.compile(r"([!?.~,])\1{2,}")


def clean_text(text: str, normalize_speakers: bool = True, remove_noise: bool = True) -> str:
    """Normalise one dialogue or summary. Idempotent: ``clean(clean(x)) == clean(x)``.

    Always NFC: Korean typed or exported on macOS arrives decomposed (NFD), the tokenizers compose it, and
    ROUGE would then compare composed predictions with decomposed references.
    """
    if remove_noise:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        # control characters go before the escapes they could hide ("\\\x01n" is not a line break)
        text = _CONTROL_RE.sub("", text)
        text = text.replace("\\n", "\n")
        text = _BR_RE.sub("\n", text)
        text = _SPACES_RE.sub(" ", text)
        text = _PUNCT_RE.sub(r"\1\1", text)
        text = "\n".join(line.strip() for line in text.split("\n") if line.strip())
    if normalize_speakers:
        text = _SPEAKER_RE.sub(r"#Person\1#", text)
        text = _LINE_SPEAKER_RE.sub(lambda m: f"#Person{m.group(1) or m.group(2)}#: ", text)
    return unicodedata.normalize("NFC", text).strip()


def clean_frame(df: pd.DataFrame, clean: Clean | dict) -> pd.DataFrame:
    """``data.clean`` applied to the dialogue and summary columns."""
    clean = section(Clean, clean, "data.clean")
    df = df.copy()
    for col in df.columns:
        if col == "dialogue" or re.fullmatch(r"summary\d*", col):
            df[col] = [clean_text(t, clean.normalize_speakers, clean.remove_noise) for t in df[col]]
    return df


def assign_folds(df: pd.DataFrame, n_splits: int, seed: int) -> pd.Series:
    """Fold index per row: stratified by ``topic`` when present, stable for a given (data, seed).

    Rows with the same dialogue (DialogSum's train has 595 dialogues twice, with two summaries) share a
    fold: otherwise a fold model is validated on dialogues it trained on, and every out-of-fold score the
    ensemble learns from is inflated. Data without repeats keeps the plain split, so its folds do not move.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if len(df) < n_splits:
        raise DataError(f"train has {len(df)} rows, fewer than cv.n_splits = {n_splits}")
    groups = df["dialogue"].factorize()[0] if "dialogue" in df.columns else None
    if groups is not None and groups.max() + 1 == len(df):
        groups = None
    if groups is not None:
        log.info("train: %d rows repeat an earlier row's dialogue; repeats share a fold", len(df) - groups.max() - 1)
        if groups.max() + 1 < n_splits:
            raise DataError(f"train has {groups.max() + 1} distinct dialogues, fewer than cv.n_splits = {n_splits}")
    folds = pd.Series(-1, index=df.index, dtype=int)
    if "topic" in df.columns:
        counts = df["topic"].value_counts()
        # Topics too rare to spread over all folds are pooled so stratification never fails.
        labels = df["topic"].where(df["topic"].map(counts) >= n_splits, "__rare__")
        if labels.value_counts().min() >= n_splits:
            if groups is None:
                splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(df, labels)
            else:
                splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                splits = splitter.split(df, labels, groups)
            for k, (_, idx) in enumerate(splits):
                folds.iloc[idx] = k
            return folds
    if groups is None:
        splits = KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(df)
    else:
        splits = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(df, groups=groups)
    for k, (_, idx) in enumerate(splits):
        folds.iloc[idx] = k
    return folds


def shared_dialogues(train: pd.DataFrame, other: pd.DataFrame) -> int:
    """How many of ``other``'s rows have a dialogue that is also in ``train`` (after cleaning)."""
    return int(other["dialogue"].isin(set(train["dialogue"])).sum())


def split_fold(
    train: pd.DataFrame, dev: pd.DataFrame, fold, augmented: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to train on, rows to validate on) for a fold index or ``"full"`` (all train / dev).

    Augmented copies carry their original's fold: fold k trains on the copies of the other folds' rows
    only, and validates on original rows only.
    """
    aug = augmented if augmented is not None and len(augmented) else None
    if fold == "full":
        rows = train if aug is None else pd.concat([train, aug[train.columns.intersection(aug.columns)]])
        return rows.reset_index(drop=True), dev.reset_index(drop=True)
    if fold not in set(train["fold"]):
        raise DataError(f"fold {fold} has no rows in data/processed/train.csv (re-run prepare?)")
    rows = train[train["fold"] != fold]
    if aug is not None:
        rows = pd.concat([rows, aug.loc[aug["fold"] != fold, train.columns.intersection(aug.columns)]])
    return rows.reset_index(drop=True), train[train["fold"] == fold].reset_index(drop=True)


def references(df: pd.DataFrame) -> list[list[str]]:
    """Reference summaries per row: ``summary`` or ``summary1..K``."""
    cols = (
        ["summary"]
        if "summary" in df.columns
        else sorted((c for c in df.columns if re.fullmatch(r"summary\d+", c)), key=lambda c: int(c[7:]))
    )
    if not cols:
        raise DataError("no summary or summary1..K column to score against")
    return [[r for r in row if r.strip()] for row in df[cols].itertuples(index=False, name=None)]


def load_processed(folder: str | Path = PROCESSED) -> dict[str, pd.DataFrame]:
    folder = Path(folder)
    out = {}
    for split in ("train", "dev", "test"):
        path = folder / f"{split}.csv"
        if not path.exists():
            raise DataError(f"{path}: not found; run `dvc repro prepare` first")
        out[split] = pd.read_csv(path, dtype=str, keep_default_na=False)
    out["train"]["fold"] = out["train"]["fold"].astype(int)
    aug = folder / "augmented.csv"
    out["augmented"] = (
        pd.read_csv(aug, dtype=str, keep_default_na=False)
        if aug.exists()
        else pd.DataFrame(columns=["fname", "orig_fname", "fold", "view", "dialogue", "summary"])
    )
    out["augmented"]["fold"] = out["augmented"]["fold"].astype(int)
    return out


# ------------------------------------------------- Korean particles (the sample generator, TTA role swaps)
# Numbers read as Sino-Korean: does the syllable end in a consonant (받침)?
_DIGIT_FINAL = {
    "0": True,
    "1": True,
    "2": False,
    "3": True,
    "4": False,
    "5": False,
    "6": True,
    "7": True,
    "8": True,
    "9": False,
}


def has_final_consonant(word: str) -> bool:
    """True when the last sound of ``word`` takes 은/이/을 rather than 는/가/를."""
    w = word.rstrip("#").rstrip()
    if not w:
        return False
    ch = w[-1]
    if "가" <= ch <= "힣":
        return (ord(ch) - 0xAC00) % 28 != 0
    if ch in _DIGIT_FINAL:
        return _DIGIT_FINAL[ch]
    return False


def josa(word: str, pair: str) -> str:
    """``josa('민수', '은/는') -> '민수는'``; works for ``#Person1#`` tags too."""
    with_final, without = pair.split("/")
    if pair == "으로/로":  # a final ㄹ takes 로 like a vowel does (서울로, #Person1#로 = 일로)
        w = word.rstrip("#")
        rieul = ("가" <= w[-1:] <= "힣" and (ord(w[-1]) - 0xAC00) % 28 == 8) or w[-1:] in ("1", "7", "8")
        use = has_final_consonant(word) and not rieul
        return word + (with_final if use else without)
    return word + (with_final if has_final_consonant(word) else without)
