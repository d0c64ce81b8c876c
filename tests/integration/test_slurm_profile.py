"""The SLURM profile (workflow/profiles/slurm): `snakemake --profile ... -n` plans the tiny study on
a machine without SLURM, the training, extraction and evaluation jobs get a GPU from the profile (not from the
rules: a local run asks for none), and the executor plugin turns those resources into sbatch options."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dmlrepro.study.stages import job_counts
from conftest import REPO, make_workspace, run, tiny_params
from test_mlflow_live import PAPER

pytestmark = pytest.mark.integration
PROFILE = "workflow/profiles/slurm"
GPU_RULES = {"train", "extract", "evaluate"}  # evaluate: a fine-tuned run embeds its images


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    params = tiny_params(methods=("contrastive", "triplet"), seeds=(0, 1))
    params["tables"], params["figures"] = ["live/t"], []
    return make_workspace(tmp_path_factory.mktemp("slurm"), params, papers={"live": PAPER})


def planned_resources(output: str) -> dict[str, list[dict]]:
    """{rule: [the resources of each planned job]} from a dry run's job listing."""
    jobs: dict[str, list[dict]] = {}
    rule = None
    for line in output.splitlines():
        found = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if found:
            rule = found.group(1)
        elif rule and line.strip().startswith("resources:"):
            pairs = (item.split("=", 1) for item in line.strip()[len("resources:"):].split(", "))
            jobs.setdefault(rule, []).append({k.strip(): int(v) if v.isdigit() else v for k, v in pairs})
            rule = None
    return jobs


@pytest.fixture(scope="module")
def plan(workspace):
    dry = run(["snakemake", "--profile", PROFILE, "-n"], workspace)
    return dry.stdout + dry.stderr


def test_the_profile_plans_the_study_without_slurm(plan):
    assert f"Using profile {PROFILE}" in plan
    counts = job_counts(plan)
    assert {k: v for k, v in counts.items() if k not in ("all", "total")} == \
        {"prepare": 1, "extract": 1, "train": 4, "evaluate": 4, "table": 1}


def test_training_extraction_and_evaluation_get_a_gpu_and_the_others_none(plan):
    jobs = planned_resources(plan)
    assert {rule: len(found) for rule, found in jobs.items() if rule != "all"} == \
        {"prepare": 1, "extract": 1, "train": 4, "evaluate": 4, "table": 1}
    profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
    for rule, found in jobs.items():
        expected = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        for resources in found:
            assert (resources.get("gpu") == 1) == (rule in GPU_RULES), (rule, resources)
            for key in ("slurm_partition", "mem_mb", "runtime", "cpus_per_task"):
                assert resources[key] == expected[key], (rule, key)
    assert jobs["train"][0]["slurm_partition"] != jobs["table"][0]["slurm_partition"]


def test_a_local_run_asks_for_no_gpu(workspace):
    local = run(["snakemake", "--cores", "2", "-n"], workspace)
    jobs = planned_resources(local.stdout + local.stderr)
    assert len(jobs["train"]) == 4 and all("gpu" not in r for found in jobs.values() for r in found)


def test_every_rule_the_profile_names_exists(workspace):
    rules = set(run(["snakemake", "--list-rules"], workspace).stdout.split())
    profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
    assert set(profile["set-resources"]) <= rules and {"prepare", "extract", "train", "evaluate", "table"} <= rules
    assert profile["executor"] == "slurm"


class _Resources(dict):
    __getattr__ = dict.__getitem__


def test_the_plugin_turns_the_train_resources_into_sbatch_options(plan):
    """What sbatch receives for a training job, from the plugin's own submit-string code."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources = _Resources(planned_resources(plan)["train"][0])
    job = SimpleNamespace(resources=resources, threads=1)
    call = get_submit_command(job, {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "train",
                                    "account": "", "partition": f"-p {resources['slurm_partition']}",
                                    "workdir": str(Path.cwd())}) + set_gres_string(job)
    train = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())["set-resources"]["train"]
    for option in ("--gpus=1", f"--mem {train['mem_mb']}", f"-t {train['runtime']}",
                   f"--cpus-per-task={train['cpus_per_task']}"):
        assert option in call, (option, call)
    table = SimpleNamespace(resources=_Resources(planned_resources(plan)["table"][0]), threads=1)
    assert set_gres_string(table) == ""
