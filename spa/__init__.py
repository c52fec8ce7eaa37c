"""SPA: structurally prune anything. Coupled channel groups on ONNX graphs, scored and removed."""
from .api import Report, apply, prune
from .errors import SpaError
from .graph import Graph
from .groups import Analysis, Group, analyze
from .io import save_model as save

__all__ = ["Analysis", "Graph", "Group", "Report", "SpaError", "analyze", "apply", "prune", "save"]
__version__ = "0.1.0"
