"""A run is its resolved configuration; paper declarations expand into runs, resolved once.

Expected values come from the declarations written here (which layer sets which key), from
properties (what may and may not change a run's identity) and from counting by hand."""
import copy
import re

import pytest

from dmlrepro.errors import DmlReproError
from dmlrepro.study import load_study
from dmlrepro.study.runs import apply_overrides, config_hash, flatten, resolve_run, semantic, set_dotted
from studyutil import study_params, write_paper

HASHED = re.compile(r"^(?P<method>[a-z0-9_]+)-(?P<hash>[0-9a-f]{8})$")
ONE_COLUMN = "    columns: [{key: r1, dataset: glyphs, metric: recall@1}]\n"


@pytest.fixture
def params(tmp_path):
    return study_params(tmp_path)


def _error(params) -> str:
    with pytest.raises(DmlReproError) as info:
        load_study(params)
    return str(info.value)


def _run(params, method="triplet", seed=0, dataset="glyphs", **overrides):
    return resolve_run(params, dataset, method, seed, [("test", overrides)] if overrides else [])


# ---------------------------------------------------------------------------------------------
# Resolution order: params defaults < preset < row overrides < sweep value

ORDER = """
presets:
  p: {train.lr: 0.001, train.embedding_dim: 64, train.epochs: 5, method.loss_args.margin: 0.3}
tables:
  t:
    seeds: [0]
""" + ONE_COLUMN + """    rows:
      - {label: R, method: triplet, preset: p,
         overrides: {train.embedding_dim: 32, train.iterations_per_epoch: 7, method: {loss_args: {margin: 0.4}}}}
sweeps:
  s:
    base: {table: t, row: R}
    parameter: train.iterations_per_epoch
    values: [11]
    datasets: [glyphs]
    metric: recall@1
    seeds: [0]
"""


def test_resolution_order_defaults_preset_overrides_sweep(params):
    write_paper(params, ORDER)
    study = load_study(params)
    (row_run,) = study.table("demo/t").rows[0].runs["glyphs"]
    (point,) = study.sweep("demo/s").points
    (sweep_run,) = point.runs
    train = row_run.config["train"]
    assert train["lr"] == 0.001  # preset
    assert train["epochs"] == 5  # preset
    assert train["embedding_dim"] == 32  # row override beats preset
    assert train["iterations_per_epoch"] == 7  # row override
    assert train["batch_size"] == params["train"]["batch_size"] == 16  # params default
    assert train["weight_decay"] == params["train"]["weight_decay"]
    assert row_run.config["method"] == {"name": "triplet", "loss": "triplet", "loss_args": {"margin": 0.4},
                                        "miner": "triplet_margin",
                                        "miner_args": {"margin": 0.1, "type_of_triplets": "semihard"}}
    assert sweep_run.config["train"]["iterations_per_epoch"] == 11  # sweep value beats row override
    assert {k: v for k, v in sweep_run.config["train"].items() if k != "iterations_per_epoch"} == \
        {k: v for k, v in train.items() if k != "iterations_per_epoch"}
    assert sweep_run.id != row_run.id and sweep_run.hash != row_run.hash
    assert study.presets_of[row_run.id] == {("demo", "presets.p")} == study.presets_of[sweep_run.id]


def test_overrides_leave_params_untouched(params):
    before = copy.deepcopy(params)
    write_paper(params, ORDER)
    load_study(params)
    assert params == before


# ---------------------------------------------------------------------------------------------
# Identity: what counts in the hash, the run id and the features path

NON_SEMANTIC_CHANGES = [
    ("train", "threads", 8), ("extract", "threads", 7), ("extract", "batch_size", 3),
    ("evaluation", "threads", 5), ("evaluation", "test_every_epoch", True),
]


@pytest.mark.parametrize("section,key,value", NON_SEMANTIC_CHANGES)
def test_machine_settings_never_change_identity(params, section, key, value):
    base = _run(params)
    other = copy.deepcopy(params)
    other[section][key] = value
    moved = _run(other)
    assert (moved.hash, moved.id, moved.name) == (base.hash, base.id, base.name)
    assert moved.features.id == base.features.id and moved.features.path(other) == base.features.path(params)
    assert moved.features.hash == base.features.hash
    # the same settings given as a row's override keep the plain run too
    if section != "evaluation" or key == "threads":
        row = _run(params, **{f"{section}.{key}": value})
        assert (row.hash, row.id, row.features.id) == (base.hash, base.id, base.features.id)


def test_paths_and_device_never_change_identity(params, tmp_path):
    base = _run(params)
    other = copy.deepcopy(params)
    other["paths"] = {k: str(tmp_path / "elsewhere" / k) for k in params["paths"]}
    other["device"] = "cuda" if params["device"] != "cuda" else "cpu"
    other["mlflow"]["tracking_uri"] = "sqlite:///other.db"
    moved = _run(other)
    assert (moved.hash, moved.id, moved.features.id, moved.features.name) == \
        (base.hash, base.id, base.features.id, base.features.name)
    assert moved.dir(other) == tmp_path / "elsewhere" / "runs" / "glyphs/efficientnet_lite0/triplet/seed0"
    assert moved.features.path(other) == tmp_path / "elsewhere" / "features" / "glyphs" / "efficientnet_lite0.npz"


