"""`NoiseBank`: every noise a run synthesised, with its record, saved with each checkpoint and restored on resume."""

import json
import os
from collections.abc import Callable

import torch
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

NOISE_BANK_FILE = "noise_bank.safetensors"
NOISE_STATE_FILE = "nullspace_state.json"
NOISE_HISTORY_FILE = "noise_history.json"
NOISE_NORM_FIGURE = "noise_norm.png"


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Calls `write(tmp)` on a temporary file in the same folder, then renames it to `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def is_complete_checkpoint(folder: str) -> bool:
    """A checkpoint is complete once its nullspace state (written last, atomically) is there."""
    return os.path.isfile(os.path.join(folder, NOISE_STATE_FILE)) and os.path.isfile(
        os.path.join(folder, "trainer_state.json")
    )


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that was completely written, or `None`."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        folder = os.path.join(output_dir, name)
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and is_complete_checkpoint(folder):
            steps.append((int(step), folder))
    return max(steps)[1] if steps else None


class NoiseBank:
    """
    The noises of a run in the order they were synthesised, each with its record (step, norm, updates, statistic,
    whether epsilon was reached, ...).

    On disk a bank is two files: `noise_bank.safetensors` (one tensor per noise, `noise_0000`, ...) and
    `nullspace_state.json` (the records and the method's arguments), the JSON written last and both atomically, so a
    folder with the JSON holds a complete bank.

    Example:

    ```python
    >>> bank = NoiseBank()
    >>> bank.append(noise, {"step": 0, "norm": float(noise.norm())})
    >>> bank.save("checkpoint-40", arguments=nullspace_args.to_dict())
    >>> NoiseBank.load("checkpoint-40").latest.shape
    torch.Size([1, 196, 768])
    ```
    """

    def __init__(self, noises: list[torch.Tensor] | None = None, history: list[dict] | None = None):
        self.noises = list(noises or [])
        self.history = list(history or [])
        if len(self.noises) != len(self.history):
            raise ValueError(
                f"A noise bank needs one record per noise: {len(self.noises)} noises, {len(self.history)} records."
            )

    def __len__(self) -> int:
        return len(self.noises)

    @property
    def latest(self) -> torch.Tensor | None:
        """The newest noise, or `None` for an empty bank."""
        return self.noises[-1] if self.noises else None

    def append(self, noise: torch.Tensor, record: dict) -> None:
        """Adds a noise (stored detached on the CPU) and its record."""
        self.noises.append(noise.detach().cpu())
        self.history.append(dict(record))

    def save(self, folder: str, arguments: dict | None = None) -> None:
        """Writes the bank to `folder` (created if needed); `arguments` are stored beside the records."""
        os.makedirs(folder, exist_ok=True)
        if self.noises:
            tensors = {f"noise_{i:04d}": noise.contiguous() for i, noise in enumerate(self.noises)}
            metadata = {"steps": json.dumps([record.get("step") for record in self.history])}
            atomic_write(
                os.path.join(folder, NOISE_BANK_FILE), lambda path: save_file(tensors, path, metadata=metadata)
            )
        state = json.dumps({"nullspace_args": arguments or {}, "history": self.history}, indent=2)
        atomic_write(os.path.join(folder, NOISE_STATE_FILE), lambda path: _write_text(path, state))

    @classmethod
    def load(cls, folder: str) -> "NoiseBank":
        """Reads a bank written by [`~NoiseBank.save`]; refuses an incomplete or inconsistent one."""
        state_path = os.path.join(folder, NOISE_STATE_FILE)
        if not os.path.isfile(state_path):
            raise FileNotFoundError(
                f"{folder} has no {NOISE_STATE_FILE}: it was not written completely or not by NullspaceTrainer. "
                "Resume from an earlier checkpoint."
            )
        with open(state_path) as f:
            history = json.load(f)["history"]
        bank_path = os.path.join(folder, NOISE_BANK_FILE)
        tensors = load_file(bank_path) if os.path.isfile(bank_path) else {}
        if len(tensors) != len(history):
            raise ValueError(
                f"{folder}: the noise bank holds {len(tensors)} noises for {len(history)} history records; the "
                "checkpoint is inconsistent."
            )
        return cls([tensors[key] for key in sorted(tensors)], history)

    def export(self, folder: str, arguments: dict | None = None) -> list[str]:
        """
        Writes what a finished run shows of its noises: the bank, `noise_history.json` and the noise-norm figure.

        Returns:
            `list[str]`: the figures written (file names relative to `folder`).
        """
        from .plots import plot_noise_norm

        self.save(folder, arguments)
        with open(os.path.join(folder, NOISE_HISTORY_FILE), "w") as f:
            json.dump(self.history, f, indent=2)
        plot_noise_norm(self.history, os.path.join(folder, NOISE_NORM_FIGURE))
        return [NOISE_NORM_FIGURE]
