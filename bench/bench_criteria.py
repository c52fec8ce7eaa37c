"""Criteria benchmark: the accuracy each criterion keeps when FLOPs are cut without fine-tuning.

    python bench/bench_criteria.py [--cache DIR] [--calib 256] [--seeds 5] [--json OUT.json]

Trains (or reuses from --cache) the digits ResNet and MobileNetV2 of models_zoo/digits.py on
scikit-learn's handwritten digits, exported with BatchNorm kept (so bn_scale has its gammas).
For each criterion it then removes 30% and 50% of the FLOPs (`--target-flops 0.7` and `0.5`:
global ranking, the default aggregation and normalization), with no fine-tuning, and measures
top-1 accuracy on the held-out test digits. Criteria that need data get the first --calib training
images with their labels. Random runs with --seeds seeds, averaged. Prints a table per model and
FLOPs cut (criterion, FLOPs and parameters left, accuracy, seconds to prune), then each
criterion's mean accuracy and average rank (1 = best), and checks that Random comes out worst
on average (exit status 1 if not).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

MODELS = ("resnet", "mobilenet_v2")
CUTS = (0.3, 0.5)  # fraction of the FLOPs removed


def prune_and_measure(path, data, criterion: str, cut: float, calib: dict, seed: int) -> dict:
    import spa
    from models_zoo.digits import accuracy

    start = time.perf_counter()
    # round_to=1: criteria are compared at the same unrounded FLOPs points
    pruned, report = spa.prune(path, target_flops=1 - cut, criterion=criterion, calib=calib, seed=seed, round_to=1)
    seconds = time.perf_counter() - start
    return {"flops": report.flops_after / report.flops_before, "params": report.params_after / report.params_before,
            "accuracy": accuracy(pruned, data.x_test, data.y_test), "seconds": seconds}


def run(cache: str, calib_size: int, seeds: int) -> dict:
    from models_zoo import digits
    from spa.criteria import CRITERIA

    data = digits.load(0)
    calib = {"input": data.x_train[:calib_size], "labels": data.y_train[:calib_size]}
    results = {}
    for model in MODELS:
        path = digits.trained_onnx(model, os.path.join(cache, f"digits-{model}-bn.onnx"), training_export=True)
        results[model] = {"dense accuracy": digits.accuracy(path, data.x_test, data.y_test)}
        for cut in CUTS:
            rows = {}
            for criterion in CRITERIA:
                runs = [prune_and_measure(path, data, criterion, cut, calib, seed)
                        for seed in (range(seeds) if criterion == "random" else [0])]
                rows[criterion] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
                print(f"{model}, {cut:.0%} of FLOPs removed, {criterion}: accuracy {rows[criterion]['accuracy']:.3f}",
                      file=sys.stderr, flush=True)
            results[model][f"{cut:g}"] = rows
    return results


def summary(results: dict) -> dict:
    """criterion -> mean accuracy and average rank over every model and cut (rank 1 = best)."""
    from scipy.stats import rankdata

    ranks, accuracies = {}, {}
    for model in MODELS:
        for cut in CUTS:
            rows = results[model][f"{cut:g}"]
            names = list(rows)
            for name, rank in zip(names, rankdata([-rows[n]["accuracy"] for n in names])):
                ranks.setdefault(name, []).append(rank)
                accuracies.setdefault(name, []).append(rows[name]["accuracy"])
    return {n: {"accuracy": float(np.mean(accuracies[n])), "rank": float(np.mean(ranks[n]))} for n in ranks}


def report(results: dict) -> str:
    from spa.cli.common import table

    parts = []
    for model in MODELS:
        for cut in CUTS:
            rows = [["unpruned", "1.000", "1.000", f"{results[model]['dense accuracy']:.3f}", "-"]]
            rows += [[name, f"{r['flops']:.3f}", f"{r['params']:.3f}", f"{r['accuracy']:.3f}", f"{r['seconds']:.1f}"]
                     for name, r in results[model][f"{cut:g}"].items()]
            parts.append(f"{model}, {cut:.0%} of FLOPs removed, no fine-tuning\n\n"
                         + table(rows, ["criterion", "FLOPs", "params", "accuracy", "time (s)"]))
    overall = sorted(summary(results).items(), key=lambda kv: kv[1]["rank"])
    parts.append("over both models and both cuts\n\n" + table(
        [[name, f"{s['accuracy']:.3f}", f"{s['rank']:.2f}"] for name, s in overall],
        ["criterion", "mean accuracy", "average rank"]))
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "spa-bench-digits"),
                        help="folder for the trained ONNX models (reused when present)")
    parser.add_argument("--calib", type=int, default=256, help="training images (with labels) for data criteria")
    parser.add_argument("--seeds", type=int, default=5, help="seeds averaged for the random criterion")
    parser.add_argument("--json", metavar="OUT.json", help="write every figure as JSON")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    results = run(args.cache, args.calib, args.seeds)
    print(report(results))
    overall = summary(results)
    worst = max(overall, key=lambda n: overall[n]["rank"])
    print(f"\nworst on average: {worst}" + ("" if worst == "random" else "  <-- random should be worst: scores are off"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "summary": overall}, f, indent=1)
    return 0 if worst == "random" else 1


if __name__ == "__main__":
    sys.exit(main())
