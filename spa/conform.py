"""Models as other exporters write them, made regular for the analysis and written back their way.

`conform` runs when a model is loaded; `Origin` remembers what it changed, and `restore` undoes
it on the pruned model, so the file a user gets back loads wherever the original did:

- **Old opsets.** Opsets 7 to 12 (most deployed models: PyTorch 1.x and paddle2onnx exports) are
  converted in memory to opset 13 with onnx.version_converter, the oldest opset SPA's rules read.
  The pruned model is converted back by `downgrade`: onnx's converter has no downward adapter for
  most operators (Relu 13 -> 12 fails, though only its types changed), so SPA keeps every node
  whose signature is the same at the old opset and moves constant inputs back into the
  attributes they were (Split sizes, Squeeze axes, Slice bounds, Clip limits). The result is
  checked to compute what the upgraded model computes; where it cannot be written at the old
  opset, the upgraded one is written and the report says so.
- **Initializers listed as graph inputs** (IR < 4 requires it, and older PyTorch exports do it):
  they are weights, not inputs a caller feeds; the pruned model lists them again.
- **Dims written as -1 or 0** (paddle2onnx writes `[-1, 3, -1, -1]`) are symbolic sizes, before
  anything folds them into constants.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper, version_converter

from .errors import SpaError
from .protos import still_read

ANALYZED_OPSET = 13  # the oldest opset the rules read: opsets below are converted up to it
OLDEST_OPSET, NEWEST_OPSET = 7, 23
_DEFAULT_DOMAINS = ("", "ai.onnx")
# An input at the analyzed opset that was an attribute of another name at an older one.
_ATTRIBUTE_OF_INPUT = {("Pad", "constant_value"): "value", ("TopK", "K"): "k"}


@dataclass
class Origin:
    """What the model was before `conform`: its default opset, IR version, and the initializers it
    listed as graph inputs (in order)."""

    opset: int
    ir_version: int
    initializer_inputs: list[onnx.ValueInfoProto] = field(default_factory=list)

    @property
    def converted(self) -> bool:
        return self.opset < ANALYZED_OPSET


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return imp.version
    raise SpaError("the model imports no version of the default ONNX operator set")


def conform(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Origin]:
    """The model in the form SPA analyzes (a copy where anything changes), and its Origin."""
    opset = default_opset(model)
    if not OLDEST_OPSET <= opset <= NEWEST_OPSET:
        raise SpaError(f"opset {opset} is not supported (SPA reads opsets {OLDEST_OPSET} to {NEWEST_OPSET})")
    initializers = {t.name for t in model.graph.initializer}
    listed = [vi for vi in model.graph.input if vi.name in initializers]
    origin = Origin(opset, model.ir_version, [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in listed])
    odd_dims = any(d.HasField("dim_value") and d.dim_value <= 0 for vi in _declared(model) for d in vi.type.tensor_type.shape.dim)
    if not (listed or odd_dims or origin.converted):
        return model, origin
    model = _copy(model)
    if odd_dims:  # first: the converter's shape inference reads -1 as a size
        _symbolic_dims(model)
    if origin.converted:
        model = upgrade(model, ANALYZED_OPSET)
    if listed:
        kept = [vi for vi in model.graph.input if vi.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return model, origin


def upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model converted up to `opset` by onnx.version_converter (other domains kept as they were)."""
    others = [imp for imp in model.opset_import if imp.domain not in _DEFAULT_DOMAINS]
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:  # the converter raises RuntimeError or its own assertion texts
        raise SpaError(f"cannot convert the model from opset {default_opset(model)} to {opset}: "
                       f"{str(e).strip().splitlines()[-1][:200]}") from None
    converted.ir_version = max(model.ir_version, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    # The converter writes the shapes its inference found over the model's declarations (a size it
    # took from one run of an exporter's trace); the model's own declarations stay.
    for declarations in ("input", "output", "value_info"):
        field_ = getattr(converted.graph, declarations)
        del field_[:]
        field_.extend(getattr(model.graph, declarations))
    _set_imports(converted, opset, others)
    return converted


def check_opset(opset: int | None):
    """SpaError unless `opset` (asked for the written model) is one SPA can write."""
    if opset is not None and (isinstance(opset, bool) or not OLDEST_OPSET <= opset <= NEWEST_OPSET):
        raise SpaError(f"--opset {opset}: SPA writes opsets {OLDEST_OPSET} to {NEWEST_OPSET}")


def restore(model: onnx.ModelProto, origin: Origin, opset: int | None = None,
            shapes: dict | None = None) -> tuple[onnx.ModelProto, str | None]:
    """The pruned model written the way the original was: at its opset (or `opset`), with its
    initializers listed as inputs again. Returns the model and a one-line note when it could not
    be written at the opset asked for (it is then written at the analyzed one). `shapes`: the
    input sizes the converted model is checked at (spa.inputs)."""
    wanted = opset or origin.opset
    current = default_opset(model)
    note = None
    if wanted > current:
        model = upgrade(model, wanted)
    elif wanted < current:
        try:
            model = downgrade(model, wanted, shapes)
        except SpaError as e:
            note = f"written at opset {current}, not {wanted}: {e}"
    if origin.initializer_inputs:
        _list_initializers(model, origin)
    if default_opset(model) == origin.opset:
        model.ir_version = origin.ir_version
    return model, note


def downgrade(model: onnx.ModelProto, opset: int, shapes: dict | None = None) -> onnx.ModelProto:
    """The model at an older opset: every node's signature at `opset` must be the one it has now,
    or differ only by constant inputs that were attributes then. SpaError where it cannot be."""
    current = default_opset(model)
    new = _copy(model)
    constants = {t.name: t for t in new.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in new.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for node in new.graph.node:
        if node.domain in _DEFAULT_DOMAINS:
            _downgrade_node(node, current, opset, constants)
    others = [imp for imp in new.opset_import if imp.domain not in _DEFAULT_DOMAINS]
    _set_imports(new, opset, others)
    kept = still_read(list(new.graph.initializer), model.graph.node, new.graph.node, new.graph)  # less those moved into attributes
    del new.graph.initializer[:]
    new.graph.initializer.extend(kept)
    try:
        onnx.checker.check_model(new)
    except onnx.checker.ValidationError as e:
        raise SpaError(f"the model at opset {opset} is invalid ({str(e).strip().splitlines()[0][:160]})") from None
    _check_same(model, new, shapes)
    return new


def _downgrade_node(node: onnx.NodeProto, current: int, opset: int, constants: dict):
    try:
        now = defs.get_schema(node.op_type, current, node.domain)
        then = defs.get_schema(node.op_type, opset, node.domain)
    except defs.SchemaError:
        raise SpaError(f"{node.op_type} does not exist at opset {opset}") from None
    if now.since_version == then.since_version:
        return
    now_inputs, then_inputs = [i.name for i in now.inputs], [i.name for i in then.inputs]
    if now_inputs != then_inputs:
        kept = 0  # the leading inputs both opsets have; the rest were attributes then
        while kept < min(len(now_inputs), len(then_inputs)) and now_inputs[kept] == then_inputs[kept]:
            kept += 1
        for position in range(kept, len(node.input)):
            if not node.input[position]:
                continue
            name = now_inputs[min(position, len(now_inputs) - 1)]
            attribute = _ATTRIBUTE_OF_INPUT.get((node.op_type, name), name)
            if attribute not in then.attributes or node.input[position] not in constants:
                raise SpaError(f"{node.op_type} '{node.name}' reads '{name}' as an input, which opset {opset} cannot express")
            value = numpy_helper.to_array(constants[node.input[position]])
            node.attribute.append(helper.make_attribute(attribute, value.tolist() if value.ndim else value.item()))
        del node.input[kept:]
    for attribute in list(node.attribute):
        if attribute.name not in then.attributes:
            default = now.attributes[attribute.name].default_value
            if not default.type or helper.get_attribute_value(attribute) != helper.get_attribute_value(default):
                raise SpaError(f"{node.op_type} '{node.name}' sets '{attribute.name}', which opset {opset} does not have")
            node.attribute.remove(attribute)


def _check_same(reference: onnx.ModelProto, candidate: onnx.ModelProto, shapes: dict | None):
    """The downgraded model must run in onnxruntime and compute what the reference computes."""
    from .runtime import random_inputs, run

    feeds = random_inputs(reference, batch=1, shapes=shapes)
    want, got = run(reference, feeds), run(candidate, feeds)
    for a, b in zip(want, got):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max(initial=0)))):
            raise SpaError("the model converted down computes something else")


def _declared(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)


def _symbolic_dims(model: onnx.ModelProto):
    """-1 and 0 written as sizes of graph inputs, outputs and value_info become symbolic sizes."""
    for vi in _declared(model):
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.dim_param = f"{vi.name}_dim{axis}"


def _list_initializers(model: onnx.ModelProto, origin: Origin):
    """List the original's initializer inputs again, with their pruned shapes, in the original order."""
    inits = {t.name: t for t in model.graph.initializer}
    listed = {vi.name for vi in model.graph.input}
    for vi in origin.initializer_inputs:
        if vi.name in inits and vi.name not in listed:
            t = inits[vi.name]
            model.graph.input.append(helper.make_tensor_value_info(vi.name, t.data_type, list(t.dims)))


def _set_imports(model: onnx.ModelProto, opset: int, others):
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", opset)] + list(others))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    new = onnx.ModelProto()
    new.CopyFrom(model)
    return new
