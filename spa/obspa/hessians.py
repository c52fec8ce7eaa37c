"""A layer's inputs as rows of features, and their second moments: the Hessians (see spa.obspa)."""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from .layers import attr

ROW_CHUNK = 1 << 23  # elements of unfolded input turned into a Hessian update at a time


def _conv_pads(node: onnx.NodeProto, spatial: tuple, kernel: tuple, strides: list, dilations: list) -> list[int]:
    """ONNX pads (all begins, then all ends) with auto_pad resolved."""
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    n = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * n)
    return list(attr(node, "pads", [0] * (2 * n)))


def _unfold(node: onnx.NodeProto, x: np.ndarray, kernel: tuple) -> np.ndarray:
    """A Conv's input as rows of (channel, kernel position) features, one row per output position."""
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    pads = _conv_pads(node, tuple(x.shape[2:]), kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[n + a]) for a in range(n)])
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = tuple(range(2, 2 + n))
    windows = sliding_window_view(x, extents, axis=spatial)  # N, C, *positions, *extents (a view)
    windows = windows[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
                       *(slice(None, None, d) for d in dilations))]
    # rows: sample and output position; features: channel-major, then kernel position (as the weight)
    order = (0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
    return windows.transpose(order).reshape(-1, x.shape[1] * int(np.prod(kernel)))


def row_chunks(node: onnx.NodeProto, x: np.ndarray, kernel: tuple):
    """The operator's input as rows of features, a bounded number of elements at a time."""
    if node.op_type == "Gemm":
        yield x
        return
    if node.op_type == "MatMul":
        rows = x.reshape(-1, x.shape[-1])
        step = max(1, ROW_CHUNK // max(rows.shape[1], 1))
        for start in range(0, len(rows), step):
            yield rows[start:start + step]
        return
    per_sample = int(np.prod(x.shape[1:])) * int(np.prod(kernel))  # about the unfolded size of one sample
    step = max(1, ROW_CHUNK // max(per_sample, 1))
    for start in range(0, len(x), step):
        yield _unfold(node, x[start:start + step], kernel)


class Moments:
    """Running sums of x x^T and of x over one layer's input rows."""

    def __init__(self, features: int, bias: bool):
        self.xx = np.zeros((features, features))
        self.x = np.zeros(features)
        self.rows = 0
        self.bias = bias

    def add(self, rows: np.ndarray):
        rows = rows.astype(np.float32, copy=False)  # float32 products (2-3x faster) summed in float64
        self.xx += rows.T @ rows
        self.x += rows.sum(0, dtype=np.float64)
        self.rows += rows.shape[0]

    def hessian(self) -> np.ndarray:
        """E[x x^T], with the bias's constant input as the last feature when there is one."""
        rows = max(self.rows, 1)
        h = self.xx / rows
        if not self.bias:
            return h
        mean = self.x / rows
        return np.block([[h, mean[:, None]], [mean[None, :], np.ones((1, 1))]])

    @property
    def nbytes(self) -> int:
        return self.xx.nbytes


class HessianStore:
    """Each layer's damped inverse Hessian, once its Hessian is complete: in memory when all of
    them fit the budget, otherwise on disk (read back one at a time). `peak` is the most bytes of
    Hessians held in memory at once, counting those being accumulated."""

    def __init__(self, budget: int, total: int):
        self.on_disk = total > budget
        self.directory = tempfile.mkdtemp(prefix="spa-obspa-") if self.on_disk else None
        self.memory: dict[str, np.ndarray] = {}
        self.files: dict[str, str] = {}
        self.held = 0
        self.peak = 0

    def hold(self, nbytes: int):
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def put(self, name: str, matrix: np.ndarray):
        if self.on_disk:
            self.files[name] = os.path.join(self.directory, f"{len(self.files)}.npy")
            np.save(self.files[name], matrix)
        else:
            self.memory[name] = matrix
            self.hold(matrix.nbytes)

    def get(self, name: str) -> np.ndarray:
        return np.load(self.files[name]) if self.on_disk else self.memory[name]

    def close(self):
        self.memory.clear()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


