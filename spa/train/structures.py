"""Erasing while training: removal structures (spa.erase) as optimizer groups, for H2SPG.

Each innermost removal structure (a residual block's branch, an attention or MLP sub-layer) is
one group: every parameter its operators read, whole. A structure is trained only where that
is exact: its parameters are read by no operator outside it, and with all of them zero its
output at the join is exactly zero (checked once, by running the model in onnxruntime with them
zeroed; a branch whose output would not vanish, a constant added inside it say, is left out and
listed in `skipped`). Then a structure trained to zero is erased, and the erased model computes
what the trained one computes (checked to 1e-5 before anything is returned). Innermost
structures never overlap, so any set of them can go together, and none disconnects the graph
(spa.erase finds only branches whose removal leaves the join reading its other operand).
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import numpy_helper

from ..activations import RuntimeNetwork
from ..erase import EraseReport, Structure, choose_structures, erase_structures, find_structures
from ..errors import SpaError
from ..graph import Graph
from ..metrics import count_flops, count_params
from ..rewrite import validate
from ..oracle import output_error
from ..runtime import random_inputs, run
from ..torch_bridge import to_torch, write_back
from .groups import Pruned, prepare_for_training


def trainable_structures(graph: Graph, trainable: set[str]) -> tuple[list[tuple[Structure, list[str]]], list[str]]:
    """(innermost structure, its parameters) for every structure that trains to an exact erase,
    and one line for each structure left out, saying why."""
    structures = find_structures(graph)
    parents = {s.parent for s in structures}
    kept, skipped = [], []
    for s in structures:
        if s.id in parents:
            continue  # an outer structure: its inner ones are the groups
        params = sorted({n for i in s.nodes for n in _weights(graph.nodes[i]) if n in trainable})
        outside = [n for n in params if any(c not in s.nodes for c in graph.tensors[n].consumers)]
        if not params or outside:
            skipped.append(f"structure {s.id} ({s.kind} into '{graph.nodes[s.join].name}'): "
                           + ("no trainable parameter" if not params else f"'{outside[0]}' is read outside it"))
            continue
        kept.append((s, params))
    return _zero_at_zero(graph, kept, skipped)


def _weights(node) -> list[str]:
    """The node's inputs that are weights to train: a BatchNorm's running statistics are not
    (with its scale and shift zero it outputs zero whatever they are)."""
    return list(node.input[:3] if node.op_type == "BatchNormalization" else node.input)


def _zero_at_zero(graph: Graph, candidates, skipped: list[str]):
    """The candidates whose output is exactly zero with their parameters zero."""
    feeds = random_inputs(graph.model, batch=2)
    kept = []
    for s, params in candidates:
        network = RuntimeNetwork(graph, replaced={p: np.zeros_like(graph.value(p)) for p in params})
        outputs = []
        network.stream([s.output], [feeds], lambda name, value: outputs.append(value))
        if np.any(outputs[0]):
            skipped.append(f"structure {s.id} ({s.kind}): its output is not zero with its parameters zero")
        else:
            kept.append((s, params))
    return kept, skipped


class StructureFlops:
    """FLOPs of the model with some structures erased; `choose` translates a FLOPs target into
    the structures to zero, the lowest scores first."""

    def __init__(self, graph: Graph, structures: list[Structure]):
        self.structures = structures
        self.full = count_flops(graph)
        self.costs = np.array([s.flops for s in structures], dtype=np.float64)

    def counted(self, zero: np.ndarray) -> float:
        """FLOPs once the structures marked in `zero` are erased (they never overlap)."""
        return self.full - float(self.costs[np.asarray(zero, dtype=bool)].sum())

    def choose(self, target_flops: float, scores: np.ndarray) -> np.ndarray:
        ranked = [self.structures[k] for k in np.argsort(scores, kind="stable")]
        chosen = {s.id for s in choose_structures(ranked, None, target_flops, self.full)}
        return np.array([s.id in chosen for s in self.structures])


class StructureTraining:
    """An ONNX model made ready for erasing while training (see the module docstring): the torch
    module, one group per trainable structure, and `prune()` to write back and erase the zeros."""

    def __init__(self, model, untie_shared: bool = True):
        prepared = prepare_for_training(model, untie_shared)
        self.torch_model = to_torch(prepared)
        self._prepared = prepared
        self.onnx_model = write_back(prepared, self.torch_model)
        self.graph = Graph(self.onnx_model)
        trainable = {name for name, ref in self.torch_model.param_map.items() if ref.trainable}
        found, self.skipped = trainable_structures(self.graph, trainable)
        if not found:
            raise SpaError("H2SPG erases whole structures while training, and this model has none it can train to "
                           "zero (residual branches, attention or MLP sub-layers)" + (f": {self.skipped[0]}" if self.skipped else ""))
        self.structures = [s for s, _ in found]
        self.params = [params for _, params in found]
        self.groups = [[self._whole(name) for name in params] for params in self.params]
        self.flops = StructureFlops(self.graph, self.structures)

    @property
    def module(self) -> torch.nn.Module:
        return self.torch_model.module

    def summary(self) -> str:
        return (f"{len(self.structures)} removal structures as groups"
                + (f" ({len(self.skipped)} left whole)" if self.skipped else ""))

    def _whole(self, name: str):
        param = self.torch_model.torch_tensor(name)
        return param, 0, torch.arange(param.shape[0])

    def trained_model(self):
        return write_back(self._prepared, self.torch_model)

    def prune(self, feeds: dict[str, np.ndarray] | None = None, rtol: float = 1e-5) -> Pruned:
        """Write the weights back, erase the structures whose parameters are all exactly zero,
        and check on `feeds` that the erased model computes what the trained one computes."""
        trained = self.trained_model()
        values = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
        zero = [s for s, params in zip(self.structures, self.params) if not any(np.any(values[p]) for p in params)]
        graph = Graph(trained)
        erased = erase_structures(graph, zero)
        validate(erased, trained)
        feeds = feeds if feeds is not None else random_inputs(trained, batch=2)
        error = output_error(run(erased, feeds), run(trained, feeds))
        if error > rtol:
            raise SpaError(f"internal error: erasing the zero structures changed the outputs by {error:.2e} (relative)")
        after = Graph(erased)
        report = EraseReport(erased=[s.to_dict() for s in zero], structures=len(self.structures),
                             params_before=count_params(graph), params_after=count_params(after),
                             flops_before=count_flops(graph), flops_after=count_flops(after), notes=list(self.skipped))
        return Pruned(erased, report, trained, {s.id: np.arange(1) for s in zero}, error)
