import copy
from pathlib import Path

import pytest
import yaml

from dialsum.params import ParamsError, load, override, validate


@pytest.fixture
def params(root):
    return yaml.safe_load((root / "params.yaml").read_text())


def test_repo_params_are_valid(root):
    p = load(root / "params.yaml")
    assert len(p.models) * len(p.cv.folds) >= 4
    assert any(p.zoo[m].family == "seq2seq" for m in p.models)
    assert any(p.zoo[m].family == "causal" for m in p.models)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda p: p["training"].update(epoch=3), "training.epoch"),
        (lambda p: p["training"].update(epochs="five"), "training.epochs"),
        (lambda p: p["training"].update(epochs=-1), "training.epochs"),
        (lambda p: p["cv"].update(folds=[0, 7]), "cv.folds[1]"),
        (lambda p: p.update(models=["tiny-bart", "gpt-17"]), "models[1]"),
        (lambda p: p["ensemble"].update(strategy="magic"), "ensemble.strategy"),
        (lambda p: p["zoo"]["tiny-bart"].update(family="rnn"), "zoo.tiny-bart.family"),
        (lambda p: p.update(unknown_section=1), "unknown_section"),
        (lambda p: p["data"].update(on_invalid="ignore"), "data.on_invalid"),
        (lambda p: p["zoo"]["tiny-llama"].update(freeze_encoder=True), "zoo.tiny-llama.freeze_encoder"),
        (lambda p: p["zoo"]["tiny-bart"].update(training={"epoch": 3}), "zoo.tiny-bart.training.epoch"),
        (lambda p: p["zoo"]["tiny-bart"].update(training={"epochs": "many"}), "zoo.tiny-bart.training.epochs"),
        # DVC cannot find zoo.solar-10.7b (it splits at the dot) and -S cannot parse it: renamed solar-10_7b
        (lambda p: p["zoo"].update({"solar-10.7b": p["zoo"].pop("solar-10_7b")}), "now solar-10_7b"),
        (lambda p: p["zoo"].update({"7b": p["zoo"]["tiny-bart"]}), "zoo.7b is not a zoo name"),
        (lambda p: p["ensemble"].update(weights={"tiny-brat": 5.0}), "ensemble.weights.tiny-brat"),  # a typo
        (lambda p: p["ensemble"].update(weights={"tiny-bart/0": -1.0}), "ensemble.weights.tiny-bart/0"),
        (lambda p: p["ensemble"].update(weights={"tiny-bart": float("inf")}), "ensemble.weights.tiny-bart"),
        (lambda p: p["ensemble"].update(weights={"tiny-bart": 0.0, "tiny-llama": 0}), "ensemble.weights are all 0"),
        (lambda p: p["generation"].update(do_sample=True, temperature=0.0), "generation.temperature"),
        (lambda p: p["generation"].update(repetition_penalty=0.0), "generation.repetition_penalty"),
        (lambda p: p["cv"].update(seed=2**33), "cv.seed"),  # numpy refused it in prepare, as a traceback
        (lambda p: p["tune"].update(n_jobs=0), "tune.n_jobs"),
        (lambda p: p.update(models=["tiny-bart", "tiny-bart"]), "models[1] = 'tiny-bart' is listed twice"),
        (lambda p: p["cv"].update(folds=[0, 1, 0]), "cv.folds[2] = 0 is listed twice"),
        (lambda p: p["data"]["augmentation"].update(strategies=["reorder"], factor=0), "data.augmentation.factor"),
    ],
)
def test_bad_params_name_the_key(params, edit, needle):
    bad = copy.deepcopy(params)
    edit(bad)
    with pytest.raises(ParamsError) as e:
        validate(bad)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_weights_by_model_fold_and_average_are_accepted(params):
    params["ensemble"]["weights"] = {"tiny-bart": 2.0, "tiny-llama/1": 0.0, "tiny-bart/avg": 1}
    validate(params)


