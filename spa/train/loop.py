"""Prune while training in one call: data, the training loop, and `train` (train, write back,
prune the channels that trained to zero, check the pruned model equals the trained one).

`train` (and `spa train`) uses settings that reach the target in tens of epochs on the digits
models: SGD with momentum, lr 0.1 with cosine decay, lmbda 1.0, epsilon 0.95 (as OTO's
tutorials), pruning from 10% of the run; lr 3e-3 and lmbda 100 over Adam and AdamW, which reach
the target more slowly: Adam's per-element scaling keeps pushing shrinking groups back out, and
the descent bound on lambda then holds them (on the digits MLP, 45% of 50% after 20 epochs).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import SpaError
from ..graph import load_model
from .groups import SparseTraining
from .optimizer import BASES, get_optimizer

LOSSES = ("ce", "mse")

# What `train` uses unless told otherwise: tuned on the digits models for runs of tens of epochs,
# where OTO's lambdas (made for hundreds) leave the target unreached (see the README).
TRAIN_LR = {"sgd": 0.1, "adam": 3e-3, "adamw": 3e-3}
TRAIN_LMBDA = {"sgd": 1.0, "adam": 100.0, "adamw": 100.0}

# A run has collapsed when its validation accuracy falls below this fraction of its own best so far.
COLLAPSE_FRACTION = 0.5

# ---------------------------------------------------------------------------------------------
# Data and the training loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    inputs: list[np.ndarray]  # one per graph input, in order
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_data(data, model: onnx.ModelProto, loss: str, what: str = "data") -> Dataset:
    """Arrays keyed by the graph's input names plus `labels`, from an .npz path or a mapping;
    SpaError with a one-line reason when they do not fit the model."""
    from ..runtime import graph_inputs

    if isinstance(data, (str, PathLike)):
        try:
            with np.load(data, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        except FileNotFoundError:
            raise SpaError(f"no such file: {data}") from None
        except Exception as e:  # numpy raises several kinds on garbage
            raise SpaError(f"{data} is not a readable .npz file ({type(e).__name__})") from None
    inputs = graph_inputs(model)
    missing = [name for name in [vi.name for vi in inputs] + ["labels"] if name not in data]
    if missing:
        raise SpaError(f"the {what} has no array '{missing[0]}' (it needs the model's inputs "
                       f"{', '.join(vi.name for vi in inputs)} and 'labels'; it has {', '.join(sorted(data)) or 'nothing'})")
    arrays = []
    for vi in inputs:
        array = np.asarray(data[vi.name])
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if array.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], array.shape[1:])):
            shown = "x".join("?" if d is None else str(d) for d in dims)
            raise SpaError(f"the {what}'s '{vi.name}' has shape {array.shape}, the model takes {shown}")
        arrays.append(array.astype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type), copy=False))
    labels = np.asarray(data["labels"])
    if labels.ndim == 0 or len(labels) == 0 or any(len(a) != len(labels) for a in arrays):
        raise SpaError(f"the {what}'s arrays must have the same, nonzero number of samples "
                       f"(labels: {len(labels) if labels.ndim else 'a scalar'}, inputs: {', '.join(str(len(a)) for a in arrays)})")
    if loss == "ce" and not np.issubdtype(labels.dtype, np.integer):
        raise SpaError(f"cross-entropy needs integer class labels; the {what}'s labels are {labels.dtype}")
    return Dataset(arrays, labels.astype(np.int64) if loss == "ce" else labels.astype(np.float32))


def _loss_and_hits(output: torch.Tensor, labels: torch.Tensor, loss: str) -> tuple[torch.Tensor, int | None]:
    if loss == "ce":
        if output.dim() < 2 or labels.shape != output.shape[:1] + output.shape[2:]:
            raise SpaError(f"cross-entropy needs labels of shape {tuple(output.shape[:1] + output.shape[2:])} "
                           f"for the model's output of shape {tuple(output.shape)}; they have {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= output.shape[1]:
            raise SpaError(f"class labels must be in [0, {output.shape[1]}) for the model's {output.shape[1]} outputs")
        return F.cross_entropy(output, labels), int((output.argmax(dim=1) == labels).sum())
    if labels.shape != output.shape:
        raise SpaError(f"mse needs labels of the output's shape {tuple(output.shape)}; they have {tuple(labels.shape)}")
    return F.mse_loss(output, labels), None


def _first_output(result) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


def evaluate(module: torch.nn.Module, data: Dataset, loss: str, batch: int = 512) -> dict:
    """Mean loss and (for cross-entropy) accuracy of the module in eval mode."""
    was_training = module.training
    module.eval()
    total, hits = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            inputs = [torch.from_numpy(a[start:start + batch]) for a in data.inputs]
            labels = torch.from_numpy(data.labels[start:start + batch])
            value, batch_hits = _loss_and_hits(_first_output(module(*inputs)), labels, loss)
            total += float(value) * len(labels)
            hits += batch_hits or 0
    module.train(was_training)
    return {"loss": total / len(data), "accuracy": hits / len(data) if loss == "ce" else None}


def fit(module: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, loss: str = "ce",
        epochs: int = 10, batch: int = 64, seed: int = 0, val: Dataset | None = None,
        log: Callable[[str], None] | None = print) -> list[dict]:
    """Train with cosine learning-rate decay; one progress line per epoch (loss, accuracy, group
    sparsity, and the FLOPs left when the optimizer has a FLOPs model; COLLAPSED when the validation
    accuracy falls below half the best before it). Returns the per-epoch history."""
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs * _batches_per_epoch(len(data), batch), 1))
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start_time = time.perf_counter()
        module.train()
        total, hits, seen = 0.0, 0, 0
        for indices in torch.randperm(len(data), generator=generator).split(batch):
            if len(indices) < 2:  # BatchNorm cannot train on one sample
                continue
            inputs = [torch.from_numpy(a[indices.numpy()]) for a in data.inputs]
            labels = torch.from_numpy(data.labels[indices.numpy()])
            optimizer.zero_grad()
            value, batch_hits = _loss_and_hits(_first_output(module(*inputs)), labels, loss)
            value.backward()
            optimizer.step()
            schedule.step()
            total += float(value.detach()) * len(indices)
            hits += batch_hits or 0
            seen += len(indices)
        record = {"epoch": epoch, "loss": total / max(seen, 1), "accuracy": hits / max(seen, 1) if loss == "ce" else None,
                  "group_sparsity": getattr(optimizer, "group_sparsity", None),
                  "flops": optimizer.flops_left() if hasattr(optimizer, "flops_left") else None,
                  "seconds": time.perf_counter() - start_time}
        if val is not None:
            scores = evaluate(module, val, loss)
            record.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
            best = max((r["val_accuracy"] for r in history if r.get("val_accuracy") is not None), default=None)
            if best is not None and scores["accuracy"] is not None:
                record.update(best_val_accuracy=max(best, scores["accuracy"]),
                              collapsed=collapsed(scores["accuracy"], best))
        history.append(record)
        if log:
            log(_progress_line(record, epochs))
    module.eval()
    return history


def collapsed(accuracy: float, best: float) -> bool:
    """Whether an accuracy is far below the run's best so far (below COLLAPSE_FRACTION of it)."""
    return accuracy < COLLAPSE_FRACTION * best


