"""A paper's claims as data: a published improvement is a pair of rows of one table (base, method),
a column, and the published values of both rows in that column.

Declared under a table (``claims:``), each item names the two rows by label; the published values
come from where they are already written, so no number is typed twice:

- the two rows' own ``published:`` values (default: every column where both have one);
- ``published_from: {table, base, method, columns: {ours: theirs}}``: another table of the same
  paper (e.g. the glyphs table takes its CUB stand-in claims from Table III's CUB column);
- ``published: {column: [base, method]}``: where no row can carry them (an abstract's pair).

Our side (the per-seed paired difference and its verdict) is computed by
:mod:`dmlrepro.reporting.claims`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import DmlReproError

if TYPE_CHECKING:  # annotations only: declarations imports this module
    from .declarations import Row


@dataclass(frozen=True)
class Claim:
    paper: str
    table: str
    base: "Row"
    method: "Row"
    column: dict  # the table's column declaration (key, dataset, metric, split, as, header)
    published_base: float
    published_method: float
    source: str  # where the published pair is written
    stand_in: str | None  # the real benchmark the column's dataset stands in for (None on real data)

    @property
    def published_difference(self) -> float:
        return self.published_method - self.published_base

    @property
    def id(self) -> str:
        return f"{self.paper}/{self.table}: {self.method.label} vs {self.base.label} [{self.column['key']}]"


def _rows_by_label(rows: list, where: str, role: str, label: str):
    found = {r.label if hasattr(r, "label") else r["label"]: r for r in rows}
    if label not in found:
        raise DmlReproError(f"{where}: {role} row {label!r} is not a row of the table (rows: {', '.join(found)})")
    return found[label]


def _published_elsewhere(paper_decl: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> tuple[dict, dict]:
    """{our column key: (base value, method value)} from another table's rows, and {our column key:
    the benchmark that table's column stands in for}."""
    tables = paper_decl.get("tables", {})
    if spec["table"] not in tables:
        raise DmlReproError(f"{where}: published_from table {spec['table']!r} is not declared in this file "
                            f"(tables: {', '.join(tables)})")
    other = tables[spec["table"]]
    where_other = f"{where} published_from {spec['table']}"
    base = _rows_by_label(other["rows"], where_other, "base", spec["base"]).get("published", {})
    method = _rows_by_label(other["rows"], where_other, "method", spec["method"]).get("published", {})
    keys = {c["key"]: c for c in other["columns"]}
    out, stand_ins = {}, {}
    for ours, theirs in spec["columns"].items():
        if theirs not in keys:
            raise DmlReproError(f"{where_other}: column {theirs!r} is not a column of that table "
                                f"(columns: {', '.join(sorted(keys))})")
        out[ours], stand_ins[ours] = (base.get(theirs), method.get(theirs)), keys[theirs].get("as")
    return out, stand_ins


def expand_claims(paper: str, table: str, paper_decl: Mapping[str, Any], tdecl: Mapping[str, Any],
                  rows: list, where: str) -> list[Claim]:
    """The claims a table declares, one per (pair of rows, column); raise naming what is unknown."""
    columns = {c["key"]: c for c in tdecl["columns"]}
    claims = []
    for i, spec in enumerate(tdecl.get("claims", [])):
        at = f"{where} claims[{i}]"
        base = _rows_by_label(rows, at, "base", spec["base"])
        method = _rows_by_label(rows, at, "method", spec["method"])
        stand_ins: dict = {}
        if spec.get("published_from"):
            pairs, stand_ins = _published_elsewhere(paper_decl, spec["published_from"], at)
            source = f"{paper}/{spec['published_from']['table']}"
        elif spec.get("published"):
            pairs, source = {k: tuple(v) for k, v in spec["published"].items()}, f"{paper}/{table} claims"
        else:
            pairs = {k: (base.published.get(k), method.published.get(k)) for k in columns}
            source = f"{paper}/{table}"
        unknown = sorted((set(spec.get("columns", [])) | set(pairs)) - set(columns))
        if unknown:
            raise DmlReproError(f"{at}: unknown columns {unknown} (columns: {', '.join(columns)})")
        wanted = spec.get("columns") or [k for k in columns if k in pairs and None not in pairs[k]]
        missing = [k for k in wanted if None in pairs.get(k, (None,))]
        if missing or not wanted:
            raise DmlReproError(f"{at}: no published pair ({spec['base']!r}, {spec['method']!r}) for columns "
                                f"{missing or list(columns)} in {source}; give `published_from` or `published`")
        claims += [Claim(paper, table, base, method, columns[k], float(pairs[k][0]), float(pairs[k][1]), source,
                         columns[k].get("as") or stand_ins.get(k)) for k in wanted]
    return claims
