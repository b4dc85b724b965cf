"""Fine-tuning one model on one fold with the HF Seq2SeqTrainer (both families).

The Trainer does the loop, checkpoints, best-model selection and early stopping; we only build the
features, the collator and the arguments from params, and add ROUGE by generation to each evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from . import device, generation, paths
from .data import references
from .metrics import SOURCE_DEPENDENCE_MIN, Scorer
from .params import Generation, Params, Training, section, typed, written
from .sequences import build_features
from .tracking import seed_everything, start_wandb

log = logging.getLogger(__name__)


def rank() -> int:
    """This process's global rank under ``accelerate launch`` / torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


LAUNCHED = "DIALSUM_LAUNCHED"  # set in the workers' environment by relaunch


def launch_command(tcfg: dict | Training, script_args: list[str]) -> list[str] | None:
    """The ``accelerate launch`` command line that re-runs the train stage in ``training.num_processes``
    processes (DDP: NCCL on GPUs, gloo on CPU; FSDP/DeepSpeed through ``training.accelerate_config``), or
    None when this process trains itself (``launcher: python``, or already a launched worker)."""
    tcfg = section(Training, tcfg, "training")
    # LOCAL_RANK alone cannot tell a worker: accelerate's one-process launcher sets none, so a worker of
    # num_processes: 1 relaunched itself without end
    if tcfg.launcher != "accelerate" or "LOCAL_RANK" in os.environ or os.environ.get(LAUNCHED) == "1":
        return None
    import socket
    import sys

    n = int(tcfg.num_processes)
    with socket.socket() as sock:  # a free rendezvous port, so parallel stages never collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # no memory query: it would hold a CUDA context on GPU 0 in this parent, which only waits for the workers
    precision = next(iter(device.precision(tcfg.mixed_precision, device.Device.probe(memory=False))), "no")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        precision,
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]
    if tcfg.accelerate_config:
        cmd += ["--config_file", str(tcfg.accelerate_config)]
    elif n > 1:
        cmd.append("--multi_gpu")  # accelerate's torchrun launcher; on a CPU-only box it runs gloo DDP
    return cmd + script_args


def relaunch(params: Params, model: str, script_args: list[str]) -> bool:
    """Run ``script_args`` under :func:`launch_command` and wait; False when this process should train.
    A failed worker fails the stage with the workers' exit code; a combination that cannot work fails here,
    before any worker starts."""
    import subprocess

    tcfg = params.training
    device.check_launch(tcfg, params.zoo[model])
    cmd = launch_command(tcfg, script_args)
    if cmd is None:
        return False
    log.info("launching %d processes: %s", tcfg.num_processes, " ".join(cmd))
    rc = subprocess.run(cmd, env={**os.environ, LAUNCHED: "1"}).returncode
    if rc:
        raise SystemExit(f"error: accelerate launch exited with {rc} (see logs/ of each rank)")
    return True


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_signature(params: Params | dict, model_name: str, fold, data_files: list[Path]) -> str:
    """Hash of everything that defines a training run; checkpoints are resumed only when it matches."""
    params = typed(params)
    h = hashlib.sha256()
    # the settings as written, so that a default added to dialsum.params keeps today's checkpoints resumable
    zoo = written(params.zoo[model_name])
    if zoo.get("training") is not None:
        zoo["training"] = _trained_by(zoo["training"])
        if not zoo["training"]:  # an entry that set only those keys hashes as one that set none
            del zoo["training"]
    rel = {"seed": params.seed, "training": _trained_by(written(params.training)), "zoo": zoo}
    h.update(json.dumps([rel, model_name, str(fold)], sort_keys=True, default=str).encode())
    for f in data_files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


# training.* keys that change how a run is kept or evaluated, not what it learns: a run interrupted (an OOM in
# evaluation, a full disk) must resume after the user changes them
NOT_IN_SIGNATURE = ("resume", "eval_batch_size", "save_total_limit")


def _trained_by(training: dict) -> dict:
    return {k: v for k, v in training.items() if k not in NOT_IN_SIGNATURE}


