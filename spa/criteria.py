"""Importance criteria: a score for every channel (unit) of every group, higher = more important.

Every criterion is a per-weight score, and every one is turned into a group score the same way:

1. element scores: one per element of each parameter member of the group (|w| for L1, |w * g| for
   SNIP, ...), from the weights and, for data-driven criteria, gradient statistics
   (spa.gradients: computed in PyTorch on the model from to_torch, mapped back to the ONNX names);
2. per member: each unit's mean element score over the slice it owns on that member (a 3x3 filter
   and a bias entry weigh alike), then the criterion's unit transform (L2: square root, so the
   slice's RMS; Taylor: the square of the mean of w * g, on each calibration batch, averaged);
3. over members: `sum` (default), `mean`, `max` or `prod`;
4. normalization within the group: `none`, `size` (divided by the group's channel count), `max`
   (default: by the group's largest |score|, so every group's best channel scores 1), or `mean`
   (by the group's mean |score|).

Normalization never changes the order of units inside a group; it decides how groups compare when
units are ranked across groups (global scope, FLOPs and parameter targets). The defaults, sum and
max, were chosen on bench/bench_criteria.py (digits ResNet and MobileNetV2, 30% and 50% of FLOPs
removed, no fine-tuning): over all criteria they kept the most accuracy of the 16 combinations
but one (max/max, about even), with Random last on both models; without normalization, criteria
whose raw scale differs across layers (OBD, Taylor) lose the most, and with `size` or `prod`
several criteria did worse than Random.

The criteria (see CRITERIA): weights only: l1, l2, bn_scale, lamp, random; from calibration data
with labels: taylor, snip, obd, grasp, crop (see the WeightCriterion entries for the references);
and, in COMPENSATING, obspa (spa.obspa), which also rewrites the weights it keeps.

Every criterion is a `Criterion`: `scores(analysis, groups, context)` gives each group's per-unit
scores (higher = more important), and a criterion that compensates the weights it keeps
(`compensates = True`) gives the new values with `compensation(analysis, chosen, context)`.
`context` (ScoringContext) carries one prune's settings: seed, aggregate, normalize, calib, ...
`spa.prune(model, criterion=...)` takes a name, a Criterion, or a plain callable that scores one
group from its weights (FunctionCriterion: `fn(arrays) -> one score per unit`, where arrays[i] is
parameter member i of the group as a (units, k) array, row u everything unit u owns of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm import tqdm

from .errors import SpaError
from .groups import Analysis, Group, Member

NORMALIZATION_OPS = {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
AGGREGATIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "prod": np.prod}
NORMALIZATIONS = ("none", "size", "max", "mean")
DEFAULT_AGGREGATION = "sum"
DEFAULT_NORMALIZATION = "max"
DEFAULT_BATCH = 16  # calibration samples per batch (Taylor scores each batch, so smaller batches give it more draws)


@dataclass
class ScoringContext:
    """One prune's scoring settings, as a criterion reads them, and a place for what it keeps
    between `scores` and `compensation` (`state`: anything with a close() is closed at the end)."""

    seed: int = 0
    aggregate: str = DEFAULT_AGGREGATION
    normalize: str = DEFAULT_NORMALIZATION
    calib: object = None  # a spa.calib.Calibration (loaded when the criterion `uses_data`), or None
    pseudo_labels: bool = False
    batch_size: int = DEFAULT_BATCH
    progress: bool = False
    input_shapes: dict | None = None  # the sizes SPA runs the model at (spa.inputs)
    options: dict = field(default_factory=dict)  # settings of a criterion that takes them (prune's obspa=)
    notes: list = field(default_factory=list)  # lines a criterion wants in the prune's report
    state: dict = field(default_factory=dict)

    def close(self):
        for value in self.state.values():
            if hasattr(value, "close"):
                value.close()
        self.state.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Criterion:
    """Base of every criterion: the built-in ones (CRITERIA, COMPENSATING) and a user's.

    Subclass it and implement `scores`; pass an instance as `spa.prune(model, criterion=...)`.
    `compensates`: the criterion also rewrites the weights it keeps (`compensation`), so the
    zeroing oracle does not apply and it prunes in one step. `uses_data`: `calib`, when given, is
    loaded and checked against the model before any work (context.calib is then a
    spa.calib.Calibration)."""

    name: str = "custom"
    compensates: bool = False
    uses_data: bool = True

    def check(self, context: ScoringContext) -> None:
        """Refuse settings the criterion cannot use (SpaError), before any work."""
        check_combination(context.aggregate, context.normalize)

    def scores(self, analysis: Analysis, groups: list[Group], context: ScoringContext) -> dict[int, np.ndarray]:
        """Group id -> one score per unit (higher = more important), for each of `groups`
        (prunable groups of `analysis`). Scores of different groups are ranked together in
        global scope and for FLOPs and parameter targets: make them comparable (see `normalized`)."""
        raise NotImplementedError

    def compensation(self, analysis: Analysis, chosen: dict[int, np.ndarray],
                     context: ScoringContext) -> dict[str, np.ndarray] | None:
        """Parameter name -> new value (in its original shape) once the chosen units (group id ->
        unit positions) are gone; None when the kept weights stay as they are."""
        return None

    def __repr__(self) -> str:
        return f"<criterion {self.name}>"


@dataclass(frozen=True, repr=False)
class WeightCriterion(Criterion):
    """A per-weight score and what it needs, turned into group scores as the module doc says."""

    name: str = field()  # no default (Criterion's class attribute is not one)
    element: Callable[[np.ndarray, dict], np.ndarray] | None  # (weight, its statistics) -> per-weight score
    needs: tuple[str, ...] = ()  # gradient statistics it reads: grad, fisher, hessian_grad (spa.gradients)
    unit: Callable[[np.ndarray], np.ndarray] = lambda x: x  # on each member's per-unit mean
    temperature: float = 1.0  # the loss's logits are divided by it
    members: Callable[[Group, object], list[Member]] | None = None  # which members it reads (default: all weights)
    per_batch: bool = False  # scored on each calibration batch's gradient, per-unit scores averaged over batches

    @property
    def uses_data(self) -> bool:
        return bool(self.needs)

    def scores(self, analysis: Analysis, groups: list[Group], context: ScoringContext) -> dict[int, np.ndarray]:
        table = member_score_table(analysis, self, groups, context.seed, context.calib, context.pseudo_labels,
                                   context.batch_size, context.progress)
        return {g: combined(per_member, context.aggregate, context.normalize) for g, per_member in table.items()}


class FunctionCriterion(Criterion):
    """A plain callable as a criterion: `fn(arrays)` scores one group, where arrays[i] is the
    group's i-th parameter member (floating-point weights; BatchNorm running statistics left out)
    as a (units, k) array, row u everything unit u owns of that parameter, flattened. It returns
    one score per unit, higher = more important; the scores are then normalized within the group
    (`normalize`) so that groups compare."""

    uses_data = False

    def __init__(self, fn: Callable[[list[np.ndarray]], np.ndarray], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def scores(self, analysis: Analysis, groups: list[Group], context: ScoringContext) -> dict[int, np.ndarray]:
        result = {}
        for g in groups:
            values = np.asarray(self.fn(member_arrays(g, analysis.graph)), dtype=np.float64).reshape(-1)
            if values.shape != (g.units,) or not np.all(np.isfinite(values)):
                raise SpaError(f"criterion '{self.name}' must return {g.units} finite scores for group {g.id} "
                               f"(one per channel); it returned shape {values.shape}")
            result[g.id] = normalized(values, context.normalize, g.units)
        return result


class ObspaCriterion(Criterion):
    """OBSPA (spa.obspa): structured Optimal Brain Surgeon scores, and the compensated weights.
    `settings` (data_free, samples, damp, ...: see spa.obspa.Obspa) are overridden by prune's
    `obspa=` settings."""

    name = "obspa"
    compensates = True
    uses_data = True  # calibration data when given; inputs it makes when not

    def __init__(self, **settings):
        self.settings = settings

    def check(self, context: ScoringContext) -> None:
        return None  # it ranks by its own costs: aggregate and normalize do not apply

    def scores(self, analysis: Analysis, groups: list[Group], context: ScoringContext) -> dict[int, np.ndarray]:
        from .obspa import Obspa  # imported only when asked for

        context.close()  # a surgeon of an earlier round
        surgeon = Obspa(analysis, calib=context.calib, seed=context.seed, batch_size=context.batch_size,
                        progress=context.progress, input_shapes=context.input_shapes,
                        **{**self.settings, **context.options})
        context.state["obspa"] = surgeon
        return surgeon.scores(groups)

    def compensation(self, analysis: Analysis, chosen: dict[int, np.ndarray],
                     context: ScoringContext) -> dict[str, np.ndarray] | None:
        surgeon = context.state["obspa"]
        values = surgeon.compensation(chosen)
        context.notes.extend(getattr(surgeon, "notes", []))
        return values


def scored_members(group: Group, graph) -> list[Member]:
    """The parameter members whose values say something about importance: floating-point weights,
    not BatchNormalization's running statistics."""
    members = []
    for m in group.params:
        value = graph.value(m.tensor)
        if value is None or not np.issubdtype(value.dtype, np.floating) or _is_running_statistic(graph, m.tensor):
            continue
        members.append(m)
    return members


