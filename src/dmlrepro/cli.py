"""The `dmlrepro` command: one subcommand per pipeline stage, each reading params.yaml.

Snakemake rules and DVC stages both call these subcommands, so the two front ends run the same
code and write the same files. Runs are named by their id (`dmlrepro list runs`), e.g.
glyphs/efficientnet_lite0/triplet/seed0; features by dataset/backbone[-hash].
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import DEFAULT_PARAMS, check_defined
from .study.params import load_params
from .errors import DmlReproError


def _study(params: dict):
    from .study import load_study

    return load_study(params)


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def cmd_prepare(params: dict, args) -> None:
    from .stages.prepare import prepare

    check_defined(params, "datasets", args.dataset)
    _study(params)  # the whole study is valid before any work (`dvc repro` runs this stage first)
    summary = prepare(params, args.dataset)
    print(json.dumps(summary.get("counts", summary), indent=2, default=str))


def _features(study, feature_id: str):
    found = {r.features.id: r.features for r in study.runs.values()}
    if feature_id not in found:
        raise DmlReproError(f"no declared run uses features {feature_id!r}; declared: {', '.join(sorted(found))}")
    return found[feature_id]


def cmd_extract(params: dict, args) -> None:
    from .stages.extract import extract

    summary = extract(params, _features(_study(params), args.features), args.device)
    print(json.dumps(summary, indent=2, default=str))


def cmd_train(params: dict, args) -> None:
    from .stages.train import train

    if bool(args.run) == bool(args.run_id):
        raise DmlReproError("name the run once: `dmlrepro train --run RUN` or `dmlrepro train RUN`")
    study = _study(params)
    run = study.run(args.run or args.run_id)
    # the flag, or what the declarations and params.yaml ask now (a `dvc exp run -S` cannot change the flag)
    every_epoch = args.test_every_epoch or study.needs[run.id].test_every_epoch
    summary = train(params, run, args.device, test_every_epoch=every_epoch, record=not args.no_mlflow)
    print(json.dumps(summary, indent=2))


def cmd_evaluate(params: dict, args) -> None:
    from .stages.evaluate import evaluate

    study = _study(params)
    run = study.run(args.run)
    needs = study.needs[run.id]
    metrics, run_id = evaluate(params, run, args.device, nmi=args.nmi or needs.nmi,
                               paper_protocol=args.paper_protocol or needs.test_every_epoch,
                               last_epoch=args.last_epoch or needs.last_epoch, record=not args.no_mlflow)
    print(json.dumps({k: v for k, v in metrics.items() if k != "val" and isinstance(v, dict)}, indent=2))
    if run_id:
        print(f"MLflow ({params['mlflow']['tracking_uri']}): metrics.json logged to training run {run_id}")


def _report_written(params: dict, paths: list, logged: int | None, experiment: str) -> None:
    for path in paths:
        print(f"wrote {path}")
    if logged is not None:
        print(f"MLflow ({params['mlflow']['tracking_uri']}): {_entries(logged)} of experiment {experiment} "
              f"logged (new or updated)")


def cmd_table(params: dict, args) -> None:
    from .stages.table import table

    target = _study(params).table(args.table)
    _report_written(params, *table(params, target, record=not args.no_mlflow, partial=args.partial), target.ref)


def cmd_figure(params: dict, args) -> None:
    from .stages.figure import figure

    target = _study(params).sweep(args.figure)
    _report_written(params, *figure(params, target, record=not args.no_mlflow), target.ref)


def cmd_claims(params: dict, args) -> None:
    from .reporting.table_record import CLAIMS_EXPERIMENT
    from .stages.claims import claims

    paths, results, logged = claims(_study(params), args.paper, record=not args.no_mlflow)
    for result in results:
        print(f"{result.claim.id} ({result.protocol}): {result.verdict}")
    _report_written(params, paths, logged, CLAIMS_EXPERIMENT.format(paper=args.paper))


def cmd_mlflow_init(params: dict, args) -> None:
    from .reporting.store import init_store, lock_wait

    init_store(params["mlflow"]["tracking_uri"], lock_wait(params))


def cmd_validate(params: dict, args) -> None:
    study = _study(params)
    tables, sweeps = study.selected()
    print(f"params and declarations are valid: {len(study.tables)} tables, {len(study.sweeps)} figures, "
          f"{len(study.runs)} runs declared; selected {len(tables)} tables and {len(sweeps)} figures, "
          f"{len(study.runs_of(tables, sweeps))} runs")


def cmd_list(params: dict, args) -> None:
    from .backbones import BACKBONES
    from .data import DATASETS
    from .methods import LOSSES, MINERS

    if args.what == "runs":
        return _list_runs(params, args)
    if args.what == "methods":
        for name, m in params["methods"].items():
            print(f"{name}: {m['loss']}" + (f" + miner {m['miner']}" if m.get("miner") else "")
                  + "".join(f" + {w}" for key in ("augmenter", "regularizer") for w in m.get(key) or {}))
        return
    if args.what == "tables":
        study = _study(params)
        print("\n".join([*(f"table  {r}" for r in study.tables), *(f"figure {r}" for r in study.sweeps)]))
        return
    if args.what == "dataset-kinds":
        for kind in DATASETS.names():
            meta = DATASETS.metadata(kind)
            entries = [f"{n}" + ("" if e.get("root") or kind == "glyphs" else " (no root set)")
                       for n, e in params["datasets"].items() if e.get("kind") == kind]
            where = meta.get("published_at") or f"stand-in for {meta.get('stand_in_for', '')}"
            print(f"{kind:10s} {meta['protocol']:28s} R@{','.join(map(str, meta.get('ks') or params['evaluation']['ks']))}"
                  f"  {where}\n{'':10s} params.yaml: {', '.join(entries) or '(none)'}")
        return
    registries = {"backbones": BACKBONES, "losses": LOSSES, "miners": MINERS}
    print("\n".join(registries[args.what].names()))


def _list_runs(params: dict, args) -> None:
    """What a target trains: one line per run, with its config hash and whether it exists."""
    study = _study(params)
    if args.table:
        if args.table in study.tables:
            runs = study.table(args.table).runs()
        elif args.table in study.sweeps:
            runs = study.sweep(args.table).runs()
        else:
            raise DmlReproError(f"no table or figure {args.table!r} is declared; declared: "
                                f"{', '.join(sorted([*study.tables, *study.sweeps]))}")
    else:
        runs = study.runs_of(*study.selected())
    done = 0
    for run in runs:
        metrics = run.dir(params) / "metrics.json"
        state = "missing"
        if (run.dir(params) / "model.pt").exists():
            state = "trained"
        if metrics.exists() and _read_json(metrics, run, "evaluate").get("config_hash") == run.hash:
            state, done = "evaluated", done + 1
        needs = study.needs[run.id]
        flags = " ".join(filter(None, [needs.train_flags(), needs.evaluate_flags()]))
        print(f"{run.id:60s} {run.hash}  {state:9s} {flags}")
    print(f"{len(runs)} runs, {done} evaluated, {len(runs) - done} to train or evaluate", file=sys.stderr)


def _read_json(path: Path, run, job: str) -> dict:
    from .readers import read_json

    data = read_json(path, "metrics file", f"dmlrepro {job} --run {run.id}")
    return data if isinstance(data, dict) else {}


def cmd_dvc_yaml(params: dict, args) -> None:
    from .study.dvc_yaml import render_dvc_yaml

    text = render_dvc_yaml(_study(params))
    path = Path(args.output)
    if args.check:
        if not path.is_file() or path.read_text("utf-8") != text:
            raise DmlReproError(f"{path} is stale: it does not match params.yaml and the paper declarations; "
                                f"regenerate it with `dmlrepro dvc-yaml` and commit it")
        print(f"{path} is up to date")
        return
    from .atomic import write_text

    write_text(path, text)
    print(f"wrote {path} ({text.count(chr(10))} lines)")


def cmd_dvc_commit(params: dict, args) -> None:
    """Record what Snakemake built in dvc.lock, so DVC reruns only what changes afterwards."""
    import shutil
    import subprocess

    from .study.dvc_yaml import render_dvc_yaml

    if not Path(".dvc").is_dir() or shutil.which("dvc") is None:
        print("no DVC repository here (or no dvc command): nothing to record")
        return
    if not Path("dvc.yaml").is_file() or Path("dvc.yaml").read_text("utf-8") != render_dvc_yaml(_study(params)):
        raise DmlReproError("dvc.yaml does not match params.yaml and the declarations, so DVC would record other "
                            "stages; run `dmlrepro dvc-yaml`, then `dvc commit --force`")
    stages, unrecordable = ([], []) if args.all else _built_stages(params)  # [] when all are built: one fast call
    if unrecordable:
        print(f"dmlrepro: {len(unrecordable)} stage(s) have their outputs but not all their inputs (e.g. committed "
              f"metrics whose model is not in this clone), so DVC cannot record them: {_listed(unrecordable)}; "
              "`make pull` fetches what the DVC remote holds")
    if stages is None:
        print("nothing dvc.yaml versions is built yet (a target outside params.yaml's `tables:`/`figures:`, "
              "which DVC does not version: add it there and run `dmlrepro dvc-yaml` to version it)")
        return
    # DVC re-links the files it caches, which renews their modification times; Snakemake would then
    # see features newer than models and rerun everything, so the times are put back.
    times = _modification_times(Path(params["paths"]["data"]), Path("results"))
    # not --quiet: it silences DVC's own error message too
    result = subprocess.run(["dvc", "commit", "--force", *stages], capture_output=True, text=True)
    for path, (atime, mtime) in times.items():
        try:
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        except FileNotFoundError:
            pass
    if result.returncode != 0:
        raise DmlReproError(f"`dvc commit` failed: {result.stderr.strip() or result.stdout.strip()}")
    print(f"recorded {len(stages) or 'all'} stage(s) in dvc.lock")


def _modification_times(*roots: Path) -> dict:
    times = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for path in [folder, *(os.path.join(folder, f) for f in files)]:
                st = os.lstat(path)
                times[path] = (st.st_atime_ns, st.st_mtime_ns)
    return times


def _built_stages(params: dict) -> tuple[list[str] | None, list[str]]:
    """The dvc.yaml stages DVC can record after a (possibly partial) Snakemake build: those whose outputs
    and inputs all exist. Second, those with outputs but a missing input, which `dvc commit` refuses: an
    evaluation whose metrics came with the repository while its model did not."""
    import yaml

    stages = yaml.safe_load(Path("dvc.yaml").read_text("utf-8"))["stages"]
    built, unrecordable = [], []
    for name, stage in stages.items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics") for o in stage.get(key, [])]
        if all(Path(o).exists() for o in outs):
            (built if all(Path(d).exists() for d in stage.get("deps", [])) else unrecordable).append(name)
    if not built:
        return None, unrecordable
    # DVC handles named targets one by one (about a second each); all of them is one call
    return ([] if len(built) == len(stages) else built), unrecordable


def _listed(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def cmd_share(params: dict, args) -> None:
    from . import sharing

    getattr(sharing, args.command)(Path("."), args.remote)


def cmd_schema(params: dict, args) -> None:
    from .config import schema
    from .schemas import generated_params_schema

    path = Path("workflow/schemas/params.schema.json")
    text = json.dumps(generated_params_schema(schema()), indent=2) + "\n"
    if args.check:
        if path.read_text("utf-8") != text:
            raise DmlReproError(f"{path} does not match the registries; regenerate it with `dmlrepro schema`")
        print(f"{path} matches the registries")
        return
    from .atomic import write_text

    write_text(path, text)
    print(f"wrote {path}")


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
    p.add_argument("--features", required=True, help="DATASET/BACKBONE[-HASH], as `dmlrepro list runs` uses")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p = add("train", cmd_train, "train a run: a head on cached features, or end to end (regime finetune)")
    p.add_argument("--run", help="run id, e.g. glyphs/efficientnet_lite0/triplet/seed0")
    # torchrun's own parser takes `--run` for its --run-path: under torchrun the id goes positionally
    p.add_argument("run_id", nargs="?", metavar="RUN", help="the run id, positionally (as `torchrun ... -m dmlrepro "
                   "train RUN` needs)")
    p.add_argument("--test-every-epoch", action="store_true",
                   help="also score test each epoch and keep the best-on-test weights (papers' protocol)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-mlflow", action="store_true", help="train without an MLflow run")
    p = add("evaluate", cmd_evaluate, "evaluate a trained run on val and test")
    p.add_argument("--run", required=True)
    p.add_argument("--nmi", action="store_true",
                   help="compute NMI (k-means) too (also on when a declared table shows NMI of this run)")
    p.add_argument("--paper-protocol", action="store_true",
                   help="also evaluate the best-on-test epoch (also on when a declared table asks for it)")
    p.add_argument("--last-epoch", action="store_true",
                   help="also evaluate the last epoch's weights (also on when a declared table asks for it)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-mlflow", action="store_true", help="do not log metrics.json to the training run")
    for name, fn, text in (("table", cmd_table, "build a paper table (.md, .csv) and log its runs to MLflow"),
                           ("figure", cmd_figure, "build a sweep figure (.png, .csv) and log its runs to MLflow")):
        p = add(name, fn, text)
        p.add_argument(f"--{name}", required=True, help="PAPER/NAME as declared in workflow/papers/PAPER.yaml")
        p.add_argument("--no-mlflow", action="store_true", help="only write the files")
        if name == "table":
            p.add_argument("--partial", action="store_true",
                           help="write the cells that are built, the others marked 'not built' (no MLflow record)")
    p = add("claims", cmd_claims, "test a paper's claims (paired differences, verdicts): results/claims/PAPER.*")
    p.add_argument("--paper", required=True, help="a paper of workflow/papers/ that declares claims")
    p.add_argument("--no-mlflow", action="store_true", help="only write the files")
    add("mlflow-init", cmd_mlflow_init, "create the MLflow store (before parallel jobs start)")
    add("validate", cmd_validate, "check params.yaml and every paper declaration")
    p = add("list", cmd_list, "list runs, tables or registered components")
    p.add_argument("what", choices=["runs", "tables", "backbones", "losses", "miners", "dataset-kinds", "methods"])
    p.add_argument("--table", help="with `runs`: only the runs of this PAPER/TABLE (or PAPER/SWEEP)")
    p = add("dvc-yaml", cmd_dvc_yaml, "write dvc.yaml from params.yaml and the declarations")
    p.add_argument("--output", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail if the file is stale instead of writing it")
    p = add("schema", cmd_schema, "regenerate params.schema.json's enums from the registries")
    p.add_argument("--check", action="store_true", help="fail if the schema file is stale instead of writing it")
    p = add("dvc-commit", cmd_dvc_commit, "record a Snakemake build in dvc.lock (the Snakefile's onsuccess does)")
    p.add_argument("--all", action="store_true", help="commit every stage, not only those whose outputs and inputs exist")
    for name, text in (("push", "upload the datasets, features and models dvc.lock records to the DVC remote"),
                       ("pull", "fetch, md5-check, then check out what dvc.lock records (nothing changes on failure)")):
        add(name, cmd_share, text).add_argument("--remote", help="a DVC remote's name (default: the default remote)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # `schema` regenerates what params.yaml is checked against: it must work on a params.yaml
        # the stale schema rejects
        params = None if args.fn is cmd_schema else load_params(args.params)
        start = time.time()
        args.fn(params, args)
        print(f"dmlrepro {args.command}: done in {time.time() - start:.1f}s", file=sys.stderr)
    except DmlReproError as exc:
        print(f"dmlrepro {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmlrepro {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except OSError as exc:  # a file system fault none of the checks caught: name the file
        print(f"dmlrepro {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug: keep its traceback in the log, say where it goes
        import traceback

        traceback.print_exc()
        print(f"dmlrepro {args.command}: internal error (a bug in dmlrepro, not in your input): please report it "
              f"in the project's issue tracker with the command, your params.yaml and the traceback above (under "
              f"Snakemake it is in the job's log)", file=sys.stderr)
        return 3
    return 0


def _os_error(exc: OSError) -> str:
    from .atomic import write_error

    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
        return str(write_error(exc.filename, exc))
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot use{where}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