def collapse_warnings(history: list[dict], final_accuracy: float | None) -> list[str]:
    """What a person should know about a run whose validation accuracy collapsed: the first
    epoch that fell far below the best before it, and whether the result recovered from it (the
    pruned model's accuracy, or the last epoch's, against the run's best)."""
    accuracies = [(r["epoch"], r["val_accuracy"]) for r in history if r.get("val_accuracy") is not None]
    first = next((r for r in history if r.get("collapsed")), None)
    if first is None and not (final_accuracy is not None and accuracies
                              and collapsed(final_accuracy, max(a for _, a in accuracies))):
        return []
    best_epoch, best = max(accuracies, key=lambda pair: pair[1])
    final = final_accuracy if final_accuracy is not None else accuracies[-1][1]
    outcome = (f"the result is far below the run's best ({final * 100:.1f}% against {best * 100:.1f}% at epoch "
               f"{best_epoch}): try a smaller --lr or --lmbda") if collapsed(final, best) else \
        f"it recovered ({final * 100:.1f}% at the end, the best {best * 100:.1f}% at epoch {best_epoch})"
    if first is None:
        return [outcome[0].upper() + outcome[1:]]
    before = max(a for e, a in accuracies if e < first["epoch"])
    return [f"validation accuracy collapsed at epoch {first['epoch']}: {first['val_accuracy'] * 100:.1f}% against "
            f"{before * 100:.1f}% before it; {outcome}"]


def _batches_per_epoch(samples: int, batch: int) -> int:
    """Batches fit trains on per epoch: a last batch of one sample is skipped."""
    return samples // batch + (samples % batch > 1)


