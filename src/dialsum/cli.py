"""``dialsum`` command line: sample, score, summarize, env, tiny-models, replica, memory, tune, report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: 0 or less was silently the default before (``if a.num_beams:``)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is below 1")
    return n


def cmd_sample(a) -> int:
    from .sample import write_sample

    paths = write_sample(a.out, seed=a.seed, n_train=a.n_train, n_dev=a.n_dev, n_test=a.n_test)
    for split, p in paths.items():
        print(f"{split}: {p}")
    return 0


def cmd_score(a) -> int:
    from .data import DataError, references
    from .metrics import Scorer

    try:
        pred = _read(a.pred, ["fname", "summary"])
        ref = _read(a.ref, ["fname"])
        missing_pred = sorted(set(ref["fname"]) - set(pred["fname"]))
        missing_ref = sorted(set(pred["fname"]) - set(ref["fname"]))
        if missing_pred or missing_ref:
            side, names, where = (
                (a.pred, missing_pred, "in predictions") if missing_pred else (a.ref, missing_ref, "in references")
            )
            raise DataError(
                f"{side}: {len(names)} fname(s) missing {where}, e.g. {names[0]!r}; refusing to score a partial set"
            )
        for path, df in ((a.pred, pred), (a.ref, ref)):
            if df["fname"].duplicated().any():
                raise DataError(f"{path}: duplicate fname {df['fname'][df['fname'].duplicated()].iloc[0]!r}")
        ref = ref.set_index("fname").loc[list(pred["fname"])].reset_index()
        refs = references(ref)
        if blank := [f for f, r in zip(ref["fname"], refs) if not any(t.strip() for t in r)]:
            raise DataError(f"{a.ref}: fname {blank[0]!r} has no reference summary ({len(blank)} such rows)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scorer = Scorer(a.tokenize, a.multi_ref, a.remove_tokens or (), a.rouge)
    result = scorer.score(list(pred["summary"]), refs)
    for k in ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu"):
        print(f"{k:>10}: {result[k]:.4f}")
    print(
        json.dumps({**result, "tokenize": a.tokenize, "multi_ref": a.multi_ref, "rouge": a.rouge}, ensure_ascii=False)
    )
    return 0


def _read(path: str, cols: list[str]):
    import pandas as pd

    from .data import DataError

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several kinds for unreadable CSVs
        raise DataError(f"{p}: cannot be read as CSV ({type(e).__name__})") from None
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column {', '.join(missing)} (found: {', '.join(df.columns)})")
    return df


def cmd_summarize(a) -> int:
    import pandas as pd

    from . import decoding, generation
    from .data import DataError, clean_text, read_csv
    from .io import write_csv
    from .metrics import CachedTokenizer
    from .params import Generation, Metrics, ParamsError, load

    try:
        df = read_csv(a.input, "test")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.ensemble:
        from .ensemble import summarize_new
        from .params import ParamsError, override

        try:
            params = load(a.params)
            if a.num_beams:
                params = override(params, {"generation.num_beams": a.num_beams})
            out, info = summarize_new(
                params,
                df.assign(dialogue=[clean_text(d) for d in df["dialogue"]]),
                Path(a.params).resolve().parent,
                {"num_beams": a.num_beams} if a.num_beams else None,  # the flag wins over decode@'s choice
            )
        except (ParamsError, DataError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        write_csv(a.output, out[["fname", "summary", "source", "view"]])
        how = info["strategy"] + (f": {info['auto']['chosen']}" if "auto" in info else "")
        left_out = f", {len(info['collapsed'])} collapsed left out" if info.get("collapsed") else ""
        print(f"{len(out)} summaries ({how} over {len(info['sources'])} sources{left_out}) -> {a.output}")
        return 0
    if not a.model:
        print("error: give --model PATH (a trained folder) or --ensemble", file=sys.stderr)
        return 2
    if not Path(a.model).exists():
        print(f"error: {a.model}: no such model folder", file=sys.stderr)
        return 2
    try:
        params = load(a.params) if Path(a.params).exists() else None
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = params.generation if params else Generation()
    if a.num_beams:
        gen = gen.model_copy(update={"num_beams": a.num_beams})
    # The zoo entry the folder was trained with: its source length and prompt are what the model learnt to read
    name = a.entry or Path(os.path.abspath(a.model)).parent.name  # not resolve(): a linked folder keeps its name
    entry = params.zoo.get(name) if params else None
    if a.entry and entry is None:
        why = "no such zoo entry in" if params else "no params file"
        print(f"error: --entry {a.entry}: {why} {a.params}", file=sys.stderr)
        return 2
    settings, lengths = decoding.Settings(), None
    if entry is not None:
        print(f"zoo.{name}'s settings (max_source_len {entry.max_source_len}, its prompt)", file=sys.stderr)
        # decode@<entry>'s choice, as predict decodes the model; the flag wins over it too
        flags = {"num_beams": a.num_beams} if a.num_beams else None
        settings, lengths = decoding.choice_for(name, Path(a.params).resolve().parent, flags, required=False)
        if settings != decoding.Settings():
            print(f"decoding with {settings.as_dict()} (decode@{name}'s choice)", file=sys.stderr)
    try:  # before the model loads: a stored choice params.yaml has since made invalid (e.g. mbr with a pool)
        section = settings.generation_section(gen)
    except ValueError as e:
        print(f"error: {e} (run `dvc repro decode`)", file=sys.stderr)
        return 2
    if section.mbr > 1:
        beams = decoding.mbr_beams(section.num_beams, section.mbr)
        print(f"MBR over the {section.mbr}-best (generation.mbr) of a {beams}-beam search", file=sys.stderr)
    summarizer = generation.Summarizer.load(Path(a.model), entry, gen, a.max_source_len, a.batch_size)
    tokens = CachedTokenizer((params.metrics if params else Metrics()).tokenize)  # generation.mbr compares in them
    texts = decoding.summarize(
        summarizer, [clean_text(d) for d in df["dialogue"]], settings, lengths, "summarize", True, tokens
    )
    write_csv(a.output, pd.DataFrame({"fname": df["fname"], "summary": texts}))
    print(f"{len(texts)} summaries -> {a.output}")
    return 0


def cmd_env(a) -> int:
    import importlib.metadata as md
    import platform

    import torch

    from .device import Device, precision

    dev = Device.probe()
    rows = [
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("cuda available", torch.cuda.is_available()),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"gpu {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}"))
        rows += [
            ("cuda", torch.version.cuda),
            ("bf16 supported", "native" if dev.native_bf16 else "emulated only (slower than fp32): fp16 is used"),
            ("fp16 supported", True),
        ]
    else:
        rows += [
            ("gpu", "none (CPU only: training runs in fp32)"),
            ("bf16 supported", False),
            ("fp16 supported", False),
        ]
    try:
        import bitsandbytes as bnb

        backend = "cuda" if torch.cuda.is_available() else "cpu"
        rows.append(("bitsandbytes", f"{bnb.__version__} (backend in use: {backend})"))
    except Exception as e:  # bitsandbytes raises on broken CUDA setups; report, don't crash
        rows.append(("bitsandbytes", f"unavailable ({type(e).__name__}: {e})"))
    for pkg in ("transformers", "peft", "accelerate", "dvc", "dvclive", "optuna", "kiwipiepy", "rouge-score"):
        try:
            rows.append((pkg, md.version(pkg)))
        except md.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    rows.append(("mixed precision (auto)", next(iter(precision("auto", dev)), "no (fp32)")))
    rows.append(("tf32 matmuls", dev.cuda and dev.capability >= (8, 0)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _train_texts(path: str) -> list[str]:
    """Cleaned dialogues and summaries of a train CSV: what a tokenizer built here is trained on."""
    from .data import clean_text, read_csv

    train = read_csv(path, "train")
    return [clean_text(t) for t in list(train["dialogue"]) + list(train["summary"])]


def cmd_tiny_models(a) -> int:
    """Offline stand-ins in HF format, loadable with ``from_pretrained(path)`` like a hub checkpoint."""
    from . import models
    from .data import DataError
    from .params import ParamsError, load

    try:
        params = load(a.params)
        texts = _train_texts(a.train)
    except (ParamsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scratch = {n: e for n, e in params.zoo.items() if e.pretrained is None and e.arch is not None}
    names = a.names or list(scratch)
    unknown = [n for n in names if n not in scratch]
    if unknown:
        print(f"error: {unknown[0]!r} is not a from-scratch zoo entry (known: {', '.join(scratch)})", file=sys.stderr)
        return 2
    from .io import atomic_dir

    for name in names:
        out = Path(a.out) / name
        with atomic_dir(out) as tmp:
            models.build_init(scratch[name], texts, tmp, a.seed)
        print(f"{name} ({scratch[name].arch.type}): {out}  (use: dvc exp run -S zoo.{name}.pretrained={out})")
    return 0


def cmd_replica(a) -> int:
    """A random-weight replica of a real checkpoint (its architecture and tokenizer conventions)."""
    from . import replica
    from .data import DataError
    from .io import atomic_dir

    try:
        texts = []
        if a.kind != "kobart":  # KoBART's own tokenizer is used as released; the others are trained on TRAIN
            texts = _train_texts(a.train)
        with atomic_dir(Path(a.out)) as tmp:
            replica.build(a.kind, tmp, texts, a.layers, a.d_model, a.tokenizer, a.vocab_size, a.seed, a.dropout)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{a.kind} replica: {a.out}  (use it as a zoo entry's `pretrained: {a.out}`; params.yaml's "
        f"{a.kind}-replica expects models/replicas/{a.kind})"
    )
    return 0


def cmd_report(a) -> int:
    from . import report
    from .params import ParamsError, load

    try:
        if a.compare:
            path = report.write_compare(a.compare[0], a.compare[1], Path(a.repo), Path(a.out) if a.out else None)
        else:
            path = report.write_index(
                load(Path(a.repo) / a.params),
                Path(a.out) if a.out else Path(a.repo) / "reports/index.html",
                Path(a.repo),
            )
    except (report.ReportError, ParamsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_memory(a) -> int:
    from .memory import format_table, zoo_table
    from .params import load

    print(format_table(zoo_table(load(a.params).zoo)))
    print(
        "\nWeights only; add activations (batch x length; gradient checkpointing cuts them) and the CUDA "
        "context (~0.5 GiB). LoRA AdamW state = fp32 weight + grad + m + v of the adapter parameters."
    )
    return 0


def cmd_tune_worker(a) -> int:
    """One more process on the study in params (same code as the tune stage); run several at once."""
    from . import tuning
    from .data import DataError
    from .params import ParamsError, load, override
    from .tracking import log_level, seed_everything, setup_logging

    try:
        params = tuning.settings(load(a.params))
        if a.storage:
            params = override(params, {"tune.storage": a.storage})
        setup_logging("tune", f"worker-{os.getpid()}", log_level(params))
        tuning.check_space(params)
        seed_everything(params.seed)
        train_df, val_df = tuning.load_data(params)
        init = Path("tuning/init")
        if not (init / "tokenizer.json").exists():
            init = tuning.build_init(params, Path(f"tuning/init-{os.getpid()}"))
        study = tuning.run_study(
            params,
            train_df,
            val_df,
            init,
            Path(f"tuning/trials/worker-{os.getpid()}"),
            n_trials=a.n_trials,
            progress=False,
            # a seed of its own, or every worker would propose the same settings
            sampler_seed=params.tune.seed + os.getpid(),
        )
    except (ParamsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"study {study.study_name}: {tuning.finished(study)} finished trials")
    return 0


def cmd_tune_apply(a) -> int:
    """Run the best trial's settings as an ordinary experiment (or print the command)."""
    import shlex
    import subprocess

    from .tuning import apply_args

    best = Path(a.file)
    if not best.exists():
        print(f"error: {best}: not found (run `dvc repro tune` first)", file=sys.stderr)
        return 2
    args = apply_args(best)
    if not args:
        print(f"error: {best}: no completed trial yet", file=sys.stderr)
        return 2
    cmd = ["dvc", "exp", "run", *(["-n", a.name] if a.name else []), *args]
    print(" ".join(shlex.quote(c) for c in cmd))
    return 0 if a.print_only else subprocess.call(cmd)


