"""Error analysis as HTML: ``reports/index.html`` for a run (the ``report`` stage) and
``reports/compare-A-B.html`` for two runs (``dialsum report --compare A B``).

Each report is one self-contained file: CSS, JS and plots are inline, and nothing is fetched. It is rendered
by jinja2 with autoescaping on, so text from the data (a dialogue holding ``<script>``) shows as text.

The run report reads what the pipeline wrote for the dev split (only dev has references):
``data/processed/dev.csv``, every source's ``predictions/<model>/<fold|avg>/dev.csv`` (original view,
candidate 0: what that source alone would submit), ``predictions/ensemble/dev.csv`` and
``metrics/ensemble.json``. Per-row ROUGE comes from the same :class:`~dialsum.metrics.Scorer` as the
metrics, so the table's means are the metrics' figures.

Diagnostics, per summary (counted for the ensemble and every source):

- ``foreign_tag``: a speaker tag (``#Person3#``) that the dialogue does not have;
- ``role_swap``: swapping ``#Person1#`` and ``#Person2#`` in the summary (particles re-chosen) raises its
  rouge_sum against the reference by at least ``report.role_swap_margin``: the summary most likely gives
  one speaker's part to the other;
- ``length_limit``: the summary has at least the generation limit − 1 tokens (the limit is
  ``generation.max_new_tokens``, by default the entry's ``max_target_len + 1``; tokens counted with the model's own tokenizer,
  or the pool's ``tokens`` column): it probably never produced an end-of-sequence token;
- ``empty``; ``repeats``: a three-word sequence occurs twice in it; ``duplicate``: the same text was given
  for another dialogue;
- ``too_short`` / ``too_long``: fewer than ``report.short_ratio`` × or more than ``report.long_ratio`` × the
  reference's words (the mean over references).

The compare report scores both runs' ensemble summaries on the dialogues they share and gives, per
dialogue, the rouge_sum change; the mean change comes with a paired-bootstrap 95 % interval.
"""

from __future__ import annotations

import base64
import functools
import io as _io
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import io, paths
from .data import DataError, references
from .metrics import SOURCE_DEPENDENCE_MIN, Scorer
from .params import Params, new_tokens, section, typed, written
from .params import Report as Settings
from .tta import permute_speakers

log = logging.getLogger(__name__)

SPEAKER_RE = re.compile(r"#Person\d+#")
DIAGNOSTICS = {
    "foreign_tag": "speaker tag the dialogue does not have",
    "role_swap": "probable role swap (#Person1# ↔ #Person2# scores higher)",
    "length_limit": "at the generation length limit (probably never stopped)",
    "empty": "empty summary",
    "repeats": "repeats a three-word phrase",
    "duplicate": "same text as another dialogue's summary",
    "too_short": "shorter than short_ratio × the reference",
    "too_long": "longer than long_ratio × the reference",
}
ENSEMBLE = "ensemble"
KEYS = ("rouge1", "rouge2", "rougeL", "rouge_sum", "bleu")


class ReportError(DataError):
    """A report cannot be written (a missing input, an unknown revision): one line for the user (stages
    print it without a traceback, as for bad data)."""


def settings_of(params: Params | dict) -> Settings:
    """``params.yaml`` → ``report`` with its defaults (``dialsum.params.Report``); ``params`` may also be another
    revision's file as read (a mapping that today's schema need not accept as a whole)."""
    return params.report if isinstance(params, Params) else section(Settings, params.get("report"), "report")


