"""Fine-tuning after a hard prune: how much of the lost accuracy `spa finetune` brings back.

The digits models of bench/bench_obspa.py (scikit-learn's digits, trained here and cached in
--cache, exported with BatchNorm folded) are pruned to --target-flops of their FLOPs by group L1
and by OBSPA data-free, then fine-tuned by distillation from the dense model (spa.finetune,
its defaults but the epochs) on --samples unlabeled training images for each of --epochs, each run
from the pruned model, and data-free (inputs inverted from the dense model, no data at all).
Accuracy is top-1 in onnxruntime on the held-out 540 test images; "recovered" is the share of the
accuracy the prune lost that came back; s / epoch is the training alone (no evaluation).
Then bench_quality.py's text recognizer (see recognizer_model), pruned and fine-tuned alike.

    python bench/bench_finetune.py                      # the table in the README
    python bench/bench_finetune.py --models resnet --epochs 1 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spa  # noqa: E402
from bench.bench_obspa import digits_task  # noqa: E402
from models_zoo import digits  # noqa: E402

PRUNES = {"L1": dict(criterion="l1"), "OBSPA data-free": dict(criterion="obspa")}


@dataclass
class Model:
    """A trained model to prune and fine-tune, and how it is scored."""
    name: str
    path: str
    score: Callable[[object], float]  # ONNX path or ModelProto -> accuracy on held-out data
    unlabeled: dict[str, np.ndarray]  # --samples training inputs, by input name
    distill: dict  # spa.finetune's options for it
    data_free: bool  # also fine-tune on data-free inputs


def digits_model(name: str, args) -> Model:
    task = digits_task(name, args.cache)
    return Model(name, task.path, lambda m: digits.accuracy(m, task.data.x_test, task.data.y_test),
                 {"input": task.data.x_train[:args.samples]}, {}, True)


def recognizer_model(args) -> Model:
    """bench_quality.py's CRNN (BiLSTM, CTC) trained on rendered words, scored by exact-word
    accuracy on its 1,000 held-out renderings. Its output is per-step logits [batch, steps,
    classes]: KL over the last axis. Data-free inputs (Gaussian: it is no classifier) are skipped."""
    from bench import bench_quality

    task = bench_quality.text_task("crnn", args.quality_cache)
    return Model("CRNN (words)", task.path, lambda m: task.score(m)["word accuracy"],
                 {"input": task.calib(args.samples)}, {"loss": "kl", "class_axis": -1}, False)


def recovered(dense: float, pruned: float, tuned: float) -> str:
    return f"{(tuned - pruned) / (dense - pruned):.0%}" if dense - pruned > 1e-9 else "-"


def rows_for(model: Model, args):
    dense = model.score(model.path)
    yield [model.name, "dense", "", "", f"{dense:.3f}", "", ""]
    for label, options in PRUNES.items():
        # round_to=1: the FLOPs point compared unrounded (the digits models' layers are 16-256 channels)
        pruned, report = spa.prune(model.path, target_flops=args.target_flops, round_to=1, **options)
        flops = report.flops_after / report.flops_before
        before = model.score(pruned)
        prune = f"{label} @ {flops:.2f} FLOPs"
        yield [model.name, prune, "none", 0, f"{before:.3f}", "0%", ""]
        runs = [(f"{args.samples} unlabeled", dict(data=model.unlabeled), e) for e in args.epochs]
        runs += [(f"data-free ({args.samples})", dict(data_free="auto", samples=args.samples), e)
                 for e in (args.data_free_epochs if model.data_free else ())]
        for inputs, source, epochs in runs:
            tuned, result = spa.finetune(pruned, model.path, epochs=epochs, seed=args.seed, log=None,
                                         **source, **model.distill)
            after = model.score(tuned)
            yield [model.name, prune, inputs, epochs, f"{after:.3f}", recovered(dense, before, after),
                   f"{result.seconds_per_epoch:.2f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "spa-bench-obspa"),
                        help="where the trained models are kept between runs (shared with bench_obspa.py)")
    parser.add_argument("--quality-cache", default=os.path.join(tempfile.gettempdir(), "spa-bench-quality"),
                        help="where bench_quality.py keeps the trained recognizer (trained there if missing)")
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenet_v2", "crnn"],
                        choices=["resnet", "mobilenet_v2", "crnn"])
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=256, help="unlabeled training images (and data-free inputs)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--data-free-epochs", type=int, nargs="*", default=[1, 3, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    print("| model | prune | fine-tuned on | epochs | accuracy | recovered | s / epoch |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = recognizer_model(args) if name == "crnn" else digits_model(name, args)
        for row in rows_for(model, args):
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


if __name__ == "__main__":
    main()
