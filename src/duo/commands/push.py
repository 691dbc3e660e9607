"""``duo push RUN REPO_ID [private=true] [message=...] [weights=ema|raw] [sampler=... steps=...]``

Exports ``RUN`` (see ``duo export``) into a temporary folder, or takes ``RUN`` as it is when
it already is a duo export, and uploads it to the Hugging Face Hub with
``huggingface_hub``: one ``create_repo(exist_ok=True)`` and one ``upload_folder`` commit.
The token comes from ``huggingface-cli login`` / ``HF_TOKEN`` (or ``token=``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .export import export_run, parse

USAGE = "duo push RUN REPO_ID [private=true|false] [message=...] [weights=ema|raw] [sampler=...] [steps=...]"


def push_folder(folder: Path, repo_id: str, *, private: bool = False, message: str | None = None,
                token: str | None = None) -> str:
    """Upload an export folder; returns the repo's URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ValueError("duo push needs huggingface_hub; pip install huggingface_hub") from None
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message=message or f"Upload {folder.name} with duo push")
    return str(url)


def main(args: list[str]) -> int:
    from ..interop import is_duo_export

    (src, repo_id), a, extra = parse(args, "push", 2, USAGE)
    if not repo_id or repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ValueError(f"REPO_ID {repo_id!r} is not of the form owner/name; e.g. duo push runs/duo-x me/duo-x")
    private = str(extra.get("private", "false")).lower() in ("1", "true", "yes")
    kwargs = {"private": private, "message": extra.get("message"), "token": extra.get("token")}
    if is_duo_export(src):
        url = push_folder(Path(src).expanduser(), repo_id, **kwargs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_run(src, Path(tmp) / repo_id.split("/")[1], a, name=repo_id)
            url = push_folder(folder, repo_id, **kwargs)
    print(f"pushed {src} -> {url}")
    return 0
