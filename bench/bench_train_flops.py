"""Prune while training to a FLOPs target on scikit-learn's digits: every optimizer against dense.

    python bench/bench_train_flops.py [--epochs 15] [--target-flops 0.5] [--models resnet mobilenet_v2]
                                      [--optimizers hspg dhspg hesso ato] [--jobs N] [--json OUT.json]

Each digits model (models_zoo/digits.py) is built untrained and exported to ONNX with BatchNorm
unfused. From that ONNX file it is trained for the same epochs, batch order and cosine schedule
densely (plain SGD with momentum through spa.train's loop, as bench_train.py) and with each
optimizer through `spa.train.train(..., target_flops=F)` with its defaults (ATO holds 10% of
the training data out for its controller). Accuracy is top-1 on the held-out 30% of digits, in
onnxruntime, of the written-back dense model and of each pruned one; FLOPs are SPA's count
(multiply-accumulates) of the pruned model. Runs go in parallel with --jobs (one process each,
--threads torch threads each). Prints a markdown table; exits 1 when a run lands more than 3% off
the FLOPs target or more than 2 points below dense accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_train import dense, export_untrained  # noqa: E402  the dense baseline is the same run
from spa.cli.common import markdown  # noqa: E402

OPTIMIZERS = ("hspg", "dhspg", "hesso", "ato")
FLOPS_TOLERANCE = 0.03  # relative to the target
ACCURACY_POINTS = 2.0


def run_one(job: dict) -> dict:
    import torch

    from models_zoo import digits

    torch.set_num_threads(job["threads"])
    data = digits.load(0)
    if job["optimizer"] == "dense":
        return {**job, **dense(job["path"], data, job["epochs"], job["lr"], job["batch"])}
    import spa.train

    lines = []
    pruned, report = spa.train.train(job["path"], {"input": data.x_train, "labels": data.y_train},
                                     val={"input": data.x_test, "labels": data.y_test}, optimizer=job["optimizer"],
                                     target_flops=job["target"], epochs=job["epochs"], lr=job["lr"],
                                     batch=job["batch"], lmbda=job["lmbda"], log=lines.append)
    return {**job, "accuracy": digits.accuracy(pruned, data.x_test, data.y_test), "flops_ratio": report.flops_ratio,
            "params": (report.params_before, report.params_after), "flops": (report.flops_before, report.flops_after),
            "error": report.max_relative_error, "seconds": report.seconds, "warnings": report.warnings,
            "collapsed_epochs": [r["epoch"] for r in report.history if r.get("collapsed")], "log": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenet_v2"])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lmbda", type=float, default=None, help="every optimizer's lambda (default: each one's own)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--json", help="write the figures (and each run's progress lines) as JSON")
    args = parser.parse_args()
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as folder:
        paths = {name: export_untrained(name, folder) for name in args.models}
        jobs = [dict(model=name, optimizer=optimizer, path=paths[name], target=args.target_flops, epochs=args.epochs,
                     lr=args.lr, batch=args.batch, lmbda=args.lmbda, threads=args.threads)
                for name in args.models for optimizer in ["dense", *args.optimizers]]
        done = {}
        with ProcessPoolExecutor(max_workers=args.jobs) as pool, tqdm(total=len(jobs), desc="runs", file=sys.stderr) as bar:
            futures = {pool.submit(run_one, job): number for number, job in enumerate(jobs)}
            for future in as_completed(futures):
                r = done[futures[future]] = future.result()
                bar.write(f"{r['model']} {r['optimizer']}: accuracy {r['accuracy'] * 100:.2f}%"
                          + (f", FLOPs {r['flops_ratio']:.3f}" if "flops_ratio" in r else "") + f", {r['seconds']:.0f} s")
                bar.update()
        results = [done[number] for number in range(len(jobs))]
    by_key = {(r["model"], r["optimizer"]): r for r in results}
    header = ["model", "optimizer", "accuracy", "vs dense (points)", "FLOPs (MACs)", "FLOPs / target", "params",
              "pruned vs trained", "time"]
    rows, failed = [], []
    for r in results:
        base = by_key[(r["model"], "dense")]
        if r["optimizer"] == "dense":
            rows.append([r["model"], "dense (SGD)", f"{r['accuracy'] * 100:.2f}%", "", "", "", "", "", f"{r['seconds']:.0f} s"])
            continue
        (params_before, params_after), (flops_before, flops_after) = r["params"], r["flops"]
        change = (r["accuracy"] - base["accuracy"]) * 100
        landing = r["flops_ratio"] / r["target"]
        rows.append([
            r["model"], r["optimizer"].upper() + (f" (collapsed at epoch {', '.join(map(str, r['collapsed_epochs']))})"
                                      if r["collapsed_epochs"] else ""), f"{r['accuracy'] * 100:.2f}%",
            f"{change:+.2f}", f"{flops_before / 1e6:.2f}M -> {flops_after / 1e6:.2f}M ({r['flops_ratio']:.3f})",
            f"{landing:.3f}", f"{params_before / 1e3:.1f}k -> {params_after / 1e3:.1f}k", f"{r['error']:.0e}",
            f"{r['seconds']:.0f} s",
        ])
        if abs(landing - 1) > FLOPS_TOLERANCE or change < -ACCURACY_POINTS:
            failed.append(f"{r['model']} {r['optimizer']}")
    print()
    print(markdown(rows, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "path"} for r in results], f, indent=1)
    if failed:
        print(f"\nnot within {FLOPS_TOLERANCE:.0%} of the FLOPs target or {ACCURACY_POINTS:g} points of dense accuracy: "
              f"{', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
