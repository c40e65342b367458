"""epsilon-approximate nullspace noise: the learned noise, the random baseline, and the epsilon statistic (Sec. 3.2-3.3).

A noise v of shape (1, N, D), added to the output of the patch projection, is in the epsilon-approximate nullspace
of a model f if the batch mean of ||softmax(f(u + v)) - softmax(f(u))||_2^2 is below epsilon. The authors learn it
by starting from a large uniform draw and minimising ||logits(u + v) - logits(u)||^2 with AdamW until the statistic,
checked before every update, falls below epsilon: the noise is returned near the epsilon boundary, which implements
"maximise ||v|| subject to v in the approximate nullspace" implicitly.
"""

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .classifier import frozen_eval_mode, unwrap
from .config import NullspaceArguments
from .embedding import inject_noise, noise_shape

logger = logging.getLogger(__name__)


@dataclass
class NoiseSynthesisResult:
    """
    The outcome of one noise synthesis.

    Attributes:
        noise (`torch.Tensor`): the noise, shape (1, N, D), float32, detached.
        updates (`int`): noise updates taken (for the random baseline: shrink steps).
        statistic (`float`): the last epsilon statistic measured (the one that stopped the synthesis).
        reached (`bool`): whether the statistic fell below epsilon.
        redraws (`int`): how often a non-finite noise or statistic forced a fresh draw.
    """

    noise: torch.Tensor
    updates: int
    statistic: float
    reached: bool
    redraws: int = 0

    @property
    def norm(self) -> float:
        """L2 norm of the noise."""
        return float(self.noise.norm())

    def summary(self) -> dict:
        """A JSON-serialisable record of this synthesis (without the noise itself)."""
        return {
            "norm": self.norm,
            "updates": self.updates,
            "statistic": self.statistic,
            "reached": self.reached,
            "redraws": self.redraws,
        }