def find_resume(ckpt_dir: Path, signature: str, resume: str) -> str | None:
    """The checkpoint to resume from: ``training.resume`` (a path, which :func:`prepare_checkpoints` checked),
    or with ``auto`` the newest complete checkpoint of a run with this ``signature``; None starts afresh."""
    if resume == "never":
        return None
    if resume != "auto":
        return resume
    sig_file = ckpt_dir / "signature"
    if not sig_file.exists() or sig_file.read_text().strip() != signature:
        return None
    newest = get_last_checkpoint(str(ckpt_dir))  # the highest step, complete or not
    if newest is None or _complete(newest):
        return newest
    # a kill mid-save left the newest half-written: the Trainer would fail on it, so take the one before
    log.warning("%s is incomplete (killed while saving?): resuming from an earlier checkpoint", newest)
    steps = _complete_steps(ckpt_dir)
    return str(steps[-1][1]) if steps else None


def _complete_steps(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints in ``ckpt_dir``, oldest step first."""
    return sorted((int(c.name.split("-")[-1]), c) for c in ckpt_dir.glob("checkpoint-*") if _complete(c))


def _complete(ckpt) -> bool:
    """The Trainer writes trainer_state.json last: without it the save was cut short."""
    try:
        json.loads((Path(ckpt) / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def prepare_checkpoints(ckpt_dir: Path, signature: str, resume: str) -> str | None:
    """Ready ``ckpt_dir`` for a run with ``signature``; returns the checkpoint to resume from (or None).

    Checkpoints the run will not continue from (another configuration's under ``auto``, any under ``never``, the
    folder's own under a ``resume`` path outside it) are moved aside to ``<dir>.stale-<their signature>`` (beside
    the target of a symlinked ``<dir>``), never
    deleted or overwritten: a second set of one signature gets ``-2``, ``-3``, ... With ``auto``, a set moved aside
    under this run's signature comes back and is resumed, so switching a configuration back and forth loses
    nothing."""
    if resume not in ("auto", "never") and not Path(resume).exists():  # before anything is moved
        raise FileNotFoundError(f"training.resume: checkpoint {resume} not found")
    if rank() == 0:  # only rank 0 touches the folder: another rank's mkdir could land inside a move
        # a symlinked folder (checkpoints on a bigger disk) is arranged where it points: sets go aside beside
        # its target and the link keeps leading to the folder the run writes, not to a new one on this disk
        real = ckpt_dir.resolve()
        real.mkdir(parents=True, exist_ok=True)
        _set_aside(real, signature, resume)
    _barrier()  # rank 0 arranged the folder before any rank looks in it
    resume_from = find_resume(ckpt_dir, signature, resume)
    _barrier()  # every rank decided before rank 0 writes the signature
    if rank() == 0:
        (ckpt_dir / "signature").write_text(signature)
    _barrier()
    if resume_from:
        log.info("resuming from %s", resume_from)
    return resume_from


def remove_checkpoints(ckpt_dir: Path) -> None:
    """Deletes the folder's checkpoints; a symlinked folder is removed where it points (rmtree refuses a link,
    and ignore_errors hid that), leaving a dangling link that :func:`prepare_checkpoints` makes good again."""
    shutil.rmtree(ckpt_dir.resolve(), ignore_errors=True)


def _move_aside(ckpt_dir: Path, label: str) -> Path:
    """Renames ``ckpt_dir`` to the first free ``<dir>.stale-<label>[-n]`` and leaves an empty ``ckpt_dir``."""
    stale, n = ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{label}"), 2
    while stale.exists():
        stale, n = ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{label}-{n}"), n + 1
    ckpt_dir.rename(stale)
    ckpt_dir.mkdir(parents=True)
    return stale


def _set_aside(ckpt_dir: Path, signature: str, resume: str) -> None:
    sig_file = ckpt_dir / "signature"
    current = sig_file.read_text().strip() if sig_file.exists() else "unknown"
    if resume == "auto":
        keep = current == signature
    elif resume == "never":
        keep = False
    else:  # a path: the folder's checkpoints are its own lineage only when the path lies inside it
        keep = Path(resume).resolve().is_relative_to(ckpt_dir.resolve())
    if keep:
        return
    if any(ckpt_dir.glob("checkpoint-*")):
        stale = _move_aside(ckpt_dir, current)
        log.warning("checkpoints the run does not continue from (signature %s) moved to %s", current, stale)
    if resume != "auto":
        return
    earlier = []  # (the newest complete step, when it was saved, the set) of this signature's sets
    for d in ckpt_dir.parent.glob(f"{ckpt_dir.name}.stale-{signature}*"):
        if steps := _complete_steps(d):
            step, newest = steps[-1]
            earlier.append((step, (newest / "trainer_state.json").stat().st_mtime, d))
    if earlier:
        back = max(earlier, key=lambda e: e[:2])[2]
        sig_file.unlink(missing_ok=True)
        if any(ckpt_dir.iterdir()):  # no checkpoint (moved aside above), yet files: kept too
            _move_aside(ckpt_dir, current)
        else:
            ckpt_dir.rmdir()
        back.rename(ckpt_dir)
        log.warning("checkpoints of this configuration set aside earlier (%s) moved back to resume from", back)


@dataclass
class EvalRouge:
    """The in-training evaluation's ROUGE: the model being trained summarizes the validation dialogues with
    dialsum's batched generation (as predict does, within the same token budget) and the scorer rates them.

    An encoder-decoder summarizes each evaluation batch right after the Trainer's teacher-forced loss pass
    over it, from the encoder states that pass computed (:meth:`reusing_encoder`): each validation dialogue
    is encoded once per evaluation, not twice. The states differ from the generation's own encoding only by
    float rounding (the two pad a batch to different widths; ~1e-7 measured), the same latitude the
    Summarizer's token-budget batching takes; on 200 DialogSum dev dialogues every summary was the same."""

    summarizer: generation.Summarizer  # its model is the one being trained
    dialogues: list[str]
    refs: list[list[str]]
    scorer: Scorer
    predictions: list[str | None] = field(default_factory=list)
    _states: dict = field(default_factory=dict, init=False, repr=False)  # this batch's, by source ids
    _rows: dict | None = field(default=None, init=False, repr=False)  # source ids -> validation rows
    active: bool = field(default=False, init=False, repr=False)  # while reusing_encoder is open
    keeping: bool = field(default=False, init=False, repr=False)  # True during a batch's loss pass

    def _summarize(self, model, rows: list[int], desc: str, progress: bool) -> None:
        self.summarizer.model = model
        self.summarizer.tokenizer.padding_side = "left"  # generation pads on the left, training on the right
        texts, _ = self.summarizer([self.dialogues[i] for i in rows], desc=desc, progress=progress)
        self.summarizer.tokenizer.padding_side = "right"
        for i, text in zip(rows, texts):
            self.predictions[i] = text

    def reset(self, model) -> None:
        """A new evaluation of ``model``: no summary yet. Rows the loss pass does not summarize (all of them
        unless :meth:`reusing_encoder` is open) are generated when scored."""
        self.summarizer.model = model
        self.predictions = [None] * len(self.dialogues)

    def reuses_encoder(self, model, args) -> bool:
        """Only where the loss pass encodes exactly as generation would: one process on at most one device
        (each rank sees only its shard of the loss pass, and DataParallel replicas share no instance state),
        and no mixed precision (the Trainer's autocast covers the loss pass, not generate's encoder call)."""
        single = args.world_size == 1 and args.n_gpu <= 1
        return single and not (args.bf16 or args.fp16) and bool(getattr(model.config, "is_encoder_decoder", False))

    def _index(self, config) -> dict:
        """Validation rows by their source ids; built once, as neither the dialogues nor the tokenizer change."""
        if self._rows is None:
            from .sequences import conventions, source_ids

            s = self.summarizer
            conv = conventions(s.tokenizer, s.family, config)
            self._rows = {}
            for i, d in enumerate(self.dialogues):
                ids = source_ids(s.tokenizer, d, conv, s.max_source_len, s.prompt)[0]
                self._rows.setdefault(tuple(ids), []).append(i)
        return self._rows

    @contextmanager
    def reusing_encoder(self, model):
        """While it is open, the encoder keeps its output for every row it encodes during a loss pass
        (``keeping``), and a later call on rows that are all kept (the generation of the same batch) returns
        them instead of encoding."""
        self._index(model.config)
        self.reset(model)
        encoder = model.get_encoder()
        real_forward, before = encoder.forward, vars(encoder).get("forward")  # an accelerate hook sets one

        def keys(kwargs):
            ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
            plain = ids is not None and mask is not None and kwargs.get("inputs_embeds") is None
            if not plain or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
                return None
            return [_row_key(row, m) for row, m in zip(ids, mask)]

        @functools.wraps(real_forward)  # generate passes the encoder only the arguments its signature names
        def forward(*args, **kwargs):
            rows = None if args else keys(kwargs)
            if rows and all(r in self._states for r in rows):
                from transformers.modeling_outputs import BaseModelOutput

                width = kwargs["input_ids"].shape[1]
                first = self._states[rows[0]]
                hidden = first.new_zeros(len(rows), width, first.shape[-1])  # padding is masked out
                for j, r in enumerate(rows):
                    pos = kwargs["attention_mask"][j].bool()
                    hidden[j, pos] = self._states[r]
                return BaseModelOutput(last_hidden_state=hidden)
            out = real_forward(*args, **kwargs)
            if rows and self.keeping:
                hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
                for j, r in enumerate(rows):
                    self._states[r] = hidden[j, kwargs["attention_mask"][j].bool()]
            return out

        encoder.forward, self.active = forward, True
        try:
            yield
        finally:
            if before is None:
                del encoder.forward  # the class's forward again
            else:
                encoder.forward = before
            self._states, self.active, self.keeping = {}, False, False

    def summarize_batch(self, model, inputs) -> None:
        """Summaries of this evaluation batch's validation rows, from the encoder states its loss pass kept."""
        rows = []
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            rows += [i for i in self._rows.get(_row_key(ids, mask), ()) if self.predictions[i] is None]
        if rows:
            self._summarize(model, sorted(set(rows)), "eval generate", False)
        self._states.clear()

    def compute_metrics(self, _) -> dict:
        missing = [i for i, p in enumerate(self.predictions) if p is None]
        if missing:  # every row (the plain way, under a progress bar), or those the loss pass could not match
            if self.active:
                log.debug("%d validation rows summarized without the loss pass's encoder states", len(missing))
            r, world = _process()
            mine = missing[r::world]  # each rank its share; every rank then scores all rows, so all agree
            if mine:
                self._summarize(self.summarizer.model, mine, "eval generate", not self.active and r == 0)
            if world > 1:
                self._gather(mine)
        s = self.scorer.score(self.predictions, self.refs)
        return {k: s[k] for k in ("rouge1", "rouge2", "rougeL", "rouge_sum")}

    def _gather(self, mine: list[int]) -> None:
        import torch.distributed as dist

        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, {i: self.predictions[i] for i in mine})
        for part in parts:
            for i, text in part.items():
                self.predictions[i] = text


