"""init@<model>: tokenizer (trained on the train split for from-scratch models) + initial weights ->
models/<model>/init/. Once per model, so every fold shares one vocabulary."""

from dialsum import data, io, models, paths
from dialsum.tracking import matrix_item, run_stage


def main():
    params, model, _ = matrix_item("init", with_fold=False)
    entry = params.zoo[model]
    train = data.load_processed()["train"]
    texts = list(train["dialogue"]) + list(train["summary"])
    with io.atomic_dir(paths.init_dir(model)) as tmp:
        models.build_init(entry, texts, tmp, params.seed)


if __name__ == "__main__":
    run_stage("init", main)
