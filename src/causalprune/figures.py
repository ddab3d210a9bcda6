"""Table rows → figures: accuracy against the budget, paired differences, measured against MACs speed-up.

Every figure is drawn from the rows of a table (`report.table_rows`, or a stored table read
by `rows_from_csv`), never from live runs, so a figure shows exactly the table's numbers:
the mean over seeds with its standard error (std / √n), and the paired differences the
table's "Δ vs ..." columns hold (mean ± SE over paired seeds). The functions that return
the plotted arrays (`accuracy_curves`, `paired_curves`, `speedup_points`) are separate from
the drawing, so tests check the numbers. `report_html` renders tables and figures as one
self-contained page.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: one curve: (budgets, means, standard errors), sorted by budget
Curve = tuple[np.ndarray, np.ndarray, np.ndarray]


def _scale(rows: Sequence[dict[str, Any]]) -> float:
    return 100.0 if rows and rows[0].get("metric", "accuracy") == "accuracy" else 1.0


def is_channel(rows: Sequence[dict[str, Any]]) -> bool:
    """Return whether the rows' budgets are MACs reductions (channel runs) rather than sparsities."""
    return any("MACs" in str(r.get("budget", "")) for r in rows)


def metric_label(rows: Sequence[dict[str, Any]]) -> str:
    """The y-axis label of the rows' metric: ``test accuracy %`` or ``test <metric>``."""
    metric = rows[0].get("metric", "accuracy") if rows else "accuracy"
    return "test accuracy %" if metric == "accuracy" else f"test {metric}"


def budget_label(rows: Sequence[dict[str, Any]]) -> str:
    """The x-axis label: ``MACs reduction (×)`` for channel runs, else ``sparsity``."""
    return "MACs reduction (×)" if is_channel(rows) else "sparsity"


def _curve(points: dict[float, tuple[float, float]]) -> Curve:
    xs = sorted(points)
    return (np.array(xs, dtype=float), np.array([points[x][0] for x in xs], dtype=float),
            np.array([points[x][1] for x in xs], dtype=float))  # fmt: skip


def accuracy_curves(rows: Sequence[dict[str, Any]]) -> dict[str, Curve]:
    """Return method → (budgets, mean final metric, SE = std / √n), accuracy in %, one row per budget."""
    k = _scale(rows)
    out: dict[str, dict[float, tuple[float, float]]] = {}
    for r in rows:
        mean, std = r["final"]
        out.setdefault(r["method"], {})[float(r["sparsity"])] = (k * mean, k * std / math.sqrt(max(int(r["n"]), 1)))
    return {m: _curve(p) for m, p in out.items()}


def paired_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Return the rows' paired-difference keys (``vs_<baseline>``, then ``vs_placebo``) that hold a value."""
    keys = sorted({k for r in rows for k, v in r.items() if k.startswith("vs_") and k != "vs_placebo" and v})
    return keys + (["vs_placebo"] if any(r.get("vs_placebo") for r in rows) else [])


def paired_curves(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Curve]]:
    """Return ``vs_<x>`` → method → (budgets, mean paired difference, its SE), accuracy in % points."""
    k = _scale(rows)
    out: dict[str, dict[str, Curve]] = {}
    for key in paired_keys(rows):
        by_method: dict[str, dict[float, tuple[float, float]]] = {}
        for r in rows:
            p = r.get(key)
            if p:
                by_method.setdefault(r["method"], {})[float(r["sparsity"])] = (k * p[0], k * p[1])
        out[key] = {m: _curve(p) for m, p in by_method.items()}
    return out


def speedup_points(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return method → (MACs speed-up, measured speed-up), one point per budget with both measured."""
    out: dict[str, dict[float, tuple[float, float]]] = {}
    for r in rows:
        macs = r.get("speedup_macs", r.get("theoretical_speedup"))
        if macs is not None and r.get("speedup_measured") is not None:
            out.setdefault(r["method"], {})[float(r["sparsity"])] = (float(macs), float(r["speedup_measured"]))
    return {m: (np.array([p[b][0] for b in sorted(p)]), np.array([p[b][1] for b in sorted(p)]))
            for m, p in out.items()}  # fmt: skip


class _Figures:
    """Figures without pyplot's global state (safe when two grids write tables at once in one process)."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8),
                 squeeze: bool = True) -> tuple[Any, Any]:  # fmt: skip
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)  # the Agg backend, whatever matplotlib's default
        return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _save(fig: Any, folder: Path, name: str, svg: bool) -> list[Path]:
    paths = [folder / f"{name}.png"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")  # "tight": a legend beside the plot is kept
    if svg:
        paths.append(folder / f"{name}.svg")
        fig.savefig(paths[1], bbox_inches="tight")
    return paths


_STYLES = ("-", "--", ":")  # matplotlib's 10 colours, then again dashed, then dotted


def _legend(ax: Any, n: int) -> None:
    if n > 8:  # many methods: beside the plot, not over it
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7)


