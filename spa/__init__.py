"""SPA: structurally prune anything. Coupled channel groups on ONNX graphs, scored and removed."""
from .api import Report, apply, prune
from .errors import SpaError
from .graph import Graph
from .groups import Analysis, Group, analyze

__all__ = ["Analysis", "Graph", "Group", "Report", "SpaError", "analyze", "apply", "prune"]
__version__ = "0.1.0"
