"""The GPU decisions, each with the device facts injected (nothing here needs a GPU): precision, placement,
one GPU per process, TF32, refused launch combinations, the memory check and the 10B entries' defaults, the
QLoRA merge's release of the training model, and the in-training evaluation sharded over 2 gloo processes."""

import gc
import json
import os
import socket
import subprocess
import sys
import weakref
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from conftest import ROOT, micro_entry
from dialsum import device, models
from dialsum.device import GiB, Device
from dialsum.params import ParamsError, Training, ZooEntry, for_model, load

T4 = Device(n_gpu=1, name="Tesla T4", capability=(7, 5), total_bytes=15 * GiB, free_bytes=14 * GiB)
V100 = Device(n_gpu=1, name="Tesla V100", capability=(7, 0), total_bytes=32 * GiB, free_bytes=31 * GiB)
A100 = Device(n_gpu=1, name="A100", capability=(8, 0), total_bytes=80 * GiB, free_bytes=79 * GiB)
CPU = Device()


def test_bf16_only_where_native_fp16_on_older_gpus():
    """Finding 4: torch's is_bf16_supported() says yes on a T4 (emulation); `auto` then trained in slow emulated
    bf16 and the fp16 branch never ran."""
    assert device.precision("auto", T4) == {"fp16": True}
    assert device.precision("auto", V100) == {"fp16": True}
    assert device.precision("auto", A100) == {"bf16": True}
    assert device.precision("auto", CPU) == {}
    assert device.precision("fp16", T4) == {"fp16": True} and device.precision("no", A100) == {}
    with pytest.raises(ParamsError, match="only emulates bf16.*use fp16 or auto"):
        device.precision("bf16", T4)
    with pytest.raises(ParamsError, match="needs a CUDA GPU"):
        device.precision("fp16", CPU)
    assert device.compute_dtype(T4) is torch.float16
    assert device.compute_dtype(A100) is torch.bfloat16
    assert device.compute_dtype(CPU) is torch.float32


@pytest.fixture
def llama_init(tmp_path):
    texts = list(pd.read_csv(ROOT / "data/sample/train.csv")["dialogue"][:40])
    entry = micro_entry("llama")
    models.build_init(entry, texts, tmp_path / "init", seed=0)
    return entry, tmp_path / "init"


class _Loaded(Exception):
    pass


def _load_kwargs(monkeypatch, entry, init_dir, dev: Device) -> dict:
    """The keyword arguments load_for_training hands from_pretrained on ``dev``."""
    seen = {}

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.update(kwargs)
            raise _Loaded

    monkeypatch.setattr(models, "auto_classes", lambda family: Recorder)
    monkeypatch.setattr(Device, "probe", classmethod(lambda cls: dev))
    with pytest.raises(_Loaded):
        models.load_for_training(entry, init_dir, seed=0)
    return seen


def test_each_rank_loads_its_4bit_model_on_its_own_gpu(monkeypatch, llama_init):
    """Finding 2: every rank loaded its k-bit model on GPU 0 (device_map {"": 0})."""
    entry, init_dir = llama_init
    entry = {**entry, "quantization": "4bit", "lora": {"r": 4, "alpha": 8}}
    rank1 = Device(n_gpu=2, name="A100", capability=(8, 0), total_bytes=80 * GiB, local_rank=1, world_size=2)
    kw = _load_kwargs(monkeypatch, entry, init_dir, rank1)
    assert kw["device_map"] == {"": 1}
    assert kw["dtype"] is torch.bfloat16 and kw["quantization_config"].bnb_4bit_compute_dtype is torch.bfloat16
    kw = _load_kwargs(monkeypatch, entry, init_dir, T4)  # one process, an older GPU
    assert kw["device_map"] == {"": 0}
    assert kw["dtype"] is torch.float16 and kw["quantization_config"].bnb_4bit_compute_dtype is torch.float16
    assert "device_map" not in _load_kwargs(monkeypatch, entry, init_dir, CPU)
    assert device.placement(rank1) == {"device_map": {"": 1}} and device.placement(CPU) == {}


