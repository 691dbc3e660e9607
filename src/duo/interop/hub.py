"""``hf:<repo_id>``: a Hub repository resolved to a local folder (the cache first)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HUB_PREFIX", "resolve_hub"]

HUB_PREFIX = "hf:"
# Weights, configs and tokenizer files; not the repos' Lightning .ckpt copies or code.
ALLOW = ["*.json", "*.safetensors", "*.txt", "*.yaml", "*.model"]


def resolve_hub(spec: str, cache_dir: str | Path | None = None) -> Path:
    """The snapshot folder of ``hf:<repo_id>`` (or a bare repo id): cached, else downloaded."""
    repo_id = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    if not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"Hub id {repo_id!r} is not of the form owner/name; e.g. checkpoint=hf:s-sahoo/duo")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError:
        raise ValueError(f"checkpoint=hf:{repo_id} needs huggingface_hub; pip install huggingface_hub") from None
    kwargs = {"cache_dir": str(cache_dir) if cache_dir is not None else None, "allow_patterns": ALLOW}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception:  # noqa: BLE001 - not cached (any form): try the Hub
        pass
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except RepositoryNotFoundError:
        raise ValueError(f"Hub id {repo_id!r} does not exist or is private; check the name") from None
    except Exception:  # noqa: BLE001 - offline mode, no network, timeouts
        raise ValueError(
            f"Hub id {repo_id!r} is not in the local cache and the Hub is unreachable; "
            "download it on a connected machine or pass a local folder"
        ) from None
