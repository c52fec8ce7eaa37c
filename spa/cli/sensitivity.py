"""`spa sensitivity`: prune each group alone at several ratios and show how far the outputs move."""
from __future__ import annotations

import argparse

from .common import add_model_options, table, write_json

SHOWN_RATIOS = "0.1,0.3,0.5,0.7"


def ratio_list(text: str) -> list[float]:
    try:
        return [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None


def cmd_sensitivity(args) -> int:
    from ..io import check_output_path
    from ..sensitivity import sensitivity

    for path in (args.plot, args.json):
        if path:
            check_output_path(path, protected=[args.model])
    result = sensitivity(args.model, ratios=args.ratios, calib=args.calib, input_shapes=args.input_shape,
                         keep=args.keep, carrier=args.carrier)
    print(f"relative output error with one group pruned alone (L1), on {result.inputs} inputs"
          + (f"; accuracy unpruned {result.baseline_accuracy:.3f}" if result.baseline_accuracy is not None else ""))

    def cell(row, k):
        e = row["error"][k]
        text = "-" if e is None else f"{e:.3f}"
        if row["accuracy"] is not None and row["accuracy"][k] is not None:
            text += f" ({row['accuracy'][k]:.2f})"
        return text

    print(table([[row["group"], row["layer"] or "-", row["units"]] + [cell(row, k) for k in range(len(result.ratios))]
                 for row in result.rows],
                ["group", "layer", "units"] + [f"{r:g}" + (" (acc)" if result.baseline_accuracy is not None else "")
                                               for r in result.ratios]))
    if not result.rows:
        print("no prunable groups (run `spa analyze` for reasons)")
    if args.plot:
        from ..plot import plot_sensitivity

        plot_sensitivity(result, args.plot)
        print(f"\nwrote {args.plot}")
    if args.json:
        write_json(args.json, result.to_dict(), protected=[args.model])
        print(f"wrote {args.json}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sensitivity", help="prune each group alone at several ratios and measure the output error")
    add_model_options(p)
    p.add_argument("--calib", metavar="FILE.npz",
                   help="inputs to measure on: an array per model input (by name), and 'labels' for accuracy "
                        "(default: random inputs)")
    p.add_argument("--ratios", type=ratio_list, default=ratio_list(SHOWN_RATIOS), metavar="R1,R2,...",
                   help=f"fractions of each group's channels to remove (default {SHOWN_RATIOS})")
    p.add_argument("--plot", metavar="OUT.png", help="draw the error against the ratio, one line per group")
    p.add_argument("--json", metavar="OUT.json", help="write the table as JSON")
    p.set_defaults(run=cmd_sensitivity)