def paired_bootstrap(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of paired per-dialogue differences (``n`` resamples of the
    dialogues)."""
    idx = np.random.default_rng(seed).integers(0, len(diff), (n, len(diff)))
    means = np.asarray(diff)[idx].mean(axis=1)
    return round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)


# ---------------------------------------------------------------------------------------------- diagnostics
def foreign_tags(dialogue: str, summary: str) -> list[str]:
    """Speaker tags in ``summary`` that ``dialogue`` never uses, in order of appearance."""
    have = set(SPEAKER_RE.findall(dialogue))
    return list(dict.fromkeys(t for t in SPEAKER_RE.findall(summary) if t not in have))


def swap_roles(summary: str) -> str:
    """``#Person1#`` ↔ ``#Person2#``, Korean particles after the tags re-chosen."""
    return permute_speakers(summary, {1: 2, 2: 1})


def repeats(summary: str, n: int = 3) -> bool:
    words = summary.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def words(text: str) -> int:
    return len(text.split())


def length_ratio(summary: str, refs: list[str]) -> float:
    return words(summary) / max(1.0, float(np.mean([words(r) for r in refs])))


def diagnose(
    dialogues: list[str],
    refs: list[list[str]],
    summaries: list[str],
    scorer: Scorer,
    settings: Settings,
    tokens: list[int] | None = None,
    limits: list[int] | None = None,
    rows: np.ndarray | None = None,
) -> list[list[str]]:
    """The diagnostics (keys of :data:`DIAGNOSTICS`) of each summary, in that order. ``tokens``/``limits``:
    each summary's token count and generation limit (``length_limit`` is skipped without them);
    ``rows``: the summaries' per-row ROUGE if already scored."""
    rows = scorer.per_row(summaries, refs) if rows is None else rows
    swapped = [swap_roles(s) for s in summaries]
    todo = [i for i, (s, w) in enumerate(zip(summaries, swapped)) if s != w]
    gain = np.zeros(len(summaries))
    if todo:
        gain[todo] = scorer.per_row([swapped[i] for i in todo], [refs[i] for i in todo]).sum(axis=1) - rows[todo].sum(
            axis=1
        )
    seen: dict[str, int] = {}
    for s in summaries:
        if s.strip():
            seen[s] = seen.get(s, 0) + 1
    out = []
    for i, (d, rs, s) in enumerate(zip(dialogues, refs, summaries)):
        ratio = length_ratio(s, rs)
        checks = {
            "foreign_tag": bool(foreign_tags(d, s)),
            "role_swap": gain[i] >= settings.role_swap_margin,
            "length_limit": tokens is not None and limits is not None and tokens[i] >= limits[i] - 1,
            "empty": not s.strip(),
            "repeats": repeats(s),
            "duplicate": seen.get(s, 0) > 1,
            "too_short": bool(s.strip()) and ratio < settings.short_ratio,
            "too_long": ratio > settings.long_ratio,
        }
        out.append([k for k in DIAGNOSTICS if checks[k]])
    return out


# ----------------------------------------------------------------------------------------- n-gram overlap
_NORM_RE = re.compile(r"[^\w#]+")


def _norm(word: str) -> str:
    return _NORM_RE.sub("", word.lower())


def overlap_marks(summary: str, refs: list[str]) -> list[tuple[str, str]]:
    """Each word of ``summary`` with ``"b"`` (part of a word bigram some reference has), ``"u"`` (a word
    some reference has) or ``""``. Words, not ROUGE's morphemes: a visual aid, not the score."""
    ws = summary.split()
    norm = [_norm(w) for w in ws]
    uni, bi = set(), set()
    for r in refs:
        rn = [_norm(w) for w in r.split()]
        uni.update(rn)
        bi.update(zip(rn, rn[1:]))
    out = []
    for i, w in enumerate(ws):
        if (i > 0 and (norm[i - 1], norm[i]) in bi) or (i + 1 < len(ws) and (norm[i], norm[i + 1]) in bi):
            out.append((w, "b"))
        else:
            out.append((w, "u" if norm[i] and norm[i] in uni else ""))
    return out


# ------------------------------------------------------------------------------------------------ inputs
def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ReportError(f"{path}: not found; run `dvc repro` (the report reads the pipeline's outputs)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _first_candidates(df: pd.DataFrame) -> pd.DataFrame:
    """The original view's candidate 0 of each dialogue: what the source alone would submit."""
    if "view" in df:
        df = df[df["view"] == "orig"]
    if "candidate" in df:
        df = df[df["candidate"].astype(int) == 0]
    return df.drop_duplicates("fname").set_index("fname")


def _token_counts(
    root: Path, source: str, summaries: list[str], pred: pd.DataFrame, fnames: list[str]
) -> list[int] | None:
    if "tokens" in pred:
        return [int(pred.at[f, "tokens"]) for f in fnames]
    tok = _init_tokenizer(root, source.split("/")[0], "length_limit not checked")
    if tok is None:
        return None
    return [len(ids) for ids in tok(summaries, add_special_tokens=False)["input_ids"]]


@functools.lru_cache(maxsize=8)
def _tokenizer_at(folder: Path, stamp: int):  # stamp: a re-run init@ is a new tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _init_tokenizer(root: Path, model: str, otherwise: str):
    """``model``'s tokenizer from init@model (loaded once per folder), or None with a warning saying what the
    report does ``otherwise``."""
    folder = root / paths.init_dir(model)
    if not (folder / "tokenizer_config.json").exists():
        log.warning("%s: no tokenizer in %s; %s", model, folder, otherwise)
        return None
    return _tokenizer_at(folder.resolve(), (folder / "tokenizer_config.json").stat().st_mtime_ns)


def _limits(params: Params, root: Path, model: str, dialogues: list[str]) -> list[int]:
    """The new-token limit each dev dialogue of ``model`` was decoded under: ``generation.*`` with the decode stage's
    choice (``decoding/<model>.yaml``: its keys, and with ``length_control: quantile`` a cap per dialogue by its
    length), as predict decoded; a summary that reaches it was cut off."""
    from .decoding import choice_for

    settings, lengths = choice_for(model, root, required=False)
    top = new_tokens(settings.generation_section(params.generation), params.zoo[model].max_target_len)
    if settings.length_control == "none" or lengths is None:
        return [top] * len(dialogues)
    tok = _init_tokenizer(root, model, f"length_limit checked against {top} tokens")
    if tok is None:
        return [top] * len(dialogues)
    return [lengths.limits[b][1] for b in lengths.bins(tok, dialogues)]


def _flatten(obj, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, ensure_ascii=False) if not isinstance(obj, str) else obj}


def run_params(params: dict) -> dict[str, str]:
    """The params that define a run's summaries, flattened (``generation.num_beams``: ``4``)."""
    keep = {k: params[k] for k in ("models", "training", "generation", "tta", "ensemble", "metrics") if k in params}
    keep["cv.folds"] = params.get("cv", {}).get("folds")
    keep["zoo"] = {m: params["zoo"][m] for m in params.get("models", []) if m in params.get("zoo", {})}
    return _flatten(keep)


# ----------------------------------------------------------------------------------------------- render
def _png(fig) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(table: pd.DataFrame, sources: list[str]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.scatter(table["dialogue_words"], table[f"{ENSEMBLE}_sum"], s=10, alpha=0.5, label="ensemble, per dialogue")
    edges = np.unique(np.quantile(table["dialogue_words"], np.linspace(0, 1, 6)))
    if len(edges) > 2:
        bins = pd.cut(table["dialogue_words"], edges, include_lowest=True)
        centers = table.groupby(bins, observed=True)["dialogue_words"].median()
        for name in [ENSEMBLE] + sources:
            means = table.groupby(bins, observed=True)[f"{name}_sum"].mean()
            ax.plot(
                centers.values,
                means.values,
                marker="o",
                lw=2 if name == ENSEMBLE else 1,
                label=f"{name} (mean per length quintile)",
            )
    ax.set_xlabel("dialogue length (words)")
    ax.set_ylabel("rouge_sum")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("ROUGE against dialogue length (dev)")
    fig.tight_layout()
    out["length"] = _png(fig)

    return out


def by_topic(table: pd.DataFrame, sources: list[str], most: int = 30) -> list[dict]:
    """Mean rouge_sum per topic of the ``most`` most frequent topics (an HTML table with bars: topic names
    are Korean, and the browser has the fonts that matplotlib may lack)."""
    if "topic" not in table or not table["topic"].str.strip().any():
        return []
    counts = table["topic"].value_counts()
    out = []
    for topic in sorted(counts.index, key=lambda t: (-counts[t], t))[:most]:
        sub = table[table["topic"] == topic]
        out.append(
            {
                "topic": topic,
                "n": int(counts[topic]),
                ENSEMBLE: float(sub[f"{ENSEMBLE}_sum"].mean()),
                **{s: float(sub[f"{s}_sum"].mean()) for s in sources},
            }
        )
    return out


def _environment():
    from jinja2 import DictLoader, Environment, StrictUndefined

    folder = resources.files("dialsum") / "templates"
    templates = {
        n: (folder / n).read_text(encoding="utf-8")
        for n in ("report_base.html.j2", "report_macros.html.j2", "report_index.html.j2", "report_compare.html.j2")
    }
    env = Environment(
        loader=DictLoader(templates), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["f3"] = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"
    env.filters["f4"] = lambda v: "" if v is None else f"{v:.4f}"
    return env


# ------------------------------------------------------------------------------------------------ report
def source_dependence_of(root: Path, source: str) -> float | None:
    """The training's source dependence of a ``model/fold`` source (metrics/train; training's
    SOURCE_DEPENDENCE_MIN tells reading from ignoring), None for other sources or runs from before it."""
    model, _, fold = source.partition("/")
    path = Path(root) / paths.train_metrics(model, fold)
    if not fold or not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("source_dependence")


def build_index(params: Params | dict, root: Path = Path("."), settings: Settings | None = None) -> dict:
    """Everything ``reports/index.html`` shows, as plain data (the tests read it too)."""
    params = typed(params)
    settings = settings or params.report
    root = Path(root)
    dev = _read(root / paths.PROCESSED / "dev.csv")
    metrics_path = root / paths.ENSEMBLE_METRICS
    if not metrics_path.exists():
        raise ReportError(f"{metrics_path}: not found; run `dvc repro ensemble` first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    scorer = Scorer.from_params(params)
    fnames, dialogues, refs = list(dev["fname"]), list(dev["dialogue"]), references(dev)
    ens = _read(root / paths.ENSEMBLE_PREDICTIONS / "dev.csv").drop_duplicates("fname").set_index("fname")
    missing = [f for f in fnames if f not in ens.index]
    if missing:
        raise ReportError(
            f"predictions/ensemble/dev.csv: no summary for {len(missing)} dev dialogues "
            f"(first: {missing[0]}); re-run `dvc repro ensemble`"
        )
    # natural order: lead2 before lead10
    sources = sorted(
        metrics.get("sources", {}), key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
    )
    summaries = {ENSEMBLE: [ens.at[f, "summary"] for f in fnames]}
    tokens: dict[str, list[int] | None] = {}
    for src in sources:
        pred = _first_candidates(_read(root / paths.predictions(src, "dev")))
        absent = [f for f in fnames if f not in pred.index]
        if absent:
            raise ReportError(f"predictions/{src}/dev.csv: no summary for {absent[0]}")
        summaries[src] = [pred.at[f, "summary"] for f in fnames]
        tokens[src] = _token_counts(root, src, summaries[src], pred, fnames)
    # the ensemble's summary is one of its sources': its token count is that source's
    by_source = {s: dict(zip(fnames, tokens[s])) for s in sources if tokens[s] is not None}
    chosen_src = [ens.at[f, "source"] if "source" in ens else "" for f in fnames]
    ens_tokens = [by_source.get(s, {}).get(f, -1) for s, f in zip(chosen_src, fnames)]
    limits = {m: _limits(params, root, m, dialogues) for m in params.models}
    ens_limits = [limits[s.split("/")[0]][i] if s.split("/")[0] in limits else 10**9 for i, s in enumerate(chosen_src)]

    table = pd.DataFrame(
        {
            "fname": fnames,
            "topic": list(dev["topic"]) if "topic" in dev else [""] * len(fnames),
            "dialogue_words": [words(d) for d in dialogues],
        }
    )
    flags, rouge = {}, {}
    for name in tqdm([ENSEMBLE] + sources, desc="report: scoring", unit="source"):
        rows = scorer.per_row(summaries[name], refs)
        rouge[name] = rows
        table[f"{name}_sum"] = rows.sum(axis=1)
        lims = ens_limits if name == ENSEMBLE else limits.get(name.split("/")[0], [10**9] * len(fnames))
        flags[name] = diagnose(
            dialogues,
            refs,
            summaries[name],
            scorer,
            settings,
            ens_tokens if name == ENSEMBLE else tokens[name],
            lims,
            rows=rows,
        )

    counts = {name: {k: sum(k in f for f in flags[name]) for k in DIAGNOSTICS} for name in flags}
    examples = {}
    for k in DIAGNOSTICS:
        ex = []
        for name in [ENSEMBLE] + sources:
            ex += [(fnames[i], name, summaries[name][i]) for i, f in enumerate(flags[name]) if k in f]
            if len(ex) >= 5:
                break
        examples[k] = ex[:5]
    ratios = {name: float(np.median([length_ratio(s, r) for s, r in zip(summaries[name], refs)])) for name in summaries}

    rows_out = []
    for i, f in enumerate(tqdm(fnames, desc="report: rows", unit="dialogue", mininterval=2)):
        rows_out.append(
            {
                "fname": f,
                "topic": table.at[i, "topic"],
                "dialogue": dialogues[i],
                "refs": refs[i],
                "dialogue_words": int(table.at[i, "dialogue_words"]),
                "chosen": {
                    "marks": overlap_marks(summaries[ENSEMBLE][i], refs[i]),
                    "source": chosen_src[i],
                    "view": ens.at[f, "view"] if "view" in ens else "",
                    "rouge": rouge[ENSEMBLE][i].tolist(),
                    "sum": float(rouge[ENSEMBLE][i].sum()),
                    "flags": flags[ENSEMBLE][i],
                },
                "sources": [
                    {
                        "name": s,
                        "marks": overlap_marks(summaries[s][i], refs[i]),
                        "sum": float(rouge[s][i].sum()),
                        "flags": flags[s][i],
                    }
                    for s in sources
                ],
                "flags": sorted({k for name in flags for k in flags[name][i]}, key=list(DIAGNOSTICS).index),
            }
        )
    worst = sorted(range(len(fnames)), key=lambda i: (rows_out[i]["chosen"]["sum"], fnames[i]))[: settings.worst_n]
    header = [
        {
            "name": f"ensemble ({metrics.get('strategy', '?')})",
            **{k: metrics.get(k) for k in KEYS},
            "collapsed": False,
            "best": False,
        }
    ]
    header += [
        {
            "name": s,
            **{k: metrics["sources"][s].get(k) for k in KEYS},
            "collapsed": s in (metrics.get("collapsed") or {}),
            "best": s == metrics.get("best_single"),
            "source_dependence": source_dependence_of(root, s),
        }
        for s in sources
    ]
    return {
        "metrics": metrics,
        "header": header,
        "params": run_params(written(params)),
        "sources": sources,
        "rows": rows_out,
        "worst": [rows_out[i] for i in worst],
        "counts": counts,
        "examples": examples,
        "ratios": ratios,
        "diagnostics": DIAGNOSTICS,
        "source_dependence_min": SOURCE_DEPENDENCE_MIN,
        "settings": settings,
        "plots": _plots(table, sources),
        "topics": by_topic(table, sources),
        "n": len(fnames),
    }


def write_index(params: Params | dict, out: Path = paths.REPORT, root: Path = Path(".")) -> Path:
    data = build_index(params, root)
    html = _environment().get_template("report_index.html.j2").render(**data)
    return io.write_text(out, html)


# ----------------------------------------------------------------------------------------------- compare
@dataclass
class Run:
    """One side of a comparison: what a revision (or the workspace) holds."""

    label: str
    rev: str  # commit sha, or "workspace"
    params: dict
    metrics: dict
    dev: pd.DataFrame
    ensemble: pd.DataFrame


DEV, ENSEMBLE_DEV = (paths.PROCESSED / "dev.csv").as_posix(), (paths.ENSEMBLE_PREDICTIONS / "dev.csv").as_posix()
RUN_FILES = ("params.yaml", paths.ENSEMBLE_METRICS.as_posix(), DEV, ENSEMBLE_DEV)


def resolve(root: Path, name: str) -> str:
    """A git revision or a DVC experiment name → commit sha (``workspace`` stays as it is)."""
    if name == "workspace":
        return name
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise ReportError(
            f"{root}: not a DVC repository (run `dialsum report --compare` inside the project, or pass --repo)"
        ) from None
    with repo:
        try:
            return repo.scm.resolve_rev(name)
        except Exception:  # noqa: BLE001 - scmrepo raises its own RevError; an exp name is tried next
            ref = resolve_name(repo.scm, name).get(name)
            if ref is not None:
                return repo.scm.get_ref(str(ref))
    raise ReportError(f"{name}: no git revision or DVC experiment by that name (see `dvc exp list`)")


def load_run(root: Path, name: str) -> Run:
    import yaml

    rev = resolve(root, name)
    texts = {}
    if rev != "workspace":
        from dvc.api import DVCFileSystem

        fs = DVCFileSystem(str(root), rev=rev)  # git-tracked files from the commit, outputs from DVC's cache
    for path in RUN_FILES:
        try:
            texts[path] = (
                (root / path).read_text(encoding="utf-8")
                if rev == "workspace"
                else fs.read_text(path, encoding="utf-8")
            )
        except Exception as e:  # noqa: BLE001 - DVC/git raise many kinds; the user needs one line
            raise ReportError(
                f"{name} ({rev[:10]}): cannot read {path} ({type(e).__name__}); is it in the "
                f"local DVC cache? `dvc pull` or re-run that revision first"
            ) from None
    csv = lambda p: pd.read_csv(_io.StringIO(texts[p]), dtype=str, keep_default_na=False)  # noqa: E731
    return Run(
        name,
        rev,
        yaml.safe_load(texts["params.yaml"]),
        json.loads(texts[paths.ENSEMBLE_METRICS.as_posix()]),
        csv(DEV),
        csv(ENSEMBLE_DEV).drop_duplicates("fname"),
    )


def build_compare(a: Run, b: Run, settings: Settings) -> dict:
    if a.params.get("metrics") != b.params.get("metrics"):
        log.warning("metrics settings differ between %s and %s; both are scored with %s's", a.label, b.label, a.label)
    scorer = Scorer.from_params(a.params)
    ea, eb = a.ensemble.set_index("fname"), b.ensemble.set_index("fname")
    dev_b = b.dev.set_index("fname")
    common = [f for f in a.dev["fname"] if f in ea.index and f in eb.index and f in dev_b.index]
    if not common:
        raise ReportError(f"{a.label} and {b.label} share no dev dialogue: nothing to compare")
    dev_a = a.dev.set_index("fname").loc[common].reset_index()
    refs_a, refs_b = references(dev_a), references(dev_b.loc[common].reset_index())
    differ = sum(x != y for x, y in zip(refs_a, refs_b))
    if differ:
        log.warning("%d dialogues have other references in %s; each run is scored against its own", differ, b.label)
    sa = [ea.at[f, "summary"] for f in common]
    sb = [eb.at[f, "summary"] for f in common]
    ra, rb = scorer.per_row(sa, refs_a), scorer.per_row(sb, refs_b)
    diff = rb.sum(axis=1) - ra.sum(axis=1)
    lo, hi = paired_bootstrap(diff, settings.bootstrap)
    pa, pb = _flatten(a.params), _flatten(b.params)
    changed = [(k, pa.get(k, "—"), pb.get(k, "—")) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    rows = []
    for i, f in enumerate(common):
        rows.append(
            {
                "fname": f,
                "topic": dev_a.at[i, "topic"] if "topic" in dev_a else "",
                "dialogue": dev_a.at[i, "dialogue"],
                "refs": refs_a[i],
                "delta": float(diff[i]),
                "a": {
                    "marks": overlap_marks(sa[i], refs_a[i]),
                    "sum": float(ra[i].sum()),
                    "source": ea.at[f, "source"] if "source" in ea else "",
                },
                "b": {
                    "marks": overlap_marks(sb[i], refs_b[i]),
                    "sum": float(rb[i].sum()),
                    "source": eb.at[f, "source"] if "source" in eb else "",
                },
            }
        )
    order = np.argsort(diff, kind="stable")
    n = settings.worst_n
    means = {
        side: {k: float(v) for k, v in zip(("rouge1", "rouge2", "rougeL"), r.mean(axis=0))}
        for side, r in (("a", ra), ("b", rb))
    }
    for m in means.values():
        m["rouge_sum"] = m["rouge1"] + m["rouge2"] + m["rougeL"]
    return {
        "a": a,
        "b": b,
        "n": len(common),
        "only_a": len(a.dev) - len(common),
        "means": means,
        "delta": float(diff.mean()),
        "ci": (lo, hi),
        "bootstrap": settings.bootstrap,
        "improved": int((diff > 1e-9).sum()),
        "degraded": int((diff < -1e-9).sum()),
        "changed_params": changed,
        "rows": rows,
        "diagnostics": DIAGNOSTICS,
        "source_dependence_min": SOURCE_DEPENDENCE_MIN,
        "most_improved": [rows[i] for i in order[::-1][:n] if diff[i] > 1e-9],
        "most_degraded": [rows[i] for i in order[:n] if diff[i] < -1e-9],
    }


def compare_path(a: str, b: str, folder: Path = Path("reports")) -> Path:
    safe = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "_", s)  # noqa: E731
    return folder / f"compare-{safe(a)}-{safe(b)}.html"


def write_compare(
    a: str, b: str, root: Path = Path("."), out: Path | None = None, settings: Settings | None = None
) -> Path:
    ra, rb = load_run(root, a), load_run(root, b)
    data = build_compare(ra, rb, settings or settings_of(rb.params))
    html = _environment().get_template("report_compare.html.j2").render(**data)
    return io.write_text(out or root / compare_path(a, b), html)
