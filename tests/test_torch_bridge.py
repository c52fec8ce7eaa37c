"""ONNX -> torch -> ONNX: outputs, gradients in ONNX layout, write-back after training."""
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, defs, helper, numpy_helper
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, get_converter
from torch import nn

from spa.torch_bridge import _TYPE_ONLY_VERSIONS, TorchConversionError, to_torch, write_back

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        batch, tokens, dim = x.shape
        y = self.norm1(x)
        q, k, v = (
            layer(y).reshape(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)
            for layer in (self.q, self.k, self.v)
        )
        attention = torch.softmax(q @ k.transpose(-1, -2) / (dim // self.heads) ** 0.5, dim=-1)
        x = x + self.out((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


def inverted_residual(inputs, outputs, expansion, stride=1):
    hidden = inputs * expansion
    return nn.Sequential(
        nn.Conv2d(inputs, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs),
    )


class TinyMobileNetV2(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block1 = inverted_residual(8, 8, 2)
        self.block2 = inverted_residual(8, 16, 2, stride=2)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block1(x)
        return self.head(self.block2(x).mean((2, 3)))


def randomize_batchnorms(model):
    """Non-trivial folded BatchNorm values, so that the exported weights are not the init ones."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model


def export(model, example, dynamo):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=dynamo, opset_version=20)
    return onnx.load_from_string(buffer.getvalue())


EXPORTED = {
    "resnet18": (lambda: randomize_batchnorms(torchvision.models.resnet18(num_classes=10)), (2, 3, 32, 32)),
    "mobilenet": (lambda: randomize_batchnorms(TinyMobileNetV2()), (2, 3, 32, 32)),
    "transformer": (TransformerBlock, (2, 5, 32)),
}


def make_model(nodes, inputs, outputs, initializers, opset=23, check=True):
    tensors = [numpy_helper.from_array(value, name) for name, value in initializers.items()]
    graph = helper.make_graph(nodes, "test", inputs, outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(0)
    torch.manual_seed(0)


def floats(*shape):
    return np.random.standard_normal(shape).astype(np.float32)


def ints(*values):
    return np.array(values, dtype=np.int64)


def tensor_info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def opset23_model():
    """One graph with the operator versions onnx2torch lacks, at opset 23."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),  # Conv 22
        helper.make_node("GroupNormalization", ["conv", "gn_scale", "gn_bias"], ["gn"], num_groups=2),  # 21
        helper.make_node("Pad", ["gn", "pads", "", "pad_axes"], ["padded"]),  # Pad 23 with axes
        helper.make_node("AveragePool", ["padded"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),  # 22
        helper.make_node("Split", ["pooled"], ["half1", "half2"], axis=1, num_outputs=2),  # 18
        helper.make_node("Gelu", ["half1"], ["gelu"]),  # 20
        helper.make_node("Add", ["gelu", "half2"], ["summed"]),
        helper.make_node("ReduceMean", ["summed", "mean_axes"], ["mean"], keepdims=0),  # 18, axes input
        helper.make_node("Unsqueeze", ["mean", "one"], ["unsqueezed"]),  # 23
        helper.make_node("Squeeze", ["unsqueezed", "one"], ["squeezed"]),  # 23
        helper.make_node("Transpose", ["squeezed"], ["transposed"], perm=[0, 2, 1]),  # 23
        helper.make_node("Flatten", ["transposed"], ["flat"]),  # 23
        helper.make_node("Identity", ["flat"], ["same"]),  # 23
        helper.make_node("Gemm", ["same", "gemm_w", "gemm_b"], ["gemm"]),  # transB=0
        helper.make_node("LayerNormalization", ["gemm", "ln_scale"], ["normalized"]),  # no bias
        helper.make_node("MatMul", ["normalized", "matmul_w"], ["matmul"]),
        helper.make_node("Add", ["matmul", "matmul_b"], ["biased"]),
        helper.make_node("Reshape", ["biased", "shape"], ["reshaped"], allowzero=1),  # 23
        helper.make_node("Cast", ["reshaped"], ["y"], to=TensorProto.FLOAT),  # 23
        helper.make_node("ReduceMax", ["y", "max_axes"], ["y_max"]),  # 20, axes input
    ]
    initializers = {
        "conv_w": floats(8, 4, 3, 3), "conv_b": floats(8),
        "gn_scale": floats(8), "gn_bias": floats(8),
        "pads": ints(1, 1), "pad_axes": ints(3), "mean_axes": ints(2), "one": ints(1),
        "gemm_w": floats(16, 8), "gemm_b": floats(8), "ln_scale": floats(8),
        "matmul_w": floats(8, 5), "matmul_b": floats(5),
        "shape": ints(2, 5), "max_axes": ints(1),
    }
    outputs = [tensor_info("y", [2, 5]), tensor_info("y_max", [2, 1])]
    return make_model(nodes, [tensor_info("x", [2, 4, 6, 6])], outputs, initializers)


def batchnorm_model():
    """Conv -> unfused BatchNormalization -> ReLU -> pool -> Gemm with transB=0 (opset 20)."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"]),
    ]
    initializers = {
        "conv_w": floats(6, 3, 3, 3), "bn_scale": floats(6), "bn_bias": floats(6),
        "bn_mean": floats(6), "bn_var": np.abs(floats(6)) + 0.5, "fc_w": floats(6, 4), "fc_b": floats(4),
    }
    return make_model(nodes, [tensor_info("x", [4, 3, 8, 8])], [tensor_info("y", [4, 4])], initializers, opset=20)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def run_onnx(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def run_torch(converted, inputs):
    with torch.no_grad():
        outputs = converted.module(*(torch.from_numpy(x) for x in inputs))
    return [o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]


def assert_close_to_scale(actual, expected, rtol):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        assert np.abs(a - e).max() <= rtol * max(np.abs(e).max(), 1e-6)


def float_initializers(model):
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer if init.data_type in FLOAT_TYPES}


def train_steps(converted, inputs, steps=2, lr=1e-3):
    """A few SGD steps on the sum of the outputs (in train mode); returns after the last backward."""
    module = converted.module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        outputs = module(*(torch.from_numpy(x) for x in inputs))
        loss = sum(o.float().pow(2).mean() for o in (outputs if isinstance(outputs, tuple) else (outputs,)))
        loss.backward()
        optimizer.step()
    module.eval()


def check_round_trip(model, inputs):
    """Outputs match onnxruntime; a few training steps change every parameter through its
    gradient; write_back gives an ONNX model that computes what the trained module computes."""
    converted = to_torch(model)
    assert_close_to_scale(run_torch(converted, inputs), run_onnx(model, inputs), rtol=1e-4)

    initial = float_initializers(write_back(model, converted))  # the model as prepared for torch
    assert float_initializers(model).keys() <= initial.keys()
    assert converted.param_map.keys() | converted.constants == initial.keys()
    for name, ref in converted.param_map.items():
        np.testing.assert_array_equal(converted.onnx_tensor(name).detach().numpy(), initial[name])

    train_steps(converted, inputs)
    changed = 0
    for name, ref in converted.param_map.items():
        if ref.trainable:
            assert converted.torch_tensor(name).grad is not None, name
        changed += not np.array_equal(converted.onnx_tensor(name).detach().numpy(), initial[name])
        assert converted.onnx_grad(name).shape == initial[name].shape
    assert changed > sum(ref.trainable for ref in converted.param_map.values()) / 2

    trained = write_back(model, converted)
    assert_close_to_scale(run_onnx(trained, inputs), run_torch(converted, inputs), rtol=1e-5)
    return converted


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", EXPORTED)
def test_exported_model_round_trip(name, dynamo):
    make, input_shape = EXPORTED[name]
    model = export(make(), torch.randn(input_shape), dynamo)
    converted = check_round_trip(model, [floats(*input_shape)])
    # Only ReLU6 bounds (Clip min/max) are read as plain numbers by onnx2torch
    clip_bounds = {value for node in model.graph.node if node.op_type == "Clip" for value in node.input[1:]}
    assert converted.constants <= clip_bounds


def test_opset23_operator_versions():
    model = opset23_model()
    converted = check_round_trip(model, [floats(2, 4, 6, 6)])
    assert converted.param_map["gemm_w"].layout.transposed
    assert not converted.param_map["matmul_w"].layout.transposed
    assert converted.param_map["matmul_w"].torch_name.startswith("initializers.")  # was a buffer


@pytest.mark.parametrize("opset, affine_size", [(18, 2), (21, 6)])
def test_group_normalization(opset, affine_size):
    """Version 18 has one scale and bias per group, version 21 one per channel."""
    nodes = [helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2)]
    initializers = {"scale": floats(affine_size), "bias": floats(affine_size)}
    inputs, outputs = [tensor_info("x", [2, 6, 3, 3])], [tensor_info("y", [2, 6, 3, 3])]
    # onnx's checker calls version 18 deprecated (replaced by 21); exporters and onnxruntime still use it
    model = make_model(nodes, inputs, outputs, initializers, opset, check=opset >= 21)
    check_round_trip(model, [floats(2, 6, 3, 3)])


def test_new_attribute_values_are_refused_not_ignored():
    nodes = [
        helper.make_node(
            "Resize", ["x", "", "scales"], ["y"], name="resize", mode="linear",
            coordinate_transformation_mode="half_pixel_symmetric",
        )
    ]
    initializers = {"scales": np.array([1, 1, 2, 2], np.float32)}
    model = make_model(nodes, [tensor_info("x", [1, 2, 3, 3])], [tensor_info("y", [1, 2, 6, 6])], initializers)
    with pytest.raises(TorchConversionError, match="Resize .* node 'resize'.*half_pixel_symmetric"):
        to_torch(model)


def test_batchnorm_running_statistics_are_written_back():
    model = batchnorm_model()
    converted = check_round_trip(model, [floats(4, 3, 8, 8)])
    for name in ("bn_mean", "bn_var"):
        assert not converted.param_map[name].trainable
        assert not np.array_equal(converted.onnx_tensor(name).numpy(), float_initializers(model)[name])
        assert not converted.onnx_grad(name).any()
    assert converted.param_map["fc_w"].layout.transposed


def test_pow_exponent_and_epsilon_stay_fixed():
    """RMS norm as torch.onnx.export writes it: a trainable exponent would get NaN gradients, and
    a trained epsilon can turn negative; the weight trains."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["square"]),
        helper.make_node("ReduceMean", ["square", "last_axis"], ["mean"]),
        helper.make_node("Add", ["mean", "eps"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["rms"]),
        helper.make_node("Div", ["x", "rms"], ["normalized"]),
        helper.make_node("Mul", ["normalized", "w"], ["y"]),
    ]
    initializers = {
        "two": np.array(2.0, np.float32), "last_axis": ints(-1), "eps": np.array(1e-6, np.float32), "w": floats(8),
    }
    model = make_model(nodes, [tensor_info("x", [3, 8])], [tensor_info("y", [3, 8])], initializers, opset=20)
    converted = check_round_trip(model, [floats(3, 8)])
    assert not converted.param_map["two"].trainable
    assert not converted.param_map["eps"].trainable
    assert converted.param_map["w"].trainable


def test_batchnorm_initializers_merged_by_the_exporter():
    """As torch.onnx.export writes fresh BatchNorms: scale and var are one initializer (ones),
    bias and mean another (zeros), shared by two BatchNorms. The statistics get their own copies;
    the scales stay one parameter."""
    bn_inputs = ["ones", "zeros", "zeros", "ones"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", *bn_inputs], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", *bn_inputs], ["y"]),
    ]
    initializers = {"w1": floats(4, 3, 3, 3), "w2": floats(4, 4, 1, 1), "ones": np.ones(4, np.float32),
                    "zeros": np.zeros(4, np.float32)}
    model = make_model(nodes, [tensor_info("x", [2, 3, 5, 5])], [tensor_info("y", [2, 4, 5, 5])], initializers, 20)
    converted = check_round_trip(model, [floats(2, 3, 5, 5)])
    assert converted.param_map["ones"].trainable and converted.param_map["zeros"].trainable
    statistics = {name for name, ref in converted.param_map.items() if not ref.trainable}
    assert statistics == {f"{bn}.{role}" for bn in ("b1", "y") for role in ("running_mean", "running_var")}


def test_layer_norm_over_dimensions_shape_inference_leaves_unknown():
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=1)]
    initializers = {"scale": floats(5, 8), "bias": floats(5, 8)}
    inputs, outputs = [tensor_info("x", ["batch", "tokens", 8])], [tensor_info("y", ["batch", "tokens", 8])]
    check_round_trip(make_model(nodes, inputs, outputs, initializers), [floats(2, 5, 8)])


def test_gemm_layouts_and_gradients():
    """Gemm with transB=0 and alpha, beta: onnx_tensor and onnx_grad are in the ONNX layout."""
    x, weight, bias = floats(3, 4), floats(4, 5), floats(5)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0)]
    model = make_model(nodes, [tensor_info("x", [3, 4])], [tensor_info("y", [3, 5])], {"w": weight, "b": bias})
    converted = to_torch(model)
    assert converted.param_map["w"].layout.transposed and converted.param_map["w"].layout.scale == 0.5

    converted.module(torch.from_numpy(x)).pow(2).sum().backward()
    reference_w, reference_b = torch.tensor(weight, requires_grad=True), torch.tensor(bias, requires_grad=True)
    (0.5 * torch.from_numpy(x) @ reference_w + 2.0 * reference_b).pow(2).sum().backward()
    np.testing.assert_allclose(converted.onnx_tensor("w").detach().numpy(), weight, rtol=1e-6)
    assert_close_to_scale([converted.onnx_grad("w")], [reference_w.grad.numpy()], rtol=1e-5)
    assert_close_to_scale([converted.onnx_grad("b")], [reference_b.grad.numpy()], rtol=1e-5)
    check_round_trip(model, [x])


