"""Optional dependencies: which extra of `pip install spa[...]` brings each one.

The core (onnx, onnxruntime, numpy, networkx, scipy, tqdm, matplotlib) analyzes, prunes by the
weights and rewrites; PyTorch is for gradients, training and `to_torch`, and each frontend needs its
framework. A job that reaches a missing one is stopped with the line `missing()` writes.
"""
from __future__ import annotations

EXTRAS = {  # top-level module -> (what it is, the extra that installs it)
    "torch": ("PyTorch", "torch"),
    "torchvision": ("PyTorch", "torch"),
    "onnx2torch": ("PyTorch", "torch"),
    "onnxscript": ("PyTorch", "torch"),
    "tensorflow": ("TensorFlow", "tf"),
    "keras": ("TensorFlow", "tf"),
    "tf2onnx": ("TensorFlow", "tf"),
    "jax": ("JAX", "jax"),
    "jaxlib": ("JAX", "jax"),
    "flax": ("JAX", "jax"),
    "jax2onnx": ("JAX", "jax"),
    "paddle": ("PaddlePaddle", "paddle"),
    "paddle2onnx": ("PaddlePaddle", "paddle"),
}


def missing(error: ImportError) -> str | None:
    """The one line for a job that needs an extra that is not installed, or None when the
    missing module is not one of the extras' (a broken install: not ours to explain)."""
    module = (getattr(error, "name", None) or "").split(".")[0]
    if module not in EXTRAS:
        return None
    what, extra = EXTRAS[module]
    return f"this needs {what}, which is not installed (no module '{module}'): pip install 'spa[{extra}]'"
