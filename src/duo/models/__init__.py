"""DiT backbone with the published Duo / MDLM checkpoint layout."""

from duo.models.attention import flash_attn_available
from duo.models.config import MODEL_PRESETS, ModelConfig, get_model_config
from duo.models.dit import DiT, ModelInput, build_model
from duo.models.layers import timestep_embedding
from duo.models.utils import compile_backbone, count_parameters, flops_per_token, strip_prefix

__all__ = [
    "MODEL_PRESETS",
    "DiT",
    "ModelConfig",
    "ModelInput",
    "build_model",
    "compile_backbone",
    "count_parameters",
    "flash_attn_available",
    "flops_per_token",
    "get_model_config",
    "strip_prefix",
    "timestep_embedding",
]
