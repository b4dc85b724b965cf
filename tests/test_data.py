import pandas as pd
import pytest
import unicodedata

from hypothesis import example, given, settings, strategies as st

from dialsum.data import DataError, assign_folds, clean_text, read_csv, shared_dialogues, split_fold

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
        ("fname,dialogue,summary\na,hi, you,x\nb,e, f,y\n", "train", "row 1: 4 fields but the header has 3"),
        ("fname,dialogue\na,d\n", "dev", "missing column summary"),
        ("fname,dialogue,summary_ko\na,d,x\n", "dev", "missing column summary"),  # not summary1..K
    ],
)
def test_bad_input_one_line_error(tmp_path, text, split, needle):
    with pytest.raises(DataError) as e:
        read_csv(write(tmp_path, text), split)
    msg = str(e.value)
    assert needle in msg and "train.csv" in msg and "\n" not in msg


def test_a_cell_that_cleaning_empties_is_refused_by_row_or_dropped(tmp_path):
    from dialsum.data import check_cleaned, clean_frame

    path = write(tmp_path, "fname,dialogue,summary\na,#Person1#: hi,<br>\nb,#Person1#: yo,fine\n")
    cleaned = clean_frame(read_csv(path, "dev"), {})  # passes as raw text: "<br>" is not blank
    assert cleaned.at[0, "summary"] == ""
    with pytest.raises(DataError, match=r"train.csv: row 1, column summary: empty after cleaning$"):
        check_cleaned(cleaned, path, "dev", "error")
    assert list(check_cleaned(cleaned, path, "dev", "drop")["fname"]) == ["b"]
    multi = pd.DataFrame({"fname": ["a"], "dialogue": ["d"], "summary1": [""], "summary2": ["x"]})
    assert len(check_cleaned(multi, path, "dev", "error")) == 1  # one reference of several is enough
    test = pd.DataFrame({"fname": ["a"], "dialogue": [""]})
    assert len(check_cleaned(test, path, "test", "error")) == 1  # a test row is never dropped


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
@example("\\\x01n")  # a control character hiding an escaped line break
@example("<b\x01r>")  # ... or a <br>
@example("#Person1#: #person 1\n#Person2#: x")  # a tag's spaces reaching into the next turn
@example("e\x01\u0301")  # a combining accent next to its letter once the control character goes
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


def test_clean_composes_korean_and_keeps_empty_turns_apart():
    nfd = unicodedata.normalize("NFD", "#Person1#: 안녕하세요")
    assert nfd != "#Person1#: 안녕하세요" and clean_text(nfd) == "#Person1#: 안녕하세요"
    assert clean_text(nfd, normalize_speakers=False, remove_noise=False) == "#Person1#: 안녕하세요"
    assert clean_text("#Person1#:\n#Person2#: 네").splitlines() == ["#Person1#: ", "#Person2#: 네"]
    assert clean_text("#Person1#: # person 1\n#Person2#: 네").endswith("\n#Person2#: 네")


def test_a_trailing_comma_on_the_rows_keeps_the_columns(tmp_path):
    df = read_csv(write(tmp_path, "fname,dialogue,summary\na,d,x,\nb,e,y,\n"), "train")
    assert list(df["fname"]) == ["a", "b"] and list(df["summary"]) == ["x", "y"]


def test_test_rows_are_never_dropped(tmp_path):
    p = write(tmp_path, "fname,dialogue\n001,d\n002,\n003,e\n", "test.csv")
    for mode in ("error", "drop"):
        assert list(read_csv(p, "test", on_invalid=mode)["fname"]) == ["001", "002", "003"]
    dup = write(tmp_path, "fname,dialogue\n001,d\n001,e\n", "test.csv")
    with pytest.raises(DataError, match="row 2, column fname: duplicate fname '001'; test rows are never dropped"):
        read_csv(dup, "test", on_invalid="drop")


def test_a_blank_extra_reference_is_fine(tmp_path):
    p = write(tmp_path, "fname,dialogue,summary1,summary2\na,d,x,\nb,e,,\nc,f,,z\n", "dev.csv")
    assert list(read_csv(p, "dev", on_invalid="drop")["fname"]) == ["a", "c"]
    with pytest.raises(DataError, match="row 2, columns summary1, summary2: all empty"):
        read_csv(p, "dev")


def test_repeated_dialogues_share_a_fold():
    # 30 dialogues, 10 of them twice with another summary (as DialogSum's train has)
    dialogues = [f"#Person1#: d{i}" for i in range(30)] + [f"#Person1#: d{i}" for i in range(0, 30, 3)]
    df = pd.DataFrame({"dialogue": dialogues, "topic": [["a", "b"][i % 2] for i in range(len(dialogues))]})
    for frame in (df, df.drop(columns="topic")):
        folds = assign_folds(frame, 5, 42)
        assert (folds.groupby(frame["dialogue"]).nunique() == 1).all() and set(folds) == set(range(5))
    unique = df.iloc[:30]
    assert (assign_folds(unique, 5, 42) == assign_folds(unique.drop(columns="dialogue"), 5, 42)).all()
    assert shared_dialogues(df, pd.DataFrame({"dialogue": ["#Person1#: d3", "#Person1#: new"]})) == 1
    with pytest.raises(DataError, match="3 distinct dialogues, fewer than cv.n_splits = 5"):
        assign_folds(pd.DataFrame({"dialogue": ["x", "y", "z", "x", "y"]}), 5, 42)


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


def test_outputs_get_ordinary_file_modes(tmp_path):
    from dialsum import io

    f = io.write_text(tmp_path / "a.csv", "x\n")
    with io.atomic_dir(tmp_path / "d") as d:
        (d / "w").write_text("w")
    # mkstemp/mkdtemp alone leave 0600 and 0700: a served report or a shared checkout could not be read
    assert f.stat().st_mode & 0o777 == 0o666 & ~io._UMASK
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~io._UMASK


def test_a_carriage_return_in_a_text_survives_the_processed_csv(tmp_path):
    """``remove_noise: false`` keeps a lone ``\\r``; written bare, it read back as a line break and split the row
    (a made-up row whose fname was the rest of the dialogue). Ordinary outputs stay byte-identical."""
    from dialsum import io

    df = pd.DataFrame({"fname": ["t1", "t2"], "dialogue": ["#Person1#: 안녕\r#Person2#: 네", "#Person1#: 좋아"]})
    io.write_csv(tmp_path / "test.csv", df)
    back = pd.read_csv(tmp_path / "test.csv", dtype=str, keep_default_na=False)
    assert back.equals(df)
    plain = df.assign(dialogue=["a, b", 'say "x"\nnext'])
    io.write_csv(tmp_path / "plain.csv", plain)
    assert (tmp_path / "plain.csv").read_bytes() == plain.to_csv(index=False, lineterminator="\n").encode()
