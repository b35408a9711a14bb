"""The Lightning engine: data module, LightningModule, callbacks, training and evaluation entry points."""

from .config import RunConfig, load_config
from .loading import LoadedRun, load_run
from .run import evaluate, train

__all__ = ["LoadedRun", "RunConfig", "evaluate", "load_config", "load_run", "train"]
