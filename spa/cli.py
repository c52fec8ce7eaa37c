"""The `spa` command: analyze, prune, train, bench, export.

Every error a user can cause is one line on stderr and exit status 2; nothing is written unless
the whole job succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import SpaError


def table(rows: list[list], header: list[str]) -> str:
    """A plain text table, columns padded, numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _is_number(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).replace("%", "").replace("x", "").replace(",", "").isdigit()


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


# ----------------------------------------------------------------------------- analyze
def _check_runs(graph, given: dict) -> str | None:
    """A model onnxruntime cannot run is broken (an absurd attribute, say): say so. Models with
    operators of custom domains are analyzed without this check. Returns the note on the input
    sizes SPA picked, if it picked them."""
    from .inputs import choose_shapes
    from .runtime import random_inputs, run

    if all(n.domain in ("", "ai.onnx", "com.microsoft") for n in graph.nodes) and graph.path:
        shapes, note = choose_shapes(graph.model, given)
        run(graph.model, random_inputs(graph.model, batch=1, shapes=shapes))
        return note
    return None


def cmd_analyze(args) -> int:
    from .groups import analyze

    analysis = analyze(args.model, keep=args.keep, carrier=args.carrier)
    note = _check_runs(analysis.graph, args.input_shape)
    origin = analysis.graph.origin
    if origin.converted:
        print(f"opset {origin.opset}: analyzed at opset {analysis.graph.opset} (spa prune writes opset {origin.opset} back)")
    if note:
        print(note)
    analysis.costs()
    rows = []
    for g in analysis.groups:
        params = g.params
        status = "blocked" if g.blocked else ("single" if g.units < 2 else ("approx" if g.approximate else "ok"))
        first = f"{params[0].tensor}[{params[0].axis}]" if params else "-"
        width = max((len(m.indices) // g.units for m in params), default=1)
        size = f"{g.units} heads x {width}" if g.kind == "heads" else g.units
        rows.append([g.id, g.kind, size, status, _human(g.cost["params"]), f"{g.cost['flops_share'] * 100:.1f}%",
                     g.layer or "-", first])
    print(table(rows, ["group", "kind", "units", "status", "params", "FLOPs", "layer", "first parameter"]))
    if args.verbose:
        for g in analysis.groups:
            print()
            print(g.describe(verbose=True))
    if analysis.custom_operators:
        print("\noperators of other domains, and those a user's rule handles:")
        for op in analysis.custom_operators:
            domain = f"{op['domain']}." if op["domain"] else ""
            rule = f"rule {op['rule']}" if op["rule"] else "no rule: blocks the channels that reach it"
            print(f"  {domain}{op['op_type']} '{op['node']}': {rule}")
    if analysis.blocked:
        print("\nblocked groups:")
        for g in analysis.blocked:
            print(f"  group {g.id} ({g.units} channels): " + "; ".join(f"[{c}] {r}" for c, r in zip(g.blocked_codes, g.blocked)))
    approximate = [g for g in analysis.prunable if g.approximate]
    if approximate:
        print("\napproximate groups (pruning changes normalization statistics):")
        for g in approximate:
            print(f"  group {g.id}: " + "; ".join(f"[{c}] {r}" for c, r in zip(g.approximate_codes, g.approximate)))
    summary = analysis.reason_summary()
    if summary:
        print("\nreasons by code:")
        print(table([[code, n["blocked"], n["approximate"], n["channels"]] for code, n in summary.items()],
                    ["code", "blocked groups", "approximate groups", "channels"]))
    prunable = analysis.prunable
    print(f"\n{len(analysis.groups)} groups: {len(prunable)} prunable ({sum(g.units for g in prunable)} channels), "
          f"{len(analysis.blocked)} blocked, {sum(1 for g in analysis.groups if not g.blocked and g.units < 2)} single-channel")
    if args.json:
        _write_json(args.json, analysis.to_dict(), protected=[args.model])
    return 0


# ----------------------------------------------------------------------------- prune
DEFAULT_RATIO = 0.3


def cmd_prune(args) -> int:
    from .api import prune
    from .io import check_output_path, save_model
    from .runtime import latency, random_inputs

    output = check_output_path(args.output, protected=[args.model])
    if args.report:
        check_output_path(args.report, protected=[args.model, output])
    targets = {"ratio": args.ratio, "target_flops": args.target_flops, "target_params": args.target_params}
    if all(v is None for v in targets.values()):
        targets["ratio"] = DEFAULT_RATIO
    pruned, report = prune(
        args.model, criterion=args.criterion, scope=args.scope, round_to=args.round_to, keep=args.keep,
        max_ratio=args.max_ratio, carrier=args.carrier, seed=args.seed, exact=args.exact, steps=args.steps,
        isomorphic=args.isomorphic, aggregate=args.aggregate, normalize=args.normalize, calib=args.calib,
        pseudo_labels=args.pseudo_labels, batch_size=args.calib_batch, progress=sys.stderr.isatty(),
        head_ratio=args.head_ratio,
        obspa={"data_free": args.data_free, **({"samples": args.samples} if args.samples else {})},
        hidden_ratio=args.hidden_ratio, input_shapes=args.input_shape, opset=args.opset, **targets,
    )
    if not args.no_latency:
        feeds = random_inputs(pruned, batch=1, shapes=report.input_shapes)
        before, after = latency([args.model, pruned], feeds)
        report.latency = {"before": before, "after": after}
    save_model(pruned, output, protected=[args.model])
    for note in report.notes:
        print(note)
    print(prune_table(report))
    for kind, label, before, after in (("target_flops", "FLOPs", report.flops_before, report.flops_after),
                                       ("target_params", "parameters", report.params_before, report.params_after)):
        if targets[kind] is not None and before:
            print(f"\n{label}: {after / before:.3f} of the original (target {targets[kind]:g})")
    if report.blocked:
        print(f"\n{len(report.blocked)} group(s) left whole because they are blocked (run `spa analyze` for reasons)")
    if report.approximate:
        print(f"{len(report.approximate)} pruned group(s) are approximate (normalization over pruned channels); "
              "use --exact to prune only groups whose removal is exact")
    if report.latency and report.latency["after"]["median_ms"] >= report.latency["before"]["median_ms"]:
        from .hardware import misaligned_layers

        try:
            layers = misaligned_layers(args.model, pruned)
        except SpaError:  # only the list of layers to blame is lost
            layers = []
        print(slower_warning(report, args.round_to, layers))
    print(f"\nwrote {output} (opset {report.opset['written']})")
    if args.report:
        _write_json(args.report, report.to_dict(), protected=[args.model, output])
    return 0


SHOWN_LAYERS = 5


def slower_warning(report, round_to, layers: list[dict]) -> str:
    """The pruned model measured no faster than the original: say so, name the layers whose
    channel counts miss the multiples onnxruntime's kernels work in (spa.hardware), and what to try."""
    b, a = report.latency["before"]["median_ms"], report.latency["after"]["median_ms"]
    lines = ["", "WARNING: the pruned model is " + ("SLOWER than" if a > b else "no faster than") +
             f" the original here: {a:.3f} ms against {b:.3f} ms ({a / b:.2f}x the time, batch 1)."]
    if layers:
        lines.append("  layers whose pruned channel counts miss the multiple onnxruntime's CPU kernels work in, "
                     "most FLOPs first:")
        for layer in layers[:SHOWN_LAYERS]:
            (i0, o0), (i1, o1) = layer["before"], layer["after"]
            lines.append(f"    {layer['op']} '{layer['node']}': {i0} -> {i1} input and {o0} -> {o1} output channels "
                         f"(multiples of {layer['multiple']} run fastest), {_human(layer['flops'])} MACs")
        if len(layers) > SHOWN_LAYERS:
            lines.append(f"    ... and {len(layers) - SHOWN_LAYERS} more")
    lines.append("  " + no_faster_hint(report, round_to))
    return "\n".join(lines)


def no_faster_hint(report, round_to) -> str | None:
    """What to try when the pruned model measured no faster than the original."""
    if not report.latency or report.latency["after"]["median_ms"] < report.latency["before"]["median_ms"]:
        return None
    if round_to != "auto" and round_to % 8:  # onnxruntime's CPU convolutions work on blocks of 8 or 16 channels
        return ("the pruned model is no faster here: leave out --round-to (auto, the default, rounds channel counts "
                "to what onnxruntime's CPU kernels run in whole blocks), or try --round-to 8 or 16")
    return "the pruned model is no faster here: prune more, or measure with `spa bench` at your batch size"


def _before_after(label: str, before: float, after: float) -> list:
    change = f"{(after - before) / before * 100:+.1f}%" if before else "-"
    return [label, _human(before), _human(after), change]


def prune_table(report) -> str:
    rows = [
        _before_after("parameters", report.params_before, report.params_after),
        _before_after("FLOPs (MACs)", report.flops_before, report.flops_after),
        _before_after("file size (bytes)", report.size_before, report.size_after),
        ["groups pruned", "", f"{report.groups_pruned} of {report.groups_prunable}", ""],
    ]
    if report.latency:
        b, a = report.latency["before"]["median_ms"], report.latency["after"]["median_ms"]
        rows.append(["latency, batch 1 (ms)", f"{b:.3f}", f"{a:.3f}", f"{b / a:.2f}x speed-up" if a else "-"])
    return table(rows, ["", "before", "after", "change"])


# ----------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    from .graph import load_model
    from .runtime import latency, random_inputs

    from .inputs import choose_shapes

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


# ----------------------------------------------------------------------------- export
def zoo_frameworks() -> dict:
    """framework -> (zoo registry loader, zoo exporter), imported only when asked for."""
    def torch_zoo():
        from models_zoo.torch_models import TORCH_ZOO, TORCH_ZOO_LARGE
        from models_zoo.transformer_models import TRANSFORMER_ZOO

        return {**TORCH_ZOO, **TORCH_ZOO_LARGE, **TRANSFORMER_ZOO}

    def torch_export(name, output, args):
        from frontends.torch import export_zoo
        from models_zoo.transformer_models import TRANSFORMER_ZOO, export_transformer

        if name in TRANSFORMER_ZOO:
            try:
                return export_transformer(name, output, exporter=args.exporter, training=args.training)
            except ValueError as e:  # an exporter that does not work for this model
                raise SpaError(str(e)) from None
        return export_zoo(name, output, exporter=args.exporter, training=args.training)

    def keras_zoo():
        from models_zoo.keras_models import KERAS_ZOO

        return KERAS_ZOO

    def keras_export(name, output, args):
        from frontends.tensorflow import export_keras

        entry = keras_zoo()[name]
        return export_keras(entry.build(), output, input_shape=entry.input_shape)

    def flax_zoo():
        from models_zoo.flax_models import FLAX_ZOO

        return FLAX_ZOO

    def flax_export(name, output, args):
        from frontends.jax import export_flax

        entry = flax_zoo()[name]
        return export_flax(entry.build(), output, input_shape=entry.input_shape)

    return {"torch": (torch_zoo, torch_export), "tf": (keras_zoo, keras_export), "jax": (flax_zoo, flax_export)}


def cmd_export(args) -> int:
    from .io import check_output_path

    frameworks = zoo_frameworks()
    if args.framework not in frameworks:
        raise SpaError(f"unknown framework '{args.framework}' (choose from {', '.join(frameworks)})")
    load_zoo, export = frameworks[args.framework]
    try:
        zoo = load_zoo()
    except ImportError as e:
        raise SpaError(str(e)) from None
    if args.list or not args.model:
        print(table([[n, getattr(e, "description", "")] for n, e in zoo.items()], ["model", "description"]))
        return 0
    if args.model not in zoo:
        raise SpaError(f"no {args.framework} zoo model '{args.model}' (choose from {', '.join(zoo)})")
    if not args.output:
        raise SpaError("give the output path with -o OUT.onnx")
    output = check_output_path(args.output)
    export(args.model, output, args)
    print(f"wrote {output}")
    return 0


# ----------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .io import check_output_path, save_model
    from .train import train

    inputs = [args.model, args.data] + ([args.val] if args.val else [])
    output = check_output_path(args.output, protected=inputs)
    if args.report:
        check_output_path(args.report, protected=inputs + [output])
    pruned, report = train(
        args.model, args.data, val=args.val, loss=args.loss, optimizer=args.optimizer,
        target_sparsity=args.target_sparsity, epochs=args.epochs, lr=args.lr, batch=args.batch, base=args.base,
        lmbda=args.lmbda, seed=args.seed,
    )
    save_model(pruned, output, protected=inputs)
    print()
    print(train_table(report))
    print(f"\nwrote {output}")
    if args.report:
        _write_json(args.report, report.to_dict(), protected=inputs + [output])
    return 0


def train_table(report) -> str:
    rows = [
        _before_after("parameters", report.params_before, report.params_after),
        _before_after("FLOPs (MACs)", report.flops_before, report.flops_after),
        ["zero groups removed", "", f"{report.zero_groups} of {report.groups}", f"sparsity {report.group_sparsity:.3f}"],
    ]
    if report.val_accuracy is not None:
        rows.append(["validation accuracy", "", f"{report.val_accuracy * 100:.2f}%", ""])
    rows.append(["pruned vs trained", "", f"{report.max_relative_error:.1e}", "max relative error"])
    return table(rows, ["", "trained", "pruned", ""])


# ----------------------------------------------------------------------------- plumbing
def _write_json(path, data, protected=()):
    from .io import check_output_path

    path = check_output_path(path, protected=protected)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None


def _round_to(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not auto or a whole number: {text}") from None


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    from .inputs import parse_input_shape

    try:
        return parse_input_shape(text)
    except SpaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """argparse, with bad options reported in one line like every other error (usage: --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .criteria import (AGGREGATIONS, CRITERIA, DEFAULT_AGGREGATION, DEFAULT_BATCH, DEFAULT_NORMALIZATION,
                           NORMALIZATIONS)
    from .rules.shape import CARRIERS
    from .targets import SCOPES

    parser = _Parser(prog="spa", description="SPA: structurally prune any ONNX model.")
    parser.add_argument("--version", action="version", version=f"spa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def input_shape(p):
        p.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="NAME=D1,D2,...",
                       help="the size to run input NAME at (repeatable), e.g. images=1,3,320,320; "
                            "without it, symbolic sizes are picked by trying usual ones")

    def common(p):
        p.add_argument("model", help="the ONNX model")
        input_shape(p)
        p.add_argument("--keep", nargs="+", default=[], metavar="NAME", help="node or tensor names never to prune")
        p.add_argument("--carrier", choices=CARRIERS, default="outer",
                       help="when a reshape splits channels (e.g. into attention heads), prune whole outer slices "
                            "(heads, the default) or inner ones (the within-head dimension)")

    p = sub.add_parser("analyze", help="list the coupled channel groups and why any are blocked")
    common(p)
    p.add_argument("--json", metavar="OUT.json", help="write the analysis as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print every group's members")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("prune", help="remove channels and write a smaller ONNX model")
    common(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--ratio", type=_ratio, default=None,
                   help=f"fraction of channels to remove, in [0, 1) (default {DEFAULT_RATIO} when no target is given)")
    p.add_argument("--target-flops", type=_ratio, default=None, metavar="F",
                   help="prune until FLOPs are F times the original's, F in (0, 1] (e.g. 0.5)")
    p.add_argument("--target-params", type=_ratio, default=None, metavar="P",
                   help="prune until parameters are P times the original's, P in (0, 1]")
    p.add_argument("--steps", type=int, default=1, metavar="N",
                   help="prune in N rounds toward the ratio or target, re-scoring the pruned model between rounds")
    p.add_argument("--criterion", default="l1",
                   help=f"importance criterion: {', '.join(CRITERIA)}, or obspa (Optimal Brain Surgeon with "
                        "compensation, no data needed) (default l1)")
    p.add_argument("--data-free", default="auto", metavar="HOW",
                   help="obspa without --calib: how inputs are made: auto, gaussian, batchnorm, inversion, "
                        "inversion+batchnorm (default auto)")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="obspa without --calib: inputs to make")
    p.add_argument("--aggregate", default=DEFAULT_AGGREGATION,
                   help=f"how a channel's scores on a group's members combine: {', '.join(AGGREGATIONS)} "
                        f"(default {DEFAULT_AGGREGATION})")
    p.add_argument("--normalize", default=DEFAULT_NORMALIZATION,
                   help=f"how scores are scaled within each group before groups are compared: "
                        f"{', '.join(NORMALIZATIONS)} (default {DEFAULT_NORMALIZATION})")
    p.add_argument("--calib", metavar="FILE.npz",
                   help=f"calibration data for {', '.join(n for n, c in CRITERIA.items() if c.needs)}: an array per "
                        "model input (by name) and 'labels'")
    p.add_argument("--pseudo-labels", action="store_true",
                   help="without 'labels' in --calib, use the model's own predictions as labels")
    p.add_argument("--calib-batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"calibration samples per batch (default {DEFAULT_BATCH})")
    p.add_argument("--scope", choices=SCOPES, default=None,
                   help="local: the same ratio in every group; global: all channels ranked together (default: "
                        "local for --ratio, global for a target)")
    p.add_argument("--isomorphic", action="store_true",
                   help="global scope: rank channels only against groups of the same structure")
    p.add_argument("--max-ratio", type=_ratio, default=0.9,
                   help="global scope and targets: most of its channels a group may lose (default 0.9)")
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                   help="keep channel counts at multiples of N; auto (the default): the multiple onnxruntime's CPU "
                        "kernels work in for each group's layers (16 for convolutions, 4 depthwise, 1 Gemm/MatMul); "
                        "1: no rounding")
    p.add_argument("--exact", action="store_true", help="prune only groups whose removal is exact (no normalization over them)")
    p.add_argument("--head-ratio", type=_ratio, metavar="R",
                   help="fraction of the attention heads to remove in every attention (default: as the target)")
    p.add_argument("--hidden-ratio", type=_ratio, metavar="R",
                   help="fraction of a transformer's hidden size to remove (default: as the target)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random criterion")
    p.add_argument("--report", metavar="OUT.json", help="write the report as JSON")
    p.add_argument("--no-latency", action="store_true", help="skip the onnxruntime latency measurement")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="write the pruned model at opset N (default: the input model's opset)")
    p.set_defaults(run=cmd_prune)

    p = sub.add_parser("export", help="export a zoo model to ONNX")
    p.add_argument("--framework", default="torch", help="torch, tf or jax (default torch)")
    p.add_argument("--model", help="the zoo model's name (see --list)")
    p.add_argument("-o", "--output", metavar="OUT.onnx")
    p.add_argument("--list", action="store_true", help="list the zoo models of the framework")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="torch exporter")
    p.add_argument("--training", action="store_true", help="keep BatchNormalization unfused")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("bench", help="onnxruntime latency and throughput, side by side")
    p.add_argument("model")
    p.add_argument("other", nargs="?", help="a second model (e.g. the pruned one) run on the same inputs")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    input_shape(p)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("train", help="train with HSPG or DHSPG, then remove the channels that trained to zero")
    p.add_argument("model", help="the ONNX model (export it with BatchNormalization unfused to train it)")
    p.add_argument("--data", required=True, metavar="TRAIN.npz", help="one array per graph input (by name) and 'labels'")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--val", metavar="VAL.npz", help="validation arrays, same keys: accuracy per epoch and of the result")
    p.add_argument("--loss", default="ce", help="ce (cross-entropy on class ids, the default) or mse")
    p.add_argument("--optimizer", default="dhspg",
                   help="the optimizer, by its name in spa.train.OPTIMIZERS: dhspg (the default) or hspg")
    p.add_argument("--target-sparsity", type=_ratio, default=0.5, help="fraction of channels to train to zero (default 0.5)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=_ratio, default=None, help="learning rate (default 0.1 for sgd, 3e-3 for adam and adamw)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--base", default="sgd", help="the base optimizer: sgd (with momentum 0.9, the default), adam or adamw")
    p.add_argument("--lmbda", type=_ratio, default=None, help="group-lasso weight lambda (see the README)")
    p.add_argument("--seed", type=int, default=0, help="seed for the batch order")
    p.add_argument("--report", metavar="OUT.json", help="write the report (per-epoch history included) as JSON")
    p.set_defaults(run=cmd_train)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "input_shape"):
        args.input_shape = dict(args.input_shape)
    try:
        return args.run(args)
    except SpaError as e:
        print(f"spa: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `spa analyze ... | head`)
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("spa: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: one line, and the way to see more
        if os.environ.get("SPA_DEBUG"):
            raise
        print(f"spa: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(set SPA_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
