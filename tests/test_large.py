"""A model over protobuf's 2 GB limit (generated here, never committed): it loads with its external
data, prunes, and is written with external data next to the output, without touching the input.
Slow and memory-hungry (about 3 GB on disk, 10 GB of memory at the peak): marked slow."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.runtime import random_inputs, run

pytestmark = pytest.mark.slow
WIDTH = 16384  # three 16384 x 16384 float32 weights: 3 GiB


def large_model(folder) -> str:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(3):
        inits.append(numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * 0.01), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes.append(helper.make_node("ReduceSum", [x, "axes"], ["out"], keepdims=0))
    inits.append(numpy_helper.from_array(np.array([1]), "axes"))
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch"])], inits)
    path = os.path.join(folder, "large.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path,
              save_as_external_data=True, location="large.onnx.data")
    return path


def test_a_model_over_two_gigabytes_prunes_and_is_written_with_external_data(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    path = large_model(source)
    before = os.path.getsize(source / "large.onnx.data")
    pruned, report = spa.prune(path, ratio=0.2)  # what is left is still over 2 GB
    assert report.params_after < report.params_before * 0.8
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    spa.save(pruned, out, protected=[path])
    del pruned
    assert sorted(os.listdir(out.parent)) == ["pruned.onnx", "pruned.onnx.data"]
    assert os.path.getsize(source / "large.onnx.data") == before  # the input is untouched
    feeds = random_inputs(onnx.load(out, load_external_data=False), batch=1)
    assert run(str(out), feeds)[0].shape == (1,)
