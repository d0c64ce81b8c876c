"""DA (reconstructed): the density term against hand-computed values, its zero set and direction,
edge cases (singletons, one class, coincident points), the wrapper, the configuration checks."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from dmlrepro.study.params import validate_params
from dmlrepro.errors import DmlReproError
from dmlrepro.methods import CriterionWrapper, build_criterion, method_labels, method_problems
from dmlrepro.methods.density import LABEL, class_statistics, density_term

from conftest import REPO

DT = torch.float64


def two_classes(a_deg: float, b_deg: float, scale: float = 1.0):
    """Class 0 at angles +-a around 0 deg, class 1 at 90 +- b deg, on a circle of radius `scale`.

    By hand: centres mu_0 = (cos a, 0), mu_1 = (0, cos b); spreads s_0 = sin a, s_1 = sin b;
    separation d = sqrt(cos^2 a + cos^2 b) for both (normalisation removes `scale`)."""
    ang = torch.tensor([a_deg, -a_deg, 90 + b_deg, 90 - b_deg], dtype=DT) * math.pi / 180
    z = scale * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return z, torch.tensor([0, 0, 1, 1])


def by_hand(a_deg, b_deg, eta):
    a, b = math.radians(a_deg), math.radians(b_deg)
    d = math.sqrt(math.cos(a) ** 2 + math.cos(b) ** 2)
    return (max(0.0, eta * d - math.sin(a)) + max(0.0, eta * d - math.sin(b))) / 2


def test_two_class_example_matches_the_hand_computation():
    # a = 10, b = 40, eta = 0.5: d = sqrt(0.96985 + 0.58682) = 1.24767; eta d = 0.62383;
    # class 0: 0.62383 - sin 10 (0.17365) = 0.45019; class 1: 0.62383 - sin 40 (0.64279) < 0 -> 0
    z, y = two_classes(10, 40, scale=3.0)  # raw z of norm 3: the term works on unit embeddings
    assert float(density_term(z, y, eta=0.5)) == pytest.approx(0.45019 / 2, abs=1e-5)
    assert float(density_term(z, y, eta=0.5)) == pytest.approx(by_hand(10, 40, 0.5), rel=1e-12)
    n, s, d = class_statistics(z, y)
    assert n.tolist() == [2, 2]
    assert s.tolist() == pytest.approx([math.sin(math.radians(10)), math.sin(math.radians(40))], rel=1e-12)
    assert d.tolist() == pytest.approx([1.24767] * 2, abs=1e-5)


def test_zero_when_every_class_is_spread_at_least_eta_times_its_separation():
    # a = b = 40: s = 0.64279, d = sqrt(2) cos 40 = 1.08335, so s >= eta d for eta <= 0.5933
    z, y = two_classes(40, 40)
    assert float(density_term(z, y, eta=0.5)) == 0.0
    assert float(density_term(z, y, eta=0.59)) == 0.0
    assert float(density_term(z, y, eta=0.6)) > 0.0


def test_grows_as_a_class_tightens_and_shrinks_as_it_spreads():
    values = [float(density_term(*two_classes(a, 40), eta=0.5)) for a in (2, 5, 10, 20, 30)]
    assert all(x > y for x, y in zip(values, values[1:])), values
    assert [float(density_term(*two_classes(a, 40), eta=0.5)) for a in (40, 60)] == [0.0, 0.0]


def test_a_descent_step_spreads_the_over_tight_class_and_leaves_the_loose_one():
    z, y = two_classes(10, 40)
    z.requires_grad_(True)
    density_term(z, y, eta=0.5).backward()
    _, s_before, _ = class_statistics(z.detach(), y)
    _, s_after, _ = class_statistics(z.detach() - 0.05 * z.grad, y)
    assert s_after[0] > s_before[0]
    assert torch.all(z.grad[2:] == 0)  # class 1 is loose enough; separation is a target (detached)


def test_detach_separation_false_also_pulls_the_centres_together():
    z, y = two_classes(10, 40)
    z.requires_grad_(True)
    density_term(z, y, eta=0.5, detach_separation=False).backward()
    _, _, d_before = class_statistics(z.detach(), y)
    _, _, d_after = class_statistics(z.detach() - 0.05 * z.grad, y)
    assert d_after[0] < d_before[0]


def _finite_grad(z, y, **kw):
    z = z.clone().requires_grad_(True)
    r = density_term(z, y, **kw)
    r.backward()
    assert torch.isfinite(r) and torch.isfinite(z.grad).all()
    return r.item(), z.grad


@pytest.mark.parametrize("detach", [True, False])
def test_singleton_classes_are_left_out_but_count_as_neighbours(detach):
    torch.manual_seed(0)
    z = torch.randn(4, 5, dtype=DT)
    y = torch.tensor([7, 7, 3, 9])  # class 7 has two samples; 3 and 9 are singletons
    value, _ = _finite_grad(z, y, eta=2.0, detach_separation=detach)
    x = torch.nn.functional.normalize(z, dim=1)
    mu = (x[0] + x[1]) / 2
    s = float((x[0] - mu).norm() + (x[1] - mu).norm()) / 2
    d = min(float((mu - x[2]).norm()), float((mu - x[3]).norm()))
    assert value == pytest.approx(max(0.0, 2.0 * d - s), rel=1e-10)


@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 1, 2, 3], [5]])
def test_one_class_or_no_pair_gives_zero_with_finite_gradients(labels):
    z = torch.randn(len(labels), 6, dtype=DT)
    value, grad = _finite_grad(z, torch.tensor(labels), eta=0.5, detach_separation=False)
    assert value == 0.0 and torch.all(grad == 0)


def test_coincident_points_and_centres_give_finite_gradients():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]], dtype=DT)
    y = torch.tensor([0, 0, 1, 1, 2, 2])  # classes 0 and 1 coincide: spread 0, separation 0
    value, _ = _finite_grad(z, y, eta=0.5, detach_separation=False)
    assert value >= 0


@pytest.mark.parametrize("method", [
    {"loss": "contrastive", "loss_args": {"pos_margin": 0.0, "neg_margin": 0.7}},
    {"loss": "npair"},
    {"loss": "triplet", "loss_args": {"margin": 0.1}, "miner": "triplet_margin",
     "miner_args": {"margin": 0.1, "type_of_triplets": "semihard"}},
])
def test_wrapper_adds_exactly_weight_times_the_term(method):
    torch.manual_seed(1)
    z = torch.randn(32, 16, dtype=DT)
    y = torch.arange(8).repeat_interleave(4)
    base = build_criterion(method, 8, 16)
    wrapped = build_criterion({**method, "regularizer": {"density": {"weight": 2.5, "eta": 2.0}}}, 8, 16)
    assert isinstance(wrapped, CriterionWrapper) and wrapped.name == base.name
    assert wrapped.supports_ref == base.supports_ref and wrapped.param_groups(1e-3) == []
    term = float(density_term(z, y, eta=2.0))
    assert term > 0  # random points in 16-d: spread ~ separation, so eta 2 makes the term active
    assert float(wrapped(z, y)) == pytest.approx(float(base(z, y)) + 2.5 * term, rel=1e-12, abs=1e-12)
    zero = build_criterion({**method, "regularizer": {"density": {"weight": 0}}}, 8, 16)
    assert float(zero(z, y)) == float(base(z, y))


def test_defaults_and_label():
    crit = build_criterion({"loss": "triplet", "regularizer": {"density": None}}, 2, 4)
    assert (crit.weight, crit.eta, crit.detach_separation) == (1.0, 0.5, True)
    assert method_labels({"loss": "triplet", "regularizer": {"density": {}}}) == [LABEL] == ["DA (reconstructed)"]
    assert method_labels({"loss": "triplet"}) == []


@pytest.mark.parametrize("regularizer, message", [
    ({"density": {"wieght": 1.0}}, r"unknown key 'wieght' in methods.m.regularizer.density; allowed: detach_separation, eta, weight"),
    ({"density": {"eta": 0}}, r"methods.m.regularizer.density.eta = 0: 0 is less than or equal to the minimum of 0"),
    ({"density": {"weight": -1}}, r"methods.m.regularizer.density.weight = -1"),
    ({"density": {"detach_separation": "yes"}}, r"detach_separation = 'yes' has the wrong type"),
    ({"densty": {}}, r"unknown regularizer 'densty'; available: density"),
    ([1], r"methods.m.regularizer must map regularizer names"),
])
def test_config_errors_name_the_key(regularizer, message):
    with pytest.raises(DmlReproError, match=message):
        build_criterion({"loss": "triplet", "regularizer": regularizer}, 2, 2, name="m")
    assert method_problems({"loss": "triplet", "regularizer": regularizer})


def test_params_yaml_typo_fails_validation_naming_the_key():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["methods"]["triplet_da"]["regularizer"]["density"]["wieght"] = 0.3
    with pytest.raises(DmlReproError, match=r"methods\.triplet_da\.regularizer\.density\.wieght"):
        validate_params(params)


def test_da_methods_share_the_base_settings():
    methods = yaml.safe_load((REPO / "params.yaml").read_text())["methods"]
    for base in ("contrastive", "npair", "triplet"):
        da = dict(methods[f"{base}_da"])
        assert set(da.pop("regularizer")) == {"density"}
        assert da == methods[base]


# ---------------------------------------------------------------------------------------------
# Declarations: the label, the notes, and `dvc exp run -S` reach


DA_TABLE = """
tables:
  t:
    caption: DA demo.
    notes: [Published R@1 67.95 -> 77.62 (loss not stated).]
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1}
    rows:
      - {label: Triplet, method: triplet}
      - {label: %s, method: triplet_da}
