"""Hard and hostile inputs: each is pruned correctly (zeroing oracle) or refused with a reason.

Control flow, FP16 and BF16 weights, initializers that are also graph inputs, unused ones, and
broken files: a truncated model, random bytes, a protobuf that is not a model, dangling tensor
references, a cycle, absurd attributes. Refusals are one line on stderr with exit status 2.
"""
from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.oracle import max_relative_error

IR = 10


def _model(nodes, inits, inputs=None, outputs=None, opset=17, check=True):
    inputs = inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4, 6, 6])]
    outputs = outputs or [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3, 6, 6])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR)
    if check:
        onnx.checker.check_model(model)
    return model


def _weights(seed=0, **shapes):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def test_channels_entering_a_subgraph_are_blocked_and_the_rest_prunes():
    """X -> c1 -> If(branches read c1's output from the outer scope) -> c2 -> c3 -> Y."""
    branch = lambda op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["h"], ["out"])], op, [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8, 6, 6])])
    nodes = [
        helper.make_node("Conv", ["X", "w1"], ["h"], name="c1"),
        helper.make_node("ReduceSum", ["X"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], name="choose", then_branch=branch("Relu"), else_branch=branch("Neg")),
        helper.make_node("Conv", ["branch", "w2"], ["g"], name="c2"),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["Y"], name="c3"),
    ]
    inits = _weights(w1=(8, 4, 1, 1), w2=(6, 8, 1, 1), w3=(3, 6, 1, 1)) | {"zero": np.array(0, np.float32)}
    model = _model(nodes, inits)
    analysis = spa.analyze(model)
    entering = next(g for g in analysis.groups if any(m.tensor == "w1" and m.axis == 0 for m in g.params))
    assert any("If 'choose'" in r for r in entering.blocked)
    pruned, report = spa.prune(model, ratio=0.5)
    assert {r["tensor"] for r in report.removed} == {"w2", "w3"}  # c2's channels, past the If
    assert max_relative_error(model, pruned, report.removed) < 1e-5


def _resnet_in(dtype, path):
    """A zoo model with its float weights and interface turned into `dtype`."""
    model = onnx.load(path)
    numpy_type = {TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: ml_dtypes.bfloat16}[dtype]
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(numpy_type), t.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = dtype
    del model.graph.value_info[:]
    return model


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_precision_models_prune_exactly(exports, dtype):
    model = _resnet_in(dtype, exports.get("resnet_basic", "dynamo"))
    pruned, report = spa.prune(model, ratio=0.5)
    assert report.params_after < report.params_before / 2
    assert all(t.data_type in (dtype, TensorProto.INT64) for t in pruned.graph.initializer)
    assert max_relative_error(model, pruned, report.removed) < 1e-2  # half precision rounding


def test_an_initializer_listed_as_a_graph_input_is_a_weight():
    """Old exporters (IR < 4, PyTorch's keep_initializers_as_inputs) list every weight as an input."""
    nodes = [helper.make_node("Conv", ["X", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["Y"])]
    inits = _weights(w1=(8, 4, 1, 1), w2=(3, 8, 1, 1), unused=(5, 5))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4, 6, 6]),
              helper.make_tensor_value_info("w1", TensorProto.FLOAT, [8, 4, 1, 1])]
    model = _model(nodes, inits, inputs=inputs)
    pruned, report = spa.prune(model, ratio=0.5)
    assert {(r["tensor"], r["axis"]) for r in report.removed} == {("w1", 0), ("w2", 1)}
    assert [i.name for i in pruned.graph.input] == ["X", "w1"]  # listed again, with its new shape
    assert [d.dim_value for d in pruned.graph.input[1].type.tensor_type.shape.dim] == [4, 4, 1, 1]
    assert "unused" in {t.name for t in pruned.graph.initializer}
    assert max_relative_error(model, pruned, report.removed) < 1e-5


def _spa(*args):
    return subprocess.run([sys.executable, "-m", "spa.cli", *map(str, args)], capture_output=True, text=True)


def _hostile(tmp_path):
    """name -> a file that is not a usable model."""
    conv = [helper.make_node("Conv", ["X", "w"], ["Y"])]
    files = {
        "tensor.onnx": numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString(),
        "dangling.onnx": _model([helper.make_node("Relu", ["nowhere"], ["Y"])], {}, check=False).SerializeToString(),
        "cycle.onnx": _model([helper.make_node("Add", ["X", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                              helper.make_node("Identity", ["b"], ["Y"])], {}, check=False).SerializeToString(),
        "zero_groups.onnx": _model([helper.make_node("Conv", ["X", "w"], ["Y"], group=0)],
                                   _weights(w=(8, 4, 1, 1)), check=False).SerializeToString(),
        "bad_reshape.onnx": _model(conv + [helper.make_node("Reshape", ["Y", "shape"], ["Z"])],
                                   _weights(w=(8, 4, 1, 1)) | {"shape": np.array([7, -1, 5], np.int64)},
                                   outputs=[helper.make_tensor_value_info("Z", TensorProto.FLOAT, [7, 4, 5])],
                                   check=False).SerializeToString(),
        "opset_5.onnx": _model(conv, _weights(w=(3, 4, 1, 1)), opset=5, check=False).SerializeToString(),
        "opset_24.onnx": _model(conv, _weights(w=(3, 4, 1, 1)), opset=24, check=False).SerializeToString(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return list(files)


def test_hostile_files_are_refused_in_one_line(tmp_path):
    for name in _hostile(tmp_path):
        for command in (["analyze", tmp_path / name], ["prune", tmp_path / name, "-o", tmp_path / "out.onnx"]):
            result = _spa(*command)
            assert result.returncode == 2, (name, result.returncode, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, (name, result.stderr)
            assert not os.path.exists(tmp_path / "out.onnx")
