"""`spa prune`: remove channels, write the smaller model, and time it beside the original."""
from __future__ import annotations

import sys

from ..errors import SpaError
from .common import (add_model_options, before_after, human, ratio, round_to_arg, table,
                     write_json)


DEFAULT_RATIO = 0.3


def cmd_prune(args) -> int:
    from ..api import prune
    from ..io import check_output_path, save_model
    from ..runtime import latency, random_inputs

    output = check_output_path(args.output, protected=[args.model])
    for path in (args.report, args.plot):
        if path:
            check_output_path(path, protected=[args.model, output])
    targets = {"ratio": args.ratio, "target_flops": args.target_flops, "target_params": args.target_params,
               "target_latency": args.target_latency}
    if all(v is None for v in targets.values()):
        targets["ratio"] = DEFAULT_RATIO
    pruned, report = prune(
        args.model, criterion=args.criterion, scope=args.scope, round_to=args.round_to, keep=args.keep,
        max_ratio=args.max_ratio, carrier=args.carrier, seed=args.seed, exact=args.exact, steps=args.steps,
        isomorphic=args.isomorphic, aggregate=args.aggregate, normalize=args.normalize, calib=args.calib,
        pseudo_labels=args.pseudo_labels, batch_size=args.calib_batch, progress=sys.stderr.isatty(),
        head_ratio=args.head_ratio,
        obspa={"data_free": args.data_free, **({"samples": args.samples} if args.samples else {})},
        hidden_ratio=args.hidden_ratio, input_shapes=args.input_shape, opset=args.opset, erase=args.erase,
        erase_flops=args.erase_flops, batch=args.batch, threads=args.threads, provider=args.provider, **targets,
    )
    if not args.no_latency and not report.latency:  # a latency target has timed them already
        feeds = random_inputs(pruned, batch=args.batch, shapes=report.input_shapes)
        before, after = latency([args.model, pruned], feeds, threads=args.threads, provider=args.provider)
        report.latency = {"before": before, "after": after, "batch": args.batch}
    save_model(pruned, output, protected=[args.model])
    for note in report.notes:
        print(note)
    print(prune_table(report))
    if report.erased:
        from .erase import erased_table

        print("\n" + erased_table(report.erased))
    if args.target_latency is not None:
        timed = report.latency
        print(f"\nlatency: {timed['measured_ratio']:.3f} of the original measured side by side (target "
              f"{args.target_latency:g}; the per-layer model predicted {timed['predicted_ratio']:.3f})")
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
        from ..hardware import misaligned_layers

        try:
            layers = misaligned_layers(args.model, pruned)
        except SpaError:  # only the list of layers to blame is lost
            layers = []
        print(slower_warning(report, args.round_to, layers))
    print(f"\nwrote {output} (opset {report.opset['written']})")
    if args.report:
        write_json(args.report, report.to_dict(), protected=[args.model, output])
    if args.plot:
        from ..groups import analyze
        from ..plot import plot_prune

        plot_prune(report, analyze(args.model, keep=args.keep, carrier=args.carrier), args.plot)
        print(f"wrote {args.plot}")
    return 0


SHOWN_LAYERS = 5


def slower_warning(report, round_to, layers: list[dict]) -> str:
    """The pruned model measured no faster than the original: say so, name the layers whose
    channel counts miss the multiples onnxruntime's kernels work in (spa.hardware), and what to try."""
    b, a = report.latency["before"]["median_ms"], report.latency["after"]["median_ms"]
    lines = ["", "WARNING: the pruned model is " + ("SLOWER than" if a > b else "no faster than") +
             f" the original here: {a:.3f} ms against {b:.3f} ms ({a / b:.2f}x the time, batch {report.latency.get('batch', 1)})."]
    if layers:
        lines.append("  layers whose pruned channel counts miss the multiple onnxruntime's CPU kernels work in, "
                     "most FLOPs first:")
        for layer in layers[:SHOWN_LAYERS]:
            (i0, o0), (i1, o1) = layer["before"], layer["after"]
            lines.append(f"    {layer['op']} '{layer['node']}': {i0} -> {i1} input and {o0} -> {o1} output channels "
                         f"(multiples of {layer['multiple']} run fastest), {human(layer['flops'])} MACs")
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


