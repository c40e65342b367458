"""`NoiseBank`: the noises a run synthesised and their records, saved with each checkpoint and restored on resume."""

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


_NOISE_PREFIX = "noise_"
LEARNED_NOISE_KEY = "learned_noise"


class NoiseBank:
    """
    The noises of a run in the order they were synthesised, each with its record (step, norm, updates, statistic,
    whether epsilon was reached, ...).

    The records (`history`) are always whole. The noises are the newest ones kept: all of them in memory, and on disk
    only the current one (all of them with `save_all`), so a checkpoint's size does not grow with the number of
    refreshes; resuming needs only the current noise. `learned` is the learned noise behind the current one when the
    two differ (`norm_matched` trains on a random noise of the learned one's norm and warm-starts from the learned
    one), saved with it so that a resumed run continues exactly.

    On disk a bank is two files: `noise_bank.safetensors` (`noise_<i>` for the noise of record i, and
    `learned_noise`) and `nullspace_state.json` (the records and the method's arguments), the JSON written last and
    both atomically, so a folder with the JSON holds a complete bank.

    Example:

    ```python
    >>> bank = NoiseBank()
    >>> bank.append(noise, {"step": 0, "norm": float(noise.norm())})
    >>> bank.save("checkpoint-40", arguments=nullspace_args.to_dict())
    >>> NoiseBank.load("checkpoint-40").latest.shape
    torch.Size([1, 196, 768])
    ```
    """

    def __init__(
        self,
        noises: list[torch.Tensor] | None = None,
        history: list[dict] | None = None,
        learned: torch.Tensor | None = None,
        save_all: bool = False,
    ):
        self.noises = list(noises or [])
        self.history = list(history or [])
        self.learned = learned
        self.save_all = save_all
        if len(self.noises) > len(self.history) or (self.history and not self.noises):
            raise ValueError(
                "A noise bank holds the noises of its newest records (at least the current one): "
                f"{len(self.noises)} noises for {len(self.history)} records."
            )

    def __len__(self) -> int:
        return len(self.history)

    @property
    def latest(self) -> torch.Tensor | None:
        """The newest noise, or `None` for an empty bank."""
        return self.noises[-1] if self.noises else None

    def append(self, noise: torch.Tensor, record: dict, learned: torch.Tensor | None = None) -> None:
        """Adds a noise (stored detached on the CPU), its record and the learned noise behind it, if different."""
        self.noises.append(noise.detach().cpu())
        self.history.append(dict(record))
        self.learned = learned.detach().cpu() if learned is not None else None

    def save(self, folder: str, arguments: dict | None = None) -> None:
        """Writes the bank to `folder` (created if needed): the current noise, or every noise kept with `save_all`;
        `arguments` are stored beside the records."""
        os.makedirs(folder, exist_ok=True)
        if self.noises:
            kept = self.noises if self.save_all else self.noises[-1:]
            first = len(self.history) - len(kept)
            tensors = {f"{_NOISE_PREFIX}{first + i}": noise.contiguous() for i, noise in enumerate(kept)}
            if self.learned is not None:
                tensors[LEARNED_NOISE_KEY] = self.learned.contiguous()
            metadata = {"steps": json.dumps([record.get("step") for record in self.history[first:]])}
            atomic_write(
                os.path.join(folder, NOISE_BANK_FILE), lambda path: save_file(tensors, path, metadata=metadata)
            )
        state = json.dumps({"nullspace_args": arguments or {}, "history": self.history}, indent=2)
        atomic_write(os.path.join(folder, NOISE_STATE_FILE), lambda path: _write_text(path, state))

    @classmethod
    def load(cls, folder: str, save_all: bool = False) -> "NoiseBank":
        """Reads a bank written by [`~NoiseBank.save`] (noises in the order of their records, `noise_<i>` read as
        the number i); refuses an incomplete or inconsistent one."""
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
        learned = tensors.pop(LEARNED_NOISE_KEY, None)
        indices = sorted(int(key[len(_NOISE_PREFIX) :]) for key in tensors)
        if indices != list(range(len(history) - len(indices), len(history))) or (history and not indices):
            raise ValueError(
                f"{folder}: the noise bank holds noises {indices[:3]}...{indices[-3:]} for {len(history)} history "
                "records (the newest ones are needed, at least the current one); the checkpoint is inconsistent."
            )
        noises = [tensors[key] for key in sorted(tensors, key=lambda key: int(key[len(_NOISE_PREFIX) :]))]
        return cls(noises, history, learned=learned, save_all=save_all)

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
