"""Encoders, fusion heads and the multimodal model.

Encoders and fusion heads are registered by name (:data:`ENCODERS`, :data:`HEADS`); every module
of this package is imported on the first look-up, so a new one is one file that registers itself.
"""

from .amco_head import AMCoHead
from .build import build_model, model_spec
from .checkpoint import load_model
from .encoders import ENCODERS, ClipEncoder, MLPEncoder, ResNetEncoder, build_encoder
from .framestack import FrameStackEncoder
from .fusion import (
    HEADS,
    ConcatFusion,
    CosineFusion,
    FiLMFusion,
    FusionHead,
    GatedFusion,
    HeadOutput,
    SumFusion,
    SymmetricFiLMFusion,
    SymmetricGatedFusion,
    build_head,
    register_head,
    shapley_split,
)
from .mmtm import MMTMModel
from .model import ModelOutput, MultimodalModel
from .sequence import GRUEncoder, LSTMEncoder, TemporalConvEncoder, TransformerSequenceEncoder
from .shared_head import SharedHead

__all__ = [
    "AMCoHead",
    "ENCODERS",
    "HEADS",
    "ClipEncoder",
    "ConcatFusion",
    "CosineFusion",
    "FiLMFusion",
    "FrameStackEncoder",
    "GRUEncoder",
    "FusionHead",
    "GatedFusion",
    "HeadOutput",
    "LSTMEncoder",
    "MLPEncoder",
    "MMTMModel",
    "ModelOutput",
    "MultimodalModel",
    "ResNetEncoder",
    "SharedHead",
    "SumFusion",
    "SymmetricFiLMFusion",
    "SymmetricGatedFusion",
    "TemporalConvEncoder",
    "TransformerSequenceEncoder",
    "build_encoder",
    "build_head",
    "build_model",
    "load_model",
    "model_spec",
    "register_head",
    "shapley_split",
]
