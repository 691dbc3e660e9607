"""Forward processes: ``uniform`` (USDM, Duo) and ``absorbing`` (masked, MDLM)."""

from . import absorbing, uniform

__all__ = ["absorbing", "uniform"]
