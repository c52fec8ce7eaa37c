"""Parameter and FLOPs drop of every zoo model of every framework, pruned with L1.

    python bench/bench_frameworks.py [--frameworks torch tf jax] [--large]

Exports each zoo model (PyTorch with the dynamo exporter, Keras with tf2onnx, Flax with
jax2onnx), prunes it at ratios 0.3 and 0.5 (local scope) and prints one table row per model:
groups prunable / all, parameters and FLOPs removed at each ratio, and the wall time of the
0.5 prune. --large adds the keras.applications models (minutes).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def zoo(framework: str, large: bool):
    if framework == "torch":
        from frontends.torch import export_zoo
        from models_zoo.torch_models import TORCH_ZOO

        return {n: (lambda path, n=n: export_zoo(n, path)) for n in TORCH_ZOO}
    if framework == "tf":
        from frontends.tensorflow import export_keras
        from models_zoo.keras_models import KERAS_ZOO as registry

        export = export_keras
    else:
        from frontends.jax import export_flax
        from models_zoo.flax_models import FLAX_ZOO as registry

        export = export_flax
    return {n: (lambda path, e=e: export(e.build(), path, input_shape=e.input_shape))
            for n, e in registry.items() if large or not e.large}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", default=["torch", "tf", "jax"])
    parser.add_argument("--large", action="store_true")
    args = parser.parse_args()

    import spa
    from spa.cli.common import table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for framework in args.frameworks:
            for name, export in zoo(framework, args.large).items():
                path = export(os.path.join(tmp, f"{framework}_{name}.onnx"))
                analysis = spa.analyze(path)
                cells = [framework, name, f"{len(analysis.prunable)}/{len(analysis.groups)}"]
                for ratio in (0.3, 0.5):
                    start = time.perf_counter()
                    _, report = spa.prune(path, ratio=ratio)
                    seconds = time.perf_counter() - start
                    cells += [f"{1 - report.params_after / report.params_before:.0%}",
                              f"{1 - report.flops_after / report.flops_before:.0%}"]
                rows.append(cells + [f"{seconds:.2f}"])
                print(" ".join(cells), file=sys.stderr)
    print(table(rows, ["framework", "model", "groups", "params -0.3", "FLOPs -0.3", "params -0.5", "FLOPs -0.5",
                       "prune 0.5 (s)"]))


if __name__ == "__main__":
    main()
