"""spa.to_torch on the wild zoo and on the recurrent operators.

Every wild-zoo model converts and computes what onnxruntime computes on its data-shaped feeds;
write_back round-trips them. The LSTM, GRU and RNN converters match onnxruntime on tiny
hand-built graphs for every direction, layout and variant they accept, refuse the rest in one
line naming the node, and pass gradients. A gradient criterion (taylor) prunes the CRNN.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models_zoo.wild import WILD_ZOO, word_image
from spa.calib import load_calibration
from spa.errors import SpaError
from spa.gradients import gradient_source
from spa.graph import Graph
from spa.torch_bridge import TorchConversionError, to_torch, write_back

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    root = tmp_path_factory.mktemp("wild_torch")
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = WILD_ZOO[name].write(root / f"{name}.onnx")
        return cache[name]

    return get


def ort_run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # initializers listed as inputs warn
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def torch_run(converted, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = converted.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in converted.input_names])
    return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]


def relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The worst output's max |got - want| over its max |want|."""
    assert len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = max(np.abs(w).max(initial=0.0), 1e-12)
        worst = max(worst, float(np.abs(g.astype(np.float64) - w).max(initial=0.0) / scale))
    return worst


# ---------------------------------------------------------------------------------------------
# The wild zoo
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WILD_ZOO))
def test_wild_model_converts_and_matches_onnxruntime(wild, name):
    path = wild(name)
    graph = Graph.load(path)
    converted = to_torch(graph.model)
    feeds = WILD_ZOO[name].feeds()
    assert converted.input_names == list(feeds)
    assert relative_error(torch_run(converted, feeds), ort_run(path, feeds)) < TOLERANCE, name
    # Every weight SPA sees (initializers and Constant-node weights; Identity copies read their
    # source) is one torch tensor under its own ONNX name.
    weights = {n for n in graph.params() if n not in graph.copies and graph.value(n).dtype == np.float32
               and graph.value(n).size > 1 and graph.tensors[n].consumers}
    assert weights <= converted.param_map.keys(), sorted(weights - converted.param_map.keys())[:5]


