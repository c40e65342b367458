"""Streamed datasets that scale out: a row key that does not depend on the process layout, one share of the stream per
process, and the count of rows each process reads.

- `keyed_stream` gives every row its index in the one-process stream (shard offsets read from the parquet footers),
  kept exact whichever process or DataLoader worker reads the row: the train transform draws each row's augmentation
  from it, so 1, 2 or N processes augment every row alike.
- `split_stream` gives each process its share: whole shards when the number of shards divides by the number of
  processes (`datasets.distributed.split_dataset_by_node`), else every N-th row by key, dropped before decoding.
- `ReadTally` counts, per process (per DataLoader worker), the rows read from the stream and those passed on to be
  decoded.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
from datasets import IterableDataset, Value, concatenate_datasets
from datasets.distributed import split_dataset_by_node

# key of a stream that has several shards of unknown lengths: shard s, row i -> s * SHARD_STRIDE + i
SHARD_STRIDE = 1 << 40


class ReadTally:
    """Rows read from a stream by this process (or DataLoader worker), and rows passed on to be decoded."""

    def __init__(self):
        self.read = 0
        self.passed = 0
        self.filtered = False

    @property
    def decoded(self) -> int:
        """Rows passed on to decoding: all those read, unless `split_stream` drops other processes' rows."""
        return self.passed if self.filtered else self.read

    def as_dict(self) -> dict:
        return {"rows_read": self.read, "rows_decoded": self.decoded}

    def __deepcopy__(self, memo):  # datasets copies the pipeline's functions; the count stays one per process
        return self

    def restore(self, counts: dict) -> None:
        """Continues from counts saved by `as_dict` (a resumed run)."""
        self.read = int(counts.get("rows_read", 0))
        self.passed = int(counts.get("rows_decoded", 0))


class _KeyRows:
    """`map(with_indices=True)` function: the key is the shard's offset plus the row's index in it. One row at a time,
    so that the stream's position is exact after every row."""

    def __init__(self, key_column: str, offset: int, tally: ReadTally | None):
        self.key_column, self.offset, self.tally = key_column, offset, tally

    def __call__(self, row: dict, index: int) -> dict:
        if self.tally is not None:
            self.tally.read += 1
        return {self.key_column: self.offset + index}


class ProcessShare:
    """`filter` function keeping the rows of process `process_index` of `num_processes` (by key), one row at a time."""

    def __init__(self, process_index: int, num_processes: int, tally: ReadTally | None = None):
        self.process_index, self.num_processes, self.tally = process_index, num_processes, tally

    def __call__(self, key: int) -> bool:
        kept = key % self.num_processes == self.process_index
        if self.tally is not None:
            self.tally.passed += kept
        return kept


def _source_files(dataset: IterableDataset) -> list[str] | None:
    """The files of a stream read straight from its data files (one shard each), else `None`."""
    ex_iterable = dataset._ex_iterable
    while hasattr(ex_iterable, "ex_iterable"):
        ex_iterable = ex_iterable.ex_iterable
    kwargs = getattr(ex_iterable, "kwargs", None) or {}
    files = kwargs.get("files")
    row_groups = kwargs.get("row_groups_list")
    if not files or any(group is not None for group in row_groups or []) or len(files) != dataset.num_shards:
        return None
    return [str(file) for file in files]


def shard_row_counts(dataset: IterableDataset) -> list[int] | None:
    """Rows of each shard of a stream of parquet files, read from the files' footers; `None` for other streams."""
    files = _source_files(dataset)
    if files is None or not all(file.lower().split("::")[0].endswith(".parquet") for file in files):
        return None
    import pyarrow.parquet as pq
    from datasets.utils.file_utils import xopen

    counts = []
    for file in files:
        with xopen(file, "rb") as handle:
            counts.append(pq.ParquetFile(handle).metadata.num_rows)
    return counts


def _is_taken(dataset: IterableDataset) -> bool:
    """Whether the stream is cut to its first rows (`take`): then it is one sequence, not shards read on their own."""
    ex_iterable = dataset._ex_iterable
    while ex_iterable is not None:
        if type(ex_iterable).__name__ == "TakeExamplesIterable":
            return True
        ex_iterable = getattr(ex_iterable, "ex_iterable", None)
    return False


def shard_offsets(dataset: IterableDataset) -> list[int]:
    """Index in the one-process stream of each shard's first row: exact for parquet (and one shard), else
    `shard * SHARD_STRIDE`. A stream cut by `take` is one sequence: `[0]`."""
    if dataset.num_shards == 1 or _is_taken(dataset):
        return [0]
    counts = shard_row_counts(dataset)
    if counts is None:
        return [shard * SHARD_STRIDE for shard in range(dataset.num_shards)]
    offsets, total = [], 0
    for count in counts:
        offsets.append(total)
        total += count
    return offsets


