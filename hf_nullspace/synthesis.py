"""epsilon-approximate nullspace noise: the learned noise, the random baseline, the epsilon statistic (Sec. 3.2-3.3).

A noise v of shape (1, N, D), added to the output of the patch projection, is in the epsilon-approximate nullspace
of a model f if the batch mean of ||softmax(f(u + v)) - softmax(f(u))||_2^2 is below epsilon. The authors learn it
by starting from a large uniform draw and minimising ||logits(u + v) - logits(u)||^2 with AdamW until the statistic,
checked before every update, falls below epsilon: the noise is returned near the epsilon boundary, which implements
"maximise ||v|| subject to v in the approximate nullspace" implicitly.
"""

import collections
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .classifier import frozen_eval_mode, unwrap
from .config import NullspaceArguments
from .embedding import find_patch_embedding, inject_noise, noise_shape
from .model_inputs import model_inputs

logger = logging.getLogger(__name__)

# no-grad forward passes of the scale calibration: doublings/halvings to a bracket, then bisections inside it. The
# bracket is searched down to 2**-10 times the RMS of the patch embeddings and up to `noise_max_norm_ratio` times it:
# a model whose predictions stay inside epsilon under a noise that large does not read its input yet. The start,
# `noise_init_factor` times the boundary, is capped at that limit too (still outside epsilon, as the boundary is).
CALIBRATION_MAX_DOUBLINGS = 10
CALIBRATION_BISECTIONS = 3
# bisection steps of the fallback that shrinks a capped noise along its learned direction until inside epsilon
FALLBACK_BISECTIONS = 10


@dataclass
class NoiseSynthesisResult:
    """
    The outcome of one noise synthesis.

    Attributes:
        noise (`torch.Tensor`): the noise to train on, shape (1, N, D), float32, detached.
        updates (`int`): learned noise updates taken (for the random baseline: shrink steps).
        statistic (`float`): the epsilon statistic of the returned noise on its synthesis data (the stop rule's: with
            `noise_stop_batches` k > 1 the mean of the last k statistics, measured before each of the last k
            updates).
        reached (`bool`): whether the synthesis itself got below epsilon (the learned updates, or the random
            baseline's shrinking) before its cap; a noise shrunk by the fallback is inside epsilon but not `reached`.
        redraws (`int`): how often a non-finite noise or statistic forced a fresh draw.
        inside (`bool`): whether the returned noise is inside epsilon on its synthesis data (`statistic < epsilon`).
        fallback (`bool`): whether the cap was hit and the noise was shrunk along its learned direction until inside.
        heldout_statistic (`float`, *optional*): the statistic of the returned noise on held-out data (data it was
            not synthesised on), when some was given.
        start_scale (`float`, *optional*): root mean square of the start's elements (a fresh draw or a warm start).
        boundary_scale (`float`, *optional*): the calibrated scale at which the random start direction leaves the
            epsilon ball (automatic scale only).
        embedding_norm (`float`, *optional*): mean over the synthesis images of the L2 norm of their patch embeddings
            (the projection output, shape (N, D) per image): the scale the noise is compared to.
        learned_norm, learned_statistic (`float`, *optional*): `norm_matched` mode only: the norm and statistic of
            the learned noise whose norm the returned random noise copies.
        learned_noise (`torch.Tensor`, *optional*): `norm_matched` mode only: that learned noise.
        no_boundary (`bool`): the calibration found no scale within `noise_max_norm_ratio` times the RMS of the
            patch embeddings at which a random noise leaves epsilon (the predictions do not depend on
            the input yet, e.g. a fresh head): `noise` is zero and nothing is to be trained on it.
        limit_statistic (`float`, *optional*): with `no_boundary`, the statistic at the largest scale tried.
    """

    noise: torch.Tensor
    updates: int
    statistic: float
    reached: bool
    redraws: int = 0
    inside: bool | None = None
    fallback: bool = False
    heldout_statistic: float | None = None
    start_scale: float | None = None
    boundary_scale: float | None = None
    embedding_norm: float | None = None
    learned_norm: float | None = None
    learned_statistic: float | None = None
    learned_noise: torch.Tensor | None = None
    no_boundary: bool = False
    limit_statistic: float | None = None

    def __post_init__(self):
        if self.inside is None:
            self.inside = self.reached

    @property
    def norm(self) -> float:
        """L2 norm of the noise."""
        return float(self.noise.norm())

    @property
    def norm_ratio(self) -> float | None:
        """The noise norm relative to the mean per-image norm of the patch embeddings it is added to."""
        return self.norm / self.embedding_norm if self.embedding_norm else None

    def summary(self) -> dict:
        """A JSON-serialisable record of this synthesis (without the noise itself); `None` where not measured."""
        record = {
            "norm": self.norm,
            "norm_ratio": self.norm_ratio,
            "updates": self.updates,
            "statistic": self.statistic,
            "heldout_statistic": self.heldout_statistic,
            "reached": self.reached,
            "inside": self.inside,
            "fallback": self.fallback,
            "start_scale": self.start_scale,
            "boundary_scale": self.boundary_scale,
            "embedding_norm": self.embedding_norm,
            "redraws": self.redraws,
            "no_boundary": self.no_boundary,
            "limit_statistic": self.limit_statistic,
        }
        if self.learned_norm is not None:
            record.update(learned_norm=self.learned_norm, learned_statistic=self.learned_statistic)
        return record


