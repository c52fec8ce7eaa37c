"""The per-layer latency model: how long a pruned model will take to run, before it is written.

Each layer (a Conv, a Gemm, a MatMul with a constant weight) is timed alone in onnxruntime, as a
one-operator model at its shapes, for the batch size, thread count and execution provider given,
and the time is cached on disk (one JSON file per onnxruntime version, provider, thread count and
CPU, under ~/.cache/spa/latency or $SPA_CACHE_DIR/latency), so each shape is timed once on a
machine. A model's latency is its layers' times plus the rest: every other operator and the
per-run overhead, measured once as the whole original model's latency (its fastest run, as the
layers') less its layers', and
scaled with the elements the other operators produce (element-wise work shrinks with the
channels; a fixed per-run cost is counted as shrinking too, which the final side-by-side timing
corrects, see spa.api).

With a latency target (`spa prune --target-latency L`), choices are costed by `predict` (no
rewrite, no run), and each group's channel scores are divided by the latency one of its channels
costs (`unit_costs`), so that channels cheap to lose and dear to run go first (as HALP does).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .errors import SpaError
from .graph import Graph, shapes_at
from .hardware import cpu_flags
from .runtime import latency, random_inputs

TIMED_OPS = ("Conv", "Gemm", "MatMul")
WARMUP = 3
REPEATS = 15


class LatencyModel:
    """Predicted latency (ms) of `graph` with some channels removed, at `input_shapes` whose
    batch axis is `batch`."""

    def __init__(self, graph: Graph, input_shapes: dict[str, tuple], batch: int = 1, threads: int | None = None,
                 provider: str = "CPUExecutionProvider", whole_ms: float | None = None):
        check_provider(provider)
        self.graph = graph
        self.threads, self.provider = threads, provider
        self.shapes = {n: (batch, *s[1:]) for n, s in input_shapes.items()}
        self.at = shapes_at(graph.model, self.shapes)  # every tensor's concrete shape
        self.cache = TimingCache(provider, threads)
        self.layers = [i for i, node in enumerate(graph.nodes) if _signature(graph, node, self.at) is not None]
        layers = set(self.layers)
        self._rest_outputs = [o for i, node in enumerate(graph.nodes) if i not in layers for o in node.output
                              if o and self.at.get(o) is not None]
        self._rest_elements = sum(_numel(self.at[o]) for o in self._rest_outputs)  # the other operators' outputs
        if whole_ms is None:
            feeds = random_inputs(graph.model, shapes=self.shapes)
            whole_ms = latency([graph.model], feeds, threads=threads, provider=provider)[0]["min_ms"]
        self.layer_ms = self._layers_ms(self.at)
        self.rest_ms = max(whole_ms - sum(self.layer_ms.values()), 0.0)
        self.original = self.predict_shapes(self.at)
        self.cache.save()

    def predict(self, removed: dict[tuple[str, int], int]) -> float:
        """Predicted latency (ms) once `removed` ((tensor, axis) -> channels taken out) are gone."""
        return self.predict_shapes(self._shrunk(removed))

    def predict_shapes(self, at: dict) -> float:
        layers = sum(self._layers_ms(at).values())
        after = sum(_numel(at[o]) for o in self._rest_outputs)
        return layers + self.rest_ms * (after / self._rest_elements if self._rest_elements else 1.0)

    def unit_costs(self, groups) -> dict[int, float]:
        """Per group: the latency (ms) one of its channels costs, over the layers it runs through
        (each layer's time divided by its channels on the pruned axis)."""
        costs = {}
        for group in groups:
            total = 0.0
            for member in group.members:
                shape = self.at.get(member.tensor)
                if not shape or not isinstance(shape[member.axis], int) or not shape[member.axis]:
                    continue
                for i in self.layers:
                    node = self.graph.nodes[i]
                    if member.tensor in node.input[:2] or member.tensor in node.output[:1]:
                        total += self.layer_ms[i] / shape[member.axis]
            costs[group.id] = total
        return costs

    def _layers_ms(self, at: dict) -> dict[int, float]:
        return {i: self.cache.time(_signature(self.graph, self.graph.nodes[i], at)) for i in self.layers}

    def _shrunk(self, removed: dict[tuple[str, int], int]) -> dict:
        at = dict(self.at)
        for (name, axis), count in removed.items():
            shape = at.get(name)
            if shape is not None and isinstance(shape[axis], int):
                at[name] = (*shape[:axis], shape[axis] - count, *shape[axis + 1:])
        return at


def check_provider(provider: str):
    available = ort.get_available_providers()
    if provider not in available:
        raise SpaError(f"--provider {provider}: onnxruntime here has {', '.join(available)}")


def _signature(graph: Graph, node: onnx.NodeProto, at: dict) -> dict | None:
    """What a layer's time depends on: its operator, shapes and attributes; None for a node that
    is not a timed layer (or whose shapes are not all known)."""
    if node.op_type not in TIMED_OPS or node.domain not in ("", "ai.onnx"):
        return None
    if not graph.is_constant_derived(node.input[1]):  # attention's MatMuls of two activations
        return None
    shapes = [at.get(n) for n in node.input if n]
    if any(s is None or not all(isinstance(d, int) and d > 0 for d in s) for s in shapes):
        return None
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attributes = {k: v.decode() if isinstance(v, bytes) else v for k, v in attributes.items()}
    if attributes.get("group", 1) > 1:  # grouped channels pruned: the groups follow (a depthwise conv's count)
        attributes["group"] = shapes[0][1] // shapes[1][1]
    return {"op": node.op_type, "opset": graph.opset, "shapes": [list(s) for s in shapes], "attributes": attributes}


def _numel(shape) -> int:
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape])) if shape else 0