def _is_running_statistic(graph, tensor: str) -> bool:
    uses = [(graph.nodes[i], list(graph.nodes[i].input).index(tensor)) for i in graph.tensors[tensor].consumers]
    return bool(uses) and all(node.op_type == "BatchNormalization" and pos >= 3 for node, pos in uses)


def normalization_scales(group: Group, graph) -> list[Member]:
    """The group's members that are the scale (gamma) of a normalization."""
    def is_scale(tensor):
        return any(graph.nodes[i].op_type in NORMALIZATION_OPS and list(graph.nodes[i].input)[1:2] == [tensor]
                   for i in graph.tensors[tensor].consumers)

    return [m for m in scored_members(group, graph) if is_scale(m.tensor)]


def _scales_or_weights(group: Group, graph) -> list[Member]:
    """BN-scale reads |gamma|; a group without a normalization falls back to the L1 of its weights."""
    return normalization_scales(group, graph) or scored_members(group, graph)


def member_arrays(group: Group, graph) -> list[np.ndarray]:
    """The group's scored members (see scored_members) as (units, k) float arrays: row u holds
    every weight unit u owns of that parameter (its indices along the member's axis), flattened."""
    arrays = []
    for m in scored_members(group, graph):
        counts = np.diff(m.offsets)
        if len(set(counts.tolist())) > 1:
            raise SpaError(f"group {group.id}: the channels own different numbers of indices of '{m.tensor}', "
                           "so its weights do not make one array per channel")
        w = np.asarray(graph.value(m.tensor), dtype=np.float32)
        taken = np.moveaxis(np.take(w, m.indices, axis=m.axis), m.axis, 0)
        arrays.append(taken.reshape(group.units, -1))
    return arrays


