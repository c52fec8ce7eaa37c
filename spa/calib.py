"""Calibration data for the criteria that need data: arrays keyed by the model's input names.

A calibration file is an .npz archive (`np.savez`) with one array per graph input, each of shape
(N, ...) with the input's static dimensions, and optionally `labels`: N integer class indices (or
(N, ...) per-position classes for a per-pixel output). Arrays are checked against the model before
any work starts; every mismatch is a one-line SpaError.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from onnx import helper

from .errors import SpaError
from .runtime import graph_inputs

LABELS = "labels"


@dataclass
class Calibration:
    inputs: dict[str, np.ndarray]  # graph input name -> (N, ...) array of the input's dtype
    labels: np.ndarray | None  # (N, ...) int64, or None
    fixed_batch: int | None = None  # the model's batch size when its inputs fix it

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """(inputs, labels) in order; a model with a fixed batch size gets batches of exactly that."""
        step = self.fixed_batch or batch_size
        for start in range(0, self.size, step):
            part = slice(start, start + step)
            yield {n: a[part] for n, a in self.inputs.items()}, None if self.labels is None else self.labels[part]

    def count(self, batch_size: int) -> int:
        step = self.fixed_batch or batch_size
        return -(-self.size // step)


def load_calibration(source, model) -> Calibration:
    """Read and check calibration data: `source` is an .npz path, a dict of arrays or a
    Calibration; `model` the ONNX ModelProto it feeds."""
    if isinstance(source, Calibration):
        return source
    name = "the calibration data"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        arrays = _read_npz(name)
    elif isinstance(source, dict):
        arrays = {k: np.asarray(v) for k, v in source.items()}
    else:
        raise SpaError(f"calibration data must be an .npz path or a dict of arrays, not {type(source).__name__}")
    expected = graph_inputs(model)
    input_names = [vi.name for vi in expected]
    for key in arrays:
        if key not in input_names and key != LABELS:
            raise SpaError(f"{name}: array '{key}' is not an input of the model "
                           f"(inputs: {', '.join(input_names)}; optional: {LABELS})")
    inputs = {vi.name: _checked_input(name, vi, arrays) for vi in expected}
    sizes = {len(a) for a in inputs.values()}
    if len(sizes) > 1:
        raise SpaError(f"{name}: the inputs have different numbers of samples ({', '.join(map(str, sorted(sizes)))})")
    size = sizes.pop() if sizes else 0
    if size == 0:
        raise SpaError(f"{name}: no samples")
    labels = _checked_labels(name, arrays.get(LABELS), size)
    fixed = {_fixed_batch(vi) for vi in expected} - {None}
    fixed_batch = fixed.pop() if len(fixed) == 1 else None
    if fixed_batch and size % fixed_batch:
        raise SpaError(f"{name}: the model takes batches of exactly {fixed_batch}, and {size} samples do not divide into them")
    return Calibration(inputs, labels, fixed_batch)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise SpaError(f"no such calibration file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SpaError(f"{path} is not an .npz archive of arrays (np.savez): {str(e).splitlines()[0][:120]}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise SpaError(f"{path} is a single array (.npy), not an .npz archive of arrays keyed by input name (np.savez)")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise SpaError(f"{path}: an array cannot be read: {str(e).splitlines()[0][:120]}") from None


def _checked_input(name: str, vi, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if vi.name not in arrays:
        raise SpaError(f"{name} has no array '{vi.name}' for the model input of that name")
    array = arrays[vi.name]
    tensor_type = vi.type.tensor_type
    want = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    shown = "(" + ", ".join(str(d) if d is not None else "N" if i == 0 else "?" for i, d in enumerate(want)) + ")"
    if array.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], array.shape[1:])):
        raise SpaError(f"{name}: '{vi.name}' has shape {array.shape}; the model takes {shown}")
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    if np.issubdtype(dtype, np.floating) != np.issubdtype(array.dtype, np.floating) or array.dtype.kind not in "fiub":
        raise SpaError(f"{name}: '{vi.name}' holds {array.dtype} values; the model takes {dtype}")
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def _checked_labels(name: str, labels: np.ndarray | None, size: int) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.dtype.kind not in "iu" or labels.ndim == 0 or len(labels) != size:
        raise SpaError(f"{name}: '{LABELS}' must be {size} integer class indices (one per sample), "
                       f"got {labels.dtype} of shape {labels.shape}")
    return labels.astype(np.int64)


def _fixed_batch(vi) -> int | None:
    dims = vi.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