def test_one_process_on_a_multi_gpu_box_uses_one_gpu(caplog):
    """Finding 3: under `launcher: python` the Trainer counts every visible GPU, wraps DataParallel and multiplies
    the per-device batch by their count. Checked on transformers' own arguments class: ``_n_gpu`` as its device
    setup computes it on a 4-GPU box, then dialsum's decision."""
    from transformers import Seq2SeqTrainingArguments

    args = Seq2SeqTrainingArguments(output_dir="unused", per_device_train_batch_size=8, use_cpu=True)
    args._n_gpu = 4  # what _setup_devices sets from torch.cuda.device_count() without a launcher
    assert args.train_batch_size == 32  # the multiplied batch
    four = Device(n_gpu=4, name="A100", capability=(8, 0), total_bytes=80 * GiB)
    assert device.one_gpu_per_process(args, four)
    assert args.n_gpu == 1 and args.train_batch_size == 8
    assert "4 GPUs visible" in caplog.text and "training.num_processes=4" in caplog.text
    assert not device.one_gpu_per_process(args, A100)  # one GPU: nothing to do
    ddp = SimpleNamespace(world_size=2, _n_gpu=1)
    assert not device.one_gpu_per_process(ddp, four) and ddp._n_gpu == 1  # a launched rank already has one


def test_tf32_on_ampere_and_later_only():
    """Finding 9: the fp32 paths (KoBART, predict, the in-training generation) never used TF32 tensor cores."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert not device.enable_tf32(T4) and not device.enable_tf32(CPU)
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert device.enable_tf32(A100)
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_combinations_that_would_crash_or_hang_are_refused(tmp_path):
    """Finding 6 and the auto batch under DDP: refused before any model loads, with what to use instead."""
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\nnum_processes: 2\n")
    qlora = ZooEntry.model_validate({**micro_entry("llama"), "quantization": "4bit", "lora": {"r": 4}})
    merged = ZooEntry.model_validate({**micro_entry("llama"), "lora": {"r": 4, "merge": True}})
    plain = ZooEntry.model_validate(micro_entry("llama"))
    sharded = Training(launcher="accelerate", num_processes=2, accelerate_config=str(fsdp))
    with pytest.raises(ParamsError, match="distributed_type FSDP.*quantization 4bit.*plain DDP"):
        device.check_launch(sharded, qlora)
    with pytest.raises(ParamsError, match="lora.merge: true"):
        device.check_launch(sharded, merged)
    device.check_launch(sharded, plain)  # FSDP of a plain model: the weights are gathered for saving
    device.check_launch(Training(launcher="accelerate", num_processes=2), qlora)  # QLoRA under DDP: fine
    with pytest.raises(ParamsError, match="batch_size = auto with training.num_processes > 1"):
        device.check_launch(Training(launcher="accelerate", num_processes=2, batch_size="auto"), plain)
    device.check_launch(Training(batch_size="auto"), plain)  # one process may halve its own batch
    with pytest.raises(ParamsError, match="accelerate_config .*cannot be read"):
        device.check_launch(Training(launcher="accelerate", accelerate_config=str(tmp_path / "nope.yaml")), plain)


def _meta(entry: ZooEntry):
    from dialsum import memory

    model = memory.build_meta(memory.REFERENCE_CONFIGS[entry.pretrained])
    for p in model.parameters():  # QLoRA: the base is frozen; the adapters' state is small
        p.requires_grad_(False)
    return model


BIG = ("solar-10_7b", "polyglot-ko-12_8b", "kullm-v2", "koalpaca", "ldcc-solar")


def _card_24gb(entry: ZooEntry) -> Device:
    """An RTX 4090 after the entry's 4-bit weights loaded (and ~1.5 GiB of CUDA context and fp32 head)."""
    from dialsum import memory

    weights = memory.estimate(_meta(entry))["nf4_bytes"]
    return Device(
        n_gpu=1, name="RTX 4090", capability=(8, 9), total_bytes=24 * GiB, free_bytes=24 * GiB - weights - 1.5 * GiB
    )


