"""TTA / augmentation transforms: invertibility, tags kept, seeded, and the paraphrase guard."""

import random
import re

import pytest

from dialsum import tta
from dialsum.data import TAG_RE
from dialsum.params import ParamsError

D = (
    "#Person1#: 음, 이번 과학 시험 몇 점 받았어?\n#Person2#: 87점 받았어. 글쎄요, 생각보다 낮아서 속상해.\n"
    "#Person3#: 어, 정말요? 전화번호는 #PhoneNumber#예요.\n#Person1#: 네, 알겠습니다. 내일 전화할게."
)
S = "#Person2#는 과학 시험에서 87점을 받아 속상해하고, #Person1#과 #Person3#은 내일 통화하기로 한다."


def test_reorder_permutes_identities_only_and_inverts_with_particles():
    for seed in range(10):
        v = tta.reorder(D, random.Random(seed))
        assert v.dialogue != D
        # same turns in the same order, only the speaker tags differ
        strip = lambda t: [line.split(":", 1)[1] for line in t.splitlines()]  # noqa: E731
        assert strip(v.dialogue) == strip(D)
        # a model that summarises the permuted dialogue perfectly writes S with the permuted tags;
        # mapping back gives S exactly, particles included (#Person2#는 <-> #Person1#은).
        perm = {int(a): int(b) for a, b in zip(tta.PERSON_RE.findall(D), tta.PERSON_RE.findall(v.dialogue))}
        assert v.inverse(tta.permute_speakers(S, perm)) == S


def test_particles_follow_the_tag_number():
    assert (
        tta.fix_particles("#Person2#은 #Person1#는 #Person3#가 #Person6#와 #Person1#으로 #Person2#을")
        == "#Person2#는 #Person1#은 #Person3#이 #Person6#과 #Person1#로 #Person2#를"
    )
    assert tta.fix_particles("#Person2#이다") == "#Person2#이다"  # not a particle: a following syllable


def test_mask_drops_only_fillers_and_keeps_tags():
    v = tta.mask(D, random.Random(0), fraction=1.0)
    assert "음," not in v.dialogue and "글쎄요" not in v.dialogue and "어, 정말요" not in v.dialogue
    assert TAG_RE.findall(v.dialogue) == TAG_RE.findall(D)
    assert "87점 받았어." in v.dialogue and "#Person1#: 이번 과학 시험" in v.dialogue
    assert v.inverse(S) == S


def test_mask_keeps_words_that_are_not_fillers_there_and_never_joins_turns():
    """The words "like", "so", "well", "you know" are fillers only as discourse markers; a dropped filler takes
    the spaces after it, never the line break that separates two turns."""
    d = (
        "#Person1#: Would you like some tea? I think so.\n#Person2#: Well, I like coffee more, so\n"
        "#Person1#: Um.\n#Person2#: It's, like, big. Oh, you know, do you know him? I'm doing well.\n"
        "#Person1#: 뭐 먹을래? 뭐, 괜찮아. 저 사람, 음, 좋아."
    )
    v = tta.mask(d, random.Random(0), fraction=1.0)
    assert v.dialogue == (
        "#Person1#: Would you like some tea? I think so.\n#Person2#: I like coffee more, so\n"
        "#Person1#: \n#Person2#: It's, big. do you know him? I'm doing well.\n"
        "#Person1#: 뭐 먹을래? 괜찮아. 저 사람, 좋아."
    )


