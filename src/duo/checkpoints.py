"""Loading and exporting trained models, without Lightning and without running code.

- ``load_checkpoint(path)``: a run directory or a ``.ckpt`` written by ``duo train`` /
  ``duo distill`` (config and tokenizer travel inside as plain data).
- ``export_pretrained`` / ``load_pretrained``: a folder with ``model.safetensors``,
  ``config.yaml`` and ``tokenizer/`` (Hugging Face style).
- ``load_published``: Duo / MDLM weights in the published layout (Lightning ``.ckpt``
  with ``backbone.``-prefixed keys and an ``ema`` entry, or a safetensors/bin state
  dict), given the algo, model preset and tokenizer they were trained with.
"""

from __future__ import annotations

import errno
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import build_config
from .data import load_tokenizer
from .loading import LoadedModel, build_loaded
from .utils.checksums import CHECKSUM_ALGORITHM, read_safetensors, tensor_checksum, write_safetensors
from .utils.typed_config import load_yaml, save_yaml

__all__ = ["LoadedModel", "build_loaded", "export_pretrained", "find_resumable", "load_checkpoint",
           "load_pretrained", "load_published", "read_checkpoint", "read_safetensors", "resolve_checkpoint",
           "tensor_checksum", "verify_checksum", "CHECKSUM_ALGORITHM"]

log = logging.getLogger("duo")
class ChecksumError(ValueError):
    """A checkpoint's tensors differ from the checksum stored when it was written."""


def verify_checksum(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Raise a one-line ValueError when the tensors do not match the checksum stored at
    save time. Checkpoints written before checksums existed pass unchecked."""
    meta = checkpoint.get("duo") if isinstance(checkpoint, dict) else None
    stored = meta.get("checksum") if isinstance(meta, dict) else None
    if not stored:
        return
    if tensor_checksum(checkpoint) != stored.get("digest"):
        raise ChecksumError(
            f"checkpoint {str(path)!r} fails its checksum: its weights were damaged after it was written "
            "(disk or copy error); use another checkpoint of the run (checkpoints/step_*.ckpt) or copy it again"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.ckpt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt", p / "model.safetensors"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"no checkpoint in {str(p)!r} (looked for checkpoints/last.ckpt and model.safetensors); "
            "pass a .ckpt file or a run directory"
        )
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist; pass a .ckpt file or a run directory")
    return p


def read_checkpoint(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``, a clear error for corrupt files, and the
    stored checksum verified (``verify``), so every reader checks it."""
    p = resolve_checkpoint(path)
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(p)!r} is empty (a write was interrupted); use another checkpoint of the run")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.EISDIR):
            raise OSError(err.errno, err.strerror, str(p)) from None  # the CLI names path and cause
        raise ValueError(f"checkpoint {str(p)!r} is corrupt or not a torch checkpoint (truncated or damaged "
                         "file)") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ValueError(f"checkpoint {str(p)!r} is corrupt or not a torch checkpoint ({_reason(err)})") from None
    if verify:
        verify_checksum(ckpt, p)
    return ckpt


def _reason(err: Exception) -> str:
    """Why torch could not read a file, in a few words (never its weights_only advice)."""
    text = str(err)
    if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
        return "it holds Python objects beyond tensors and plain data, which duo refuses to unpickle"
    if "central directory" in text or "PytorchStreamReader" in text or isinstance(err, EOFError):
        return "truncated or damaged file"
    return type(err).__name__


_STEP = re.compile(r"step[_=-]?(\d+)")


def _step_of(path: Path) -> int:
    """The optimiser step a checkpoint was saved at: from ``step_N`` in its name, else its
    ``global_step`` (tensors memory-mapped, not read); -1 when unreadable."""
    m = _STEP.search(path.stem)
    if m:
        return int(m.group(1))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("global_step", -1)) if isinstance(ckpt, dict) else -1
    except Exception:  # noqa: BLE001 - damaged files sort last; the full read says why
        return -1


