"""LoRA / QLoRA on the offline stand-ins, for real: bitsandbytes 4-bit runs on this CPU."""

import json

import pandas as pd
import pytest
import torch

from dialsum import generation, models
from dialsum.params import load
from conftest import MICRO_ARCH, ROOT, micro_entry

bnb = pytest.importorskip("bitsandbytes")

TEXTS = [
    "#Person1#: 안녕하세요, 내일 오후 3시에 예약할게요. 전화번호는 #PhoneNumber#입니다.",
    "#Person2#: 네, 알겠습니다. 성함이 어떻게 되세요?",
] * 20
entry = micro_entry  # a one-layer model of an architecture; the family follows it (bart: seq2seq)


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("arch_type", ["llama", "gpt_neox"])
def test_qlora_4bit_layers_and_only_adapters_train(tmp_path, arch_type):
    e = entry(arch_type, quantization="4bit", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"})
    models.build_init(e, TEXTS, tmp_path, seed=0)
    model, tok = models.load_for_training(e, tmp_path, seed=0)

    names = trainable_names(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    quantized = {
        n.rsplit(".", 2)[-2]
        for n, m in model.named_modules()
        if isinstance(m, bnb.nn.Linear4bit) and n.endswith("base_layer")
    }
    assert quantized == set(models.LORA_TARGETS[arch_type])  # every targeted projection is NF4 underneath
    w = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert w.quant_state.quant_type == "nf4" and w.dtype == torch.uint8
    assert not isinstance(model.get_output_embeddings(), bnb.nn.Linear4bit)  # head stays full precision

    x = torch.tensor([tok(TEXTS[0])["input_ids"]])
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # no-grad inference too: on an AVX512-BF16 CPU bitsandbytes would repack these small layers and crash
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=x).logits).all()
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and m.in_features % 64:
            assert not m.support_avx512bf16_for_cpu  # False when switched off, 0 on a CPU without AVX512-BF16


def test_quantization_without_lora_block_gets_default_qlora(tmp_path):
    e = entry("llama", quantization="8bit", lora=None)
    models.build_init(e, TEXTS, tmp_path, seed=0)
    model, _ = models.load_for_training(e, tmp_path, seed=0)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    assert model.peft_config["default"].r == models.DEFAULT_LORA["r"]
    assert all("lora_" in n for n in trainable_names(model))