def _process() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _schedule(steps_per_epoch: int, eval_every_epochs: float, warmup_ratio: float, epochs: float) -> tuple[int, int]:
    """(evaluation and save steps, warm-up steps) for epochs of ``steps_per_epoch`` optimizer steps."""
    return max(1, round(steps_per_epoch * eval_every_epochs)), int(warmup_ratio * steps_per_epoch * epochs)


class _StepsFromArguments(TrainerCallback):
    """A resumed run's state is the checkpoint's, with the evaluation and save steps of the run that wrote it
    (another process count, say), and the Trainer follows the state: give it the steps this run set."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.eval_steps, state.save_steps = args.eval_steps, args.save_steps


def _row_key(ids: torch.Tensor, mask: torch.Tensor) -> tuple:
    """A row's source ids without its padding: the same for the loss pass's and the generation's batches."""
    return tuple(ids[mask.bool()].tolist())


class SummarizationTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose every evaluation also generates and scores summaries (:class:`EvalRouge`):
    ``eval_rouge_sum`` beside ``eval_loss``, for checkpoint choice, early stopping, pruning and dvclive."""

    def __init__(self, *args, rouge: EvalRouge, per_epoch: tuple[float, float] | None = None, **kwargs):
        super().__init__(*args, compute_metrics=rouge.compute_metrics, **kwargs)
        self.rouge = rouge
        self.per_epoch = per_epoch  # (eval_every_epochs, warmup_ratio): in epochs of the run as it trains
        if per_epoch is not None:
            self.add_callback(_StepsFromArguments())

    def set_initial_training_values(self, args, dataloader):
        """Evaluation, checkpoint and warm-up steps from the epoch this run really has: a rank of an N-process
        launch sees 1/N of the rows, and ``batch_size: auto`` may have halved the batch since the arguments
        were built. Both change the optimizer steps per epoch; without this, evaluations would come every
        N epochs and warm-up would last N times its share of training."""
        values = super().set_initial_training_values(args, dataloader)
        if self.per_epoch is not None:
            eval_every, warmup_ratio = self.per_epoch
            steps_per_epoch = values[1]  # the Trainer's optimizer steps in one epoch
            args.eval_steps, args.warmup_steps = _schedule(
                steps_per_epoch, eval_every, warmup_ratio, args.num_train_epochs
            )
            args.save_steps = args.eval_steps
        return values

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **kw):
        if eval_dataset is None and self.rouge.reuses_encoder(self.model, self.args):
            with self.rouge.reusing_encoder(self.model):
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **kw)
        self.rouge.reset(self.model)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **kw)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The Trainer's loop plus ``<prefix>_source_dependence`` (:func:`source_dependence`), so it is logged
        with the evaluation's other figures. Every rank computes it alike on the same first rows."""
        out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval" and self.eval_dataset is not None:
            n = min(SOURCE_DEPENDENCE_ROWS, len(self.eval_dataset))
            rows = [self.eval_dataset[i] for i in range(n)]
            own, other = source_dependence(self.model, rows, self.processing_class.pad_token_id)
            out.metrics[f"{metric_key_prefix}_source_dependence"] = other - own
            if other - own < SOURCE_DEPENDENCE_MIN:
                log.warning(
                    "the model ignores its input: the references' loss with another dialogue is %.3f nats/token, "
                    "with their own %.3f (source dependence %.3f < %.2f; docs/source-dependence.md)",
                    other,
                    own,
                    other - own,
                    SOURCE_DEPENDENCE_MIN,
                )
        return out

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        reusing = self.rouge.active
        self.rouge.keeping = reusing
        try:
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        finally:
            self.rouge.keeping = False
        if reusing:
            del logits  # before generating: ROUGE reads none of them (see preprocess_logits_for_metrics)
            logits = labels[:, :1] if labels is not None else None
            self.rouge.summarize_batch(self.model, inputs)  # the model itself, not a wrapper
        return loss, logits, labels