def test_memory_check_stops_with_settings_that_fit():
    """Finding 8: the 10B entries inherited batch 16 / eval batch 64; the fp32 logits of one evaluation batch
    alone (~19 GB for SOLAR) overflow a 24 GB card at the first evaluation."""
    params = load(ROOT / "params.yaml")
    entry = params.zoo["solar-10_7b"]
    card = _card_24gb(entry)
    old = params.training  # the run-wide defaults the entries used to inherit
    assert (old.batch_size, old.eval_batch_size) == (16, 64)
    with pytest.raises(ParamsError) as err:
        device.check_memory(_meta(entry), entry, old, card)
    msg = str(err.value)
    assert "RTX 4090" in msg and "training.batch_size=" in msg and "\n" not in msg
    fit = dict(kv.split("=") for kv in msg.split("set ")[1].split(" (")[0].split())
    bs, accum = int(fit["training.batch_size"]), int(fit["training.gradient_accumulation_steps"])
    assert bs * accum >= 16  # the same effective batch
    suggested = old.model_copy(
        update={
            "batch_size": bs,
            "gradient_accumulation_steps": accum,
            "eval_batch_size": int(fit["training.eval_batch_size"]),
        }
    )
    device.check_memory(_meta(entry), entry, suggested, card)  # what it suggests fits
    device.check_memory(_meta(entry), entry, old, CPU)  # no GPU: nothing to check


def test_an_auto_batch_is_checked_at_its_floor_not_at_64():
    """batch_size: auto starts at 64 and halves on an out-of-memory error; the check refused it on a card where the
    halving would have found a batch that fits."""
    params = load(ROOT / "params.yaml")
    entry = params.zoo["solar-10_7b"]
    card = _card_24gb(entry)
    fixed = for_model(params, "solar-10_7b").training.model_copy(update={"batch_size": 64, "eval_batch_size": 1})
    with pytest.raises(ParamsError, match="per step and"):
        device.check_memory(_meta(entry), entry, fixed, card)
    device.check_memory(_meta(entry), entry, fixed.model_copy(update={"batch_size": "auto"}), card)
    tiny = Device(n_gpu=1, name="T4", capability=(7, 5), total_bytes=GiB, free_bytes=GiB // 2)
    with pytest.raises(ParamsError, match=r"per step at batch size 1 \(batch_size: auto halves down to it\)"):
        device.check_memory(_meta(entry), entry, fixed.model_copy(update={"batch_size": "auto"}), tiny)


def test_memory_check_counts_weights_the_trainer_has_yet_to_move():
    """An unquantized model loads on the CPU and the Trainer moves it to the GPU after the check: SOLAR in 16 bits
    (20 GiB) with LoRA passed on an empty 24 GB card, as if its weights took no room."""
    params = load(ROOT / "params.yaml")
    entry = params.zoo["solar-10_7b"].model_copy(update={"quantization": "none"})
    tcfg = for_model(params, "solar-10_7b").training
    card = Device(n_gpu=1, name="RTX 4090", capability=(8, 9), total_bytes=24 * GiB, free_bytes=23 * GiB)
    meta = _meta(entry)
    device.check_memory(meta, entry, tcfg, card)  # on the meta device: placed nowhere yet, nothing pending
    # half on the meta device, then storage never written: a CPU copy in fp16 wrote 21.5 GB (OOM-killed a
    # worker on the 24 GiB CI box when anything else ran beside it)
    on_cpu = meta.half().to_empty(device="cpu")
    with pytest.raises(ParamsError, match=r"23\.0 GiB free before 20\.0 GiB of weights move there: .*quantization"):
        device.check_memory(on_cpu, entry, tcfg, card)
    roomy = Device(n_gpu=1, name="H100", capability=(9, 0), total_bytes=80 * GiB, free_bytes=79 * GiB)
    device.check_memory(on_cpu, entry, tcfg, roomy)


def test_a_launched_worker_never_launches_again(monkeypatch):
    """accelerate's one-process launcher sets no LOCAL_RANK: a num_processes: 1 worker relaunched itself forever."""
    from dialsum import training

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(training.LAUNCHED, raising=False)
    one = Training(launcher="accelerate", num_processes=1)
    assert training.launch_command(one, ["stages/train.py"]) is not None  # the parent launches
    calls = []
    monkeypatch.setattr(device, "check_launch", lambda *a: None)
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: calls.append(env) or SimpleNamespace(returncode=0))
    params = SimpleNamespace(training=one, zoo={"m": None})
    assert training.relaunch(params, "m", ["stages/train.py"]) is True
    assert calls[0][training.LAUNCHED] == "1"
    monkeypatch.setenv(training.LAUNCHED, "1")  # the worker, as accelerate starts it: no LOCAL_RANK
    assert training.launch_command(one, ["stages/train.py"]) is None