def epsilon_statistic(clean_logits: torch.Tensor, noisy_logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of the squared L2 distance between the softmax vectors of clean and noisy logits."""
    clean = clean_logits.float().softmax(dim=-1)
    noisy = noisy_logits.float().softmax(dim=-1)
    return (noisy - clean).pow(2).sum(dim=-1).mean()


def _cycle(batches) -> Iterator[tuple[int, dict]]:
    """Yields (position, model inputs) endlessly (the model inputs: `pixel_values` and whatever else the model takes,
    see `model_inputs.py`); re-iterates sequences and re-iterable loaders."""
    if isinstance(batches, (dict, torch.Tensor)):
        batches = [batches]
    while True:
        empty = True
        for position, batch in enumerate(batches):
            empty = False
            yield position, model_inputs(batch)
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


def _logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


class _Stop(Exception):
    pass


def _patch_embedding_scale(model: nn.Module, pixel_values: dict, module_name, sync) -> tuple[float, float]:
    """(RMS of the patch-projection output's elements, mean per-image L2 norm of it), averaged over processes.

    Only the model up to its patch projection runs."""
    _, projection = find_patch_embedding(model, module_name)
    captured = []

    def hook(module, args, output):
        captured.append(output.detach().float())
        raise _Stop

    handle = projection.register_forward_hook(hook)
    try:
        with torch.no_grad(), sync.autocast():
            model(**pixel_values)
    except _Stop:
        pass
    finally:
        handle.remove()
    output = captured[0]
    rms = output.pow(2).mean().sqrt()
    per_image = output.flatten(1).norm(dim=1).mean()
    values = sync.mean(torch.stack([rms, per_image]))
    return float(values[0]), float(values[1])


def synthesize_noise(
    model: nn.Module,
    batches: torch.Tensor | dict | Sequence | Iterable,
    args: NullspaceArguments | None = None,
    accelerator=None,
    generator: torch.Generator | None = None,
    heldout: torch.Tensor | dict | Sequence | None = None,
    init: torch.Tensor | None = None,
) -> NoiseSynthesisResult:
    """
    Synthesises an epsilon-approximate nullspace noise for `model` (or a control, by `args.nullspace_mode`).

    The learned noise (`"nullspace"`) follows the authors' runs: a uniform start of shape (1, N, D); AdamW (lr,
    weight decay) with a cosine schedule over `noise_max_updates`; the model in eval mode; before every update the
    epsilon statistic is measured on the current batch and the synthesis stops as soon as it is below epsilon
    (with `noise_stop_batches` k > 1: as soon as the mean of the last k such statistics is); otherwise one update on
    the squared logit distance (or the paper's explicit objective).

    The start's scale is found per model unless `noise_init_limit` fixes it (the authors' U(-limit, limit)): a
    uniform random direction is scaled, from the RMS of the patch embeddings, by doubling or halving and then a few
    bisection steps, to the scale at which it leaves the epsilon ball (no-grad forward passes on the first batch);
    the start is `noise_init_factor` times that scale and the learning rate is relative to it (`noise_lr` x
    limit / 3, the authors' ratio of 0.1 to 3), so the whole synthesis is invariant to the scale of the embeddings.
    If the cap is hit first, `noise_fallback` shrinks the noise along its learned direction (bisection) until it is
    inside epsilon on the batch of the last statistic, so the returned noise is never outside epsilon there.

    `"norm_matched"` synthesises the learned noise and returns a Gaussian random direction of exactly its norm;
    `"random"` is the authors' baseline, N(0, 1) shrunk by `noise_random_shrink` until inside epsilon. With several
    processes the draws are broadcast from the main process and gradients and statistics are averaged, so all
    processes hold the same noise and stop on the same update.

    Args:
        model (`nn.Module`):
            The vision model (unwrapped or wrapped); its mode and `requires_grad` flags are restored afterwards and
            no parameter gradient is left behind.
        batches (`torch.Tensor`, `dict`, or a sequence/re-iterable of them):
            Batches of `pixel_values` (as the model takes them; a dict also holds the model's other inputs, if
            any), one per update: a sequence is cycled through (its clean logits computed once), an iterator (a
            stream of training batches) is drawn from until it ends (the clean logits computed per batch). The first
            batch calibrates the start.
        args ([`NullspaceArguments`], *optional*):
            Hyperparameters; the library's defaults when not given.
        accelerator (`accelerate.Accelerator`, *optional*):
            Synchronises the noise over processes and provides autocast.
        generator (`torch.Generator`, *optional*):
            Source of the random draws; the global RNG when not given (so the Trainer's checkpointed RNG state makes
            a resumed run draw the same noise).
        heldout (`torch.Tensor`, `dict`, or a sequence of them, *optional*):
            Data the noise is not synthesised on: the statistic of the returned noise on it is reported as
            `heldout_statistic` (mean over its batches).
        init (`torch.Tensor`, *optional*):
            A warm start (e.g. the previous noise): its direction replaces the fresh draw, rescaled as a fresh draw
            would be (learned noise only).

    Returns:
        [`NoiseSynthesisResult`]: the noise, updates taken, its statistic, whether epsilon was reached and more.
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
        device = first["pixel_values"].device
        token_rms, embedding_norm = _patch_embedding_scale(model, first, module_name, sync)
        pending = [(position, first)]

        def next_batch():
            return pending.pop() if pending else next(stream, (None, None))

        context = _Context(shape, device, args, sync, generator, next_batch, measure, token_rms, (position, first))
        redraws = 0
        while True:
            if args.nullspace_mode == "random":
                result = _random_baseline(context)
            else:
                result = _learned_noise(context, init)
                if result is not None and args.nullspace_mode == "norm_matched" and not result.no_boundary:
                    result = _norm_matched(context, result)
            if result is not None:
                result.redraws = redraws
                result.embedding_norm = embedding_norm
                if heldout is not None and not result.no_boundary:
                    result.heldout_statistic = _heldout_statistic(model, heldout, result.noise, module_name, sync)
                return result
            redraws += 1
            logger.warning("Noise synthesis produced a non-finite noise or statistic: redraw %d.", redraws)
            if redraws > args.noise_max_redraws:
                raise FloatingPointError(
                    f"Noise synthesis produced non-finite values {redraws} times in a row; check the model and "
                    "inputs for NaN/inf, or lower noise_lr / noise_init_limit."
                )


@dataclass
class _Context:
    shape: tuple
    device: torch.device
    args: NullspaceArguments
    sync: _Sync
    generator: torch.Generator | None
    next_batch: Callable
    measure: Callable
    token_rms: float
    first: tuple

    def draw(self, sampler) -> torch.Tensor:
        """A draw of the noise's shape from `sampler(shape, generator)`, broadcast from the main process."""
        return self.sync.broadcast(sampler(self.shape, self.generator).to(self.device))

    def statistic(self, position, pixel_values, noise) -> float:
        """The epsilon statistic of `noise` on one batch, without gradients, averaged over processes."""
        clean, noisy = self.measure(position, pixel_values, noise, with_grad=False)
        return float(self.sync.mean(epsilon_statistic(clean, noisy)))


def noise_statistic(
    model: nn.Module,
    batches: torch.Tensor | dict | Sequence,
    noise: torch.Tensor,
    args: NullspaceArguments | None = None,
    accelerator=None,
) -> float:
    """
    The epsilon statistic of `noise` on `batches` (mean over them; model in eval mode, no gradients), averaged over
    processes: e.g. on a batch the noise was never updated on.

    Args:
        model (`nn.Module`): the vision model (unwrapped or wrapped); its mode and flags are restored afterwards.
        batches (`torch.Tensor`, `dict`, or a sequence of them): batches of `pixel_values`.
        noise (`torch.Tensor`): the noise, shape (1, N, D).
        args ([`NullspaceArguments`], *optional*): for `nullspace_patch_embedding_module`.
        accelerator (`accelerate.Accelerator`, *optional*): averages over processes and provides autocast.
    """
    args = args if args is not None else NullspaceArguments()
    model = unwrap(model)
    with frozen_eval_mode(model):
        return _heldout_statistic(model, batches, noise, args.nullspace_patch_embedding_module, _Sync(accelerator))


def _heldout_statistic(model, heldout, noise, module_name, sync) -> float:
    values = []
    for _, pixel_values in _cycle(heldout):
        with torch.no_grad(), sync.autocast():
            clean = _logits(model, pixel_values).float()
            with inject_noise(model, noise.to(pixel_values["pixel_values"].device), module_name=module_name):
                noisy = _logits(model, pixel_values).float()
        values.append(epsilon_statistic(clean, noisy))
        if len(values) >= (len(heldout) if isinstance(heldout, Sequence) else 1):
            break
    return float(sync.mean(torch.stack(values).mean()))


def _rms(tensor: torch.Tensor) -> float:
    return float(tensor.float().pow(2).mean().sqrt())


def _base_scale(context: _Context) -> float:
    """The RMS of the patch embeddings, where the calibration starts (1 if it is not a positive number)."""
    return context.token_rms if context.token_rms > 0 and math.isfinite(context.token_rms) else 1.0


class _NoBoundary(Exception):
    """No scale within the search range takes a random noise outside epsilon; `args[0]`: the statistic at the limit."""


def _calibrate(context: _Context, direction: torch.Tensor, position, pixel_values) -> tuple[float, float] | None:
    """
    The scale s at which `s * direction` (RMS 1) leaves the epsilon ball on one batch: doubling or halving from the
    RMS of the patch embeddings to a bracket, then geometric bisection. Returns (s, statistic at s) with the
    statistic >= epsilon (the smallest scale found outside), or `None` on a non-finite statistic. Raises
    `_NoBoundary` when the direction is still inside at `noise_max_norm_ratio` times the RMS.
    """
    epsilon = context.args.noise_epsilon
    base = _base_scale(context)
    limit = base * context.args.noise_max_norm_ratio
    scale = min(base, limit)
    value = context.statistic(position, pixel_values, scale * direction)
    if not math.isfinite(value):
        return None
    inside = value < epsilon
    lo, hi, hi_value = (scale, None, None) if inside else (None, scale, value)
    for _ in range(CALIBRATION_MAX_DOUBLINGS):
        if lo is not None and hi is not None or inside and scale >= limit:
            break
        scale = min(scale * 2, limit) if inside else scale / 2
        value = context.statistic(position, pixel_values, scale * direction)
        if not math.isfinite(value):
            return None
        if value < epsilon:
            lo = scale
        else:
            hi, hi_value = scale, value
    if hi is None:  # the model does not leave epsilon at any scale tried: no noise is worth training on
        raise _NoBoundary(value)
    if lo is None:  # still outside at a tiny scale: start from there
        return hi, hi_value
    for _ in range(CALIBRATION_BISECTIONS):
        middle = math.sqrt(lo * hi)
        value = context.statistic(position, pixel_values, middle * direction)
        if not math.isfinite(value):
            return None
        if value < epsilon:
            lo = middle
        else:
            hi, hi_value = middle, value
    return hi, hi_value


def _shrink_inside(context: _Context, noise: torch.Tensor, position, pixel_values) -> tuple[torch.Tensor, float]:
    """The largest t * noise (t in [0, 1], bisection) found inside epsilon on one batch, and its statistic."""
    epsilon = context.args.noise_epsilon
    best, best_value = torch.zeros_like(noise), 0.0
    lo, hi = 0.0, 1.0
    for _ in range(FALLBACK_BISECTIONS):
        middle = (lo + hi) / 2
        candidate = noise * middle
        value = context.statistic(position, pixel_values, candidate)
        if math.isfinite(value) and value < epsilon:
            lo, best, best_value = middle, candidate, value
        else:
            hi = middle
    return best, best_value


def _learned_noise(context: _Context, init: torch.Tensor | None) -> NoiseSynthesisResult | None:
    args, sync = context.args, context.sync
    position, pixel_values = context.next_batch()
    limit = args.noise_init_limit
    warm = None
    if init is not None:
        warm = init.detach().float().to(context.device).reshape(context.shape)
        if not (torch.isfinite(warm).all() and _rms(warm) > 0):
            warm = None
    boundary = None
    if limit is not None:  # the authors' fixed start U(-limit, limit); a warm start gets that draw's RMS
        if warm is not None:
            noise = sync.broadcast(warm) * (limit / math.sqrt(3) / _rms(warm))
        else:
            noise = context.draw(lambda s, g: (torch.rand(s, generator=g) * 2 - 1) * limit)
        lr = args.noise_lr
    else:  # scale-free: calibrate where this direction leaves the epsilon ball, start noise_init_factor beyond
        if warm is not None:
            direction = sync.broadcast(warm) / _rms(warm)
        else:
            direction = context.draw(lambda s, g: torch.rand(s, generator=g) * 2 - 1)
            direction = direction / _rms(direction)  # a uniform draw of RMS exactly 1
        try:
            calibrated = _calibrate(context, direction, position, pixel_values)
        except _NoBoundary as found:
            logger.warning(
                "The model's predictions stay within epsilon=%g (statistic %.3g) under a random noise %gx the RMS of "
                "its patch embeddings: they do not depend on the input yet (a fresh head?). No noise this refresh: "
                "training continues on the clean loss until the next one.",
                args.noise_epsilon,
                found.args[0],
                args.noise_max_norm_ratio,
            )
            return NoiseSynthesisResult(
                noise=torch.zeros(context.shape, device=context.device),
                updates=0,
                statistic=0.0,
                reached=False,
                inside=True,
                no_boundary=True,
                limit_statistic=float(found.args[0]),
            )
        if calibrated is None:
            return None
        boundary = calibrated[0]
        # noise_init_factor beyond the boundary, at most the search limit (outside epsilon either way)
        noise = direction * min(boundary * args.noise_init_factor, _base_scale(context) * args.noise_max_norm_ratio)
        lr = args.noise_lr * _rms(noise) / math.sqrt(3)  # noise_lr x limit / 3, limit = the start's uniform bound
    start_scale = _rms(noise)
    noise = noise.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([noise], lr=lr, weight_decay=args.noise_weight_decay)
    total = args.noise_max_updates

    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / total)) if args.noise_cosine_schedule else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    updates, statistic = 0, float("nan")
    recent = collections.deque(maxlen=args.noise_stop_batches)
    last = (position, pixel_values)
    while True:
        if pixel_values is None:
            break
        last = (position, pixel_values)
        clean, noisy = context.measure(position, pixel_values, noise, with_grad=True)
        recent.append(float(sync.mean(epsilon_statistic(clean, noisy.detach()))))
        statistic = sum(recent) / len(recent)
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
        position, pixel_values = context.next_batch()
    noise = noise.detach().float()
    reached = statistic < args.noise_epsilon
    fallback = False
    if not reached and args.noise_fallback:
        noise, statistic = _shrink_inside(context, noise, *last)
        fallback = True
    return NoiseSynthesisResult(
        noise=noise,
        updates=updates,
        statistic=statistic,
        reached=reached,
        inside=statistic < args.noise_epsilon,
        fallback=fallback,
        start_scale=start_scale,
        boundary_scale=boundary,
    )