# Source dependence: the references' loss with a shuffled source minus with their own, in nats per summary
# token. A model that learned only a language model of summaries scores ~0 (issue 33: tiny-bart 0.008).
SOURCE_DEPENDENCE_ROWS = 64  # validation rows it is measured on (the first ones): two loss passes, cheap
SOURCE_DEPENDENCE_BATCH = 8


def derangement(n: int, seed: int = 0) -> list[int]:
    """A seeded permutation with no fixed point (row i gets another row's source), identical on every rank."""
    if n < 2:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return ((torch.arange(n) + torch.randint(1, n, (1,), generator=g)) % n).tolist()


def _with_source(target: dict, source: dict, encoder_decoder: bool) -> dict:
    """``target``'s labels after ``source``'s input (a causal row's prompt is its leading -100 labels)."""
    if encoder_decoder:
        return {"input_ids": source["input_ids"], "labels": target["labels"]}
    n_tgt = sum(1 for t in target["labels"] if t != -100)
    n_src = len(source["labels"]) - sum(1 for t in source["labels"] if t != -100)
    ids = list(source["input_ids"][:n_src]) + list(target["input_ids"][-n_tgt:])
    return {"input_ids": ids, "labels": [-100] * n_src + list(target["labels"][-n_tgt:])}


@torch.no_grad()
def _summary_loss(model, rows: list[dict], pad_id: int) -> float:
    """Mean loss per reference token (sum over tokens / tokens, not a mean of batch means)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for b in range(0, len(rows), SOURCE_DEPENDENCE_BATCH):
        batch = rows[b : b + SOURCE_DEPENDENCE_BATCH]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(batch):
            ids[j, : len(r["input_ids"])], mask[j, : len(r["input_ids"])] = torch.tensor(r["input_ids"]), 1
        if model.config.is_encoder_decoder:
            lw = max(len(r["labels"]) for r in batch)
            labels = torch.full((len(batch), lw), -100, dtype=torch.long)
            for j, r in enumerate(batch):
                labels[j, : len(r["labels"])] = torch.tensor(r["labels"])
            labels = labels.to(device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels).logits
        else:
            labels = torch.full_like(ids, -100)
            for j, r in enumerate(batch):
                labels[j, : len(r["labels"])] = torch.tensor(r["labels"])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
            labels = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum")
        total += nll.item()
        count += int((labels != -100).sum())
    return total / max(count, 1)


def source_dependence(model, rows: list[dict], pad_id: int, seed: int = 0) -> tuple[float, float]:
    """(loss with the own source, loss with a deranged one) of ``rows``' references, per token."""
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    perm = derangement(len(rows), seed)
    shuffled = [_with_source(rows[i], rows[perm[i]], enc_dec) for i in range(len(rows))]
    was_training = model.training
    model.eval()
    try:
        return _summary_loss(model, rows, pad_id), _summary_loss(model, shuffled, pad_id)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class Run:
    """One training run: a zoo model on a fold, and where its files live. ``out_dir`` None keeps no model
    (the checkpoints then stay too); ``live_dir`` None logs no dvclive curves; ``signature`` names the
    configuration whose checkpoints may be resumed (:func:`run_signature`)."""

    model: str
    fold: int | str
    init_dir: Path
    out_dir: Path | None
    ckpt_dir: Path
    live_dir: Path | None = None
    signature: str = ""

    @classmethod
    def of(cls, model: str, fold, signature: str) -> "Run":
        """train@<model>-<fold>'s run, at the pipeline's paths."""
        return cls(
            model,
            fold,
            paths.init_dir(model),
            paths.model_dir(model, fold),
            paths.checkpoint_dir(model, fold),
            paths.live_dir(model, fold),
            signature,
        )