def test_views_depend_on_the_fname_and_dialogue_only():
    """predict summarises each split's views and `dialsum summarize --ensemble` its input's: a dialogue gets
    the same views in both, whatever rows come with it, so the command reproduces the stage with TTA on."""
    from types import SimpleNamespace

    from dialsum.generation import Summarizer

    seen = []

    class Echo(SimpleNamespace):  # Summarizer.views generates through self(...): this one echoes its inputs
        def __call__(self, inputs, desc):
            seen.append(list(inputs))
            return list(inputs), [0.0] * len(inputs)

    echo = Echo(gen=SimpleNamespace(candidates=SimpleNamespace(k=1)))
    aug = tta.Augmenter(["reorder", "mask", "synonym"], 1, seed=42)
    other = D.replace("87점", "90점")
    Summarizer.views(echo, ["dev_1", "dev_2"], [other, D], aug, desc="dev")
    Summarizer.views(echo, ["dev_2"], [D], aug, desc="input")
    stage, command = seen
    assert len(command) == 4 and stage[-4:] == command  # orig + reorder, mask, synonym views of dev_2


def test_synonym_uses_the_table_and_user_file(tmp_path):
    table = tta.load_synonyms()
    assert table["시험"] and table["buy"] == ["purchase"]
    v = tta.synonym(D, random.Random(0), table, fraction=1.0)
    assert v.dialogue != D and TAG_RE.findall(v.dialogue) == TAG_RE.findall(D)
    user = tmp_path / "syn.tsv"
    user.write_text("# mine\n속상해\t슬퍼\n", encoding="utf-8")
    v = tta.synonym(D, random.Random(0), tta.load_synonyms(user), fraction=1.0)
    assert "슬퍼" in v.dialogue
    with pytest.raises(ParamsError, match="nope.tsv"):
        tta.load_synonyms(tmp_path / "nope.tsv")
    en = tta.synonym("#Person1#: I want to buy a cheap car.", random.Random(0), table, fraction=1.0)
    assert "purchase" in en.dialogue and "inexpensive" in en.dialogue and "vehicle" in en.dialogue


def test_views_are_seeded_per_row_and_never_repeat():
    a = tta.Augmenter(["reorder", "mask", "synonym"], 3, seed=7)
    v1 = [(v.name, v.dialogue) for v in a.views("train_1", D)]
    v2 = [(v.name, v.dialogue) for v in tta.Augmenter(["reorder", "mask", "synonym"], 3, seed=7).views("train_1", D)]
    assert v1 == v2  # same seed, same row -> same views, whatever else was processed
    texts = [t for _, t in v1]
    assert len(set(texts)) == len(texts) and D not in texts
    assert {n.split("-")[0] for n, _ in v1} == {"reorder", "mask", "synonym"}
    two = "#Person1#: 안녕\n#Person2#: 안녕하세요"
    assert len(tta.Augmenter(["reorder"], 3, seed=7).views("x", two)) == 1  # one permutation of two speakers


def test_paraphrase_needs_a_model():
    with pytest.raises(ParamsError, match="tta.paraphrase_model is not set"):
        tta.Augmenter(["paraphrase"], 1, seed=0)
    with pytest.raises(ParamsError, match="cannot be loaded"):
        tta.Augmenter(["paraphrase"], 1, seed=0, paraphrase_model="/nonexistent/paraphraser")


def test_paraphrase_errors_name_the_section_that_asked_for_it():
    import pandas as pd

    train = pd.DataFrame({"fname": ["t"], "dialogue": [D], "summary": ["s"], "fold": [0]})
    with pytest.raises(ParamsError, match=r"data.augmentation.paraphrase_model is not set"):
        tta.augment_rows(train, {"strategies": ["paraphrase"], "factor": 1}, seed=0)


