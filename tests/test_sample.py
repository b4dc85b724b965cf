import re

import pandas as pd

from dialsum.cli import main
from dialsum.sample import josa, write_sample


def test_committed_sample_regenerates_byte_identical(tmp_path, root):
    assert main(["sample", "--out", str(tmp_path), "--seed", "0"]) == 0
    for split in ("train", "dev", "test"):
        assert (tmp_path / f"{split}.csv").read_bytes() == (root / "data/sample" / f"{split}.csv").read_bytes()


def test_other_seed_differs(tmp_path):
    a, b = write_sample(tmp_path / "a", seed=0), write_sample(tmp_path / "b", seed=1)
    assert a["train"].read_bytes() != b["train"].read_bytes()


def test_sample_layout_and_learnability(root):
    train = pd.read_csv(root / "data/sample/train.csv")
    dev = pd.read_csv(root / "data/sample/dev.csv")
    test = pd.read_csv(root / "data/sample/test.csv")
    assert list(train.columns) == ["fname", "dialogue", "summary", "topic"]
    assert list(test.columns) == ["fname", "dialogue"]
    assert (len(train), len(dev), len(test)) == (400, 80, 80)
    assert {"병원", "식당", "여행", "쇼핑", "회사", "학교"} <= set(train["topic"])
    speakers = train["dialogue"].map(lambda d: len(set(re.findall(r"^(#Person\d#):", d, re.M))))
    assert speakers.min() == 2 and speakers.max() == 4
    assert train["dialogue"].str.startswith("#Person1#:").all()
    # masked PII appears in the dialogue and is restated in the summary
    pii = train[train["summary"].str.contains("#PhoneNumber#|#Address#|#CardNumber#|#AccountNumber#")]
    assert len(pii) > 100
    for d, s in zip(pii["dialogue"], pii["summary"]):
        for tag in re.findall(r"#(?:PhoneNumber|Address|CardNumber|AccountNumber)#", s):
            assert tag in d


def test_josa_follows_final_consonant():
    assert josa("민수", "은/는") == "민수는"
    assert josa("지은", "은/는") == "지은은"
    assert josa("#Person1#", "이/가") == "#Person1#이"
    assert josa("#Person2#", "이/가") == "#Person2#가"
