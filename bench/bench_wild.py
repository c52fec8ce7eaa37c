"""SPA on the wild zoo (models_zoo/wild.py): models as other exporters write them.

For each model and ratio: `spa.prune` with no hints (SPA picks the input sizes) and `round_to=1`, the
opset read and written, groups pruned of all, parameters and FLOPs before and after, the zeroing
oracle on data-shaped inputs, and onnxruntime latency of the original and the pruned model timed
side by side (batch 1, taking turns); then every group left whole, by reason.

    python bench/bench_wild.py [--ratios 0.3 0.5] [--runs 30] [--keras]

`--keras` adds keras.applications' NASNetMobile (tf2onnx), slow to export.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import spa  # noqa: E402
from models_zoo.wild import WILD_ZOO  # noqa: E402
from spa.cli.common import human, table  # noqa: E402
from spa.oracle import max_relative_error  # noqa: E402
from spa.runtime import latency, random_inputs  # noqa: E402


def _nasnet(folder: str):
    import keras

    from frontends.tensorflow import export_keras
    from models_zoo.keras_models import randomize

    model = randomize(keras.applications.NASNetMobile(weights=None, input_shape=(64, 64, 3), classes=10), 0)
    return export_keras(model, os.path.join(folder, "nasnet_mobile.onnx")), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keras", action="store_true")
    args = parser.parse_args()
    rows, reasons = [], collections.Counter()
    with tempfile.TemporaryDirectory() as folder:
        models = {name: (entry.write(os.path.join(folder, f"{name}.onnx")), entry.feeds) for name, entry in WILD_ZOO.items()}
        if args.keras:
            models["keras_nasnet_mobile"] = _nasnet(folder)
        for name, (path, feeds) in models.items():
            for ratio in args.ratios:
                # round_to=1: the zoo's layers are 8 to 64 channels, which the default rounding
                # (multiples of 16) would mostly leave whole; this table shows what can be pruned
                pruned, report = spa.prune(path, ratio=ratio, round_to=1)
                data = feeds() if feeds else random_inputs(pruned, batch=1, shapes=report.input_shapes)
                error = max_relative_error(path, pruned, report.removed, feeds=data)
                before, after = latency([path, pruned], data, repeats=args.runs)
                opset = report.opset
                rows.append([name, ratio, f"{opset['input']} -> {opset['written']}",
                             f"{report.groups_pruned}/{report.groups_total}",
                             f"{human(report.params_before)} -> {human(report.params_after)}",
                             f"{human(report.flops_before)} -> {human(report.flops_after)}",
                             f"{error:.0e}", f"{before['median_ms'] / after['median_ms']:.2f}x"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr)
                if ratio == args.ratios[0]:
                    for blocked in report.blocked:
                        for reason in blocked["reasons"]:
                            reasons[(name, _kind(reason))] += 1
    print(table(rows, ["model", "ratio", "opset", "groups", "params", "FLOPs (MACs)", "oracle", "speed-up"]))
    print()
    print(table([[m, r, n] for (m, r), n in sorted(reasons.items())], ["model", "groups left whole because", "groups"]))


def _kind(reason: str) -> str:
    """A blocked reason without the tensor and node names, so that like reasons count together."""
    for start in ("reaches the graph output", "reaches the graph input"):
        if reason.startswith(start):
            return start
    return reason.split("'")[0].strip() + " ..." if "'" in reason else reason


if __name__ == "__main__":
    main()