def _width(n: int) -> float:
    return 3.4 if n > 8 else 0.0


def _title(key: str) -> str:
    return "Δ vs own placebo" if key == "vs_placebo" else f"Δ vs {key[3:]}"


def write_figures(rows: Sequence[dict[str, Any]], folder: Path | str, prefix: str = "", title: str = "",
                  svg: bool = True) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Draw the figures of one experiment's rows into `folder`; return (files written, notes on figures skipped).

    ``<prefix>accuracy``: the final metric against the budget, one line per method, ± SE;
    ``<prefix>paired``: one panel per paired comparison (placebo, reference baselines), ± SE, a zero line;
    ``<prefix>speedup``: measured against MACs speed-up with y = x (channel runs only).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    what = f" ({title})" if title else ""
    if not rows:
        return written, [f"no figures{what}: no rows"]
    plt = _Figures
    curves = accuracy_curves(rows)
    budgets = {float(r["sparsity"]) for r in rows}
    if len(curves) < 2 and len(budgets) < 2:
        notes.append(f"no accuracy figure{what}: one method at one budget")
    else:
        fig, ax = plt.subplots(figsize=(6.4 + _width(len(curves)), 4.4))
        for i, (method, (x, y, se)) in enumerate(curves.items()):
            ax.errorbar(x, y, yerr=se, marker="o", capsize=3, label=method, linestyle=_STYLES[i // 10 % 3])
        ax.set_xlabel(budget_label(rows))
        ax.set_ylabel(f"{metric_label(rows)} (final, mean ± SE)")
        ax.set_title(title or "final test metric against the budget", fontsize=9)
        _legend(ax, len(curves))
        fig.tight_layout()
        written += _save(fig, folder, f"{prefix}accuracy", svg)
    diffs = {k: v for k, v in paired_curves(rows).items() if v}
    if not diffs:
        notes.append(f"no paired figure{what}: no method has a placebo or a reference baseline to pair with")
    else:
        most = max(len(v) for v in diffs.values())
        fig, axes = plt.subplots(len(diffs), 1, figsize=(6.4 + _width(most), 3.6 * len(diffs)), squeeze=False)
        unit = "% points" if _scale(rows) == 100.0 else metric_label(rows)
        for ax, (key, by_method) in zip(axes[:, 0], diffs.items(), strict=True):
            for i, (method, (x, y, se)) in enumerate(by_method.items()):
                ax.errorbar(x, y, yerr=se, marker="o", capsize=3, label=method, linestyle=_STYLES[i // 10 % 3])
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xlabel(budget_label(rows))
            ax.set_ylabel(f"paired difference ({unit}, ± SE)")
            ax.set_title(_title(key), fontsize=9)
            _legend(ax, len(by_method))
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        written += _save(fig, folder, f"{prefix}paired", svg)
    points = speedup_points(rows) if is_channel(rows) else {}
    if not points:
        notes.append(f"no speed-up figure{what}: " + ("weight runs (no slimmed network to time)" if not is_channel(rows)
                                                      else "no measured speed-up in the rows"))  # fmt: skip
    else:
        fig, ax = plt.subplots(figsize=(5.2 + _width(len(points)), 4.6))
        top = 1.0
        for method, (x, y) in points.items():
            ax.plot(x, y, "o", label=method)
            top = max(top, float(x.max()), float(y.max()))
        ax.plot([1.0, top * 1.05], [1.0, top * 1.05], color="black", linewidth=0.8, label="y = x")
        ax.set_xlabel("MACs speed-up (dense / pruned MACs)")
        ax.set_ylabel("measured speed-up (CPU latency)")
        ax.set_title(title or "measured against MACs speed-up", fontsize=9)
        _legend(ax, len(points) + 1)
        fig.tight_layout()
        written += _save(fig, folder, f"{prefix}speedup", svg)
    return written, notes


def slug(text: str) -> str:
    """Return `text` as a file-name part: letters, digits, ``.``, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def figures_for(rows: Sequence[dict[str, Any]], folder: Path | str, svg: bool = True) -> tuple[list[Path], list[str]]:
    """Draw the figures of every experiment in `rows` (one set each, prefixed by the experiment when several)."""
    split = list(dict.fromkeys(r.get("experiment", "") for r in rows))
    written: list[Path] = []
    notes: list[str] = []
    for exp in split:
        part = [r for r in rows if r.get("experiment", "") == exp]
        prefix = f"{slug(exp)}-" if len(split) > 1 else ""
        w, n = write_figures(part, folder, prefix, exp if len(split) > 1 else "", svg)
        written += w
        notes += n
    return written, notes


# --- stored tables (docs/data/*.csv) ---------------------------------------------------------------------------

#: the columns of a stored table; ``vs_<x>_mean`` / ``vs_<x>_se`` pairs add paired differences
CSV_COLUMNS = ("experiment", "method", "budget", "n", "metric", "final_mean", "final_std")


def rows_from_csv(path: Path | str) -> list[dict[str, Any]]:
    """Read a stored table (CSV_COLUMNS plus optional ``vs_<x>_mean``/``vs_<x>_se``, ``speedup_macs``,
    ``speedup_measured``) into rows shaped like `report.table_rows`'.

    ``budget`` is a sparsity (``0.9``) or a MACs reduction (``2x``). Values in the file are in the
    table's units: accuracy and differences in % (they are divided by 100 here, as the rows hold fractions).
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; a stored table needs "
                             f"{', '.join(CSV_COLUMNS)}")  # fmt: skip
        rows = []
        for line, rec in enumerate(reader, start=2):
            budget = rec["budget"].strip()
            channel = budget.endswith("x")
            try:
                value = float(budget[:-1] if channel else budget)
                k = 100.0 if rec["metric"] == "accuracy" else 1.0
                row: dict[str, Any] = {
                    "experiment": rec["experiment"], "method": rec["method"], "sparsity": value,
                    "budget": f"{value:g}× MACs" if channel else f"{value:.3g}", "n": int(rec["n"]),
                    "metric": rec["metric"], "final": (float(rec["final_mean"]) / k, float(rec["final_std"]) / k),
                }  # fmt: skip
                for col in rec:
                    if col.startswith("vs_") and col.endswith("_mean") and rec[col].strip():
                        key = col[: -len("_mean")]
                        row[key] = (float(rec[col]) / k, float(rec[f"{key}_se"]) / k, None, int(rec["n"]))
                for col in ("speedup_macs", "speedup_measured"):
                    if rec.get(col, "").strip():
                        row[col] = float(rec[col])
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}, line {line}: {e}") from None
            rows.append(row)
    return rows


def figures_from_tables(paths: Sequence[Path | str], folder: Path | str) -> tuple[list[Path], list[str]]:
    """Draw the figures of stored tables (`rows_from_csv`) as PNGs in `folder`.

    Files are named ``<csv stem>-<figure>.png``, or ``<csv stem>-<experiment>-<figure>.png`` when a
    table holds several experiments; returns (files written, notes on figures skipped).
    """
    written: list[Path] = []
    notes: list[str] = []
    for path in paths:
        rows = rows_from_csv(path)
        split = list(dict.fromkeys(r["experiment"] for r in rows))
        for exp in split:
            prefix = f"{Path(path).stem}-" + (f"{slug(exp)}-" if len(split) > 1 else "")
            w, n = write_figures([r for r in rows if r["experiment"] == exp], folder, prefix, exp, svg=False)
            written += w
            notes += n
    return written, notes


# --- one self-contained page ------------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(text: str) -> str:
    """Render a table.md (headings, paragraphs, pipe tables) as HTML, with no external reference."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            head = _cells(line)
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            out.append(f"<table><thead><tr>{cells}</tr></thead><tbody>")
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append("</tbody></table>")
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            level = len(m.group(1))
            out.append(f"<h{level}>{html.escape(m.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
        i += 1
    return "\n".join(out)


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px;"
          "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}td:first-child,th{text-align:left}"
          "img{max-width:100%;margin:0.5em 0}")  # fmt: skip


def report_html(table_md: str, figures: Sequence[Path | str], title: str = "causalprune report") -> str:
    """Return one self-contained HTML page: the tables of `table_md` and the PNG `figures` inline (base64)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", markdown_html(table_md)]  # fmt: skip
    pngs = [Path(p) for p in figures if str(p).endswith(".png")]
    if pngs:
        parts.append("<h2>Figures</h2>")
    for p in pngs:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt=\"{html.escape(p.stem)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{html.escape(p.name)}</figcaption></figure>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["accuracy_curves", "figures_for", "figures_from_tables", "markdown_html", "paired_curves", "report_html",
           "rows_from_csv", "speedup_points", "write_figures"]  # fmt: skip
