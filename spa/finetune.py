"""Fine-tuning a pruned model by distillation from the original, on unlabeled inputs.

The step after a prune: the pruned model (the student, through spa.to_torch) is trained to
compute what the original (the teacher) computes on the user's inputs, no labels needed, or on
inputs made up from the teacher (`data_free`, as data-free OBSPA makes them: spa.synthetic). The
teacher never changes, so its outputs come from onnxruntime once, before training. The losses
(spa.distill): KL divergence on softened class scores, relative MSE on other outputs, summed.
The trained weights are written back into the student's ONNX graph, whose shapes stay the pruned
ones; before anything is returned, onnxruntime must compute on the written model what the
trained torch student computes.

BatchNorm running statistics are re-estimated on real inputs (the prune changed what each
BatchNorm sees) and kept as they are on made-up ones (their statistics are not the data's).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Callable

import numpy as np
import onnx

from .calib import Calibration, load_calibration
from .errors import SpaError
from .graph import load_model

DATA_FREE = ("auto", "gaussian", "inversion")  # how inputs are made without data (see data_free_inputs)
DEFAULT_EPOCHS = 3
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 32
DEFAULT_TEMPERATURE = 4.0
DEFAULT_SAMPLES = 256  # made-up inputs, data-free
CHECK_SAMPLES = 64  # inputs on which the written model is compared with the torch student
WRITE_BACK_TOLERANCE = 1e-4  # relative: float32 arithmetic in two runtimes


@dataclass
class FinetuneReport:
    inputs: str  # "data" or "data-free (METHOD)"
    samples: int  # training inputs
    epochs: int
    losses: list[str]  # per graph output: "kl", "mse" or "none"
    temperature: float
    evaluated_on: str  # "validation inputs" or "training inputs": where the figures below come from
    loss_before: float  # distillation loss of the pruned model
    loss_after: float  # of the fine-tuned one
    agreement_before: float | None  # fraction of positions where the predicted class is the teacher's
    agreement_after: float | None
    accuracy_before: float | None  # against the validation labels
    accuracy_after: float | None
    teacher_accuracy: float | None
    max_relative_error: float  # the written ONNX model against the trained torch student
    seconds_per_epoch: float
    seconds: float
    history: list = field(default_factory=list)  # per epoch: loss, val_loss, val_agreement, val_accuracy, seconds

    def to_dict(self) -> dict:
        return asdict(self)


def finetune(student, teacher, data=None, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
             batch: int = DEFAULT_BATCH, temperature: float = DEFAULT_TEMPERATURE, loss: str = "auto", val=None,
             class_axis: int = 1, data_free: str | None = None, samples: int = DEFAULT_SAMPLES, seed: int = 0,
             log: Callable[[str], None] | None = print, progress: bool = False) -> tuple[onnx.ModelProto, FinetuneReport]:
    """Train the pruned `student` to match the `teacher` (paths or ModelProtos with the same
    inputs) and return (the student with its trained weights, FinetuneReport).

    data: an .npz path or a dict with one array per graph input, keyed by name (`labels`, if
    there, are ignored); or None with `data_free` (DATA_FREE) to train on `samples` inputs made
    from the teacher. val: the same for held-out inputs, with optional `labels` (class ids) for
    the accuracy; the loss, the agreement with the teacher and the accuracy are reported on it
    before, after and at each epoch. loss: "auto", "kl" or "mse", and with "kl" the class axis of
    outputs no Softmax computes (spa.distill.output_kinds).
    Training: Adam at `lr` with cosine decay, `batch` inputs a step, one line per epoch to `log`.
    """
    _check_settings(epochs, lr, batch, temperature, samples, data, data_free)
    begin = time.perf_counter()
    student_model, teacher_model = _load(student, "student"), _load(teacher, "teacher")
    _check_same_inputs(student_model, teacher_model)
    from . import distill  # torch: after the checks, so that bad input is refused without it
    from .activations import default_device
    from .torch_bridge import TorchConversionError, to_torch, write_back

    kinds = distill.output_kinds(student_model, loss, class_axis)
    if data is not None:
        train_data, inputs_used = load_calibration(_existing(data), student_model), "data"
    else:
        train_data, method = data_free_inputs(teacher_model, data_free, samples, seed, progress)
        inputs_used = f"data-free ({method})"
    val_data = load_calibration(_existing(val), student_model) if val is not None else None
    train_problem = _problem(teacher_model, train_data, kinds, temperature, progress)
    val_problem = _problem(teacher_model, val_data, kinds, temperature, progress) if val_data is not None else None
    if val_data is not None and val_data.labels is not None:
        _check_labels(val_problem, val_data.labels)
    try:
        torch_student = to_torch(student_model)
    except TorchConversionError as e:
        raise SpaError(f"fine-tuning needs the student in PyTorch, and {e}") from None
    device = default_device()
    module = torch_student.module.to(device)
    _check_same_outputs(module, train_problem, device)

    check, labels = (val_problem, val_data.labels) if val_problem is not None else (train_problem, None)
    before = distill.evaluate(module, check, labels, device=device)
    if log:
        log(f"distilling {len(train_problem)} {inputs_used} inputs, {len(kinds)} output(s) "
            f"({', '.join(k.loss for k in kinds)}), T={temperature:g}: {_scores_line(before, 'before')}")

    def after_epoch(record):
        if val_problem is not None:
            scores = distill.evaluate(module, val_problem, val_data.labels, device=device)
            record.update(val_loss=scores["loss"], val_agreement=scores["agreement"], val_accuracy=scores["accuracy"])
        if log:
            log(_epoch_line(record, epochs))

    history = distill.fit(module, train_problem, epochs, lr, batch, seed, update_batchnorm=data is not None,
                          device=device, after_epoch=after_epoch)
    after = distill.evaluate(module, check, labels, device=device)
    written = write_back(student_model, torch_student)
    error = _written_error(written, module, check, device)
    teacher_accuracy = None
    if labels is not None:
        first = next(k for k, kind in enumerate(kinds) if kind.loss == "kl")
        predicted = distill.predictions(check.teacher[first], kinds[first])
        teacher_accuracy = float((predicted == labels.reshape(predicted.shape)).mean())
    report = FinetuneReport(
        inputs=inputs_used, samples=len(train_problem), epochs=epochs, losses=[k.loss for k in kinds],
        temperature=temperature, evaluated_on="validation inputs" if val_problem is not None else "training inputs",
        loss_before=before["loss"], loss_after=after["loss"], agreement_before=before["agreement"],
        agreement_after=after["agreement"], accuracy_before=before["accuracy"], accuracy_after=after["accuracy"],
        teacher_accuracy=teacher_accuracy, max_relative_error=error,
        seconds_per_epoch=float(np.mean([r["seconds"] for r in history])), seconds=time.perf_counter() - begin,
        history=history)
    return written, report


def data_free_inputs(teacher: onnx.ModelProto, method: str = "auto", samples: int = DEFAULT_SAMPLES, seed: int = 0,
                     progress: bool = False) -> tuple[Calibration, str]:
    """`samples` inputs made from the teacher, and the method used: "gaussian" (standard normal,
    shaped like its inputs) or "inversion" (those optimized until the teacher classifies them
    confidently into evenly spread classes, spa.synthetic.invert). "auto" takes inversion for a
    classifier when it fits data-free OBSPA's budget (spa.obspa.INVERSION_BUDGET), else gaussian."""
    from . import synthetic
    from .activations import Network
    from .graph import Graph
    from .inputs import choose_shapes
    from .metrics import count_flops
    from .obspa import DEFAULT_INVERSION_STEPS, INVERSION_BUDGET

    if method not in DATA_FREE:
        raise SpaError(f"unknown data-free input generation '{method}' (choose from {', '.join(DATA_FREE)})")
    graph = Graph.load(teacher)
    start = synthetic.gaussian_inputs(graph, samples, seed, choose_shapes(graph.model)[0])
    if method == "auto":
        affordable = 3 * count_flops(graph) * samples * DEFAULT_INVERSION_STEPS <= INVERSION_BUDGET
        method = "inversion" if synthetic.classes(graph) and affordable else "gaussian"
    if method == "inversion":
        start = synthetic.invert(Network(graph), start, steps=DEFAULT_INVERSION_STEPS, progress=progress)
    return start, method


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_settings(epochs, lr, batch, temperature, samples, data, data_free) -> None:
    if epochs < 1 or batch < 2 or samples < 2:
        raise SpaError(f"epochs must be at least 1, the batch and the samples at least 2 (got {epochs}, {batch}, {samples})")
    if not lr > 0 or not temperature > 0:
        raise SpaError(f"the learning rate and the temperature must be positive (got {lr} and {temperature})")
    if (data is None) == (data_free is None):
        raise SpaError("give the inputs to distill on (data) or ask for data-free ones (data_free), one of the two")


