"""deps = code: every dvc.yaml stage depends on exactly the src/dialsum modules its script imports
(transitively, module-level and function-level imports alike), on its own script, and on
src/dialsum/resources (data tables) or src/dialsum/templates (the report's HTML) when one of those modules
reads it.

A missing module dep means stale results (DVC doesn't re-run the stage when that code changes); an extra one
means needless re-runs. The closure is computed from the current sources on every run, so adding an import in
src/ or stages/ without updating dvc.yaml fails here."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "dialsum"
PKG_DEP = "src/dialsum"
DATA_DIRS = ("resources", "templates")  # package folders of non-Python files that modules read
# a path component in a string literal: "resources", "resources/x.tsv", "./templates/..."
DATA_RE = {d: re.compile(rf"(^|/){d}(/|$)") for d in DATA_DIRS}


def _modules() -> dict[str, Path]:
    """Dotted name relative to the package ('' for __init__, 'a', 'sub.b') -> file."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_trivial(path: Path) -> bool:
    """An __init__.py with nothing but (optionally) a docstring: importing the package runs no code of ours."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _package_of(name: str, modules: dict[str, Path]) -> str:
    """The package a module lives in ('' for top-level modules), for resolving relative imports."""
    path = modules[name]
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(tree: ast.AST, current: str | None, modules: dict[str, Path]) -> set[str]:
    """dialsum modules (dotted, relative to the package) imported anywhere in `tree`, functions included.
    `current` is the module's own name inside dialsum (None for a stage script: no relative imports)."""
    found: set[str] = set()

    def add(dotted: str) -> None:
        # importing dialsum.a.b imports dialsum, dialsum.a and dialsum.a.b
        parts = dotted.split(".") if dotted else []
        for i in range(len(parts) + 1):
            name = ".".join(parts[:i])
            if name in modules:
                found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "dialsum" or alias.name.startswith("dialsum."):
                    add(alias.name[len("dialsum.") :] if "." in alias.name else "")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import a / from .a import b / from ..x import y
                if current is None:
                    continue
                package = _package_of(current, modules)
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "dialsum" or (node.module or "").startswith("dialsum."):
                target = node.module[len("dialsum.") :] if "." in node.module else ""
            else:
                continue
            add(target)
            for alias in node.names:  # from pkg import a, b: a and b may be submodules
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in modules:
                    found.add(sub)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("dialsum.")
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
        ):
            add(node.args[0].value[len("dialsum.") :])
    return found