def train(params: Params | dict, run: Run, train_df: pd.DataFrame, val_df: pd.DataFrame, callbacks=(), track=True):
    """Train, keep the best model by eval ``rouge_sum``, save it to ``run.out_dir``; returns eval metrics.
    ``callbacks``: extra Trainer callbacks (the tune stage's pruning); ``track``: a W&B run when enabled."""
    params = typed(params)
    seed_everything(params.seed)
    trainer, truncated = build_trainer(params, run, train_df, val_df, callbacks)
    metrics = _fit(trainer, params, run, track)
    result = {
        k.removeprefix("eval_"): round(float(v), 6)
        for k, v in metrics.items()
        if k.removeprefix("eval_") in ("rouge1", "rouge2", "rougeL", "rouge_sum", "loss", "source_dependence")
    }
    result.update(
        n_train=len(train_df),
        n_val=len(trainer.eval_dataset),
        truncated=truncated,
        best_step=_best_step(trainer),
        steps=trainer.state.global_step,
    )
    state = _full_state_dict(trainer) if run.out_dir is not None else None  # every rank takes part
    if run.out_dir is not None and trainer.is_world_process_zero():
        from .io import atomic_dir
        from .models import save_trained

        with atomic_dir(run.out_dir) as tmp:  # no local name for the model here: `release` must drop the last one
            save_trained(
                trainer.model, trainer.processing_class, tmp, params.zoo[run.model], state, lambda: _release(trainer)
            )
        remove_checkpoints(run.ckpt_dir)  # the best model is saved: checkpoints served their purpose
    _end_distributed()
    return result