def test_the_launching_parent_asks_the_gpu_nothing_that_holds_memory(monkeypatch):
    """mem_get_info creates a CUDA context (a few hundred MB on GPU 0) in a parent that only waits."""
    from dialsum import training

    asked = []
    props = SimpleNamespace(name="A100", major=8, minor=0, total_memory=80 * GiB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: asked.append(i) or (70 * GiB, 80 * GiB))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(training.LAUNCHED, raising=False)
    cmd = training.launch_command(Training(launcher="accelerate", num_processes=2), ["stages/train.py"])
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and asked == []
    assert Device.probe().free_bytes == 70 * GiB and asked == [0]  # a training process still measures


@pytest.mark.parametrize("name", BIG)
def test_10b_entries_fit_a_24gb_card_by_default(name):
    params = load(ROOT / "params.yaml")
    entry, tcfg = params.zoo[name], for_model(params, name).training
    assert tcfg.batch_size * tcfg.gradient_accumulation_steps == 16  # the effective batch they always had
    device.check_memory(_meta(entry), entry, tcfg, _card_24gb(entry))


def test_qlora_merge_frees_the_training_model_before_loading_the_base(monkeypatch, tmp_path):
    """Finding 7: `lora.merge: true` after QLoRA loaded the 16-bit base while the training model still held the GPU."""
    events = []

    class Trained:
        def save_pretrained(self, out, **kw):
            events.append("adapter saved")

    class Merged:
        def merge_and_unload(self):
            return self

        def save_pretrained(self, out, **kw):
            events.append("merged saved")

    trained = Trained()
    alive = weakref.ref(trained)

    def load(adapter, entry, gpu=True):
        gc.collect()
        events.append("base loaded, training model " + ("alive" if alive() else "gone"))
        assert entry.quantization == "none"
        assert gpu is False  # the 16-bit base of a 13B model is more than a 24 GB card: the merge runs on the CPU
        return Merged(), None, "causal"

    monkeypatch.setattr(models, "load_for_inference", load)
    monkeypatch.setattr(models, "save_tokenizer", lambda tok, out: None)
    entry = {**micro_entry("llama"), "quantization": "4bit", "lora": {"r": 4, "merge": True}}
    holder = {"model": trained}
    del trained
    models.save_trained(holder["model"], None, tmp_path, entry, release=lambda: holder.clear())
    assert events == ["adapter saved", "base loaded, training model gone", "merged saved"]


def test_release_leaves_no_reference_to_the_trained_model(tmp_path):
    """What `release` drops in the train stage: after it, nothing the Trainer built keeps the model alive."""
    from test_training import _trainer

    from dialsum.training import _release

    trainer = _trainer(tmp_path)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    alive = weakref.ref(trainer.model)
    _release(trainer)
    gc.collect()
    assert alive() is None


