"""The PyTorch zoo exports (both exporters) and runs in onnxruntime like the torch model."""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from frontends.torch import EXPORTERS, export, export_zoo  # noqa: E402
from models_zoo.torch_models import TORCH_ZOO, TORCH_ZOO_LARGE, build  # noqa: E402

RTOL = 1e-4   # of the output scale: max|a - b| <= RTOL * max|a| + ATOL
ATOL = 1e-6


def _session(path: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _check_agrees(model, path: str, input_shape, batches=(2, 3), seed: int = 1) -> None:
    sess = _session(path)
    (inp,) = sess.get_inputs()
    g = torch.Generator().manual_seed(seed)
    for b in batches:
        x = torch.randn((b, *input_shape[1:]), generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        (out,) = sess.run(None, {inp.name: x.numpy()})
        assert out.shape == ref.shape, (b, out.shape, ref.shape)
        err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
        assert err <= RTOL * scale + ATOL, f"batch {b}: max err {err:.3g}, output scale {scale:.3g}"


def _op_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TORCH_ZOO))
def test_export_matches_torch(exports, name, exporter):
    path = exports.get(name, exporter)
    entry = TORCH_ZOO[name]
    model = entry.build(seed=0)
    _check_agrees(model, path, entry.input_shape)

    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert proto.ir_version <= 13  # onnxruntime's limit
    # symbolic batch axis on every input and output
    for v in (*proto.graph.input, *proto.graph.output):
        dim0 = v.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), (v.name, dim0)
    # self-contained: one file, no external data
    assert os.listdir(os.path.dirname(path)) == ["model.onnx"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_training_export_keeps_batchnorm(exports, exporter):
    name = "resnet_basic"  # BN after every Conv, including the downsample shortcuts
    model = build(name)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    path = exports.get(name, exporter, training=True)
    counts = _op_counts(path)
    assert counts.get("BatchNormalization", 0) == n_bn, counts
    assert _op_counts(exports.get(name, exporter)).get("BatchNormalization", 0) < n_bn
    for node in onnx.load(path).graph.node:  # inference-mode BN (running statistics)
        if node.op_type == "BatchNormalization":
            attrs = {a.name: a.i for a in node.attribute}
            assert attrs.get("training_mode", 0) == 0 and len(node.output) == 1
    _check_agrees(model, path, TORCH_ZOO[name].input_shape)


def test_static_batch_and_names(tmp_path):
    model = build("conv_chain")
    path = export(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx", exporter="torchscript",
                  dynamic_batch=False, input_names=["x"], output_names=["logits"])
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temporary file left behind


def test_bad_exporter(tmp_path):
    with pytest.raises(ValueError, match="exporter"):
        export(build("conv_chain"), torch.randn(2, 3, 32, 32), tmp_path / "m.onnx",
               exporter="tflite")
    assert not os.listdir(tmp_path)


def test_zoo_registry():
    assert "resnet50" not in TORCH_ZOO and TORCH_ZOO_LARGE["resnet50"].large
    for name, entry in TORCH_ZOO.items():
        assert entry.input_shape[0] == 2 and entry.description, name
    # deterministic seeding, randomized BatchNorm statistics
    a, b, c = build("resnet_basic", seed=0), build("resnet_basic", seed=0), build("resnet_basic", 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])
    bn = a.stem[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not a.training
