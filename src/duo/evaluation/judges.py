"""Evaluation language models ("judges") for generative perplexity.

An :class:`EvalLM` re-tokenizes text with its own tokenizer and scores ids with a causal
LM. Two kinds: a Hugging Face causal LM by hub name or local directory (the paper uses
``gpt2-large``), and an autoregressive checkpoint trained by this library (works offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor


class EvalLM(Protocol):
    """What :func:`duo.evaluation.generative_perplexity` needs from a judge."""

    name: str
    context_size: int  # longest id sequence one forward pass may see
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    unk_id: int | None  # the id unknown text maps to, if the tokenizer has one

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def logits(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """ids (B, L) right-padded, mask (B, L) -> next-token logits (B, L, V)."""
        ...


@dataclass
class CheckpointLM:
    """A ``duo`` autoregressive checkpoint as judge, with its own tokenizer."""

    loaded: Any
    name: str

    def __post_init__(self) -> None:
        if not self.loaded.method.process.autoregressive:
            raise ValueError(
                f"judge {self.name!r} is a {self.loaded.algo} checkpoint; a judge must be autoregressive: "
                "pass judge=<an ar run directory> or a Hugging Face causal LM"
            )
        tok = self.loaded.tokenizer
        self.context_size = int(self.loaded.cfg.model.max_seq_len)
        self.bos_id, self.eos_id, self.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
        self.unk_id = None  # byte-level BPE has none; the char tokenizer raises instead

    @property
    def device(self) -> torch.device:
        return next(self.loaded.backbone.parameters()).device

    def encode(self, text: str) -> list[int]:
        return list(self.loaded.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.loaded.tokenizer.decode(list(ids), skip_special_tokens=True)

    @torch.no_grad()
    def logits(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        # Causal attention: right padding cannot leak into earlier positions.
        return self.loaded.method.next_token_logits(ids)


@dataclass
class HFCausalLM:
    """A ``transformers`` causal LM and its tokenizer (hub name or local directory)."""

    model: Any
    tokenizer: Any
    name: str

    def __post_init__(self) -> None:
        tok, cfg = self.tokenizer, self.model.config
        sizes = [getattr(cfg, k, None) for k in ("n_positions", "max_position_embeddings", "n_ctx")]
        self.context_size = int(next((s for s in sizes if s), 1024))
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        pad = next((i for i in (tok.pad_token_id, self.eos_id, 0) if i is not None))
        self.pad_id = int(pad)
        self.unk_id = tok.unk_token_id

    @classmethod
    def load(cls, name_or_path: str, device: torch.device | str = "cpu") -> "HFCausalLM":
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # The per-tensor "Loading weights" bar is noise in a command's output.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"cannot load judge {name_or_path!r} ({first[:160]}); offline, pass judge=<an ar run "
                "directory> or a local Hugging Face model directory"
            ) from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        return cls(model.to(device).eval(), tok, name_or_path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @torch.no_grad()
    def logits(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=ids, attention_mask=attention_mask).logits


def _is_duo_checkpoint(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".ckpt", ".pt")
    return any((path / p).is_file() for p in ("checkpoints/last.ckpt", "last.ckpt", "config.yaml"))


def load_judge(spec: "str | Path | EvalLM", device: torch.device | str = "cpu") -> EvalLM:
    """A judge from a ``duo`` ar run / checkpoint, a local HF directory, or a hub name."""
    if not isinstance(spec, (str, Path)):
        return spec
    path = Path(spec).expanduser()
    if path.exists() and _is_duo_checkpoint(path):
        from ..checkpoints import load_checkpoint

        return CheckpointLM(load_checkpoint(path, device=device), str(spec))
    if not path.exists() and (str(spec).startswith((".", "/", "~")) or str(spec).endswith(".ckpt")):
        raise FileNotFoundError(f"judge {str(spec)!r} does not exist; pass an ar run directory, a .ckpt, "
                                "or a Hugging Face model name")
    return HFCausalLM.load(str(spec), device)