def test_zoo_training_overrides_only_its_model(params):
    from dialsum.params import for_model
    from dialsum.tuning import settings

    params["zoo"]["tiny-bart"]["training"] = {"epochs": 20, "batch_size": 8}
    validate(params)
    bart, llama = for_model(params, "tiny-bart").training, for_model(params, "tiny-llama").training
    assert (bart.epochs, bart.batch_size) == (20, 8)
    assert bart.eval_every_epochs == params["training"]["eval_every_epochs"]  # the rest is inherited
    assert (
        llama.model_dump(exclude_unset=True) == params["training"] and params["training"]["epochs"] != 20
    )  # the input is not mutated
    params["tune"] = {"model": "tiny-bart"}
    assert settings(params).training.epochs == 20  # a study of tiny-bart trains as its stage does


def test_full_fold_is_allowed(params):
    params["cv"]["folds"] = ["full", 0]
    validate(params)


def test_unparsable_yaml(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load(f)


def test_best_by_picks_the_checkpoint_metric(root, tmp_path):
    from dialsum.training import Run, _training_args

    from dialsum.params import override

    p = load(root / "params.yaml")
    run = Run(p.models[0], 0, tmp_path, None, tmp_path)
    by_rouge = _training_args(p, run, n_train=40)
    assert by_rouge.metric_for_best_model == "rouge_sum" and by_rouge.greater_is_better
    by_loss = _training_args(override(p, {"training.best_by": "loss"}), run, n_train=40)
    assert by_loss.metric_for_best_model in ("loss", "eval_loss") and not by_loss.greater_is_better
    with pytest.raises(ParamsError, match="training.best_by"):
        override(p, {"training.best_by": "bleu"})


def test_resume_skips_a_checkpoint_killed_mid_save(tmp_path):
    """A kill during a checkpoint save leaves a folder without trainer_state.json (written last); resuming
    from it fails in the Trainer, so the newest complete checkpoint is used instead."""
    from dialsum.training import find_resume

    (tmp_path / "signature").write_text("sig")
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"")  # weights begun, state never written
    assert find_resume(tmp_path, "sig", "auto") == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    assert find_resume(tmp_path, "sig", "auto") == str(tmp_path / "checkpoint-4")
    assert find_resume(tmp_path, "other", "auto") is None  # another run's checkpoints are never resumed


def test_checkpoints_are_set_aside_never_deleted_and_come_back(tmp_path):
    """Switching configurations (or resume: never, or a resume path elsewhere) moves the folder's checkpoints
    aside; nothing is ever deleted or overwritten, and ``auto`` resumes a set of its own signature set aside
    earlier (before session 27 a second switch deleted it)."""
    from dialsum.training import prepare_checkpoints

    ckpt = tmp_path / "ckpt" / "0"

    def save(step):  # what the Trainer leaves: trainer_state.json written last
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')

    def sets():
        return {d.name: sorted(c.name for c in d.glob("checkpoint-*")) for d in sorted(ckpt.parent.iterdir())}

    assert prepare_checkpoints(ckpt, "A", "auto") is None
    save(5000)  # A killed at step 5000
    assert prepare_checkpoints(ckpt, "B", "auto") is None
    save(10)  # B killed at step 10
    assert sets() == {"0": ["checkpoint-10"], "0.stale-A": ["checkpoint-5000"]}
    assert prepare_checkpoints(ckpt, "A", "auto") == str(ckpt / "checkpoint-5000")  # A back, resumed
    assert sets() == {"0": ["checkpoint-5000"], "0.stale-B": ["checkpoint-10"]}
    assert (ckpt / "signature").read_text() == "A"
    assert prepare_checkpoints(ckpt, "A", "never") is None  # start afresh: A's 5000 steps kept aside
    save(20)
    assert prepare_checkpoints(ckpt, "A", "never") is None  # again: a second set of A, not over the first
    assert sets() == {
        "0": [],
        "0.stale-A": ["checkpoint-5000"],
        "0.stale-A-2": ["checkpoint-20"],
        "0.stale-B": ["checkpoint-10"],
    }
    save(30)
    with pytest.raises(FileNotFoundError, match="training.resume: checkpoint .*nowhere not found"):
        prepare_checkpoints(ckpt, "A", str(tmp_path / "nowhere"))
    assert sets()["0"] == ["checkpoint-30"]  # a wrong path moves nothing
    elsewhere = str(ckpt.parent / "0.stale-B" / "checkpoint-10")
    assert prepare_checkpoints(ckpt, "A", elsewhere) == elsewhere  # a path outside: the folder's own set aside
    assert sets()["0"] == [] and sets()["0.stale-A-3"] == ["checkpoint-30"]
    save(40)
    inside = str(ckpt / "checkpoint-40")
    assert prepare_checkpoints(ckpt, "A", inside) == inside and sets()["0"] == ["checkpoint-40"]  # its own lineage
    assert prepare_checkpoints(ckpt, "A", "auto") == inside  # auto, same signature: resumed in place
    assert prepare_checkpoints(ckpt, "B", "auto") == str(ckpt / "checkpoint-10")  # the newest set of B
    assert sets()["0.stale-A-4"] == ["checkpoint-40"]


