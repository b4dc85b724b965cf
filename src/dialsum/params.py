"""Load and validate ``params.yaml``: every stage calls :func:`load` first.

The schema below is the single list of keys dialsum understands. A typo (``trainig.epochs``), a wrong type
(``epochs: "five"``), a fold index past ``cv.n_splits`` or a model missing from ``zoo`` stops the stage
with one line that names the key, before any work is done.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml


class ParamsError(ValueError):
    """A problem with params.yaml; its message is one line naming the key."""


Check = Callable[[str, Any], None]


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None, null: bool = False, also: tuple = ()) -> Check:
    def check(key: str, v: Any) -> None:
        if (v is None and null) or v in also:
            return
        if not _is_int(v):
            raise ParamsError(f"params.yaml: {key} must be an integer, got {_type_name(v)} {v!r}")
        if lo is not None and v < lo:
            raise ParamsError(f"params.yaml: {key} must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ParamsError(f"params.yaml: {key} must be <= {hi}, got {v}")
    return check


def number(lo: float | None = None, hi: float | None = None, null: bool = False) -> Check:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not _num(v):
            raise ParamsError(f"params.yaml: {key} must be a number, got {_type_name(v)} {v!r}")
        if lo is not None and v < lo:
            raise ParamsError(f"params.yaml: {key} must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ParamsError(f"params.yaml: {key} must be <= {hi}, got {v}")
    return check


def boolean() -> Check:
    def check(key: str, v: Any) -> None:
        if not isinstance(v, bool):
            raise ParamsError(f"params.yaml: {key} must be true or false, got {_type_name(v)} {v!r}")
    return check


def string(null: bool = False) -> Check:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not isinstance(v, str) or not v.strip():
            raise ParamsError(f"params.yaml: {key} must be a non-empty string, got {_type_name(v)} {v!r}")
    return check


def choice(*options: Any, null: bool = False) -> Check:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if v not in options:
            raise ParamsError(f"params.yaml: {key} must be one of {', '.join(map(str, options))}; got {v!r}")
    return check


def list_of(item: Check, null: bool = False) -> Check:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not isinstance(v, list):
            raise ParamsError(f"params.yaml: {key} must be a list, got {_type_name(v)} {v!r}")
        for i, x in enumerate(v):
            item(f"{key}[{i}]", x)
    return check


def anything() -> Check:
    return lambda key, v: None


def section(spec: dict, null: bool = False) -> Check:
    """A mapping whose keys must all be in ``spec`` (missing keys take the code's defaults)."""
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not isinstance(v, dict):
            raise ParamsError(f"params.yaml: {key} must be a mapping, got {_type_name(v)} {v!r}")
        for k, sub in v.items():
            if k not in spec:
                known = ", ".join(sorted(spec))
                raise ParamsError(f"params.yaml: unknown key {key}.{k} (known: {known})")
            spec[k](f"{key}.{k}", sub)
    return check


def section_of_mappings() -> Check:
    """A mapping of free-form names (e.g. dotted param keys) to mappings; contents checked by the user."""
    def check(key: str, v: Any) -> None:
        if not isinstance(v, dict):
            raise ParamsError(f"params.yaml: {key} must be a mapping, got {_type_name(v)} {v!r}")
        for k, sub in v.items():
            if not isinstance(sub, dict):
                raise ParamsError(f"params.yaml: {key}.{k} must be a mapping, got {_type_name(sub)} {sub!r}")
    return check


def fold_value() -> Check:
    def check(key: str, v: Any) -> None:
        if v == "full":
            return
        if not _is_int(v) or v < 0:
            raise ParamsError(f"params.yaml: {key} must be a fold index >= 0 or 'full', got {v!r}")
    return check


LORA = section({"r": integer(1), "alpha": number(0), "dropout": number(0, 1),
                "target_modules": anything(), "merge": boolean()}, null=True)
ARCH = section({"type": choice("bart", "llama", "gpt_neox"), "d_model": integer(8), "layers": integer(1),
                "heads": integer(1), "ffn": integer(8)})
TRAINING = {
    "epochs": number(0), "batch_size": integer(1, also=("auto",)), "eval_batch_size": integer(1),
    "learning_rate": number(0, null=True), "weight_decay": number(0), "warmup_ratio": number(0, 1),
    "lr_scheduler": choice("linear", "cosine", "constant", "constant_with_warmup", "polynomial"),
    "gradient_accumulation_steps": integer(1), "label_smoothing": number(0, 1),
    "max_grad_norm": number(0), "eval_every_epochs": number(0.001), "eval_rows": integer(0), "early_stopping_patience": integer(0),
    "save_total_limit": integer(1), "eval_num_beams": integer(1),
    "mixed_precision": choice("auto", "no", "fp16", "bf16"), "resume": string(),
    "launcher": choice("python", "accelerate"), "best_by": choice("rouge_sum", "loss"), "num_processes": integer(1),
    "accelerate_config": string(null=True),
}
# a zoo entry may override `training` keys for its own runs (an LLM: 1 epoch; a small seq2seq: 20)
ZOO_ENTRY = section({
    "training": section(TRAINING, null=True),
    "family": choice("seq2seq", "causal"),
    "pretrained": string(null=True),
    "tokenizer": string(null=True),
    "encoder": string(null=True),
    "decoder": string(null=True),
    "tie_encoder_decoder": boolean(),
    "freeze_encoder": boolean(),
    "arch": ARCH,
    "vocab_size": integer(256),
    "max_source_len": integer(8),
    "max_target_len": integer(4),
    "learning_rate": number(0),
    "lora": LORA,
    "quantization": choice("none", "8bit", "4bit"),
    "gradient_checkpointing": boolean(),
    "trust_remote_code": boolean(),
    "prompt": string(null=True),
})

SPEC = {
    "seed": integer(0),
    "data": section({
        "train": string(), "dev": string(), "test": string(),
        "on_invalid": choice("error", "drop"),
        "clean": section({"normalize_speakers": boolean(), "remove_noise": boolean()}),
        "augmentation": section({"strategies": list_of(choice("reorder", "mask", "synonym", "paraphrase")),
                                 "factor": integer(0), "synonym_path": string(null=True),
                                 "paraphrase_model": string(null=True)}),
    }),
    "cv": section({"n_splits": integer(2), "folds": list_of(fold_value()), "seed": integer(0)}),
    "models": list_of(string()),
    "zoo": anything(),  # checked entry by entry below
    "training": section(TRAINING),
    "generation": section({
        "num_beams": integer(1), "max_new_tokens": integer(1), "min_new_tokens": integer(0),
        "do_sample": boolean(), "temperature": number(0), "top_p": number(0, 1),
        "repetition_penalty": number(0), "no_repeat_ngram_size": integer(0), "length_penalty": number(),
        "batch_size": integer(1), "batch_tokens": integer(1, null=True),
        "candidates": section({"k": integer(1, 64), "method": choice("beam", "diverse", "sample"),
                               "diversity_penalty": number(0), "group_beams": integer(1, null=True),
                               "temperature": number(0.01), "top_p": number(0.01, 1), "epsilon": number(0, 0.5),
                               "seed": integer(0)}),
    }),
    "metrics": section({"tokenize": choice("morpheme", "whitespace", "default"),
                        "multi_ref": choice("max", "mean"), "remove_tokens": list_of(string())}),
    "tta": section({"strategies": list_of(choice("reorder", "mask", "synonym", "paraphrase")),
                    "num_aug": integer(0), "synonym_path": string(null=True),
                    "paraphrase_model": string(null=True)}),
    "ensemble": section({"strategy": choice("auto", "averaging", "weighted_avg", "majority_vote", "rouge_weighted",
                                            "stacking", "blending"),
                         "weights": anything(), "blend_trials": integer(1), "collapse_ratio": number(0, 1),
                         "crossfit_folds": integer(2)}),
    "tune": section({
        "model": string(), "fold": fold_value(), "n_trials": integer(1), "timeout": number(0, null=True),
        "sampler": choice("tpe", "gp", "random", "cmaes"), "pruner": choice("median", "percentile", "hyperband", "none"),
        "n_jobs": integer(-1), "seed": integer(0), "storage": string(null=True), "study_name": string(null=True),
        "search_space": section_of_mappings(), "n_startup_trials": integer(0), "n_warmup_steps": integer(0),
        "train_rows": integer(0), "val_rows": integer(0), "epochs": number(0, null=True),
        "enqueue": list_of(anything()),
    }),
    "tracking": section({"log_level": choice("DEBUG", "INFO", "WARNING", "ERROR"),
                         "wandb": section({"enabled": boolean(), "project": string(), "entity": string(null=True),
                                           "tags": list_of(string()), "group": string(null=True),
                                           "mode": choice("auto", "online", "offline", "disabled")})}),
    "debug": section({"subsample": integer(0)}),
    "report": section({"worst_n": integer(0), "role_swap_margin": number(0), "short_ratio": number(0),
                       "long_ratio": number(0), "bootstrap": integer(100)}),
}

REQUIRED = ["seed", "data", "cv", "models", "zoo", "training", "generation", "metrics", "ensemble"]


def validate(params: dict) -> dict:
    """Raise :class:`ParamsError` on the first problem; return ``params`` unchanged otherwise."""
    if not isinstance(params, dict):
        raise ParamsError("params.yaml: the file must hold a mapping of sections")
    for key in REQUIRED:
        if key not in params:
            raise ParamsError(f"params.yaml: missing section {key}")
    for k, v in params.items():
        if k not in SPEC:
            raise ParamsError(f"params.yaml: unknown key {k} (known: {', '.join(sorted(SPEC))})")
        SPEC[k](k, v)
    zoo = params["zoo"]
    if not isinstance(zoo, dict):
        raise ParamsError("params.yaml: zoo must be a mapping of model names to settings")
    for name, entry in zoo.items():
        ZOO_ENTRY(f"zoo.{name}", entry)
        for req in ("family", "max_source_len", "max_target_len"):
            if req not in entry:
                raise ParamsError(f"params.yaml: zoo.{name}.{req} is required")
        if entry.get("pretrained") is None and "arch" not in entry and not entry.get("encoder"):
            raise ParamsError(f"params.yaml: zoo.{name} needs `pretrained` (hub id or path), `encoder` "
                              "(a warm-started encoder-decoder) or `arch` (from scratch)")
        if entry.get("encoder") and entry.get("family") != "seq2seq":
            raise ParamsError(f"params.yaml: zoo.{name}.encoder needs family: seq2seq")
        if entry.get("freeze_encoder") and entry.get("family") != "seq2seq":
            raise ParamsError(f"params.yaml: zoo.{name}.freeze_encoder needs family: seq2seq (a decoder-only "
                              "model has no encoder)")
        if entry.get("encoder") and entry.get("pretrained"):
            raise ParamsError(f"params.yaml: zoo.{name}: set either `pretrained` or `encoder`, not both")
    if not params["models"]:
        raise ParamsError("params.yaml: models must name at least one zoo entry")
    for i, name in enumerate(params["models"]):
        if name not in zoo:
            raise ParamsError(f"params.yaml: models[{i}] = {name!r} is not in zoo (known: {', '.join(zoo)})")
    n = params["cv"]["n_splits"]
    for i, f in enumerate(params["cv"]["folds"]):
        if f != "full" and f >= n:
            raise ParamsError(f"params.yaml: cv.folds[{i}] = {f} is out of range for cv.n_splits = {n}")
    if not params["cv"]["folds"]:
        raise ParamsError("params.yaml: cv.folds must list at least one fold")
    return params


def load(path: str | Path = "params.yaml") -> dict:
    """Read and validate params; a missing or unparsable file is a :class:`ParamsError` too."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} is not valid YAML") from None
    return validate(params)


def parse_fold(text: str) -> int | str:
    return "full" if text == "full" else int(text)


def for_model(params: dict, model: str) -> dict:
    """``params`` with ``zoo.<model>.training`` laid over ``training`` (the keys a model sets win)."""
    over = (zoo_entry(params, model).get("training") or {})
    return {**params, "training": {**params["training"], **over}} if over else params


def zoo_entry(params: dict, model: str) -> dict:
    try:
        return params["zoo"][model]
    except KeyError:
        raise ParamsError(f"params.yaml: unknown model {model!r} (not in zoo)") from None