def _progress_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {record['loss']:.4f}"]
    if record["accuracy"] is not None:
        parts.append(f"acc {record['accuracy'] * 100:.1f}%")
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.4f}")
        if record["val_accuracy"] is not None:
            parts.append(f"val acc {record['val_accuracy'] * 100:.1f}%")
        if record.get("collapsed"):
            parts.append(f"COLLAPSED (best {record['best_val_accuracy'] * 100:.1f}%)")
    if record["group_sparsity"] is not None:
        parts.append(f"group sparsity {record['group_sparsity']:.3f}")
    if record.get("flops") is not None:
        parts.append(f"FLOPs {record['flops']:.3f}")
    parts.append(f"{record['seconds']:.1f}s")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# One call: train, write back, prune
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    optimizer: str
    base: str
    target_sparsity: float | None  # None when the target was FLOPs
    group_sparsity: float  # reached: zero groups / all zero-invariant groups
    groups: int  # zero-invariant groups (channels the optimizer could zero)
    zero_groups: int
    groups_skipped: int  # SPA groups left to the base optimizer (blocked, approximate, single-channel)
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_relative_error: float  # pruned vs trained outputs
    train_accuracy: float | None
    val_accuracy: float | None  # of the pruned model in onnxruntime
    seconds: float
    target_flops: float | None = None  # the fraction of FLOPs to keep, when that was the target
    warnings: list = field(default_factory=list)  # a collapsed run, said in one line each
    history: list = field(default_factory=list)
    prune: dict = field(default_factory=dict)  # SPA's prune report (removed slices, channels)

    @property
    def flops_ratio(self) -> float:
        """The pruned model's FLOPs over the trained model's."""
        return self.flops_after / max(self.flops_before, 1)

    def to_dict(self) -> dict:
        return asdict(self)


def train(model, data, val=None, loss: str = "ce", optimizer: str | type = "dhspg", target_sparsity: float | None = 0.5,
          epochs: int = 10, lr: float | None = None, batch: int = 64, base: str = "sgd", weight_decay: float = 0.0,
          start_pruning: float = 0.1, lmbda: float | None = None, epsilon: float = 0.95, seed: int = 0,
          untie_shared: bool = True, log: Callable[[str], None] | None = print,
          target_flops: float | None = None, erase: int | None = None) -> tuple[onnx.ModelProto, TrainReport]:
    """Train an ONNX model (path or ModelProto) with a prune-while-training optimizer, write the
    weights back and remove the channels that trained to zero. Returns (pruned ModelProto,
    TrainReport).

    optimizer: a name in OPTIMIZERS (dhspg, hspg, hesso, ato), or a GroupSparseOptimizer
    subclass (a user's own), built with the same arguments as the built-in ones.
    target_sparsity: the fraction of channels to zero; target_flops (replacing it): the fraction
    of the model's FLOPs to keep, translated into channels per layer by SPA's FLOPs model.
    H2SPG (optimizer "h2spg") trains whole structures instead (spa.train.structures) and erases
    those trained to zero: `erase` N of them, or a target_flops.

    data, val: .npz paths or mappings with one array per graph input (by name) and `labels`
    (class ids for loss='ce', arrays of the output's shape for 'mse'); the loss is taken on the
    first output. An optimizer with a `holdout` (ATO) trains its own parts on that fraction of
    the training data, held out from the weights' training. start_pruning: the fraction of the
    run before the pruning starts (DHSPG's partition, HSPG's half-space steps, HESSO's warm-up,
    ATO's proximal steps). For HSPG lmbda sets how hard groups are pushed to zero. Other
    settings: see the optimizers and fit. A run whose validation accuracy collapses (below half
    its best) says so on its progress line and in report.warnings.
    """
    if target_flops is not None:
        target_sparsity = None
    _check_settings(loss, base, target_sparsity, target_flops, epochs, lr, batch, start_pruning)
    name, optimizer_class = get_optimizer(optimizer)
    optimizer_class.check_targets(target_sparsity, target_flops)
    begin = time.perf_counter()
    source = model if isinstance(model, onnx.ModelProto) else load_model(model)[0]
    train_data = load_data(data, source, loss)
    val_data = load_data(val, source, loss, what="validation data") if val is not None else None
    _check_batch(source, batch)
    train_data, held_out = _hold_out(train_data, optimizer_class.holdout, seed)
    job = getattr(optimizer_class, "job", SparseTraining)(model, untie_shared)  # H2SPG's groups are structures
    if erase is not None:
        target_sparsity = _erase_share(job, erase)
    steps = epochs * _batches_per_epoch(len(train_data), batch)
    start_step = int(start_pruning * steps)
    settings = dict(lr=TRAIN_LR[base] if lr is None else lr, base=base, epsilon=epsilon, start_step=start_step,
                    lmbda=(optimizer_class.train_lmbda or TRAIN_LMBDA)[base] if lmbda is None else lmbda,
                    weight_decay=weight_decay)
    target = {"target_flops": target_flops, "flops": job.flops} if target_flops is not None else {}
    opt = optimizer_class(job.module.parameters(), job.groups, target_sparsity=target_sparsity, **target, **settings)
    if log:
        aim = f"target FLOPs {target_flops}" if target_flops is not None else f"target group sparsity {target_sparsity}"
        aim = f"erase {erase} structures" if erase is not None else aim
        log(f"{name.upper()} ({base}) on {job.summary()}, {aim}, pruning from step {start_step} of {steps}")
    torch.manual_seed(seed)
    opt.bind(job.module, held_out, lambda output, labels: _loss_and_hits(output, labels, loss)[0])
    history = fit(job.module, opt, train_data, loss, epochs, batch, seed, val_data, log)
    opt.finish()
    check = val_data if val_data is not None else train_data
    feeds = {name: array[:256] for name, array in zip(job.torch_model.input_names, check.inputs)}
    result = job.prune(feeds)
    prune_report = result.report
    val_accuracy = _onnx_accuracy(result.model, val_data) if val_data is not None and loss == "ce" else None
    report = TrainReport(
        optimizer=name, base=base, target_sparsity=target_sparsity, group_sparsity=opt.group_sparsity,
        groups=opt.total_groups, zero_groups=opt.zero_groups(), groups_skipped=len(job.skipped),
        params_before=prune_report.params_before, params_after=prune_report.params_after,
        flops_before=prune_report.flops_before, flops_after=prune_report.flops_after,
        max_relative_error=result.max_relative_error,
        train_accuracy=history[-1]["accuracy"] if history else None, val_accuracy=val_accuracy,
        seconds=time.perf_counter() - begin, target_flops=target_flops,
        warnings=collapse_warnings(history, val_accuracy), history=history, prune=prune_report.to_dict(),
    )
    if log:
        for line in report.warnings:
            log(f"warning: {line}")
    return result.model, report