def test_onnx_tensor_is_a_view_of_the_parameter():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"])]  # transB=0: the torch weight is w.T
    model = make_model(nodes, [tensor_info("x", [3, 4])], [tensor_info("y", [3, 5])], {"w": floats(4, 5)})
    converted = to_torch(model)
    with torch.no_grad():
        converted.onnx_tensor("w")[1, :] = 0.0
    assert not converted.torch_tensor("w")[:, 1].any()


def test_shared_initializer_is_one_parameter():
    """A weight used by MatMul, Gemm (transB=1) and a second MatMul, and a bias used twice."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Gemm", ["a", "w", "b"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    initializers = {"w": floats(6, 6), "b": floats(6)}
    model = make_model(nodes, [tensor_info("x", [3, 6])], [tensor_info("y", [3, 6])], initializers)
    converted = check_round_trip(model, [floats(3, 6)])
    assert len(list(converted.module.parameters())) == 2


def test_initializer_shared_in_two_layouts_is_refused():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"]), helper.make_node("MatMul", ["g", "w"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [3, 6])], [tensor_info("y", [3, 6])], {"w": floats(6, 6)})
    with pytest.raises(TorchConversionError, match="'w' is used in different layouts"):
        to_torch(model)


def test_write_back_from_a_bare_module():
    model = opset23_model()
    converted = to_torch(model)
    inputs = [floats(2, 4, 6, 6)]
    train_steps(converted, inputs)
    trained = write_back(model, converted.module)
    assert_close_to_scale(run_onnx(trained, inputs), run_torch(converted, inputs), rtol=1e-5)


def test_unconvertible_node_names_operator_version_and_node():
    nodes = [helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax")]
    model = make_model(nodes, [tensor_info("x", [3, 6])], [tensor_info("y", [3, 6])], {}, opset=20)
    with pytest.raises(TorchConversionError, match=r"Hardmax \(version 13, opset 20\) node 'my_hardmax'"):
        to_torch(model)


def test_failing_converter_names_the_node():
    """onnx2torch needs Conv weights to be initializers."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_from_input")]
    inputs = [tensor_info("x", [1, 2, 4, 4]), tensor_info("w", [3, 2, 1, 1])]
    model = make_model(nodes, inputs, [tensor_info("y", [1, 3, 4, 4])], {}, opset=20)
    with pytest.raises(TorchConversionError, match=r"Conv \(version 11, opset 20\) node 'conv_from_input'") as error:
        to_torch(model)
    assert "\n" not in str(error.value)


