"""Every candidate-selection strategy with and without the TTA views, on dev and test, from one workspace's
predictions (after `dvc repro` / `dvc exp run` with `tta.strategies` set): no re-generation, no re-training.

    python benchmarks/ensemble_grid.py            # in the workspace; params.yaml says models, folds, metrics
    python benchmarks/ensemble_grid.py --json grid.json

It calls the same library functions as the ensemble stage (``combine``, ``build_groups``,
``select``), once on the original view only and once on all views, and scores dev and test (test: every
reference column, ``metrics.multi_ref``) against ``data/processed``. The best single source is picked on
dev and reported on both splits; each strategy's difference to it comes with a paired bootstrap 95 %
interval over the dialogues (per-dialogue rouge_sum, 2,000 resamples, seed 0). The token-level
``averaging`` / ``weighted_avg`` strategies need a beam search (the average stage): run them with
`dvc exp run -S ensemble.strategy=...` and score ``predictions/ensemble/*.csv`` with score_predictions.py.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dialsum import data, ensemble as E, params as P
from dialsum.metrics import Scorer

SELECTION = ("auto", "majority_vote", "rouge_weighted", "stacking", "blending")


def only(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for col, value in eq.items():
        mask &= (df[col] == value).to_numpy()
    return df[mask]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--resamples", type=int, default=2000)
    a = ap.parse_args()
    params = P.load()
    scorer = Scorer.from_params(params)
    tok = scorer.tokenizer
    d = data.load_processed()
    # a competition's test split has no summaries: then dev only
    SPLITS = ("dev", "test") if any(c.startswith("summary") for c in d["test"].columns) else ("dev",)
    refs = {s: data.references(d[s]) for s in SPLITS}
    order = {s: list(d[s]["fname"]) for s in SPLITS}
    oof_refs = dict(zip(d["train"]["fname"], data.references(d["train"])))
    models = params.models
    cands, scored = E.load_candidates(params, ("oof", *SPLITS))
    oof_scores = E.oof_rouge(scored)

    def rows_of(pred: pd.DataFrame, split: str) -> tuple[np.ndarray, int]:
        """Per-dialogue ROUGE, and how many distinct summaries (1 = a collapsed, input-blind system)."""
        summary = pred.drop_duplicates("fname").set_index("fname")["summary"]
        texts = [summary[f] for f in order[split]]
        return scorer.per_row(texts, refs[split]), len(set(texts))

    per_row, table = {}, []

    def add(name: str, kind: str, by_split: dict, extra: dict | None = None):
        per_row[name] = {s: by_split[s][0].sum(axis=1) for s in SPLITS}
        row = {"name": name, "kind": kind, **(extra or {})}
        for s in SPLITS:
            r1, r2, rl = by_split[s][0].mean(axis=0)
            row[s] = {
                "rouge1": round(r1, 4),
                "rouge2": round(r2, 4),
                "rougeL": round(rl, 4),
                "rouge_sum": round(r1 + r2 + rl, 4),
                "distinct": by_split[s][1],
            }
        table.append(row)

    for src in sorted(set(cands["dev"]["source"]), key=lambda x: (models.index(x.split("/")[0]), x)):
        add(
            src,
            "source",
            {s: rows_of(only(cands[s], source=src, view="orig"), s) for s in SPLITS},
            {"oof_rouge_sum": oof_scores.get(src)},
        )
    best = max((r for r in table if r["kind"] == "source"), key=lambda r: r["dev"]["rouge_sum"])["name"]
    for m in models:  # each model over its folds by MBR (the stage's "model" level)
        add(
            f"{m} (MBR over folds)",
            "model",
            {s: rows_of(E.mbr_select(only(cands[s], model=m, view="orig"), tok, order[s]), s) for s in SPLITS},
        )
    cfg = params.ensemble.model_copy(update={"weights": None})
    views_all = sorted(set(cands["dev"]["view"]))
    for views in (["orig"], views_all) if views_all != ["orig"] else (["orig"],):
        label = "no TTA" if views == ["orig"] else "TTA " + "+".join(v for v in views if v != "orig")
        pick = {
            s: cands[s][cands[s]["view"].str.split("-").str[0].isin({v.split("-")[0] for v in views})]
            for s in ("oof", *SPLITS)
        }
        groups = {s: E.build_groups(pick[s], tok, order[s]) for s in SPLITS}
        oof_groups = E.build_groups(pick["oof"], tok, list(dict.fromkeys(pick["oof"]["fname"])))
        for strategy in SELECTION:
            t0 = time.perf_counter()
            sel, info = E.combine(
                strategy, cfg, models, groups, oof_groups, oof_refs, "oof", oof_scores, scorer, params.seed
            )
            chosen = sel["dev"]["source"].value_counts().to_dict()
            add(
                f"{strategy}, {label}",
                "ensemble",
                {s: rows_of(sel[s], s) for s in SPLITS},
                {
                    "candidates_per_dialogue": round(float(np.mean([len(g.cands) for g in groups["dev"]])), 2),
                    "dev_chosen_sources": chosen,
                    "dev_chosen_views": sel["dev"]["view"].str.split("-").str[0].value_counts().to_dict(),
                    "seconds": round(time.perf_counter() - t0, 1),
                    **{k: v for k, v in info.items() if k in ("weights", "blend_weights")},
                },
            )

    rng = np.random.default_rng(0)
    idx = {s: rng.integers(0, len(order[s]), (a.resamples, len(order[s]))) for s in SPLITS}
    for row in table:
        for s in SPLITS:
            diff = per_row[row["name"]][s] - per_row[best][s]
            boot = diff[idx[s]].mean(axis=1)
            row[s]["gain"] = round(float(diff.mean()), 4)
            row[s]["gain_ci95"] = [round(float(np.percentile(boot, q)), 4) for q in (2.5, 97.5)]

    print(
        f"best single source (by dev rouge_sum): {best}; gain = rouge_sum - its rouge_sum on the same split;"
        f" ROUGE-avg points = gain / 3 x 100\n"
    )
    print(
        "| system | "
        + " | ".join(f"{s} R1 | {s} R2 | {s} RL | {s} sum | {s} gain [95 % CI] | {s} distinct" for s in SPLITS)
        + " |"
    )
    print("|---|" + "---|" * 6 * len(SPLITS))
    for r in table:
        cells = []
        for s in SPLITS:
            x = r[s]
            ci = f"{x['gain']:+.4f} [{x['gain_ci95'][0]:+.3f}, {x['gain_ci95'][1]:+.3f}]"
            cells += [
                f"{x['rouge1']:.4f}",
                f"{x['rouge2']:.4f}",
                f"{x['rougeL']:.4f}",
                f"{x['rouge_sum']:.4f}",
                ci,
                str(x["distinct"]),
            ]
        print(f"| {r['name']} | " + " | ".join(cells) + " |")
    for r in table:
        if r["kind"] == "ensemble":
            print(
                f"{r['name']}: {r['candidates_per_dialogue']} candidates/dialogue, dev choices by source "
                f"{r['dev_chosen_sources']}, by view {r['dev_chosen_views']}"
                + (
                    f", weights {r.get('weights') or r.get('blend_weights')}"
                    if r.get("weights") or r.get("blend_weights")
                    else ""
                )
                + f" ({r['seconds']} s)"
            )
    if a.json:
        Path(a.json).write_text(json.dumps({"best_single": best, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
