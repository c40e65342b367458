"""`NullspaceTrainer`: a `transformers.Trainer` that finetunes on epsilon-approximate nullspace noise (Section 4)."""

import logging
import os
import time

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_NAME

from .config import NullspaceArguments
from .embedding import find_patch_embedding, inject_noise
from .noise_bank import NOISE_NORM_FIGURE, NoiseBank, last_complete_checkpoint
from .synthesis import synthesize_noise

logger = logging.getLogger(__name__)


class NullspaceTrainer(Trainer):
    """
    A [`~transformers.Trainer`] that finetunes on epsilon-approximate nullspace noise.

    At the first optimiser step and then every `noise_refresh_steps` optimiser steps it synthesises a fresh noise on
    the current batch (model in eval mode, all processes in step); every step trains on
    `CE(clean) + noisy_loss_weight * CE(noisy)`, the noise added at the patch embeddings. Gradient accumulation, mixed
    precision, distributed training and logging are the Trainer's own. The noise bank (every noise synthesised) and
    its history are training state: saved with every checkpoint and restored by `resume_from_checkpoint`.

    Args:
        nullspace_args ([`NullspaceArguments`], *optional*):
            The method's hyperparameters; the authors' defaults when not given.
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

    def __init__(self, *args, nullspace_args: NullspaceArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nullspace_args = nullspace_args if nullspace_args is not None else NullspaceArguments()
        self.noise_bank = NoiseBank()
        self.run_info: dict = {}
        if self.nullspace_args.nullspace_mode != "none":
            find_patch_embedding(self.model, self.nullspace_args.nullspace_patch_embedding_module)
            problem_type = getattr(self.model.config, "problem_type", None)
            if problem_type not in (None, "single_label_classification"):
                raise ValueError(
                    f"NullspaceTrainer trains single-label image classifiers; the model's problem_type is "
                    f"{problem_type!r}. Use nullspace_mode='none' or a single-label model."
                )

    @property
    def noise(self) -> torch.Tensor | None:
        """The current noise (the newest of the bank), or `None` before the first synthesis."""
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
        Synthesises a fresh noise on `inputs` (its first `noise_synthesis_batch_size` rows, the rest held out), adds
        it to the bank, logs and returns its record.
        """
        start = time.perf_counter()
        args = self.nullspace_args
        pixel_values, heldout = inputs["pixel_values"], None
        rows = args.noise_synthesis_batch_size
        if rows is not None and rows < pixel_values.shape[0]:
            pixel_values, heldout = pixel_values[:rows], pixel_values[rows:]
        warm_start = None
        if args.noise_warm_start and args.nullspace_mode != "random":
            # the previous learned noise (norm_matched trains on a random one and keeps the learned one aside)
            warm_start = getattr(self, "_last_learned_noise", None)
            warm_start = warm_start if warm_start is not None else self.noise
        result = synthesize_noise(
            self.accelerator.unwrap_model(model),
            {"pixel_values": pixel_values},
            args,
            accelerator=self.accelerator,
            heldout=heldout,
            init=warm_start,
        )
        self._last_learned_noise = result.learned_noise if result.learned_noise is not None else result.noise
        record = {"step": self.state.global_step, **result.summary(), "seconds": time.perf_counter() - start}
        record["warm_start"] = warm_start is not None
        record["reason"] = reason
        self.noise_bank.append(result.noise, record)
        self.log(
            {
                f"noise_{key}": float(value)
                for key, value in record.items()
                if key not in ("step", "reason") and value is not None
            }
        )
        return record

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.nullspace_args.nullspace_mode != "none" and self._refresh_due():
            self.refresh_noise(model, self._prepare_inputs(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

    def _classification_loss(self, logits, labels, num_items_in_batch):
        # mirrors the model's own loss and Trainer.compute_loss, so mode "none" and weight 0 give the same gradient
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        loss = F.cross_entropy(
            logits,
            labels,
            reduction="sum" if scaled else "mean",
            label_smoothing=self.args.label_smoothing_factor,
        )
        if scaled:
            loss = loss / (
                num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            )
            if self.args.average_tokens_across_devices:
                loss = loss * (
                    self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu
                )
        return loss

    def _forward(self, model, inputs, noise):
        pixel_values = inputs["pixel_values"]
        extra = {k: v for k, v in inputs.items() if k not in ("pixel_values", "labels")}
        module_name = self.nullspace_args.nullspace_patch_embedding_module
        batch_size = pixel_values.shape[0]
        if self.nullspace_args.noise_shared_forward:
            with inject_noise(model, noise, rows=slice(batch_size, 2 * batch_size), module_name=module_name):
                outputs = model(pixel_values=torch.cat([pixel_values, pixel_values]), **extra)
            clean_logits, noisy_logits = outputs.logits.split(batch_size)
            return outputs, clean_logits, noisy_logits
        outputs = model(pixel_values=pixel_values, **extra)
        with inject_noise(model, noise, module_name=module_name):
            noisy_logits = model(pixel_values=pixel_values, **extra).logits
        return outputs, outputs.logits, noisy_logits

    def _finite_on_all_processes(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.accelerator.num_processes > 1:
            finite = self.accelerator.gather(finite).min()
        return bool(finite)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        Clean CE + `noisy_loss_weight` * noisy CE while training with a noise; the Trainer's own loss otherwise
        (mode `none`, evaluation). A non-finite noisy loss on any process redraws the noise on this batch (logged);
        if the fresh noise fails too, this step trains on the clean loss alone.
        """
        if self.nullspace_args.nullspace_mode == "none" or self.noise is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        for attempt in range(2):
            outputs, clean_logits, noisy_logits = self._forward(model, inputs, self.noise.to(labels.device))
            clean_loss = self._classification_loss(clean_logits, labels, num_items_in_batch)
            noisy_loss = self._classification_loss(noisy_logits, labels, num_items_in_batch)
            if self._finite_on_all_processes(noisy_loss):
                loss = clean_loss + self.nullspace_args.noisy_loss_weight * noisy_loss
                break
            if attempt == 0:
                logger.warning("Non-finite noisy loss at step %d: redrawing the noise.", self.state.global_step)
                self.refresh_noise(model, inputs, reason="non-finite loss")
        else:
            logger.warning(
                "The redrawn noise gives a non-finite loss too: step %d trains on the clean loss.",
                self.state.global_step,
            )
            loss = clean_loss
        return (loss, outputs) if return_outputs else loss

    # ---- noise state: saved with every checkpoint, restored on resume ---------------------------------------------

    def save_noise_state(self, output_dir: str) -> None:
        """Writes the noise bank and the method's arguments to `output_dir` (see [`NoiseBank.save`])."""
        self.noise_bank.save(output_dir, self.nullspace_args.to_dict())

    def load_noise_state(self, checkpoint: str) -> None:
        """Restores the noise bank saved by `save_noise_state`."""
        self.noise_bank = NoiseBank.load(checkpoint)

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
        # Trainer reloads them without converting, silently skipping those weights (seen with 5.23 on ViT):
        # reload through from_pretrained, which converts, so a resumed run really starts from the checkpoint.
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if isinstance(target, PreTrainedModel) and os.path.isfile(
            os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        ):
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
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if self.args.should_save and len(self.noise_bank):
            self.noise_bank.export(self.args.output_dir, self.nullspace_args.to_dict())
        return output

    # ---- publishing: the robust card and an exact upload set instead of the Trainer's generic ones ----------------

    def collect_results(self) -> dict:
        """
        The run's results (see `card.collect_results`): what the trainer knows (name, base model, arguments, noise
        history, figures in the output folder) and what the caller added to `run_info` (data, metrics, robustness).
        """
        from .card import collect_results

        output_dir = self.args.output_dir
        name = self.args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
        info = dict(self.run_info)
        figures = [f for f in (NOISE_NORM_FIGURE,) if os.path.isfile(os.path.join(output_dir, f))]
        return collect_results(
            model_name=name.split("/")[-1],
            base_model=info.pop("base_model", getattr(self.model.config, "_name_or_path", None)),
            license=info.pop("license", "apache-2.0"),
            nullspace_args=self.nullspace_args.to_dict(),
            training_args=self.args.to_dict(),
            noise_history=self.noise_history,
            figures=figures + info.pop("figures", []),
            **info,
        )

    def create_model_card(self, **kwargs) -> None:
        """
        Writes `results.json` and the robust model card (method, arguments, robustness table and `model-index`) to
        `output_dir`, instead of the Trainer's generic card.
        """
        if not self.is_world_process_zero():
            return
        from .card import save_results, write_model_card

        results = self.collect_results()
        save_results(self.args.output_dir, results)
        write_model_card(self.args.output_dir, results, repo_id=self.args.hub_model_id)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> str | None:
        """
        Saves the model and uploads the finished run with `hub.push_run` (which writes the card for the repo):
        weights, image processor, card, figures, results and the noise bank, never checkpoints or optimiser states.
        """
        from .card import save_results
        from .hub import push_run

        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        if len(self.noise_bank):
            self.noise_bank.export(self.args.output_dir, self.nullspace_args.to_dict())
        save_results(self.args.output_dir, self.collect_results())
        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        return push_run(
            self.args.output_dir,
            repo_id,
            token=token or self.args.hub_token,
            private=bool(self.args.hub_private_repo),
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
        )
