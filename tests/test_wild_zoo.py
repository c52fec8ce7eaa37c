"""The wild zoo (models_zoo/wild.py): models as other exporters and other people write them.

First the zoo itself: every file runs in onnxruntime at its native opset and computes what its
torch model computes, and looks like what it imitates. Then SPA on each: it analyzes, prunes at
0.3 and 0.5 exactly (the zeroing oracle on data-shaped inputs at the sizes the model really runs
at), keeps the output shapes and the file's opset, and writes a model onnxruntime loads.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import spa
from models_zoo.wild import CHARACTERS, PADDLE_OUTPUT, WILD_ZOO, scene_image
from spa.oracle import max_relative_error, zeroed

TOLERANCE = 1e-4  # of the output scale
RATIOS = (0.3, 0.5)
PADDLE = [name for name, entry in WILD_ZOO.items() if entry.plain]


class _WildFiles:
    """Writes each wild-zoo model once per session."""

    def __init__(self, root):
        self.root = root
        self.cache: dict[str, str] = {}

    def get(self, name: str) -> str:
        if name not in self.cache:
            self.cache[name] = WILD_ZOO[name].write(self.root / f"{name}.onnx")
        return self.cache[name]


@pytest.fixture(scope="session")
def wild(tmp_path_factory):
    return _WildFiles(tmp_path_factory.mktemp("wild_zoo"))


def ort_run(model, feeds) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # initializers listed as inputs and stale value_info warn
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def row_error(got: np.ndarray, want: np.ndarray) -> float:
    """max over axis-1 slices of |got - want| / max |want| in that slice: a YOLO output mixes box
    coordinates (hundreds) with class scores (0 to 1), which a whole-output scale would hide."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.ndim < 2:
        return float(np.abs(got - want).max(initial=0.0) / max(np.abs(want).max(initial=0.0), 1e-12))
    floor = 1e-6 * max(np.abs(want).max(initial=0.0), 1e-12)
    worst = 0.0
    for i in range(want.shape[1]):
        scale = max(np.abs(want[:, i]).max(initial=0.0), floor)
        worst = max(worst, float(np.abs(got[:, i] - want[:, i]).max(initial=0.0) / scale))
    return worst


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def parameter_count(model: onnx.ModelProto) -> int:
    """Float elements of initializers and of Constant nodes holding more than a scalar."""
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    return sum(int(np.prod(t.dims)) for t in tensors
               if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1)


def torch_outputs(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = WILD_ZOO[name].module(0)(*[torch.from_numpy(v) for v in feeds.values()])
    return [t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out)]


# ---------------------------------------------------------------------------------------------
# The zoo itself
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WILD_ZOO))
def test_zoo_file_computes_its_torch_model(wild, name):
    path = wild.get(name)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert default_opset(model) == WILD_ZOO[name].opset
    feeds = WILD_ZOO[name].feeds()
    assert [i.name for i in model.graph.input][:len(feeds)] == list(feeds)
    got = ort_run(path, feeds)
    want = torch_outputs(name, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert row_error(g, w) < 1e-4, name
        assert np.abs(w).max() > 1e-3 and w.std() > 1e-4, f"{name}: the data gives a trivial output"


def test_torchscript_files_look_like_torch_1_9(wild):
    resnet = onnx.load(wild.get("resnet_ts11"))
    assert (resnet.ir_version, default_opset(resnet)) == (6, 11)
    inputs = {i.name for i in resnet.graph.input}
    assert resnet.graph.initializer and {t.name for t in resnet.graph.initializer} <= inputs
    assert resnet.graph.input[0].name == "input.1" and resnet.graph.output[0].name == "495"
    assert resnet.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
    assert "BatchNormalization" not in {n.op_type for n in resnet.graph.node}
    mobilenet = onnx.load(wild.get("mobilenet_v2_ts12"))
    assert (mobilenet.ir_version, default_opset(mobilenet)) == (6, 12)
    assert "Clip" in {n.op_type for n in mobilenet.graph.node}


@pytest.mark.parametrize("name", PADDLE)
def test_paddle_files_look_like_paddle2onnx(wild, name):
    model = onnx.load(wild.get(name))
    graph = model.graph
    assert (model.ir_version, default_opset(model), model.producer_name) == (6, 11, "PaddlePaddle")
    x = graph.input[0]
    dims = x.type.tensor_type.shape.dim
    assert x.name == "x" and dims[0].dim_value == -1 and dims[1].dim_value == 3
    named = [d.dim_param for d in dims[2:] if not d.HasField("dim_value")]
    assert named and set(named) <= {"p2o.DynamicDimension.0", "DynamicDimension.1"}
    assert graph.output[0].name == PADDLE_OUTPUT
    assert {t.name for t in graph.initializer} <= {i.name for i in graph.input}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    assert len(constants) >= 200
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert any(n.input[1] in constants for n in convs), "some weights sit in Constant nodes"
    assert any(n.input[1].startswith("conv2d_") and n.input[1].endswith(".w_0") for n in convs)
    identities = {n.output[0]: n for n in graph.node if n.op_type == "Identity"}
    assert any(n.input[0] in identities for n in identities.values()), "Identity chains"
    assert any("/" in name and ":" in name for name in identities)
    assert any(n.output[0].startswith("batch_norm2d_") and n.output[0].endswith(".tmp_2")
               for n in graph.node if n.op_type == "BatchNormalization")
    assert all(n.name.startswith("p2o.") for n in graph.node)
    produced = {o for n in graph.node for o in n.output}
    assert any(vi.name not in produced for vi in graph.value_info), "a stale value_info entry"
    metadata = {p.key: p.value for p in model.metadata_props}
    if name == "paddle_crnn":
        assert metadata["character"].split("\n") == list(CHARACTERS)
        assert ort_run(wild.get(name), WILD_ZOO[name].feeds())[0].shape[-1] == len(CHARACTERS) + 1


def test_yolov8_runs_only_at_multiples_of_32(wild):
    path = wild.get("yolov8")
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    anchors = 12 * 8 + 6 * 4 + 3 * 2  # P3, P4, P5 at 96 x 64
    assert ort_run(path, {"images": scene_image(96, 64)})[0].shape == (1, 4 + 4, anchors)
    with pytest.raises(Exception):
        ort_run(path, {"images": np.zeros((1, 3, 48, 48), np.float32)})


# ---------------------------------------------------------------------------------------------
# SPA on the wild zoo
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WILD_ZOO))
def test_analyze_finds_prunable_groups(wild, name):
    analysis = spa.analyze(wild.get(name))
    assert analysis.prunable, f"{name}: no prunable group"




