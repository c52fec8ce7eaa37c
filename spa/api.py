"""The Python API: analyze a model, prune it, and report what changed."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .calib import load_calibration
from .conform import check_opset, default_opset, restore
from .criteria import DEFAULT_AGGREGATION, DEFAULT_BATCH, DEFAULT_NORMALIZATION, Criterion, ScoringContext, get_criterion
from .errors import SpaError
from .graph import Graph, shapes_at
from .groups import Analysis, analyze
from .hardware import group_multiple
from .inputs import choose_shapes
from .lineage import Lineage
from .metrics import count_flops, count_params, file_size
from .rewrite import RewriteError, rewrite, validate
from .runtime import latency, random_inputs
from .targets import Selection, Target, check_ratio, check_round_to, choose


@dataclass
class Report:
    """What a prune did. `removed` names every parameter slice removed, in the input model's
    tensor names and shapes (a tensor pruned on two axes appears twice)."""

    criterion: str
    ratio: float
    scope: str
    round_to: int | str  # "auto" or N
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    size_before: int
    size_after: int
    groups_total: int
    groups_prunable: int
    groups_pruned: int
    channels: list = field(default_factory=list)  # per pruned group: id, before, after
    removed: list = field(default_factory=list)
    blocked: list = field(default_factory=list)  # per blocked group: id, channels, reasons, codes (spa.reasons)
    approximate: list = field(default_factory=list)  # pruned groups whose result is not exact
    latency: dict = field(default_factory=dict)
    opset: dict = field(default_factory=dict)  # input, analyzed and written opsets
    input_shapes: dict = field(default_factory=dict)  # the sizes SPA ran the model at
    notes: list = field(default_factory=list)  # one line each: what SPA chose or could not do
    erased: list = field(default_factory=list)  # structures erased before the channels (spa.erase)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)


def removed_slices(analysis: Analysis, chosen: dict[int, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """(tensor, axis) -> indices to remove, over every member of every group with chosen units."""
    removed: dict[tuple[str, int], list[np.ndarray]] = {}
    for group_id, units in chosen.items():
        for member in analysis.groups[group_id].members:
            removed.setdefault((member.tensor, member.axis), []).append(member.units_indices(units))
    return {k: np.unique(np.concatenate(v)) for k, v in removed.items()}


def prune(model, ratio: float | None = None, criterion: str | Criterion = "l1", scope: str | None = None, round_to: int | str = "auto",
          keep=(), max_ratio: float = 0.9, carrier: str = "outer", seed: int = 0, exact: bool = False,
          check: bool = True, *, target_flops: float | None = None, target_params: float | None = None,
          steps: int = 1, isomorphic: bool = False, aggregate: str = DEFAULT_AGGREGATION,
          normalize: str = DEFAULT_NORMALIZATION, calib=None, pseudo_labels: bool = False, batch_size: int = DEFAULT_BATCH,
          progress: bool = False, head_ratio: float | None = None, hidden_ratio: float | None = None,
          obspa: dict | None = None, input_shapes: dict | None = None,
          opset: int | None = None, erase: int | None = None, erase_flops: float | None = None,
          target_latency: float | None = None, batch: int = 1, threads: int | None = None,
          provider: str = "CPUExecutionProvider") -> tuple[onnx.ModelProto, Report]:
    """Prune a model and return the pruned ModelProto (checked with onnx.checker, shape inference
    and onnxruntime unless check=False) and a Report.

    `model` is a path, a ModelProto or a Graph. What goes is one of:
    - `ratio`: of the channels of every prunable group (scope "local", the default) or of all
      channels ranked together (scope "global", no group losing more than `max_ratio`);
    - `target_flops` / `target_params`: prune until FLOPs / parameters are that fraction of the
      original (scope "global" by default; "local" prunes every group by the same ratio).
    `steps` > 1 prunes in that many rounds toward it, re-analyzing and re-scoring the pruned model
    between rounds. `isomorphic` ranks channels only against groups of the same structure.
    `round_to`: "auto" (the default) keeps each group's channel count at the multiple that
    onnxruntime's CPU kernels work in for its layers (spa.hardware.KERNEL_MULTIPLES), N at a
    multiple of N, 1 not rounded; where rounding and the target conflict, the target wins by
    dropping whole multiples (see spa.targets).
    `head_ratio` and `hidden_ratio` prune attention heads (or head sizes, with the inner carrier)
    and a transformer's hidden size by their own ratio, in every such group; the target above
    then applies to the other groups (see Group.kind).
    Scores: `criterion`, a name (spa.criteria.CRITERIA, COMPENSATING), a spa.criteria.Criterion
    or a callable scoring one group from its weights (spa.criteria.FunctionCriterion); a
    per-weight criterion's scores are aggregated over each group's members by
    `aggregate` and normalized within the group by `normalize`; criteria that need data read
    `calib` (an .npz path or a dict of arrays keyed by input name, and `labels`, or model
    predictions as labels with `pseudo_labels`). Criterion "obspa" (spa.obspa) ranks channels by
    the layer-wise Optimal Brain Surgeon cost and compensates the weights it keeps, from `calib` or,
    with none, from inputs it makes; `obspa` holds its settings (data_free, samples, damp, ...: see
    spa.obspa.Obspa). With exact=True, groups whose removal changes a
    normalization over them (LayerNorm over hidden channels) are left whole.
    `input_shapes` (input name -> shape) are the sizes SPA runs the model at; without them,
    sizes that run are picked (spa.inputs). The pruned model is written at the input's opset, or
    at `opset`. A group whose removal cannot be rewritten, or breaks the final check, is blocked
    with the reason and the rest pruned again.
    `target_latency` L prunes until onnxruntime's latency is L times the original's, at `batch`
    with `threads` on `provider`, predicted by the per-layer latency model (spa.latency) while
    choosing, with scores weighed against the latency each channel costs; the result is then
    timed side by side with the original (report.latency: predicted and measured ratios), and
    where it measures more than LATENCY_TOLERANCE over L the choice is made once more against
    the measured ratio.
    `erase` (N structures) or `erase_flops` (F of the FLOPs) first erases whole structures
    (spa.erase), then prunes the channels of what is left; a FLOPs or parameter target stays a
    fraction of the original model, so the channels make up what erasing left to do. The
    report's before figures are the original's, and `erased` lists the structures.
    """
    target = Target.from_options(ratio, target_flops, target_params, target_latency)
    round_to = check_round_to(round_to)
    if scope is None:
        scope = "global" if target.kind != "ratio" or isomorphic else "local"
    selection = Selection(target, scope, round_to, max_ratio, _count(steps, "--steps"), isomorphic)
    crit = get_criterion(criterion)
    if crit.compensates and selection.steps > 1:
        raise SpaError(f"--criterion {crit.name} prunes in one step: it rewrites the weights it keeps")
    crit.check(ScoringContext(aggregate=aggregate, normalize=normalize))
    _count(batch_size, "--calib-batch")
    check_opset(opset)
    own_ratios = _own_ratios(head_ratio, hidden_ratio)
    if target.kind == "latency" and (selection.steps > 1 or erase is not None or erase_flops is not None):
        raise SpaError("--target-latency prunes the channels in one step, with no --steps or --erase")
    _count(batch, "--batch")
    graph = source = Graph.load(model)
    erased = None
    if erase is not None or erase_flops is not None:
        graph, erased, target = _erased_first(graph, erase, erase_flops, keep, input_shapes, target, calib)
        selection = Selection(target, scope, round_to, max_ratio, selection.steps, isomorphic)
    shapes, shape_note = choose_shapes(graph.model, input_shapes)
    if calib is not None and crit.uses_data:
        calib = load_calibration(calib, graph.model)  # checked once, before any work
    scoring = dict(seed=seed, aggregate=aggregate, normalize=normalize, calib=calib, pseudo_labels=pseudo_labels,
                   batch_size=batch_size, progress=progress, input_shapes=shapes, options=dict(obspa or {}))
    original = analyze(graph, keep=keep, carrier=carrier)
    timing = first = None  # first: the latency target's first choice, while it is chosen again
    if target.kind == "latency":
        from .latency import LatencyModel

        timing = LatencyModel(graph, shapes, batch, threads, provider)
    settings = dict(criterion=crit.name, ratio=target.value if target.kind == "ratio" else 0.0, scope=scope,
                    round_to=round_to, shapes=shapes, opset=opset, notes=[shape_note] if shape_note else [])
    while True:
        with ScoringContext(**scoring) as context:  # a compensating criterion's state lives until compensation
            try:
                chosen = _select(original, selection, crit, context, exact, keep, own_ratios, timing)
            except SpaError:
                if first is None:
                    raise
                first[1].notes.append("latency: the corrected aim was out of reach; the first choice stands")
                return first
            new_values = crit.compensation(original, chosen, context) if crit.compensates else None
        try:
            pruned, report = apply(original, chosen, check=check, new_values=new_values,
                                   **{**settings, "notes": settings["notes"] + context.notes + _left_small(original, chosen, selection)})
        except GroupsFailed as failed:  # blocked now; the others are chosen again without them
            for g in failed.groups:
                original.groups[g].block(failed.reason, failed.code)
            continue
        if timing is not None:
            report.latency = _timed(graph.model, pruned, timing, selection.target.value)
            measured = report.latency["measured_ratio"]
            if first is None and abs(measured - target.value) > target.value * LATENCY_TOLERANCE:
                # the model's rest (element-wise work, per-run costs) shrank otherwise than predicted:
                # aim once more, at what the measured ratio says the prediction misses
                first = pruned, report
                aim = min(1.0, target.value * report.latency["predicted_ratio"] / measured)
                selection = dataclasses.replace(selection, target=Target("latency", aim))
                continue
            if first is not None:
                pruned, report = _closest_under([first, (pruned, report)], target.value * (1 + LATENCY_TOLERANCE))
        if erased is not None:  # the before figures are the original's
            report.erased, report.notes = erased.erased, erased.notes + report.notes
            report.params_before, report.flops_before = erased.params_before, erased.flops_before
            report.size_before = file_size(source.model) if source.path is None else _size_on_disk(source)
        return pruned, report


LATENCY_TOLERANCE = 0.05  # a measured latency this far over the target is chosen again, once


def _closest_under(results: list[tuple], limit: float) -> tuple:
    """Of (model, report) results timed against a latency target, the slowest that measured
    within `limit`; where none did, the fastest."""
    ratio = lambda result: result[1].latency["measured_ratio"]  # noqa: E731
    under = [r for r in results if ratio(r) <= limit]
    return max(under, key=ratio) if under else min(results, key=ratio)


def _timed(original: onnx.ModelProto, pruned: onnx.ModelProto, timing, aimed: float) -> dict:
    """The pruned and the original model timed side by side at the latency model's settings,
    with the ratio the model predicted for the choice and the one measured."""
    feeds = random_inputs(original, shapes=timing.shapes)
    before, after = latency([original, pruned], feeds, threads=timing.threads, provider=timing.provider)
    return {"before": before, "after": after, "batch": next(iter(timing.shapes.values()))[0],
            "threads": timing.threads, "provider": timing.provider, "aimed_ratio": aimed,
            "predicted_ratio": timing.predict_shapes(shapes_at(pruned, timing.shapes)) / timing.original,
            "measured_ratio": after["median_ms"] / before["median_ms"]}


def _erased_first(graph: Graph, blocks, flops, keep, input_shapes, target: Target, calib=None):
    """The model with the structures erased (spa.erase), its erase report, and the target for its
    channels: a FLOPs or parameter target of the original, as a fraction of the erased model."""
    from .erase import erase as erase_structures

    if blocks is not None and flops is not None:
        raise SpaError("give either --erase or --erase-flops")
    model, erased = erase_structures(graph, blocks=blocks, target_flops=flops, keep=keep, input_shapes=input_shapes,
                                     calib=calib)
    if target.kind != "ratio":
        before, after = ((erased.flops_before, erased.flops_after) if target.kind == "flops"
                         else (erased.params_before, erased.params_after))
        target = Target(target.kind, min(1.0, target.value * before / max(after, 1)))
    return Graph.load(model), erased, target


def _left_small(analysis: Analysis, chosen: dict[int, np.ndarray], selection: Selection) -> list[str]:
    """A note on the groups `--round-to auto` left whole in a local prune for being no larger
    than their kernels' channel block."""
    if selection.round_to != "auto" or selection.scope != "local" or not selection.target.value:
        return []
    small = [g for g in analysis.prunable if g.id not in chosen and g.units <= group_multiple(g, analysis.graph)]
    if not small:
        return []
    return [f"{len(small)} prunable group(s) no larger than their kernels' channel block left whole: cut below it "
            "they run no faster (--round-to 1 prunes them too)"]


