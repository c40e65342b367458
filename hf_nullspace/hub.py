"""Pushing a run to the Hub: exactly the files the design allows (never a pickle), and no token in them.

A finished run folder holds the model (`model.safetensors`, `config.json`, `preprocessor_config.json`), the noise
bank (`*.safetensors`), the figures (`*.png`), `noise_history.json`, `results.json`, example images
(`examples/*.png`) and the card (`README.md`, rendered by `card.py`). Every push path goes through [`push_run`]:
`NullspaceTrainer.push_to_hub` and the Trainer's push at every save (`hub_strategy`, see `publishing.py`) hand it the
run's [`~results.RunResults`]; `hf-nullspace push` reads them from the finished folder's `results.json`.
"""

import logging
import struct
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.utils import filter_repo_objects

from .card import CARD_FILE, write_model_card
from .noise_bank import NOISE_BANK_FILE, NOISE_HISTORY_FILE
from .results import HF_TOKEN_PATTERN, RESULTS_FILE, RunResults

logger = logging.getLogger(__name__)

# Files of a run folder that are pushed: root-level only (plus the figures and examples listed in the results).
ALLOWED_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "adapter_config.json",  # a LoRA run (lora.py): adapter_config.json + adapter_model.safetensors
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
# What a checkpoint folder in the repo holds (hub_strategy "checkpoint" / "all_checkpoints"): the model and its noise
# bank, loadable with from_pretrained; never the optimiser, scheduler, RNG or trainer states (pickles or not).
CHECKPOINT_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "adapter_config.json",
    NOISE_BANK_FILE,
    NOISE_HISTORY_FILE,
)
# One background pusher, so pushes made during training reach the repo one after the other, in order.
_BACKGROUND = HfApi()


def _run_files(output_dir: Path, results: RunResults | None = None) -> list[str]:
    """The run folder's files that are pushed, as POSIX paths relative to `output_dir` (the figures and example
    images in subfolders only when `results` lists them)."""
    listed = [] if results is None else results.figures + results.examples
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


def _allowed(names: list[str], patterns) -> list[str]:
    allowed = filter_repo_objects(names, allow_patterns=list(patterns))
    return sorted(filter_repo_objects(sorted(allowed), ignore_patterns=DENIED_PATTERNS))


def check_model_files(output_dir: Path) -> None:
    """Raises `FileNotFoundError` unless `output_dir` holds a model to push: safetensors weights and their config."""
    if not output_dir.is_dir():
        raise FileNotFoundError(
            f"Nothing to push: {output_dir} is not a folder. Pass the output folder of a run; no repo was created."
        )
    names = {path.name for path in output_dir.iterdir() if path.is_file()}
    weights = {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"} & names
    configs = {"config.json", "adapter_config.json"} & names
    if not weights or not configs:
        raise FileNotFoundError(
            f"Nothing to push: {output_dir} holds no model (it needs model.safetensors, or adapter_model.safetensors, "
            "with its config.json or adapter_config.json). Pass the output folder of a finished run; no repo was "
            "created."
        )


def push_run(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    checkpoint_in_repo: str | None = None,
    results: RunResults | None = None,
) -> str:
    """
    Creates the repo (if needed) and uploads a run folder in one commit: model weights and configs, the model card
    (rendered from `results` for this repo and branch), the figures, example images listed in the results,
    `results.json` (written from `results`), `noise_history.json` and the noise bank. Checkpoint folders, optimiser
    and trainer states, `training_args.bin` and every pickle (`*.bin`, `*.pt`, `*.pth`, `*.pkl`) stay local, and the
    push is refused if a pushed text file or safetensors header holds a token. Files unchanged on the Hub are not
    uploaded again; an unchanged run makes no commit.

    Args:
        output_dir (`str` or `Path`):
            The run folder.
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
        license (`str`, *optional*):
            The licence to put on the card, replacing the one in the results (`results.json` is updated).
        checkpoint_in_repo (`str`, *optional*):
            Also upload the model files of the run (weights, configs, noise bank and history: `CHECKPOINT_PATTERNS`)
            under this folder of the repo, e.g. `last-checkpoint` (the Trainer's `hub_strategy="checkpoint"`).
        results ([`~results.RunResults`], *optional*):
            The run's results. Defaults to the folder's `results.json` when there is one (a finished run pushed
            later); without either, the folder is pushed as it is (no card is written).

    Returns:
        `str`: the URL of the commit (of the branch's head when nothing changed).
    """
    output_dir = Path(output_dir)
    check_model_files(output_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if results is None and (output_dir / RESULTS_FILE).is_file():
        results = RunResults.load(output_dir)
    if results is not None:
        if license:
            results = results.with_license(license)
        results.save(output_dir)
        write_model_card(output_dir, results, repo_id=repo_id, revision=revision)
    files = _run_files(output_dir, results)
    uploads = {name: name for name in files}
    if checkpoint_in_repo:
        folder = checkpoint_in_repo.strip("/")
        root_files = [name for name in files if "/" not in name]
        uploads.update({f"{folder}/{name}": name for name in _allowed(root_files, CHECKPOINT_PATTERNS)})
    _check_no_token(output_dir, files, token or get_token())
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    logger.info(f"Pushing {len(uploads)} files from {output_dir} to {repo_id}: {sorted(uploads)}")
    commit = api.create_commit(
        repo_id=repo_id,
        operations=[
            CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=str(output_dir / local))
            for in_repo, local in sorted(uploads.items())
        ],
        revision=revision,
        commit_message=commit_message or "Upload robust model (approximate nullspace augmented finetuning)",
    )
    return commit.commit_url


def push_run_in_background(output_dir: str | Path, repo_id: str, *, cleanup: bool = False, **kwargs) -> Future:
    """
    [`push_run`] on a background thread (one push at a time, in the order asked); `cleanup` removes `output_dir`
    (a staging folder) once pushed. A failed push is logged and raised by the future's `result()`.
    """
    import shutil

    def push() -> str:
        try:
            return push_run(output_dir, repo_id, **kwargs)
        except Exception:
            logger.exception(f"Pushing {output_dir} to {repo_id} failed")
            raise
        finally:
            if cleanup:
                shutil.rmtree(output_dir, ignore_errors=True)

    return _BACKGROUND.run_as_future(push)
