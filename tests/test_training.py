"""The in-training evaluation: an encoder-decoder encodes each validation dialogue once per evaluation (the
loss pass's encoder states feed the ROUGE generation), with the same loss, summaries and scores as when the
generation encodes them again."""

import copy
import functools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from conftest import tiny_bart_params
from dialsum import models
from dialsum.params import typed


def _trainer(tmp_path, rows=10, **training):
    from dialsum.training import Run, build_trainer

    params, e = tiny_bart_params(**{"eval_batch_size": 4, "resume": "never", **training})
    df = pd.DataFrame(
        {
            "fname": [f"t{i}" for i in range(rows)],
            # lengths differ, so the loss pass and the generation batch the rows differently
            "dialogue": [f"#Person1#: {i}번 방에 오세요. " * (1 + i % 4) + "#Person2#: 네." for i in range(rows)],
            "summary": [f"#Person1#은 {i}번 방에 오라고 한다." for i in range(rows)],
        }
    )
    models.build_init(e, list(df["dialogue"]) + list(df["summary"]), tmp_path / "init", seed=0)
    run = Run("tiny-bart", 0, tmp_path / "init", None, tmp_path / "ckpt", signature="sig")
    trainer, _ = build_trainer(typed(params), run, df, df)
    with torch.no_grad():  # untrained, it would end every summary at once: make it write, from what it reads
        trainer.model.final_logits_bias[0, trainer.processing_class.eos_token_id] = -1e4
    return trainer


