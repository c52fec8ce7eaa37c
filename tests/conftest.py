"""Shared fixtures: the torch zoo exported once per test session, with each exporter."""
from __future__ import annotations

import pytest

from frontends.tensorflow import load_llvm_users_in_order

# Test modules import TensorFlow and torch in any order; triton (torch's) must load first.
load_llvm_users_in_order()


class _Exports:
    """Exports each (model, exporter, training) once per session, into a temporary directory."""

    def __init__(self, root):
        self.root = root
        self.cache: dict[tuple, str] = {}

    def get(self, name: str, exporter: str, training: bool = False, opset: int | None = None) -> str:
        from frontends.torch import export_zoo

        key = (name, exporter, training, opset)
        if key not in self.cache:
            d = self.root / f"{name}-{exporter}-{'train' if training else 'eval'}-{opset or 'default'}"
            d.mkdir()
            self.cache[key] = export_zoo(name, d / "model.onnx", exporter=exporter, training=training, opset=opset)
        return self.cache[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    return _Exports(tmp_path_factory.mktemp("torch_zoo"))


class _FrameworkExports:
    """Exports each zoo model of each framework once per session."""

    def __init__(self, root, torch_exports: _Exports):
        self.root = root
        self.torch = torch_exports
        self.cache: dict[tuple[str, str], str] = {}

    def get(self, framework: str, name: str) -> str:
        if framework == "torch":
            return self.torch.get(name, "dynamo")
        key = (framework, name)
        if key not in self.cache:
            path = self.root / f"{framework}-{name}.onnx"
            if framework == "tf":
                from frontends.tensorflow import export_keras
                from models_zoo.keras_models import KERAS_ZOO

                entry = KERAS_ZOO[name]
                self.cache[key] = export_keras(entry.build(), path, input_shape=entry.input_shape)
            else:
                from frontends.jax import export_flax
                from models_zoo.flax_models import FLAX_ZOO

                entry = FLAX_ZOO[name]
                self.cache[key] = export_flax(entry.build(), path, input_shape=entry.input_shape)
        return self.cache[key]


@pytest.fixture(scope="session")
def framework_exports(tmp_path_factory, exports):
    return _FrameworkExports(tmp_path_factory.mktemp("framework_zoo"), exports)


def zoo_cases() -> list:
    """(framework, model) for every zoo model of every installed framework; large models slow."""
    import importlib.util

    from models_zoo.torch_models import TORCH_ZOO

    cases = [pytest.param("torch", name, id=f"torch-{name}") for name in TORCH_ZOO]
    for framework, module, registry in (("tf", "models_zoo.keras_models", "KERAS_ZOO"),
                                        ("jax", "models_zoo.flax_models", "FLAX_ZOO")):
        if importlib.util.find_spec("tensorflow" if framework == "tf" else "flax") is None:
            cases.append(pytest.param(framework, "-", id=f"{framework}-missing",
                                      marks=pytest.mark.skip(reason=f"the {framework} extra is not installed")))
            continue
        zoo = getattr(importlib.import_module(module), registry)
        cases += [pytest.param(framework, name, id=f"{framework}-{name}",
                               marks=[pytest.mark.slow] if entry.large else []) for name, entry in zoo.items()]
    return cases