def test_paraphrase_keeps_tags_and_blank_lines_and_reads_long_turns_whole(tmp_path, monkeypatch):
    """A blank line was sent to the model as an empty input (invented text came back); turns were cut at 128
    tokens."""
    from conftest import micro_entry
    from dialsum import models

    entry = micro_entry("bart", max_source_len=200)
    texts = ["#Person1#: 안녕하세요, 내일 오후 3시에 예약할게요.", "#Person2#: 네, 알겠습니다."] * 20
    models.build_init(entry, texts, tmp_path / "para", seed=0)
    p = tta.Paraphraser(str(tmp_path / "para"))
    seen = []
    generate = p.model.generate
    monkeypatch.setattr(p.model, "generate", lambda **kw: seen.append(kw) or generate(**kw))
    long_turn = " ".join(["예약할게요"] * 150)
    dialogue = f"#Person1#: 안녕하세요\n\n#Person2#: {long_turn}\n#Person1#: 네"
    v = p(dialogue, random.Random(0))
    lines = v.dialogue.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0].startswith("#Person1#: ")
    assert lines[2].startswith("#Person2#: ") and lines[3].startswith("#Person1#: ")
    ids = seen[0]["input_ids"]
    assert len(seen) == 1 and ids.shape[0] == 3  # the three turns, not the blank line
    assert ids.shape[1] > 128  # the long turn read whole
    positions = p.model.config.max_position_embeddings  # learned positions: never generate past them
    assert ids.shape[1] * 1.5 > positions - 2 and seen[0]["max_new_tokens"] == positions - 2
    assert p(dialogue, random.Random(0)).dialogue == v.dialogue  # seeded


def test_training_augmentation_never_leaks_into_its_own_fold():
    import pandas as pd

    from dialsum.data import assign_folds, split_fold

    train = pd.DataFrame(
        {
            "fname": [f"t{i}" for i in range(20)],
            "dialogue": [f"#Person1#: 음, {i}번 방 예약할게요.\n#Person2#: 네, 알겠습니다." for i in range(20)],
            "summary": [f"#Person1#은 {i}번 방을 예약한다." for i in range(20)],
        }
    )
    train["fold"] = assign_folds(train, 4, seed=0)
    aug = tta.augment_rows(train, {"strategies": ["reorder", "mask"], "factor": 1}, seed=0)
    assert len(aug) == 40 and set(aug["orig_fname"]) == set(train["fname"])
    r = aug[aug["view"] == "reorder-0"].iloc[0]
    assert r["dialogue"].startswith("#Person2#: ") and r["summary"].startswith("#Person2#는")  # summary follows
    for k in range(4):
        rows, val = split_fold(train, train, k, aug)
        held_out = set(train.loc[train["fold"] == k, "fname"])
        assert set(val["fname"]) == held_out  # validation: original rows only
        origins = {f.split("#")[0] for f in rows["fname"]}
        assert not origins & held_out  # no copy of a held-out row is trained on
        assert len(rows) == 3 * (20 - len(held_out))  # each other row + its two copies
    rows, _ = split_fold(train, train, "full", aug)
    assert len(rows) == 60


@pytest.mark.parametrize(
    "dialogue, kept",
    [
        ("#Person1#: 교통 사고 났어요. #Person2#: 김 이사 님께 전화할게요.", ["사고", "이사"]),
        ("#Person1#: 의사 선생님 다음 주에 봬요. #Person2#: 방 청소하고 집에 가요.", ["의사", "선생님", "다음", "방"]),
        (
            "#Person1#: Does the printer work? It cost 5 dollars. #Person2#: Not sure. I'll call you.",
            ["work", "cost", "sure", "call"],
        ),
        ("#Person1#: Happy birthday! Let's go home and shop online tomorrow.", ["Happy", "home", "shop", "tomorrow"]),
    ],
)
def test_the_shipped_synonyms_leave_words_with_a_second_sense_alone(dialogue, kept):
    """Swapped whole words out of context, these changed the dialogue's meaning (사고 accident -> 구입하고 buying,
    "not sure" -> "not certainly", "Happy birthday" -> "Glad birthday")."""
    table = tta.load_synonyms()
    words = lambda t: re.findall(r"[^\s#,.!?]+", t)  # noqa: E731
    for seed in range(10):
        out = words(tta.synonym(dialogue, random.Random(seed), table, fraction=1.0).dialogue)
        assert all(out.count(w) == words(dialogue).count(w) for w in kept), out
