"""Multi-head attention kernel choice: flash-attn when it is installed and the tensors
are half precision on CUDA, PyTorch's ``scaled_dot_product_attention`` otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # optional acceleration, never required
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # ImportError, or a broken CUDA build of the extension
    _flash_attn_func = None


def flash_attn_available() -> bool:
    return _flash_attn_func is not None


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """(B, L, H, d) queries, keys, values -> (B, L, H*d). No attention dropout."""
    b, l, h, d = q.shape
    if (_flash_attn_func is not None and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)):
        out = _flash_attn_func(q, k, v, dropout_p=0.0, causal=causal)
    else:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        ).transpose(1, 2)
    return out.reshape(b, l, h * d)
