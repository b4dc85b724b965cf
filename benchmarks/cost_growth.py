"""How cost grows (issue 21), each figure from a fresh process so peaks do not mix.

    python benchmarks/cost_growth.py length   # predict wall time and peak RSS vs source length (128-1024 tokens)
    python benchmarks/cost_growth.py dvc      # no-op `dvc repro` / `dvc status` vs matrix items (4, 12, 30), and
                                              # DVC cache size vs outputs with each link cache type

`length`: a narrow KoBART replica (KoBART's tokenizer, 1,026 positions; random weights, so every summary runs
to max_new_tokens: the worst case) summarises 32 dialogues cut to exactly N tokens through
generation.Summarizer with params.yaml's generation settings (beam 4, token budget). `dvc`: a throwaway repo
whose dvc.yaml has dialsum's shape (prepare -> train/predict matrix over models x folds -> ensemble, each
item depending on 12 source files and writing a 2 MiB output), not the real stages (they would train).
Last stdout line: JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (128, 256, 512, 1024)


def one_length(n: int, replica_dir: str) -> dict:
    import resource

    import pandas as pd

    from dialsum import generation, models
    from dialsum.params import load

    gen = load(ROOT / "params.yaml").generation
    model, tok, family = models.load_for_inference(Path(replica_dir))
    text = " ".join(pd.read_csv(ROOT / "data/sample/train.csv")["dialogue"].head(60))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    dialogues = [tok.decode(ids[i * 7 : i * 7 + n - 2]) for i in range(32)]
    t = time.perf_counter()
    generation.Summarizer(model, tok, family, gen, n)(dialogues, progress=False)
    return {
        "source_tokens": n,
        "seconds": round(time.perf_counter() - t, 2),
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def lengths() -> dict:
    from dialsum import replica

    work = Path(tempfile.mkdtemp(prefix="cost-length-"))
    replica.build(
        "kobart",
        work / "hub",
        [],
        layers=2,
        d_model=256,
        tokenizer_path=ROOT.parent / "shared/fixtures/kobart-tokenizer",
    )
    rows = []
    for n in LENGTHS:
        out = subprocess.run(
            [sys.executable, __file__, "_length", str(n), str(work / "hub")], capture_output=True, text=True, check=True
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return {"length": rows}


DVC_YAML = """stages:
  prepare:
    cmd: python -c "import pathlib; pathlib.Path('processed').mkdir(exist_ok=True); pathlib.Path('processed/d.txt').write_text('x')"
    deps: [src]
    outs: [processed]
  train:
    matrix:
      model: ${models}
      fold: ${folds}
    cmd: python -c "import os, pathlib; p = pathlib.Path('models/${item.model}/${item.fold}'); p.mkdir(parents=True, exist_ok=True); (p / 'w.bin').write_bytes(os.urandom(2 << 20))"
    deps: [SRC_DEPS, processed]
    outs:
      - models/${item.model}/${item.fold}
  predict:
    matrix:
      model: ${models}
      fold: ${folds}
    cmd: python -c "import pathlib; p = pathlib.Path('predictions/${item.model}/${item.fold}'); p.mkdir(parents=True, exist_ok=True); (p / 'dev.csv').write_text('${item.model},${item.fold}')"
    deps:
      - SRC_DEPS_BLOCK
      - models/${item.model}/${item.fold}
    outs:
      - predictions/${item.model}/${item.fold}
    metrics:
      - metrics/${item.model}-${item.fold}.json:
          cache: false
  ensemble:
    cmd: python -c "import pathlib; pathlib.Path('ensemble.json').write_text('{}')"
    deps: [metrics]
    outs: [ensemble.json]
"""


def dvc_repo(items: int, cache_type: str | None = None) -> Path:
    models = ["m%d" % i for i in range(max(1, items // 5) if items >= 5 else 1)]
    folds = list(range(items // len(models)))
    d = Path(tempfile.mkdtemp(prefix=f"cost-dvc-{items}-"))
    (d / "src").mkdir()
    for i in range(12):
        (d / "src" / f"mod{i}.py").write_text(f"X = {i}\n" * 200)
    (d / "params.yaml").write_text(json.dumps({"models": models, "folds": folds}))
    deps = ", ".join(f"src/mod{i}.py" for i in range(12))
    block = "\n      - ".join(f"src/mod{i}.py" for i in range(12))
    yaml = (
        DVC_YAML.replace("SRC_DEPS_BLOCK", block)
        .replace("SRC_DEPS", deps)
        .replace(
            "cmd: python -c \"import pathlib; p = pathlib.Path('predictions",
            "cmd: python -c \"import pathlib, json; pathlib.Path('metrics').mkdir(exist_ok=True); "
            "pathlib.Path('metrics/${item.model}-${item.fold}.json').write_text('{}'); p = pathlib.Path('predictions",
        )
    )
    (d / "dvc.yaml").write_text(yaml)
    run = dict(cwd=d, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], **run)
    if cache_type:
        subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type", cache_type], **run)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], **run)
    return d


def timed(cmd: list[str], cwd: Path, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 2)


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def dvc() -> dict:
    out = {"noop": [], "cache": []}
    dvc_cmd = [sys.executable, "-m", "dvc"]
    for items in (4, 12, 30):
        d = dvc_repo(items)
        out["noop"].append(
            {
                "items": items,
                "dvc_repro_s": timed(dvc_cmd + ["repro"], d),
                "dvc_status_s": timed(dvc_cmd + ["status"], d),
            }
        )
        print(json.dumps(out["noop"][-1]), file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
    for cache_type in ("copy", "reflink,copy", "hardlink", "symlink"):
        d = dvc_repo(12, cache_type)
        outputs = sum(du(d / p) for p in ("models", "predictions", "processed", "ensemble.json"))
        # du counts a hard-linked file once per tree it is seen in first: measure the cache alone, then both
        out["cache"].append(
            {
                "cache_type": cache_type,
                "outputs_MiB": round(outputs / 2**20, 1),
                "cache_MiB": round(du(d / ".dvc" / "cache") / 2**20, 1),
                "workspace_plus_cache_MiB": round(
                    int(
                        subprocess.run(
                            ["du", "-sbc", str(d / "models"), str(d / "predictions"), str(d / ".dvc" / "cache")],
                            capture_output=True,
                            text=True,
                        ).stdout.split()[-2]
                    )
                    / 2**20,
                    1,
                ),
            }
        )
        print(json.dumps(out["cache"][-1]), file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["_length"]:
        print(json.dumps(one_length(int(argv[1]), argv[2])))
        return 0
    what = argv[0] if argv else "length"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(lengths() if what == "length" else dvc()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
