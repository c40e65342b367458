"""Training on a streamed dataset that scales out and resumes without re-reading: the Trainer's train data loader.

`StreamedTrainingMixin` (a base of `NullspaceTrainer`) replaces the Trainer's train data loader when the training set
is a `datasets.IterableDataset`:

- every process reads its own share of the stream (`data.streams.split_stream`, done by `build_trainer` before
  decoding; a stream passed unsplit is split here with `split_dataset_by_node`); no batch is dispatched from the main
  process; DataLoader workers split a process's shards further.
- the stream's position (`IterableDataset.state_dict()`) after the last batch trained is saved with every checkpoint
  (`stream_state_<process>.json`) and restored on resume, so the stream starts where it stopped instead of being read
  again up to there (with `dataloader_num_workers=0`; with workers the Trainer's fast-forward re-reads).
- `stream_reads` holds this process's counts: rows read and decoded, rows re-read on resume.
"""

from __future__ import annotations

import json
import logging
import os

import datasets
import torch
from accelerate.data_loader import prepare_data_loader
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from .data.streams import ReadTally, split_strategy, stream_tally

logger = logging.getLogger(__name__)

# a batch's note of where the stream stood after its last row (popped before the batch reaches the model)
STREAM_SNAPSHOT = "__stream_snapshot__"
STREAM_STATE_NAME = "stream_state_{}.json"


class StreamRows(torch.utils.data.IterableDataset):
    """The rows of a streamed dataset; the last row of every batch carries a snapshot of the stream (its position
    right after that row and the rows read and decoded so far), taken where the rows are read (a DataLoader worker)."""

    def __init__(self, dataset: datasets.IterableDataset, tally: ReadTally, batch_size: int):
        self.dataset, self.tally, self.batch_size = dataset, tally, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _snapshot(self, state: dict, counts: dict) -> dict:
        worker = torch.utils.data.get_worker_info()
        return {"state": state, "worker": worker.id if worker else 0, **counts}

    def __iter__(self):
        rows = iter(self.dataset)
        row, count = next(rows, None), 0
        while row is not None:
            count += 1
            boundary = count % self.batch_size == 0
            before = (self.dataset.state_dict(), self.tally.as_dict()) if boundary else None
            following = next(rows, None)
            snapshot = None
            if following is None:
                snapshot = self._snapshot(self.dataset.state_dict(), self.tally.as_dict())
            elif boundary:
                snapshot = self._snapshot(_position_after_batch(before[0], self.dataset.state_dict()), before[1])
            yield {**row, STREAM_SNAPSHOT: snapshot}
            row = following


def _position_after_batch(before: dict, after: dict) -> dict:
    """The stream's position after a batch's last row.

    A batched `map` (the decoding in `prepare_dataset`) records its position at the start of the map batch being
    yielded, so `before` (taken right after the last row) would make a resume decode that map batch again. When the
    next row opened a new map batch (`after`: one row into it), the position at that map batch's start is exactly
    the one after the last row: that is returned. Otherwise `before` (exact, at the cost of decoding one map batch
    again on resume).
    """
    state = after.get("examples_iterable")
    while isinstance(state, dict):
        if state.get("type") == "MappedExamplesIterable" and state.get("previous_state") is not None:
            if state["num_examples_since_previous_state"] != 1:
                return before
            state["num_examples_since_previous_state"] = 0
            return after
        state = state.get("examples_iterable")
    return before


