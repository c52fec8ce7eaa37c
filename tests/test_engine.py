"""The engine's fast paths compute what the slow, obvious ones do: model sizes without serializing,
weights written in place, sessions fed their weights as arrays, components without scipy."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from spa.groups import connected_components
from spa.protos import model_bytes, model_like, write_array
from spa.runtime import random_inputs, run


def small_model(raw: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    weight = numpy_helper.from_array(w, "w") if raw else helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist())
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 64, 8, 8])],
                              [weight, numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.metadata_props.add(key="k", value="v" * 100)
    return model


@pytest.mark.parametrize("raw", [True, False])
def test_model_bytes_is_the_serialized_size_within_a_few_bytes_per_initializer(raw):
    model = small_model(raw)
    exact = len(model.SerializeToString())
    assert exact <= model_bytes(model) <= exact + 64 * len(model.graph.initializer)


@pytest.mark.parametrize("value", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([True, False]),
                                   np.int64(7), np.arange(5, dtype=np.uint16), np.arange(3, dtype=np.float16),
                                   np.arange(6, dtype=np.float64).reshape(2, 3).T, np.array(["a", "bc"])])
def test_write_array_stores_what_from_array_stores(value):
    tensor = TensorProto()
    write_array(tensor, "t", value)
    reference = numpy_helper.from_array(np.asarray(value), "t")
    assert (tensor.name, tensor.data_type, list(tensor.dims)) == (reference.name, reference.data_type, list(reference.dims))
    assert np.array_equal(numpy_helper.to_array(tensor), np.asarray(value))


def test_model_like_keeps_the_model_and_adds_arrays():
    model = small_model()
    new = model_like(model, model.graph.node, [t for t in model.graph.initializer if t.name != "b"],
                     {"b": np.zeros(64, np.float32)})
    onnx.checker.check_model(new)
    assert (new.producer_name, new.metadata_props[0].value, new.opset_import[0].version) == ("test", "v" * 100, 17)
    values = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert not values["b"].any() and np.array_equal(values["w"], numpy_helper.to_array(model.graph.initializer[0]))


def test_a_session_given_its_weights_apart_computes_what_the_whole_model_does():
    model = small_model()
    feeds = random_inputs(model, batch=2)
    whole = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(run(model, feeds)[0], whole.run(None, feeds)[0])


@pytest.mark.parametrize("nodes,edges", [(1, 0), (10, 4), (1000, 900), (30000, 5000)])
def test_connected_components_match_scipy(nodes, edges):
    rng = np.random.default_rng(nodes)
    src, dst = rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)
    if nodes > 1000:  # and a long chain, the slowest case for label propagation
        half = nodes // 2
        src, dst = np.concatenate([src, np.arange(half - 1)]), np.concatenate([dst, np.arange(1, half)])
    want = scipy_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(nodes, nodes)), directed=False)[1]
    np.testing.assert_array_equal(connected_components(src, dst, nodes), want)
