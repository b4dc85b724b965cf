"""Time the decoding search on the default run's trained tiny-bart/0 and count its generate calls, with this
checkout's dialsum.decoding or (``--rev REV``) the one a git revision had, side by side in one process tree.
Run from the repository root after `dvc repro`:

    python benchmarks/decode_calls.py --trials 30 --rev 806e96e --repeats 2
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ONE = """
import importlib, json, sys, time
from dialsum import data, generation, paths, params as P
mod = importlib.import_module(sys.argv[1])
trials, rows = int(sys.argv[2]), int(sys.argv[3])
params = P.for_model(P.override(P.load("params.yaml"), {"decode.trials": trials, "decode.rows": rows}), "tiny-bart")
d = data.load_processed()
df = d["train"][d["train"]["fold"] == 0].head(rows).reset_index(drop=True)
s = generation.Summarizer.load(paths.model_dir("tiny-bart", 0), params.zoo["tiny-bart"], params.generation)
lm = mod.LengthModel.fit(s.tokenizer, d["train"]["dialogue"], d["train"]["summary"], params.decode.quantile)
calls, real = [], s.__class__.__call__
s.__class__.__call__ = lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1]
t = time.time()
r = mod.search(params, [s], [df], lm)
print(json.dumps({"s": time.time() - t, "calls": len(calls), "best": r["best_rouge_sum"], "settings": r["settings"]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--rev", default=None, help="also run the search of this git revision's decoding.py")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    mods = {"this checkout": "dialsum.decoding"}
    old = Path("src/dialsum/_decoding_at_rev.py")
    if a.rev:
        old.write_text(
            subprocess.run(
                ["git", "show", f"{a.rev}:src/dialsum/decoding.py"], capture_output=True, text=True, check=True
            ).stdout
        )
        mods[a.rev] = "dialsum._decoding_at_rev"
    runs = {k: [] for k in mods}
    try:
        for _ in range(a.repeats):
            for name, mod in mods.items():  # alternating, so drift hits both alike
                out = subprocess.run(
                    [sys.executable, "-c", ONE, mod, str(a.trials), str(a.rows)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
    finally:
        old.unlink(missing_ok=True)
    for name, rs in runs.items():
        print(
            f"{name}: {a.trials} trials, {rs[0]['calls']} generate calls, median {statistics.median(r['s'] for r in rs):.1f} s, "
            f"best {rs[0]['best']}, {rs[0]['settings']}"
        )


if __name__ == "__main__":
    main()