@pytest.mark.parametrize("name", ["paddle_crnn", "speech_gru", "resnet_ts11"])
def test_wild_model_write_back_round_trips(wild, name):
    """to_torch -> write_back gives the same outputs; after changing every parameter, the written
    model computes what the changed torch module computes."""
    path = wild(name)
    model = Graph.load(path).model
    feeds = WILD_ZOO[name].feeds()
    converted = to_torch(model)
    assert relative_error(ort_run(write_back(model, converted), feeds), ort_run(path, feeds)) < TOLERANCE

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for ref_name, ref in converted.param_map.items():
            if ref.trainable:
                tensor = converted.torch_tensor(ref_name)
                tensor.mul_(1 + 0.1 * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
    changed = write_back(model, converted)
    want = torch_run(converted, feeds)
    assert relative_error(ort_run(path, feeds), want) > 1e-3, "the change shows in the outputs"
    assert relative_error(ort_run(changed, feeds), want) < TOLERANCE
    if name == "paddle_crnn":  # Constant-node weights come back as initializers of their names
        constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
        constant_weights = constants & converted.param_map.keys()
        assert constant_weights and constant_weights <= {t.name for t in changed.graph.initializer}


def test_gradients_reach_every_recurrent_weight_of_the_crnn(wild):
    """The gradient criteria's source: each LSTM's W, R and B get non-zero gradients."""
    graph = Graph.load(wild("paddle_crnn"))
    images = np.concatenate([word_image(w, seed=i) for i, w in enumerate(["spa", "prune7"])])
    source = gradient_source(graph, load_calibration({"x": images}, graph.model), pseudo_labels=True, batch_size=1)
    grads = source.mean_gradient()
    lstm_weights = [n for node in graph.model.graph.node if node.op_type == "LSTM" for n in node.input[1:4]]
    assert len(lstm_weights) == 6
    for name in lstm_weights:
        assert np.isfinite(grads[name]).all() and np.abs(grads[name]).max() > 0, name


def test_names_onnx2torch_mishandles():
    """Node names that repeat (after onnx2torch's own numbering), equal a graph input read later,
    are torch module attributes or hold quotes; a Constant-node weight read through an Identity
    chain, with dots, slashes and colons in its name."""
    weight = np.random.default_rng(0).standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["conv2d_0.w_0"], name="p2o.Constant.0",
                         value=numpy_helper.from_array(weight)),
        helper.make_node("Identity", ["conv2d_0.w_0"], ["conv2d_0.w_0/identity:0"], name="forward"),
        helper.make_node("Identity", ["conv2d_0.w_0/identity:0"], ["conv2d_0.w_0/identity:1"], name="x"),
        helper.make_node("Conv", ["x", "conv2d_0.w_0/identity:1"], ["conv2d_0.tmp_0"], name='say "conv"'),
        helper.make_node("Relu", ["conv2d_0.tmp_0"], ["relu_0.tmp_0"], name=""),
        helper.make_node("Relu", ["relu_0.tmp_0"], ["relu_1.tmp_0"], name=""),
        helper.make_node("Add", ["relu_1.tmp_0", "x"], ["sum"], name="Relu_1"),
        helper.make_node("Mul", ["sum", "x"], ["y"], name="training"),
    ]
    graph = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    converted = to_torch(model)
    assert relative_error(torch_run(converted, feeds), ort_run(model, feeds)) < TOLERANCE
    assert set(converted.param_map) == {"conv2d_0.w_0"}
    converted.onnx_tensor("conv2d_0.w_0").detach().mul_(2.0)
    written = write_back(model, converted)
    assert {n.name for n in written.graph.node} <= {n.name for n in nodes}, "write_back keeps the node names"
    assert relative_error(ort_run(written, feeds), torch_run(converted, feeds)) < TOLERANCE