class _SnapshotCollator:
    """Collates rows with the wrapped collator and puts the batch's last snapshot under `STREAM_SNAPSHOT`."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows: list[dict]) -> dict:
        snapshots = [row.pop(STREAM_SNAPSHOT, None) for row in rows]
        batch = self.collate(rows)
        batch[STREAM_SNAPSHOT] = next((s for s in reversed(snapshots) if s is not None), None)
        return batch


class StreamedTrainingMixin:
    """A `transformers.Trainer` mixin: per-process streamed training and resume from the saved stream position."""

    _stream_dataset: datasets.IterableDataset | None = None
    _stream_tally: ReadTally | None = None
    _stream_checkpoint: str | None = None

    def get_train_dataloader(self):
        dataset = self.train_dataset
        if not isinstance(dataset, datasets.IterableDataset):
            return super().get_train_dataloader()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        strategy = split_strategy(dataset)
        if world > 1 and strategy is None:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
            strategy = split_strategy(dataset)
            if strategy == "examples":
                logger.warning(
                    "The streamed training set has %d shards for %d processes: every process reads and decodes every "
                    "row and keeps 1 in %d. Split it before decoding (`data.streams.split_stream`) or use a number of "
                    "shards divisible by the number of processes.",
                    dataset.num_shards,
                    world,
                    world,
                )
        self._stream_dataset = dataset
        self._stream_tally = stream_tally(dataset) or ReadTally()
        self._stream_snapshots: dict[int, dict] = {}
        self._stream_resume = {"rows_reread_on_resume": 0, "resumed_from_stream_position": None}
        self._stream_split = strategy or "one process"
        args = self.args
        loader = DataLoader(
            StreamRows(dataset, self._stream_tally, self._train_batch_size),
            batch_size=self._train_batch_size,
            collate_fn=_SnapshotCollator(
                self._get_collator_with_removed_columns(self.data_collator, description="Training")
            ),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            prefetch_factor=args.dataloader_prefetch_factor,
            drop_last=args.dataloader_drop_last,
        )
        # one process's loader: the stream is already this process's share, so accelerate must not split or dispatch
        prepared = prepare_data_loader(
            loader,
            self.accelerator.device,
            num_processes=1,
            process_index=0,
            put_on_device=self.accelerator.device_placement,
            rng_types=self.accelerator.rng_types.copy(),
            dispatch_batches=False,
            non_blocking=self.accelerator.non_blocking,
        )
        self.accelerator._dataloaders.append(prepared)
        return prepared

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batch_samples:
            snapshot = batch.pop(STREAM_SNAPSHOT, None) if isinstance(batch, dict) else None
            if snapshot is not None:
                self._stream_snapshots[snapshot["worker"]] = snapshot
        return batch_samples, num_items_in_batch

    @property
    def stream_reads(self) -> dict | None:
        """This process's reads of the streamed training set (`None` for an in-memory one): `process_index`,
        `num_processes`, `split` (`shards`, `examples` or `one process`), `rows_read` and `rows_decoded` (up to the
        last batch trained, summed over DataLoader workers, counted from the start of the run), `rows_reread_on_resume`
        and `resumed_from_stream_position` (`None` without a resume)."""
        if self._stream_dataset is None:
            return None
        snapshots = list(self._stream_snapshots.values())
        return {
            "process_index": self.accelerator.process_index,
            "num_processes": self.accelerator.num_processes,
            "split": self._stream_split,
            "rows_read": sum(s["rows_read"] for s in snapshots),
            "rows_decoded": sum(s["rows_decoded"] for s in snapshots),
            **self._stream_resume,
        }

    def gather_stream_reads(self) -> list[dict] | None:
        """`stream_reads` of every process, in process order (a collective: every process calls it)."""
        if self.accelerator.num_processes == 1 or not torch.distributed.is_initialized():
            return None if self.stream_reads is None else [self.stream_reads]
        gathered = [None] * self.accelerator.num_processes
        torch.distributed.all_gather_object(gathered, self.stream_reads)
        return None if all(entry is None for entry in gathered) else gathered

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self._stream_dataset is None or not self._stream_snapshots:
            return
        # one reader: the position can be restored; DataLoader workers each hold their own
        single = list(self._stream_snapshots) == [0] and not self.args.dataloader_num_workers
        record = {**self.stream_reads, "state": self._stream_snapshots[0].get("state") if single else None}
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, STREAM_STATE_NAME.format(self.accelerator.process_index))
        with open(path, "w") as handle:
            json.dump(record, handle)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        self._stream_checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        if self._stream_dataset is None:
            return super().get_resumed_dataloader(dataloader, num_batches)
        saved = self._saved_stream_state()
        if saved is not None:
            self._stream_dataset.load_state_dict(saved["state"])
            self._stream_tally.restore(saved)
            self._stream_snapshots = {0: {"rows_read": saved["rows_read"], "rows_decoded": saved["rows_decoded"]}}
            self._stream_resume = {"rows_reread_on_resume": 0, "resumed_from_stream_position": True}
            return dataloader
        logger.warning(
            "Resuming the stream by reading again the %d batches already trained on (no saved stream position "
            "usable here: it needs dataloader_num_workers=0 and the same number of processes).",
            num_batches,
        )
        self._stream_resume = {
            "rows_reread_on_resume": num_batches * self._train_batch_size,
            "resumed_from_stream_position": False,
        }
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _saved_stream_state(self) -> dict | None:
        if self._stream_checkpoint is None or self.args.dataloader_num_workers:
            return None
        path = os.path.join(self._stream_checkpoint, STREAM_STATE_NAME.format(self.accelerator.process_index))
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            saved = json.load(handle)
        if saved.get("state") is None or saved.get("num_processes") != self.accelerator.num_processes:
            return None
        return saved
