"""Samplers: ancestral, greedy tail, nucleus / top-k, Psi (ReMDM), MDLM, D3PM, SEDD, AR;
semi-autoregressive windows past the context.

Every diffusion sampler follows one contract (a time grid, ``step(...) ->
StepOutput``) and runs in the one loop :func:`generate`; they see a denoiser callable,
never a model. See MATH.md sections 1, 7 and 8.
"""

from .ancestral import TAILS, AncestralSampler, reverse_step, step_probs
from .ar import ARSampler, generate_ar
from .base import Conditioning, Denoiser, GenerationOutput, Sampler, StepOutput
from .filters import Thresholds, filter_probs, row_thresholds, top_k_filter, top_p_filter
from .grid import PHASES, StepTime, TimeGrid, time_grid
from .loop import generate
from .mixture import Mixture, inverse_cdf
from .psi import KAPPA_RULES, KappaRule, PsiSampler
from .registry import SAMPLERS, SamplerSpec, check_fits, get_sampler, samplers_for
from .config import SamplingConfig
from .d3pm import D3pmSampler
from .sedd import SeddSampler
from .semi_ar import SemiArOutput, check_semi_ar, semi_autoregressive
from .processes import PROCESSES, AbsorbingProcess, UniformProcess, get_process
from .workspace import Workspace

__all__ = [
    "KAPPA_RULES", "PHASES", "PROCESSES", "SAMPLERS", "TAILS",
    "D3pmSampler", "SeddSampler", "SemiArOutput", "check_semi_ar", "semi_autoregressive",
    "ARSampler", "AbsorbingProcess", "AncestralSampler", "Conditioning", "Denoiser",
    "GenerationOutput", "KappaRule", "SamplerSpec", "SamplingConfig", "check_fits", "samplers_for", "Mixture", "PsiSampler", "Sampler", "StepOutput", "StepTime",
    "Thresholds", "TimeGrid", "UniformProcess", "Workspace",
    "filter_probs", "generate", "generate_ar", "get_process", "get_sampler",
    "inverse_cdf", "reverse_step", "row_thresholds", "step_probs", "time_grid",
    "top_k_filter", "top_p_filter",
]
