"""Erasing blocks against slimming channels, at the same FLOPs, on a deep residual net trained here.

    python bench/bench_erase.py [--blocks 2 3] [--target-flops F ...] [--calib 32] [--h2spg-epochs 30] [--runs 40]
                                [--cache DIR]

Trains the digits `resnet_deep` (models_zoo.digits: nine basic blocks; scikit-learn's digits,
30 epochs) and exports it as a user would (frontends.torch.export, BatchNorm folded). Then, per
--blocks N: `spa erase --blocks N` with either criterion (influence, the default, and compensate:
the layers after each join solved again), data-free and with --calib of that many unlabeled
training images, and channel pruning to the FLOPs of the influence rows (`spa prune --target-flops
F` with L1 and with OBSPA data-free, no fine-tuning anywhere), and H2SPG: the untrained network
trained by `spa train
--optimizer h2spg --erase N` (Adam at 3e-3, the dense model's optimizer, for --h2spg-epochs, as
many as the dense model had; 0 leaves it out). Prints test accuracy, parameters, FLOPs and the
onnxruntime latency of every model, all timed in one run taking turns (batch 1, median of --runs).
Per --target-flops F: `spa erase --target-flops F` with either criterion and either input, which
compares the criteria at (about) the same FLOPs where --blocks N erases structures of other sizes.
The goals: a quarter of the blocks erased data-free keeps accuracy within 3 points of dense, and
H2SPG to the same depth within 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def h2spg(untrained: str, data, blocks: int, epochs: int):
    """The untrained network trained with H2SPG to erase `blocks` structures."""
    from spa.train import train

    return train(untrained, {"input": data.x_train, "labels": data.y_train}, optimizer="h2spg", erase=blocks,
                 epochs=epochs, base="adam", lr=3e-3, log=lambda line: print(line, file=sys.stderr, flush=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--target-flops", nargs="*", type=float, default=[])
    parser.add_argument("--calib", type=int, default=32, help="unlabeled training images for --calib rows")
    parser.add_argument("--h2spg-epochs", type=int, default=30)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--cache", help="folder to keep the trained export in")
    args = parser.parse_args(argv)

    import spa
    from models_zoo import digits
    from spa.cli.common import table
    from spa.runtime import latency, run

    folder = args.cache or tempfile.mkdtemp()
    os.makedirs(folder, exist_ok=True)
    data = digits.load(0)
    path = digits.trained_onnx("resnet_deep", os.path.join(folder, "digits_resnet_deep.onnx"))
    calib = {"input": data.x_train[:args.calib]}
    untrained = None
    if args.h2spg_epochs:
        import torch

        from frontends.torch import export

        untrained = export(digits.build("resnet_deep"), torch.zeros(2, *digits.IMAGE_SHAPE),
                           os.path.join(folder, "digits_resnet_deep_untrained.onnx"), training=True)

    def accuracy(model) -> float:
        return float((run(model, {"input": data.x_test})[0].argmax(1) == data.y_test).mean())

    models = {"dense": (path, 0, None)}

    def erase_rows(flag: str, **target):
        for criterion, criterion_flag in (("influence", ""), ("compensate", " --criterion compensate")):
            for label, options in (("data-free", {}), (f"--calib {args.calib}", {"calib": calib})):
                erased, report = spa.erase(path, criterion=criterion, **target, **options)
                models[f"erase {flag}{criterion_flag}, {label}"] = (erased, len(report.erased), report)

    for blocks in args.blocks:
        erase_rows(f"--blocks {blocks}", blocks=blocks)
        influence = models[f"erase --blocks {blocks}, --calib {args.calib}"][2]
        flops = influence.flops_after / influence.flops_before
        for criterion in ("l1", "obspa"):
            pruned, pruned_report = spa.prune(path, target_flops=flops, criterion=criterion, round_to=1)
            models[f"channels {criterion}, FLOPs {flops:.2f}"] = (pruned, 0, pruned_report)
        if args.h2spg_epochs:
            trained, train_report = h2spg(untrained, data, blocks, args.h2spg_epochs)
            models[f"H2SPG --erase {blocks}, {args.h2spg_epochs} epochs"] = (trained, blocks, train_report)
    for flops in args.target_flops:
        erase_rows(f"--target-flops {flops}", target_flops=flops)
    names = list(models)
    timed = latency([models[n][0] for n in names], {"input": data.x_test[:1]}, repeats=args.runs)
    dense_ms = timed[0]["median_ms"]
    rows = []
    for name, t in zip(names, timed):
        model, erased, report = models[name]
        params = report.params_after / report.params_before if report else 1.0
        flops = report.flops_after / report.flops_before if report else 1.0
        rows.append([name, erased or "-", f"{params:.2f}", f"{flops:.2f}", f"{accuracy(model):.3f}",
                     f"{t['median_ms']:.3f}", f"{t['median_ms'] / dense_ms:.2f}"])
    print(table(rows, ["model", "erased", "params kept", "FLOPs kept", "accuracy", "latency ms", "latency kept"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
