"""Prune while training on scikit-learn's digits: DHSPG against the same model trained densely.

    python bench/bench_train.py [--epochs 15] [--models resnet mobilenet_v2] [--json OUT.json]

Each digits model (models_zoo/digits.py) is built untrained and exported to ONNX with BatchNorm
unfused. From that ONNX file it is trained twice for the same epochs, batch order and cosine
learning-rate schedule: densely (torch.optim.SGD, momentum 0.9, through spa.train's own loop on
the same to_torch module), and with spa.train (DHSPG over SGD, target group sparsity 0.5), which
then removes the zero channels. Accuracies are top-1 on the held-out 30% of digits, measured in
onnxruntime on the written-back dense model and on the pruned one. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from spa.cli.common import markdown  # noqa: E402

TARGET = 0.5


def export_untrained(name: str, folder: str) -> str:
    import torch

    from frontends.torch import export
    from models_zoo import digits

    return export(digits.build(name), torch.zeros(2, *digits.IMAGE_SHAPE), os.path.join(folder, f"{name}.onnx"),
                  training=True)


def dense(path: str, data, epochs: int, lr: float, batch: int) -> dict:
    """The same model from the same ONNX file, trained with plain SGD through the same loop."""
    import torch

    from models_zoo import digits
    from spa.train import Dataset, SparseTraining, fit

    start = time.perf_counter()
    job = SparseTraining(path)
    optimizer = torch.optim.SGD(job.module.parameters(), lr=lr, momentum=0.9)
    torch.manual_seed(0)
    fit(job.module, optimizer, Dataset([data.x_train], data.y_train), epochs=epochs, batch=batch, log=None)
    return {"accuracy": digits.accuracy(job.trained_model(), data.x_test, data.y_test),
            "seconds": time.perf_counter() - start}


def sparse(path: str, data, epochs: int, lr: float, batch: int) -> dict:
    import spa.train

    from models_zoo import digits

    pruned, report = spa.train.train(path, {"input": data.x_train, "labels": data.y_train},
                                     val={"input": data.x_test, "labels": data.y_test}, epochs=epochs, lr=lr,
                                     batch=batch, target_sparsity=TARGET, log=lambda line: print("   ", line))
    return {"accuracy": digits.accuracy(pruned, data.x_test, data.y_test), "sparsity": report.group_sparsity,
            "groups": report.groups, "params": (report.params_before, report.params_after),
            "flops": (report.flops_before, report.flops_after), "error": report.max_relative_error,
            "seconds": report.seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenet_v2"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", help="write the figures as JSON")
    args = parser.parse_args()

    from models_zoo import digits

    data = digits.load(0)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            path = export_untrained(name, folder)
            print(f"{name}: dense, {args.epochs} epochs", flush=True)
            base = dense(path, data, args.epochs, args.lr, args.batch)
            print(f"{name}: DHSPG, {args.epochs} epochs, target group sparsity {TARGET}", flush=True)
            ours = sparse(path, data, args.epochs, args.lr, args.batch)
            results[name] = {"dense": base, "dhspg": ours}
            (params_before, params_after), (flops_before, flops_after) = ours["params"], ours["flops"]
            rows.append([
                name, f"{base['accuracy'] * 100:.2f}%", f"{ours['accuracy'] * 100:.2f}%",
                f"{(ours['accuracy'] - base['accuracy']) * 100:+.2f}", f"{ours['sparsity']:.3f} of {ours['groups']}",
                f"{params_before / 1e3:.1f}k -> {params_after / 1e3:.1f}k ({1 - params_after / params_before:.0%})",
                f"{flops_before / 1e6:.2f}M -> {flops_after / 1e6:.2f}M ({1 - flops_after / flops_before:.0%})",
                f"{ours['error']:.0e}", f"{base['seconds']:.0f} s / {ours['seconds']:.0f} s",
            ])
    header = ["model", "dense acc", "DHSPG acc", "change (points)", "group sparsity", "params", "FLOPs (MACs)",
              "pruned vs trained", "time dense / DHSPG"]
    print()
    print(markdown(rows, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    failed = [name for name, r in results.items() if abs(r["dhspg"]["sparsity"] - TARGET) > 0.02
              or r["dhspg"]["accuracy"] < r["dense"]["accuracy"] - 0.02]
    if failed:
        print(f"\nnot within 2% of the target sparsity or 2 points of dense accuracy: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