def test_weights_count_by_file_name_only(params):
    a, b, c = (copy.deepcopy(params) for _ in range(3))
    a["backbone"]["weights"] = "/models/one/lite0.pth"
    b["backbone"]["weights"] = "relative/two/lite0.pth"
    c["backbone"]["weights"] = "/models/one/other.pth"
    ra, rb, rc = _run(a), _run(b), _run(c)
    assert (ra.hash, ra.id, ra.features.id, ra.features.hash) == (rb.hash, rb.id, rb.features.id, rb.features.hash)
    assert ra.features.path(a) == rb.features.path(b)
    assert rc.hash != ra.hash and ra.hash != _run(params).hash
    # as an override: the folder does not matter either, the file name does
    oa = _run(params, **{"backbone.weights": "/x/lite0.pth"})
    ob = _run(params, **{"backbone.weights": "/y/z/lite0.pth"})
    oc = _run(params, **{"backbone.weights": "/x/other.pth"})
    assert (oa.id, oa.hash, oa.features.id) == (ob.id, ob.hash, ob.features.id)
    assert oa.id != oc.id and oa.features.id != oc.features.id
    assert oa.features.name.startswith("efficientnet_lite0-") and oa.name.startswith("triplet-")


@pytest.mark.parametrize("change", [
    ("train", "lr", 3e-4), ("train", "embedding_dim", 128), ("train", "epochs", 3),
])
def test_result_settings_change_the_hash_but_not_the_folder(params, change):
    """A params.yaml default changes what a folder holds, not where it is (DVC needs stable outputs)."""
    section, key, value = change
    base = _run(params)
    other = copy.deepcopy(params)
    other[section][key] = value
    moved = _run(other)
    assert moved.hash != base.hash and moved.id == base.id


def test_method_loss_args_in_params_change_the_hash(params):
    other = copy.deepcopy(params)
    other["methods"]["triplet"]["loss_args"]["margin"] = 0.2
    assert _run(other).hash != _run(params).hash and _run(other).id == _run(params).id


@pytest.mark.parametrize("overrides", [
    {"train.lr": 3e-4}, {"train.embedding_dim": 128}, {"method.loss_args.margin": 0.2},
    {"method.miner_args.type_of_triplets": "hard"}, {"evaluation.ks": [1, 2, 4, 8, 16]},
])
def test_result_overrides_change_hash_and_name(params, overrides):
    base, row = _run(params), _run(params, **overrides)
    assert row.hash != base.hash and row.id != base.id
    assert HASHED.match(row.name).group("method") == "triplet"
    assert row.id == f"glyphs/efficientnet_lite0/{row.name}/seed0"


def test_seed_changes_hash_and_id(params):
    a, b = _run(params, seed=0), _run(params, seed=1)
    assert a.hash != b.hash and a.id.endswith("/seed0") and b.id.endswith("/seed1") and a.name == b.name


def test_hash_is_a_function_of_the_semantic_config(params):
    run = _run(params)
    shuffled = {k: run.config[k] for k in reversed(list(run.config))}
    assert config_hash(shuffled) == run.hash == config_hash(copy.deepcopy(run.config))
    assert "threads" not in semantic(run.config)["train"] and "batch_size" not in semantic(run.config)["extract"]
    assert semantic({"backbone": {"name": "x", "weights": "/a/b/w.pth"}})["backbone"]["weights"] == "w.pth"
    cfg = {"backbone": {"name": "x", "weights": "/a/b/w.pth"}, "train": {"lr_milestones": [24.0, 32]}}
    out = semantic(cfg)
    out["train"]["lr_milestones"].append(1)
    assert cfg == {"backbone": {"name": "x", "weights": "/a/b/w.pth"}, "train": {"lr_milestones": [24.0, 32]}}


# ---------------------------------------------------------------------------------------------
# Naming and sharing

SWEEP_ON_LR = """sweeps:
  lr:
    base: {table: a, row: Triplet}
    parameter: train.lr
    values: [1.0e-4, 3.0e-4]
    datasets: [glyphs]
    metric: recall@1
"""

NAMING = """
presets:
  emb: {train.embedding_dim: 128}
tables:
  a:
""" + ONE_COLUMN + """    rows:
      - {label: Triplet, method: triplet}
      - {label: Triplet 128, method: triplet, preset: emb}
      - {label: Triplet default lr, method: triplet, overrides: {train.lr: 1.0e-4}}
      - {label: Contrastive 128, method: contrastive, overrides: {train.embedding_dim: 128}}
  b:
""" + ONE_COLUMN + """    rows:
      - {label: Same 128, method: triplet, preset: emb}
      - {label: Same by override, method: triplet, overrides: {train.embedding_dim: 128}}
      - {label: Plain, method: triplet}
"""


def test_run_naming_and_sharing(params):
    """Folders are named by the declaration (a preset by name), so rows declared alike share a run,
    and a `dvc exp run -S` on a params value can never rename one."""
    params["train"].update({"lr": 1.0e-4, "embedding_dim": 512})  # the values NAMING's rows restate
    write_paper(params, NAMING)
    study = load_study(params)
    a, b = study.table("demo/a"), study.table("demo/b")
    names = {row.label: row.runs["glyphs"][0].name for t in (a, b) for row in t.rows}
    assert names["Triplet"] == names["Plain"] == "triplet"
    emb = HASHED.match(names["Triplet 128"])
    assert emb and emb.group("method") == "triplet" and names["Same 128"] == names["Triplet 128"]
    # declared differently: another folder, although the configuration is the same
    assert names["Same by override"] not in (names["Triplet 128"], "triplet")
    same = {row.label: row.runs["glyphs"][0] for t in (a, b) for row in t.rows}
    assert same["Same by override"].hash == same["Triplet 128"].hash
    assert names["Triplet default lr"] != "triplet" and same["Triplet default lr"].hash == same["Triplet"].hash
    # the suffix hashes the declared keys, whatever the method
    assert HASHED.match(names["Contrastive 128"]).group("hash") == HASHED.match(names["Same by override"]).group("hash")
    cells = sum(len(runs) for t in (a, b) for row in t.rows for runs in row.runs.values())
    assert cells == 7 * 2
    assert len(study.runs) == 5 * 2 == len(study.needs)
    assert len(a.runs()) == 8 and len(b.runs()) == 6
    assert [r.id for r in b.rows[0].runs["glyphs"]] == [r.id for r in a.rows[1].runs["glyphs"]]
    # a run object is shared, not a copy
    assert a.rows[1].runs["glyphs"][0] is b.rows[0].runs["glyphs"][0]
    assert study.presets_of[a.rows[1].runs["glyphs"][0].id] == {("demo", "presets.emb")}
    assert len(study.runs_of([a, b], [])) == 10


