"""Models as older exporters write them: opsets 7 to 12 (converted for the analysis and written back
at their own opset), initializers listed as inputs, -1 dims, symbolic image sizes, and prunes that
go on when one group cannot be removed."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import spa
from spa.conform import default_opset
from spa.errors import SpaError
from spa.oracle import max_relative_error


class Legacy(nn.Module):
    """Operators whose form changed between opsets 7 and 13: Split, Squeeze, Clip (ReLU6), Slice,
    ReduceMean, Flatten; with a residual add and a channel concat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.body(y)
        a, b = torch.split(y, 8, dim=1)
        y = torch.cat([self.branch(b), a, y[:, :8]], dim=1)
        return self.head(y.mean(dim=(2, 3), keepdim=True).flatten(1))


class Strided(nn.Module):
    """A detector-like net that runs only at sizes divisible by 16: upsampled maps are concatenated."""

    def __init__(self):
        super().__init__()
        self.down = nn.ModuleList(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1) for c in (4, 8, 16, 32))
        self.stem = nn.Conv2d(3, 4, 1)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.out = nn.Conv2d(64 + 32, 6, 1)

    def forward(self, x):
        y = self.stem(x)
        maps = []
        for conv in self.down:
            y = torch.relu(conv(y))
            maps.append(y)
        return self.out(torch.cat([self.up(maps[-1]), maps[-2]], dim=1))


def _export(module: nn.Module, path, opset: int, size=(32, 32), dynamic=("b",), keep_initializers=False) -> str:
    torch.manual_seed(0)
    names = dict(zip((0, 2, 3), dynamic))
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    torch.onnx.export(module.eval(), torch.randn(1, 3, *size), str(path), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": names},
                      keep_initializers_as_inputs=keep_initializers)
    return str(path)


@pytest.mark.parametrize("opset", [7, 9, 11, 12])
def test_old_opsets_prune_exactly_and_are_written_at_their_own_opset(tmp_path, opset):
    path = _export(Legacy(), tmp_path / "legacy.onnx", opset, keep_initializers=opset == 9)
    for ratio in (0.3, 0.5):
        pruned, report = spa.prune(path, ratio=ratio)
        assert report.opset == {"input": opset, "analyzed": 13, "written": opset} and report.notes == []
        assert default_opset(pruned) == opset and pruned.ir_version == onnx.load(path).ir_version
        assert report.groups_pruned >= 3 and report.params_after < report.params_before
        assert max_relative_error(path, pruned, report.removed) < 1e-5
        spa.save(pruned, tmp_path / "pruned.onnx")
        ort.InferenceSession(str(tmp_path / "pruned.onnx"))  # the runtime the user deploys to loads it


def test_opset_chooses_the_written_opset(tmp_path):
    path = _export(Legacy(), tmp_path / "legacy.onnx", 11)
    for wanted in (17, 12):
        pruned, report = spa.prune(path, ratio=0.5, opset=wanted)
        assert default_opset(pruned) == wanted == report.opset["written"]
        assert max_relative_error(path, pruned, report.removed) < 1e-5


def test_what_cannot_be_written_at_the_old_opset_is_written_upgraded_with_a_note(tmp_path):
    path = _export(Legacy(), tmp_path / "legacy.onnx", 17)
    pruned, report = spa.prune(path, ratio=0.5, opset=7)  # Split sizes as an input have no opset-7 form here
    assert default_opset(pruned) == report.opset["written"]
    if report.opset["written"] != 7:
        assert len(report.notes) == 1 and report.notes[0].startswith("written at opset 17, not 7")
    assert max_relative_error(path, pruned, report.removed) < 1e-5


def test_dims_written_as_minus_one_are_symbolic(tmp_path):
    model = onnx.load(_export(Legacy(), tmp_path / "legacy.onnx", 11, dynamic=("b", "h", "w")))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = -1  # as paddle2onnx writes a dynamic batch
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0
    pruned, report = spa.prune(model, ratio=0.5)
    assert report.groups_pruned >= 3
    assert max_relative_error(model, pruned, report.removed) < 1e-5


def test_symbolic_image_sizes_are_picked_so_the_model_runs(tmp_path):
    path = _export(Strided(), tmp_path / "strided.onnx", 12, dynamic=("b", "h", "w"))
    with pytest.raises(Exception):  # at the old default size of 4 the concatenated maps disagree
        ort.InferenceSession(path).run(None, {"x": np.zeros((1, 3, 4, 4), np.float32)})
    pruned, report = spa.prune(path, ratio=0.5)
    assert report.input_shapes == {"x": [1, 3, 64, 64]}
    assert report.notes[0] == "ran the model with input sizes x=1,3,64,64 (choose them with --input-shape)"
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 96, 160)).astype(np.float32)}
    assert max_relative_error(path, pruned, report.removed, feeds=feeds) < 1e-5
    _, given = spa.prune(path, ratio=0.5, input_shapes={"x": (1, 3, 32, 48)})
    assert given.input_shapes == {"x": [1, 3, 32, 48]} and not any("input sizes" in n for n in given.notes)


