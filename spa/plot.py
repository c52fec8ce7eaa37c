"""Pictures of a model's groups: channels before and after a prune, and per-group sensitivity.

Each function writes a PNG (through a temporary file and a rename, so a failure leaves nothing)
and returns the data it drew, one dict per bar or line. matplotlib is imported only here, with
its file-only Agg backend: no display is needed.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .groups import Analysis, analyze
from .io import check_output_path

BEFORE, AFTER, BLOCKED, FLOPS = "#9ecae1", "#08519c", "#d62728", "#636363"
LABELED = 8  # sensitivity lines named in the legend: the most sensitive ones
MAX_TICKS = 60  # more groups than this: every k-th is named on the axis


def layer_order(analysis: Analysis) -> list:
    """The groups in graph order: by the topological position of the first operator that reads
    one of their weights (or, for groups without weights, touches their tensors)."""
    graph = analysis.graph
    position = {node: p for p, node in enumerate(graph.topological_order())}

    def first(group):
        params = [m for m in group.members if m.is_param] or group.members
        nodes = [i for m in params for i in graph.tensors[m.tensor].consumers]
        nodes += [graph.tensors[m.tensor].producer for m in group.members if graph.tensors[m.tensor].producer is not None]
        return min((position[i] for i in nodes), default=len(position))

    return sorted(analysis.groups, key=lambda g: (first(g), g.id))


def prune_data(report, analysis: Analysis) -> list[dict]:
    """Per group in graph order: id, layer, channels before and after the prune, whether it was
    blocked (as the report says: a prune can block more than the analysis did), and the FLOPs
    tied to its channels (spa.groups.Analysis.costs)."""
    after = {c["group"]: c["after"] for c in report.channels}
    blocked = {b["group"] for b in report.blocked}
    analysis.costs()
    return [{"group": g.id, "layer": g.layer, "before": g.units, "after": after.get(g.id, g.units),
             "blocked": g.id in blocked, "flops": g.cost["flops"]} for g in layer_order(analysis)]


def analysis_data(analysis: Analysis) -> list[dict]:
    """Per group in graph order: id, layer, channels, whether it is blocked, and its FLOPs."""
    analysis.costs()
    return [{"group": g.id, "layer": g.layer, "before": g.units, "after": None, "blocked": bool(g.blocked),
             "flops": g.cost["flops"]} for g in layer_order(analysis)]


def plot_prune(report, analysis, path) -> list[dict]:
    """Channels per group before (light) and after (dark) a prune, blocked groups in red, the
    FLOPs tied to each group as a line on the right axis. `analysis` is the input model's
    spa.groups.Analysis, or the model itself (analyzed with default options). Returns the data."""
    if not isinstance(analysis, Analysis):
        analysis = analyze(analysis)
    rows = prune_data(report, analysis)
    kept = sum(r["after"] for r in rows) / max(1, sum(r["before"] for r in rows))
    _bars(rows, path, f"channels per group before and after pruning ({kept:.0%} of the channels kept)")
    return rows


def plot_analysis(analysis, path) -> list[dict]:
    """Channels per group, blocked groups in red, FLOPs on the right axis. Returns the data."""
    if not isinstance(analysis, Analysis):
        analysis = analyze(analysis)
    rows = analysis_data(analysis)
    _bars(rows, path, f"channels per group ({sum(r['blocked'] for r in rows)} of {len(rows)} groups blocked)")
    return rows


def plot_sensitivity(result, path) -> list[dict]:
    """One line per group: output error against the ratio pruned from that group alone; the
    most sensitive groups named. `result` is a spa.sensitivity.Sensitivity. Returns its rows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    named = {r["group"] for r in result.most_sensitive(LABELED)}
    ratios = [0.0] + result.ratios if 0 not in result.ratios else result.ratios  # nothing removed: no error

    def errors(row):
        values = [np.nan if e is None else e for e in row["error"]]
        return [0.0] + values if len(ratios) > len(values) else values

    for row in result.rows:  # the named ones drawn last, on top
        if row["group"] not in named:
            ax.plot(ratios, errors(row), color="#bdbdbd", linewidth=1, zorder=1)
    colors = [plt.get_cmap("tab10")(k) for k in (0, 1, 2, 3, 4, 5, 6, 9)]  # not its grey: the unnamed lines are grey
    for row, color in zip(result.most_sensitive(LABELED), colors):
        ax.plot(ratios, errors(row), marker="o", markersize=3, color=color, zorder=2,
                label=_short(_label_row(row)))
    ax.set_xlabel("fraction of the group's channels removed (L1, this group only)")
    ax.set_ylabel("relative output error")
    ax.set_title(f"sensitivity of {len(result.rows)} prunable groups ({LABELED} most sensitive named)"
                 if len(result.rows) > LABELED else f"sensitivity of {len(result.rows)} prunable groups")
    ax.set_xlim(0, max(ratios) or 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if named:
        ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)
    return result.rows


def _short(text: str, width: int = 40) -> str:
    """The start (group id, operator) and the end (where a layer's name differs) of a long label."""
    head = min(12, width // 3)
    return text if len(text) <= width else text[:head] + "…" + text[len(text) - (width - head - 1):]


def _bars(rows: list[dict], path, title: str) -> None:
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    plt = _pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(min(40, max(8, 0.28 * n + 2)), 6))
    x = range(n)
    ax.bar(x, [r["before"] for r in rows], color=[BLOCKED if r["blocked"] else BEFORE for r in rows],
           width=0.8)
    handles = [Patch(color=BEFORE, label="channels before" if rows and rows[0]["after"] is not None else "channels"),
               Patch(color=BLOCKED, label="blocked (left whole)")]
    if rows and rows[0]["after"] is not None:  # blocked groups stay whole: their bar is all red
        ax.bar(x, [0 if r["blocked"] else r["after"] for r in rows], color=AFTER, width=0.5)
        handles.insert(1, Patch(color=AFTER, label="channels after"))
    ax.set_ylabel("channels")
    ax.set_ylim(0, 1.3 * max((r["before"] for r in rows), default=1))  # headroom for the legend
    ax.set_xlim(-0.6, n - 0.4)
    step = max(1, -(-n // MAX_TICKS))
    ax.set_xticks(list(x)[::step])
    ax.set_xticklabels([_short(_label_row(r), 32) for r in rows][::step], rotation=90, fontsize=7)
    right = ax.twinx()
    right.plot(list(x), [r["flops"] for r in rows], color=FLOPS, marker=".", linewidth=1)
    right.set_ylabel("FLOPs (MACs) tied to the group's channels", color=FLOPS)
    right.set_ylim(0, 1.3 * max((r["flops"] for r in rows), default=1) or 1)
    right.yaxis.set_major_formatter(EngFormatter())
    handles.append(plt.Line2D([], [], color=FLOPS, marker=".", label="FLOPs (right axis)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.set_title(title)
    _save(fig, path)


def _label_row(row: dict) -> str:
    return f"{row['group']}: {row['layer']}" if row["layer"] else f"group {row['group']}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    output = check_output_path(path)
    folder, base = os.path.split(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, output)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