def member_unit_scores(member: Member, per_index: np.ndarray) -> np.ndarray:
    """Per unit: the mean element score over the slices the unit owns on this member, from the
    per-index means along the member's axis (index_scores)."""
    counts = np.diff(member.offsets)
    return np.add.reduceat(per_index[member.indices], member.offsets[:-1]) / counts


def lamp(w: np.ndarray) -> np.ndarray:
    """LAMP (Lee et al., ICLR 2021): w^2 over the sum of w^2 of the weights of the same tensor that
    are at least as large; comparable across layers by construction."""
    squares = np.square(w, dtype=np.float64).ravel()
    order = np.argsort(squares, kind="stable")
    at_least = np.cumsum(squares[order][::-1])[::-1]
    scores = np.empty_like(squares)
    scores[order] = squares[order] / np.maximum(at_least, np.finfo(np.float64).tiny)
    return scores.reshape(w.shape)


CRITERIA: dict[str, WeightCriterion] = {c.name: c for c in (
    WeightCriterion("l1", lambda w, s: np.abs(w)),  # mean |w| of each channel's slices
    WeightCriterion("l2", lambda w, s: np.square(w), unit=np.sqrt),  # their RMS
    # Network Slimming (Liu et al., ICCV 2017): |gamma| of the normalizations in the group.
    WeightCriterion("bn_scale", lambda w, s: np.abs(w), members=_scales_or_weights),
    WeightCriterion("lamp", lambda w, s: lamp(w)),
    WeightCriterion("random", None),  # uniform scores per channel: the baseline every criterion must beat
    # First-order Taylor (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR
    # 2019): the loss change when a unit's slice is zeroed, (sum of w * dL/dw over it)^2 (here the
    # mean over the slice, per member), on each batch's gradient and averaged over batches.
    WeightCriterion("taylor", lambda w, s: w * s["grad"], needs=("grad",), unit=np.square, per_batch=True),
    # SNIP (Lee et al., ICLR 2019): connection sensitivity |dL/dc| = |w * dL/dw| of each weight.
    WeightCriterion("snip", lambda w, s: np.abs(w * s["grad"]), needs=("grad",)),
    # OBD (LeCun et al. 1990): loss increase 1/2 H_ii w_i^2, H_ii from the empirical Fisher.
    WeightCriterion("obd", lambda w, s: 0.5 * np.square(w) * s["fisher"], needs=("fisher",)),
    # GraSP (Wang et al., ICLR 2020) scores S = -w * Hg and removes the largest S (the weights whose
    # removal reduces gradient flow least); importance is therefore w * Hg. Logits at temperature
    # 200, as in the authors' code.
    WeightCriterion("grasp", lambda w, s: w * s["hessian_grad"], needs=("hessian_grad",), temperature=200.0),
    # CroP, the criterion of EarlyCroP (Rachwan et al., "Winning the Lottery Ahead of Time: Efficient
    # Early Network Pruning", ICML 2022): preserve gradient flow in either direction, S = |w * Hg|
    # (their CroP.get_weight_saliencies: |theta * grad| after backpropagating z = sum(g_w * g_f),
    # with g_w the gradient over the data and no temperature).
    WeightCriterion("crop", lambda w, s: np.abs(w * s["hessian_grad"]), needs=("hessian_grad",)),
)}
"""The built-in criteria that keep the weights they keep (the zeroing oracle holds)."""