def test_kobart_architecture_with_lora(tmp_path):
    e = entry("bart", family="seq2seq", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    models.build_init(e, TEXTS, tmp_path, seed=0)
    model, _ = models.load_for_training(e, tmp_path, seed=0)
    names = trainable_names(model)
    assert names and all("lora_" in n for n in names)
    assert any(".encoder." in n for n in names) and any(".decoder." in n for n in names)


def _tagless_hub(tmp_path, arch: str):
    """A "hub" checkpoint whose vocabulary lacks the tags and whose output layer is untied: Llama's as SOLAR's;
    Phi's, whose output layer also has a bias."""
    from transformers import AutoModelForCausalLM, PhiConfig

    hub = tmp_path / "hub"
    tok = models.train_tokenizer(TEXTS, 400, "causal")
    tok.save_pretrained(hub)
    if arch in ("llama", "llama-padded"):
        config = models.scratch_config(entry("llama"), tok)
        if arch == "llama-padded":  # more rows than tokens, as Polyglot-ko's 30,080 for 30,003
            config.vocab_size = len(tok) + 40
    else:
        ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        config = PhiConfig(
            vocab_size=len(tok),
            hidden_size=MICRO_ARCH["d_model"],
            intermediate_size=MICRO_ARCH["ffn"],
            num_hidden_layers=MICRO_ARCH["layers"],
            num_attention_heads=MICRO_ARCH["heads"],
            max_position_embeddings=128,
            tie_word_embeddings=False,
            **ids,
        )
    torch.manual_seed(0)  # the same "hub" weights whatever ran before
    AutoModelForCausalLM.from_config(config).save_pretrained(hub)
    return hub


@pytest.mark.parametrize(
    "arch,merge,quantization",
    [
        ("llama", False, "none"),
        ("llama", True, "none"),
        ("llama", False, "4bit"),
        ("phi", False, "none"),
        ("llama-padded", False, "none"),
    ],
)
def test_added_tags_train_their_embedding_and_output_rows(tmp_path, arch, merge, quantization):
    """A pretrained vocabulary without #Person1# and an output layer not tied to the input embeddings (as
    SOLAR's, Polyglot-ko's): LoRA also trains the new tags' rows of both (peft trainable tokens); an output
    layer with a bias (Phi) trains whole, as trainable rows would drop its bias. Resizing starts every new
    output row at the same mean; were those rows frozen, the model could not learn to score one tag above
    the others. Saved (adapter, or merged) and loaded back, the model scores as trained."""
    hub = _tagless_hub(tmp_path, arch)
    lora = {"r": 4, "alpha": 8, "merge": merge, "target_modules": ["q_proj", "v_proj"]}
    e = {**entry("llama"), "pretrained": str(hub), "lora": lora, "quantization": quantization}
    init = tmp_path / "init"
    models.build_init(e, TEXTS, init, seed=0)
    model, tok2 = models.load_for_training(e, init, seed=0)
    names = trainable_names(model)
    deltas = {n: p for n, p in model.named_parameters() if "trainable_tokens_delta" in n}
    assert all(p.shape[0] == len(models.TAGS) for p in deltas.values())  # the tags' rows, not whole matrices
    if arch == "llama-padded":  # the tags took padding rows: no resize, and still they are what trains
        assert max(tok2.convert_tokens_to_ids(models.TAGS)) < model.get_input_embeddings().weight.shape[0] - 24
    if arch != "phi":
        assert all("lora_" in n or "trainable_tokens" in n for n in names)
        assert len(deltas) == 2 and any("lm_head" in n for n in deltas) and any("embed_tokens" in n for n in deltas)
    else:
        assert len(deltas) == 1 and "embed_tokens" in next(iter(deltas))
        head = [n for n in names if "lm_head" in n]
        assert any(n.endswith("weight") for n in head) and any(n.endswith("bias") for n in head)

    tags = tok2.convert_tokens_to_ids(["#Person1#", "#Person2#", "#PhoneNumber#"])
    ids = torch.tensor([tok2("#Person1#: 안녕하세요.", add_special_tokens=False)["input_ids"]])

    def tag_scores(m):
        with torch.no_grad():
            return m(input_ids=ids).logits[0, -1, tags]

    before = tag_scores(model)
    if arch != "llama-padded":  # padding rows hold whatever the checkpoint has; resized rows start alike
        assert float(before.max() - before.min()) < 1e-3
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):  # teach it that #Person2# comes next
        logits = model(input_ids=ids).logits[0, -1]
        loss = torch.nn.functional.cross_entropy(logits[None], torch.tensor([tags[1]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = tag_scores(model)
    assert int(after.argmax()) == 1
    assert float(after[1] - torch.cat([after[:1], after[2:]]).max()) > 1.0  # told apart, by a margin

    models.save_trained(model, tok2, tmp_path / "out", e)
    loaded, _, _ = models.load_for_inference(tmp_path / "out", e)
    assert (tmp_path / "out" / "adapter_config.json").exists() != merge
    assert torch.allclose(tag_scores(loaded), after, atol=1e-4)


def test_unknown_architecture_needs_explicit_targets():
    with pytest.raises(ValueError, match="target_modules"):
        models.lora_targets("mamba", "auto")
    assert models.lora_targets("mamba", ["in_proj"]) == ["in_proj"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """QLoRA (4-bit) on a tiny-llama that was first pre-trained (full parameters) on other dialogues, like
    a hub checkpoint; then 8 new examples through the real training path until it memorises them.

    A randomly initialised base cannot be LoRA-tuned far: its frozen head caps the logits, so the base
    gets a short full-parameter training first, as every real base model has had.
    """
    from dialsum.sequences import build_features
    from dialsum.training import Run, train

    tmp = tmp_path_factory.mktemp("overfit")
    params = load(ROOT / "params.yaml").model_dump(exclude_unset=True)  # as written: a dict to edit
    params["metrics"]["tokenize"] = "whitespace"
    items = ["사과", "우유", "빵", "커피", "책", "가방", "우산", "시계"]
    pre = pd.DataFrame(
        {
            "fname": [f"p{i}" for i in range(32)],
            "dialogue": [
                f"#Person1#: {items[i % 8]}를 {i}개 사고 싶어요. #Person2#: {i}000원입니다." for i in range(32)
            ],
            "summary": [f"#Person1#은 {items[i % 8]}를 {i}개 산다." for i in range(32)],
        }
    )
    df = pd.DataFrame(
        {
            "fname": [f"t{i}" for i in range(8)],
            "dialogue": [f"#Person1#: {i}번 방에 {i + 2}시까지 오세요. #Person2#: 네." for i in range(8)],
            "summary": [f"#Person1#은 {i}번 방에 오라고 한다." for i in range(8)],
        }
    )
    base = {**params["zoo"]["tiny-llama"], **micro_entry("llama")}
    texts = [*pre["dialogue"], *pre["summary"], *df["dialogue"], *df["summary"]]
    models.build_init(base, texts, tmp / "scratch", seed=0)
    params["zoo"]["tiny-llama"] = base
    params["training"].update(
        epochs=30,
        batch_size=8,
        eval_every_epochs=30,
        learning_rate=0.01,
        warmup_ratio=0.0,
        resume="never",
        weight_decay=0.0,
    )
    train(params, Run("tiny-llama", 0, tmp / "scratch", tmp / "hub", tmp / "ckpt0", signature="pre"), pre, pre.iloc[:4])

    e = {**base, "pretrained": str(tmp / "hub"), "quantization": "4bit", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}
    params["zoo"]["tiny-llama"] = e
    params["training"].update(epochs=100, eval_every_epochs=100, learning_rate=0.01)
    init = tmp / "init"
    models.build_init(e, texts, init, seed=0)
    model, tok = models.load_for_training(e, init, seed=0)
    feats, _ = build_features(df, tok, e)
    with torch.no_grad():
        before = sum(
            model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss.item()
            for f in feats
        ) / len(feats)
    out = tmp / "model"
    metrics = train(params, Run("tiny-llama", 0, init, out, tmp / "ckpt", signature="sig"), df, df)
    return {"before": before, "metrics": metrics, "out": out, "df": df, "entry": e}


def test_qlora_training_overfits_and_saves_a_safetensors_adapter(overfit):
    m = overfit["metrics"]
    # The frozen head and final norm of a 32-wide model cap how peaked LoRA can make the softmax (the
    # loss floors near 2.4 here), but the argmax is learnt: the summaries come back exactly.
    assert m["loss"] < 0.5 * overfit["before"], (overfit["before"], m)
    assert m["rouge_sum"] > 2.9, m
    out = overfit["out"]
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not list(out.glob("*.bin")) and not (out / "model.safetensors").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and set(cfg["target_modules"]) == set(models.LORA_TARGETS["llama"])


def test_generation_returns_only_the_summary(overfit):
    model, tok, family = models.load_for_inference(overfit["out"], overfit["entry"])
    assert family == "causal"
    tok.padding_side = "left"
    df = overfit["df"]
    summarizer = generation.Summarizer(model, tok, family, {"num_beams": 1, "max_new_tokens": 16}, 64, batch_size=3)
    texts, lps = summarizer(df["dialogue"], progress=False)
    for text in texts:
        assert "### 대화" not in text and "요약하세요" not in text and "#Person2#: 네." not in text
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 16
    # Memorised: most summaries come back exactly, and generation stopped at eos (nothing trails them).
    exact = sum(t == s for t, s in zip(texts, df["summary"]))
    assert exact >= 6, list(zip(texts, df["summary"]))


def test_merge_option_writes_full_weights(overfit, tmp_path):
    model, tok, _ = models.load_for_inference(overfit["out"], overfit["entry"])
    e = {**overfit["entry"], "lora": {**overfit["entry"]["lora"], "merge": True}}
    models.save_trained(model, tok, tmp_path / "merged", e)
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged, tok2, family = models.load_for_inference(tmp_path / "merged")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())


def test_memory_table_counts_real_parameters():
    from transformers import AutoModelForCausalLM

    from dialsum import memory

    tok = models.train_tokenizer(TEXTS, 400, "causal")
    real = AutoModelForCausalLM.from_config(models.scratch_config(entry("llama"), tok))
    meta = memory.build_meta(models.scratch_config(entry("llama"), tok))
    est = memory.estimate(meta, {"r": 4})
    assert est["params"] == sum(p.numel() for p in real.parameters())
    assert est["nf4_bytes"] < est["int8_bytes"] < est["bf16_bytes"]
    # The published sizes: SOLAR 10.7B, Polyglot-ko 12.8B (model card: 12,898,631,680 incl. buffers).
    solar = memory.estimate(memory.build_meta(memory.REFERENCE_CONFIGS["upstage/SOLAR-10.7B-Instruct-v1.0"]))
    assert abs(solar["params"] / 10.7e9 - 1) < 0.01
    poly = memory.estimate(memory.build_meta(memory.REFERENCE_CONFIGS["EleutherAI/polyglot-ko-12.8b"]))
    assert abs(poly["params"] / 12_898_631_680 - 1) < 0.001