def test_evaluation_encodes_each_dialogue_once_with_the_same_results(tmp_path):
    trainer = _trainer(tmp_path)
    encoder = trainer.model.get_encoder()
    reference = copy.deepcopy(encoder)  # the same weights, without the hooks below
    encodes, reuses = [], []
    encoder.layers[0].register_forward_hook(lambda m, a, out: encodes.append(a[0].shape[0]))

    def check(module, args, kwargs, out):
        # every call while reusing (loss pass and generation): the states are a fresh encoding of that batch's
        if "forward" in vars(module):
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            with torch.no_grad():
                fresh = reference(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.bool()
            # equal up to float rounding: the loss pass pads to a multiple of 8, the generation to its longest row
            reuses.append(torch.allclose(fresh[m], out.last_hidden_state[m], rtol=0, atol=1e-5))

    encoder.register_forward_hook(check, with_kwargs=True)

    reused = trainer.evaluate()
    reused_predictions, reused_encodes = list(trainer.rouge.predictions), list(encodes)
    index = trainer.rouge._rows
    encodes.clear()
    again = trainer.evaluate()  # a second evaluation: the same scores, encodes and summaries
    assert all(again[k] == reused[k] for k in reused if "runtime" not in k and "per_second" not in k)
    assert encodes == reused_encodes and trainer.rouge.predictions == reused_predictions
    assert trainer.rouge._rows is index  # the validation rows' ids are looked up once, not per evaluation
    encodes.clear()
    trainer.rouge.reuses_encoder = lambda *a: False  # the plain way: generation encodes the rows again
    plain = trainer.evaluate()

    # the three loss-pass batches, nothing for the generation; then the source dependence's own and shuffled
    # passes (batches of 8), which run outside the reuse
    assert reused_encodes == [4, 4, 2, 8, 2, 8, 2]
    assert len(reuses) >= 6 and all(reuses)  # loss pass (3, compared with itself) + generation calls
    assert sum(encodes) == 20 + 20  # plain: every row by the loss pass and the generation (+ source dependence)
    assert reused_predictions == list(trainer.rouge.predictions)
    assert all(isinstance(p, str) for p in reused_predictions) and any(reused_predictions)
    for key in ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rouge_sum"):
        assert reused[key] == plain[key], key
    # the encoder is itself again after the evaluation (no state kept, the class's forward)
    assert "forward" not in vars(trainer.model.get_encoder())
    assert trainer.rouge._states == {} and not trainer.rouge.active


def test_rows_the_loss_pass_cannot_match_are_still_summarized(tmp_path, monkeypatch):
    """Validation rows the loss pass did not summarize (ids it could not match) are generated the plain way
    at scoring time: a mismatch costs speed, never a missing summary."""
    trainer = _trainer(tmp_path, rows=6)
    monkeypatch.setattr(trainer.rouge, "summarize_batch", lambda model, inputs: trainer.rouge._states.clear())
    out = trainer.evaluate()
    fallback = list(trainer.rouge.predictions)
    monkeypatch.setattr(trainer.rouge, "reuses_encoder", lambda *a: False)
    assert trainer.evaluate()["eval_rouge_sum"] == out["eval_rouge_sum"]
    assert fallback == trainer.rouge.predictions and all(fallback)


def test_reuse_only_where_the_loss_pass_encodes_as_generation_does(tmp_path):
    """One process on one device without mixed precision: a DataParallel replica, another rank's shard or the
    Trainer's autocast (which covers the loss pass but not generate's encoder call) would change the states."""
    trainer = _trainer(tmp_path, rows=2)

    def args(**kw):
        return SimpleNamespace(**{"world_size": 1, "n_gpu": 0, "bf16": False, "fp16": False, **kw})

    assert trainer.rouge.reuses_encoder(trainer.model, args())
    assert trainer.rouge.reuses_encoder(trainer.model, args(n_gpu=1))
    for kw in ({"world_size": 2}, {"n_gpu": 2}, {"bf16": True}, {"fp16": True}):
        assert not trainer.rouge.reuses_encoder(trainer.model, args(**kw)), kw


def test_a_forward_already_on_the_encoder_is_put_back(tmp_path):
    """accelerate's hooks set ``forward`` on the module itself; the evaluation puts that one back, not the
    class's."""
    trainer = _trainer(tmp_path, rows=4)
    encoder = trainer.model.get_encoder()
    calls = []

    @functools.wraps(type(encoder).forward)
    def hooked(*a, **kw):
        calls.append(1)
        return type(encoder).forward(encoder, *a, **kw)

    encoder.forward = hooked
    trainer.evaluate()
    assert vars(encoder)["forward"] is hooked and calls


def test_evaluation_and_warmup_follow_the_epochs_the_run_really_has(tmp_path):
    """The steps per epoch the arguments were built with (16 rows / batch 4 = 4) are not what a rank of a
    several-process launch or a halved ``batch_size: auto`` trains with: evaluations stay once per epoch and
    warm-up its share of the whole run, from the Trainer's own count."""
    trainer = _trainer(tmp_path, rows=16, batch_size=4, epochs=2, eval_every_epochs=1, warmup_ratio=0.25)
    assert trainer.args.eval_steps == 4 and trainer.args.warmup_steps == 2  # 4 steps per epoch, as built
    trainer._train_batch_size = 2  # what the halving in auto_find_batch_size sets: 8 steps per epoch
    trainer.train()
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    assert evaluated == [8, 16]  # once per epoch (with the built 4: at 4, 8, 12 and 16)
    assert trainer.args.warmup_steps == 4  # a quarter of 2 x 8 steps
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0  # linear decay to 0 over the 16 steps it ran


def test_a_resumed_run_evaluates_on_its_own_steps_not_the_checkpoints(tmp_path):
    """A checkpoint written at 4 steps per epoch (another process count, say) resumed at 8: the loaded state
    carries eval/save steps of 4, and the run must follow its own."""
    from transformers import TrainerCallback

    class StopAt4(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step >= 4

    first = _trainer(tmp_path, rows=16, batch_size=4, epochs=2, eval_every_epochs=1, warmup_ratio=0.0)
    first.add_callback(StopAt4())
    first.train()
    checkpoint = tmp_path / "ckpt" / "checkpoint-4"
    assert checkpoint.is_dir()
    again = _trainer(tmp_path / "again", rows=16, batch_size=2, epochs=2, eval_every_epochs=1, warmup_ratio=0.0)
    again.train(resume_from_checkpoint=str(checkpoint))
    evaluated = [h["step"] for h in again.state.log_history if "eval_loss" in h]
    assert evaluated == [4, 8, 16]  # the checkpoint's own evaluation, then once per epoch of 8 steps


def test_a_resumed_runs_dvclive_curves_are_those_of_a_run_never_interrupted(tmp_path):
    """DVC deletes dvclive/ before a stage runs, so a run killed and resumed used to log only what came after
    the checkpoint, from step 0; the checkpoint's log is played again first (every curve, every step)."""
    from dvclive import Live
    from transformers import TrainerCallback

    from dialsum.training import _dvclive_callback

    class StopAt4(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step >= 4

    def curves(d):
        return {f.relative_to(d).as_posix(): f.read_text() for f in sorted(d.rglob("*.tsv"))}

    def trainer(where, live_dir, stop=False):
        t = _trainer(where, rows=16, batch_size=4, epochs=2, eval_every_epochs=1, warmup_ratio=0.0)
        t.add_callback(_dvclive_callback()(live=Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None)))
        if stop:
            t.add_callback(StopAt4())
        return t

    trainer(tmp_path / "whole", tmp_path / "live-whole").train()
    trainer(tmp_path / "cut", tmp_path / "live-cut", stop=True).train()
    checkpoint = tmp_path / "cut" / "ckpt" / "checkpoint-4"
    again = trainer(tmp_path / "resumed", tmp_path / "live-resumed")
    again.train(resume_from_checkpoint=str(checkpoint))
    whole, resumed = curves(tmp_path / "live-whole"), curves(tmp_path / "live-resumed")
    # batch_size: auto retries an out-of-memory error by training again from the checkpoint: no second replay
    (live,) = [c for c in again.callback_handler.callbacks if type(c).__name__ == "DeterministicDVCLiveCallback"]
    live.on_train_begin(again.args, again.state, again.control, model=again.model)
    assert curves(tmp_path / "live-resumed") == resumed
    assert "plots/metrics/eval/loss.tsv" in whole and "plots/metrics/train/loss.tsv" in whole
    assert resumed.keys() == whole.keys()
    for name, text in whole.items():  # the same steps; values as the uninterrupted run's (CPU, same seed)
        got = [r.split("\t") for r in resumed[name].splitlines()]
        want = [r.split("\t") for r in text.splitlines()]
        assert [r[0] for r in got] == [r[0] for r in want], name
        if name == "plots/metrics/train/loss.tsv":  # the Trainer's mean loss of this train() call: after a
            continue  # resume, of the resumed steps only (transformers' own choice)
        assert np.allclose([float(r[1]) for r in got[1:]], [float(r[1]) for r in want[1:]], rtol=1e-4), name


def test_a_model_that_ignores_its_dialogue_gets_no_source_dependence_and_a_warning(tmp_path, caplog):
    import logging

    trainer = _trainer(tmp_path)
    with torch.no_grad():  # the decoder's cross-attention adds nothing: the encoder's output never reaches it
        for layer in trainer.model.get_decoder().layers:
            layer.encoder_attn.out_proj.weight.zero_()
            layer.encoder_attn.out_proj.bias.zero_()
    with caplog.at_level(logging.WARNING, logger="dialsum.training"):
        metrics = trainer.evaluate()
    assert abs(metrics["eval_source_dependence"]) < 1e-6
    assert any("ignores its input" in r.getMessage() for r in caplog.records)


class _Reader(torch.nn.Module):
    """A model that reads its input: it predicts the source's first token everywhere (seq2seq: the source's
    token at each position), so its references cost little after their own source only."""

    def __init__(self, encoder_decoder: bool, vocab: int = 16):
        super().__init__()
        self.config = SimpleNamespace(is_encoder_decoder=encoder_decoder)
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, labels=None):
        width = labels.shape[1] if labels is not None else input_ids.shape[1]
        src = input_ids[:, :width] if labels is not None else input_ids[:, :1].expand(-1, width)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(src, self.vocab).float() * 10 + self.w)


def test_a_model_that_reads_its_dialogue_gets_a_positive_source_dependence():
    from dialsum.training import derangement, source_dependence

    assert sorted(derangement(5)) == list(range(5)) and all(i != p for i, p in enumerate(derangement(5)))
    copy_rows = [{"input_ids": [i + 1, i + 2], "attention_mask": [1, 1], "labels": [i + 1, i + 2]} for i in range(6)]
    own, other = source_dependence(_Reader(True), copy_rows, pad_id=0)
    assert own < 0.01 and other - own > 5
    causal = [
        {"input_ids": [i + 1, 9, i + 1], "attention_mask": [1] * 3, "labels": [-100, -100, i + 1]} for i in range(6)
    ]
    own, other = source_dependence(_Reader(False), causal, pad_id=0)
    assert own < 0.01 and other - own > 5
