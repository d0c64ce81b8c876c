"""The `dmlrepro` command: one subcommand per pipeline stage, each reading params.yaml.

Snakemake rules and DVC stages both call these subcommands, so the two front ends run the same
code and write the same files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import DEFAULT_PARAMS, check_defined, dataset_dir, features_path, load_params, run_dir
from .errors import DmlReproError


def _device(params: dict, override: str | None) -> str:
    from .backbones import resolve_device

    return resolve_device(override or params["device"])


def cmd_prepare(params: dict, args) -> None:
    from .data import prepare_dataset

    check_defined(params, "datasets", args.dataset)
    summary = prepare_dataset(args.dataset, params["datasets"][args.dataset], dataset_dir(params, args.dataset))
    print(json.dumps(summary.get("counts", summary), indent=2, default=str))


def cmd_extract(params: dict, args) -> None:
    from .features import extract_features

    summary = extract_features(dataset_dir(params, args.dataset), params["backbone"], params["extract"],
                               features_path(params, args.dataset), device=_device(params, args.device))
    print(json.dumps(summary, indent=2, default=str))


def cmd_train(params: dict, args) -> None:
    from .train import train_run

    summary = train_run(params, args.dataset, args.method, args.seed,
                        run_dir(params, args.dataset, args.method, args.seed), _device(params, args.device))
    print(json.dumps(summary, indent=2))


def cmd_evaluate(params: dict, args) -> None:
    from .evaluate_run import evaluate_run

    metrics = evaluate_run(params, args.dataset, args.method, args.seed,
                           run_dir(params, args.dataset, args.method, args.seed), _device(params, args.device))
    print(json.dumps(metrics["test"], indent=2))


def cmd_table(params: dict, args) -> None:
    from .tables import write_table
    from .tracking import log_table

    for path in write_table(params, args.table):
        print(f"wrote {path}")
    if not args.no_mlflow:
        created = log_table(params, args.table)
        print(f"MLflow ({params['mlflow']['tracking_uri']}): {created} new run(s) logged")


def cmd_mlflow_init(params: dict, args) -> None:
    from .tracking import init_store

    init_store(params["mlflow"]["tracking_uri"])


def cmd_validate(params: dict, args) -> None:
    from .tables import load_table

    for ref in params["tables"]:
        load_table(params, ref)
    print("params and table declarations are valid")


def cmd_list(params: dict, args) -> None:
    from .backbones import BACKBONES
    from .data import DATASETS
    from .losses import LOSSES, MINERS

    registries = {"backbones": BACKBONES, "losses": LOSSES, "miners": MINERS, "dataset-kinds": DATASETS}
    if args.what == "methods":
        for name, m in params["methods"].items():
            print(f"{name}: {m['loss']}" + (f" + miner {m['miner']}" if m.get("miner") else ""))
        return
    print("\n".join(registries[args.what].names()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmlrepro", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(fn=fn)
        return p

    add("prepare", cmd_prepare, "build a dataset's images and manifest").add_argument("--dataset", required=True)
    p = add("extract", cmd_extract, "cache frozen backbone features of a prepared dataset")
    p.add_argument("--dataset", required=True)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    for name, fn, text in (("train", cmd_train, "train an embedding head on cached features"),
                           ("evaluate", cmd_evaluate, "evaluate a trained run on val and test")):
        p = add(name, fn, text)
        p.add_argument("--dataset", required=True)
        p.add_argument("--method", required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p = add("table", cmd_table, "build a paper table (.md, .csv) and log its runs to MLflow")
    p.add_argument("--table", required=True, help="PAPER/TABLE as listed in params.yaml `tables`")
    p.add_argument("--no-mlflow", action="store_true", help="only write the table files")
    add("mlflow-init", cmd_mlflow_init, "create the MLflow store (before parallel jobs start)")
    add("validate", cmd_validate, "check params.yaml and the table declarations")
    add("list", cmd_list, "list registered components").add_argument(
        "what", choices=["backbones", "losses", "miners", "dataset-kinds", "methods"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        start = time.time()
        args.fn(params, args)
        print(f"dmlrepro {args.command}: done in {time.time() - start:.1f}s", file=sys.stderr)
    except DmlReproError as exc:
        print(f"dmlrepro {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmlrepro {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