COMPENSATING: dict[str, Criterion] = {"obspa": ObspaCriterion()}
"""The built-in criteria that also rewrite the weights they keep."""


def needs_data(criterion) -> bool:
    return bool(getattr(get_criterion(criterion), "needs", ()))


def get_criterion(criterion) -> Criterion:
    """A criterion from its name (CRITERIA, COMPENSATING), a Criterion (instance or subclass),
    or a plain callable (FunctionCriterion)."""
    if isinstance(criterion, str):
        known = {**CRITERIA, **COMPENSATING}
        if criterion not in known:
            raise SpaError(f"unknown criterion '{criterion}' (choose from {', '.join(known)})")
        return known[criterion]
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        return criterion()
    if callable(criterion):
        return FunctionCriterion(criterion)
    raise SpaError(f"a criterion is a name ({', '.join({**CRITERIA, **COMPENSATING})}), a spa.criteria.Criterion "
                   f"or a callable scoring a group's weights; got {type(criterion).__name__}")


def check_combination(aggregate: str, normalize: str) -> None:
    if aggregate not in AGGREGATIONS:
        raise SpaError(f"unknown aggregation '{aggregate}' (choose from {', '.join(AGGREGATIONS)})")
    if normalize not in NORMALIZATIONS:
        raise SpaError(f"unknown normalization '{normalize}' (choose from {', '.join(NORMALIZATIONS)})")


def check_scoring(criterion, aggregate: str, normalize: str) -> Criterion:
    """The criterion, once its name and the aggregation and normalization are known to be valid."""
    check_combination(aggregate, normalize)
    return get_criterion(criterion)


def member_scores(group: Group, graph, criterion: WeightCriterion, stats: dict[str, dict[str, np.ndarray]],
                  per_index: dict | None = None) -> np.ndarray:
    """(members, units): steps 1 and 2 of the module doc, for the members the criterion reads.
    `stats`: statistic -> {parameter name -> array in ONNX layout}; a missing array counts as zeros.
    `per_index` (see index_scores) holds the per-index scores of the groups' tensors, computed
    once for all the groups that share a tensor; without it they are computed here."""
    members = (criterion.members or scored_members)(group, graph)
    per_index = per_index if per_index is not None else index_scores([group], graph, criterion, stats)
    rows = [criterion.unit(member_unit_scores(m, per_index[m.tensor, m.axis])) for m in members]
    return np.stack(rows) if rows else np.zeros((0, group.units))


def index_scores(groups, graph, criterion: WeightCriterion, stats: dict[str, dict[str, np.ndarray]]) -> dict:
    """(tensor, axis) -> the mean element score of each index along the axis, for every member
    the criterion reads in `groups`: a tensor's element scores are computed once, however many
    groups read it (a conv weight is in its own group on axis 0 and in the one before on axis 1)."""
    axes: dict[str, set[int]] = {}
    for group in groups:
        for m in (criterion.members or scored_members)(group, graph):
            axes.setdefault(m.tensor, set()).add(m.axis)
    result = {}
    for tensor, tensor_axes in axes.items():
        w = graph.value(tensor)
        w = w if w.dtype in (np.float32, np.float64) else w.astype(np.float32)  # sums are taken in float64
        tensor_stats = {k: np.asarray(stats[k].get(tensor, np.zeros(w.shape)), dtype=np.float64) for k in criterion.needs}
        element_scores = criterion.element(w, tensor_stats)
        for axis in tensor_axes:
            result[tensor, axis] = _index_means(element_scores, axis)
    return result


