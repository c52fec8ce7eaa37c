"""Is `spa prune MODEL` faster with nothing but its defaults? Latency against FLOPs, side by side.

    python bench/bench_defaults.py [--models mobilenet_v2 ... keras_mobilenet_v2] [--ratio 0.3]
                                   [--round-to auto 1] [--runs 40] [--rounds 3] [--threads N] [--cache DIR]

Exports torchvision's MobileNetV2, MobileNetV3-Large, EfficientNet-B0, RegNetY-400MF and
ResNet-50 (frontends.torch.export, 224x224, random weights made all different) and Keras'
MobileNetV2 (frontends.tensorflow.export_keras, 224x224, random weights), prunes each as
`spa prune MODEL` does by default (L1, --ratio 0.3, local scope) at every --round-to given
(auto, the default, and 1 for contrast), and times the original and every pruned model in one
onnxruntime run, taking turns (spa.runtime.latency, batch 1, median of --runs), --rounds times.

Prints one row per model and round-to: the FLOPs kept, the latency kept (pruned / original: the
median over the rounds of each round's ratio, and the lowest and highest), their quotient (at
most 1.25 is the goal), and the median ms before and after (of the round whose ratio is the median). A latency ratio at or
above 1 is a pruned model that is slower than the original, which SPA must never produce by
default. The rows and the verdict go to stdout; --cache keeps the exports between runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

TORCHVISION = {"mobilenet_v2": "MobileNetV2", "mobilenet_v3_large": "MobileNetV3-Large",
               "efficientnet_b0": "EfficientNet-B0", "regnet_y_400mf": "RegNetY-400MF", "resnet50": "ResNet-50"}
KERAS = {"keras_mobilenet_v2": "Keras MobileNetV2"}
MODELS = {**TORCHVISION, **KERAS}
GOAL = 1.25  # latency kept at most this times the FLOPs kept


def export(name: str, path: str) -> str:
    if os.path.exists(path):
        return path
    if name in TORCHVISION:
        import torch
        import torchvision

        from frontends.torch import export as export_torch

        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(num_classes=1000)
        # Trained-like weights: at initialization many parameters are equal (zero biases, unit
        # norms) and the exporter shares equal constants, coupling layers a trained model keeps apart.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        return export_torch(model.eval(), torch.randn(1, 3, 224, 224), path)
    if name in KERAS:
        from frontends.tensorflow import export_keras
        from models_zoo.keras_models import keras, randomize

        keras.utils.set_random_seed(0)
        model = randomize(keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000))
        return export_keras(model, path, input_shape=(1, 224, 224, 3))
    raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def round_to(text: str):
    return text if text == "auto" else int(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--round-to", nargs="+", type=round_to, default=["auto", 1])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side timings of each model (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--cache", default=None, help="folder to keep the exported models in")
    args = parser.parse_args()

    import spa
    from spa.cli.common import table
    from spa.runtime import latency

    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or tmp
        os.makedirs(folder, exist_ok=True)
        for name in args.models:
            path = export(name, os.path.join(folder, f"{name}.onnx"))
            pruned = [spa.prune(path, ratio=args.ratio, round_to=r) for r in args.round_to]
            rounds = [latency([path] + [model for model, _ in pruned], repeats=args.runs, threads=args.threads)
                      for _ in range(args.rounds)]
            for i, (r, (_, report)) in enumerate(zip(args.round_to, pruned), start=1):
                flops = report.flops_after / report.flops_before
                ratios = sorted((t[i]["median_ms"] / t[0]["median_ms"], t[0]["median_ms"], t[i]["median_ms"]) for t in rounds)
                kept, before, after = ratios[len(ratios) // 2]
                verdict = "SLOWER" if kept >= 1 else ("ok" if kept <= GOAL * flops else f"over {GOAL}x")
                if r == "auto" and verdict != "ok":
                    failures.append(f"{MODELS[name]}: {verdict}")
                rows.append([MODELS[name], str(r), f"{flops:.2f}", f"{kept:.2f}",
                             f"{ratios[0][0]:.2f}-{ratios[-1][0]:.2f}", f"{kept / flops:.2f}",
                             f"{before:.2f}", f"{after:.2f}", verdict])
                print(" | ".join(rows[-1]), flush=True)
    print()
    print(table(rows, ["model", "round-to", "FLOPs kept", "latency kept", "range", "latency / FLOPs", "before ms",
                       "after ms", "verdict"]))
    print(f"\nat round-to auto: {'every model faster, within ' + str(GOAL) + 'x of its FLOPs' if not failures else '; '.join(failures)}")


if __name__ == "__main__":
    main()
