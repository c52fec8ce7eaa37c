"""Importance of a structure: the relative error its removal causes at its join.

Its join outputs other + branch; erased, it outputs other. The score is ||branch|| / ||other +
branch|| summed over the inputs ("block influence" in depth pruning), on the user's own inputs
(`calib`, no labels needed) or, data-free, on SPA's synthetic inputs (random normal feeds at the
sizes spa.inputs picks). The lowest score goes first.
"""
from __future__ import annotations

import numpy as np

from ..activations import RuntimeNetwork
from ..calib import Calibration
from ..graph import Graph
from ..runtime import random_inputs
from .structures import Structure

SAMPLES = 4  # synthetic batches the error is summed over, data-free
BATCH = 32  # calibration samples per run


def score(graph: Graph, structures: list[Structure], shapes: dict | None = None,
          calib: Calibration | None = None) -> dict[int, float]:
    """Structure id -> relative error at its join when it alone is erased."""
    if not structures:
        return {}
    values: dict[str, np.ndarray] = {}
    sums = {s.id: [0.0, 0.0] for s in structures}

    def receive(name, value):
        values[name] = np.asarray(value, dtype=np.float64)

    tapped = [graph.nodes[s.join].output[0] for s in structures] + [s.other for s in structures]
    network = RuntimeNetwork(graph)
    for batch in input_batches(graph, shapes, calib, synthetic_batch=1):
        network.stream(tapped, [batch], receive)
        for s in structures:
            joined = values[graph.nodes[s.join].output[0]]
            sums[s.id][0] += float(np.sum((joined - values[s.other]) ** 2))
            sums[s.id][1] += float(np.sum(joined ** 2))
    return {i: float(np.sqrt(err / total)) if total > 0 else float(err > 0) for i, (err, total) in sums.items()}


def input_batches(graph: Graph, shapes: dict | None, calib: Calibration | None, synthetic_batch: int,
                  calib_batch: int = BATCH) -> list[dict]:
    """The inputs importance is measured on: the calibration data in batches of `calib_batch`, or
    SAMPLES synthetic batches of `synthetic_batch` samples each."""
    if calib is not None:
        return [inputs for inputs, _ in calib.batches(calib_batch)]
    return [random_inputs(graph.model, batch=synthetic_batch, shapes=shapes, seed=seed) for seed in range(SAMPLES)]
