"""Where adapters live outside this process: local directories, the Hugging Face Hub, model cards.

``huggingface_hub`` is imported only when a path is not a local directory or when pushing.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qpeft.io import atomic_write_text

CARD_NAME = "README.md"
CARD_MARKER = "<!-- qpeft model card -->"


def resolve_file(model_id: str | Path, filename: str, subfolder: str | None = None, **kwargs: Any) -> str:
    """The local path of ``filename`` in a directory, or downloaded from the Hub repo ``model_id``.

    ``kwargs`` that ``huggingface_hub.hf_hub_download`` takes (``revision``, ``token``, ``cache_dir``, ...)
    are passed on; others (peft passes its own, e.g. ``torch_device``) are ignored, as peft does.
    """
    directory = Path(model_id) / subfolder if subfolder else Path(model_id)
    if directory.is_dir():
        path = directory / filename
        if not path.is_file():
            raise FileNotFoundError(f"no {filename} in {directory}")
        return str(path)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise FileNotFoundError(f"{model_id!s} is not a local directory (and huggingface_hub is not installed "
                                "to download it)") from err
    allowed = set(inspect.signature(hf_hub_download).parameters)
    options = {k: v for k, v in kwargs.items() if k in allowed}
    try:
        return hf_hub_download(str(model_id), filename, subfolder=subfolder, **options)
    except Exception as err:
        raise FileNotFoundError(f"{model_id!s} is neither a local directory nor a Hub repo with {filename}: "
                                f"{err}") from err


def model_card(method: str, base_model: str | None, tags: list[str], body: str) -> str:
    """A short model card: YAML front matter the Hub reads (``library_name``, ``base_model``, ``tags``) + text."""
    front = ["---", "library_name: peft"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front += ["tags:", *(f"- {tag}" for tag in tags), "---", ""]
    return "\n".join(front) + f"\n{CARD_MARKER}\n# {method} adapter\n\n{body.strip()}\n"


def write_model_card(directory: str | Path, card: str) -> None:
    """Write ``README.md``; an existing card (e.g. Trainer's) keeps its text and gets ours appended once."""
    path = Path(directory) / CARD_NAME
    if path.is_file():
        existing = path.read_text()
        if CARD_MARKER in existing:
            return
        card = existing.rstrip() + "\n\n" + card.split("---\n", 2)[-1].lstrip()  # keep its front matter
    atomic_write_text(path, card)


def push_folder(save: Callable[[str], None], repo_id: str, commit_message: str | None = None,
                private: bool | None = None, token: str | bool | None = None, revision: str | None = None,
                create_pr: bool = False) -> Any:
    """Write the adapter with ``save(directory)`` into a temporary folder and upload only that folder."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        save(directory)
        return api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=directory,
                                 commit_message=commit_message or "Upload qpeft adapter", revision=revision,
                                 create_pr=create_pr)