def test_names_do_not_follow_params_values(params):
    """`dvc exp run -S` edits params.yaml or a preset: no run may change its folder."""
    write_paper(params, NAMING + SWEEP_ON_LR)
    before = load_study(params)
    changed = copy.deepcopy(params)
    changed["train"]["lr"] = 3.0e-4  # now equal to a sweep point
    changed["train"]["embedding_dim"] = 128  # now equal to the preset
    write_paper(changed, (NAMING + SWEEP_ON_LR).replace("emb: {train.embedding_dim: 128}",
                                                        "emb: {train.embedding_dim: 128, train.lr: 0.01}"))
    after = load_study(changed)
    assert sorted(before.runs) == sorted(after.runs)
    assert any(before.runs[i].hash != after.runs[i].hash for i in before.runs)


def test_runs_declared_in_two_papers_are_one_run(params):
    text = "tables:\n  t:\n" + ONE_COLUMN + "    rows: [{label: X, method: triplet, overrides: {train.lr: 0.001}}]\n"
    write_paper(params, text, paper="first")
    write_paper(params, text, paper="second")
    study = load_study(params)
    assert [r.id for r in study.table("first/t").runs()] == [r.id for r in study.table("second/t").runs()]
    assert len(study.runs) == 2


def test_runs_differing_only_in_training_share_features(params):
    runs = [_run(params), _run(params, **{"train.lr": 1e-3}), _run(params, method="contrastive"),
            _run(params, **{"train.embedding_dim": 64, "method.loss_args.margin": 0.3}), _run(params, seed=1)]
    assert len({r.features.id for r in runs}) == 1
    assert len({r.features.path(params) for r in runs}) == 1
    assert runs[0].features.id == "glyphs/efficientnet_lite0"
    assert runs[0].features.path(params).name == "efficientnet_lite0.npz"
    assert len({r.id for r in runs}) == len(runs)


@pytest.mark.parametrize("overrides", [{"extract.train_views": 2}, {"extract.crop_scale": [0.2, 1.0]},
                                       {"extract.flip": False}])
def test_extraction_settings_give_other_features(params, overrides):
    base, other = _run(params), _run(params, **overrides)
    assert HASHED.match(other.features.name).group("method") == "efficientnet_lite0"
    assert other.features.id != base.features.id and other.features.hash != base.features.hash
    assert other.features.path(params) != base.features.path(params)
    assert other.id != base.id  # a run on other features is another run
    # and two methods on those settings share them
    assert _run(params, method="contrastive", **overrides).features.id == other.features.id


def test_features_of_a_study(params):
    write_paper(params, "tables:\n  t:\n" + ONE_COLUMN + "    rows:\n"
                "      - {label: A, method: triplet}\n      - {label: B, method: npair}\n"
                "      - {label: C, method: npair, overrides: {extract.train_views: 3}}\n")
    study = load_study(params)
    feats = study.features_of(list(study.runs.values()))
    assert len(feats) == 2 and feats[0].id == "glyphs/efficientnet_lite0"


# ---------------------------------------------------------------------------------------------
# Sweeps

SWEEP = """
tables:
  t:
""" + ONE_COLUMN + """    rows: [{label: MS, method: multi_similarity}]
sweeps:
  lr:
    base: {table: t, row: MS}
    parameter: train.lr
    values: [1.0e-4, 3.0e-4, 1.0e-3]
    datasets: [glyphs, other]
    metric: recall@1
    seeds: [0, 1, 2]
  margin:
    base: {method: triplet}
    parameter: method.loss_args.margin
    values: [0.05, 0.1, 0.2]
    datasets: [glyphs]
    metric: recall@1
"""


def test_sweep_expansion(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "other"), seeds=(0, 1, 2))
    params["train"]["lr"] = 1.0e-4  # the sweep's first point restates the default lr
    params["methods"]["multi_similarity"].pop("train", None)
    write_paper(params, SWEEP)
    study = load_study(params)
    sweep = study.sweep("demo/lr")
    assert [(p.dataset, p.value) for p in sweep.points] == [
        (d, v) for d in ("glyphs", "other") for v in (1.0e-4, 3.0e-4, 1.0e-3)]
    assert len(sweep.runs()) == 3 * 2 * 3
    for point in sweep.points:
        assert [r.seed for r in point.runs] == [0, 1, 2]
        assert all(r.config["train"]["lr"] == point.value and r.dataset == point.dataset for r in point.runs)
        assert all(r.method == "multi_similarity" for r in point.runs)
    # the point at the default lr is declared (train.lr) and so its own folder, with the table's configuration
    table_runs = study.table("demo/t").rows[0].runs["glyphs"]
    assert [r.hash for r in sweep.points[0].runs] == [r.hash for r in table_runs]
    assert [r.id for r in sweep.points[0].runs] != [r.id for r in table_runs]
    assert all(HASHED.match(r.name) for p in sweep.points for r in p.runs)
    # the same value on another dataset has the same name (the dataset is in the path)
    assert sweep.points[1].runs[0].name == sweep.points[4].runs[0].name
    margin = study.sweep("demo/margin")
    assert [r.config["method"]["loss_args"]["margin"] for p in margin.points for r in p.runs] == \
        [v for v in (0.05, 0.1, 0.2) for _ in range(3)]
    assert margin.points[1].runs[0].name != "triplet"  # declared, although 0.1 is the method's own margin
    # table 3 + lr sweep 18 + margin sweep 9
    assert len(study.runs) == 3 + 18 + 9


