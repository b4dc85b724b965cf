"""Crash-safe writes: every output goes to a temporary sibling first and is renamed into place, so an
interrupted stage never leaves a half-written file that DVC would cache as good."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

# mkstemp/mkdtemp create 0600/0700; outputs get the modes an ordinary write would (a served report, a team
# reading a shared checkout). Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # on the disk before the rename: a power cut after it must not leave an empty file under the name
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    # the csv module quotes a field for the line terminator's characters only: a lone carriage return in a text
    # (kept by data.remove_noise: false) went out bare and read back as a line break, splitting the row in two
    text = df.select_dtypes(include=["object", "string"])
    cr = any(text[c].astype(str).str.contains("\r", regex=False).any() for c in text)
    return write_text(
        path, df.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_ALL if cr else csv.QUOTE_MINIMAL)
    )


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_UMASK)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