"""


def test_a_row_using_da_must_say_reconstructed(tmp_path):
    from dmlrepro.study import load_study
    from studyutil import study_params, write_paper

    params = study_params(tmp_path, seeds=(0,))
    write_paper(params, DA_TABLE % "Triplet + DA")
    with pytest.raises(DmlReproError, match=r"row 'Triplet \+ DA'.*uses DA \(reconstructed\); its label must say so"):
        load_study(params)


def test_notes_are_printed_under_the_table(tmp_path):
    from dmlrepro.reporting.tables import build_table
    from dmlrepro.study import load_study
    from studyutil import study_params, write_metrics, write_paper

    params = study_params(tmp_path, seeds=(0,))
    write_paper(params, DA_TABLE % "Triplet + DA (reconstructed)")
    table = load_study(params).table("demo/t")
    for row, r1 in zip(table.rows, (0.5, 0.6)):
        write_metrics(params, row.runs["glyphs"][0], test={"recall@1": r1})
    md, _, html = build_table(params, table)
    assert "| Triplet + DA (reconstructed) | 60.0 (n=1, single run) |" in md
    assert md.rstrip().endswith("Notes:\n\n1. Published R@1 67.95 -> 77.62 (loss not stated).")
    assert "<li>Published R@1 67.95 -&gt; 77.62 (loss not stated).</li>" in html


def test_regulariser_arguments_are_dvc_params_of_the_da_runs(tmp_path):
    from dmlrepro.study import load_study
    from dmlrepro.study.dvc_yaml import build_dvc_yaml
    from studyutil import study_params, write_paper

    params = study_params(tmp_path, seeds=(0,))
    write_paper(params, DA_TABLE % "Triplet + DA (reconstructed)" + """