def test_sweep_point_equal_to_a_preset_row_has_its_configuration(params):
    write_paper(params, """
presets:
  emb: {train.embedding_dim: 128}
tables:
  t:
""" + ONE_COLUMN + """    rows: [{label: T, method: triplet, preset: emb}]
sweeps:
  dim:
    base: {method: triplet}
    parameter: train.embedding_dim
    values: [128, 512]
    datasets: [glyphs]
    metric: recall@1
""")
    study = load_study(params)
    points = study.sweep("demo/dim").points
    assert [r.hash for r in points[0].runs] == [r.hash for r in study.table("demo/t").runs()]
    assert points[1].runs[0].name != "triplet"
    assert len(study.runs) == 6


# ---------------------------------------------------------------------------------------------
# Needs


def test_needs_follow_the_tables_that_use_a_run(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "other"))
    write_paper(params, """
tables:
  a:
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1}
      - {key: nmi, dataset: other, metric: nmi}
    rows: [{label: T, method: triplet}]
  b:
    protocols: [honest, paper]
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows: [{label: C, method: contrastive}]
sweeps:
  s:
    base: {method: npair}
    parameter: train.lr
    values: [0.001]
    datasets: [glyphs]
    metric: nmi
    protocol: paper
""")
    study = load_study(params)
    needs = {rid: (n.nmi, n.test_every_epoch) for rid, n in study.needs.items()}
    assert set(needs) == set(study.runs) and len(needs) == 2 * 2 + 2 + 2
    for rid, (nmi, every) in needs.items():
        dataset, _, name, _ = rid.split("/")
        assert nmi == ((name == "triplet" and dataset == "other") or name.startswith("npair-")), rid
        assert every == (name == "contrastive" or name.startswith("npair-")), rid
    n = study.needs["glyphs/efficientnet_lite0/contrastive/seed0"]
    assert n.train_flags() == "--test-every-epoch" and n.evaluate_flags() == "--paper-protocol"
    n = study.needs["other/efficientnet_lite0/triplet/seed1"]
    assert n.train_flags() == "" and n.evaluate_flags() == "--nmi"
    npair = next(rid for rid in study.runs if "npair-" in rid)
    assert study.needs[npair].evaluate_flags() == "--nmi --paper-protocol"


def test_needs_are_the_union_over_tables(params):
    write_paper(params, """
tables:
  a:
    columns: [{key: n, dataset: glyphs, metric: nmi}]
    rows: [{label: T, method: triplet}]
  b:
    protocols: [paper]
""" + ONE_COLUMN + """    rows: [{label: T, method: triplet}]
""")
    study = load_study(params)
    assert all(n.nmi and n.test_every_epoch for n in study.needs.values()) and len(study.needs) == 2


def test_params_test_every_epoch_applies_to_every_run(params):
    params["evaluation"]["test_every_epoch"] = True
    write_paper(params, "tables:\n  t:\n" + ONE_COLUMN + "    rows: [{label: T, method: triplet}]\n")
    study = load_study(params)
    assert all(n.test_every_epoch and not n.nmi for n in study.needs.values())


# ---------------------------------------------------------------------------------------------
# Selection


def test_selected_tables_and_figures(params):
    write_paper(params, SWEEP.replace("datasets: [glyphs, other]", "datasets: [glyphs]"))
    params["tables"], params["figures"] = ["demo/t"], ["demo/margin"]
    study = load_study(params)
    tables, sweeps = study.selected()
    assert [t.ref for t in tables] == ["demo/t"] and [s.ref for s in sweeps] == ["demo/margin"]
    runs = study.runs_of(tables, sweeps)
    assert len(runs) == 2 + 3 * 2 == len({r.id for r in runs})
    assert study.run(runs[0].id) is runs[0]
    with pytest.raises(DmlReproError, match="dmlrepro list runs"):
        study.run("glyphs/efficientnet_lite0/nope/seed0")
    with pytest.raises(DmlReproError, match="declared: demo/lr, demo/margin"):
        study.sweep("demo/nope")


def test_repository_declarations_load(tmp_path):
    """The shipped workflow/papers declarations expand with the tiny params."""
    from conftest import REPO, tiny_params

    params = tiny_params()
    params["paths"]["papers"] = str(REPO / "workflow" / "papers")
    study = load_study(params)
    tables, _ = study.selected()
    assert tables and all(t.rows for t in tables)
    for sweep in study.sweeps.values():
        assert all(r.id in study.runs for r in sweep.runs())
    assert set(study.needs) == set(study.runs)


# ---------------------------------------------------------------------------------------------
# Declaration errors name the file, the entry and what is defined


def _table(rows: str, columns: str = ONE_COLUMN, extra: str = "") -> str:
    return "tables:\n  t:\n" + columns + "    rows:\n" + rows + extra


def test_undefined_method_in_a_row(params):
    path = write_paper(params, _table("      - {label: Mine, method: arcface}\n"))
    msg = _error(params)
    assert str(path) in msg and "tables.t" in msg and "row 'Mine'" in msg
    assert "method 'arcface' is not defined" in msg and "triplet" in msg and "proxy_anchor" in msg


def test_undefined_dataset_in_a_column(params):
    path = write_paper(params, _table("      - {label: T, method: triplet}\n",
                                      "    columns: [{key: r1, dataset: cub, metric: recall@1}]\n"))
    msg = _error(params)
    assert str(path) in msg and "column 'r1'" in msg and "dataset 'cub' is not defined" in msg and "glyphs" in msg


