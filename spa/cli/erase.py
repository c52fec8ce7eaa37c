"""`spa erase`: remove whole residual branches (blocks, attention and MLP sub-layers)."""
from __future__ import annotations

from .common import add_input_shape, before_after, human, ratio, table, write_json


def cmd_erase(args) -> int:
    from ..erase import erase
    from ..io import check_output_path, save_model
    from ..runtime import latency, random_inputs

    output = check_output_path(args.output, protected=[args.model])
    if args.report:
        check_output_path(args.report, protected=[args.model, output])
    erased, report = erase(args.model, blocks=args.blocks, target_flops=args.target_flops, keep=args.keep,
                           input_shapes=args.input_shape, calib=args.calib, criterion=args.criterion)
    rows = [before_after("parameters", report.params_before, report.params_after),
            before_after("FLOPs (MACs)", report.flops_before, report.flops_after),
            ["structures", "", f"{len(report.erased)} erased of {report.structures}", ""]]
    if not args.no_latency:
        feeds = random_inputs(erased, batch=1, shapes=report.input_shapes)
        before, after = latency([args.model, erased], feeds)
        b, a = before["median_ms"], after["median_ms"]
        rows.append(["latency, batch 1 (ms)", f"{b:.3f}", f"{a:.3f}", f"{b / a:.2f}x speed-up" if a else "-"])
    save_model(erased, output, protected=[args.model])
    for note in report.notes:
        print(note)
    print(table(rows, ["", "before", "after", "change"]))
    if report.erased:
        print(f"\ncriterion: {report.criterion} ({report.inputs} inputs)")
        print(erased_table(report.erased))
        for e in report.erased:
            if e["compensated"]:
                print(f"compensated after {e['id']}: {', '.join(e['compensated'])}")
    print(f"\nwrote {output} (opset {report.opset['written']})")
    if args.report:
        write_json(args.report, report.to_dict(), protected=[args.model, output])
    return 0


def erased_table(erased: list[dict]) -> str:
    """The erased structures (a report's `erased`), one row each; the error is the criterion's score."""
    return "erased:\n" + table([[e["id"], e["kind"], e["output"], e["nodes"], human(e["params"]), human(e["flops"]),
                                 f"{e['score']:.4f}"] for e in erased],
                                ["id", "kind", "output", "nodes", "params", "FLOPs", "error"])


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("erase", help="remove whole residual branches and write a shallower ONNX model")
    p.add_argument("model", help="the ONNX model")
    add_input_shape(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--blocks", type=int, metavar="N", help="erase exactly N structures, least important first")
    target.add_argument("--target-flops", type=ratio, metavar="F",
                        help="erase least important first until FLOPs are at most F times the original's")
    p.add_argument("--keep", nargs="+", default=[], metavar="NAME", help="node or tensor names never to erase")
    p.add_argument("--criterion", default="influence", metavar="NAME",
                   help="influence (default): rank by the error erasing causes at the join, kept weights unchanged; "
                        "compensate: solve the layers after each join again by least squares to give the dense "
                        "model's outputs, ranking by the error left after that")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="measure importance (and, with --criterion compensate, solve the layers) on these inputs "
                        "(an array per model input, by name; no labels needed) instead of synthetic ones")
    p.add_argument("--report", metavar="OUT.json", help="write the report as JSON")
    p.add_argument("--no-latency", action="store_true", help="skip the onnxruntime latency measurement")
    p.set_defaults(run=cmd_erase)
