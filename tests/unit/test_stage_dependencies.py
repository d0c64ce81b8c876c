"""Each stage depends on the modules its command runs, computed from the imports (issue 22): the
walker on a package written here, and the real package's lists checked against what importing each
stage's module really loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dmlrepro.study.imports import ImportGraph, import_graph
from dmlrepro.study.stages import STAGES, stage_entry, stage_modules

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

FAKE = {
    "__init__.py": "VERSION = 1\n",
    "core.py": """
        import os
        import json as _json
        from . import util
        from fake import VERSION          # a name of the package, not a module
        """,
    "util.py": """
        def later():
            from .sub import deep          # only when called: still a dependency
            return deep
        """,
    "errors.py": "class E(Exception): ...\n",
    "leaf.py": "",
    "unused.py": "import fake.core\n",
    "sub/__init__.py": "from ..errors import E\n",
    "sub/deep.py": """
        import fake.leaf
        from .. import errors, VERSION
        try:
            import numpy
        except ImportError:
            pass
        """,
    "sub/other.py": "from . import deep\n",
    "sub/stale.py": "from ..moved_away import thing\n",
    "sub/inner/__init__.py": "",
    "sub/inner/far.py": "from ...leaf import *\nfrom .. import other\n",
}


def write_package(root: Path, files: dict, name: str = "fake") -> Path:
    for rel, text in files.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / name


def test_the_closure_follows_every_import_and_the_packages_on_the_way(tmp_path):
    graph = ImportGraph(write_package(tmp_path, FAKE))
    # core: `from . import util` (a submodule) -> util; util's function-level `from .sub import deep` ->
    # fake.sub (its __init__ imports errors) and fake.sub.deep -> fake.leaf; `from fake import VERSION`
    # is an attribute (no module); os, json, numpy are not the package's
    assert graph.closure("fake.core") == ["fake", "fake.core", "fake.errors", "fake.leaf", "fake.sub",
                                          "fake.sub.deep", "fake.util"]
    # a module alone brings in the __init__.py above it: fake/__init__ and fake/sub/__init__ (-> errors)
    assert graph.closure("fake.leaf") == ["fake", "fake.leaf"]
    assert graph.closure("fake.sub.other") == ["fake", "fake.errors", "fake.leaf", "fake.sub", "fake.sub.deep",
                                               "fake.sub.other"]
    # three levels up, `import *`, and `from .. import other` from a sub-subpackage
    assert graph.closure("fake.sub.inner.far") == [
        "fake", "fake.errors", "fake.leaf", "fake.sub", "fake.sub.deep", "fake.sub.inner", "fake.sub.inner.far",
        "fake.sub.other"]
    assert [str(p) for p in graph.files(graph.closure("fake.sub.deep"))] == [
        "fake/__init__.py", "fake/errors.py", "fake/leaf.py", "fake/sub/__init__.py", "fake/sub/deep.py"]
    imports = {(i.target, i.line) for i in graph.imports["fake.core"]}
    assert imports == {("fake", 4), ("fake.util", 4)}  # each module once, at its first import
    assert [(i.source, i.target) for i in graph.unresolved] == [("fake.sub.stale", "fake.moved_away")]
    with pytest.raises(KeyError, match="fake.nothing"):
        graph.closure("fake.nothing")


def test_a_package_shadows_a_module_of_the_same_name(tmp_path):
    graph = ImportGraph(write_package(tmp_path, {"__init__.py": "", "x.py": "", "x/__init__.py": "",
                                                 "user.py": "from .x import y\n", "x/y.py": ""}))
    assert graph.modules["fake.x"].path == Path("fake/x/__init__.py")
    assert graph.closure("fake.user") == ["fake", "fake.user", "fake.x", "fake.x.y"]


def test_the_graph_is_parsed_once_and_again_when_a_file_changes(tmp_path):
    package = write_package(tmp_path, FAKE)
    first = import_graph(package)
    assert import_graph(package) is first
    time.sleep(0.01)
    (package / "leaf.py").write_text("from .sub import other\n")
    second = import_graph(package)
    assert second is not first and "fake.sub.other" in second.closure("fake.leaf")


# --- the real package -------------------------------------------------------------------------------

def short(files) -> set[str]:
    return {f.removeprefix("src/dmlrepro/") for f in files}


@pytest.fixture(scope="module")
def lists() -> dict[str, set[str]]:
    """Each stage's package files (the params schema, also listed where settings are read, aside)."""
    return {stage: short([f for f in stage_modules(stage, REPO) if f.startswith("src/")]) for stage in STAGES}