def test_undefined_preset(params):
    path = write_paper(params, "presets:\n  emb: {train.embedding_dim: 128}\n" +
                       _table("      - {label: T, method: triplet, preset: emb64}\n"))
    msg = _error(params)
    assert str(path) in msg and "row 'T'" in msg and "preset 'emb64' is not defined" in msg and "emb" in msg


def test_override_with_a_bad_root(params):
    path = write_paper(params, _table("      - {label: T, method: triplet, overrides: {foo.bar: 1}}\n"))
    msg = _error(params)
    assert str(path) in msg and "foo.bar" in msg and "tables.t.rows.0" in msg
    with pytest.raises(DmlReproError, match=r"where: 'foo.bar' is not a run key.*train"):
        apply_overrides({}, {"foo.bar": 1}, "where")


@pytest.mark.parametrize("override,expected", [
    ("train.batch_size: 18", "train.batch_size: 18 is not a multiple of m_per_class (4)"),
    ("train.lr: -1", "train.lr: -1 is out of range; it must be > 0"),
    ("method.loss_args.marign: 0.1", "marign"),
    ("train.selection_metric: map@x", "train.selection_metric"),
    ("evaluation.ks: [2, 4]", "train.selection_metric recall@1 needs 1 in evaluation.ks"),
])
def test_override_giving_an_invalid_run(params, override, expected):
    path = write_paper(params, _table(f"      - {{label: Bad, method: triplet, overrides: {{{override}}}}}\n"
                                      "      - {label: Good, method: triplet}\n",
                                      "    columns: [{key: r2, dataset: glyphs, metric: recall@2}]\n"))
    msg = _error(params)
    assert str(path) in msg and "row 'Bad'" in msg and "invalid run configuration" in msg and expected in msg
    assert "Good" not in msg


def test_preset_giving_an_invalid_run_names_the_row(params):
    path = write_paper(params, "presets:\n  big: {train.batch_size: 30}\n" +
                       _table("      - {label: T, method: triplet, preset: big}\n"))
    msg = _error(params)
    assert str(path) in msg and "row 'T'" in msg and "30 is not a multiple of m_per_class" in msg


def test_metric_needing_a_k_not_evaluated(params):
    path = write_paper(params, _table("      - {label: T, method: triplet}\n",
                                      "    columns: [{key: r16, dataset: glyphs, metric: recall@16}]\n"))
    msg = _error(params)
    assert str(path) in msg and "column 'r16'" in msg and "recall@16" in msg and "[1, 2, 4, 8]" in msg
    # evaluating k=16 makes it valid
    write_paper(params, _table("      - {label: T, method: triplet, overrides: {evaluation.ks: [1, 16]}}\n",
                               "    columns: [{key: r16, dataset: glyphs, metric: recall@16}]\n"))
    load_study(params)


def test_sweep_base_row_that_does_not_exist(params):
    path = write_paper(params, _table("      - {label: T, method: triplet}\n", extra="""
sweeps:
  s:
    base: {table: t, row: Triplet}
    parameter: train.lr
    values: [0.001]
    datasets: [glyphs]
    metric: recall@1
"""))
    msg = _error(params)
    assert str(path) in msg and "sweeps.s" in msg and "'Triplet'" in msg and "rows: T" in msg
    write_paper(params, _table("      - {label: T, method: triplet}\n", extra="""
sweeps:
  s:
    base: {table: nope, row: T}
    parameter: train.lr
    values: [0.001]
    datasets: [glyphs]
    metric: recall@1
"""))
    msg = _error(params)
    assert "base table 'nope'" in msg and "tables: t" in msg


def test_sweep_published_curve_must_match_its_points(params):
    write_paper(params, """
sweeps:
  s:
    base: {method: triplet}
    parameter: train.lr
    values: [0.001, 0.01]
    datasets: [glyphs]
    metric: recall@1
    published: {glyphs: [50.0]}
""")
    assert "sweeps.s" in _error(params) and "one value per point (2)" in _error(params)


def test_published_value_for_an_unknown_column(params):
    path = write_paper(params, _table("      - {label: T, method: triplet, published: {r1: 50.0, r2: 60.0}}\n"))
    msg = _error(params)
    assert str(path) in msg and "row 'T'" in msg and "['r2']" in msg and "columns: r1" in msg


def test_duplicate_column_keys_and_row_labels(params):
    write_paper(params, _table("      - {label: T, method: triplet}\n      - {label: T, method: npair}\n"))
    assert "row labels must be unique" in _error(params)
    write_paper(params, _table("      - {label: T, method: triplet}\n",
                               "    columns: [{key: a, dataset: glyphs, metric: recall@1},"
                               " {key: a, dataset: glyphs, metric: nmi}]\n"))
    assert "column keys must be unique" in _error(params)


def test_selection_of_an_undeclared_table_or_figure(params):
    write_paper(params, _table("      - {label: T, method: triplet}\n"))
    params["tables"], params["figures"] = ["demo/nope"], ["demo/curve"]
    msg = _error(params)
    assert "params.yaml tables: 'demo/nope' is not declared (declared: demo/t)" in msg
    assert "params.yaml figures: 'demo/curve' is not declared (declared: (none))" in msg


def test_every_problem_is_reported_at_once(params):
    write_paper(params, "tables:\n"
                "  a:\n" + ONE_COLUMN + "    rows: [{label: A, method: nope1}]\n"
                "  b:\n" + ONE_COLUMN + "    rows: [{label: B, method: nope2}]\n")
    msg = _error(params)
    assert "nope1" in msg and "nope2" in msg


def test_schema_errors_name_the_file(params):
    path = write_paper(params, "tables:\n  t:\n" + ONE_COLUMN + "    rows: [{label: T, method: triplet, colour: red}]\n")
    msg = _error(params)
    assert f"invalid declaration {path}" in msg and "colour" in msg
    path.write_text("paper: other\ntitle: x\n")
    assert "must equal the file name 'demo'" in _error(params)
    path.write_text("paper: [unclosed\n")
    assert "not valid YAML" in _error(params)
    params["paths"]["papers"] = str(path.parent / "missing")
    assert "paths.papers" in _error(params)


