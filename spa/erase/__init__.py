"""Erasing mode: remove whole residual branches (blocks, attention and MLP sub-layers).

Beside channel groups, a second way to compress: find the removal structures (structures.py),
score them data-free (scoring.py), and erase the least important (rewrite.py). Erasing a
structure equals its output at the join becoming zero (the erase oracle). The "compensate"
criterion then solves the layers after each join again (compensation.py), scoring a structure by
the error that remains after it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from ..calib import load_calibration
from ..conform import default_opset, restore
from ..errors import SpaError
from ..graph import Graph
from ..inputs import choose_shapes
from ..metrics import count_flops, count_params
from ..rewrite import validate
from .compensation import compensate, residual_scores
from .rewrite import erase_structures
from .scoring import BATCH, input_batches, score
from .structures import Structure, find_structures

# "influence": the relative error at the join, the erased model exactly the original with the
# structures' outputs zeroed; "compensate": the error left after the following layers are solved again.
CRITERIA = ("influence", "compensate")

__all__ = ["CRITERIA", "EraseReport", "Structure", "choose_structures", "erase", "erase_structures", "find_structures"]


@dataclass
class EraseReport:
    erased: list[dict]  # id, kind, output, nodes, params, flops, score, compensated (weights) of each erased structure
    structures: int  # how many the model has
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    opset: dict = field(default_factory=dict)
    input_shapes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: str = "data-free"  # what importance was measured on: "data-free" or "calibration"
    criterion: str = "influence"  # one of CRITERIA

    def to_dict(self) -> dict:
        return asdict(self)


def erase(model, blocks: int | None = None, target_flops: float | None = None, keep=(),
          input_shapes: dict | None = None, calib=None, criterion: str = "influence") -> tuple[onnx.ModelProto, EraseReport]:
    """Erase the least important removal structures of `model` (a path, ModelProto or Graph):
    exactly `blocks` of them, or as many as it takes to reach `target_flops` times the original
    FLOPs (or until none is left). Names in `keep` (nodes or tensors) protect the structures they
    are in. Importance is measured on `calib` (an .npz path or a dict of arrays by input name; no
    labels needed) or, without it, data-free (see scoring). `criterion` (CRITERIA): "influence"
    ranks by the error at the join and changes no kept weight; "compensate" ranks by the error
    left once the layers after the join are solved again, and solves them again (see
    compensation). Returns the erased model (at the input's opset) and its report."""
    if criterion not in CRITERIA:
        raise SpaError(f"unknown erasing criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if (blocks is None) == (target_flops is None):
        raise SpaError("give either a number of blocks or a FLOPs target to erase")
    if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0):
        raise SpaError(f"--blocks {blocks}: give a whole number, 0 or more")
    if target_flops is not None and not 0 < target_flops <= 1:
        raise SpaError(f"--target-flops {target_flops}: give a fraction in (0, 1]")
    graph = Graph.load(model)
    calibration = load_calibration(calib, graph.model) if calib is not None else None
    shapes, note = choose_shapes(graph.model, input_shapes)
    structures = find_structures(graph)
    erasable = [s for s in structures if not _kept(graph, s, set(keep))]
    if blocks is not None and blocks > len(erasable):
        raise SpaError(f"--blocks {blocks}: the model has only {len(erasable)} erasable structure(s)"
                       + (f" ({len(structures) - len(erasable)} kept)" if len(erasable) < len(structures) else ""))
    scores = score(graph, erasable, shapes, calibration)
    if criterion == "compensate":
        # more synthetic samples than the influence needs: they solve every following layer's weights;
        # calibration in half batches, so that from 32 samples on there is one to solve on and one to score on
        batches = input_batches(graph, shapes, calibration, synthetic_batch=BATCH, calib_batch=BATCH // 2)
        scores = residual_scores(graph, erasable, batches, scores)
    flops_before = count_flops(graph)
    chosen = choose_structures(sorted(erasable, key=lambda s: scores[s.id]), blocks, target_flops, flops_before)
    erased = erase_structures(graph, chosen)
    compensated: dict[int, list[str]] = {}
    if criterion == "compensate":
        erased, compensated = compensate(graph, erased, chosen, batches)
    validate(erased, graph.model, shapes)
    after = Graph(erased)
    written, restore_note = restore(erased, graph.origin, None, shapes)
    report = EraseReport(
        erased=[{"id": s.id, "kind": s.kind, "output": s.output, "nodes": len(s.nodes), "params": s.params,
                 "flops": s.flops, "score": scores[s.id], "compensated": compensated.get(s.id, [])} for s in chosen],
        structures=len(structures),
        params_before=count_params(graph), params_after=count_params(after),
        flops_before=flops_before, flops_after=count_flops(after),
        opset={"input": graph.origin.opset, "analyzed": graph.opset, "written": default_opset(written)},
        input_shapes={n: list(s) for n, s in shapes.items()},
        notes=[n for n in (note, restore_note) if n],
        inputs="calibration" if calibration is not None else "data-free",
        criterion=criterion,
    )
    return written, report


def _kept(graph: Graph, s: Structure, keep: set[str]) -> bool:
    return any(graph.nodes[i].name in keep or set(graph.nodes[i].output) & keep for i in s.removed)


def choose_structures(ranked: list[Structure], blocks: int | None, target_flops: float | None,
                      flops_before: int) -> list[Structure]:
    """Least important first; a structure nested in a chosen one (or holding one) is skipped, so
    that nothing is erased or counted twice."""
    chosen: list[Structure] = []
    removed: set[int] = set()
    flops = flops_before
    for s in ranked:
        if blocks is not None and len(chosen) == blocks:
            break
        if target_flops is not None and flops <= target_flops * flops_before:
            break
        if s.removed & removed:
            continue
        chosen.append(s)
        removed |= s.removed
        flops -= s.flops  # its operators' (the join, an Add, counts none)
    if blocks is not None and len(chosen) < blocks:
        raise SpaError(f"--blocks {blocks}: only {len(chosen)} structures can be erased together (the others are nested in them or share their join)")
    return sorted(chosen, key=lambda s: s.id)
