"""The Lightning engine: data module, LightningModule, training and evaluation entry points."""

from .config import RunConfig, load_config
from .run import evaluate, train

__all__ = ["RunConfig", "evaluate", "load_config", "train"]