def _full_state_dict(trainer) -> dict | None:
    """The whole model's weights where they are sharded over the ranks (FSDP, DeepSpeed ZeRO): gathering is a
    collective, so every rank calls this; None (the model's own weights) under DDP or one process."""
    from accelerate.utils import DistributedType

    if trainer.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def _release(trainer) -> None:
    """Drop every reference the Trainer, accelerate and the evaluation keep to the trained model and its optimizer
    state (a QLoRA merge then loads the 16-bit base onto a GPU they no longer hold)."""
    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    handler = trainer.callback_handler
    handler.model = handler.optimizer = handler.lr_scheduler = None
    trainer.rouge.summarizer.model = None
    if getattr(trainer.data_collator, "model", None) is not None:  # a seq2seq collator makes decoder inputs with it
        trainer.data_collator.model = None


def build_trainer(params: Params, run: Run, train_df, val_df, callbacks=()) -> tuple[SummarizationTrainer, int]:
    """The Trainer for ``run`` (model from ``run.init_dir``, features, collator, arguments, callbacks, the
    in-training ROUGE) and how many training dialogues were truncated to the source limit."""
    from transformers import DataCollatorForSeq2Seq

    from .models import load_for_training

    tcfg, entry = params.training, params.zoo[run.model]
    device.check_launch(tcfg, entry)
    model, tokenizer = load_for_training(entry, run.init_dir, params.seed)
    device.check_memory(model, entry, tcfg, device.Device.probe())
    tokenizer.padding_side = "right"
    train_ds, truncated = _dataset(train_df, tokenizer, entry, model.config)
    if truncated:
        log.info(
            "%d of %d training dialogues truncated to max_source_len=%d", truncated, len(train_ds), entry.max_source_len
        )
    if tcfg.eval_rows:  # cheaper in-training evaluations on big validation sets; predict scores all
        val_df = val_df.head(tcfg.eval_rows).reset_index(drop=True)
    # the in-training evaluation generates within the same token budget as predict
    eval_gen = Generation(
        num_beams=tcfg.eval_num_beams, max_new_tokens=entry.max_target_len, batch_tokens=params.generation.batch_tokens
    )
    summarizer = generation.Summarizer(
        model, tokenizer, entry.family, eval_gen, entry.max_source_len, entry.prompt, tcfg.eval_batch_size
    )
    trainer = SummarizationTrainer(
        model=model,
        args=_training_args(params, run, len(train_ds)),
        train_dataset=train_ds,
        eval_dataset=_dataset(val_df, tokenizer, entry, model.config)[0],
        data_collator=DataCollatorForSeq2Seq(
            tokenizer,
            model=model if entry.family == "seq2seq" else None,
            label_pad_token_id=-100,
            pad_to_multiple_of=8,
        ),
        processing_class=tokenizer,
        rouge=EvalRouge(summarizer, list(val_df["dialogue"]), references(val_df), Scorer.from_params(params)),
        per_epoch=(tcfg.eval_every_epochs, tcfg.warmup_ratio),
        callbacks=_callbacks(tcfg, run.live_dir, callbacks),
        # The Trainer would keep every eval logit (vocab x length x rows); ROUGE needs none of them.
        preprocess_logits_for_metrics=lambda logits, labels: labels[:, :1],
    )
    return trainer, truncated


