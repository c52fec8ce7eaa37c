"""JAX front end: export Flax nnx modules and plain JAX functions to ONNX with jax2onnx.

The batch dim becomes the symbolic dim ``batch`` (jax2onnx traces shape tuples with a string
dim symbolically). jax2onnx keeps NHWC between layers: it writes Transposes around each Conv
and drops those that cancel between consecutive NCHW ops. It keeps BatchNormalization as its
own node, writes Linear as Gemm (weight ``[in, out]``) and a mean as ReduceSum + Div.

Importing this module does not import JAX.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["export_flax", "export_jax_function"]

_MISSING = "JAX support needs the 'jax' extra: pip install -e '.[jax]'"
_BATCH = "batch"

Shape = Sequence[int | str]


def export_flax(module: Any, path: str | os.PathLike, input_shape: Shape, opset: int = 18,
                dynamic_batch: bool = True) -> str:
    """Export a single-input Flax nnx module to ``path``, in inference mode.

    Args:
        module: an ``nnx.Module``. It is exported through an ``nnx.view`` with
            ``use_running_average=True`` and ``deterministic=True`` (BatchNorm uses its running
            statistics, Dropout is off); the module itself is not changed.
        path: the ``.onnx`` file to write (atomically); its folder is created if needed.
        input_shape: the input shape including the batch dim, e.g. ``(2, 32, 32, 3)`` (NHWC).
        opset: ONNX opset to write (jax2onnx's own default is 23). 18 by default: jax2onnx
            writes a jnp.mean's ReduceMean with its axes as an input, which only opset 18 allows.
        dynamic_batch: make the batch dim the symbolic dim ``batch``.

    Returns:
        ``path`` as a ``str``.
    """
    jax2onnx = _import_jax2onnx()
    from flax import nnx

    inference = nnx.view(module, use_running_average=True, deterministic=True, raise_if_not_found=False)
    proto = jax2onnx.to_onnx(inference, [_trace_shape(input_shape, dynamic_batch)], opset=opset,
                             input_names=["input"], output_names=["output"])
    return _save(proto, path)


def export_jax_function(fn: Callable[..., Any], path: str | os.PathLike, input_shapes: Sequence[Shape],
                        opset: int = 18, dynamic_batch: bool = True,
                        input_names: Sequence[str] | None = None,
                        output_names: Sequence[str] | None = None) -> str:
    """Export a JAX function of float32 arrays (parameters closed over) to ``path``.

    Args:
        fn: called as ``fn(*inputs)``; arrays it closes over become initializers.
        path: the ``.onnx`` file to write (atomically); its folder is created if needed.
        input_shapes: one shape per positional input, each including the batch dim.
        opset: ONNX opset to write.
        dynamic_batch: make axis 0 of every input the symbolic dim ``batch``.
        input_names / output_names: graph input / output names; defaults ``input`` (or
            ``input_0``, ``input_1``, ...) and jax2onnx's output names.
    """
    jax2onnx = _import_jax2onnx()

    shapes = [_trace_shape(shape, dynamic_batch) for shape in input_shapes]
    if input_names is None:
        input_names = ["input"] if len(shapes) == 1 else [f"input_{i}" for i in range(len(shapes))]
    proto = jax2onnx.to_onnx(fn, shapes, opset=opset, input_names=list(input_names),
                             output_names=None if output_names is None else list(output_names))
    return _save(proto, path)


def _import_jax2onnx():
    try:
        import jax  # noqa: F401  (jax2onnx needs it; fail on the first missing piece)
        import jax2onnx
    except ImportError as error:
        raise ImportError(_MISSING) from error
    return jax2onnx


def _trace_shape(shape: Shape, dynamic_batch: bool) -> tuple[int | str, ...]:
    return (_BATCH, *shape[1:]) if dynamic_batch else tuple(shape)


def _save(proto, path) -> str:
    """Fix up what jax2onnx writes, then write ``proto`` atomically."""
    import onnx

    from spa.io import save_model

    # jax2onnx 0.17 removes the Transposes between consecutive NCHW ops but keeps their NHWC
    # shapes in value_info; those wrong shapes are dropped and inferred again.
    proto.graph.ClearField("value_info")
    proto = onnx.shape_inference.infer_shapes(proto)
    # onnxruntime 1.31 refuses IR versions above 13; newer jax2onnx releases may write one.
    needed = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    proto.ir_version = min(proto.ir_version, needed)
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return save_model(proto, path)
