"""Paper tables: a declared table -> Markdown and CSV, our mean ± 95% CI over seeds beside the
published number, one block per selection protocol the table declares."""
from __future__ import annotations

import csv
import io
import math
from html import escape
from pathlib import Path

from .. import atomic
from ..paths import table_paths
from ..study.declarations import PROTOCOLS, Table
from .cells import column_header, metric_value, metrics_file
from .claims import NOT_BUILT, build_command, claims_html, claims_markdown, table_results
from .stats import format_cell, mean_ci


def table_blocks(params: dict, table: Table, partial: bool = False
                 ) -> tuple[list[str], list[tuple[str, list[list[str]]]], list[dict]]:
    """Headers, one (protocol, rows of cell texts) block per protocol, and the CSV records.
    ``partial``: a cell whose runs are not all evaluated reads *not built* instead of stopping."""
    columns = table.decl["columns"]
    headers = ["Method"] + [column_header(c) for c in columns]
    blocks, records = [], []
    for protocol in table.protocols:
        lines = []
        for row in table.rows:
            cells, record = [row.label], {"protocol": protocol, "row": row.label, "method": row.method,
                                          "run": row.runs[columns[0]["dataset"]][0].name}
            for col in columns:
                runs = row.runs[col["dataset"]]
                published = row.published.get(col["key"])
                if partial and not all(metrics_file(params, r).is_file() for r in runs):
                    cells.append(NOT_BUILT + ("" if published is None else f" (paper {published:g})"))
                    record.update({f"{col['key']}_mean": None, f"{col['key']}_ci95": None, f"{col['key']}_n": 0,
                                   f"{col['key']}_published": published})
                    continue
                values = [metric_value(params, r, protocol, col.get("split", "test"), col["metric"]) for r in runs]
                mean, half = mean_ci(values)
                cells.append(format_cell(mean, half, len(values), published))
                record.update({f"{col['key']}_mean": round(100 * mean, 3),
                               f"{col['key']}_ci95": None if math.isnan(half) else round(100 * half, 3),
                               f"{col['key']}_n": len(values), f"{col['key']}_published": published})
            lines.append(cells)
            records.append(record)
        blocks.append((protocol, lines))
    return headers, blocks, records


def _values(runs, get) -> str:
    """The distinct values of one setting over the runs, in run order ("a or b" where rows differ)."""
    return " or ".join(dict.fromkeys(str(get(run.config)) for run in runs))


def settings_line(table: Table) -> str:
    """Our runs' training settings, read from their resolved configurations: the caption gives the
    published setting, this says what ours differs in (backbone, regime, head, schedule)."""
    runs = [run for row in table.rows for runs in row.runs.values() for run in runs
            if "epochs" in run.config["train"]]  # the untrained frozen-backbone row has no schedule
    if not runs:
        return "Ours: the backbone's features, untrained."
    train = lambda key: _values(runs, lambda c: c["train"][key])  # noqa: E731
    backbone = _values(runs, lambda c: c["backbone"]["name"])
    frozen = {run.finetuned for run in runs} == {False}
    model = (f"a linear head to {train('embedding_dim')}-d on frozen {backbone} features" if frozen else
             f"{backbone} fine-tuned end to end ({train('embedding_dim')}-d)")
    lr = train("lr")
    return (f"Ours: {model}; {_epochs(runs)} of {train('iterations_per_epoch')} iterations, batch "
            f"{train('batch_size')} ({train('m_per_class')} per class), {train('optimizer')}, lr {lr}"
            f"{' (per method)' if ' or ' in lr else ''}."
            + (" Columns marked 'stand-in' are embedded datasets shaped like the named benchmark, not the"
               " benchmark itself." if any(col.get("as") for col in table.decl["columns"]) else ""))


def _epochs(runs) -> str:
    """The schedule's length: the most runs' value, then where it differs, by dataset (its
    train_per_dataset) or by method (its own train block): "40 epochs (80 on glyphs_sop; 60 for proxy_anchor)"."""
    epochs = [run.config["train"]["epochs"] for run in runs]
    usual = max(dict.fromkeys(epochs), key=epochs.count)
    by_dataset: dict = {}
    for run in runs:
        by_dataset.setdefault(run.dataset, set()).add(run.config["train"]["epochs"])
    datasets = {d: v.pop() for d, v in by_dataset.items() if len(v) == 1 and usual not in v}
    methods = {run.method: run.config["train"]["epochs"] for run in runs
               if run.dataset not in datasets and run.config["train"]["epochs"] != usual}
    unusual = [f"{e} on {d}" for d, e in datasets.items()] + [f"{e} for {m}" for m, e in methods.items()]
    return f"{usual} epochs" + (f" ({'; '.join(unusual)})" if unusual else "")


def _legend(table: Table, partial: bool = False) -> str:
    text = (f"{settings_line(table)} Seeds {table.seeds}; mean ± 95% CI half-width (Student t) over seeds, in %; "
            "n = seeds per cell; 'paper' = the published number.")
    if partial:
        text += f" A partial build: '{NOT_BUILT}' cells have runs still to train or evaluate (`{build_command(table)}`)."
    return text


def _notes(table: Table) -> list[str]:
    return [" ".join(note.split()) for note in table.decl.get("notes", [])]


def render_markdown(table: Table, headers, blocks, claims=(), partial: bool = False) -> str:
    lines = [f"# {table.ref}", "", table.caption, "", _legend(table, partial), ""]
    for protocol, rows in blocks:
        lines += [f"## Protocol: {protocol} ({PROTOCOLS[protocol]})", "",
                  "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                  *("| " + " | ".join(cells) + " |" for cells in rows), ""]
    if _notes(table):
        lines += ["Notes:", "", *(f"{i}. {note}" for i, note in enumerate(_notes(table), 1)), ""]
    if claims:
        lines += [claims_markdown(list(claims))]
    return "\n".join(lines)


def render_html(table: Table, headers, blocks, claims=(), partial: bool = False) -> str:
    """A self-contained page (the Snakemake report shows it inline)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(table.ref)}</title><style>"
             "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}th{background:#f3f3f3}</style></head><body>",
             f"<h2>{escape(table.ref)}</h2><p>{escape(table.caption)}</p><p><small>{escape(_legend(table, partial))}</small></p>"]
    for protocol, rows in blocks:
        parts.append(f"<h3>Protocol: {escape(protocol)} ({escape(PROTOCOLS[protocol])})</h3><table><tr>"
                     + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>" for cells in rows]
        parts.append("</table>")
    if _notes(table):
        parts.append("<p>Notes:</p><ol>" + "".join(f"<li>{escape(n)}</li>" for n in _notes(table)) + "</ol>")
    if claims:
        parts.append(claims_html(list(claims)))
    return "".join(parts) + "</body></html>\n"


def build_table(params: dict, table: Table, partial: bool = False) -> tuple[str, str, str]:
    """Return (markdown, csv, html) text for one declared table; values in percent. ``partial``:
    cells and claims whose runs are not all evaluated say *not built* (a table built column by column)."""
    headers, blocks, records = table_blocks(params, table, partial)
    claims = table_results(params, table)  # a claim whose runs are not all evaluated is "not built"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return (render_markdown(table, headers, blocks, claims, partial), buf.getvalue(),
            render_html(table, headers, blocks, claims, partial))


def write_table(params: dict, table: Table, partial: bool = False) -> list[Path]:
    texts = build_table(params, table, partial)
    paths = table_paths(params, table.paper, table.name)
    for path, text in zip(paths, texts):
        atomic.write_text(path, text)
    return list(paths)
