"""Erasing with compensation (spa erase --criterion compensate): the layers after each erased
join are solved again by least squares, so the erased model comes closer to the dense one than
plain erasing does, on inputs it was not solved on; it stays a valid model with the same
structures erased."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.cli import main
from spa.erase import erase, erase_structures, find_structures
from spa.erase.compensation import following_layers
from spa.graph import Graph
from spa.obspa.layers import weight_layer
from spa.oracle import output_error
from spa.runtime import random_inputs, run

C = 8


def residual_net(blocks: int = 3) -> onnx.ModelProto:
    """x -> stem Conv -> Relu -> `blocks` x [Conv-Relu-Conv + skip, Relu] -> GlobalAveragePool ->
    Flatten -> Gemm: random weights at a scale where every branch matters."""
    rng = np.random.default_rng(0)

    def weight(name, *shape, scale=1.0):
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    inits, conv = [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", weight("stem", C, 3, 3, 3, scale=1.5), weight("stem_b", C)], ["s"], **conv),
             helper.make_node("Relu", ["s"], ["t0"])]
    for b in range(blocks):
        nodes += [helper.make_node("Conv", [f"t{b}", weight(f"w{b}a", C, C, 3, 3, scale=1.5), weight(f"b{b}a", C)], [f"h{b}"], **conv),
                  helper.make_node("Relu", [f"h{b}"], [f"r{b}"]),
                  helper.make_node("Conv", [f"r{b}", weight(f"w{b}b", C, C, 3, 3)], [f"f{b}"], **conv),
                  helper.make_node("Add", [f"t{b}", f"f{b}"], [f"j{b}"]),
                  helper.make_node("Relu", [f"j{b}"], [f"t{b + 1}"])]
    nodes += [helper.make_node("GlobalAveragePool", [f"t{blocks}"], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", weight("head", 5, C), weight("head_b", 5)], ["out"], transB=1)]
    graph = helper.make_graph(nodes, "residual_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def held_out(model):
    """Inputs from the distribution the data-free mode solves on (standard normal), other seeds."""
    return random_inputs(model, batch=64, seed=1000)


def test_following_layers_walk_the_trunk():
    graph = Graph.load(residual_net())
    first = {s.output: following_layers(graph, s) for s in find_structures(graph)}
    # through the Relu and every later skip Add, to each later block's first Conv and the head
    assert first == {"f0": ["w1a", "w2a", "head"], "f1": ["w2a", "head"], "f2": ["head"]}


@pytest.mark.parametrize("blocks", [1, 2])
def test_compensation_lowers_the_output_error(blocks):
    model = residual_net()
    graph = Graph.load(model)
    compensated, report = erase(model, blocks=blocks, criterion="compensate")
    chosen = [s for s in find_structures(graph) if s.id in {e["id"] for e in report.erased}]
    plain = erase_structures(graph, chosen)  # the same structures, nothing solved again
    _, influence = erase(model, blocks=blocks)
    feeds = held_out(model)
    dense = run(model, feeds)
    error = output_error(run(compensated, feeds), dense)
    assert error < 0.7 * output_error(run(plain, feeds), dense)
    assert error < output_error(run(erase(model, blocks=blocks)[0], feeds), dense)
    assert len(report.erased) == len(influence.erased) == blocks


def test_compensated_model_is_valid_and_as_small():
    model = residual_net()
    compensated, report = erase(model, blocks=2, criterion="compensate")
    onnx.checker.check_model(compensated, full_check=True)
    outputs = run(compensated, random_inputs(compensated, batch=2, seed=5))
    assert outputs[0].shape == (2, 5) and np.isfinite(outputs[0]).all()
    assert report.criterion == "compensate" and len(report.erased) == 2
    assert report.structures == len(find_structures(Graph.load(model)))
    graph = Graph.load(model)
    chosen = [s for s in find_structures(graph) if s.id in {e["id"] for e in report.erased}]
    plain = Graph(erase_structures(graph, chosen))
    after = Graph.load(compensated)
    assert sorted(after.initializers) == sorted(plain.initializers)  # only values changed
    solved = {w for e in report.erased for w in e["compensated"]}
    assert solved and solved <= set(after.initializers)
    biases = {weight_layer(graph, w).bias[0] for w in solved}  # every layer here has its own bias
    changed = {n for n in after.initializers if not np.array_equal(after.value(n), graph.value(n))}
    assert changed == solved | biases


def test_compensate_with_calibration():
    model = residual_net()
    calib = {"x": np.concatenate([random_inputs(model, batch=32, seed=s)["x"] for s in (7, 8)])}
    compensated, report = erase(model, blocks=1, criterion="compensate", calib=calib)
    assert report.inputs == "calibration" and report.erased[0]["compensated"]
    feeds = held_out(model)
    dense = run(model, feeds)
    plain = erase_structures(Graph.load(model), [s for s in find_structures(Graph.load(model))
                                                 if s.id == report.erased[0]["id"]])
    assert output_error(run(compensated, feeds), dense) < output_error(run(plain, feeds), dense)


def test_default_criterion_changes_no_weight():
    model = residual_net()
    erased, report = erase(model, blocks=2)
    assert report.criterion == "influence" and all(e["compensated"] == [] for e in report.erased)
    graph, after = Graph.load(model), Graph.load(erased)
    assert all(np.array_equal(after.value(n), graph.value(n)) for n in after.initializers)


def test_unknown_criterion():
    with pytest.raises(spa.SpaError, match="unknown erasing criterion 'obs'"):
        erase(residual_net(), blocks=1, criterion="obs")


def test_cli(tmp_path, capsys):
    src, out = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(residual_net(), src)
    assert main(["erase", str(src), "-o", str(out), "--blocks", "1", "--criterion", "compensate", "--no-latency"]) == 0
    text = capsys.readouterr().out
    assert "criterion: compensate" in text and "compensated after" in text
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_cli_bad_criterion(tmp_path, capsys):
    src, out = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(residual_net(), src)
    assert main(["erase", str(src), "-o", str(out), "--blocks", "1", "--criterion", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown erasing criterion 'bogus'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("name", [pytest.param("resnet_basic", marks=pytest.mark.slow),  # 6 structures: about 20 s
                                  "mobilenet_v2", "se_resnet", "vit"])
def test_torch_zoo(exports, name):
    """Convolutions, depthwise ones (no layer: the walk stops), SE gates, attention and MLP
    sub-layers behind LayerNorm: valid, and closer to the dense model than plain erasing."""
    path = exports.get(name, "dynamo")
    model, graph = onnx.load(path), Graph.load(path)
    compensated, report = erase(model, blocks=2, criterion="compensate")
    onnx.checker.check_model(compensated, full_check=True)
    assert any(e["compensated"] for e in report.erased)
    chosen = [s for s in find_structures(graph) if s.id in {e["id"] for e in report.erased}]
    feeds = random_inputs(model, batch=8, shapes=report.input_shapes, seed=1000)
    dense = run(model, feeds)
    plain = output_error(run(erase_structures(graph, chosen), feeds), dense)
    assert output_error(run(compensated, feeds), dense) < plain
