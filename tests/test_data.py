import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from dialsum.data import DataError, assign_folds, clean_text, read_csv, split_fold

GOOD = 'fname,dialogue,summary,topic\na,"#Person1#: 안녕\n#Person2#: 네",인사한다,일상\nb,#Person1#: 밥 먹자,밥,식사\n'


def write(tmp_path, text, name="train.csv", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_reads_good_file(tmp_path):
    df = read_csv(write(tmp_path, GOOD), "train")
    assert list(df["fname"]) == ["a", "b"]
    assert df.loc[0, "dialogue"].count("\n") == 1


@pytest.mark.parametrize(
    "text, split, needle",
    [
        ("fname,summary\na,x\n", "train", "missing column dialogue"),
        ("dialogue,summary\nd,x\n", "train", "missing column fname"),
        ("fname,dialogue\na,d\n", "train", "missing column summary"),
        ("fname,dialogue,summary\na,   ,x\n", "train", "row 1, column dialogue: empty"),
        ("fname,dialogue,summary\na,d,\n", "train", "row 1, column summary: empty"),
        ("fname,dialogue,summary\na,d,x\na,e,y\n", "train", "row 2, column fname: duplicate"),
        ("fname;dialogue;summary\na;d;x\n", "train", "separated by semicolons"),
        ("fname,dialogue,summary\n", "train", "header only"),
        ("", "train", "file is empty"),
        ("fname,dialogue\na,d\n", "dev", "missing column summary"),
    ],
)
def test_bad_input_one_line_error(tmp_path, text, split, needle):
    with pytest.raises(DataError) as e:
        read_csv(write(tmp_path, text), split)
    msg = str(e.value)
    assert needle in msg and "train.csv" in msg and "\n" not in msg


def test_binary_garbage(tmp_path):
    with pytest.raises(DataError, match="not UTF-8"):
        read_csv(write(tmp_path, b"\xff\xfe\x00\x81garbage\x9c", mode="wb"), "train")


def test_test_file_extra_columns_are_fine(tmp_path):
    df = read_csv(write(tmp_path, "fname,dialogue,extra\na,d,1\n", "test.csv"), "test")
    assert list(df.columns) == ["fname", "dialogue", "extra"]


def test_on_invalid_drop(tmp_path):
    p = write(tmp_path, "fname,dialogue,summary\na,d,x\nb,,y\na,e,z\nc,f,w\n")
    df = read_csv(p, "train", on_invalid="drop")
    assert list(df["fname"]) == ["a", "c"]
    with pytest.raises(DataError, match="and 1 more"):
        read_csv(p, "train")


def test_clean_normalizes_speakers_and_noise():
    raw = "# person 1 #: 안녕하세요!!!!!\\nPerson2 :  네   반가워요<br>#Person1#:  좋아요"
    assert clean_text(raw) == "#Person1#: 안녕하세요!!\n#Person2#: 네 반가워요\n#Person1#: 좋아요"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_clean_is_idempotent_and_total(text):
    once = clean_text(text)
    assert clean_text(once) == once


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30), min_size=1, max_size=5)
)
def test_speaker_tags_survive_cleaning(utterances):
    dialogue = "\n".join(f"#Person{i % 3 + 1}#: {u}" for i, u in enumerate(utterances))
    cleaned = clean_text(dialogue)
    for i in range(min(3, len(utterances))):
        assert f"#Person{i + 1}#:" in cleaned


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_loader_never_crashes_on_arbitrary_bytes(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fuzz") / "train.csv"
    p.write_bytes(blob)
    try:
        read_csv(p, "train")
    except DataError as e:
        assert "\n" not in str(e)


def test_folds_cover_each_row_once_stratified_and_stable():
    df = pd.DataFrame({"fname": [f"f{i}" for i in range(100)], "topic": ["a"] * 50 + ["b"] * 30 + ["c"] * 20})
    f1, f2 = assign_folds(df, 5, 42), assign_folds(df, 5, 42)
    assert (f1 == f2).all() and set(f1) == set(range(5))
    assert (f1.value_counts() == 20).all()
    for topic, n in (("a", 10), ("b", 6), ("c", 4)):
        assert (f1[df["topic"] == topic].value_counts() == n).all()
    assert not (assign_folds(df, 5, 7) == f1).all()


def test_split_fold_never_trains_on_its_own_fold():
    train = pd.DataFrame({"fname": [f"f{i}" for i in range(10)], "fold": [i % 5 for i in range(10)]})
    dev = pd.DataFrame({"fname": ["d0", "d1"]})
    seen = []
    for k in range(5):
        tr, va = split_fold(train, dev, k)
        assert not set(tr["fname"]) & set(va["fname"])
        assert (va["fold"] == k).all() and not (tr["fold"] == k).any()
        assert not set(tr["fname"]) & set(dev["fname"])
        seen += list(va["fname"])
    assert sorted(seen) == sorted(train["fname"])  # OOF rows cover each train row exactly once
    tr, va = split_fold(train, dev, "full")
    assert len(tr) == 10 and list(va["fname"]) == ["d0", "d1"]
