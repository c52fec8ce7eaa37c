"""A layer's inputs as rows of features, and their second moments: the Hessians (see spa.obspa)."""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
import onnx
import torch
import torch.nn.functional as F

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


def _unfold(node: onnx.NodeProto, x: torch.Tensor, kernel: tuple) -> torch.Tensor:
    """A Conv's input as rows of (channel, kernel position) features, one row per output position."""
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    pads = _conv_pads(node, tuple(x.shape[2:]), kernel, strides, dilations)
    if n == 1:  # a 1-D Conv is a 2-D one over a height of 1
        x, kernel, pads = x.unsqueeze(2), (1, *kernel), [0, pads[0], 0, pads[1]]
        strides, dilations = [1, *strides], [1, *dilations]
    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    columns = F.unfold(x, tuple(kernel), dilation=tuple(dilations), stride=tuple(strides))  # N, C*K, L
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def row_chunks(node: onnx.NodeProto, x: torch.Tensor, kernel: tuple):
    """The operator's input as rows of features, a bounded number of elements at a time."""
    if node.op_type == "Gemm":
        yield x
        return
    if node.op_type == "MatMul":
        rows = x.reshape(-1, x.shape[-1])
        step = max(1, ROW_CHUNK // max(rows.shape[1], 1))
        yield from rows.split(step)
        return
    per_sample = int(np.prod(x.shape[1:])) * int(np.prod(kernel))  # about the unfolded size of one sample
    for part in x.split(max(1, ROW_CHUNK // max(per_sample, 1))):
        yield _unfold(node, part, kernel)


class Moments:
    """Running sums of x x^T and of x over one layer's input rows."""

    def __init__(self, features: int, bias: bool, device: torch.device):
        self.xx = torch.zeros(features, features, dtype=torch.float64, device=device)
        self.x = torch.zeros(features, dtype=torch.float64, device=device)
        self.rows = 0
        self.bias = bias

    def add(self, rows: torch.Tensor):
        # float32 products (2-3x faster on a CPU) summed in float64; float64 throughout on a GPU
        rows = rows.double() if rows.is_cuda else rows.float()
        self.xx += (rows.T @ rows).double()
        self.x += rows.sum(0, dtype=torch.float64)
        self.rows += rows.shape[0]

    def hessian(self) -> np.ndarray:
        """E[x x^T], with the bias's constant input as the last feature when there is one."""
        rows = max(self.rows, 1)
        h = (self.xx / rows).cpu().numpy()
        if not self.bias:
            return h
        mean = (self.x / rows).cpu().numpy()
        return np.block([[h, mean[:, None]], [mean[None, :], np.ones((1, 1))]])

    @property
    def nbytes(self) -> int:
        return self.xx.numel() * 8


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