def _erase_share(job, erase: int) -> float:
    """`erase` structures as the fraction of the job's groups to zero."""
    structures = getattr(job, "structures", None)
    if structures is None:
        raise SpaError("--erase N trains whole structures to zero: it goes with --optimizer h2spg")
    if isinstance(erase, bool) or not isinstance(erase, int) or not 0 < erase < len(structures):
        raise SpaError(f"--erase {erase}: give a whole number from 1 to {len(structures) - 1} (the model has "
                       f"{len(structures)} structures H2SPG can train to zero)")
    return erase / len(structures)


def _hold_out(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(the rest, a random `fraction` of the samples), or (data, None) for fraction 0."""
    if fraction <= 0:
        return data, None
    count = max(2, int(round(fraction * len(data))))
    if len(data) - count < 2:
        raise SpaError(f"too few training samples ({len(data)}) to hold {fraction:.0%} of them out")
    order = np.random.default_rng(seed).permutation(len(data))
    part = lambda index: Dataset([a[index] for a in data.inputs], data.labels[index])  # noqa: E731
    return part(np.sort(order[count:])), part(np.sort(order[:count]))


def _check_settings(loss, base, target_sparsity, target_flops, epochs, lr, batch, start_pruning) -> None:
    if loss not in LOSSES:
        raise SpaError(f"unknown loss '{loss}' (choose from {', '.join(LOSSES)})")
    if base not in BASES:
        raise SpaError(f"unknown base optimizer '{base}' (choose from {', '.join(BASES)})")
    if target_flops is not None:
        if not 0 < target_flops <= 1 or math.isnan(target_flops):
            raise SpaError(f"the FLOPs target is the fraction of the model's FLOPs to keep, in (0, 1]; got {target_flops}")
    elif target_sparsity is None or not 0 <= target_sparsity < 1 or math.isnan(target_sparsity):
        raise SpaError(f"the target sparsity must be in [0, 1), got {target_sparsity}")
    if epochs < 1 or batch < 2:
        raise SpaError(f"epochs must be at least 1 and the batch at least 2 (got {epochs} and {batch})")
    if lr is not None and not lr > 0:
        raise SpaError(f"the learning rate must be positive, got {lr}")
    if not 0 <= start_pruning < 1:
        raise SpaError(f"start_pruning is a fraction of the run in [0, 1), got {start_pruning}")


def _check_batch(model: onnx.ModelProto, batch: int) -> None:
    from ..runtime import graph_inputs

    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value != batch:
            raise SpaError(f"the model's input '{vi.name}' has a fixed batch size of {dims[0].dim_value}: "
                           "export it with a dynamic batch axis, or train with that batch size")


def _onnx_accuracy(model: onnx.ModelProto, data: Dataset) -> float:
    from ..runtime import run, session

    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    hits = 0
    for start in range(0, len(data), 512):
        logits = run(model, {n: a[start:start + 512] for n, a in zip(names, data.inputs)}, sess)[0]
        hits += int((logits.argmax(axis=1) == data.labels[start:start + 512]).sum())
    return hits / len(data)
