"""Train one model x fold with the project's training.train under params overrides (and config attributes
patched onto scratch_config's), then print its source dependence and distinct greedy summaries: the
experiments of docs/source-dependence.md. Run from the repository root after `dvc repro prepare`:

    python benchmarks/recipe_probe.py '{"training.epochs": 24}' '{"dropout": 0.0}' 0
"""

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from dialsum import data, generation, models, params as P, training
from dialsum.params import Generation
from dialsum.sequences import build_features

sys.path.insert(0, str(Path(__file__).parent))
from source_dependence import derangement, mean_loss  # noqa: E402


def main():
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    over = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    cfg_patch = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    fold = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    model_name = over.pop("_model", "tiny-bart")
    orig = models.scratch_config

    def patched(entry, tok):
        c = orig(entry, tok)
        for k, v in cfg_patch.items():
            setattr(c, k, v)
        return c

    models.scratch_config = patched
    params = P.for_model(P.override(P.load("params.yaml"), over), model_name)
    d = data.load_processed("data/processed")
    tr, va = data.split_fold(d["train"], d["dev"], fold, d["augmented"])
    tmp = Path(tempfile.mkdtemp())
    entry = params.zoo[model_name]
    models.build_init(entry, list(d["train"]["dialogue"]) + list(d["train"]["summary"]), tmp / "init", params.seed)
    t0 = time.time()
    run = training.Run(model_name, fold, tmp / "init", tmp / "out", tmp / "ck", None, "x")
    m = training.train(params, run, tr, va, track=False)
    dt = time.time() - t0
    model, tok, fam = models.load_for_inference(tmp / "out")
    own, _ = build_features(va, tok, entry, model.config)
    shuffled = va.assign(dialogue=va["dialogue"].iloc[derangement(len(va))].tolist())
    oth, _ = build_features(shuffled, tok, entry, model.config)
    lo, lx = mean_loss(model, own), mean_loss(model, oth)
    gen = Generation(num_beams=1, max_new_tokens=entry.max_target_len + 1)
    s = generation.Summarizer(model, tok, fam, gen, entry.max_source_len, entry.prompt, 64)
    tok.padding_side = "left"
    texts, _ = s(list(va["dialogue"]), desc="generate", progress=False)
    # and as predict writes them (params.generation: beam search by default)
    beam = generation.Summarizer(
        model, tok, fam, params.generation, entry.max_source_len, entry.prompt, 64, entry.max_target_len
    )
    beam_texts, _ = beam(list(va["dialogue"]), desc="generate", progress=False)
    print(
        f"RESULT {sys.argv[1:]} own {lo:.3f} other {lx:.3f} diff {lx - lo:+.3f} distinct {len(set(texts))}/{len(va)} "
        f"(predict's generation {len(set(beam_texts))}/{len(va)}) "
        f"rouge_sum {m.get('rouge_sum')} steps {m['steps']} best {m['best_step']} train {dt:.0f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