def find_resumable(directory: str | Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint in ``directory`` that loads and verifies (any ``*.ckpt``
    name), its contents, and one line per newer file that was skipped and why."""
    d = Path(directory)
    if not d.is_dir():
        return None, None, []
    files = [p for p in d.glob("*.ckpt") if p.is_file()]
    # Furthest first: by the training step (the name's, else the file's own global_step),
    # then modification time. Times alone mislead after a copy, a touch or a restore
    # from backup, and resuming from an older file would silently go back in training.
    steps = {p: _step_of(p) for p in files}

    def order(p: Path):
        return (steps[p], p.stat().st_mtime_ns, p.name == "last.ckpt")

    def check(p: Path) -> dict[str, Any]:
        ckpt = read_checkpoint(p)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"checkpoint {str(p)!r} is not a training checkpoint (no state_dict)")
        return ckpt

    skipped: list[str] = []
    ranked = sorted(files, key=order, reverse=True)
    for i, p in enumerate(ranked):
        try:
            ckpt = check(p)
        except ValueError as err:
            skipped.append(str(err))
            continue
        # Files whose step could not be read sort last: say why they were passed over.
        for q in ranked[i + 1:]:
            if steps[q] < 0:
                try:
                    check(q)
                except ValueError as err:
                    skipped.append(str(err))
        return p, ckpt, skipped  # furthest first: the first good one is the one to resume
    return None, None, skipped


def _tokenizer_from_files(files: dict[str, str]):
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        return load_tokenizer(tmp)


def _check_vocab(tokenizer, expected: int, where: str) -> None:
    if tokenizer.vocab_size != expected:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name', '?')!r} has {tokenizer.vocab_size} ids but {where} "
            f"was trained with {expected}; use the tokenizer saved with the checkpoint"
        )


def load_checkpoint(path: str | Path, *, use_ema: bool = True, tokenizer=None,
                    device: str | torch.device = "cpu", algo: str | None = None) -> LoadedModel:
    """Model, method and tokenizer from a ``duo`` checkpoint or run directory, an official
    Lightning ``.ckpt``, a Hugging Face model folder, or ``hf:<repo_id>`` (:mod:`duo.interop`)."""
    from . import interop

    if str(path).startswith(interop.hub.HUB_PREFIX):
        path = interop.resolve_hub(str(path))
    if interop.is_duo_export(Path(path).expanduser()):  # duo export RUN OUT (config.json + duo_config)
        return interop.load_export(path, tokenizer=tokenizer, device=device, algo=algo)
    if interop.is_hf_folder(Path(path).expanduser()):
        return interop.load_official(path, algo=algo, weights="ema" if use_ema else "raw",
                                     tokenizer=tokenizer, device=device)
    p = resolve_checkpoint(path)
    if p.suffix == ".safetensors":
        return load_pretrained(p.parent, device=device)
    try:
        ckpt = read_checkpoint(p)
    except ChecksumError:
        raise  # a duo checkpoint, damaged: never retried as an official one
    except ValueError:
        if not interop.is_torch_zip(p):
            raise
        ckpt = None  # pickled objects beyond tensors: an official checkpoint, read restrictedly
    if ckpt is None or (ckpt.get("duo") is None and interop.looks_official(ckpt)):
        return interop.load_official(p, algo=algo, weights="ema" if use_ema else "raw",
                                     tokenizer=tokenizer, device=device)
    meta = ckpt.get("duo")
    if meta is None:
        raise ValueError(
            f"{str(p)!r} has no duo metadata and no backbone.* weights; pass a duo run directory, "
            "an official .ckpt or a Hugging Face folder"
        )
    cfg = build_config(dict(meta["config"]))
    if algo is not None and algo != cfg.algo:
        raise ValueError(f"checkpoint {str(p)!r} holds a {cfg.algo} model, not {algo}; pass algo={cfg.algo}")
    saved_tok = _tokenizer_from_files(meta["tokenizer_files"])
    if tokenizer is not None:
        _check_vocab(tokenizer, saved_tok.vocab_size, f"checkpoint {str(p)!r}")
    tok = tokenizer or saved_tok
    loaded = build_loaded(cfg, tok, ckpt["state_dict"], ckpt.get("ema"), p, meta.get("metadata"), use_ema)
    loaded.backbone.to(device)
    return loaded


def export_pretrained(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` (EMA weights if loaded so), ``config.yaml``, ``tokenizer/``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.backbone.state_dict().items()}
    write_safetensors(state, out / "model.safetensors", {"format": "pt", "algo": loaded.algo})
    save_yaml({**loaded.cfg.to_dict(), "metadata": loaded.metadata}, out / "config.yaml")
    loaded.tokenizer.save(out / "tokenizer")
    return out


def load_pretrained(directory: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Inverse of :func:`export_pretrained`."""
    d = Path(directory)
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{str(d)!r} has no model.safetensors; pass a folder written by export")
    data = load_yaml(d / "config.yaml")
    metadata = data.pop("metadata", {}) or {}
    cfg = build_config(data)
    tok = load_tokenizer(d / "tokenizer")
    loaded = build_loaded(cfg, tok, read_safetensors(d / "model.safetensors"), None, d, metadata)
    loaded.backbone.to(device)
    return loaded


def load_published(path: str | Path, *, algo: str = "duo", model: str = "small", tokenizer=None,
                   seq_len: int = 1024, use_ema: bool = True, overrides: list[str] | None = None) -> LoadedModel:
    """Weights in the published Duo / MDLM layout (``s-sahoo/duo``, ``kuleshov-group/mdlm-owt``).

    ``path`` is a Lightning ``.ckpt`` (``state_dict`` with ``backbone.`` keys, optional
    ``ema``), a ``.safetensors`` or ``.bin`` state dict, or a folder holding one.
    ``tokenizer`` is a ``duo.data`` tokenizer (default: GPT-2 through Hugging Face).
    """
    from .data import get_tokenizer

    p = Path(path).expanduser()
    if p.is_dir():
        found = [c for n in ("model.safetensors", "pytorch_model.bin", "last.ckpt") if (c := p / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no model.safetensors, pytorch_model.bin or last.ckpt in {str(p)!r}")
        p = found[0]
    if not p.is_file():
        raise FileNotFoundError(f"published checkpoint {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state, ema = load_file(str(p)), None
    else:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", ckpt)
        ema = ckpt.get("ema") if isinstance(ckpt, dict) else None
    tok = tokenizer or get_tokenizer("gpt2")
    # Published Duo and MDLM models embed GPT-2's 50,257 ids plus one (the mask, unused by
    # Duo): take K from the weights and check that the tokenizer fits inside it.
    key = next((k for k in state if k.endswith("vocab_embed.embedding")), None)
    if key is None:
        raise ValueError(f"{str(p)!r} has no vocab_embed.embedding: not a Duo/MDLM DiT checkpoint")
    vocab = int(state[key].shape[0])
    if tok.vocab_size > vocab:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but {str(p)!r} embeds only {vocab}; "
                         "pass the tokenizer the model was trained with")
    cfg = build_config([f"algo={algo}", f"model={model}", f"data.seq_len={seq_len}", *(overrides or [])])
    return build_loaded(cfg, tok, state, ema, p, {"published": True}, use_ema, model_vocab_size=vocab)
