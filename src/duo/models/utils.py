"""Parameter counting, FLOPs estimates and state-dict helpers."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from duo.models.config import ModelConfig
from duo.models.flops import flop_count

EMBEDDING_KEYS = ("vocab_embed.embedding",)


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of parameters (buffers such as ``rotary_emb.inv_freq`` not included).

    ``exclude_embeddings`` drops the input embedding table only: for ids it is a
    lookup, not a matmul. The output projection is a matmul and stays counted.
    """
    return sum(
        p.numel() for name, p in model.named_parameters()
        if not (exclude_embeddings and name in EMBEDDING_KEYS)
    )


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), for MFU reporting: the strict count
    of :mod:`duo.models.flops`.

    6 x the per-token parameters (the input embedding, a lookup, not counted; the output
    projection counted) + ``12 n_blocks L D`` for attention, + 6 x the per-sequence
    parameters (``sigma_map``, the ``adaLN_modulation`` layers) once per sequence, i.e.
    divided by ``seq_len``. A step over B sequences costs ``B * seq_len`` times this
    (:func:`duo.models.flops.training_flops`).
    """
    return flop_count(config, seq_len).per_token


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "backbone.") -> dict[str, Tensor]:
    """Keys starting with ``prefix``, with it removed; other keys are dropped.

    Lightning checkpoints keep the DiT under ``backbone.`` beside unrelated keys;
    Hugging Face repos store it with or without the prefix, so a dict in which no key
    carries the prefix is returned unchanged.
    """
    if not any(key.startswith(prefix) for key in state_dict):
        return dict(state_dict)
    return {key[len(prefix):]: v for key, v in state_dict.items() if key.startswith(prefix)}


def compile_backbone(model: nn.Module, **options) -> nn.Module:
    """``torch.compile`` the transformer body and the output projection in place, for
    training: calls without gradients (validation, sampling) run them eagerly.

    The losses call ``model.hidden`` and ``model.output_layer.project`` separately (the
    output layer runs in chunks), so those two are compiled rather than ``forward``.
    Each new grad mode, inference mode or sampling batch would otherwise recompile the
    network (about 30 s each for ``small`` on an H100: a GPU run spent minutes there
    after training). The state dict is unchanged.
    """
    import torch

    for owner, name in ((model, "hidden"), (model.output_layer, "project")):
        eager = getattr(owner, name)
        compiled = torch.compile(eager, **options)

        def run(*args, _eager=eager, _compiled=compiled, **kwargs):
            return (_compiled if torch.is_grad_enabled() else _eager)(*args, **kwargs)

        setattr(owner, name, run)
    return model