def _select(original: Analysis, selection: Selection, crit: Criterion, context: ScoringContext, exact: bool,
            keep, own_ratios, timing=None) -> dict[int, np.ndarray]:
    """Score the prunable groups and choose the units to remove (group id -> unit positions in
    the original), over `selection.steps` rounds."""
    graph = original.graph
    cost = {"flops": count_flops(graph), "params": count_params(graph)}
    lineage = Lineage(original)
    analysis = original
    for step in range(1, selection.steps + 1):
        groups = [g for g in analysis.prunable if not (exact and g.approximate) and (step == 1 or lineage.whole_units(g))]
        scores = crit.scores(analysis, groups, context)
        missing = [g.id for g in groups if g.id not in scores or len(scores[g.id]) != g.units]
        if missing:
            raise SpaError(f"criterion '{crit.name}' gave no scores, or not one per channel, for groups "
                           f"{', '.join(map(str, missing[:10]))}")
        units = lineage.original_units(analysis)
        chosen = {}
        for kinds, kind_ratio in own_ratios:
            own = Selection(Target.from_options(kind_ratio), "local", selection.round_to, selection.max_ratio, selection.steps)
            chosen |= choose(analysis, {g.id: scores[g.id] for g in groups if g.kind in kinds}, own, step, units)
        rest = {g.id: scores[g.id] for g in groups if not any(g.kind in kinds for kinds, _ in own_ratios)}
        if timing is not None:
            rest = _per_latency(rest, timing.unit_costs([analysis.groups[g] for g in rest]))
        chosen |= choose(analysis, rest, selection, step, units, cost, already=chosen, latency_model=timing)
        removed = removed_slices(analysis, chosen)
        lineage.record(removed, analysis.graph)
        if step < selection.steps:
            analysis = analyze(rewrite(analysis.graph, removed, analysis.carrier, digits=analysis.digits),
                               keep=keep, carrier=original.carrier)
    return lineage.removed_units()


