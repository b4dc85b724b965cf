"""Run a Python script with the Hugging Face Trainer's phases timed: where does a training run's time go?

    python benchmarks/step_timer.py stages/train.py --model minilm2minilm --fold full
    python benchmarks/step_timer.py benchmarks/hf_recipe.py train --workspace . --out /tmp/hf

At exit it prints one JSON line to stderr: calls and seconds of ``Trainer.train`` (the whole loop),
``Trainer.training_step`` (forward + backward of each step), ``Trainer.evaluate`` (the teacher-forced eval
loss, plus the recipe's own generation when ``predict_with_generate``), ``GenerationMixin.generate`` (every
generate call, in evaluation or not), ``Trainer._save_checkpoint`` and ``Trainer._load_best_model``. The
patches only wrap those methods with a timer, so both sides run their own code unchanged (issue 21: dialsum's
train stage against Hugging Face's recipe, side by side).
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import time

import transformers
from transformers.generation.utils import GenerationMixin

stats: dict[str, list] = {}


def _timed(owner, name: str) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            entry = stats.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - start

    setattr(owner, name, wrapper)


for owner, name in [
    (transformers.Trainer, "train"),
    (transformers.Trainer, "training_step"),
    (transformers.Trainer, "evaluate"),
    (transformers.Trainer, "_save_checkpoint"),
    (transformers.Trainer, "_load_best_model"),
    (GenerationMixin, "generate"),
]:
    _timed(owner, name)


@atexit.register
def _report() -> None:
    out = {name: {"calls": n, "seconds": round(s, 2)} for name, (n, s) in stats.items()}
    print(json.dumps({"step_timer": out}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    sys.path.insert(0, ".")
    runpy.run_path(script, run_name="__main__")
