"""`NullspaceTrainer`: a `transformers.Trainer` that finetunes on epsilon-approximate nullspace noise (Section 4)."""

import copy
import logging
import os
import random
import time
from collections.abc import Iterator

import datasets
import numpy as np
import torch
from accelerate.data_loader import BatchSamplerShard
from datasets.distributed import split_dataset_by_node
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .adversarial import ADVERSARIAL_MODES, AdversarialArguments, AdversarialTraining
from .config import NullspaceArguments
from .embedding import NoiseHook, find_patch_embedding
from .loss import LossReduction
from .model_inputs import model_inputs, repeat_rows, take_rows
from .noise_bank import NoiseBank, last_complete_checkpoint
from .patch_inputs import takes_patches
from .publishing import RunPublishingMixin
from .stream_training import StreamedTrainingMixin
from .synthesis import noise_statistic, synthesize_noise

logger = logging.getLogger(__name__)


class NullspaceTrainer(RunPublishingMixin, StreamedTrainingMixin, Trainer):
    """
    A [`~transformers.Trainer`] that finetunes on epsilon-approximate nullspace noise.

    At the first optimiser step and then every `noise_refresh_steps` optimiser steps it synthesises a fresh noise on
    the current batch (model in eval mode, all processes in step); every step trains on
    `CE(clean) + noisy_loss_weight * CE(noisy)`, the noise added at the patch embeddings. Gradient accumulation, mixed
    precision, distributed training and logging are the Trainer's own. The noise bank (every noise synthesised) and
    its history are training state: saved with every checkpoint and restored by `resume_from_checkpoint`.

    The baselines of the paper's Table 2 train in the same trainer: `nullspace_mode="madry"` (CE(x) + CE(PGD(x))) and
    `"trades"` (CE(x) + beta KL(f(x) || f(x_adv))), attacked in [0, 1] pixel space through the normalisation of
    `processing_class` (see `adversarial.py`); their attack statistics are logged with the training loss. A
    `peft.PeftModel` (see `lora.py`) trains its adapters in every mode.

    Args:
        nullspace_args ([`NullspaceArguments`], *optional*):
            The method's hyperparameters; the authors' defaults when not given.
        adversarial_args ([`AdversarialArguments`], *optional*):
            The attack and loss of modes `madry` and `trades`; the paper's Table 2 recipe when not given.
        *args, **kwargs:
            Everything [`~transformers.Trainer`] takes.

    Example:

    ```python
    >>> trainer = NullspaceTrainer(
    ...     model=model, args=training_args, train_dataset=train, data_collator=collate_fn,
    ...     nullspace_args=NullspaceArguments(noise_epsilon=0.03),
    ... )
    >>> trainer.train()
    ```
    """

    def __init__(
        self,
        *args,
        nullspace_args: NullspaceArguments | None = None,
        adversarial_args: AdversarialArguments | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.nullspace_args = nullspace_args if nullspace_args is not None else NullspaceArguments()
        self.noise_bank = NoiseBank(save_all=self.nullspace_args.noise_bank_save_all)
        mode = self.nullspace_args.nullspace_mode
        # modes madry / trades: adversarial training (adversarial.py), pixel-space PGD through the normalisation
        self.adversarial = (
            AdversarialTraining(mode, adversarial_args, self.processing_class) if mode in ADVERSARIAL_MODES else None
        )
        if self.adversarial is not None and takes_patches(self.model):
            raise ValueError(f"nullspace_mode={mode!r} attacks batches of images; this model takes patches (SigLIP2).")
        if self.uses_noise:
            find_patch_embedding(self.model, self.nullspace_args.nullspace_patch_embedding_module)
            if self.args.n_gpu > 1:
                raise ValueError(
                    f"nullspace_mode={mode!r} does not run under torch.nn.DataParallel (several GPUs in one process, "
                    f"here {self.args.n_gpu}): its one shared noise would live on one device. Launch one process per "
                    "GPU instead (`accelerate launch --multi_gpu ...` or `torchrun --nproc_per_node N ...`), or make "
                    "one GPU visible (CUDA_VISIBLE_DEVICES=0)."
                )
        if mode != "none":
            problem_type = getattr(self.model.config, "problem_type", None)
            if problem_type not in (None, "single_label_classification"):
                raise ValueError(
                    f"NullspaceTrainer trains single-label image classifiers; the model's problem_type is "
                    f"{problem_type!r}. Use nullspace_mode='none' or a single-label model."
                )

    @property
    def uses_noise(self) -> bool:
        """Whether the mode trains on a noise at the patch embeddings (not `none`, `madry` or `trades`)."""
        return self.nullspace_args.nullspace_mode not in ("none", *ADVERSARIAL_MODES)

    @property
    def noise(self) -> torch.Tensor | None:
        """The current noise (the newest of the bank), or `None` before the first synthesis and after a refresh that
        found no epsilon boundary (`no_boundary`: the steps until the next refresh train on the clean loss)."""
        if self.noise_history and self.noise_history[-1].get("no_boundary"):
            return None
        return self.noise_bank.latest

    @property
    def noise_history(self) -> list[dict]:
        """The records of every noise synthesised so far (step, norm, updates, statistic, reached, ...)."""
        return self.noise_bank.history

    def _refresh_due(self) -> bool:
        if not self.noise_history:
            return True
        step = self.state.global_step
        return step % self.nullspace_args.noise_refresh_steps == 0 and step != self.noise_history[-1]["step"]

    def refresh_noise(self, model: torch.nn.Module, inputs: dict, reason: str = "schedule") -> dict:
        """
        Synthesises a fresh noise, adds it to the bank, logs and returns its record. With `noise_synthesis_data=
        "batch"` the synthesis runs on `inputs` (its first `noise_synthesis_batch_size` rows, the rest held out);
        with `"stream"` on a stream of training batches from a second loader (`synthesis_stream`), one per update.
        Either way the statistic of the returned noise on the next batch of that stream, one it was never updated on,
        is recorded (`unseen_batch_statistic`, when the trainer has a training set). A synthesis that finds no
        epsilon boundary (`no_boundary`, e.g. a fresh head) is recorded as such, and the steps until the next refresh
        train on the clean loss.
        """
        start = time.perf_counter()
        args = self.nullspace_args
        stream = self.synthesis_stream() if args.noise_synthesis_data == "stream" or self._streamable() else None
        heldout = None
        if args.noise_synthesis_data == "stream":
            batches = stream
        else:
            batches = model_inputs(inputs)
            rows = args.noise_synthesis_batch_size
            if rows is not None and rows < batches["pixel_values"].shape[0]:
                batches, heldout = take_rows(batches, slice(None, rows)), take_rows(batches, slice(rows, None))
        warm_start = None
        if args.noise_warm_start and args.nullspace_mode != "random":
            # the previous learned noise (norm_matched trains on a random one and keeps the learned one aside, in the
            # bank, so that a resumed run warm-starts from it too)
            warm_start = self.noise_bank.learned if self.noise_bank.learned is not None else self.noise
        result = synthesize_noise(
            self.accelerator.unwrap_model(model),
            batches,
            args,
            accelerator=self.accelerator,
            heldout=heldout,
            init=warm_start,
        )
        record = {"step": self.state.global_step, **result.summary()}
        record["unseen_batch_statistic"] = None
        if stream is not None and not result.no_boundary:
            unseen = noise_statistic(model, next(stream), result.noise, args, accelerator=self.accelerator)
            record["unseen_batch_statistic"] = unseen
        record["unseen_batch_inside"] = (
            None if record["unseen_batch_statistic"] is None else record["unseen_batch_statistic"] < args.noise_epsilon
        )
        record["synthesis_data"] = args.noise_synthesis_data
        record["seconds"] = time.perf_counter() - start
        record["warm_start"] = warm_start is not None
        record["reason"] = reason
        self.noise_bank.append(result.noise, record, learned=result.learned_noise)
        self.log(
            {
                f"noise_{key}": float(value)
                for key, value in record.items()
                if key not in ("step", "reason", "synthesis_data") and value is not None
            }
        )
        return record

    def synthesis_stream(self) -> Iterator[dict]:
        """
        An endless stream of training batches (their model inputs on the device) for the noise synthesis, drawn
        by a second loader built like the trainer's own: the same collator (unused columns removed), batch size,
        DataLoader settings and per-process share (every process draws its own batches: a shard of one random order
        of a map-style set, this process's share of a streamed one). It has its own order and RNG, seeded by
        `data_seed` (or `seed`) and the optimiser step, so the trainer's own batches, order and RNG state are
        untouched and a resumed run draws the same synthesis batches. A streamed set is read from its start (its
        shuffling, if any, at an epoch of its own) on a copy of the dataset, so the training stream's position is
        untouched too.
        """
        if not self._streamable():
            found = "no train_dataset" if self.train_dataset is None else type(self.train_dataset).__name__
            raise ValueError(
                "The noise synthesis stream draws batches from the training set: it needs a map-style dataset or a "
                f"`datasets.IterableDataset` as train_dataset, got {found}. Pass one, or use "
                "noise_synthesis_data='batch'."
            )
        base = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        seed = (base * 1_000_003 + self.state.global_step) % 2**63
        generator = torch.Generator().manual_seed(seed)
        dataset, collator = self.train_dataset, self.data_collator
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        loader_args = {
            "collate_fn": collator,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory,
            "prefetch_factor": self.args.dataloader_prefetch_factor,
            "multiprocessing_context": self.args.dataloader_multiprocessing_context,
            "generator": generator,
        }
        if isinstance(dataset, datasets.IterableDataset):
            share = self._stream_dataset
            if share is None:
                share = split_dataset_by_node(dataset, rank=rank, world_size=world) if world > 1 else dataset
            dataset = copy.deepcopy(share)
            dataset._starting_state_dict = None  # from its start, also after a resume moved the training stream on
            dataset.set_epoch(seed % 2**31)
            loader_args["collate_fn"] = self._get_collator_with_removed_columns(collator, description="Training")
            loader = DataLoader(dataset, batch_size=self._train_batch_size, **loader_args)
        else:
            if isinstance(dataset, datasets.Dataset):
                dataset = self._remove_unused_columns(dataset, description="Training")
            else:
                loader_args["collate_fn"] = self._get_collator_with_removed_columns(collator, description="Training")
            batches = BatchSampler(
                RandomSampler(dataset, generator=generator), self._train_batch_size, self.args.dataloader_drop_last
            )
            if world > 1:
                batches = BatchSamplerShard(batches, num_processes=world, process_index=rank, even_batches=True)
            loader = DataLoader(dataset, batch_sampler=batches, **loader_args)
        return self._stream_batches(loader, seed)

    def _streamable(self) -> bool:
        dataset = self.train_dataset
        streamed = isinstance(dataset, datasets.IterableDataset)
        return dataset is not None and (streamed or not isinstance(dataset, torch.utils.data.IterableDataset))

    def _stream_batches(self, loader: DataLoader, seed: int) -> Iterator[dict]:
        # the loader's transforms run under RNG states of their own (torch CPU, Python, NumPy), swapped in for each
        # draw, so the trainer's RNG state (checkpointed, and drawing the noise and the training augmentations) is
        # untouched
        own = (
            torch.Generator().manual_seed(seed).get_state(),
            random.Random(seed).getstate(),
            np.random.RandomState(seed % 2**32).get_state(),
        )
        iterator, empty = None, True
        while True:
            saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
            torch.set_rng_state(own[0]), random.setstate(own[1]), np.random.set_state(own[2])
            try:
                if iterator is None:
                    iterator = iter(loader)
                batch = next(iterator, None)
                own = torch.get_rng_state(), random.getstate(), np.random.get_state()
            finally:
                torch.set_rng_state(saved[0]), random.setstate(saved[1]), np.random.set_state(saved[2])
            if batch is None:  # one pass over the data: the next pass in a fresh order
                if empty:
                    raise ValueError("The training set gave no batch to synthesise the noise on: it is empty.")
                iterator = None
                continue
            empty = False
            yield model_inputs(self._prepare_inputs(batch))

    # ---- the training step: one hook for the run, the noise on the device, no per-step collective ------------------

    # Under several processes, a non-finite noisy loss is handled on its own process at once (that step trains on the
    # clean loss there) and the processes agree on redrawing the noise every this many optimiser steps: one
    # one-element all-reduce, not one per step. A single process redraws at once.
    non_finite_check_steps = 10
    _noise_hook: NoiseHook | None = None
    _noise_hook_owner: torch.nn.Module | None = None
    _keep_noise_hook = False
    _non_finite_losses = 0
    _last_agreement_step = -1

    def _synthesis_model(self, model):
        # synthesis runs on the plain module: a compiled model would be traced again for synthesis's own hooks,
        # eval mode and frozen parameters
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.uses_noise:
            if self.accelerator.num_processes > 1:
                self._agree_on_non_finite_losses(model, inputs)
            if self._refresh_due():
                self.refresh_noise(self._synthesis_model(model), self._prepare_inputs(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

    def _agree_on_non_finite_losses(self, model, inputs) -> None:
        step = self.state.global_step
        if step % self.non_finite_check_steps or step == self._last_agreement_step:
            return
        self._last_agreement_step = step
        count = torch.tensor([float(self._non_finite_losses)], device=self.args.device)
        self._non_finite_losses = 0
        if float(self.accelerator.reduce(count, reduction="sum")) > 0:
            logger.warning("Non-finite noisy losses since the last check (step %d): redrawing the noise.", step)
            self.refresh_noise(self._synthesis_model(model), self._prepare_inputs(inputs), reason="non-finite loss")

    def _noise_hook_for(self, model) -> NoiseHook:
        """The noise hook on `model`'s patch projection: installed once, found again by identity on every step."""
        hook = self._noise_hook
        if hook is not None and self._noise_hook_owner is model:
            return hook
        _, projection = find_patch_embedding(model, self.nullspace_args.nullspace_patch_embedding_module)
        if hook is None or hook.projection is not projection:
            self._remove_noise_hook()
            hook = self._noise_hook = NoiseHook(model, self.nullspace_args.nullspace_patch_embedding_module)
        self._noise_hook_owner = model
        return hook

    def _remove_noise_hook(self) -> None:
        if self._noise_hook is not None:
            self._noise_hook.remove()
        self._noise_hook = self._noise_hook_owner = None

    @property
    def loss_reduction(self) -> LossReduction:
        """How every mode reduces its losses: as the model's own loss and `Trainer.compute_loss` do (see `loss.py`),
        so mode `none` and weight 0 give the same gradient."""
        return LossReduction.of_trainer(self)

    @staticmethod
    def _model_kwargs(inputs) -> dict:
        return {k: v for k, v in inputs.items() if k not in ("pixel_values", "labels")}

    def _forward(self, model, inputs, hook: NoiseHook):
        pixel_values = inputs["pixel_values"]
        extra = self._model_kwargs(inputs)
        if self.nullspace_args.noise_shared_forward:
            with hook.enabled("halves"):  # rows B..2B of the doubled batch get the noise
                outputs = model(**repeat_rows(model_inputs(inputs)))
            clean_logits, noisy_logits = outputs.logits.split(pixel_values.shape[0])
            return outputs, clean_logits, noisy_logits
        outputs = model(pixel_values=pixel_values, **extra)
        with hook.enabled("all"):
            noisy_logits = model(pixel_values=pixel_values, **extra).logits
        return outputs, outputs.logits, noisy_logits

    def _clean_step(self, model, inputs, num_items_in_batch):
        # a fresh clean-only forward: the clean rows of a shared pass with non-finite noisy rows would still carry
        # NaN into the parameter gradients (0 * NaN) through the shared weights
        outputs = model(pixel_values=inputs["pixel_values"], **self._model_kwargs(inputs))
        return self.loss_reduction.cross_entropy(outputs.logits, inputs["labels"], num_items_in_batch), outputs

    @staticmethod
    def _finite_here(value: torch.Tensor) -> bool:
        """Whether `value` is finite on this process: a local check (one host sync, as the Trainer's own NaN filter
        does every step), no collective; processes agree every `non_finite_check_steps` steps."""
        return bool(torch.isfinite(value.detach()).all())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        Clean CE + `noisy_loss_weight` * noisy CE while training with a noise; the Trainer's own loss otherwise
        (mode `none`, evaluation). A non-finite noisy loss redraws the noise on this batch (logged); if the fresh
        noise fails too, this step trains on the clean loss alone. Under several processes the process that saw it
        trains this step on the clean loss and all processes redraw at the next agreement (`non_finite_check_steps`).
        """
        if self.adversarial is not None and model.training:  # madry / trades, see adversarial.py
            return self.adversarial.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        if self.nullspace_args.nullspace_mode == "none" or self.noise is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        hook = self._noise_hook_for(model)
        try:
            for attempt in range(2):
                if hook.source is not self.noise:
                    hook.set_noise(self.noise)  # once per refresh: the only host-to-device copy of the noise
                outputs, clean_logits, noisy_logits = self._forward(model, inputs, hook)
                clean_loss = self.loss_reduction.cross_entropy(clean_logits, labels, num_items_in_batch)
                noisy_loss = self.loss_reduction.cross_entropy(noisy_logits, labels, num_items_in_batch)
                if self._finite_here(noisy_loss):
                    loss = clean_loss + self.nullspace_args.noisy_loss_weight * noisy_loss
                    break
                if self.accelerator.num_processes > 1:
                    self._non_finite_losses += 1
                    logger.warning(
                        "Non-finite noisy loss at step %d on process %d: this step trains on the clean loss here; "
                        "the noise is redrawn at the next check.",
                        self.state.global_step,
                        self.accelerator.process_index,
                    )
                    loss, outputs = self._clean_step(model, inputs, num_items_in_batch)
                    break
                if attempt == 0:
                    logger.warning("Non-finite noisy loss at step %d: redrawing the noise.", self.state.global_step)
                    self.refresh_noise(self._synthesis_model(model), inputs, reason="non-finite loss")
            else:
                logger.warning(
                    "The redrawn noise gives a non-finite loss too: step %d trains on the clean loss.",
                    self.state.global_step,
                )
                loss, outputs = self._clean_step(model, inputs, num_items_in_batch)
        finally:
            if not self._keep_noise_hook:  # called outside train(): leave no hook behind
                self._remove_noise_hook()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # adversarial modes: the attack's statistics since the last log go with the training loss (all processes
        # call this at the same step, so the mean over processes is one collective here)
        if self.adversarial is not None and "loss" in logs:
            logs.update(self.adversarial.pop_stats(self.accelerator))
        super().log(logs, start_time)

    # ---- noise state: saved with every checkpoint, restored on resume ---------------------------------------------

    def save_noise_state(self, output_dir: str) -> None:
        """Writes the current noise (every noise with `noise_bank_save_all`), the noise history and the method's
        arguments to `output_dir` (see [`NoiseBank.save`])."""
        self.noise_bank.save(output_dir, self.nullspace_args.to_dict())

    def load_noise_state(self, checkpoint: str) -> None:
        """Restores the noise bank saved by `save_noise_state`."""
        self.noise_bank = NoiseBank.load(checkpoint, save_all=self.nullspace_args.noise_bank_save_all)

    def _save_checkpoint(self, model, trial):
        # rotate old checkpoints only once this one is complete, so a crash mid-save never leaves none loadable
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = self._get_output_dir(trial=trial)
        if self.args.should_save:
            self.save_noise_state(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        # transformers 5.x writes checkpoints under its legacy parameter names (e.g. `attention.attention.key`) and
        # Trainer reloads them without converting, silently skipping those weights (seen with 5.23 and 5.24 on ViT),
        # from a single `model.safetensors` and from shards (`model.safetensors.index.json`) alike: reload through
        # from_pretrained, which converts, so a resumed run really starts from the checkpoint. FSDP resumes from its
        # own state dict (`pytorch_model_fsdp*`, module names) into sharded parameters: left to it.
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        saved = [os.path.join(resume_from_checkpoint, name) for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)]
        if not self.is_fsdp_enabled and isinstance(target, PreTrainedModel) and any(map(os.path.isfile, saved)):
            dtype = next(target.parameters()).dtype
            reloaded = type(target).from_pretrained(resume_from_checkpoint, config=target.config, dtype=dtype)
            target.load_state_dict(reloaded.state_dict())
        self.load_noise_state(resume_from_checkpoint)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """[`~transformers.Trainer.train`]; `resume_from_checkpoint=True` takes the newest complete checkpoint."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir}).")
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            # the noise bank is training state on every engine: restored here too, because under DeepSpeed the
            # Trainer resumes through the engine's own checkpoint and never calls `_load_from_checkpoint`
            self.load_noise_state(resume_from_checkpoint)
        # the noise hook is installed once for the run (before any forward pass, so a compiled model is traced with
        # it) and removed afterwards; steps only switch it on and off
        self._keep_noise_hook = True
        try:
            if self.uses_noise:
                self._noise_hook_for(self.model)
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        finally:
            self._keep_noise_hook = False
            self._remove_noise_hook()
        if self.args.should_save and len(self.noise_bank):
            self.noise_bank.export(self.args.output_dir, self.nullspace_args.to_dict())
        return output
