"""A method's settings chosen on validation per dataset (tuned_settings) reach only the rows that ask
for them, name their own runs, and are tracked by DVC as params of the paper file."""
import pytest

from dmlrepro.errors import DmlReproError
from dmlrepro.study import load_study
from dmlrepro.study.dvc_yaml import build_dvc_yaml
from studyutil import study_params, write_paper

DECL = """
tuned_settings:
  triplet: {glyphs: {method.loss_args.margin: 0.3}, glyphs_cars: {method.loss_args.margin: 0.05}}
tables:
  t:
    columns:
      - {key: a, dataset: glyphs, metric: recall@1}
      - {key: b, dataset: glyphs_cars, metric: recall@1}
    rows:
      - {label: Triplet, method: triplet}
      - {label: Triplet (margin tuned on val), method: triplet, tuned: true}
"""


def test_a_tuned_row_takes_its_datasets_settings_and_names_its_own_runs(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "glyphs_cars"), seeds=(0,))
    path = write_paper(params, DECL)
    params["tables"] = ["demo/t"]
    study = load_study(params)
    plain, tuned = study.table("demo/t").rows
    margin = params["methods"]["triplet"]["loss_args"]["margin"]
    assert plain.runs["glyphs"][0].config["method"]["loss_args"]["margin"] == margin
    assert tuned.runs["glyphs"][0].config["method"]["loss_args"]["margin"] == 0.3
    assert tuned.runs["glyphs_cars"][0].config["method"]["loss_args"]["margin"] == 0.05
    assert tuned.runs["glyphs"][0].name != plain.runs["glyphs"][0].name  # its own folder
    stages = build_dvc_yaml(study)["stages"]
    stage = stages[f"train-{tuned.runs['glyphs'][0].id.replace('/', '-')}"]
    assert {str(path): ["tuned_settings.triplet.glyphs"]} in stage["params"]


def test_a_tuned_row_without_settings_for_its_dataset_is_refused(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "glyphs_cars"), seeds=(0,))
    write_paper(params, DECL.replace(", glyphs_cars: {method.loss_args.margin: 0.05}", ""))
    with pytest.raises(DmlReproError, match="tuned_settings.triplet has none for 'glyphs_cars'"):
        load_study(params)