def _per_latency(scores: dict[int, np.ndarray], unit_costs: dict[int, float]) -> dict[int, np.ndarray]:
    """Scores divided by the latency one channel of the group costs (relative to the mean over
    groups), so that channels cheap to lose and dear to run rank lowest; within a group the order
    is unchanged. A group whose channels cost no measured time keeps its scores."""
    mean = np.mean([c for c in unit_costs.values() if c > 0] or [1.0])
    return {g: s / (unit_costs[g] / mean) if unit_costs.get(g, 0) > 0 else s for g, s in scores.items()}


def _own_ratios(head_ratio: float | None, hidden_ratio: float | None) -> list[tuple[tuple[str, ...], float]]:
    """(group kinds, ratio) for the kinds pruned by a ratio of their own."""
    own = []
    for kinds, value, name in ((("heads", "head_dims"), head_ratio, "--head-ratio"), (("hidden",), hidden_ratio, "--hidden-ratio")):
        if value is not None:
            check_ratio(value, name)
            own.append((kinds, value))
    return own


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 1:
        raise SpaError(f"{name} must be a whole number of at least 1, got {value}")
    return int(value)


class GroupsFailed(SpaError):
    """Removing these groups' channels cannot be rewritten, or breaks the pruned model: `reason`,
    with its code (rewrite_failed or breaks_model, spa.reasons)."""

    def __init__(self, groups: set[int], reason: str, code: str = "rewrite_failed"):
        super().__init__(f"groups {', '.join(map(str, sorted(groups)))}: {reason}")
        self.groups, self.reason, self.code = groups, reason, code


