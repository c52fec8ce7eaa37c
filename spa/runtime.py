"""onnxruntime: sessions, random inputs shaped like the model's, and latency measurement."""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .errors import SpaError

# A serialized model over this size cannot be handed to onnxruntime in memory (protobuf's 2 GB).
_IN_MEMORY_LIMIT = 1_800_000_000


def session(model, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for a ModelProto or a path; SpaError if onnxruntime refuses it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        if isinstance(model, onnx.ModelProto):
            if model.ByteSize() > _IN_MEMORY_LIMIT:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "model.onnx")
                    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
                    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise SpaError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0][:300]}") from None


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs the caller feeds (initializers listed as inputs have defaults and are left out)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def random_inputs(model: onnx.ModelProto, batch: int = 2, other_dims: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds: symbolic dims become `batch` on axis 0 and `other_dims` elsewhere.

    Floats are standard normal; integers and booleans are zeros (valid as indices of any table).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in graph_inputs(model):
        tensor_type = vi.type.tensor_type
        shape = [
            d.dim_value if d.HasField("dim_value") else (batch if axis == 0 else other_dims)
            for axis, d in enumerate(tensor_type.shape.dim)
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating) or dtype.name in ("bfloat16",):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


def run(model, feeds: dict[str, np.ndarray], sess: ort.InferenceSession | None = None) -> list[np.ndarray]:
    sess = sess or session(model)
    try:
        return sess.run(None, feeds)
    except Exception as e:
        raise SpaError(f"onnxruntime failed to run the model: {str(e).strip().splitlines()[0][:300]}") from None


def latency(model, feeds: dict[str, np.ndarray] | None = None, warmup: int = 5, repeats: int = 30,
            threads: int | None = None) -> dict:
    """Median and 90th-percentile wall time of one run, in milliseconds, after warm-up runs."""
    sess = session(model, threads)
    if feeds is None:
        feeds = random_inputs(model if isinstance(model, onnx.ModelProto) else onnx.load(model, load_external_data=False), batch=1)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "runs": repeats}
