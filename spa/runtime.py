"""onnxruntime: sessions, random inputs shaped like the model's, and latency measurement."""
from __future__ import annotations

import copy
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .errors import SpaError



def session(model, threads: int | None = None, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    """An onnxruntime CPU session for a ModelProto or a path; SpaError if onnxruntime refuses it.

    A bfloat16 model runs as the same graph in float32: onnxruntime's CPU kernels take no bfloat16.
    """
    if not isinstance(model, onnx.ModelProto) and has_bfloat16(onnx.load(os.fspath(model), load_external_data=False)):
        model = onnx.load(os.fspath(model))
    if isinstance(model, onnx.ModelProto) and has_bfloat16(model):
        model = as_float32(model)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as SpaError, not as onnxruntime log lines
    if threads:
        options.intra_op_num_threads = threads
    try:
        if isinstance(model, onnx.ModelProto):
            skeleton, names, values = _weights_apart(model)
            if names:
                options.add_external_initializers(names, values)
            return ort.InferenceSession(skeleton.SerializeToString(), options, providers=[provider])
        return ort.InferenceSession(os.fspath(model), options, providers=[provider])
    except Exception as e:  # onnxruntime raises its own exception types
        raise SpaError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0][:300]}") from None


# Weights of these types go to onnxruntime as arrays (np.frombuffer reads them as they are stored).
_ARRAY_TYPES = {t for t in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                            onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                            onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                            onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL)}
_APART_ELEMENTS = 4096  # smaller weights stay in the graph: shape constants must be readable there


def _weights_apart(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], list]:
    """The model with its large weights marked external, and those weights as OrtValues to hand to
    onnxruntime beside it. Serializing a whole model copies every weight once more, and past 2 GB
    protobuf cannot serialize it at all; a graph without its weights is small at any size."""
    g = model.graph
    initializers, names, values = [], [], []
    for t in g.initializer:
        if (t.data_type in _ARRAY_TYPES and t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL
                and int(np.prod(t.dims, dtype=np.int64)) >= _APART_ELEMENTS):
            array = np.frombuffer(t.raw_data, dtype=helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(array))
            t = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, data_location=onnx.TensorProto.EXTERNAL)
            t.external_data.add(key="location", value="given-in-memory")  # never read: onnxruntime takes the value given
        initializers.append(t)
    if not names:
        return model, names, values
    skeleton = onnx.ModelProto(
        ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions,
        graph=onnx.GraphProto(node=g.node, name=g.name, input=g.input, output=g.output, value_info=g.value_info,
                              initializer=initializers, sparse_initializer=g.sparse_initializer))
    return skeleton, names, values


def quiet() -> ort.RunOptions:
    """Run options under which a failing run raises without printing onnxruntime's log lines."""
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def has_bfloat16(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.BFLOAT16 for t in model.graph.initializer) or any(
        vi.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 for vi in list(model.graph.input) + list(model.graph.output))


def as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float32 where it computed in bfloat16 (for running it here)."""
    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    model = copy.deepcopy(model)
    graph = model.graph

    def widened(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)

    for i, t in enumerate(graph.initializer):
        if t.data_type == bf16:
            graph.initializer[i].CopyFrom(widened(t))
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type == bf16:
            vi.type.tensor_type.elem_type = f32
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == bf16:
                a.i = f32
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == bf16:
                a.t.CopyFrom(widened(a.t))
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs the caller feeds (initializers listed as inputs have defaults and are left out)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def random_inputs(model: onnx.ModelProto, batch: int = 2, other_dims: int = 4, seed: int = 0,
                  shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Random feeds. `shapes` (input name -> shape, see spa.inputs.choose_shapes) gives the sizes,
    a symbolic axis 0 taking `batch`; without it, symbolic dims become `batch` on axis 0 and
    `other_dims` elsewhere.

    Floats are standard normal; integers and booleans are zeros (valid as indices of any table).
    """
    from .inputs import batch_symbols, declared

    rng = np.random.default_rng(seed)
    inputs = declared(model)
    batch_axes = batch_symbols(inputs)
    feeds = {}
    for vi in graph_inputs(model):
        dims = inputs[vi.name]
        chosen = (shapes or {}).get(vi.name) or [other_dims] * len(dims)
        shape = [d if isinstance(d, int) else batch if axis == 0 or d in batch_axes else chosen[axis]
                 for axis, d in enumerate(dims)]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating) or dtype.name in ("bfloat16",):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


def run(model, feeds: dict[str, np.ndarray], sess: ort.InferenceSession | None = None) -> list[np.ndarray]:
    sess = sess or session(model)
    try:
        return sess.run(None, _feedable(feeds), quiet())
    except Exception as e:
        raise SpaError(f"onnxruntime failed to run the model: {str(e).strip().splitlines()[0][:300]}") from None


def _feedable(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bfloat16 feeds as float32, for the float32 graph a bfloat16 model runs as (see session)."""
    return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in feeds.items()}


def latency(models: list, feeds: dict[str, np.ndarray] | None = None, warmup: int = 5, repeats: int = 30,
            threads: int | None = None, provider: str = "CPUExecutionProvider") -> list[dict]:
    """Median, 90th-percentile and fastest wall time of one run of each model, in milliseconds, after
    warm-up runs. The models take turns, run after run, so that a change in the machine's load
    weighs on all of them alike and their ratio holds."""
    sessions = [session(m, threads, provider) for m in models]
    if feeds is None:
        first = models[0]
        feeds = random_inputs(first if isinstance(first, onnx.ModelProto) else onnx.load(first, load_external_data=False), batch=1)
    feeds = _feedable(feeds)
    for sess in sessions:
        for _ in range(warmup):
            sess.run(None, feeds)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for sess, own in zip(sessions, times):
            start = time.perf_counter()
            sess.run(None, feeds)
            own.append((time.perf_counter() - start) * 1e3)
    return [{"median_ms": statistics.median(t), "p90_ms": sorted(t)[int(0.9 * (len(t) - 1))], "min_ms": min(t),
             "runs": repeats} for t in times]