def test_stages_that_read_settings_depend_on_the_schema_whose_defaults_fill_them():
    reads = {s for s in STAGES if "src/dmlrepro/study/settings.py" in stage_modules(s, REPO)}
    assert {"train", "evaluate"} <= reads
    for stage in STAGES:
        assert ("workflow/schemas/params.schema.json" in stage_modules(stage, REPO)) == (stage in reads), stage


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """What importing each stage's module really loads (a subprocess, from src/), as files: an
    independent check of the static walk (module-level imports; the walk adds the lazy ones)."""
    script = textwrap.dedent("""
        import importlib, json, sys
        out = {}
        for stage, entry in json.loads(sys.argv[1]).items():
            for name in [m for m in sys.modules if m == "dmlrepro" or m.startswith("dmlrepro.")]:
                del sys.modules[name]
            importlib.import_module(entry)
            out[stage] = sorted(m.__file__ for n, m in sys.modules.items()
                                if (n == "dmlrepro" or n.startswith("dmlrepro.")) and getattr(m, "__file__", None))
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps({s: stage_entry(s) for s in STAGES})],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    files = json.loads(result.stdout.splitlines()[-1])
    return {stage: {str(Path(f).resolve().relative_to(SRC / "dmlrepro")) for f in found}
            for stage, found in files.items()}


def test_every_stage_lists_its_command_its_module_and_the_packages_above(lists):
    for stage, files in lists.items():
        assert {"cli.py", "__init__.py", "stages/__init__.py", f"stages/{stage}.py"} <= files, stage
        assert all((SRC / "dmlrepro" / f).is_file() for f in files), stage
        assert stage_modules(stage, REPO) == sorted(stage_modules(stage, REPO))


def test_the_lists_hold_everything_importing_the_stage_module_loads(lists, loaded):
    for stage in STAGES:
        missing = loaded[stage] - lists[stage]
        assert not missing, f"{stage}: imported but not a dependency: {sorted(missing)}"


def test_prepare_depends_on_no_method_and_on_the_hashing_it_deduplicates_with(lists, loaded):
    assert not {f for f in lists["prepare"] if f.startswith("methods/")}, sorted(lists["prepare"])
    assert not {f for f in loaded["prepare"] if f.startswith("methods/")}
    assert "hashing.py" in lists["prepare"] and "hashing.py" in loaded["prepare"]


def test_table_and_figure_depend_on_the_evaluation_sets_and_the_manifest_they_import(lists, loaded):
    for stage in ("table", "figure"):
        for module in ("evaluation/sets.py", "data/manifest.py"):
            if module in loaded[stage]:
                assert module in lists[stage], (stage, module)


def test_the_real_package_has_no_stale_import():
    graph = import_graph(SRC / "dmlrepro")
    assert not graph.unresolved, "\n".join(f"{i.source}:{i.line} imports {i.target}, which is no module"
                                           for i in graph.unresolved)


def test_dvc_yaml_lists_the_same_modules_as_the_snakefile(tmp_path, monkeypatch):
    from studyutil import study_params, write_paper

    from dmlrepro.study import load_study
    from dmlrepro.study.dvc_yaml import build_dvc_yaml

    params = study_params(tmp_path)
    write_paper(params, """
tables:
  t:
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows: [{label: Base, method: triplet, published: {r1: 50.0}}, {label: Other, method: contrastive, published: {r1: 52.0}}]
    claims: [{base: Base, method: Other}]
sweeps:
  s:
    base: {table: t, row: Base}
    parameter: train.lr
    values: [1.0e-4, 3.0e-4]
    datasets: [glyphs]
    metric: recall@1
""")
    params["tables"], params["figures"] = ["demo/t"], ["demo/s"]
    monkeypatch.chdir(REPO)  # the Snakefile's and `dmlrepro dvc-yaml`'s working folder
    stages = build_dvc_yaml(load_study(params))["stages"]
    kinds = {name.split("-")[0] for name in stages}
    assert kinds == set(STAGES)
    for name, stage in stages.items():
        modules = stage_modules(name.split("-")[0])
        assert [d for d in stage["deps"] if d in modules] == modules, name