def keyed_stream(dataset: IterableDataset, key_column: str, tally: ReadTally | None = None) -> IterableDataset:
    """Adds `key_column`: each row's index in the one-process stream, the same under any split by process or worker.

    Each shard is keyed on its own (its offset plus the row's index in it), so the key survives `split_stream` and
    DataLoader workers, which hand out whole shards. Image columns are cast to undecoded cells (decoding is left to
    `prepare_dataset`).

    Args:
        dataset (`IterableDataset`): A streamed split.
        key_column (`str`): Name of the new int64 column.
        tally (`ReadTally`, *optional*): Counts the rows read.
    """
    if not isinstance(dataset, IterableDataset):
        raise TypeError(f"keyed_stream takes a streamed split (IterableDataset), got {type(dataset).__name__}.")
    if dataset.features is None:
        dataset = dataset._resolve_features()
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    features = dataset.features.copy()
    features[key_column] = Value("int64")
    offsets = shard_offsets(dataset)
    if len(offsets) == 1:
        return dataset.map(_KeyRows(key_column, 0, tally), with_indices=True, features=features)
    shards = [
        dataset.shard(num_shards=len(offsets), index=shard).map(
            _KeyRows(key_column, offset, tally), with_indices=True, features=features
        )
        for shard, offset in enumerate(offsets)
    ]
    return concatenate_datasets(shards)


def split_stream(
    dataset: IterableDataset,
    key_column: str,
    process_index: int,
    num_processes: int,
    tally: ReadTally | None = None,
) -> IterableDataset:
    """The share of a keyed stream (`keyed_stream`) that process `process_index` of `num_processes` reads.

    Whole shards when `num_shards` divides by `num_processes` and the stream is not cut by `take` (the process reads
    only its shards), else the rows
    whose key is `process_index` modulo `num_processes` (every process reads every row but passes on only its own to
    decoding). Apply it before `prepare_dataset`, so that the other processes' rows are never decoded.

    Args:
        dataset (`IterableDataset`): From `keyed_stream`.
        key_column (`str`): The key column.
        process_index (`int`), num_processes (`int`): This process and the number of processes.
        tally (`ReadTally`, *optional*): Counts the rows passed on to decoding.
    """
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}.")
    if num_processes == 1:
        return dataset
    if dataset.num_shards % num_processes == 0 and not _is_taken(dataset):
        return split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
    if tally is not None:
        tally.filtered = True
    return dataset.filter(ProcessShare(process_index, num_processes, tally), input_columns=[key_column])


def split_strategy(dataset: IterableDataset) -> str | None:
    """How a stream was split among processes: `"shards"`, `"examples"` (every N-th row), or `None` (not split)."""
    distributed = getattr(dataset, "_distributed", None)
    if distributed is not None:
        return "shards" if dataset._ex_iterable.num_shards % distributed.world_size == 0 else "examples"
    ex_iterable = dataset._ex_iterable
    while ex_iterable is not None:
        function = getattr(ex_iterable, "mask_function", getattr(ex_iterable, "function", None))
        if isinstance(function, ProcessShare):
            return "examples"
        ex_iterable = getattr(ex_iterable, "ex_iterable", None)
    return None


def iter_row_range(dataset: IterableDataset, start: int, stop: int | None, tally: ReadTally | None = None) -> Iterator:
    """Yields `(index, row)` for the rows `start <= index < stop` of a stream, opening only the parquet shards that
    hold them (other streams are read from their first row, the rows before `start` passed over undecoded).

    Args:
        dataset (`IterableDataset`): A streamed split (image cells undecoded).
        start (`int`), stop (`int`, *optional*): The range; to the end when `stop` is `None`.
        tally (`ReadTally`, *optional*): Counts the rows read (passed over or yielded) in `read`.
    """
    counts = shard_row_counts(dataset) if dataset.num_shards > 1 else None
    first = 0
    if counts is not None:
        shards, offset = [], 0
        for shard, count in enumerate(counts):
            if offset + count > start and (stop is None or offset < stop):
                if not shards:
                    first = offset
                shards.append(dataset.shard(num_shards=len(counts), index=shard))
            offset += count
        if not shards:
            return
        dataset = shards[0] if len(shards) == 1 else concatenate_datasets(shards)
    for index, row in enumerate(dataset, start=first):
        if stop is not None and index >= stop:
            return
        if tally is not None:
            tally.read += 1
        if index >= start:
            yield index, row


def stream_tally(dataset: IterableDataset) -> ReadTally | None:
    """The `ReadTally` that `keyed_stream` put in a stream's pipeline, if any."""
    pending = [dataset._ex_iterable]
    while pending:
        ex_iterable = pending.pop()
        function = getattr(ex_iterable, "mask_function", getattr(ex_iterable, "function", None))
        if isinstance(function, (_KeyRows, ProcessShare)) and function.tally is not None:
            return function.tally
        pending.extend(getattr(ex_iterable, "ex_iterables", []))
        if getattr(ex_iterable, "ex_iterable", None) is not None:
            pending.append(ex_iterable.ex_iterable)
    return None