def _dataset(df: pd.DataFrame, tokenizer, entry, config):
    """(the rows' features as a datasets.Dataset, how many sources were truncated)."""
    from datasets import Dataset

    feats, truncated = build_features(df, tokenizer, entry, config)
    return Dataset.from_list(feats), truncated


def _callbacks(tcfg: Training, live_dir: Path | None, extra=()) -> list:
    """``extra`` (the tune stage's pruning), early stopping when ``training.early_stopping_patience`` > 0, and
    dvclive's curves into ``live_dir`` (rank 0 only)."""
    from transformers import EarlyStoppingCallback

    callbacks = list(extra)
    if tcfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=tcfg.early_stopping_patience))
    if live_dir is not None and rank() == 0:
        from dvclive import Live

        callbacks.append(_dvclive_callback()(live=Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None)))
    return callbacks


def _fit(trainer: SummarizationTrainer, params: Params, run: Run, track: bool) -> dict:
    """Train (resuming a matching checkpoint) inside a W&B run when ``track``; the metrics of the evaluation
    that chose the kept model."""
    resume_from = prepare_checkpoints(run.ckpt_dir, run.signature, params.training.resume)
    wb = (
        start_wandb(params, f"{run.model}-{run.fold}", (run.model, f"fold-{run.fold}"))
        if track and rank() == 0
        else None
    )
    if trainer.args.world_size > 1:
        log.info("rank %d of %d processes (%s)", rank(), trainer.args.world_size, trainer.args.parallel_mode.value)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        metrics = _best_evaluation(trainer) or trainer.evaluate()
    except BaseException:
        if wb is not None:
            wb.finish(exit_code=1)  # a crashed run is marked failed, never left running
        raise
    if wb is not None:
        wb.finish()
    if run.live_dir is not None and rank() == 0:
        # dvclive's summary and params copies duplicate metrics/train/ and params.yaml; they are no DVC
        # output (only the curves are), so left in place they would never reach a teammate's `dvc pull` and
        # the plots stage, which depends on dvclive/, would look changed in every clone
        for extra in ("metrics.json", "params.yaml"):
            (Path(run.live_dir) / extra).unlink(missing_ok=True)
    return metrics


