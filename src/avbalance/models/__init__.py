"""Encoders, fusion heads and the multimodal model."""

from .build import build_model, model_spec
from .checkpoint import load_model
from .encoders import ClipEncoder, MLPEncoder, ResNetEncoder, build_encoder
from .fusion import (FUSIONS, ConcatFusion, CosineFusion, FiLMFusion, FusionHead, GatedFusion, HeadOutput,
                     SumFusion, SymmetricFiLMFusion, SymmetricGatedFusion, build_head, shapley_split)
from .amco_head import AMCoHead
from .mmtm import MMTMModel
from .model import ModelOutput, MultimodalModel
from .shared_head import SharedHead

__all__ = [
    "AMCoHead", "FUSIONS", "ClipEncoder", "MMTMModel", "SharedHead", "ConcatFusion", "CosineFusion", "FiLMFusion", "FusionHead", "GatedFusion",
    "HeadOutput", "MLPEncoder", "ModelOutput", "MultimodalModel", "ResNetEncoder", "SumFusion",
    "SymmetricFiLMFusion", "SymmetricGatedFusion", "build_encoder", "build_head", "build_model",
    "load_model", "model_spec", "shapley_split",
]