def apply(analysis: Analysis, chosen: dict[int, np.ndarray], check: bool = True,
          new_values: dict[str, np.ndarray] | None = None, shapes: dict | None = None, opset: int | None = None,
          notes=(), **settings) -> tuple[onnx.ModelProto, Report]:
    """Remove the chosen units (group id -> unit positions) and report. `new_values` (parameter
    name -> array in its original shape) replaces parameters first (compensated weights).
    `shapes` are the input sizes the check runs at (spa.inputs); the model is written at the
    input's opset or `opset`. GroupsFailed names the groups whose removal cannot be done."""
    graph = analysis.graph
    pruned = _rewritten(analysis, chosen, new_values, shapes, check)
    after = Graph(pruned)
    notes = list(notes)
    written, note = restore(pruned, graph.origin, opset, shapes)
    notes += [note] if note else []
    report = Report(
        criterion=settings.get("criterion", ""), ratio=settings.get("ratio", 0.0), scope=settings.get("scope", "local"),
        round_to=settings.get("round_to", 1),
        params_before=count_params(graph), params_after=count_params(after),
        flops_before=count_flops(graph), flops_after=count_flops(after),
        size_before=file_size(graph.model) if graph.path is None else _size_on_disk(graph), size_after=file_size(written),
        groups_total=len(analysis.groups), groups_prunable=len(analysis.prunable), groups_pruned=len(chosen),
        channels=[{"group": g, "kind": analysis.groups[g].kind, "before": analysis.groups[g].units,
                   "after": analysis.groups[g].units - len(u)}
                  for g, u in sorted(chosen.items())],
        removed=[{"tensor": t, "axis": int(a), "indices": idx.tolist()}
                 for (t, a), idx in sorted(removed_slices(analysis, chosen).items(),
                                           key=lambda kv: (graph.param_position(kv[0][0]), kv[0][1]))
                 if graph.is_param(t)],
        blocked=[{"group": g.id, "channels": g.units, "reasons": [str(r) for r in g.blocked], "codes": g.blocked_codes}
                 for g in analysis.blocked],
        approximate=[g for g in sorted(chosen) if analysis.groups[g].approximate],
        opset={"input": graph.origin.opset, "analyzed": graph.opset, "written": default_opset(written)},
        input_shapes={n: list(s) for n, s in (shapes or {}).items()},
        notes=notes,
    )
    return written, report


