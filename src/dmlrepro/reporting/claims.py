"""Our side of each claim: the per-seed paired difference (method minus base, same seed, same
features), its mean and 95 % Student-t interval, and a verdict computed from where the interval
lies against the published direction:

  same direction  the interval lies wholly on the published side of 0
  opposite        it lies wholly on the other side
  unresolved      it contains 0 (or one seed only: no interval)

Differences are in points (percent). A claim whose runs are not all evaluated is *not built*.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

from .. import atomic
from ..paths import claims_paths
from ..errors import DmlReproError
from ..study.claims import Claim
from ..study.declarations import Study, Table
from .cells import column_header, metric_value
from .stats import mean_ci

SAME, OPPOSITE, UNRESOLVED, NO_CHANGE, NOT_BUILT = (
    "same direction", "opposite", "unresolved", "no published change", "not built")


def verdict(published_difference: float, low: float, high: float) -> str:
    """Where the interval [low, high] of our difference lies against the published direction."""
    if published_difference == 0:
        return NO_CHANGE
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return UNRESOLVED
    return SAME if (low > 0) == (published_difference > 0) else OPPOSITE


@dataclass
class ClaimResult:
    claim: Claim
    protocol: str
    differences: dict[int, float] | None = None  # seed -> ours (points); None when not built
    reason: str = ""  # why it is not built
    runs_missing: bool = True  # (when not built) because runs are not evaluated, not a declaration's fault

    @property
    def built(self) -> bool:
        return self.differences is not None

    @property
    def n(self) -> int:
        return len(self.differences or {})

    @property
    def mean_ci(self) -> tuple[float, float]:
        return mean_ci(list(self.differences.values())) if self.built else (math.nan, math.nan)

    @property
    def interval(self) -> tuple[float, float]:
        mean, half = self.mean_ci
        return mean - half, mean + half

    @property
    def verdict(self) -> str:
        return verdict(self.claim.published_difference, *self.interval) if self.built else NOT_BUILT

    @property
    def ratio(self) -> float:
        """Our mean difference over the published one."""
        pub = self.claim.published_difference
        return self.mean_ci[0] / pub if self.built and pub else math.nan

    def verdict_text(self) -> str:
        where = f" (on the {self.claim.stand_in} stand-in)" if self.claim.stand_in else ""
        return self.verdict + where if self.built else f"{NOT_BUILT}: {self.reason}"


def _values_by_seed(params: dict, runs, protocol: str, column: dict) -> dict[int, float]:
    return {r.seed: metric_value(params, r, protocol, column.get("split", "test"), column["metric"]) for r in runs}


def paired(params: dict, claim: Claim, protocol: str) -> ClaimResult:
    """The claim's per-seed differences under one protocol (a training-free base, one run whatever
    the seed, is paired with every seed of the method)."""
    dataset = claim.column["dataset"]
    try:
        base = _values_by_seed(params, claim.base.runs[dataset], protocol, claim.column)
        method = _values_by_seed(params, claim.method.runs[dataset], protocol, claim.column)
    except DmlReproError as exc:
        return ClaimResult(claim, protocol, reason=str(exc).split(";")[0])
    if len(base) == 1 and len(method) > 1:
        base = dict.fromkeys(method, next(iter(base.values())))
    seeds = sorted(set(base) & set(method))
    if not seeds:
        return ClaimResult(claim, protocol, reason=f"the two rows share no seed ({sorted(base)} vs {sorted(method)})",
                           runs_missing=False)
    return ClaimResult(claim, protocol, {s: 100 * (method[s] - base[s]) for s in seeds})


def table_results(params: dict, table: Table) -> list[ClaimResult]:
    return [paired(params, c, p) for p in table.protocols for c in table.claims]


def build_command(table: Table) -> str:
    return f"snakemake --cores all {Path('results/tables') / table.paper / table.name}.md"


def paper_results(study: Study, paper: str) -> list[ClaimResult]:
    """Every claim of every table of a paper; those whose runs are not evaluated say why, where the
    table declares it (`unbuilt:`), and how to build them."""
    results = []
    for table in (t for t in study.tables.values() if t.paper == paper and t.claims):
        for result in table_results(study.params, table):
            if not result.built and result.runs_missing:  # the column's declared reason, if any (the
                # stand-in's on the stand-in, the benchmark's on real data), and the command
                why = table.decl.get("unbuilt", {}).get(result.claim.column["dataset"])
                how = f"run `{build_command(table)}`"
                result.reason = f"{why}. To build it, {how}" if why else how
            results.append(result)
    return results


# -- rendering -------------------------------------------------------------------------------------

HEADERS = ["Table", "Method vs base", "Column", "Protocol", "Published (base -> method)", "Published diff",
           "Ours diff (95% CI)", "n", "Ours / published", "Verdict"]


def _fmt(x: float, digits: int = 2, sign: bool = True) -> str:
    return "-" if math.isnan(x) else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def _cells(r: ClaimResult) -> list[str]:
    c = r.claim
    mean, half = r.mean_ci
    ours = "-" if not r.built else _fmt(mean) + ("" if math.isnan(half) else f" [{_fmt(mean - half)}, {_fmt(mean + half)}]")
    return [f"{c.paper}/{c.table}", f"{c.method.label} vs {c.base.label}", column_header(c.column), r.protocol,
            f"{c.published_base:g} -> {c.published_method:g}", _fmt(c.published_difference),
            ours, str(r.n) if r.built else "-", _fmt(r.ratio, 2, sign=False), r.verdict_text()]


def records(results: list[ClaimResult]) -> list[dict]:
    out = []
    for r in results:
        c, (mean, half), (low, high) = r.claim, r.mean_ci, r.interval
        out.append({"paper": c.paper, "table": c.table, "base": c.base.label, "method": c.method.label,
                    "column": c.column["key"], "dataset": c.column["dataset"], "stand_in_for": c.stand_in or "",
                    "metric": c.column["metric"], "split": c.column.get("split", "test"), "protocol": r.protocol,
                    "published_base": c.published_base, "published_method": c.published_method,
                    "published_diff": round(c.published_difference, 4), "source": c.source,
                    "ours_diff": None if not r.built else round(mean, 4),
                    "ci95_low": None if math.isnan(low) else round(low, 4),
                    "ci95_high": None if math.isnan(high) else round(high, 4), "n": r.n,
                    "per_seed": " ".join(f"{s}:{d:.4f}" for s, d in (r.differences or {}).items()),
                    "ratio": None if math.isnan(r.ratio) else round(r.ratio, 4), "verdict": r.verdict,
                    "note": r.reason})
    return out


LEGEND = ("A claim is a published improvement (method row minus base row, in points). Ours is the paired "
          "difference per seed (same seed, same features), its mean and 95% Student-t interval; n = seeds. "
          "Verdict: 'same direction' = the interval lies on the published side of 0, 'opposite' = on the "
          "other side, 'unresolved' = it contains 0. Columns on an embedded stand-in are labelled so.")


def claims_markdown(results: list[ClaimResult], title: str | None = None) -> str:
    lines = [f"## {title}" if title else "## Claims", "", LEGEND, "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def claims_html(results: list[ClaimResult], title: str = "Claims") -> str:
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in results)
    return (f"<h3>{escape(title)}</h3><p><small>{escape(LEGEND)}</small></p><table><tr>"
            + "".join(f"<th>{escape(h)}</th>" for h in HEADERS) + f"</tr>{rows}</table>")


def claims_csv(results: list[ClaimResult]) -> str:
    recs = records(results)
    buf = io.StringIO()
    fields = list(recs[0]) if recs else ["paper", "table", "verdict"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(recs)
    return buf.getvalue()


def write_claims_page(study: Study, paper: str) -> tuple[list[Path], list[ClaimResult]]:
    if not study.claims_of(paper):
        raise DmlReproError(f"paper {paper!r} declares no claims (papers with claims: "
                            f"{', '.join(sorted({c.paper for t in study.tables.values() for c in t.claims}))})")
    results = paper_results(study, paper)
    title = study.papers[paper].get("title", paper)
    counts = {v: sum(r.verdict == v for r in results) for v in (SAME, OPPOSITE, UNRESOLVED, NOT_BUILT)}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    md = f"# Claims: {title}\n\n{len(results)} claims: {summary}.\n\n" + claims_markdown(results, "Every claim")
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>Claims: " + escape(paper) + "</title><style>"
            "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
            "padding:4px 8px}th{background:#f3f3f3}</style></head><body>"
            f"<h2>Claims: {escape(title)}</h2><p>{len(results)} claims: {escape(summary)}.</p>"
            + claims_html(results, "Every claim") + "</body></html>\n")
    paths = claims_paths(study.params, paper)
    for path, text in zip(paths, (md, claims_csv(results), html)):
        atomic.write_text(path, text)
    return list(paths), results