class TimingCache:
    """Layer signature -> milliseconds, kept on disk per runtime setting and CPU."""

    def __init__(self, provider: str, threads: int | None):
        self.provider, self.threads = provider, threads
        machine = hashlib.sha1((platform.processor() + platform.machine() + " ".join(sorted(cpu_flags()))).encode())
        name = f"ort{ort.__version__}-{provider}-threads{threads or 0}-{machine.hexdigest()[:10]}.json"
        root = os.environ.get("SPA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "spa")
        self.path = os.path.join(root, "latency", name)
        try:
            with open(self.path) as f:
                self.times = json.load(f)
        except (OSError, ValueError):  # none yet, or unreadable: timed afresh
            self.times = {}
        self.timed = 0  # layers timed by this process (not found in the cache)

    def time(self, signature: dict) -> float:
        key = json.dumps(signature, sort_keys=True)
        if key not in self.times:
            self.times[key] = time_layer(signature, self.threads, self.provider)
            self.timed += 1
        return self.times[key]

    def save(self):
        """Write the cache atomically; a cache that cannot be written only costs the next run time."""
        if not self.timed:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(self.times, f)
            os.replace(tmp, self.path)
        except OSError:
            pass


def time_layer(signature: dict, threads: int | None, provider: str) -> float:
    """Milliseconds of the fastest of REPEATS runs of the layer alone (a one-operator model, random
    weights): the fastest, not the median, because a layer's own cost is what is wanted, and on a
    shared machine the slower runs measure the other processes."""
    op, shapes = signature["op"], signature["shapes"]
    rng = np.random.default_rng(0)
    names = ["x", "w", "b"][:len(shapes)]
    initializers = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                    for n, s in zip(names[1:], shapes[1:])]
    node = helper.make_node(op, names, ["y"], **signature["attributes"])
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shapes[0])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", signature["opset"])], ir_version=8)
    feeds = {"x": rng.standard_normal(shapes[0]).astype(np.float32)}
    return latency([model], feeds, warmup=WARMUP, repeats=REPEATS, threads=threads, provider=provider)[0]["min_ms"]