def _rewritten(analysis: Analysis, chosen: dict[int, np.ndarray], new_values, shapes, check: bool) -> onnx.ModelProto:
    """The pruned model, checked; GroupsFailed with the groups that cannot be removed, found by
    the node a rewrite stopped at, or for a failed check by halving the chosen groups."""
    def attempt(subset: dict[int, np.ndarray]) -> onnx.ModelProto:
        pruned = rewrite(analysis.graph, removed_slices(analysis, subset), analysis.carrier, new_values, analysis.digits)
        if check:
            validate(pruned, analysis.graph.model, shapes)
        return pruned

    try:
        return attempt(chosen)
    except RewriteError as e:
        node = analysis.graph.nodes[e.node]
        touched = set(node.input) | set(node.output)
        culprits = {g for g in chosen if any(m.tensor in touched for m in analysis.groups[g].members)}
        raise GroupsFailed(culprits or set(chosen), f"cannot be rewritten: {e}", "rewrite_failed") from None
    except SpaError as e:
        if not chosen:
            raise
        raise GroupsFailed(_culprits(chosen, attempt), f"breaks the pruned model ({e})", "breaks_model") from None


def _culprits(chosen: dict[int, np.ndarray], attempt) -> set[int]:
    """The groups of `chosen` that make `attempt` fail on their own, by halving the set."""
    ids = sorted(chosen)
    if len(ids) == 1:
        return set(ids)
    found = set()
    for part in (ids[:len(ids) // 2], ids[len(ids) // 2:]):
        subset = {g: chosen[g] for g in part}
        try:
            attempt(subset)
        except SpaError:
            found |= _culprits(subset, attempt)
    return found or set(ids)  # only together do they fail


def _size_on_disk(graph: Graph) -> int:
    size = os.path.getsize(graph.path)
    locations = {e.value for t in graph.model.graph.initializer for e in t.external_data if e.key == "location"}
    return size + sum(os.path.getsize(os.path.join(graph.base_dir, loc)) for loc in locations
                      if os.path.exists(os.path.join(graph.base_dir, loc)))
