"""One loss reduction for every mode of the trainer, the one `transformers.Trainer` applies to its own loss.

Under gradient accumulation the Trainer hands each micro-batch `num_items_in_batch`, the number of labelled items in
the whole accumulated batch; a model that accepts loss kwargs then sums its loss over the micro-batch and divides by
that number, so the accumulated gradient is the gradient of the mean over the whole batch. Under
`average_tokens_across_devices` the Trainer gathers that number over the processes, and the loss is multiplied back
by the number of processes (DDP averages the gradients). [`LossReduction`] does exactly this for the noisy, clean,
adversarial and TRADES terms, so every mode's loss is on the scale of the Trainer's own.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossReduction:
    """
    How a per-example loss is reduced to the micro-batch's loss.

    Args:
        sum_over_items (`bool`):
            Whether the model takes loss kwargs (`Trainer.model_accepts_loss_kwargs`): with `num_items_in_batch`, the
            loss is the sum over the micro-batch divided by it; otherwise (or without it) the mean.
        device_factor (`int`, *optional*, defaults to 1):
            The factor of `average_tokens_across_devices` (the number of processes, or of GPUs under
            `nn.DataParallel`), applied with `num_items_in_batch`.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the cross-entropy (`TrainingArguments.label_smoothing_factor`).
    """

    sum_over_items: bool
    device_factor: int = 1
    label_smoothing: float = 0.0

    @classmethod
    def of_trainer(cls, trainer) -> "LossReduction":
        """The reduction a `transformers.Trainer` applies to its own loss, from its public state and arguments."""
        args = trainer.args
        factor = 1
        if args.average_tokens_across_devices:
            factor = trainer.accelerator.num_processes // trainer.get_tp_size() if args.n_gpu <= 1 else args.n_gpu
        return cls(
            sum_over_items=bool(trainer.model_accepts_loss_kwargs),
            device_factor=factor,
            label_smoothing=args.label_smoothing_factor,
        )

    def _scaled(self, num_items_in_batch) -> bool:
        return self.sum_over_items and num_items_in_batch is not None

    def _per_item(self, total: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        items = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        return total / items * self.device_factor

    def reduce(self, per_example: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """`per_example` (one value per row) reduced to the micro-batch's loss."""
        if not self._scaled(num_items_in_batch):
            return per_example.mean()
        return self._per_item(per_example.sum(), num_items_in_batch)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """The cross-entropy of `logits` against `labels`, reduced as the model's own loss (and `Trainer`'s) is."""
        scaled = self._scaled(num_items_in_batch)
        loss = F.cross_entropy(
            logits, labels, reduction="sum" if scaled else "mean", label_smoothing=self.label_smoothing
        )
        return self._per_item(loss, num_items_in_batch) if scaled else loss
