"""`spa analyze`: the coupled channel groups, and why any are blocked."""
from __future__ import annotations

from .common import add_model_options, human, table, write_json


def _check_runs(graph, given: dict) -> str | None:
    """A model onnxruntime cannot run is broken (an absurd attribute, say): say so. Models with
    operators of custom domains are analyzed without this check. Returns the note on the input
    sizes SPA picked, if it picked them."""
    from ..inputs import choose_shapes
    from ..runtime import random_inputs, run

    if all(n.domain in ("", "ai.onnx", "com.microsoft") for n in graph.nodes) and graph.path:
        shapes, note = choose_shapes(graph.model, given)
        run(graph.model, random_inputs(graph.model, batch=1, shapes=shapes))
        return note
    return None


def cmd_analyze(args) -> int:
    from ..erase import find_structures
    from ..groups import analyze
    from ..io import check_output_path

    for path in (args.json, args.plot):  # refused before any work, and before either is written
        if path:
            check_output_path(path, protected=[args.model])
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
        rows.append([g.id, g.kind, size, status, human(g.cost["params"]), f"{g.cost['flops_share'] * 100:.1f}%",
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
    structures = find_structures(analysis.graph)
    if structures:
        print("\nremoval structures (spa erase):")
        print(table([[s.id, s.kind, s.output, len(s.nodes), human(s.params), human(s.flops), "-" if s.parent is None else s.parent]
                     for s in structures], ["id", "kind", "output", "nodes", "params", "FLOPs", "parent"]))
    if args.json:
        write_json(args.json, analysis.to_dict(), protected=[args.model])
    if args.plot:
        from ..plot import plot_analysis

        plot_analysis(analysis, args.plot)
        print(f"wrote {args.plot}")
    return 0



def add_parser(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="list the coupled channel groups and why any are blocked")
    add_model_options(p)
    p.add_argument("--json", metavar="OUT.json", help="write the analysis as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="draw each group's channels (blocked ones in red) and its FLOPs")
    p.add_argument("-v", "--verbose", action="store_true", help="print every group's members")
    p.set_defaults(run=cmd_analyze)