def cmd_schema(a) -> int:
    from .io import write_text
    from .params import schema

    if a.out:
        write_text(a.out, schema())
        print(f"params.yaml schema -> {a.out}")
    else:
        sys.stdout.write(schema())
    return 0


def main(argv: list[str] | None = None) -> int:
    from .params import MULTI_REF, ROUGE_IMPLS, TOKENIZE_MODES, Metrics

    ap = argparse.ArgumentParser(prog="dialsum", description="Dialogue summarization pipeline helpers.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("sample", help="write the synthetic Korean sample (byte-identical per seed)")
    p.add_argument("--out", default="data/sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-dev", type=int, default=80)
    p.add_argument("--n-test", type=int, default=80)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("score", help="ROUGE-1/2/L + BLEU of PRED.csv against REF.csv; last line is JSON")
    p.add_argument("pred")
    p.add_argument("ref")
    metrics = Metrics()  # params.yaml's `metrics` defaults
    p.add_argument("--tokenize", choices=TOKENIZE_MODES, default=metrics.tokenize)
    p.add_argument("--multi-ref", choices=MULTI_REF, default=metrics.multi_ref)
    p.add_argument("--remove-tokens", nargs="*", default=metrics.remove_tokens)
    # the DialogSum-ko leaderboard: --rouge rouge --multi-ref mean --tokenize morpheme (docs/scoring-leaderboard.md)
    p.add_argument("--rouge", choices=ROUGE_IMPLS, default=metrics.rouge)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("summarize", help="summaries for new dialogues with a trained model folder or the ensemble")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="a trained folder, e.g. models/tiny-bart/full")
    which.add_argument(
        "--ensemble",
        action="store_true",
        help="every model x fold of params.yaml combined by ensemble.strategy, as the final stage",
    )
    p.add_argument("--input", required=True, help="CSV with fname,dialogue")
    p.add_argument("--output", required=True)
    p.add_argument(
        "--params",
        default="params.yaml",
        help="generation settings (and, with --ensemble, the models, folds, TTA and strategy)",
    )
    p.add_argument("--num-beams", type=positive_int, default=None, help="beams (default: decode@'s choice)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="most dialogues per generate call (default: generation.batch_size; generation.batch_tokens "
        "bounds the tokens)",
    )
    p.add_argument(
        "--entry",
        default=None,
        help="the zoo entry the model was trained with (its max_source_len, prompt, trust_remote_code; "
        "default: the folder's parent name, models/<entry>/<fold>, when params.zoo has it)",
    )
    p.add_argument(
        "--max-source-len",
        type=positive_int,
        default=None,
        help="source tokens kept (default: the zoo entry's, else 512 within the model's positions)",
    )
    p.set_defaults(fn=cmd_summarize)

    p = sub.add_parser(
        "schema",
        help="params.yaml's JSON schema: every key, its type, bounds and default (editors "
        "complete and check params.yaml with it: see its first line)",
    )
    p.add_argument("--out", default=None, help="write it to this file (params.schema.json) instead of printing it")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("env", help="torch / CUDA / GPU / bf16 / bitsandbytes / versions report")
    p.set_defaults(fn=cmd_env)

    p = sub.add_parser(
        "tiny-models", help="build the offline stand-ins (random weights, tokenizer trained on TRAIN) as HF folders"
    )
    p.add_argument("--train", default="data/sample/train.csv")
    p.add_argument("--out", default="models/tiny")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("names", nargs="*", help="zoo entries (default: every from-scratch entry)")
    p.set_defaults(fn=cmd_tiny_models)

    p = sub.add_parser(
        "replica",
        help="a random-weight replica of KoBART / SOLAR-Instruct / Polyglot-ko: published "
        "architecture, the checkpoint's tokenizer conventions (usable as pretrained:)",
    )
    p.add_argument("kind", choices=["kobart", "solar", "polyglot"])
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=None, help="layers (per stack); default: the published depth")
    p.add_argument("--d-model", type=int, default=None, help="hidden width; default: the published width")
    p.add_argument(
        "--tokenizer", default="../shared/fixtures/kobart-tokenizer", help="kobart: KoBART's tokenizer folder"
    )
    p.add_argument(
        "--train", default="data/sample/train.csv", help="solar/polyglot: text their tokenizer is trained on"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=4000,
        help="solar/polyglot: tokenizer size (the model keeps the published embedding size)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="replace the published dropout rates (0.0 for a narrow replica trained from scratch on the sample)",
    )
    p.set_defaults(fn=cmd_replica)

    p = sub.add_parser(
        "report",
        help="HTML error analysis of the dev split (the report stage's page), or "
        "--compare A B: two revisions or experiments dialogue by dialogue",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="git revisions, DVC experiment names or `workspace`; writes reports/compare-A-B.html",
    )
    p.add_argument(
        "--out", default=None, help="the HTML file (default: reports/index.html or reports/compare-A-B.html in --repo)"
    )
    p.add_argument("--repo", default=".", help="the dialsum project (a DVC repo)")
    p.add_argument("--params", default="params.yaml", help="without --compare: the run's params (in --repo)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("memory", help="computed GPU memory table (bf16/8-bit/4-bit weights, LoRA state) per zoo model")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(fn=cmd_memory)

    p = sub.add_parser("tune", help="Optuna study helpers: extra worker processes, applying the best trial")
    tsub = p.add_subparsers(dest="tune_cmd", required=True)
    w = tsub.add_parser("worker", help="run trials of the configured study (several workers share its storage)")
    w.add_argument("--params", default="params.yaml")
    w.add_argument("--n-trials", type=int, default=None, help="size of the study to reach (default tune.n_trials)")
    w.add_argument("--storage", default=None, help="override tune.storage (an RDB URL or journal:PATH)")
    w.set_defaults(fn=cmd_tune_worker)
    ap_ = tsub.add_parser("apply", help="dvc exp run -S ... with tuning/best_params.yaml")
    ap_.add_argument("--file", default="tuning/best_params.yaml")
    ap_.add_argument("--name", "-n", default=None, help="experiment name")
    ap_.add_argument("--print-only", action="store_true", help="print the command, do not run it")
    ap_.set_defaults(fn=cmd_tune_apply)

    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