def _data_dirs(tree: ast.AST) -> set[str]:
    """A string literal (docstrings aside) naming a DATA_DIRS folder: Path(__file__).parent / "resources",
    files("dialsum") / "resources", files("dialsum").joinpath("resources/x.tsv")."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return {
        d
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
        for d, pattern in DATA_RE.items()
        if pattern.search(n.value)
    }


def closure(script: Path) -> tuple[set[str], set[str]]:
    """(repo-relative paths of the src/dialsum files `script` runs, the DATA_DIRS deps any of them reads)."""
    modules = _modules()
    trees: dict[str, ast.AST] = {}

    def tree(name: str) -> ast.AST:
        if name not in trees:
            trees[name] = ast.parse(modules[name].read_text(encoding="utf-8"), filename=str(modules[name]))
        return trees[name]

    todo = list(_imports(ast.parse(script.read_text(encoding="utf-8")), None, modules))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imports(tree(name), name, modules) - seen)
    # an empty package __init__ runs nothing: it is not code the stage depends on
    seen = {n for n in seen if not (modules[n].name == "__init__.py" and _is_trivial(modules[n]))}
    files = {modules[n].relative_to(ROOT).as_posix() for n in seen}
    return files, {f"{PKG_DEP}/{d}" for n in seen for d in _data_dirs(tree(n))}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _script(cmd: str) -> str | None:
    """stages/X.py from `python stages/X.py ...` (any single command naming a stages/*.py script)."""
    for word in shlex.split(cmd if isinstance(cmd, str) else " ".join(cmd)):
        if re.fullmatch(r"stages/[\w.-]+\.py", word):
            return word
    return None


def _norm(dep: str) -> str:
    return dep.strip().rstrip("/").removeprefix("./")


def test_every_script_has_a_stage():
    scripts = {_script(s["cmd"]) for s in _stages().values()}
    orphans = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "stages").glob("*.py"))
    orphans = [s for s in orphans if s not in scripts]
    assert not orphans, f"stage scripts no dvc.yaml stage runs: {orphans}"


def test_closure_sees_function_level_and_relative_imports():
    # the mechanics this test relies on, on modules whose imports are known not to be module-level
    tune, _ = closure(ROOT / "stages" / "tune.py")
    assert f"{PKG_DEP}/generation.py" in tune  # training.py: `from . import generation`
    assert f"{PKG_DEP}/io.py" in tune  # tuning.py: `from .io import atomic_dir` inside a function


def test_stage_deps_match_code():
    problems = []
    for stage, spec in _stages().items():
        script = _script(spec["cmd"])
        if script is None:
            problems.append(f"{stage}: cmd {spec['cmd']!r} runs no stages/*.py script")
            continue
        deps = {_norm(d) for d in spec.get("deps", [])}
        if script not in deps:
            problems.append(f"{stage}: does not list its own script {script}")
        needed, data_dirs = closure(ROOT / script)
        if PKG_DEP in deps:  # the whole package: covers every module and the resources
            continue
        listed = {d for d in deps if d.startswith(f"{PKG_DEP}/") and d.endswith(".py")}
        for m in sorted(needed - listed):
            problems.append(f"{stage}: missing dep {m} (imported by {script}'s closure; results go stale)")
        for m in sorted(listed - needed):
            problems.append(f"{stage}: extra dep {m} (not imported by {script}'s closure; needless re-runs)")
        for d in sorted(data_dirs - deps):
            problems.append(f"{stage}: missing dep {d} (read by a module in {script}'s closure)")
        for d in sorted({f"{PKG_DEP}/{x}" for x in DATA_DIRS} & deps - data_dirs):
            problems.append(f"{stage}: extra dep {d} (no module in {script}'s closure reads it)")
    assert not problems, "dvc.yaml deps drifted from the code:\n  " + "\n  ".join(problems)


def test_no_top_level_plot_inside_a_cached_output():
    """`dvc exp run` (and `exp save`) resolve every top-level `plots:` path through DVC's cache once the stages
    have run; a path inside a cached output whose .dir is not in the local cache (a fresh clone: plots/*.png
    inside the `plots` stage's directory output) fails the experiment with `failed to load directory`.
    Declare such files as `plots:` of the stage that writes them instead."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    cached = set()
    for stage in spec["stages"].values():
        for kind in ("outs", "plots", "metrics"):
            for out in stage.get(kind, []):
                path, props = (out, {}) if isinstance(out, str) else next(iter(out.items()))
                if (props or {}).get("cache", kind != "metrics"):
                    cached.add(_norm(path))
    top = [p if isinstance(p, str) else next(iter(p)) for p in spec.get("plots", [])]
    inside = sorted(f"{p} (in output {o})" for p in map(_norm, top) for o in cached if p.startswith(f"{o}/"))
    assert not inside, f"top-level plots inside cached outputs: {inside}"


def test_committed_lock_matches_committed_code(tmp_path):
    """Committed results = committed code: in a fresh clone of HEAD, `dvc status` may list outputs missing from
    the cache, never a changed dependency or parameter (commit the re-run dvc.lock and metrics/ with every
    change to a stage's code or params)."""
    import json
    import subprocess
    import sys

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    p = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=clone, capture_output=True, text=True, check=True
    )
    stale = []
    for stage, changes in json.loads(p.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict):
                stale += [
                    f"{stage}: {dep}" for dep, what in (change.get("changed deps") or {}).items() if what != "deleted"
                ]
                stale += [f"{stage}: param {k}" for k in (change.get("changed params") or {})]
    assert not stale, "dvc.lock is stale against HEAD's code/params (run dvc repro, commit dvc.lock): " + "; ".join(
        stale[:10]
    )


def test_no_import_circle_in_the_package():
    """No dialsum module imports (at module or function level) one that imports it back, directly or through
    others: each concept builds on the ones below it (params at the bottom, the stages' entry points on top)."""
    modules = _modules()
    # a submodule "importing" its own package (from .sibling import x runs the package's __init__ first) is
    # Python's import machinery, not a dependency: the package is already in sys.modules by then
    graph = {
        n: _imports(ast.parse(p.read_text(encoding="utf-8")), n, modules)
        - {n, ""}
        - {".".join(n.split(".")[:i]) for i in range(1, n.count(".") + 1)}
        for n, p in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return path + [name, dep]
            if dep not in state:
                found = visit(dep, path + [name])
                if found:
                    return found
        state[name] = 2
        return None

    circles = [c for n in sorted(graph) if n not in state for c in [visit(n, [])] if c]
    assert not circles, " -> ".join(circles[0])


def test_dvc_outs_are_the_paths_module():
    """dvc.yaml's outputs are dialsum.paths' (asked for the matrix's template variables), so a stage, the
    ensemble, the report and the CLI read what the stage before them declared."""
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from dialsum import paths

    m, f = "${item.model}", "${item.fold}"
    want = {
        "prepare": {paths.PROCESSED},
        "init": {paths.init_dir(m)},
        "train": {paths.model_dir(m, f), paths.train_metrics(m, f), paths.live_dir(m, f) / "plots/metrics"},
        "decode": {paths.decoding(m), paths.decode_metrics(m)},
        "predict": {paths.prediction_dir(f"{m}/{f}"), paths.predict_metrics(m, f)},
        "average": {paths.prediction_dir(f"{m}/avg"), paths.average_metrics(m)},
        "ensemble": {paths.ENSEMBLE_PREDICTIONS, paths.SUBMISSION, paths.ENSEMBLE_METRICS},
        "report": {paths.REPORT},
        "tune": {
            paths.TUNING / "best_params.yaml",
            paths.TUNING / "trials.csv",
            paths.TUNING / "plots",
            paths.TUNE_METRICS,
        },
        "plots": {paths.PLOTS},
    }
    stages = _stages()
    assert set(stages) == set(want)
    for name, spec in stages.items():
        declared = {
            Path(next(iter(o)) if isinstance(o, dict) else o)
            for key in ("outs", "metrics", "plots")
            for o in spec.get(key) or []
        }
        assert declared == want[name], name


def test_training_stages_never_depend_on_the_test_split():
    """A new test.csv (`-S data.test=...`) re-ran every train stage and reset their checkpoints' signature."""
    from dialsum import paths

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    want = {f"{paths.PROCESSED}/{f}" for f in paths.TRAINING_DATA}
    assert "test.csv" not in paths.TRAINING_DATA
    for name in ("train", "decode", "tune"):
        data = {d for d in stages[name]["deps"] if str(d).startswith("data/")}
        assert data == want, name
    assert "data/processed" in stages["predict"]["deps"]  # predict reads test.csv
    assert "paths.TRAINING_DATA" in (ROOT / "stages/train.py").read_text()  # the run signature hashes the same files