def test_a_symlinked_checkpoint_folder_stays_a_link_to_where_the_sets_go(tmp_path):
    """``checkpoints/<model>/<fold>`` as a link to a bigger disk: a set moved aside goes beside the link's target
    (before, the link itself was renamed and the run wrote to a new plain folder on the small disk)."""
    from dialsum.training import prepare_checkpoints, remove_checkpoints

    big = tmp_path / "big" / "m0"
    link = tmp_path / "checkpoints" / "m" / "0"
    link.parent.mkdir(parents=True)
    link.symlink_to(big, target_is_directory=True)  # dangling until the first run makes the target
    assert prepare_checkpoints(link, "A", "auto") is None and big.is_dir()
    (link / "checkpoint-7").mkdir()
    (link / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7}')
    assert prepare_checkpoints(link, "B", "auto") is None
    assert link.is_symlink() and link.resolve() == big.resolve() and (big / "signature").read_text() == "B"
    assert sorted(p.name for p in big.parent.iterdir()) == ["m0", "m0.stale-A"]
    assert prepare_checkpoints(link, "A", "auto") == str(link / "checkpoint-7")  # A comes back through the link
    assert link.is_symlink() and (big / "checkpoint-7").is_dir()
    remove_checkpoints(link)  # the run finished: its checkpoints go (before, rmtree refused the link, silently)
    assert link.is_symlink() and not list(big.parent.iterdir())  # B had no checkpoint to set aside
    assert prepare_checkpoints(link, "A", "auto") is None and big.is_dir()  # the next run starts afresh


def test_a_run_resumes_after_changes_that_do_not_change_what_it_learns(root):
    """An evaluation OOM fixed by a smaller eval_batch_size, a full disk by save_total_limit, an explicit
    resume path: the checkpoints stay resumable (before session 27 each made a new signature)."""
    from dialsum.training import run_signature

    p = load(root / "params.yaml")

    def sig(changes):
        return run_signature(override(p, changes), "tiny-bart", 0, [])

    base = sig({})
    assert sig({"training.eval_batch_size": 8, "training.save_total_limit": 5, "training.resume": "never"}) == base
    assert sig({"zoo.tiny-bart.training": {"eval_batch_size": 4}}) == base
    assert sig({"training.learning_rate": 1e-3}) != base
    assert sig({"zoo.tiny-bart.training": {"epochs": 3}}) != base


def test_schema_file_matches_the_typed_config(root, tmp_path):
    """params.schema.json (what params.yaml's first line points editors at) is what `dialsum schema` writes
    from the typed config, and names every key that params.yaml sets."""
    import json

    from dialsum.cli import main
    from dialsum.params import schema

    assert (root / "params.schema.json").read_text(encoding="utf-8") == schema()
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text(encoding="utf-8") == schema()
    s = json.loads(schema())
    assert s["additionalProperties"] is False

    def props(node):
        node = s["$defs"][node["$ref"].split("/")[-1]] if "$ref" in node else node
        for alt in node.get("anyOf", []):
            if "$ref" in alt or alt.get("type") == "object":
                return props(alt)
        if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
            return props(node["additionalProperties"])
        return node.get("properties", {})

    def walk(value, node, key):
        known = props(node)
        for k, v in value.items():
            assert k in known or not known, f"{key}.{k} is not in the schema"
            if isinstance(v, dict) and k in known and k != "search_space":
                walk(v, known[k], f"{key}.{k}")

    raw = yaml.safe_load((root / "params.yaml").read_text())
    for name, entry in raw["zoo"].items():
        walk(entry, s["properties"]["zoo"], f"zoo.{name}")
    walk({k: v for k, v in raw.items() if k != "zoo"}, s, "")
    assert (root / "params.yaml").read_text().startswith("# yaml-language-server: $schema=params.schema.json")


