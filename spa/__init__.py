"""SPA: structurally prune anything. Coupled channel groups on ONNX graphs, scored and removed."""
from .api import Report, apply, prune
from .erase import EraseReport, erase  # the function; the package stays importable as spa.erase.*
from .errors import SpaError
from .finetune import FinetuneReport, finetune  # the function; torch is imported when it runs
from .graph import Graph
from .groups import Analysis, Group, analyze
from .io import save_model as save

__all__ = ["Analysis", "EraseReport", "FinetuneReport", "Graph", "Group", "Report", "SpaError", "analyze", "apply", "erase", "finetune", "prune", "save", "to_torch", "write_back"]
__version__ = "0.1.0"


def __getattr__(name):
    """`spa.to_torch` and `spa.write_back` import torch (seconds) only when first used."""
    if name in ("to_torch", "write_back"):
        from . import torch_bridge

        return getattr(torch_bridge, name)
    raise AttributeError(f"module 'spa' has no attribute {name!r}")