@pytest.mark.parametrize("name", PADDLE)
def test_paddle_style_prunes_like_the_plain_export(wild, tmp_path, name):
    """Renamed tensors, Constant-node weights, Identity chains, -1 dims and a stale value_info
    change nothing about which channels can go."""
    plain = WILD_ZOO[name].plain(tmp_path / "plain.onnx")
    want = sorted(g.units for g in spa.analyze(plain).prunable)
    assert sorted(g.units for g in spa.analyze(wild.get(name)).prunable) == want


def prune_cases() -> list:
    """Every model without hints; those whose declared sizes do not run (or run only at a size
    nothing like the data's) also with `input_shapes`."""
    cases = []
    for name, entry in WILD_ZOO.items():
        for hinted in (False, True) if entry.input_shapes else (False,):
            for ratio in RATIOS:
                cases.append(pytest.param(name, hinted, ratio, id=f"{name}-{'hinted' if hinted else 'unhinted'}-{ratio}"))
    return cases


@pytest.mark.parametrize("name, hinted, ratio", prune_cases())
def test_prune_is_exact(wild, tmp_path, name, hinted, ratio):
    entry = WILD_ZOO[name]
    path = wild.get(name)
    original = onnx.load(path)
    hints = {"input_shapes": entry.input_shapes} if hinted else {}
    pruned, report = spa.prune(path, ratio=ratio, exact=True, **hints)
    assert report.params_after < report.params_before
    assert parameter_count(pruned) < parameter_count(original)

    feeds = entry.feeds()
    error = max_relative_error(path, pruned, report.removed, feeds=feeds)
    assert error < TOLERANCE, f"{name} ratio {ratio}: oracle error {error:.2e}"
    want = ort_run(zeroed(path, report.removed), feeds)
    got = ort_run(pruned, feeds)
    for g, w in zip(got, want):
        assert row_error(g, w) < TOLERANCE, f"{name} ratio {ratio}: per-channel oracle error {row_error(g, w):.2e}"
    assert [g.shape for g in got] == [o.shape for o in ort_run(path, feeds)]
    assert default_opset(pruned) == default_opset(original) == entry.opset

    out = spa.save(pruned, tmp_path / "pruned.onnx")
    assert [o.shape for o in ort_run(out, feeds)] == [g.shape for g in got]


def test_speech_state_blocks_hidden_units_but_front_end_prunes(wild):
    path = wild.get("speech_gru")
    original = onnx.load(path)
    pruned, report = spa.prune(path, ratio=0.5, exact=True)
    hidden = [{a.name: a.i for a in n.attribute}["hidden_size"] for n in pruned.graph.node if n.op_type == "GRU"]
    assert hidden == [24, 24], "the GRU's state is a graph input and output: its hidden units stay"
    first_conv = next(n for n in original.graph.node if n.op_type == "Conv")
    assert any(r["tensor"] == first_conv.input[1] and r["axis"] == 0 for r in report.removed), \
        "the front end's first Conv feeds only the second: its channels prune"
    feeds = WILD_ZOO["speech_gru"].feeds()
    assert [o.shape for o in ort_run(pruned, feeds)] == [(1, 50, 8), (2, 1, 24)]
    assert max_relative_error(path, pruned, report.removed, feeds=feeds) < TOLERANCE


def cli(*args):
    return subprocess.run([sys.executable, "-m", "spa.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("name", list(WILD_ZOO))
def test_cli_on_wild_files(wild, tmp_path, name):
    path = wild.get(name)
    result = cli("analyze", path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "pruned.onnx"
    result = cli("prune", path, "-o", out, "--ratio", "0.5", "--no-latency")
    assert result.returncode == 0, result.stderr
    feeds = WILD_ZOO[name].feeds()
    assert [o.shape for o in ort_run(out, feeds)] == [o.shape for o in ort_run(path, feeds)]
