"""Erasing mode: the erased model equals the original with each erased structure's output set to
zero (the erase oracle), compared in onnxruntime on the same random inputs."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.cli import main
from spa.erase import erase, find_structures
from spa.graph import Graph
from spa.metrics import count_flops
from spa.oracle import max_relative_error, outputs_zeroed
from spa.runtime import random_inputs, run

RTOL = 1e-5
ATOL = 1e-5


def assert_oracle(original: onnx.ModelProto, erased: onnx.ModelProto, report, batch: int = 1, shapes=None):
    assert report.erased, "nothing was erased: the oracle would prove nothing"
    oracle = outputs_zeroed(original, [e["output"] for e in report.erased])
    feeds = random_inputs(original, batch=batch, shapes=shapes, seed=3)
    want, got, dense = run(oracle, feeds), run(erased, feeds), run(original, feeds)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(w).max())))
    assert any(not np.allclose(d, w) for d, w in zip(dense, want)), "erasing changed nothing"


# ---------------------------------------------------------------- a hand-built residual graph
def _weight(rng, *shape, name):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)


def tiny_model() -> onnx.ModelProto:
    """x -> [residual branch: Conv-Relu-Conv] Add -> [SE branch into Mul] -> [Concat branch] ->
    [residual branch whose Add output is the graph output]."""
    rng = np.random.default_rng(0)
    C = 4
    inits = [_weight(rng, C, C, 3, 3, name=n) for n in ("w1", "w2", "w5")]
    inits += [_weight(rng, C, C, 1, 1, name="w3"), _weight(rng, C, C, 1, 1, name="w4"),
              _weight(rng, C, 2 * C, 1, 1, name="w6"), _weight(rng, C, C, 1, 1, name="w7")]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["b1"], name="conv1", **conv),
        helper.make_node("Relu", ["b1"], ["b1r"], name="relu1"),
        helper.make_node("Conv", ["b1r", "w2"], ["b2"], name="conv2", **conv),
        helper.make_node("Add", ["x", "b2"], ["y1"], name="add1"),
        # squeeze-excitation: a branch into a Mul is no structure
        helper.make_node("GlobalAveragePool", ["y1"], ["s0"], name="se_pool"),
        helper.make_node("Conv", ["s0", "w3"], ["s1"], name="se_fc1"),
        helper.make_node("Relu", ["s1"], ["s1r"], name="se_relu"),
        helper.make_node("Conv", ["s1r", "w4"], ["s2"], name="se_fc2"),
        helper.make_node("Sigmoid", ["s2"], ["s3"], name="se_gate"),
        helper.make_node("Mul", ["y1", "s3"], ["y2"], name="se_scale"),
        # a Concat branch is no structure
        helper.make_node("Conv", ["y2", "w5"], ["c1"], name="cat_conv", **conv),
        helper.make_node("Concat", ["y2", "c1"], ["y3"], name="cat", axis=1),
        helper.make_node("Conv", ["y3", "w6"], ["y4"], name="fuse"),
        # a residual branch whose join is the graph output
        helper.make_node("Relu", ["y4"], ["r0"], name="relu2"),
        helper.make_node("Conv", ["r0", "w7"], ["r1"], name="conv3"),
        helper.make_node("Add", ["r1", "y4"], ["out"], name="add2"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", C, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_finds_residual_branches_only():
    graph = Graph.load(tiny_model())
    found = {s.output: s for s in find_structures(graph)}
    assert set(found) == {"b2", "r1"}  # not the SE gate, not the Concat branch, not the trunk sides
    branch = found["b2"]
    assert {graph.nodes[i].name for i in branch.nodes} == {"conv1", "relu1", "conv2"}
    assert branch.kind == "residual branch" and branch.parent is None
    assert branch.params == 2 * 4 * 4 * 9 and branch.flops == 2 * 4 * 8 * 8 * 4 * 9
    assert found["r1"].params == 4 * 4 and found["r1"].other == "y4"


@pytest.mark.parametrize("blocks", [1, 2])
def test_tiny_oracle(blocks):
    model = tiny_model()
    erased, report = erase(model, blocks=blocks)
    assert len(report.erased) == blocks
    assert_oracle(model, erased, report, batch=2)
    onnx.checker.check_model(erased, full_check=True)
    assert [o.name for o in erased.graph.output] == ["out"]
    names = {n.name for n in erased.graph.node}
    if blocks == 2:
        assert not names & {"conv1", "relu1", "conv2", "add1", "relu2", "conv3", "add2"}
        assert {t.name for t in erased.graph.initializer} == {"w3", "w4", "w5", "w6"}
        assert report.params_after == report.params_before - 2 * 4 * 4 * 9 - 4 * 4


def test_keep_protects_a_structure():
    _, report = erase(tiny_model(), blocks=1, keep=["conv2"])
    assert [e["output"] for e in report.erased] == ["r1"]


def test_target_flops_erases_least_important_first():
    model = tiny_model()
    _, none = erase(model, target_flops=1.0)
    assert none.erased == []
    erased, report = erase(model, target_flops=0.6)
    assert report.flops_after <= 0.6 * report.flops_before
    assert_oracle(model, erased, report)


def test_calibration_inputs_score_structures():
    """With --calib, importance is measured on the user's inputs: the same inputs the data-free
    mode makes give the same scores, and other inputs other scores; the oracle holds either way."""
    from spa.erase.scoring import SAMPLES

    model = tiny_model()
    _, free = erase(model, blocks=1)
    synthetic = np.concatenate([random_inputs(model, batch=1, seed=s)["x"] for s in range(SAMPLES)])
    _, same = erase(model, blocks=1, calib={"x": synthetic})
    assert same.inputs == "calibration" and free.inputs == "data-free"
    assert same.erased[0]["score"] == pytest.approx(free.erased[0]["score"], rel=1e-9)
    erased, shifted = erase(model, blocks=1, calib={"x": synthetic + 3.0})
    assert shifted.erased[0]["score"] != pytest.approx(free.erased[0]["score"], rel=1e-3)
    assert_oracle(model, erased, shifted)
    with pytest.raises(spa.SpaError, match="array 'y' is not an input of the model"):
        erase(model, blocks=1, calib={"y": synthetic})


def test_too_many_blocks():
    with pytest.raises(spa.SpaError, match="only 2 erasable"):
        erase(tiny_model(), blocks=3)


def test_cli(tmp_path, capsys):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["erase", str(src), "-o", str(out), "--blocks", "2", "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "FLOPs" in text and "erased" in text
    data = json.loads(rep.read_text())
    assert len(data["erased"]) == 2 and set(data["erased"][0]) >= {"id", "kind", "output", "nodes", "params", "flops"}
    assert data["flops_after"] < data["flops_before"]
    assert_oracle(onnx.load(src), onnx.load(out), type("R", (), data)())


@pytest.mark.parametrize("argv, message", [
    (["--blocks", "5"], "only 2 erasable"),
    (["--target-flops", "1.5"], "--target-flops"),
])
def test_cli_errors_write_nothing(tmp_path, capsys, argv, message):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    out = tmp_path / "out.onnx"
    assert main(["erase", str(src), "-o", str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_bad_path(tmp_path, capsys):
    assert main(["erase", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx"), "--blocks", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_nested_structures():
    """x + conv2(h + conv1(h)), h = conv0(x): the inner branch lies in the outer one."""
    rng = np.random.default_rng(1)
    C = 4
    inits = [_weight(rng, C, C, 1, 1, name=f"w{i}") for i in range(3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], name="conv0"),
             helper.make_node("Conv", ["h", "w1"], ["g"], name="conv1"),
             helper.make_node("Add", ["h", "g"], ["hg"], name="inner_add"),
             helper.make_node("Conv", ["hg", "w2"], ["f"], name="conv2"),
             helper.make_node("Add", ["x", "f"], ["y"], name="outer_add"),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, C, 4, 4]) for n in ("x", "out")]
    model = helper.make_model(helper.make_graph(nodes, "nested", vi[:1], vi[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    found = {s.output: s for s in find_structures(Graph.load(model))}
    assert set(found) == {"g", "f"} and found["g"].parent == found["f"].id and found["f"].parent is None
    erased, report = erase(model, target_flops=0.1)  # erasing the outer one erases the inner one too
    assert [e["output"] for e in report.erased] == ["f"] and report.flops_after == 0
    assert_oracle(model, erased, report)
    with pytest.raises(spa.SpaError, match="only 1 structures can be erased together"):
        erase(model, blocks=2)


# ---------------------------------------------------------------- the zoos
TORCH_CASES = {  # zoo model -> kinds of structures it has
    "resnet_basic": {"residual branch"},
    "mobilenet_v2": {"residual branch"},  # inverted residuals
    "se_resnet": {"residual branch"},  # the SE Mul lies inside the residual branch
    "vit": {"attention", "mlp"},
}


def _erase_all_joins(path: str, kinds: set[str]):
    original = onnx.load(path)
    structures = find_structures(Graph.load(original))
    assert {s.kind for s in structures} == kinds
    joins = len({s.join for s in structures if s.parent is None})
    for blocks in (1, joins):
        erased, report = erase(original, blocks=blocks)
        assert len(report.erased) == blocks and report.flops_after < report.flops_before
        assert_oracle(original, erased, report, shapes=report.input_shapes)


@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_zoo_oracle(exports, name):
    _erase_all_joins(exports.get(name, "dynamo"), TORCH_CASES[name])


def test_concat_model_has_none(exports):
    assert find_structures(Graph.load(exports.get("inception", "dynamo"))) == []


def test_torchvision_resnet18(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from frontends.torch import export
    from models_zoo.torch_models import init_model

    path = export(init_model(torchvision.models.resnet18(num_classes=10)), torch.randn(1, 3, 64, 64),
                  tmp_path / "resnet18.onnx")
    _erase_all_joins(path, {"residual branch"})


@pytest.mark.parametrize("name", ["bert_encoder", "gpt_decoder", "hf_llama"])
def test_transformer_oracle(tmp_path, name):
    pytest.importorskip("torch")
    from models_zoo.transformer_models import export_transformer

    _erase_all_joins(export_transformer(name, tmp_path / f"{name}.onnx"), {"attention", "mlp"})


def test_keras_resnet(framework_exports):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    _erase_all_joins(framework_exports.get("tf", "resnet"), {"residual branch"})


def test_flax_resnet(framework_exports):
    pytest.importorskip("jax2onnx")
    _erase_all_joins(framework_exports.get("jax", "resnet"), {"residual branch"})


def test_analyze_lists_structures(tmp_path, capsys):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    assert main(["analyze", str(src)]) == 0
    text = capsys.readouterr().out
    listing = text[text.index("removal structures"):].splitlines()[3:]
    assert [row.split()[3] for row in listing if row.strip()] == ["b2", "r1"]  # kind is two words


# ---------------------------------------------------------------- erase, then prune channels
def test_prune_after_erase_oracle(exports):
    """Erased structures and removed channel slices, zeroed together in the original, compute
    what the erased and pruned model computes; one FLOPs target of the original is met."""
    path = exports.get("resnet_basic", "dynamo")
    pruned, report = spa.prune(path, target_flops=0.5, erase=1, round_to=1)
    assert len(report.erased) == 1 and report.removed
    assert report.flops_before == count_flops(Graph.load(path))
    assert abs(report.flops_after / report.flops_before - 0.5) < 0.05
    error = max_relative_error(path, pruned, report.removed, erased=[e["output"] for e in report.erased])
    assert error < 1e-5


def test_prune_erase_flops_alone_prunes_no_channel_when_met(exports):
    path = exports.get("resnet_basic", "dynamo")
    _, erased = erase(path, target_flops=0.8)
    _, report = spa.prune(path, target_flops=erased.flops_after / erased.flops_before, erase_flops=0.8)
    assert report.erased == erased.erased and not report.removed


def test_prune_cli_erase(exports, tmp_path, capsys):
    out, report_path = tmp_path / "pruned.onnx", tmp_path / "report.json"
    assert main(["prune", exports.get("resnet_basic", "dynamo"), "-o", str(out), "--erase", "1", "--ratio", "0.3",
                 "--no-latency", "--report", str(report_path)]) == 0
    text = capsys.readouterr().out
    assert "structures erased" in text and "erased:" in text
    assert len(json.loads(report_path.read_text())["erased"]) == 1