# ---------------------------------------------------------------------------------------------
# Dotted keys


def test_flatten_and_set_dotted():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == \
        {"a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}
    cfg = {"train": {"lr": 1}}
    set_dotted(cfg, "train.lr", 2)
    set_dotted(cfg, "method.loss_args.margin", 0.3)
    assert cfg == {"train": {"lr": 2}, "method": {"loss_args": {"margin": 0.3}}}
    with pytest.raises(DmlReproError, match="'train.lr.x'"):
        set_dotted(cfg, "train.lr.x", 1)


def test_nested_and_dotted_overrides_are_the_same(params):
    dotted = _run(params, **{"method.loss_args.margin": 0.3, "train.lr": 0.01})
    nested = resolve_run(params, "glyphs", "triplet", 0,
                         [("n", {"method": {"loss_args": {"margin": 0.3}}, "train": {"lr": 0.01}})])
    assert (dotted.id, dotted.hash) == (nested.id, nested.hash)
    assert nested.config["method"]["miner"] == "triplet_margin"  # a nested override merges


def test_an_override_cannot_rename_the_method(params):
    run = _run(params, **{"method.name": "contrastive"})
    assert run.method == "triplet" and run.name == "triplet"


# ---------------------------------------------------------------------------------------------
# Equal configurations are one run, whatever the YAML spelling of a number


@pytest.mark.parametrize("method,spellings", [
    ("contrastive", ("method.loss_args.pos_margin: 0", "method.loss_args.pos_margin: 0.0")),
    ("triplet", ("extract.crop_scale: [0.5, 1]", "extract.crop_scale: [0.5, 1.0]")),
    ("triplet", ("train.embedding_dim: 128", "train.embedding_dim: 128.0")),
])
def test_numerically_equal_spellings_are_one_run(params, method, spellings):
    """A folder holds one configuration: `0` and `0.0` name and hash alike."""
    write_paper(params, _table(f"      - {{label: A, method: {method}, overrides: {{{spellings[0]}}}}}\n"
                               f"      - {{label: B, method: {method}, overrides: {{{spellings[1]}}}}}\n"))
    rows = load_study(params).table("demo/t").rows
    a, b = rows[0].runs["glyphs"], rows[1].runs["glyphs"]
    assert [r.id for r in a] == [r.id for r in b] and [r.hash for r in a] == [r.hash for r in b]
    assert [r.features.id for r in a] == [r.features.id for r in b]


def test_an_accepted_evaluation_override_is_honoured_or_refused(params):
    """`evaluation.test_every_epoch: true` in a row either makes its runs record test metrics each
    epoch or is refused; it must not be accepted and then ignored."""
    write_paper(params, _table("      - {label: T, method: triplet, overrides: {evaluation.test_every_epoch: true}}\n"))
    try:
        study = load_study(params)
    except DmlReproError as exc:
        assert "test_every_epoch" in str(exc)
        return
    assert all(n.test_every_epoch for n in study.needs.values())


def test_frozen_runs_carry_no_training_settings(params):
    """The frozen backbone trains nothing: a change of train.lr must not rerun (rename or re-hash) it."""
    frozen = _run(params, method="frozen")
    changed = copy.deepcopy(params)
    changed["train"]["lr"] = 0.5
    changed["train"]["epochs"] = 99
    again = resolve_run(changed, "glyphs", "frozen", 0)
    assert again.hash == frozen.hash and again.id == frozen.id
    assert _run(changed).hash != _run(params).hash  # a trained method does change


def test_every_bad_row_is_reported_at_once_with_its_label(params):
    params["tables"] = ["demo/t"]
    path = write_paper(params, _table("      - {label: B, method: triplet, overrides: {backbone: resnet50}}\n"
                                      "      - {label: C, method: triplet, overrides: {method.loss_args.marign: 0.2}}\n"
                                      "      - {label: E, method: triplet, overrides: {foo.bar: 1}}\n"))
    msg = _error(params)
    assert "row 'E'" in msg and "override key 'foo.bar' is not a run key" in msg and "Unevaluated" not in msg
    path.write_text(path.read_text().replace("      - {label: E, method: triplet, overrides: {foo.bar: 1}}\n", ""))
    msg = _error(params)
    assert "row 'B'" in msg and "'backbone' is a section" in msg
    assert "row 'C'" in msg and "marign" in msg
    assert "is not declared" not in msg  # the table is declared; its rows are what is wrong


def test_a_methods_own_train_settings_apply_to_its_runs_only_and_below_declarations(params):
    params["methods"]["triplet"]["train"] = {"lr": 3.0e-3}
    assert _run(params).config["train"]["lr"] == 3.0e-3
    assert "train" not in _run(params).config["method"]  # a training setting, not the loss's
    assert _run(params, method="contrastive").config["train"]["lr"] == params["train"]["lr"]
    assert _run(params, **{"train.lr": 1e-5}).config["train"]["lr"] == 1e-5  # a declaration wins
    assert _run(params).name == "triplet"  # params.yaml values never name a run


def test_dvc_params_of_a_run_follow_the_methods_own_train_settings(params):
    from dmlrepro.study.dvc_yaml import _run_params

    params["methods"]["triplet"]["train"] = {"lr": 3.0e-3, "threads": 2}
    write_paper(params, "tables:\n  t:\n" + ONE_COLUMN +
                "    rows: [{label: T, method: triplet}, {label: C, method: contrastive},\n"
                "           {label: S, method: triplet, overrides: {train.lr: 0.1}}]\n")
    study = load_study(params)
    plain, contrastive, swept = (row.runs["glyphs"][0] for row in study.table("demo/t").rows)
    triplet_keys = _run_params(params, study, plain)
    assert "methods.triplet.train.lr" in triplet_keys and "train.lr" not in triplet_keys
    assert "methods.triplet.train.threads" not in triplet_keys  # machine-only
    assert "train.epochs" in triplet_keys
    assert "train.lr" in _run_params(params, study, contrastive)
    swept_keys = _run_params(params, study, swept)  # declares its own lr: neither source applies
    assert "methods.triplet.train.lr" not in swept_keys and "train.lr" not in swept_keys


def test_a_methods_train_block_is_checked_by_the_schema(params):
    from dmlrepro.study.params import validate_params

    params["methods"]["triplet"]["train"] = {"lrr": 1e-3}
    with pytest.raises(DmlReproError, match="unknown key methods.triplet.train.lrr"):
        validate_params(params)


def test_a_datasets_own_train_settings_apply_to_its_runs_over_the_methods_and_below_declarations(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["methods"]["triplet"]["train"] = {"lr": 3.0e-3, "epochs": 60}
    params["train_per_dataset"] = {"large": {"epochs": 80, "lr_milestones": [48, 64]}}
    large, small = _run(params, dataset="large"), _run(params)
    assert (large.config["train"]["epochs"], large.config["train"]["lr_milestones"]) == (80, [48, 64])
    assert large.config["train"]["lr"] == 3.0e-3  # the method's own lr stays
    assert small.config["train"]["epochs"] == 60 and small.config["train"]["lr_milestones"] == \
        params["train"]["lr_milestones"]  # the other dataset keeps the method's and params.yaml's
    assert _run(params, dataset="large", **{"train.epochs": 5, "train.lr_milestones": [3]}).config["train"]["epochs"] == 5
    assert large.name == small.name == "triplet"  # a params.yaml value never names a run...
    params["train_per_dataset"] = {}
    assert _run(params, dataset="large").hash != large.hash  # ...but it is part of what the run is
    assert _run(params, dataset="large").features.hash == large.features.hash  # not of its features


def test_a_methods_own_schedule_on_one_dataset_wins_there_and_changes_nothing_elsewhere(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["methods"]["triplet"]["train"] = {"lr": 3.0e-3, "epochs": 60}
    params["train_per_dataset"] = {"large": {"epochs": 80, "lr_milestones": [48, 64]}}
    before = {d: _run(params, dataset=d) for d in ("glyphs", "large")}
    other_method = _run(params, method="contrastive", dataset="large")
    params["methods"]["triplet"]["train_per_dataset"] = {"large": {"epochs": 120, "lr_milestones": [72, 96]}}
    large = _run(params, dataset="large")
    # by hand: on large the method's own block (120, [72, 96]) over the dataset's (80) over the method's (60)
    assert (large.config["train"]["epochs"], large.config["train"]["lr_milestones"]) == (120, [72, 96])
    assert large.config["train"]["lr"] == 3.0e-3
    assert large.hash != before["large"].hash and large.name == before["large"].name == "triplet"
    assert _run(params, dataset="glyphs").hash == before["glyphs"].hash  # another dataset: untouched
    assert _run(params, method="contrastive", dataset="large").hash == other_method.hash  # another method too
    assert "train_per_dataset" not in large.config["method"]
    assert _run(params, dataset="large", **{"train.epochs": 5, "train.lr_milestones": [3]}).config["train"]["epochs"] == 5


def test_dvc_params_of_a_run_follow_its_methods_own_block_on_its_dataset(tmp_path):
    from dmlrepro.study.dvc_yaml import _run_params

    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["methods"]["triplet"]["train"] = {"epochs": 60, "lr": 3.0e-3}
    params["train_per_dataset"] = {"large": {"epochs": 80, "lr_milestones": [48, 64]}}
    params["methods"]["triplet"]["train_per_dataset"] = {"large": {"epochs": 120}}
    write_paper(params, "tables:\n  t:\n    columns: [{key: a, dataset: glyphs, metric: recall@1},\n"
                "              {key: b, dataset: large, metric: recall@1}]\n"
                "    rows: [{label: T, method: triplet}]\n"
                "  c:\n    columns: [{key: b, dataset: large, metric: recall@1}]\n"
                "    rows: [{label: C, method: contrastive}]\n"
                "  d:\n    columns: [{key: b, dataset: large, metric: recall@1}]\n"
                "    rows: [{label: T5, method: triplet, overrides: {train.epochs: 5, train.lr_milestones: [3]}}]\n")
    study = load_study(params)
    row = study.table("demo/t").rows[0]
    large_keys, small_keys = (_run_params(params, study, row.runs[d][0]) for d in ("large", "glyphs"))
    assert "methods.triplet.train_per_dataset.large.epochs" in large_keys
    assert not {"train_per_dataset.large.epochs", "methods.triplet.train.epochs", "train.epochs"} & set(large_keys)
    assert "train_per_dataset.large.lr_milestones" in large_keys and "methods.triplet.train.lr" in large_keys
    assert not any("train_per_dataset" in k for k in small_keys) and "methods.triplet.train.epochs" in small_keys
    contrastive = load_study(params).table("demo/c").rows[0].runs["large"][0]  # another method on large
    keys = _run_params(params, study, contrastive)
    assert "train_per_dataset.large.epochs" in keys and not any(k.startswith("methods.triplet") for k in keys)
    declared = load_study(params).table("demo/d").rows[0].runs["large"][0]  # a declaration's epochs win
    assert not any(k.endswith(".epochs") for k in _run_params(params, study, declared))


@pytest.mark.parametrize("own, expected", [
    ({"nosuch": {"epochs": 80}}, "methods.triplet.train_per_dataset.nosuch: 'nosuch' is not a params.yaml dataset"),
    ({"glyphs": {"epochz": 80}}, "unknown key methods.triplet.train_per_dataset.glyphs.epochz"),
    ({"glyphs": {"epochs": 3}}, r"methods.triplet.train_per_dataset.glyphs: lr_milestones: epoch 3 is not below"),
])
def test_a_methods_own_block_on_a_dataset_is_checked_when_params_yaml_is_read(params, own, expected):
    from dmlrepro.study.params import validate_params

    params["train"]["lr_milestones"] = [3]
    params["train"]["epochs"] = 4
    params["methods"]["triplet"]["train_per_dataset"] = own
    with pytest.raises(DmlReproError, match=expected):
        validate_params(params)


def test_a_methods_own_block_problem_is_named_once_at_that_block(params):
    from dmlrepro.study.params import validate_params

    params["train"].update({"epochs": 10, "lr_milestones": [6, 8]})
    params["methods"]["triplet"]["train_per_dataset"] = {"glyphs": {"lr_milestones": [20]}}
    with pytest.raises(DmlReproError) as info:
        validate_params(params)
    lines = [l for l in str(info.value).splitlines() if "lr_milestones" in l]
    assert lines == ["  - methods.triplet.train_per_dataset.glyphs: lr_milestones: epoch 20 is not below epochs (10)"]
    params["methods"]["triplet"]["train_per_dataset"] = {}
    params["methods"]["frozen"]["train_per_dataset"] = {"glyphs": {"epochs": 3}}
    with pytest.raises(DmlReproError, match=r"methods.frozen.train_per_dataset.glyphs: method 'frozen' trains "
                                            r"nothing \(loss: none\); remove its train_per_dataset"):
        validate_params(params)


def test_dvc_params_of_a_run_follow_its_datasets_own_train_settings(tmp_path):
    from dmlrepro.study.dvc_yaml import _run_params

    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["methods"]["triplet"]["train"] = {"epochs": 60, "lr": 3.0e-3}
    params["train_per_dataset"] = {"large": {"epochs": 80}}
    write_paper(params, "tables:\n  t:\n    columns: [{key: a, dataset: glyphs, metric: recall@1},\n"
                "              {key: b, dataset: large, metric: recall@1}]\n"
                "    rows: [{label: T, method: triplet}]\n")
    row = load_study(params).table("demo/t").rows[0]
    large, small = row.runs["large"][0], row.runs["glyphs"][0]
    study = load_study(params)
    large_keys, small_keys = _run_params(params, study, large), _run_params(params, study, small)
    assert "train_per_dataset.large.epochs" in large_keys
    assert "methods.triplet.train.epochs" not in large_keys and "train.epochs" not in large_keys
    assert "methods.triplet.train.lr" in large_keys  # the method's own lr still applies
    assert "methods.triplet.train.epochs" in small_keys and not any(k.startswith("train_per_dataset") for k in small_keys)


@pytest.mark.parametrize("per_dataset, expected", [
    ({"nosuch": {"epochs": 80}}, "train_per_dataset.nosuch: 'nosuch' is not a params.yaml dataset"),
    ({"glyphs": {"epochz": 80}}, "unknown key train_per_dataset.glyphs.epochz"),
    ({"glyphs": {"epochs": 2}}, r"train_per_dataset.glyphs \(over train:\): lr_milestones: epoch"),
])
def test_a_datasets_train_settings_are_checked_when_params_yaml_is_read(params, per_dataset, expected):
    from dmlrepro.study.params import validate_params

    params["train"]["lr_milestones"] = [3]
    params["train"]["epochs"] = 4
    params["train_per_dataset"] = per_dataset
    with pytest.raises(DmlReproError, match=expected):
        validate_params(params)


def test_a_datasets_schedule_is_checked_over_each_methods_own_block(params):
    from dmlrepro.study.params import validate_params

    params["methods"]["triplet"]["train"] = {"epochs": 6, "lr_milestones": [4]}
    params["train_per_dataset"] = {"glyphs": {"epochs": 3}}  # fine over train: (milestone 1), not over triplet's 4
    with pytest.raises(DmlReproError) as info:
        validate_params(params)
    assert "train_per_dataset.glyphs (over methods.triplet.train): lr_milestones: epoch 4 is not below epochs (3)" \
        in str(info.value)
    assert "over train:" not in str(info.value)


def test_a_column_moves_onto_the_real_benchmark_when_its_root_is_set(tmp_path):
    """Stand-in by default, labelled as such; the user's copy of the real benchmark once its root is set."""
    from dmlrepro.reporting.cells import column_header

    params = study_params(tmp_path)
    params["datasets"]["sop"] = {"kind": "sop", "root": None}
    write_paper(params, "tables:\n  t:\n    columns: [{key: r1, dataset: glyphs, as: SOP, real: sop, "
                        "metric: recall@1}]\n    rows: [{label: MS, method: multi_similarity}]\n")
    table = load_study(params).tables["demo/t"]
    assert {r.dataset for r in table.runs()} == {"glyphs"}
    assert column_header(table.decl["columns"][0]) == "glyphs (SOP stand-in) recall@1"
    params["datasets"]["sop"]["root"] = str(tmp_path / "Stanford_Online_Products")
    table = load_study(params).tables["demo/t"]
    assert {r.dataset for r in table.runs()} == {"sop"}
    assert {tuple(r.config["evaluation"]["ks"]) for r in table.runs()} == {(1, 10, 100, 1000)}  # SOP's Recall@K
    assert "stand-in" not in column_header(table.decl["columns"][0])
    write_paper(params, "tables:\n  t:\n    columns: [{key: r1, dataset: glyphs, real: nope, metric: recall@1}]\n"
                        "    rows: [{label: MS, method: multi_similarity}]\n")
    assert "real dataset 'nope' is not defined" in _error(params)