def test_in_training_rouge_is_sharded_over_ranks_with_one_process_results(tmp_path, llama_init, world=2):
    """Finding 5: every rank generated the whole validation set. Now each generates its share, the summaries are
    gathered, and every rank scores the same full set: the same metrics and summaries as one process."""
    _, init_dir = llama_init
    worker = [str(ROOT / "tests" / "ddp_eval_worker.py"), str(init_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    one = tmp_path / "one"
    subprocess.run([sys.executable, *worker, str(one)], check=True, env=env, timeout=300)
    many = tmp_path / "many"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port", str(port)]
    p = subprocess.run([*cmd, *worker, str(many)], env=env, timeout=300, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((many / f"rank{r}.json").read_text()) for r in range(world)]
    n = len(single["predictions"])
    assert single["generated"] == n
    assert sorted(r["generated"] for r in ranks) == [n // world, n - n // world]  # each its share, no more
    for r in ranks:
        assert r["predictions"] == single["predictions"]
        assert r["metrics"] == single["metrics"]


def test_train_frees_the_qlora_model_before_the_merge_loads_the_base(monkeypatch, tmp_path, llama_init):
    """The same through training.train on a 4-bit stand-in: when the unquantized base loads for the merge, the
    trained k-bit model is already unreachable (on a GPU: its memory is free)."""
    from dialsum import training
    from dialsum.params import typed

    entry, init_dir = llama_init
    entry = {**entry, "quantization": "4bit", "lora": {"r": 4, "alpha": 8, "merge": True}}
    p = load(ROOT / "params.yaml").model_dump(exclude_unset=True)
    p["zoo"]["tiny-llama"] = entry
    p["training"].update(epochs=1, eval_every_epochs=1, batch_size=4, resume="never")
    p["metrics"]["tokenize"] = "whitespace"
    df = pd.read_csv(ROOT / "data/sample/train.csv").head(8)
    seen, real_release, real_load = {}, training._release, models.load_for_inference

    def release(trainer):
        seen["model"] = weakref.ref(trainer.model)
        real_release(trainer)

    def load_base(adapter, e, **kw):
        gc.collect()
        seen["alive at base load"] = seen["model"]() is not None
        return real_load(adapter, e, **kw)

    monkeypatch.setattr(training, "_release", release)
    monkeypatch.setattr(models, "load_for_inference", load_base)
    run = training.Run("tiny-llama", 0, init_dir, tmp_path / "out", tmp_path / "ckpt", signature="sig")
    training.train(typed(p), run, df, df.head(4), track=False)
    assert seen["alive at base load"] is False
    assert (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "adapter_config.json").exists()


def test_an_encoder_decoders_activations_count_both_stacks():
    """BART's num_hidden_layers is its encoder's depth: the decoder's layers were left out of the estimate."""
    from transformers import BartConfig

    entry = ZooEntry(family="seq2seq", pretrained="x", max_source_len=512, max_target_len=128)
    tcfg = Training(batch_size=8)
    six, twelve = (BartConfig(encoder_layers=6, decoder_layers=d, d_model=768, vocab_size=30000) for d in (6, 12))
    assert device.activation_need(twelve, entry, tcfg)["train"] > device.activation_need(six, entry, tcfg)["train"]
    encoder_only = 8 * 512 * 6 * device._block_bytes(768, 16, 512) + 8 * 128 * 30000 * 8
    assert device.activation_need(six, entry, tcfg)["train"] > encoder_only
    from transformers import BertConfig, EncoderDecoderConfig, T5Config

    def bert2bert(d):  # minilm2minilm, klue-bert2bert: BART's two keys are absent
        dec = BertConfig(num_hidden_layers=d, is_decoder=True, add_cross_attention=True)
        return EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(num_hidden_layers=6), dec)

    for shallow, deep in (
        (bert2bert(1), bert2bert(6)),
        (T5Config(num_decoder_layers=1), T5Config(num_decoder_layers=6)),
    ):
        assert (
            device.activation_need(deep, entry, tcfg)["train"] > device.activation_need(shallow, entry, tcfg)["train"]
        )
