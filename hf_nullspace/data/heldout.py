"""A seeded held-out split carved off the training rows, for data that has no validation or test split.

Which rows are held out depends only on the seed and each row's index in the split, never on how the split is read:
the training job (in memory or streamed) and the robustness evaluation (which reads the data again) select the same
rows. Each row is held out with probability `fraction` (a seeded hash of its index), so the held-out part is about
`fraction` of the rows, as transformers' `--train_val_split` (0.15 by default) in its image-classification example.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

_MASK = (1 << 64) - 1


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclasses.dataclass(frozen=True)
class HeldOutSplit:
    """
    The rows of `split` held out for evaluation: row i is held out when a seeded hash of (seed, i) falls below
    `fraction`.

    Args:
        split (`str`): The split the rows are carved from (the training split).
        fraction (`float`): Share of the rows held out, in (0, 1).
        seed (`int`): Seed of the selection (the run's `--seed`).
    """

    split: str
    fraction: float
    seed: int

    def __post_init__(self):
        if not 0 < self.fraction < 1:
            raise ValueError(
                f"train_val_split must lie in (0, 1) (the share of the training rows held out), got {self.fraction}."
            )

    def held(self, indices: np.ndarray) -> np.ndarray:
        """Whether each row index is held out (a boolean array)."""
        keys = np.asarray(indices, dtype=np.uint64) ^ _splitmix64(np.array([self.seed & _MASK], dtype=np.uint64))
        uniform = (_splitmix64(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        return uniform < self.fraction

    def apply(self, dataset: Dataset | IterableDataset) -> tuple[Dataset | IterableDataset, Dataset | IterableDataset]:
        """`(training rows, held-out rows)` of `dataset`, the split named `split`, rows in their order."""
        if isinstance(dataset, IterableDataset):
            return (
                dataset.filter(lambda _, i: not bool(self.held(np.array([i]))[0]), with_indices=True),
                dataset.filter(lambda _, i: bool(self.held(np.array([i]))[0]), with_indices=True),
            )
        held = self.held(np.arange(len(dataset)))
        return dataset.select(np.flatnonzero(~held)), dataset.select(np.flatnonzero(held))

    def describe(self, rows: int | None) -> dict:
        """What was scored, for `results.json` and the card: `{"split", "held_out", "fraction", "seed", "rows"}`."""
        return {"split": self.split, "held_out": True, "fraction": self.fraction, "seed": self.seed, "rows": rows}

    def display_name(self, source: str) -> str:
        """How the card names the held-out data, e.g. `"./shapes (train, held-out 15%, seed 42)"`."""
        return f"{source} ({self.split}, held-out {self.fraction:.0%}, seed {self.seed})"


def scored_rows(split: str | None, rows: int | None, held_out: HeldOutSplit | None = None) -> dict:
    """The record of the rows a run was evaluated on: a held-out part of the training split, or a split of its own
    (`{"split", "held_out": False, "rows"}`)."""
    if held_out is not None:
        return held_out.describe(rows)
    return {"split": split, "held_out": False, "rows": rows}


def carve_held_out(train, data_args, seed: int):
    """`(training rows, held-out rows, HeldOutSplit)` for data without a validation or test split: `--train_val_split`
    of `--train_split`'s rows, seeded by `seed`, logged."""
    held_out = HeldOutSplit(data_args.train_split, data_args.train_val_split, seed)
    train, evaluation = held_out.apply(train)
    logger.warning(
        "%s has no validation or test split: %s of its %r rows (seed %d) are held out for evaluation and not trained "
        "on (--train_val_split; or pass --eval_split).",
        data_args.dataset_name,
        f"{held_out.fraction:.0%}",
        held_out.split,
        seed,
    )
    return train, evaluation, held_out


def held_out_spec(spec, held_out: HeldOutSplit | None):
    """`spec` (a `BenchmarkSpec` of the training data) restricted to the rows `held_out` selects, named as such."""
    if held_out is None:
        return spec
    return dataclasses.replace(
        spec,
        split=held_out.split,
        held_out=held_out,
        display_name=held_out.display_name(spec.display_name or spec.name),
    )
