"""Per-group sensitivity: prune one group alone at each ratio and measure how far the outputs move.

The model is analyzed and L1-scored once; each (group, ratio) is one rewrite of the original
with only that group's lowest-scored channels removed, run in onnxruntime on the calibration
inputs (or random ones). The error is ||y' - y|| / ||y|| over all outputs; with labels in the
calibration data, the top-1 accuracy of the first output too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .api import removed_slices
from .calib import load_calibration
from .criteria import DEFAULT_BATCH, ScoringContext, get_criterion
from .errors import SpaError
from .graph import Graph
from .groups import analyze
from .inputs import choose_shapes
from .plot import layer_order
from .rewrite import rewrite
from .runtime import random_inputs, run, session
from .targets import check_ratio, kept_count

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RANDOM_BATCH = 8  # random inputs when no calibration data is given


@dataclass
class Sensitivity:
    """`rows`, one per prunable group in graph order: group, layer, units, `error` (one per ratio;
    None where the group's removal cannot be rewritten or run) and `accuracy` (one per ratio,
    with labels). `baseline_accuracy`: the unpruned model's, with labels."""

    ratios: list[float]
    rows: list[dict] = field(default_factory=list)
    baseline_accuracy: float | None = None
    inputs: str = "random"  # "calibration" or "random"

    def most_sensitive(self, n: int) -> list[dict]:
        """The n rows with the largest mean error over the ratios (failed points count as the worst)."""
        def mean(row):
            return float(np.mean([np.inf if e is None else e for e in row["error"]])) if row["error"] else 0.0
        return sorted(self.rows, key=mean, reverse=True)[:n]

    def to_dict(self) -> dict:
        return asdict(self)


def sensitivity(model, ratios=DEFAULT_RATIOS, calib=None, input_shapes: dict | None = None, keep=(),
                carrier: str = "outer", batch_size: int = DEFAULT_BATCH) -> Sensitivity:
    """Prune each prunable group alone, by L1, at each of `ratios`, and measure the relative
    output error against the unpruned model (and top-1 accuracy when `calib`, an .npz path or a
    dict of arrays as spa.prune takes, has labels). Without `calib`, random inputs are used."""
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise SpaError("give at least one ratio")
    for r in ratios:
        check_ratio(r, "--ratios")
    graph = Graph.load(model)
    shapes, _ = choose_shapes(graph.model, input_shapes)
    analysis = analyze(graph, keep=keep, carrier=carrier)
    groups = analysis.prunable
    scores = get_criterion("l1").scores(analysis, groups, ScoringContext(input_shapes=shapes))
    if calib is not None:
        data = load_calibration(calib, graph.model)
        batches = list(data.batches(batch_size))
    else:
        batches = [(random_inputs(graph.model, batch=RANDOM_BATCH, shapes=shapes), None)]
    labels = None if any(y is None for _, y in batches) else np.concatenate([y for _, y in batches])
    reference = _outputs(graph.model, batches)
    result = Sensitivity(ratios, inputs="random" if calib is None else "calibration",
                         baseline_accuracy=None if labels is None else _accuracy(reference, labels))
    for g in (g for g in layer_order(analysis) if g.prunable):
        row = {"group": g.id, "layer": g.layer, "units": g.units, "error": [],
               "accuracy": [] if labels is not None else None}
        ranked = np.argsort(scores[g.id], kind="stable")
        for r in ratios:
            remove = g.units - kept_count(g.units, round(r * g.units))
            outputs = reference
            if remove:
                try:
                    pruned = rewrite(analysis.graph, removed_slices(analysis, {g.id: ranked[:remove]}),
                                     analysis.carrier, digits=analysis.digits)
                    outputs = _outputs(pruned, batches)
                except SpaError:  # this group cannot go alone: no point, not a failed run
                    outputs = None
            row["error"].append(None if outputs is None else _relative_error(outputs, reference))
            if labels is not None:
                row["accuracy"].append(None if outputs is None else _accuracy(outputs, labels))
        result.rows.append(row)
    return result


def _outputs(model, batches) -> list[np.ndarray]:
    """Every output of the model over all batches, concatenated along the batch axis."""
    sess = session(model)
    per_batch = [run(model, feeds, sess) for feeds, _ in batches]
    return [np.concatenate([np.asarray(b[k], dtype=np.float64).reshape(len(b[k]), -1) if np.ndim(b[k]) else
                            np.asarray(b[k], dtype=np.float64).reshape(1, 1) for b in per_batch])
            for k in range(len(per_batch[0]))]


def _relative_error(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    diff = np.sqrt(sum(np.sum((o - r) ** 2) for o, r in zip(outputs, reference)))
    norm = np.sqrt(sum(np.sum(r ** 2) for r in reference))
    return float(diff / norm) if norm else float(diff)


def _accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output, its scores flattened per sample."""
    predicted = outputs[0].argmax(axis=1)
    if labels.reshape(len(labels), -1).shape[1] != 1 or len(predicted) != len(labels):
        raise SpaError("labels for sensitivity must be one class index per sample")
    return float(np.mean(predicted == labels.reshape(-1)))
