"""The transformer zoo exports (each exporter that works for a model) and runs in onnxruntime
like the torch model."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from frontends.torch import EXPORTERS  # noqa: E402
from models_zoo.torch_models import ZooEntry  # noqa: E402
from models_zoo.transformer_models import (  # noqa: E402
    TRANSFORMER_ZOO, VOCAB, build, export_transformer)

pytestmark = pytest.mark.filterwarnings("ignore:Exporting aten..index operator:UserWarning")

RTOL = 1e-4   # of the output scale: max|a - b| <= RTOL * max|a| + ATOL
ATOL = 1e-5

HAS_TRANSFORMERS = True
try:
    import transformers  # noqa: F401
except ImportError:
    HAS_TRANSFORMERS = False


def _marks(entry) -> list:
    if not entry.hf:
        return []
    return [pytest.mark.slow, pytest.mark.skipif(not HAS_TRANSFORMERS,
                                                 reason="transformers is not installed")]


CASES = [pytest.param(name, exporter, id=f"{name}-{exporter}", marks=_marks(entry))
         for name, entry in TRANSFORMER_ZOO.items() for exporter in entry.exporters]


class _Exports:
    """Each (model, exporter) exported once per session."""

    def __init__(self, root):
        self.root = root
        self.cache: dict[tuple[str, str], str] = {}

    def get(self, name: str, exporter: str) -> str:
        key = (name, exporter)
        if key not in self.cache:
            d = self.root / f"{name}-{exporter}"
            d.mkdir()
            self.cache[key] = export_transformer(name, d / "model.onnx", exporter=exporter)
        return self.cache[key]


@pytest.fixture(scope="session")
def transformer_exports(tmp_path_factory):
    return _Exports(tmp_path_factory.mktemp("transformer_zoo"))


def _session(path: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, exporter", CASES)
def test_export_matches_torch(transformer_exports, name, exporter):
    entry = TRANSFORMER_ZOO[name]
    path = transformer_exports.get(name, exporter)
    model = build(name)
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == list(entry.input_names)
    assert len(sess.get_outputs()) == 1                     # logits only
    batches = (2, 3) if entry.dynamic_batch else (entry.input_shape[0],)
    for b in batches:
        inputs = entry.example_inputs(batch=b, seed=1 + b)
        with torch.no_grad():
            ref = model(*inputs)
        assert isinstance(ref, torch.Tensor)
        ref = ref.numpy()
        (out,) = sess.run(None, {n: x.numpy() for n, x in zip(entry.input_names, inputs)})
        assert out.shape == ref.shape, (b, out.shape, ref.shape)
        err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
        assert scale > 0.1, scale                              # not a degenerate output
        assert err <= RTOL * scale + ATOL, f"batch {b}: max err {err:.3g}, output scale {scale:.3g}"

    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    (output,) = proto.graph.output
    dims = output.type.tensor_type.shape.dim
    assert dims[-1].dim_value != 64, "the hidden size reaches the graph output"
    if entry.dynamic_batch:
        for v in (*proto.graph.input, *proto.graph.output):
            dim0 = v.type.tensor_type.shape.dim[0]
            assert dim0.dim_param and not dim0.HasField("dim_value"), (v.name, dim0)


def test_registry():
    hf = {"hf_bert", "hf_gpt2", "hf_vit", "hf_llama"}
    assert set(TRANSFORMER_ZOO) == {"bert_encoder", "gpt_decoder", "gqa_decoder", "vit_sdpa",
                                    "vit_sdpa_qkv", *hf, *(f"{n}_eager" for n in hf)}
    for name, entry in TRANSFORMER_ZOO.items():
        assert isinstance(entry, ZooEntry), name
        assert entry.description, name
        assert entry.exporters and set(entry.exporters) <= set(EXPORTERS), name
        if set(entry.exporters) != set(EXPORTERS):
            assert entry.notes, f"{name}: say why an exporter does not work"
        inputs = entry.example_inputs(batch=3, seed=0)
        assert len(inputs) == len(entry.inputs) == len(entry.input_names)
        for x, (_, kind) in zip(inputs, entry.inputs):
            assert x.shape[0] == 3
            if kind == "tokens":
                assert x.dtype == torch.int64 and x.shape == (3, *entry.input_shape[1:])
                assert 0 <= int(x.min()) and int(x.max()) < VOCAB
            elif kind == "mask":
                assert x.dtype == torch.int64 and set(x.unique().tolist()) <= {0, 1}
                assert (x[:, 0] == 1).all() and (x[0] == 1).all()
            else:
                assert x.dtype == torch.float32 and x.shape == (3, *entry.input_shape[1:])
        # deterministic
        for a, b in zip(inputs, entry.example_inputs(batch=3, seed=0)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n, e in TRANSFORMER_ZOO.items() if not e.hf])
def test_hand_written_models(name):
    entry = TRANSFORMER_ZOO[name]
    a, b = build(name, seed=0), build(name, seed=0)
    assert not a.training
    inputs = entry.example_inputs()
    with torch.no_grad():
        ya, yb = a(*inputs), b(*inputs)
        yc = build(name, seed=1)(*inputs)
    assert torch.equal(ya, yb)
    assert not torch.allclose(ya, yc)


def test_gpt_decoder_is_causal():
    model = build("gpt_decoder")
    (ids,) = TRANSFORMER_ZOO["gpt_decoder"].example_inputs()
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        y, z = model(ids), model(changed)
    assert torch.allclose(y[:, :10], z[:, :10], atol=1e-6)
    assert not torch.allclose(y[:, 10:], z[:, 10:])


def test_bert_encoder_ignores_padding():
    model = build("bert_encoder")
    ids, mask = TRANSFORMER_ZOO["bert_encoder"].example_inputs()
    mask[1, 8:] = 0
    changed = ids.clone()
    changed[1, 8:] = (changed[1, 8:] + 1) % VOCAB
    with torch.no_grad():
        y, z = model(ids, mask), model(changed, mask)
    assert torch.allclose(y, z, atol=1e-5)


def test_unsupported_exporter_is_refused(tmp_path):
    for name, entry in TRANSFORMER_ZOO.items():
        for exporter in set(EXPORTERS) - set(entry.exporters):
            with pytest.raises(ValueError, match="does not work"):
                export_transformer(name, tmp_path / "m.onnx", exporter=exporter)
    with pytest.raises(KeyError):
        export_transformer("nope", tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_recorded_exporter_failures_still_fail(tmp_path):
    """The exporters the registry leaves out do fail; when one starts working, update it."""
    from frontends.torch import export

    for name, entry in TRANSFORMER_ZOO.items():
        for exporter in set(EXPORTERS) - set(entry.exporters):
            with pytest.raises(Exception, match="diff"):
                export(build(name), entry.example_inputs(), tmp_path / f"{name}.onnx",
                       exporter=exporter, input_names=entry.input_names)