def _end_distributed() -> None:
    """Wait for rank 0's saving, then close the process group: a worker exiting with gloo's threads alive
    aborts ("terminate called without an active exception") and fails the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


TIMING_KEYS = ("_runtime", "_per_second")


def _dvclive_callback():
    """HF's DVCLiveCallback without the timing figures (runtime, samples/s): they differ on every run, so
    logging them would change dvclive's files, hence dvc.lock, and re-run downstream stages (plots) when
    nothing but the clock changed; a resumed run's curves start with what the checkpoint had logged."""
    from transformers.integrations import DVCLiveCallback

    class DeterministicDVCLiveCallback(DVCLiveCallback):
        replayed = False  # batch_size: auto retries an OOM by training again: the log is played once

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            super().on_train_begin(args, state, control, model=model, **kwargs)
            if state.global_step > 0 and state.is_world_process_zero and not self.replayed:
                self.replayed = True
                # resumed: DVC deleted the curves before the stage ran, so the checkpoint's log (what the
                # Trainer logged up to it, each entry a former on_log plus its step) is played again; the
                # curves are whole, and their steps those of a run never interrupted
                for entry in state.log_history:
                    logs = {k: v for k, v in entry.items() if k != "step"}
                    self.on_log(args, state, control, model=model, logs=logs, **kwargs)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if not k.endswith(TIMING_KEYS)}
            return super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return DeterministicDVCLiveCallback


def _best_evaluation(trainer) -> dict | None:
    """The evaluation that chose the kept checkpoint, from the Trainer's log (on resume: from the checkpoint's
    trainer_state.json). The kept model is that checkpoint's weights, so evaluating it again would only repeat
    the generation (one more pass over the validation set per run) and log a point at the last step that the
    model there never scored. None when no evaluation chose it (no checkpoint was evaluated)."""
    step = trainer.state.best_global_step
    if not trainer.state.best_model_checkpoint or step is None:
        return None
    for entry in trainer.state.log_history:
        if entry.get("step") == step and "eval_loss" in entry:
            return entry
    return None


def _best_step(trainer) -> int:
    ck = trainer.state.best_model_checkpoint
    return int(ck.rsplit("-", 1)[-1]) if ck else trainer.state.global_step


def _training_args(params: Params, run: Run, n_train: int):
    from transformers import Seq2SeqTrainingArguments

    tcfg = params.training
    bs = tcfg.batch_size if tcfg.batch_size != "auto" else 64
    # one process's first guess; SummarizationTrainer.set_initial_training_values sets the steps the run has
    steps_per_epoch = math.ceil(n_train / (bs * tcfg.gradient_accumulation_steps))
    # eval_every_epochs may be a fraction, for long epochs
    eval_steps, warmup_steps = _schedule(steps_per_epoch, tcfg.eval_every_epochs, tcfg.warmup_ratio, tcfg.epochs)
    best_by = tcfg.best_by
    dev = device.Device.probe()
    args = Seq2SeqTrainingArguments(
        output_dir=str(run.ckpt_dir),
        num_train_epochs=tcfg.epochs,
        per_device_train_batch_size=bs,
        auto_find_batch_size=tcfg.batch_size == "auto",
        per_device_eval_batch_size=tcfg.eval_batch_size,
        learning_rate=tcfg.learning_rate or params.zoo[run.model].learning_rate,
        weight_decay=tcfg.weight_decay,
        warmup_steps=warmup_steps,
        lr_scheduler_type=tcfg.lr_scheduler,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
        label_smoothing_factor=tcfg.label_smoothing,
        max_grad_norm=tcfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=tcfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=best_by,
        greater_is_better=best_by != "loss",
        logging_steps=max(1, min(10, steps_per_epoch)),
        train_sampling_strategy="group_by_length",
        seed=params.seed,
        data_seed=params.seed,
        report_to=["wandb"] if params.tracking.wandb.enabled else [],
        dataloader_num_workers=0,
        use_cpu=not dev.cuda,
        **device.precision(tcfg.mixed_precision, dev),
    )
    device.one_gpu_per_process(args, dev)
    return args