def test_input_shapes_that_do_not_fit_are_refused(tmp_path):
    path = _export(Strided(), tmp_path / "strided.onnx", 12, dynamic=("b", "h", "w"))
    for shapes, message in (({"images": (1, 3, 64, 64)}, "no input of that name"),
                            ({"x": (1, 4, 64, 64)}, "does not fit"), ({"x": (1, 3, 64)}, "does not fit")):
        with pytest.raises(SpaError, match=message):
            spa.prune(path, ratio=0.5, input_shapes=shapes)


def _spa(*args):
    return subprocess.run([sys.executable, "-m", "spa.cli", *map(str, args)], capture_output=True, text=True)


def test_command_line_input_shape_and_opset(tmp_path):
    path = _export(Strided(), tmp_path / "strided.onnx", 12, dynamic=("b", "h", "w"))
    out = tmp_path / "out.onnx"
    result = _spa("prune", path, "-o", out, "--input-shape", "x=1,3,32,32", "--opset", "13", "--no-latency")
    assert result.returncode == 0, result.stderr
    assert default_opset(onnx.load(out)) == 13 and "(opset 13)" in result.stdout
    result = _spa("analyze", path)
    assert result.returncode == 0 and "opset 12: analyzed at opset 13" in result.stdout
    assert "ran the model with input sizes x=1,3,64,64" in result.stdout
    for option, message in ((["--input-shape", "x=1,3,a"], "NAME=D1,D2"), (["--opset", "30"], "writes opsets 7 to 23")):
        bad = _spa("prune", path, "-o", tmp_path / "bad.onnx", *option)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr
        assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------ one group never stops the others
def _conv_chain(tmp_path) -> str:
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                           nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    return _export(module, tmp_path / "chain.onnx", 13)


def _group_through(analysis, tensor: str) -> int:
    return next(g.id for g in analysis.groups if any(m.tensor == tensor for m in g.members))


def test_a_group_whose_rewrite_fails_is_blocked_and_the_rest_prune(tmp_path, monkeypatch):
    from spa.rules import Unknown
    from spa.rules.elementwise import Unary

    path = _conv_chain(tmp_path)
    analysis = spa.analyze(path)
    relus = [i for i, n in enumerate(analysis.graph.nodes) if n.op_type == "Relu"]
    victim = analysis.graph.nodes[relus[1]].output[0]
    original = Unary.rewrite

    def failing(self, view, edit):
        if view.outputs[0] == victim:
            raise Unknown("a test failure")
        return original(self, view, edit)

    monkeypatch.setattr(Unary, "rewrite", failing)
    pruned, report = spa.prune(path, ratio=0.5)
    group = _group_through(analysis, victim)
    newly = [b for b in report.blocked if b["group"] not in {g.id for g in analysis.blocked}]
    assert [b["group"] for b in newly] == [group]
    assert "cannot be rewritten" in newly[0]["reasons"][0] and "a test failure" in newly[0]["reasons"][0]
    assert newly[0]["codes"] == ["rewrite_failed"]
    assert report.groups_pruned == 2
    assert max_relative_error(path, pruned, report.removed) < 1e-5


def test_a_group_that_breaks_the_final_check_is_blocked_and_the_rest_prune(tmp_path, monkeypatch):
    import spa.api
    from spa.rewrite import validate

    path = _conv_chain(tmp_path)
    analysis = spa.analyze(path)
    victim = analysis.graph.nodes[[n.op_type for n in analysis.graph.nodes].index("Conv")].input[1]
    original_size = analysis.graph.value(victim).shape[0]

    def picky(model, reference=None, shapes=None):
        weight = next(t for t in model.graph.initializer if t.name == victim)
        if weight.dims[0] != original_size:
            raise SpaError("a test failure")
        validate(model, reference, shapes)

    monkeypatch.setattr(spa.api, "validate", picky)
    pruned, report = spa.prune(path, ratio=0.5)
    newly = [b for b in report.blocked if b["group"] not in {g.id for g in analysis.blocked}]
    assert [b["group"] for b in newly] == [_group_through(analysis, victim)]
    assert "breaks the pruned model (a test failure)" in newly[0]["reasons"][0]
    assert newly[0]["codes"] == ["breaks_model"]
    assert report.groups_pruned == 2
    assert max_relative_error(path, pruned, report.removed) < 1e-5


def test_a_stale_value_info_shape_is_not_believed(tmp_path):
    """An exporter's value_info claiming 5 channels where the Conv makes 8: inference decides."""
    model = onnx.load(_conv_chain(tmp_path))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(relu.output[0], onnx.TensorProto.FLOAT, ["b", 5, 32, 32]))
    pruned, report = spa.prune(model, ratio=0.5)
    assert report.groups_pruned == 3 and [b["reasons"] for b in report.blocked] == [["reaches the graph output 'y'"]]
    assert max_relative_error(model, pruned, report.removed) < 1e-5
