"""Forward processes: ``uniform`` (USDM, Duo) and ``absorbing`` (masked, MDLM), and the
:class:`ProcessKind` objects methods carry (``UNIFORM``, ``ABSORBING``, ``CAUSAL``)."""

from . import absorbing, uniform
from .kinds import ABSORBING, CAUSAL, UNIFORM, ProcessKind

__all__ = ["absorbing", "uniform", "ProcessKind", "UNIFORM", "ABSORBING", "CAUSAL"]
