"""Distillation: the losses that match a student's outputs to a teacher's, and the loop that
trains a torch student on them (the torch half of spa.finetune).

Every floating-point output of the model is matched, and the losses are summed (`output_kinds`
says which loss each output gets):
- class scores: T^2 x KL(softmax(teacher / T) || softmax(student / T)) over the class axis,
  averaged over the other positions (Hinton et al., 2015; the T^2 keeps the gradients' scale
  whatever the temperature T). The scores are the output itself where it is logits, or its log
  where a Softmax computes it (probabilities are logits up to a constant per position);
- anything else: the mean squared error divided by the variance of the teacher's output over the
  data, so that outputs of any scale weigh alike in the sum.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpaError

LOSSES = ("auto", "kl", "mse")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_SMALLEST_PROBABILITY = 1e-12  # log(p) of a Softmax output: an exact 0 would be -inf


@dataclass(frozen=True)
class OutputKind:
    """How one graph output is distilled."""

    name: str
    loss: str  # "kl", "mse", or "none" (an integer output: nothing to differentiate)
    axis: int = 1  # the class axis (kl)
    scores: str = "logits"  # "logits", "probabilities" (a Softmax's) or "log_probabilities" (a LogSoftmax's)


def output_kinds(model: onnx.ModelProto, loss: str = "auto", class_axis: int = 1) -> list[OutputKind]:
    """The loss of each graph output: with "auto", KL for an output a Softmax or LogSoftmax
    computes (over its axis) and for a (batch, classes) output, MSE for the rest; "kl" takes
    every other output as class logits on `class_axis` (1: NCHW maps; -1: a recognizer's
    [batch, steps, classes]); "mse" matches every output's values."""
    if loss not in LOSSES:
        raise SpaError(f"unknown distillation loss '{loss}' (choose from {', '.join(LOSSES)})")
    producers = {out: node for node in model.graph.node for out in node.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    kinds = []
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type not in _FLOATS:
            kinds.append(OutputKind(output.name, "none"))
            continue
        dims = tensor_type.shape.dim
        softmax = _softmax_axis(output.name, producers, opset, len(dims)) if loss != "mse" else None
        if loss == "mse":
            kinds.append(OutputKind(output.name, "mse"))
        elif softmax is not None:
            kinds.append(OutputKind(output.name, "kl", *softmax))
        else:
            two_d_scores = len(dims) == 2 and not (dims[1].HasField("dim_value") and dims[1].dim_value <= 1)
            if loss == "kl":
                kinds.append(OutputKind(output.name, "kl", class_axis))
            else:
                kinds.append(OutputKind(output.name, "kl" if two_d_scores else "mse"))
    if all(kind.loss == "none" for kind in kinds):
        raise SpaError("the model has no floating-point output to distill")
    return kinds


def _softmax_axis(name: str, producers: dict, opset: int, rank: int) -> tuple[int, str] | None:
    """(class axis of the output, "probabilities" or "log_probabilities") when a Softmax or
    LogSoftmax computes the output, possibly behind Transposes (a CRNN's [T, B, C] made
    [B, T, C]); None otherwise, or where an opset-12 softmax spans several axes."""
    perms = []
    node = producers.get(name)
    while node is not None and node.op_type in ("Transpose", "Identity"):
        if node.op_type == "Transpose":
            perms.append(next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(rank))[::-1]))
        node = producers.get(node.input[0])
    if node is None or node.op_type not in ("Softmax", "LogSoftmax") or (perms and not rank):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    if rank:
        axis %= rank
        if opset < 13 and axis != rank - 1:  # before opset 13, a softmax over every axis from `axis` on
            return None
    for perm in reversed(perms):  # in the order they run: output axis j is input axis perm[j]
        axis = perm.index(axis)
    return axis, "probabilities" if node.op_type == "Softmax" else "log_probabilities"


def mse_scales(kinds: list[OutputKind], teacher: list[np.ndarray]) -> list[float]:
    """Per output, the variance of the teacher's values (1 for the KL outputs): what its squared
    error is divided by."""
    return [max(float(np.var(t, dtype=np.float64)), 1e-12) if kind.loss == "mse" else 1.0
            for kind, t in zip(kinds, teacher)]


def _log_distribution(value: torch.Tensor, kind: OutputKind, temperature: float) -> torch.Tensor:
    if kind.scores == "probabilities":
        value = value.clamp_min(_SMALLEST_PROBABILITY).log()
    return F.log_softmax(value / temperature, dim=kind.axis)


def distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], kinds: list[OutputKind],
                      scales: list[float], temperature: float) -> torch.Tensor:
    """The summed loss over every output (see the module docstring)."""
    total = student[0].new_zeros(())
    for s, t, kind, scale in zip(student, teacher, kinds, scales):
        if kind.loss == "kl":
            log_q_student = _log_distribution(s.float(), kind, temperature)
            log_q_teacher = _log_distribution(t.float(), kind, temperature)
            kl = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(dim=kind.axis)
            total = total + kl.mean() * temperature ** 2
        elif kind.loss == "mse":
            total = total + F.mse_loss(s.float(), t.float()) / scale
    return total


def predictions(value: np.ndarray | torch.Tensor, kind: OutputKind):
    """The predicted class at every position of a KL output (argmax over its class axis)."""
    return value.argmax(kind.axis)


def as_list(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


@dataclass
class Problem:
    """What the student trains on: inputs and the teacher's outputs on them (numpy, one array per
    graph input / output, samples on axis 0), how each output is matched, and the batches."""

    inputs: list[np.ndarray]
    teacher: list[np.ndarray]
    kinds: list[OutputKind]
    scales: list[float]
    temperature: float
    fixed_batch: int | None = None  # the model takes batches of exactly this size

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batch(self, indices: np.ndarray, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([torch.from_numpy(a[indices]).to(device) for a in self.inputs],
                [torch.from_numpy(t[indices]).to(device) for t in self.teacher])

    def loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        return distillation_loss(student, teacher, self.kinds, self.scales, self.temperature)


def evaluate(module: nn.Module, problem: Problem, labels: np.ndarray | None = None, batch: int = 256,
             device: torch.device | None = None) -> dict:
    """In eval mode: the mean distillation loss, the agreement with the teacher's predicted
    classes and, with labels, the accuracy (both on the first KL output; None without one)."""
    device = device or torch.device("cpu")
    step = problem.fixed_batch or batch
    first = next((k for k, kind in enumerate(problem.kinds) if kind.loss == "kl"), None)
    was_training = module.training
    module.eval()
    total, agree, hits, positions = 0.0, 0, 0, 0
    with torch.no_grad():
        for start in range(0, len(problem), step):
            indices = np.arange(start, min(start + step, len(problem)))
            inputs, teacher = problem.batch(indices, device)
            student = as_list(module(*inputs))
            total += float(problem.loss(student, teacher)) * len(indices)
            if first is not None:
                kind = problem.kinds[first]
                predicted = predictions(student[first], kind).cpu()
                agree += int((predicted == predictions(teacher[first], kind).cpu()).sum())
                positions += predicted.numel()
                if labels is not None:
                    hits += int((predicted.numpy() == labels[indices].reshape(predicted.shape)).sum())
    module.train(was_training)
    return {"loss": total / len(problem),
            "agreement": agree / positions if positions else None,
            "accuracy": hits / positions if positions and labels is not None else None}


def fit(module: nn.Module, problem: Problem, epochs: int, lr: float, batch: int, seed: int = 0,
        update_batchnorm: bool = True, device: torch.device | None = None,
        after_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Adam with cosine learning-rate decay on the distillation loss; after_epoch(record) after
    each epoch (record: epoch, loss, seconds). BatchNorm running statistics are re-estimated on
    the inputs unless update_batchnorm is False (then they stay as they are). Returns the records."""
    device = device or torch.device("cpu")
    step = problem.fixed_batch or batch
    batches_per_epoch = len(problem) // step + (len(problem) % step > 1 and problem.fixed_batch is None)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs * batches_per_epoch, 1))
    generator = np.random.default_rng(seed)
    batchnorms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    history = []
    for epoch in range(1, epochs + 1):
        start_time = time.perf_counter()
        module.train()
        for bn in batchnorms if not update_batchnorm else ():
            bn.eval()
        total, seen = 0.0, 0
        order = generator.permutation(len(problem))
        for start in range(0, len(order), step):
            indices = order[start:start + step]
            if problem.fixed_batch and len(indices) != problem.fixed_batch:
                continue
            if len(indices) < 2 and not problem.fixed_batch:  # BatchNorm cannot train on one sample
                continue
            inputs, teacher = problem.batch(indices, device)
            optimizer.zero_grad()
            value = problem.loss(as_list(module(*inputs)), teacher)
            value.backward()
            optimizer.step()
            schedule.step()
            total += float(value.detach()) * len(indices)
            seen += len(indices)
        record = {"epoch": epoch, "loss": total / max(seen, 1), "seconds": time.perf_counter() - start_time}
        if after_epoch:
            after_epoch(record)
        history.append(record)
    module.eval()
    return history
