"""Pushing a finished run to the Hub: exactly the files the design allows (never a pickle), and no token in them.

A finished run folder holds the model (`model.safetensors`, `config.json`, `preprocessor_config.json`), the noise
bank (`*.safetensors`), the figures (`*.png`), `noise_history.json`, `results.json` and the card (`README.md`,
rendered by `card.py`).
"""

import glob
import json
import logging
import struct
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import filter_repo_objects

from .card import CARD_FILE, HF_TOKEN_PATTERN, RESULTS_FILE, write_model_card
from .noise_bank import NOISE_HISTORY_FILE

logger = logging.getLogger(__name__)

# Files of a run folder that are pushed: root-level only (plus the figures and examples listed in the results).
ALLOWED_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    CARD_FILE,
    "*.png",
    RESULTS_FILE,
    NOISE_HISTORY_FILE,
)
# Never pushed, even when matched above: checkpoints, optimiser and trainer states, pickles.
DENIED_PATTERNS = [
    "checkpoint-*",
    "*/checkpoint-*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    "optimizer.*",
    "scheduler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.*",
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml")


def _run_files(output_dir: Path) -> list[str]:
    """The run folder's files that are pushed, as POSIX paths relative to `output_dir`."""
    listed = []
    if (output_dir / RESULTS_FILE).is_file():
        results = json.loads((output_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        listed = [name for key in ("figures", "examples") for name in results.get(key) or []]
    candidates = sorted(path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file())
    root_files = [name for name in candidates if "/" not in name]
    listed_images = [name for name in candidates if name in listed and name.lower().endswith(IMAGE_SUFFIXES)]
    allowed = set(filter_repo_objects(root_files, allow_patterns=list(ALLOWED_PATTERNS))) | set(listed_images)
    return sorted(filter_repo_objects(sorted(allowed), ignore_patterns=DENIED_PATTERNS))


def _check_no_token(output_dir: Path, files: list[str], token: str | None) -> None:
    """Refuses to push when a text file or a safetensors header holds a Hugging Face token."""
    for name in files:
        path = output_dir / name
        if name.endswith(TEXT_SUFFIXES):
            text = path.read_text(encoding="utf-8", errors="replace")
        elif name.endswith(".safetensors"):
            with path.open("rb") as file:
                (header_size,) = struct.unpack("<Q", file.read(8))
                text = file.read(min(header_size, 100 << 20)).decode("utf-8", errors="replace")
        else:
            continue
        if HF_TOKEN_PATTERN.search(text) or (token and token in text):
            raise ValueError(f"{path} contains a Hugging Face token: redact it before pushing (see `redact`).")


def push_run(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """
    Creates the repo (if needed) and uploads a finished run: model weights and configs, the model card (rewritten
    from `results.json` for this repo when present), the figures, `results.json`, `noise_history.json` and the noise
    bank. Checkpoint folders, optimiser and trainer states, `training_args.bin` and every pickle (`*.bin`, `*.pt`,
    `*.pth`) stay local, and the push is refused if a pushed text file holds a token.

    Args:
        output_dir (`str` or `Path`):
            The finished run folder.
        repo_id (`str`):
            The Hub repo, `namespace/name`.
        token (`str`, *optional*):
            A Hub token with write access. Defaults to the locally saved token.
        private (`bool`, *optional*, defaults to `False`):
            Whether a newly created repo is private.
        revision (`str`, *optional*):
            The branch to push to, created from `main` if missing. Defaults to `main`.
        commit_message (`str`, *optional*):
            The commit message.

    Returns:
        `str`: the URL of the commit.
    """
    output_dir = Path(output_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if (output_dir / RESULTS_FILE).is_file():
        write_model_card(output_dir, repo_id=repo_id)
    files = _run_files(output_dir)
    _check_no_token(output_dir, files, token or get_token())
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    logger.info(f"Pushing {len(files)} files from {output_dir} to {repo_id}: {files}")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        revision=revision,
        commit_message=commit_message or "Upload robust model (approximate nullspace augmented finetuning)",
        allow_patterns=[glob.escape(name) for name in files],
        ignore_patterns=list(DENIED_PATTERNS),
    )
    return commit.commit_url