sweeps:
  w:
    base: {table: t, row: Triplet + DA (reconstructed)}
    parameter: method.regularizer.density.weight
    values: [0.3]
    datasets: [glyphs]
    metric: recall@1
""")
    params["tables"], params["figures"] = ["demo/t"], ["demo/w"]
    study = load_study(params)
    stages = build_dvc_yaml(study)["stages"]
    plain = stages["train-glyphs-efficientnet_lite0-triplet_da-seed0"]["params"]
    assert {"methods.triplet_da.regularizer.density.weight", "methods.triplet_da.regularizer.density.eta"} <= set(plain)
    swept = next(v["params"] for k, v in stages.items()
                 if k.startswith("train-glyphs-efficientnet_lite0-triplet_da-") and not k.endswith("triplet_da-seed0"))
    assert "methods.triplet_da.regularizer.density.weight" not in swept  # the sweep point declares it
    point = study.sweep("demo/w").points[0].runs[0]
    assert point.config["method"]["regularizer"]["density"] == {"weight": 0.3, "eta": 0.5, "detach_separation": True}  # defaults filled in


def test_mlflow_note_names_the_reconstruction(tmp_path):
    from dmlrepro.reporting.training_record import method_note
    from dmlrepro.study import load_study
    from studyutil import study_params, write_paper

    params = study_params(tmp_path, seeds=(0,))
    write_paper(params, DA_TABLE % "Triplet + DA (reconstructed)")
    base, da = (row.runs["glyphs"][0] for row in load_study(params).table("demo/t").rows)
    assert method_note(base) == {} and method_note(da) == {"method_note": "DA (reconstructed)"}