def _load(model, role: str) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, PathLike)):
        raise SpaError(f"the {role} must be an ONNX path or ModelProto, not {type(model).__name__}")
    proto, folder = load_model(model)
    onnx.external_data_helper.load_external_data_for_model(proto, folder)  # to_torch needs the values
    return proto


def _existing(data):
    """An .npz path that exists, or the data as given (load_calibration checks the rest)."""
    if isinstance(data, (str, PathLike)) and not os.path.exists(data):
        raise SpaError(f"no such file: {data}")
    return data


def _declared_inputs(model: onnx.ModelProto) -> dict[str, list]:
    from .runtime import graph_inputs

    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in graph_inputs(model)}


def _check_same_inputs(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    ours, theirs = _declared_inputs(student), _declared_inputs(teacher)
    if list(ours) != list(theirs):
        raise SpaError(f"the student's inputs ({', '.join(ours)}) are not the teacher's ({', '.join(theirs)})")
    for name, dims in ours.items():
        other = theirs[name]
        if len(dims) != len(other) or any(a is not None and b is not None and a != b for a, b in zip(dims, other)):
            shown = ["x".join("?" if d is None else str(d) for d in ds) for ds in (dims, other)]
            raise SpaError(f"input '{name}' is {shown[0]} in the student and {shown[1]} in the teacher")
    if len(student.graph.output) != len(teacher.graph.output):
        raise SpaError(f"the student has {len(student.graph.output)} outputs and the teacher "
                       f"{len(teacher.graph.output)}: they must compute the same outputs")


def _check_labels(problem, labels: np.ndarray) -> None:
    """Labels are the classes of the first KL-distilled output, one per position."""
    from .distill import predictions

    first = next((k for k, kind in enumerate(problem.kinds) if kind.loss == "kl"), None)
    if first is None:
        raise SpaError("validation labels need a class output (one distilled by KL); the student has none")
    shape = predictions(problem.teacher[first], problem.kinds[first]).shape
    if labels.shape != shape:
        raise SpaError(f"the validation labels have shape {labels.shape}; the classes of output "
                       f"'{problem.kinds[first].name}' have shape {shape}")


def _check_same_outputs(module, problem, device) -> None:
    """The student's outputs on a first batch have the teacher's shapes."""
    import torch

    from .distill import as_list

    indices = np.arange(min(problem.fixed_batch or 2, len(problem)))
    inputs, teacher = problem.batch(indices, device)
    try:
        with torch.no_grad():
            outputs = as_list(module(*inputs))
    except Exception as e:  # the converted module raises whatever its operators raise
        raise SpaError(f"the student in PyTorch fails on the inputs: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    for kind, ours, theirs in zip(problem.kinds, outputs, teacher):
        if tuple(ours.shape) != tuple(theirs.shape):
            raise SpaError(f"the student's output '{kind.name}' has shape {tuple(ours.shape)} and the teacher's "
                           f"{tuple(theirs.shape)}: the prune must keep the outputs")


# ---------------------------------------------------------------------------------------------
# The teacher's outputs, the written model's check, progress lines
# ---------------------------------------------------------------------------------------------


def _problem(teacher: onnx.ModelProto, data: Calibration, kinds, temperature: float, progress: bool):
    import sys

    from tqdm import tqdm

    from .distill import Problem, mse_scales
    from .runtime import run, session

    sess = session(teacher)
    outputs: list[list[np.ndarray]] = []
    for inputs, _ in tqdm(data.batches(256), total=data.count(256), desc="teacher outputs", unit="batch",
                          disable=not progress, file=sys.stderr, leave=False):
        outputs.append(run(teacher, inputs, sess))
    teacher_outputs = [np.concatenate([o[k] for o in outputs]) for k in range(len(kinds))]
    teacher_outputs = [t.astype(np.float32) if np.issubdtype(t.dtype, np.floating) else t for t in teacher_outputs]
    inputs = [data.inputs[name] for name in data.inputs]
    return Problem(inputs, teacher_outputs, kinds, mse_scales(kinds, teacher_outputs), temperature, data.fixed_batch)


def _written_error(written: onnx.ModelProto, module, problem, device) -> float:
    """max |onnxruntime(written) - torch student| / max |torch student| over every output, on the
    first CHECK_SAMPLES inputs; SpaError past WRITE_BACK_TOLERANCE (the write-back lost something)."""
    import torch

    from .distill import as_list
    from .runtime import run, session

    count = min(len(problem), CHECK_SAMPLES)
    if problem.fixed_batch:
        count = max(problem.fixed_batch, count - count % problem.fixed_batch)
    onnx.checker.check_model(written)
    sess = session(written)
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    step = problem.fixed_batch or count
    for start in range(0, count, step):
        indices = np.arange(start, start + step)
        inputs, _ = problem.batch(indices, device)
        with torch.no_grad():
            want = [t.cpu().double().numpy() for t in as_list(module(*inputs))]
        got = run(written, {n: problem.inputs[k][indices] for k, n in enumerate(names)}, sess)
        for a, b in zip(got, want):
            scale = max(np.abs(b).max(initial=0.0), 1e-12)
            worst = max(worst, float(np.abs(np.asarray(a, dtype=np.float64) - b).max(initial=0.0) / scale))
    if worst > WRITE_BACK_TOLERANCE:
        raise SpaError(f"the written model differs from the trained student by {worst:.1e} (relative): not written")
    return worst


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _scores_line(scores: dict, when: str) -> str:
    parts = [f"loss {when} {scores['loss']:.4f}"]
    if scores["agreement"] is not None:
        parts.append(f"agreement {_percent(scores['agreement'])}")
    if scores["accuracy"] is not None:
        parts.append(f"accuracy {_percent(scores['accuracy'])}")
    return ", ".join(parts)


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {record['loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.4f}")
        if record["val_agreement"] is not None:
            parts.append(f"val agreement {_percent(record['val_agreement'])}")
        if record["val_accuracy"] is not None:
            parts.append(f"val acc {_percent(record['val_accuracy'])}")
    parts.append(f"{record['seconds']:.1f}s")
    return "  ".join(parts)