# ---------------------------------------------------------------------------------------------
# Recurrent operators on hand-built graphs
# ---------------------------------------------------------------------------------------------

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op_type: str, direction: str = "forward", layout: int = 0, bias: bool = True,
                    states: bool = True, peepholes: bool = False, sequence_lens: bool = False,
                    outputs: tuple[str, ...] | None = None, opset: int = 14, seed: int = 0, **attributes):
    """One recurrent node over x, its weights as initializers; returns (model, feeds)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op_type]
    values = {"W": rng.uniform(-0.6, 0.6, (dirs, gates * HIDDEN, INPUT)),
              "R": rng.uniform(-0.6, 0.6, (dirs, gates * HIDDEN, HIDDEN))}
    inputs = ["x", "W", "R", "B" if bias else ""]
    if bias:
        values["B"] = rng.uniform(-0.3, 0.3, (dirs, 2 * gates * HIDDEN))
    state_shape = (BATCH, dirs, HIDDEN) if layout else (dirs, BATCH, HIDDEN)
    feeds = {"x": rng.standard_normal((BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT))}
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(feeds["x"].shape))]
    inputs.append("lens" if sequence_lens else "")
    if sequence_lens:
        feeds["lens"] = np.array([SEQ, 2, 4], np.int32)
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [BATCH]))
    state_names = ["h0", "c0"][: 2 if op_type == "LSTM" else 1]
    for state in state_names:
        inputs.append(state if states else "")
        if states:
            feeds[state] = rng.uniform(-0.8, 0.8, state_shape)
            graph_inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, list(state_shape)))
    if peepholes:
        inputs.append("P")
        values["P"] = rng.uniform(-0.5, 0.5, (dirs, 3 * HIDDEN))
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = outputs or (("Y", "Y_h", "Y_c") if op_type == "LSTM" else ("Y", "Y_h"))
    y_shape = [BATCH, SEQ, dirs, HIDDEN] if layout else [SEQ, dirs, BATCH, HIDDEN]
    shapes = {"Y": y_shape, "Y_h": list(state_shape), "Y_c": list(state_shape)}
    node = helper.make_node(op_type, inputs, list(outputs), name=f"my_{op_type.lower()}", hidden_size=HIDDEN,
                            direction=direction, **({"layout": layout} if layout else {}), **attributes)
    graph = helper.make_graph(
        [node], "recurrent", graph_inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs if o],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model, {k: v.astype(np.int32 if k == "lens" else np.float32) for k, v in feeds.items()}


def batch_first_reference(model, feeds) -> list[np.ndarray]:
    """onnxruntime refuses layout 1 (batch first): run the node at layout 0 on transposed inputs
    and transpose its outputs back, which is what the ONNX definition of layout 1 says."""
    node = model.graph.node[0]
    time_first = onnx.ModelProto()
    time_first.CopyFrom(model)
    attributes = [a for a in node.attribute if a.name != "layout"]
    del time_first.graph.node[0].attribute[:]
    time_first.graph.node[0].attribute.extend(attributes)
    for value in (*time_first.graph.input, *time_first.graph.output):
        value.type.tensor_type.ClearField("shape")
    swapped = {k: (v if k == "lens" else v.transpose(1, 0, 2)) for k, v in feeds.items()}
    results = ort_run(time_first, swapped)
    outputs = [o for o in node.output if o]
    return [r.transpose(2, 0, 1, 3) if name == node.output[0] else r.transpose(1, 0, 2)
            for name, r in zip(outputs, results)]


def assert_matches_onnxruntime(model, feeds):
    converted = to_torch(model)
    assert converted.input_names == list(feeds)
    layout = {a.name: a.i for a in model.graph.node[0].attribute}.get("layout", 0)
    want = batch_first_reference(model, feeds) if layout else ort_run(model, feeds)
    assert relative_error(torch_run(converted, feeds), want) < TOLERANCE
    assert all(np.abs(w).max() > 1e-2 for w in want)
    return converted


DIRECTIONS = ["forward", "reverse", "bidirectional"]


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("full", [True, False], ids=["bias-states-peepholes", "bare"])
def test_lstm_matches_onnxruntime(direction, layout, full):
    model, feeds = recurrent_model("LSTM", direction, layout, bias=full, states=full, peepholes=full)
    converted = assert_matches_onnxruntime(model, feeds)
    assert {"W", "R"} <= converted.param_map.keys()


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_matches_onnxruntime(direction, layout, linear_before_reset):
    model, feeds = recurrent_model("GRU", direction, layout, states=bool(layout),
                                   linear_before_reset=linear_before_reset)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("activation", ["Tanh", "Relu"])
def test_rnn_matches_onnxruntime(direction, layout, activation):
    dirs = 2 if direction == "bidirectional" else 1
    model, feeds = recurrent_model("RNN", direction, layout, states=not layout, activations=[activation] * dirs)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize("op_type", list(GATES))
@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_lengths(op_type, layout):
    """Steps past a sequence's length give zeros and leave its state; reverse starts at its end."""
    model, feeds = recurrent_model(op_type, "bidirectional", layout, sequence_lens=True)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize("op_type", list(GATES))
def test_clip(op_type):
    model, feeds = recurrent_model(op_type, "bidirectional", clip=0.5)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize("opset", [7, 14, 22])
def test_every_version_and_some_outputs(opset):
    """Only Y_h asked for (Y left empty), at each version of the schema."""
    model, feeds = recurrent_model("LSTM", "reverse", outputs=("", "Y_h"), opset=opset)
    assert_matches_onnxruntime(model, feeds)
    model, feeds = recurrent_model("GRU", "forward", outputs=("Y",), opset=opset, linear_before_reset=1)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize("op_type, attributes, reason", [
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"]}, "activation HardSigmoid"),
    ("GRU", {"activation_alpha": [0.5]}, "activation_alpha"),
    ("LSTM", {"input_forget": 1}, "input_forget=1"),
])
def test_unsupported_variants_are_refused_in_one_line(op_type, attributes, reason):
    model, _ = recurrent_model(op_type, **attributes)
    expected = rf"{op_type} \(version 14, opset 14\) node 'my_{op_type.lower()}'.*{reason}"
    with pytest.raises(TorchConversionError, match=expected) as error:
        to_torch(model)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("op_type", list(GATES))
