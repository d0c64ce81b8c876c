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
from ..study.runs import dataset_train
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


def settings_line(params: dict, table: Table) -> str:
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
    return (f"Ours: {model}; {_epochs(params, table)} of {train('iterations_per_epoch')} iterations, batch "
            f"{train('batch_size')} ({train('m_per_class')} per class), {train('optimizer')}, lr {lr}"
            f"{' (per method)' if ' or ' in lr else ''}."
            + (" Columns marked 'stand-in' are embedded datasets shaped like the named benchmark, not the"
               " benchmark itself." if any(col.get("as") for col in table.decl["columns"]) else ""))


def _epochs(params: dict, table: Table) -> str:
    """The schedule's length: the usual one, then the datasets with their own (train_per_dataset) and
    the rows that differ from their dataset's (a method's own block, on every dataset or on some, a
    declared override): "40 epochs (80 on glyphs_sop; 60 for Proxy-Anchor; 120 for SGAR on glyphs_inshop)"."""
    trained = [(row.label, dataset, run.config["train"]["epochs"]) for row in table.rows
               for dataset, runs in row.runs.items() for run in runs if "epochs" in run.config["train"]]
    blocks = {d: dataset_train(params, d) for d in dict.fromkeys(d for _, d, _ in trained)}
    own = {d: block["epochs"] for d, block in blocks.items()  # (a dataset's schedule some run there trains)
           if "epochs" in block and any(e == block["epochs"] for _, on, e in trained if on == d)}
    plain = [e for _, d, e in trained if d not in own] or [e for *_, e in trained]
    usual = max(dict.fromkeys(plain), key=plain.count)
    by_epochs: dict = {}
    for dataset, epochs in own.items():
        if epochs != usual:
            by_epochs.setdefault(epochs, []).append(dataset)
    notes = [f"{e} on {', '.join(ds)}" for e, ds in by_epochs.items()]
    # the rows that differ: "E for ROW", "... on DATASETS" when the row trains E on some datasets only
    differs: dict = {}
    for label, dataset, epochs in trained:
        if epochs != own.get(dataset, usual):
            differs.setdefault(label, {}).setdefault(epochs, {})[dataset] = None
    datasets_of = {label: {d for lab, d, _ in trained if lab == label} for label in differs}
    for label, by in differs.items():
        for epochs, on in by.items():
            where = "" if set(on) == datasets_of[label] else f" on {', '.join(on)}"
            notes.append(f"{epochs} for {label}{where}")
    return f"{usual} epochs" + (f" ({'; '.join(notes)})" if notes else "")


def _legend(params: dict, table: Table, partial: bool = False) -> str:
    text = (f"{settings_line(params, table)} Seeds {table.seeds}; mean ± 95% CI half-width (Student t) over seeds, in %; "
            "n = seeds per cell; 'paper' = the published number.")
    if partial:
        text += f" A partial build: '{NOT_BUILT}' cells have runs still to train or evaluate (`{build_command(table)}`)."
    return text


def _notes(table: Table) -> list[str]:
    return [" ".join(note.split()) for note in table.decl.get("notes", [])]


def render_markdown(table: Table, legend: str, headers, blocks, claims=()) -> str:
    lines = [f"# {table.ref}", "", table.caption, "", legend, ""]
    for protocol, rows in blocks:
        lines += [f"## Protocol: {protocol} ({PROTOCOLS[protocol]})", "",
                  "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                  *("| " + " | ".join(cells) + " |" for cells in rows), ""]
    if _notes(table):
        lines += ["Notes:", "", *(f"{i}. {note}" for i, note in enumerate(_notes(table), 1)), ""]
    if claims:
        lines += [claims_markdown(list(claims))]
    return "\n".join(lines)


def render_html(table: Table, legend: str, headers, blocks, claims=()) -> str:
    """A self-contained page (the Snakemake report shows it inline)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(table.ref)}</title><style>"
             "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}th{background:#f3f3f3}</style></head><body>",
             f"<h2>{escape(table.ref)}</h2><p>{escape(table.caption)}</p><p><small>{escape(legend)}</small></p>"]
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
    legend = _legend(params, table, partial)
    return (render_markdown(table, legend, headers, blocks, claims), buf.getvalue(),
            render_html(table, legend, headers, blocks, claims))


def write_table(params: dict, table: Table, partial: bool = False) -> list[Path]:
    texts = build_table(params, table, partial)
    paths = table_paths(params, table.paper, table.name)
    for path, text in zip(paths, texts):
        atomic.write_text(path, text)
    return list(paths)
