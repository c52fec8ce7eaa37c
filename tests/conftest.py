"""Shared fixtures: the torch zoo exported once per test session, with each exporter."""
from __future__ import annotations

import pytest


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