def epsilon_statistic(clean_logits: torch.Tensor, noisy_logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of the squared L2 distance between the softmax vectors of clean and noisy logits."""
    clean = clean_logits.float().softmax(dim=-1)
    noisy = noisy_logits.float().softmax(dim=-1)
    return (noisy - clean).pow(2).sum(dim=-1).mean()


def _pixel_values(batch) -> torch.Tensor:
    return batch["pixel_values"] if isinstance(batch, dict) else batch


def _cycle(batches) -> Iterator[tuple[int, torch.Tensor]]:
    """Yields (position, pixel_values) endlessly; re-iterates sequences and re-iterable loaders."""
    if isinstance(batches, (dict, torch.Tensor)):
        batches = [batches]
    while True:
        empty = True
        for position, batch in enumerate(batches):
            empty = False
            yield position, _pixel_values(batch)
        if empty or iter(batches) is batches:
            return


class _Sync:
    """Keeps all processes on one noise: one initial draw, averaged gradients and statistics."""

    def __init__(self, accelerator):
        self.amp = accelerator
        self.accelerator = accelerator if accelerator is not None and accelerator.num_processes > 1 else None

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator is None:
            return tensor
        from accelerate.utils import broadcast

        return broadcast(tensor.contiguous(), from_process=0)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator is None:
            return tensor
        return self.accelerator.reduce(tensor.contiguous(), reduction="mean")

    def autocast(self):
        return self.amp.autocast() if self.amp is not None else contextlib.nullcontext()


def _logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).logits


def synthesize_noise(
    model: nn.Module,
    batches: torch.Tensor | dict | Sequence | Iterable,
    args: NullspaceArguments | None = None,
    accelerator=None,
    generator: torch.Generator | None = None,
) -> NoiseSynthesisResult:
    """
    Synthesises an epsilon-approximate nullspace noise for `model` (or the random baseline, by `args.nullspace_mode`).

    The learned noise follows the authors' runs: v ~ U(-limit, limit) of shape (1, N, D); AdamW(lr, weight decay)
    with a cosine schedule over `noise_max_updates`; the model in eval mode; before every update the epsilon
    statistic is measured on the current batch and the synthesis stops as soon as it is below epsilon; otherwise one
    update on the squared logit distance (or the paper's explicit objective). With several processes the initial
    draw is broadcast from the main process and the gradient and statistic are averaged, so all processes hold the
    same noise and stop on the same update.

    Args:
        model (`nn.Module`):
            The vision model (unwrapped or wrapped); its mode and `requires_grad` flags are restored afterwards and
            no parameter gradient is left behind.
        batches (`torch.Tensor`, `dict`, or a sequence/re-iterable of them):
            Batches of `pixel_values` (as the model takes them), cycled through one per update.
        args ([`NullspaceArguments`], *optional*):
            Hyperparameters; the authors' defaults when not given.
        accelerator (`accelerate.Accelerator`, *optional*):
            Synchronises the noise over processes and provides autocast.
        generator (`torch.Generator`, *optional*):
            Source of the initial draw; the global RNG when not given (so the Trainer's checkpointed RNG state makes
            a resumed run draw the same noise).

    Returns:
        [`NoiseSynthesisResult`]: the noise, updates taken, the final statistic and whether epsilon was reached.
    """
    args = args if args is not None else NullspaceArguments()
    if args.nullspace_mode == "none":
        raise ValueError("nullspace_mode='none' trains without noise: there is nothing to synthesise.")
    model = unwrap(model)
    sync = _Sync(accelerator)
    stream = _cycle(batches)
    module_name = args.nullspace_patch_embedding_module
    cache_clean = isinstance(batches, (dict, torch.Tensor, Sequence))
    clean_cache: dict[int, torch.Tensor] = {}

    def measure(position: int, pixel_values: torch.Tensor, noise: torch.Tensor, with_grad: bool):
        clean = clean_cache.get(position) if cache_clean else None
        with sync.autocast():
            if clean is None:
                with torch.no_grad():
                    clean = _logits(model, pixel_values).float()
                if cache_clean:
                    clean_cache[position] = clean
            with torch.set_grad_enabled(with_grad), inject_noise(model, noise, module_name=module_name):
                noisy = _logits(model, pixel_values).float()
        return clean, noisy

    with frozen_eval_mode(model):
        try:
            position, first = next(stream)
        except StopIteration:
            raise ValueError("synthesize_noise needs at least one batch of pixel_values.") from None
        shape = noise_shape(model, first, module_name)
        device = first.device
        pending = [(position, first)]

        def next_batch():
            return pending.pop() if pending else next(stream, (None, None))

        redraws = 0
        while True:
            if args.nullspace_mode == "random":
                result = _random_baseline(shape, device, args, sync, generator, next_batch, measure)
            else:
                result = _learned_noise(shape, device, args, sync, generator, next_batch, measure)
            if result is not None:
                result.redraws = redraws
                return result
            redraws += 1
            logger.warning("Noise synthesis produced a non-finite noise or statistic: redraw %d.", redraws)
            if redraws > args.noise_max_redraws:
                raise FloatingPointError(
                    f"Noise synthesis produced non-finite values {redraws} times in a row; check the model and "
                    "inputs for NaN/inf, or lower noise_lr / noise_init_limit."
                )


def _initial_draw(shape, device, sync, generator, sampler) -> torch.Tensor:
    noise = sampler(shape, generator)
    return sync.broadcast(noise.to(device))


def _learned_noise(shape, device, args, sync, generator, next_batch, measure) -> NoiseSynthesisResult | None:
    limit = args.noise_init_limit
    noise = _initial_draw(
        shape, device, sync, generator, lambda s, g: (torch.rand(s, generator=g) * 2 - 1) * limit
    ).requires_grad_(True)
    optimizer = torch.optim.AdamW([noise], lr=args.noise_lr, weight_decay=args.noise_weight_decay)
    total = args.noise_max_updates

    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / total)) if args.noise_cosine_schedule else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    updates, statistic = 0, float("nan")
    while True:
        position, pixel_values = next_batch()
        if pixel_values is None:
            break
        clean, noisy = measure(position, pixel_values, noise, with_grad=True)
        statistic = float(sync.mean(epsilon_statistic(clean, noisy.detach())))
        if not math.isfinite(statistic):
            return None
        if statistic < args.noise_epsilon or updates >= total:
            break
        if args.noise_objective == "logit_mse":
            loss = (noisy - clean).pow(2).sum(dim=-1).mean()
        else:
            loss = (noisy - clean).norm(dim=-1).mean() - args.noise_log_norm_weight * noise.norm().log()
        (grad,) = torch.autograd.grad(loss, noise)
        noise.grad = sync.mean(grad)
        optimizer.step()
        scheduler.step()
        updates += 1
        if not torch.isfinite(noise).all():
            return None
    return NoiseSynthesisResult(
        noise=noise.detach().float(), updates=updates, statistic=statistic, reached=statistic < args.noise_epsilon
    )


def _random_baseline(shape, device, args, sync, generator, next_batch, measure) -> NoiseSynthesisResult | None:
    noise = _initial_draw(shape, device, sync, generator, lambda s, g: torch.randn(s, generator=g))
    updates, statistic = 0, float("nan")
    while True:
        position, pixel_values = next_batch()
        if pixel_values is None:
            break
        clean, noisy = measure(position, pixel_values, noise, with_grad=False)
        statistic = float(sync.mean(epsilon_statistic(clean, noisy)))
        if not math.isfinite(statistic):
            return None
        if statistic < args.noise_epsilon or updates >= args.noise_max_updates:
            break
        noise = noise * args.noise_random_shrink
        updates += 1
    return NoiseSynthesisResult(
        noise=noise.float(), updates=updates, statistic=statistic, reached=statistic < args.noise_epsilon
    )
