"""PyTorch front end: export an ``nn.Module`` to a self-contained ONNX file.

Two exporters (both from ``torch.onnx.export``):

* ``"dynamo"``: ``torch.export`` + onnxscript (``dynamo=True``), batch axis via ``dynamic_shapes``.
* ``"torchscript"``: the tracing exporter (``dynamo=False``), batch axis via ``dynamic_axes``.

The model is always exported in inference mode (BatchNorm uses its running statistics, Dropout
is off). By default both exporters fold each BatchNormalization into the preceding Conv.
``training=True`` keeps every BatchNormalization as its own node (still inference semantics):

* torchscript: ``training=TrainingMode.PRESERVE`` on the eval-mode model skips the exporter's
  BN-folding peephole pass (constant folding of everything else still runs).
* dynamo: the graph is exported unoptimized and then optimized with onnxscript's default
  passes minus its ``fuse_batchnorm`` rewrite rules.

Importing this module has no side effects; torch is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Any, Sequence

__all__ = ["EXPORTERS", "export", "export_zoo"]

EXPORTERS = ("dynamo", "torchscript")

_BATCH = "batch"


def export(model: Any, example_input: Any, path: str | os.PathLike, exporter: str = "dynamo",
           dynamic_batch: bool = True, training: bool = False, opset: int | None = None,
           input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None) -> str:
    """Export ``model`` to the ONNX file ``path`` and return the path (as ``str``).

    Args:
        model: a ``torch.nn.Module``; exported in eval mode (its mode is restored afterwards).
        example_input: a tensor or a tuple of tensors (positional inputs).
        path: the ``.onnx`` file to write. Written atomically (temporary file in the same
            directory, then ``os.replace``) and self-contained (no external data file).
        exporter: ``"dynamo"`` or ``"torchscript"``.
        dynamic_batch: make axis 0 of every input and output a symbolic dim named ``"batch"``.
        training: keep BatchNormalization nodes unfused (see the module docstring).
        opset: ONNX opset; ``None`` takes the exporter's default (20 with torch 2.15).
        input_names / output_names: graph input / output names; defaults ``input`` (or
            ``input_0``, ``input_1``, ...) and ``output`` (or ``output_0``, ...).
    """
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_out = len(torch.utils._pytree.tree_leaves(model(*args)))
        if input_names is None:
            input_names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
        if output_names is None:
            output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        input_names, output_names = list(input_names), list(output_names)

        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=directory)
        os.close(fd)
        try:
            if exporter == "dynamo":
                _export_dynamo(model, args, tmp, dynamic_batch, training, opset,
                               input_names, output_names)
            else:
                _export_torchscript(model, args, tmp, dynamic_batch, training, opset,
                                    input_names, output_names)
            _make_self_contained(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        model.train(was_training)
    return path


def export_zoo(name: str, path: str | os.PathLike, exporter: str = "dynamo", seed: int = 0,
               batch: int | None = None, **kw: Any) -> str:
    """Build the zoo model ``name`` (see ``models_zoo.torch_models``) and export it to ``path``.

    ``batch`` overrides the example batch size; other keywords go to :func:`export`.
    """
    import torch

    from models_zoo import torch_models

    zoo = {**torch_models.TORCH_ZOO, **torch_models.TORCH_ZOO_LARGE}
    if name not in zoo:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(zoo)}")
    entry = zoo[name]
    shape = entry.input_shape if batch is None else (batch, *entry.input_shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return export(entry.build(seed=seed), x, path, exporter=exporter, **kw)


# ---------------------------------------------------------------------------------------------


def _export_torchscript(model, args, tmp, dynamic_batch, training, opset, input_names,
                        output_names) -> None:
    import torch

    kw: dict[str, Any] = {}
    if dynamic_batch:
        kw["dynamic_axes"] = {n: {0: _BATCH} for n in (*input_names, *output_names)}
    if training:
        # PRESERVE on an eval-mode model: inference semantics, but the BN-folding
        # "eval peephole" pass is skipped (it only runs for TrainingMode.EVAL).
        kw["training"] = torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constant folding.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(model, args, tmp, dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, **kw)


def _export_dynamo(model, args, tmp, dynamic_batch, training, opset, input_names,
                   output_names) -> None:
    import torch

    kw: dict[str, Any] = {}
    if dynamic_batch:
        batch = torch.export.Dim(_BATCH)
        kw["dynamic_shapes"] = tuple(
            {0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    with _quiet():
        program = torch.onnx.export(
            model, args, None, dynamo=True, opset_version=opset, input_names=input_names,
            output_names=output_names, optimize=not training, verbose=False, **kw)
        if training:
            _optimize_keep_batchnorm(program.model)
        program.save(tmp, external_data=False)


def _optimize_keep_batchnorm(model) -> None:
    """onnxscript's default optimization (as torch.onnx runs it) without BN->Conv fusion."""
    import onnxscript.optimizer
    from onnxscript import rewriter

    try:
        from onnxscript.rewriter.rules.common import _fuse_batchnorm
        default_rules = rewriter._DEFAULT_REWRITE_RULES
    except (ImportError, AttributeError) as e:  # onnxscript moved its internals
        raise ValueError(
            "exporter='dynamo' with training=True needs onnxscript's rewriter internals "
            f"(_DEFAULT_REWRITE_RULES, rules.common._fuse_batchnorm): {e}; "
            "use exporter='torchscript'") from e
    bn_rules = set(map(id, _fuse_batchnorm.rules))
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in default_rules if id(r) not in bn_rules)
    try:
        onnxscript.optimizer.optimize_ir(model)
    finally:
        rewriter._DEFAULT_REWRITE_RULES = default_rules
    with contextlib.suppress(ImportError):
        from onnxscript.rewriter import onnx_fusions

        onnx_fusions.fuse(model)  # opset-23-only fusions, as torch.onnx does


@contextlib.contextmanager
def _quiet():
    """Silence the dynamo exporter's progress prints and routine warnings."""
    import io

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        yield


def _make_self_contained(file: str) -> None:
    """Re-save ``file`` with its tensors inline if an exporter wrote external data."""
    import onnx

    proto = onnx.load(file, load_external_data=False)
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        return
    proto = onnx.load(file)  # loads the external data next to ``file``
    locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
    onnx.save_model(proto, file, save_as_external_data=False)
    for loc in locations:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(os.path.dirname(file), loc))
