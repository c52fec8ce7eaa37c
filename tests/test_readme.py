"""Every snippet the README shows for a framework runs as written, in a fresh process."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
NEEDS = {"tf": "tensorflow", "jax": "flax"}
EXTENDING = ["extend_rule", "extend_criterion", "extend_optimizer"]  # "Extending SPA"
PRINTS = {"torch": "parameters", "tf": "parameters", "jax": "parameters", "extend_rule": "Conv 'c2', prunable",
          "extend_criterion": "fpgm", "extend_optimizer": "magnitude: group sparsity 0.50"}


def snippets() -> dict[str, tuple[str, str]]:
    """name -> (language, code) for every block marked `<!-- snippet: NAME -->` in the README."""
    text = open(README).read()
    return {m.group(1): (m.group(2), m.group(3))
            for m in re.finditer(r"<!-- snippet: (\w+) -->\n```(\w+)\n(.*?)```", text, re.S)}


def test_every_framework_has_a_snippet():
    assert {"torch", "tf", "jax", "shell", "to_torch", *EXTENDING} <= set(snippets())


@pytest.mark.parametrize("name", ["torch", "tf", "jax", "shell", "to_torch", *EXTENDING])
def test_snippet_runs(name, tmp_path_factory):
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"the {name} extra is not installed")
    language, code = snippets()[name]
    folder = tmp_path_factory.getbasetemp() / "readme"  # shared: to_torch uses the torch snippet's file
    folder.mkdir(exist_ok=True)
    if name == "to_torch" and not (folder / "resnet18.onnx").exists():
        test_snippet_runs("torch", tmp_path_factory)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-ec", code]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    if name in PRINTS:
        assert PRINTS[name] in result.stdout, result.stdout[-2000:]
