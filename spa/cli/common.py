"""What every `spa` command shares: tables, number formats, argument types, safe JSON output."""
from __future__ import annotations

import argparse
import json
import os

from ..errors import SpaError


def table(rows: list[list], header: list[str]) -> str:
    """A plain text table, columns padded, numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(is_number(r[i]) for r in cells[1:]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def is_number(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).replace("%", "").replace("x", "").replace(",", "").isdigit()


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def before_after(label: str, before: float, after: float) -> list:
    change = f"{(after - before) / before * 100:+.1f}%" if before else "-"
    return [label, human(before), human(after), change]


def write_json(path, data, protected=()):
    from ..io import check_output_path

    path = check_output_path(path, protected=protected)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def write_result(model, output: str, protected: list, summary: str, report_path=None, report=None) -> None:
    """A job's end: the model written (never over `protected`), its summary table printed, and
    the report as JSON where asked."""
    from ..io import save_model

    save_model(model, output, protected=protected)
    print()
    print(summary)
    print(f"\nwrote {output}")
    if report_path:
        write_json(report_path, report.to_dict(), protected=protected + [output])


def markdown(rows: list[list], header: list[str]) -> str:
    """A Markdown table, for results that go into the README."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None


def round_to_arg(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not auto or a whole number: {text}") from None


def input_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    from ..inputs import parse_input_shape

    try:
        return parse_input_shape(text)
    except SpaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_input_shape(p) -> None:
    p.add_argument("--input-shape", type=input_shape_arg, action="append", default=[], metavar="NAME=D1,D2,...",
                   help="the size to run input NAME at (repeatable), e.g. images=1,3,320,320; "
                        "without it, symbolic sizes are picked by trying usual ones")


def add_model_options(p) -> None:
    """The model argument and the options every command that reads a model's groups takes."""
    from ..rules.shape import CARRIERS

    p.add_argument("model", help="the ONNX model")
    add_input_shape(p)
    p.add_argument("--keep", nargs="+", default=[], metavar="NAME", help="node or tensor names never to prune")
    p.add_argument("--carrier", choices=CARRIERS, default="outer",
                   help="when a reshape splits channels (e.g. into attention heads), prune whole outer slices "
                        "(heads, the default) or inner ones (the within-head dimension)")