def _norm_matched(context: _Context, learned: NoiseSynthesisResult) -> NoiseSynthesisResult | None:
    """The control: a Gaussian random direction with exactly the learned noise's norm, measured on the first batch."""
    direction = context.draw(lambda s, g: torch.randn(s, generator=g))
    noise = direction * (learned.norm / float(direction.norm()))
    statistic = context.statistic(*context.first, noise)
    if not math.isfinite(statistic):
        return None
    return NoiseSynthesisResult(
        noise=noise.float(),
        updates=learned.updates,
        statistic=statistic,
        reached=learned.reached,
        inside=statistic < context.args.noise_epsilon,
        fallback=learned.fallback,
        start_scale=learned.start_scale,
        boundary_scale=learned.boundary_scale,
        learned_norm=learned.norm,
        learned_statistic=learned.statistic,
        learned_noise=learned.noise,
    )


def _random_baseline(context: _Context) -> NoiseSynthesisResult | None:
    args = context.args
    noise = context.draw(lambda s, g: torch.randn(s, generator=g))
    start_scale = _rms(noise)
    updates, statistic = 0, float("nan")
    while True:
        # the current noise on the next noise_stop_batches batches (it does not move between them, only shrinks)
        drawn = [context.next_batch() for _ in range(args.noise_stop_batches)]
        drawn = [(position, pixel_values) for position, pixel_values in drawn if pixel_values is not None]
        if not drawn:
            break
        statistic = sum(context.statistic(*batch, noise) for batch in drawn) / len(drawn)
        if not math.isfinite(statistic):
            return None
        if statistic < args.noise_epsilon or updates >= args.noise_max_updates:
            break
        noise = noise * args.noise_random_shrink
        updates += 1
    return NoiseSynthesisResult(
        noise=noise.float(),
        updates=updates,
        statistic=statistic,
        reached=statistic < args.noise_epsilon,
        start_scale=start_scale,
    )