def prune_table(report) -> str:
    rows = [
        before_after("parameters", report.params_before, report.params_after),
        before_after("FLOPs (MACs)", report.flops_before, report.flops_after),
        before_after("file size (bytes)", report.size_before, report.size_after),
        ["groups pruned", "", f"{report.groups_pruned} of {report.groups_prunable}", ""],
    ]
    if report.erased:
        rows.append(["structures erased", "", str(len(report.erased)), ""])
    if report.latency:
        b, a = report.latency["before"]["median_ms"], report.latency["after"]["median_ms"]
        rows.append([f"latency, batch {report.latency.get('batch', 1)} (ms)", f"{b:.3f}", f"{a:.3f}", f"{b / a:.2f}x speed-up" if a else "-"])
    return table(rows, ["", "before", "after", "change"])



def add_parser(subparsers) -> None:
    from ..criteria import (AGGREGATIONS, CRITERIA, DEFAULT_AGGREGATION, DEFAULT_BATCH, DEFAULT_NORMALIZATION,
                            NORMALIZATIONS)
    from ..obspa import DATA_FREE
    from ..targets import SCOPES

    p = subparsers.add_parser("prune", help="remove channels and write a smaller ONNX model")
    add_model_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--ratio", type=ratio, default=None,
                   help=f"fraction of channels to remove, in [0, 1) (default {DEFAULT_RATIO} when no target is given)")
    p.add_argument("--target-flops", type=ratio, default=None, metavar="F",
                   help="prune until FLOPs are F times the original's, F in (0, 1] (e.g. 0.5)")
    p.add_argument("--target-params", type=ratio, default=None, metavar="P",
                   help="prune until parameters are P times the original's, P in (0, 1]")
    p.add_argument("--target-latency", type=ratio, default=None, metavar="L",
                   help="prune until onnxruntime's latency here is L times the original's (per-layer latency model, "
                        "each layer shape timed once and cached; the result timed side by side to confirm)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch size latency is measured at (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="onnxruntime threads latency is measured with (default: onnxruntime's choice)")
    p.add_argument("--provider", default="CPUExecutionProvider",
                   help="onnxruntime execution provider latency is measured on (default CPUExecutionProvider)")
    p.add_argument("--steps", type=int, default=1, metavar="N",
                   help="prune in N rounds toward the ratio or target, re-scoring the pruned model between rounds")
    p.add_argument("--criterion", default="l1",
                   help=f"importance criterion: {', '.join(CRITERIA)}, or obspa (Optimal Brain Surgeon with "
                        "compensation, no data needed) (default l1)")
    p.add_argument("--data-free", default="auto", metavar="HOW",
                   help=f"obspa without --calib: how inputs are made: {', '.join(DATA_FREE)} (default auto; see "
                        "the README's OBSPA section for what auto picks)")
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
    p.add_argument("--max-ratio", type=ratio, default=0.9,
                   help="global scope and targets: most of its channels a group may lose (default 0.9)")
    p.add_argument("--round-to", type=round_to_arg, default="auto", metavar="N|auto",
                   help="keep channel counts at multiples of N; auto (the default): the multiple onnxruntime's CPU "
                        "kernels work in for each group's layers (16 for convolutions, 4 depthwise, 1 Gemm/MatMul); "
                        "1: no rounding")
    p.add_argument("--exact", action="store_true", help="prune only groups whose removal is exact (no normalization over them)")
    p.add_argument("--head-ratio", type=ratio, metavar="R",
                   help="fraction of the attention heads to remove in every attention (default: as the target)")
    p.add_argument("--hidden-ratio", type=ratio, metavar="R",
                   help="fraction of a transformer's hidden size to remove (default: as the target)")
    erase = p.add_mutually_exclusive_group()
    erase.add_argument("--erase", type=int, metavar="N",
                       help="first erase N whole structures (residual branches, attention and MLP sub-layers; see "
                            "`spa erase`), then prune channels; a FLOPs target stays the original's")
    erase.add_argument("--erase-flops", type=ratio, metavar="F",
                       help="first erase structures until FLOPs are F times the original's, then prune channels")
    p.add_argument("--seed", type=int, default=0, help="seed for the random criterion")
    p.add_argument("--report", metavar="OUT.json", help="write the report as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="draw each group's channels before and after, and its FLOPs")
    p.add_argument("--no-latency", action="store_true", help="skip the onnxruntime latency measurement")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="write the pruned model at opset N (default: the input model's opset)")
    p.set_defaults(run=cmd_prune)
