"""`spa bench`: onnxruntime latency and throughput, models side by side on the same inputs."""
from __future__ import annotations

import os

from ..errors import SpaError
from .common import add_input_shape, table


def cmd_bench(args) -> int:
    from ..graph import load_model
    from ..runtime import latency, random_inputs

    from ..inputs import choose_shapes

    models = [args.model] + ([args.other] if args.other else [])
    loaded = [load_model(m)[0] for m in models]
    shapes, note = choose_shapes(loaded[0], args.input_shape)
    if note:
        print(note)
    feeds = random_inputs(loaded[0], batch=args.batch, shapes=shapes)
    for path, model in zip(models[1:], loaded[1:]):
        if [i.name for i in model.graph.input] != [i.name for i in loaded[0].graph.input]:
            raise SpaError(f"{path} takes different inputs than {models[0]}")
    results = latency(models, feeds, warmup=args.warmup, repeats=args.runs, threads=args.threads)
    rows = []
    for path, result in zip(models, results):
        throughput = args.batch / (result["median_ms"] / 1e3)
        rows.append([os.path.basename(path), f"{result['median_ms']:.3f}", f"{result['p90_ms']:.3f}", f"{throughput:.1f}"])
    if len(results) == 2:
        rows.append(["speed-up", f"{results[0]['median_ms'] / results[1]['median_ms']:.2f}x", "", ""])
    print(table(rows, ["model", "median ms", "p90 ms", "samples/s"]))
    return 0



def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="onnxruntime latency and throughput, side by side")
    p.add_argument("model")
    p.add_argument("other", nargs="?", help="a second model (e.g. the pruned one) run on the same inputs")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    add_input_shape(p)
    p.set_defaults(run=cmd_bench)