def _signature(schema):
    attributes = {name: (attr.type, attr.default_value.SerializeToString()) for name, attr in schema.attributes.items()}
    inputs = [(value.name, value.option) for value in schema.inputs]
    outputs = [(value.name, value.option) for value in schema.outputs]
    return attributes, inputs, outputs


# Type-only versions that still added an attribute, which only matters for types torch lacks
ADDED_ATTRIBUTE_FOR_TYPES_ONLY = {("Cast", 19), ("Cast", 24), ("Range", 27)}


def test_type_only_versions_keep_the_signature():
    for op_type, versions in _TYPE_ONLY_VERSIONS.items():
        for version in versions:
            if (op_type, version) in ADDED_ATTRIBUTE_FOR_TYPES_ONLY:
                continue
            previous = defs.get_schema(op_type, version - 1)
            assert _signature(defs.get_schema(op_type, version)) == _signature(previous), (op_type, version)


def test_every_later_version_of_a_supported_operator_has_a_converter():
    first_supported = {}
    for description in _CONVERTER_REGISTRY:
        if description.domain == "":
            op_type = description.operation_type
            first_supported[op_type] = min(first_supported.get(op_type, description.version), description.version)
    missing = []
    for schema in defs.get_all_schemas_with_history():
        first = first_supported.get(schema.name)
        if schema.domain == "" and first is not None and schema.since_version > first:
            try:
                get_converter(operation_type=schema.name, version=schema.since_version)
            except NotImplementedError:
                missing.append((schema.name, schema.since_version))
    assert missing == []
