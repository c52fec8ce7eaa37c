"""Engine speed, as a user sees it: the whole `spa prune` process side by side with Torch-Pruning's.

    python bench/bench_engine.py [--models resnet50 vgg11_bn ...] [--repeats 3] [--json OUT.json]

For each torchvision model (random weights, seed 0), one ONNX export (frontends.torch.export,
dynamo) and one state dict. Then, taking turns, each a fresh process, the median of --repeats:
- SPA: `spa prune MODEL.onnx -o OUT.onnx --ratio 0.3 --no-latency`: start Python, read the file,
  analyze, score L1, prune 30% of every group's channels, check the result (onnx.checker, strict
  shape inference, an onnxruntime run), write it. `--no-latency` leaves out the side-by-side
  latency measurement that `spa prune` makes by default (a feature of its own, not the engine).
- Torch-Pruning (`pip install torch-pruning`): start Python, build the torchvision model, load
  the state dict, build the dependency graph, prune 30% of every layer's channels by L1
  (MagnitudePruner, the classifier left alone), torch.save the pruned module.
Prints the table; the goal (issue 14): SPA's time at most 0.6 of Torch-Pruning's in median, and
never above it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

MODELS = ("resnet50", "densenet121", "mobilenet_v2", "googlenet", "vgg11_bn")
RATIO = 0.3


def build(name: str):
    import torchvision

    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **extra).eval()


def torch_pruning_job(name: str, state: str, output: str):
    """What a Torch-Pruning user runs (this file with --torch-pruning-job)."""
    import torch
    import torch_pruning as tp

    model = build(name)
    model.load_state_dict(torch.load(state))
    example = torch.randn(1, 3, 224, 224)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=RATIO, ignored_layers=[classifier])
    pruner.step()
    torch.save(model, output)


def prepare(name: str, folder: str) -> tuple[str, str]:
    import torch

    from frontends.torch import export

    torch.manual_seed(0)
    model = build(name)
    onnx_path, state_path = os.path.join(folder, f"{name}.onnx"), os.path.join(folder, f"{name}.pt")
    torch.save(model.state_dict(), state_path)
    export(model, torch.randn(1, 3, 224, 224), onnx_path)
    return onnx_path, state_path


def timed(command: list[str], output: str, threads: int | None) -> float:
    if os.path.exists(output):
        os.remove(output)  # neither tool pays for deleting the last run's file
    env = {**os.environ, "PYTHONPATH": ROOT} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both tools (default: their own choice)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--torch-pruning-job", nargs=3, metavar=("MODEL", "STATE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_pruning_job:
        torch_pruning_job(*args.torch_pruning_job)
        return 0
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark compares with Torch-Pruning: pip install torch-pruning") from None

    from spa.cli.common import table

    spa_cli = shutil.which("spa") or "spa"
    folder = tempfile.mkdtemp(prefix="spa-bench-engine-")
    figures = {}
    try:
        for name in args.models:
            onnx_path, state_path = prepare(name, folder)
            spa_out, tp_out = os.path.join(folder, "spa_out.onnx"), os.path.join(folder, "tp_out.pt")
            spa_cmd = [spa_cli, "prune", onnx_path, "-o", spa_out, "--ratio", str(RATIO), "--no-latency"]
            tp_cmd = [sys.executable, os.path.abspath(__file__), "--torch-pruning-job", name, state_path, tp_out]
            times = {"spa": [], "torch_pruning": []}
            for _ in range(args.repeats):  # taking turns, so that both see the same machine
                times["spa"].append(timed(spa_cmd, spa_out, args.threads))
                times["torch_pruning"].append(timed(tp_cmd, tp_out, args.threads))
            figures[name] = {k: statistics.median(v) for k, v in times.items()} | {"runs": times,
                                                                                  "onnx_mb": os.path.getsize(onnx_path) / 2**20}
            print(f"{name}: SPA {figures[name]['spa']:.2f} s, Torch-Pruning {figures[name]['torch_pruning']:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratios = {n: f["spa"] / f["torch_pruning"] for n, f in figures.items()}
    rows = [[n, f"{f['onnx_mb']:.0f} MB", f"{f['spa']:.2f}", f"{f['torch_pruning']:.2f}", f"{ratios[n]:.2f}"]
            for n, f in figures.items()]
    threads = f"{args.threads} thread(s)" if args.threads else "default threads"
    print(f"Whole process, prune {RATIO:.0%} of channels by L1, median of {args.repeats}, {threads} (seconds)")
    print(table(rows, ["model", "ONNX file", "SPA (spa prune)", "Torch-Pruning", "SPA / Torch-Pruning"]))
    print(f"median ratio {statistics.median(ratios.values()):.2f}, highest {max(ratios.values()):.2f} (goal: 0.6 and 1.0)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"figures": figures, "ratios": ratios}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
