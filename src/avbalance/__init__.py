"""avbalance: balanced multimodal learning for PyTorch (OGM-GE, MMCosine and the methods they are
compared with)."""

from .errors import AvbalanceError
from .methods import Method, get_method
from .models import ModelOutput, MultimodalModel, load_model

__version__ = "0.1.0"
__all__ = ["AvbalanceError", "Method", "ModelOutput", "MultimodalModel", "get_method", "load_model"]
