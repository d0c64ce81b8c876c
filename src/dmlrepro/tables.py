"""Paper tables: a declarative file per paper -> Markdown and CSV with mean, 95% CI and published values."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from . import atomic
from .config import run_dir, table_paths
from .errors import DmlReproError

# Two-sided 95% Student-t critical values by degrees of freedom (no scipy dependency).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_critical(df: int) -> float:
    if df >= 60:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval of the mean (nan half-width for n < 2)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_critical(n - 1) * sd / math.sqrt(n)


def paper_path(params: dict, paper: str) -> Path:
    return Path(params["paths"]["papers"]) / f"{paper}.yaml"


def load_paper(params: dict, paper: str) -> dict:
    """Read and check a paper's table declaration against the schema and params.yaml."""
    import jsonschema

    path = paper_path(params, paper)
    if not path.is_file():
        raise DmlReproError(f"table declaration {path} not found (params.yaml `tables` lists {paper!r})")
    decl = yaml.safe_load(path.read_text("utf-8"))
    schema = json.loads(resources.files("dmlrepro").joinpath("schema/paper.schema.json").read_text("utf-8"))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(decl)]
    for name, table in (decl or {}).get("tables", {}).items() if not errors else ():
        for col in table["columns"]:
            if col["dataset"] not in params["experiment"]["datasets"]:
                errors.append(f"tables.{name}: column {col['key']!r} uses dataset {col['dataset']!r}, "
                              f"which is not in params.yaml experiment.datasets")
        for row in table["rows"]:
            if row["method"] not in params["experiment"]["methods"]:
                errors.append(f"tables.{name}: row {row['label']!r} uses method {row['method']!r}, "
                              f"which is not in params.yaml experiment.methods")
    if errors:
        raise DmlReproError(f"invalid table declaration {path}:\n" + "\n".join(f"  - {e}" for e in errors))
    return decl


def parse_table_ref(ref: str) -> tuple[str, str]:
    """'paper/table' -> (paper, table)."""
    paper, _, table = ref.partition("/")
    if not paper or not table:
        raise DmlReproError(f"table reference {ref!r} must look like PAPER/TABLE, e.g. baselines/glyphs")
    return paper, table


def load_table(params: dict, ref: str) -> tuple[str, str, dict]:
    paper, name = parse_table_ref(ref)
    decl = load_paper(params, paper)
    if name not in decl["tables"]:
        raise DmlReproError(f"{paper_path(params, paper)} declares no table {name!r} "
                            f"(declared: {', '.join(decl['tables'])})")
    return paper, name, decl["tables"][name]


@dataclass(frozen=True)
class RunRef:
    dataset: str
    method: str
    seed: int


def table_runs(params: dict, table: dict) -> list[RunRef]:
    datasets = list(dict.fromkeys(c["dataset"] for c in table["columns"]))
    methods = list(dict.fromkeys(r["method"] for r in table["rows"]))
    return [RunRef(d, m, s) for m in methods for d in datasets for s in params["experiment"]["seeds"]]


def table_inputs(params: dict, ref: str) -> list[str]:
    """Files a table is built from (its Snakemake inputs)."""
    _, _, table = load_table(params, ref)
    files = []
    for r in table_runs(params, table):
        d = run_dir(params, r.dataset, r.method, r.seed)
        files += [str(d / "metrics.json"), str(d / "history.json")]
    return files


def read_metrics(params: dict, ref: RunRef) -> dict:
    path = run_dir(params, ref.dataset, ref.method, ref.seed) / "metrics.json"
    if not path.exists():
        raise DmlReproError(f"{path} is missing; run `dmlrepro evaluate --dataset {ref.dataset} "
                            f"--method {ref.method} --seed {ref.seed}` (or the whole pipeline) first")
    return json.loads(path.read_text("utf-8"))


def _fmt(mean: float, half: float) -> str:
    return f"{100 * mean:.1f}" if math.isnan(half) else f"{100 * mean:.1f} ± {100 * half:.1f}"


def build_table(params: dict, paper: str, name: str, table: dict) -> tuple[str, str]:
    """Return (markdown, csv) text for one declared table; values in percent."""
    split = table.get("split", "test")
    seeds = params["experiment"]["seeds"]
    md_rows, csv_rows = [], []
    for row in table["rows"]:
        cells, record = [row["label"]], {"row": row["label"], "method": row["method"]}
        for col in table["columns"]:
            values = [read_metrics(params, RunRef(col["dataset"], row["method"], s))[split][col["metric"]]
                      for s in seeds]
            mean, half = mean_ci95(values)
            published = row.get("published", {}).get(col["key"])
            cell = _fmt(mean, half) + (f" ({published:g})" if published is not None else "")
            cells.append(cell)
            record.update({f"{col['key']}_mean": round(100 * mean, 3),
                           f"{col['key']}_ci95": None if math.isnan(half) else round(100 * half, 3),
                           f"{col['key']}_n": len(values), f"{col['key']}_published": published})
        md_rows.append("| " + " | ".join(cells) + " |")
        csv_rows.append(record)
    headers = ["Method"] + [f"{c['dataset']} {c.get('header', c['metric'])}" for c in table["columns"]]
    has_published = any(r.get("published") for r in table["rows"])
    md = "\n".join([
        f"# {paper}: {name}", "",
        (table.get("caption", "") + "\n").strip(), "",
        f"Split: {split}; {len(seeds)} seeds {seeds}; mean ± 95% CI half-width, in %."
        + (" Published value in parentheses." if has_published else ""), "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *md_rows, "",
    ])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(csv_rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    return md, buf.getvalue()


def write_table(params: dict, ref: str) -> list[Path]:
    paper, name, table = load_table(params, ref)
    md, csv_text = build_table(params, paper, name, table)
    md_path, csv_path = table_paths(params, paper, name)
    atomic.write_text(md_path, md)
    atomic.write_text(csv_path, csv_text)
    return [md_path, csv_path]