def test_defaults_live_in_the_typed_config():
    """A key left out of params.yaml takes the typed config's default in every module that reads it."""
    from dialsum import generation, report, tuning
    from dialsum.metrics import Scorer
    from dialsum.models import lora_settings
    from dialsum.params import FALLBACK_NEW_TOKENS, Generation, Lora, Metrics, Report, Tune, new_tokens, typed

    minimal = {
        "models": ["m"],
        "zoo": {"m": {"family": "seq2seq", "pretrained": "x", "max_source_len": 64, "max_target_len": 16}},
    }
    p = typed(minimal)
    assert p.generation == Generation() and p.tune == Tune() and p.report == Report()
    kw = generation.generation_kwargs({})
    assert (kw["num_beams"], kw["min_new_tokens"], kw["max_new_tokens"]) == (
        Generation().num_beams,
        Generation().min_new_tokens,
        FALLBACK_NEW_TOKENS,  # no entry: max_new_tokens is null by default
    )
    assert generation.candidate_settings({}).k == 1
    # by default each model writes up to what it was trained to: its max_target_len + 1, not a global cap
    assert generation.generation_kwargs({}, 128)["max_new_tokens"] == new_tokens({}, 128) == 129
    assert generation.generation_kwargs({"max_new_tokens": 40}, 128)["max_new_tokens"] == 40
    assert report._limits(p, Path("/nonexistent"), "m", ["d1", "d2"]) == [17, 17]  # no decoding choice there
    s = Scorer.from_params(minimal)
    assert (s.tokenizer.mode, s.multi_ref, s.remove_tokens) == (
        Metrics().tokenize,
        Metrics().multi_ref,
        Metrics().remove_tokens,
    )
    assert report.settings_of(minimal) == Report()
    filled = tuning.settings({**minimal, "tune": {"model": "m"}}).tune
    assert filled.model_dump() == {**Tune().model_dump(), "model": "m"}
    assert lora_settings({**minimal["zoo"]["m"], "lora": {"r": 4}}) == {**Lora().model_dump(), "r": 4}
    with pytest.raises(ParamsError, match=r"generation\.num_beams"):
        generation.generation_kwargs({"num_beams": 0})


def test_numbers_keep_their_written_type(root):
    """An integer written in params.yaml stays an integer (hashes of sections, e.g. the tune study's name,
    are those of the file), and booleans or numeric strings are not numbers."""
    from dialsum.params import typed

    raw = yaml.safe_load((root / "params.yaml").read_text())
    import json

    dumped = typed(raw).model_dump(exclude_unset=True)
    assert json.dumps(dumped, sort_keys=True) == json.dumps(raw, sort_keys=True)
    for bad in (True, "1e-3"):
        p = copy.deepcopy(raw)
        p["training"]["learning_rate"] = bad
        with pytest.raises(ParamsError, match="training.learning_rate"):
            validate(p)


def test_training_keys_set_for_an_experiment_reach_every_default_model(params):
    """`dvc exp run -S training.epochs=5` on the default run: a zoo entry of the default models that set its own
    `training.epochs` would win over it without a word (session 16's tiny-bart did)."""
    from dialsum.params import for_model, override

    changed = override(
        validate(params), {"training.epochs": 5, "training.batch_size": 4, "training.eval_every_epochs": 1}
    )
    for m in changed.models:
        t = for_model(changed, m).training
        assert (t.epochs, t.batch_size, t.eval_every_epochs) == (5, 4, 1), m