@pytest.mark.parametrize("layout", [0, 1])
def test_gradients_flow_through_recurrent_operators(op_type, layout):
    """torch.nn's LSTM, GRU and RNN exported to ONNX and converted back: the input gradient
    equals torch's own, and every weight, bias and initial state gets a finite, non-zero gradient."""
    torch.manual_seed(0)
    layer = getattr(torch.nn, op_type)(INPUT, HIDDEN, num_layers=1, bidirectional=True, batch_first=bool(layout))
    x = torch.randn((BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT))
    h0 = torch.randn(2, BATCH, HIDDEN) * 0.5
    state = (h0, torch.randn(2, BATCH, HIDDEN) * 0.5) if op_type == "LSTM" else h0
    model = torch_export(layer, x, state)
    converted = to_torch(model)

    x_ours = x.clone().requires_grad_(True)
    states = (state if op_type == "LSTM" else (state,))
    outputs = converted.module(x_ours, *states)
    loss = sum(o.pow(2).sum() for o in (outputs if isinstance(outputs, tuple) else (outputs,)))
    loss.backward()
    x_torch = x.clone().requires_grad_(True)
    y, final = layer(x_torch, state)
    (y.pow(2).sum() + sum(s.pow(2).sum() for s in (final if op_type == "LSTM" else (final,)))).backward()
    np.testing.assert_allclose(x_ours.grad.numpy(), x_torch.grad.numpy(), rtol=1e-4, atol=1e-5)

    recurrent_weights = [n for node in model.graph.node if node.op_type == op_type for n in node.input[1:4]]
    assert len(recurrent_weights) == 3
    for name in recurrent_weights:
        grad = converted.onnx_grad(name)
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0, name


def torch_export(layer, x, state) -> onnx.ModelProto:
    import io
    import warnings

    buffer = io.BytesIO()
    states = state if isinstance(state, tuple) else (state,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer.eval(), (x, state), buffer, dynamo=False, opset_version=14,
                          input_names=["x"] + [f"s{i}" for i in range(len(states))])
    return onnx.load_from_string(buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# A criterion that needs gradients
# ---------------------------------------------------------------------------------------------

def test_unconvertible_model_gives_a_one_line_gradient_error():
    model, _ = recurrent_model("LSTM", activations=["HardSigmoid", "Tanh", "Tanh"])
    graph = Graph.load(model)
    expected = r"gradients need the model in PyTorch, and cannot convert LSTM .* node 'my_lstm'"
    with pytest.raises(SpaError, match=expected) as error:
        gradient_source(graph, calibration=None)  # the conversion fails before any data is read
    assert "\n" not in str(error.value)


def test_taylor_prunes_the_crnn_from_the_command_line(wild, tmp_path):
    path = wild("crnn")
    words = ["spa2024", "hello", "prune7", "abc123"]
    images = np.concatenate([word_image(w, seed=i) for i, w in enumerate(words)])
    probabilities = np.concatenate([ort_run(path, {"input": image[None]})[0] for image in images])
    # The loss is the cross-entropy over axis 1 of the first output: labels of shape (N, classes).
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=images, labels=probabilities.argmax(axis=1))
    out = tmp_path / "pruned.onnx"
    result = subprocess.run([sys.executable, "-m", "spa.cli", "prune", path, "-o", out, "--criterion", "taylor",
                             "--calib", calib, "--ratio", "0.3", "--no-latency", "--calib-batch", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    feeds = WILD_ZOO["crnn"].feeds()
    assert [o.shape for o in ort_run(out, feeds)] == [o.shape for o in ort_run(path, feeds)]
    assert onnx.load(out).ByteSize() < onnx.load(path).ByteSize()