def _index_means(element_scores: np.ndarray, axis: int) -> np.ndarray:
    """The mean element score of each index along `axis`."""
    other_axes = tuple(a for a in range(element_scores.ndim) if a != axis)
    per_index = element_scores.sum(axis=other_axes, dtype=np.float64) if other_axes else element_scores.astype(np.float64)
    return per_index / max(element_scores.size // max(element_scores.shape[axis], 1), 1)


def combined(per_member: np.ndarray, aggregate: str, normalize: str) -> np.ndarray:
    """Steps 3 and 4 of the module doc: over members, then normalized within the group."""
    units = per_member.shape[1]
    if len(per_member) == 0:
        return np.zeros(units)
    return normalized(AGGREGATIONS[aggregate](per_member, axis=0), normalize, units)


def normalized(scores: np.ndarray, how: str, units: int) -> np.ndarray:
    if how == "none":
        return scores
    if how == "size":
        return scores / units
    scale = np.max(np.abs(scores)) if how == "max" else np.mean(np.abs(scores))
    return scores / scale if scale > 0 else scores


def score_groups(analysis: Analysis, criterion, seed: int = 0, groups=None, aggregate: str = DEFAULT_AGGREGATION,
                 normalize: str = DEFAULT_NORMALIZATION, calib=None, pseudo_labels: bool = False, batch_size: int = DEFAULT_BATCH,
                 progress: bool = False) -> dict[int, np.ndarray]:
    """Scores per unit for each prunable group (or the given groups): higher means more important.

    `criterion`: a name, a Criterion or a callable (get_criterion). `calib` (an .npz path, a dict
    of arrays or a spa.calib.Calibration) feeds the criteria that need data, in batches of
    `batch_size`; they refuse to run without it, and without labels unless `pseudo_labels` (the
    model's own predictions stand in for labels)."""
    crit = check_scoring(criterion, aggregate, normalize)
    groups = list(groups if groups is not None else analysis.prunable)
    with ScoringContext(seed=seed, aggregate=aggregate, normalize=normalize, calib=calib, pseudo_labels=pseudo_labels,
                        batch_size=batch_size, progress=progress) as context:
        return crit.scores(analysis, groups, context)


def member_score_table(analysis: Analysis, criterion, groups=None, seed: int = 0, calib=None,
                       pseudo_labels: bool = False, batch_size: int = DEFAULT_BATCH, progress: bool = False) -> dict[int, np.ndarray]:
    """Group id -> (members, units) scores, before aggregation and normalization (steps 1 and 2)."""
    crit = get_criterion(criterion)
    if not isinstance(crit, WeightCriterion):
        raise SpaError(f"criterion '{crit.name}' is not a per-weight criterion: it has no member scores")
    groups = list(groups if groups is not None else analysis.prunable)
    graph = analysis.graph
    if crit.members is not None and groups and not any(normalization_scales(g, graph) for g in groups):
        raise SpaError(f"criterion '{crit.name}' found no normalization scale in any prunable group (BatchNorm folded "
                       "into the convolutions at export? export with BatchNorm kept, e.g. `spa export --training`)")
    if crit.element is None:  # random: one draw per unit, not per weight
        rng = np.random.default_rng(seed)
        return {g.id: rng.random((1, g.units)) for g in groups}
    source = _gradient_source(crit, graph, calib, pseudo_labels, batch_size, progress) if crit.needs else None
    if crit.per_batch:
        table = {g.id: 0.0 for g in groups}
        for weight, grads in source.batch_gradients():
            per_index = index_scores(groups, graph, crit, {"grad": grads})
            for g in groups:
                table[g.id] = table[g.id] + weight * member_scores(g, graph, crit, {"grad": grads}, per_index)
        return table
    stats = source.statistics(crit.needs) if source else {}
    per_index = index_scores(groups, graph, crit, stats)
    return {g.id: member_scores(g, graph, crit, stats, per_index)
            for g in tqdm(groups, desc=f"scoring ({crit.name})", unit="group", disable=not progress, leave=False)}


def _gradient_source(crit: WeightCriterion, graph, calib, pseudo_labels: bool, batch_size: int, progress: bool):
    from .calib import load_calibration
    from .gradients import gradient_source

    if calib is None:
        raise SpaError(f"criterion '{crit.name}' needs calibration data: give --calib FILE.npz "
                       "(arrays keyed by the model's input names, and 'labels')")
    calibration = load_calibration(calib, graph.model)
    if calibration.labels is None and not pseudo_labels:
        raise SpaError(f"criterion '{crit.name}' needs labels: add a 'labels' array to the calibration data, "
                       "or pass --pseudo-labels to use the model's own predictions as labels")
    return gradient_source(graph, calibration, crit.temperature, pseudo_labels, batch_size, progress)
