"""
Adversarial attacks in [0, 1] pixel space.

Every attack is a plain batched function `attack(model, images, labels, ...)` where `model` maps images in [0, 1] to
logits (a [`PixelSpaceClassifier`], which holds the normalisation) and returns adversarial images in [0, 1]. Attacks
run the model in eval mode with its parameters frozen (both restored afterwards), take gradients with respect to the
input only, leave no parameter `.grad` behind and never touch the global random number generator: random starts draw
from `generator`, which defaults to a fresh `torch.Generator` seeded with 0, so results are deterministic. A list of
generators, one per image, draws each image's start from its own: an image then gets the same start whatever batch
(or process) it is in, which is how `evaluate_robustness` seeds attacks (per example).

The iterative attacks (PGD, CW, Patch-Fool) are per-example state machines ([`IterativeAttack`]: `PGD`,
`CarliniWagnerL2`, `PatchFool`). `evaluate_robustness` runs them through an [`EarlyStopQueue`]: each example stops at
its first misclassified iterate and the next example takes its place in the working batch.
"""

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import frozen_eval_mode
from .model import PixelSpaceClassifier, tiled_convolution_gradients


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (batch_size, num_channels, height, width), got {tuple(images.shape)}."
        )
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1] (normalisation belongs to the model, see `PixelSpaceClassifier`).")


def _rand(
    shape: torch.Size,
    generator: torch.Generator | Sequence[torch.Generator],
    like: torch.Tensor,
    normal: bool = False,
) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) noise drawn from `generator` on its device, moved to `like`'s device.
    With one generator per example (a sequence as long as `shape[0]`), example `i` is drawn from `generator[i]`."""
    sample = torch.randn if normal else torch.rand
    if isinstance(generator, torch.Generator):
        return sample(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per example.")
    draws = [
        sample(tuple(shape[1:]), generator=g, device=g.device, dtype=like.dtype).to(like.device) for g in generator
    ]
    return torch.stack(draws)


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to the images (per example, independent of the batch)."""
    images = images.detach().requires_grad_(True)
    loss = F.cross_entropy(model(images), labels, reduction="sum")
    return torch.autograd.grad(loss, images)[0]


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped `(batch_size, 1, 1, 1)` to broadcast over images."""
    return x.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)


def loss_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to the images, in frozen eval mode (FGSM's direction: one
    gradient serves every budget)."""
    with frozen_eval_mode(model), tiled_convolution_gradients(model):
        return _input_gradient(model, images, labels)


def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    gradient: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Fast Gradient Sign Method (Goodfellow et al., ICLR 2015): one L-inf step `x + epsilon * sign(grad CE)`.

    Args:
        model (`nn.Module`):
            Maps images in [0, 1] to logits, e.g. a [`PixelSpaceClassifier`].
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1].
        labels (`torch.Tensor` of shape `(batch_size,)`):
            True labels.
        epsilon (`float`):
            L-inf budget in [0, 1] pixel units (e.g. `1 / 255`).
        gradient (`torch.Tensor`, *optional*):
            `loss_gradient(model, images, labels)` when already computed (several budgets share it).

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    _check_images(images)
    grad = loss_gradient(model, images, labels) if gradient is None else gradient
    return (images + epsilon * grad.sign()).clamp(0, 1).detach()


class IterativeAttack:
    """
    An iterative attack written as a per-example state machine, so that examples can leave and join the working
    batch between steps (see [`EarlyStopQueue`]).

    `start` builds the state of new examples (a dict of tensors, first dimension the example); `step` takes one step
    on a working batch and returns which examples the iterate it just evaluated misclassifies (`broken`) and which
    need no further step (`finished`). With `early_stop`, a misclassified iterate ends its example (it is kept as the
    adversarial image) and the iterate after the last update is evaluated too (one forward, no update), so an example
    that leaves unbroken was correctly classified at every iterate.
    """

    early_stop: bool = False

    def context(self, model: nn.Module):
        """What the steps run under besides frozen eval mode (Patch-Fool: eager attention)."""
        return contextlib.nullcontext()

    def start(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator) -> dict:
        raise NotImplementedError

    def step(self, model: nn.Module, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def adversarial(self, state: dict) -> torch.Tensor:
        raise NotImplementedError


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A `(batch_size,)` tensor shaped to broadcast over `like` (`(batch_size, 1, 1, 1)` for images)."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def _adam(param, grad, state: dict, step: torch.Tensor, lr: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
    """`torch.optim.Adam`'s update with each example's own step count `step` (after this update) and learning rate
    `lr`, both `(batch_size,)`; updates the moments `state["m"]`, `state["v"]` and returns the new parameter."""
    beta1, beta2 = betas
    state["m"] = state["m"].lerp(grad, 1 - beta1)
    state["v"] = state["v"] * beta2 + (1 - beta2) * grad * grad
    step = _per_example(step.to(param.dtype), param)
    denom = state["v"].sqrt() / (1 - beta2**step).sqrt() + eps
    return param - _per_example(lr, param) / (1 - beta1**step) * state["m"] / denom


def _check_last_iterates(model, adv, labels, active):
    """Early stop: examples past their last step (not `active`) only need their last iterate checked, by a forward
    without gradient. Returns `broken` (filled for those) and the index of the active rows (a slice when all are
    active, `None` when none is)."""
    broken = torch.zeros_like(active)
    if bool(active.all()):
        return broken, slice(None)
    with torch.no_grad():
        broken[~active] = model(adv[~active]).argmax(-1) != labels[~active]
    return broken, (active if bool(active.any()) else None)


class PGD(IterativeAttack):
    """The steps of [`pgd`] (same arguments, plus `early_stop`)."""

    def __init__(self, epsilon, step_size, steps, norm="linf", random_start=True, early_stop=False):
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}.")
        self.epsilon, self.step_size, self.steps, self.norm = epsilon, step_size, steps, norm
        self.random_start, self.early_stop = random_start, early_stop

    def start(self, model, images, labels, generator):
        adv = images.clone()
        if self.random_start:
            generator = generator if generator is not None else torch.Generator().manual_seed(0)
            if self.norm == "linf":
                delta = (2 * _rand(images.shape, generator, images) - 1) * self.epsilon
            else:
                direction = _rand(images.shape, generator, images, normal=True)
                radius = _rand((images.shape[0], 1, 1, 1), generator, images)
                delta = direction / _flat_norm(direction) * radius * self.epsilon
            adv = (images + delta).clamp(0, 1)
        steps = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return {"images": images, "labels": labels, "adv": adv, "t": steps}

    def step(self, model, state):
        images, labels, adv, steps = state["images"], state["labels"], state["adv"], state["t"]
        broken, active = _check_last_iterates(model, adv, labels, steps < self.steps)
        if active is None:
            return broken, torch.ones_like(broken)
        x = adv[active].detach().requires_grad_(True)
        logits = model(x)
        grad = torch.autograd.grad(F.cross_entropy(logits, labels[active], reduction="sum"), x)[0]
        x = x.detach()
        broken[active] = logits.detach().argmax(-1) != labels[active]
        if self.norm == "linf":
            delta = (x + self.step_size * grad.sign() - images[active]).clamp(-self.epsilon, self.epsilon)
        else:
            delta = x + self.step_size * grad / (_flat_norm(grad) + 1e-10) - images[active]
            delta = delta * (self.epsilon / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1)
        move = ~broken[active] if self.early_stop else torch.ones_like(broken[active])
        adv = adv.clone()
        adv[active] = torch.where(_per_example(move, x), (images[active] + delta).clamp(0, 1), x)
        state["adv"] = adv
        state["t"] = steps.clone()
        state["t"][active] += move
        return broken, state["t"] >= self.steps if not self.early_stop else steps >= self.steps

    def adversarial(self, state):
        return state["adv"]


class EarlyStopQueue:
    """
    Runs an [`IterativeAttack`] over a stream of examples with a working batch that stays full.

    Examples are `put` in any number at a time (their start, e.g. a random start, is drawn then); `run` takes steps
    on a working batch of `batch_size` examples. After each step, the examples that are finished (and, with the
    attack's `early_stop`, those the evaluated iterate misclassified) leave the batch and waiting examples take their
    place. Without `drain`, `run` returns when the batch cannot be filled; `run(drain=True)` finishes every example.
    What each example gets does not depend on the batch it ran in (each has its own step count, optimiser moments and
    learning rate), up to floating-point differences of batched arithmetic.

    Args:
        attack ([`IterativeAttack`]): The attack, e.g. `PGD(..., early_stop=True)`.
        model (`nn.Module`): Maps images in [0, 1] to logits (run in frozen eval mode, restored afterwards).
        batch_size (`int`): Size of the working batch.
    """

    def __init__(self, attack: IterativeAttack, model: nn.Module, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.attack, self.model, self.batch_size = attack, model, batch_size
        self._waiting: list[tuple[dict, list]] = []
        self._state: dict | None = None
        self._keys: list = []
        self.batch_sizes: list[int] = []  # working batch size of every step taken (for cost accounting)
        self.steps_taken: dict = {}  # key -> steps the example took (for cost accounting)

    def put(self, images: torch.Tensor, labels: torch.Tensor, keys: Sequence, generator=None) -> None:
        """Queues examples under `keys` (returned with their results); `generator` as in the attack functions."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for {images.shape[0]} images: pass one key per example.")
        if not len(keys):  # e.g. a batch without a clean-correct example
            return
        _check_images(images)
        with frozen_eval_mode(self.model), tiled_convolution_gradients(self.model), self.attack.context(self.model):
            state = self.attack.start(self.model, images.detach(), labels, generator)
        state["queue_steps"] = torch.zeros(len(keys), dtype=torch.long, device=images.device)
        self._waiting.append((state, list(keys)))

    @property
    def pending(self) -> int:
        """Examples queued or in the working batch."""
        return len(self._keys) + sum(len(keys) for _, keys in self._waiting)

    def _admit(self) -> None:
        while self._waiting and len(self._keys) < self.batch_size:
            state, keys = self._waiting.pop(0)
            room = self.batch_size - len(self._keys)
            if len(keys) > room:
                self._waiting.insert(0, ({k: v[room:] for k, v in state.items()}, keys[room:]))
                state, keys = {k: v[:room] for k, v in state.items()}, keys[:room]
            if self._state is None:
                self._state = state
            else:
                self._state = {k: torch.cat([self._state[k], state[k]]) for k in state}
            self._keys += keys

    def run(self, drain: bool = False) -> list[tuple[list, torch.Tensor, torch.Tensor]]:
        """
        Takes steps while the working batch is full (or, with `drain`, until every example is done).

        Returns:
            `list[tuple[list, torch.Tensor, torch.Tensor]]`: per group of examples that left together, their keys,
            whether each is robust (no evaluated iterate misclassified it) and its adversarial image.
        """
        done = []
        with frozen_eval_mode(self.model), tiled_convolution_gradients(self.model), self.attack.context(self.model):
            while True:
                self._admit()
                if not self._keys or (len(self._keys) < self.batch_size and not drain):
                    return done
                self.batch_sizes.append(len(self._keys))
                broken, finished = self.attack.step(self.model, self._state)
                self._state["queue_steps"] += 1
                leave = finished | broken if self.attack.early_stop else finished
                if bool(leave.any()):
                    adversarial = self.attack.adversarial(self._state)
                    keys = [key for key, out in zip(self._keys, leave.tolist()) if out]
                    done.append((keys, ~broken[leave], adversarial[leave].detach()))
                    self.steps_taken.update(zip(keys, self._state["queue_steps"][leave].tolist()))
                    stay = ~leave
                    self._state = {k: v[stay] for k, v in self._state.items()}
                    self._keys = [key for key, out in zip(self._keys, leave.tolist()) if not out]


def _run_iterative(attack: IterativeAttack, model, images, labels, generator=None) -> torch.Tensor:
    """Runs `attack` on one batch and returns the adversarial images in input order."""
    queue = EarlyStopQueue(attack, model, batch_size=max(images.shape[0], 1))
    queue.put(images, labels, range(images.shape[0]), generator)
    out = images.detach().clone()
    for keys, _, adversarial in queue.run(drain=True):
        out[keys] = adversarial
    return out


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """
    Projected Gradient Descent (Madry et al., ICLR 2018) on the cross-entropy loss, L-inf or L2.

    L-inf: steps `x + step_size * sign(grad)`, projected onto the `epsilon` box. L2: steps
    `x + step_size * grad / ||grad||_2`, projected onto the `epsilon` ball per example. Both clamp to [0, 1] after
    each step, which keeps the perturbation within budget. The random start is uniform in the box (L-inf) or a
    Gaussian direction scaled to a radius uniform in `[0, epsilon]` (L2), as in torchattacks.

    Args:
        model (`nn.Module`):
            Maps images in [0, 1] to logits, e.g. a [`PixelSpaceClassifier`].
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1].
        labels (`torch.Tensor` of shape `(batch_size,)`):
            True labels.
        epsilon (`float`):
            Budget in [0, 1] pixel units (e.g. `8 / 255` for L-inf, `0.5` for L2).
        step_size (`float`):
            Step size (Madry et al. use `2.5 * epsilon / steps`).
        steps (`int`):
            Number of steps.
        norm (`str`, *optional*, defaults to `"linf"`):
            `"linf"` or `"l2"`.
        random_start (`bool`, *optional*, defaults to `True`):
            Start from a random point of the budget instead of the clean image.
        generator (`torch.Generator` or a sequence of them, *optional*):
            Source of the random start (one per example, or one for the batch); defaults to a fresh generator seeded
            with 0.
        early_stop (`bool`, *optional*, defaults to `False`):
            Stop each example at its first misclassified iterate and return that iterate (every iterate, the last
            included, is checked); otherwise every example takes all steps and the last iterate is returned.

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    attack = PGD(epsilon, step_size, steps, norm, random_start, early_stop)
    _check_images(images)
    return _run_iterative(attack, model, images, labels, generator)


def _cw_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`Z_y - max_{j != y} Z_j` per example (the argument of Carlini and Wagner's f6)."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return true_logit - other


class CarliniWagnerL2(IterativeAttack):
    """The steps of [`cw_l2`] (same arguments, plus `early_stop`). Each example has its own Adam moments, step count,
    abort-early check and constant `c`."""

    def __init__(
        self, c=1.0, kappa=0.0, steps=100, lr=0.01, binary_search_steps=1, abort_early=True, early_stop=False
    ):
        self.c, self.kappa, self.steps, self.lr = c, kappa, steps, lr
        self.binary_search_steps, self.abort_early, self.early_stop = binary_search_steps, abort_early, early_stop
        self.check_every = max(steps // 10, 1)

    def start(self, model, images, labels, generator=None):
        batch_size = images.shape[0]
        w_init = torch.atanh((2 * images - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        per_example = torch.zeros(batch_size, device=images.device)
        return {
            "images": images,
            "labels": labels,
            "w_init": w_init,
            "w": w_init.clone(),
            "m": torch.zeros_like(w_init),
            "v": torch.zeros_like(w_init),
            "t": per_example.long(),
            "previous_loss": per_example + math.inf,
            "succeeded": per_example.bool(),
            "const": per_example + float(self.c),
            "lower": per_example.clone(),
            "upper": per_example + math.inf,
            "search": per_example.long(),
            "best_adv": images.clone(),
            "best_l2": per_example + math.inf,
        }

    def step(self, model, s):
        images, labels = s["images"], s["labels"]
        w = s["w"].detach().requires_grad_(True)
        adv = (torch.tanh(w) + 1) / 2
        l2 = (adv - images).pow(2).flatten(1).sum(dim=1)
        logits = model(adv)
        margin = _cw_margin(logits, labels)
        loss = l2 + s["const"] * margin.clamp(min=-self.kappa)
        (grad,) = torch.autograd.grad(loss.sum(), w)
        with torch.no_grad():
            adv, l2, loss, margin = adv.detach(), l2.detach(), loss.detach(), margin.detach()
            broken = logits.detach().argmax(-1) != labels
            success = margin < -self.kappa
            improved = success & (l2 < s["best_l2"])
            if self.early_stop:  # a broken example leaves now: keep the iterate that broke it
                improved |= broken
            s["best_l2"] = torch.where(improved, l2, s["best_l2"])
            s["best_adv"] = torch.where(_per_example(improved, adv), adv, s["best_adv"])
            s["succeeded"] = s["succeeded"] | success
            check = s["t"] % self.check_every == 0
            s["t"] = s["t"] + 1
            s["w"] = _adam(w.detach(), grad, s, s["t"], torch.full_like(l2, self.lr))
            aborted = check & (loss > s["previous_loss"]) if self.abort_early else torch.zeros_like(check)
            s["previous_loss"] = torch.where(check, loss, s["previous_loss"])
            # a search step ends: update the bracket of c and restart this example from its clean image
            ended = aborted | (s["t"] >= self.steps)
            s["upper"] = torch.where(ended & s["succeeded"], torch.minimum(s["upper"], s["const"]), s["upper"])
            s["lower"] = torch.where(ended & ~s["succeeded"], torch.maximum(s["lower"], s["const"]), s["lower"])
            searched = torch.where(s["upper"].isfinite(), (s["lower"] + s["upper"]) / 2, s["const"] * 10)
            s["const"] = torch.where(ended, searched, s["const"])
            s["search"] = s["search"] + ended
            restart = _per_example(ended, w)
            s["w"] = torch.where(restart, s["w_init"], s["w"])
            s["m"] = torch.where(restart, 0.0, s["m"])
            s["v"] = torch.where(restart, 0.0, s["v"])
            s["t"] = torch.where(ended, 0, s["t"])
            s["previous_loss"] = torch.where(ended, math.inf, s["previous_loss"])
            s["succeeded"] = s["succeeded"] & ~ended
        return broken, s["search"] >= self.binary_search_steps

    def adversarial(self, state):
        return state["best_adv"]


def cw_l2(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.01,
    binary_search_steps: int = 1,
    abort_early: bool = True,
    early_stop: bool = False,
) -> torch.Tensor:
    """
    Carlini-Wagner L2 attack (Carlini and Wagner, IEEE S&P 2017), untargeted.

    Optimises `w` with `x_adv = (tanh(w) + 1) / 2` (so `x_adv` stays in [0, 1]) by Adam on
    `||x_adv - x||_2^2 + c * f6(x_adv)` with `f6 = max(Z_y - max_{j != y} Z_j, -kappa)`, and keeps per example the
    adversarial image of smallest L2 distance among the iterates that are misclassified with margin `kappa`
    (`max_{j != y} Z_j - Z_y > kappa`); examples never fooled are returned unchanged.

    The defaults are torchattacks' `CW` (`c=1`, `kappa=0`, `lr=0.01`, no search over `c`; torchattacks uses 50 steps,
    100 here). With `binary_search_steps > 1`, `c` is searched per example as in the paper (halved towards the
    smallest successful value, multiplied by 10 while never successful; the paper uses 9 search steps, 10,000 Adam
    steps, `lr=0.01` and initial `c=1e-3`). With `abort_early`, a search step ends when the total loss did not
    decrease over the last `steps // 10` steps, as in the paper's code and torchattacks. Unlike torchattacks, the
    best other class is taken over the true logits (torchattacks takes `max((1 - one_hot) * Z)`, which is 0 when all
    other logits are negative).

    Args:
        model (`nn.Module`):
            Maps images in [0, 1] to logits, e.g. a [`PixelSpaceClassifier`].
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1].
        labels (`torch.Tensor` of shape `(batch_size,)`):
            True labels.
        c (`float`, *optional*, defaults to `1.0`):
            Weight of the margin loss (initial value when searching).
        kappa (`float`, *optional*, defaults to `0.0`):
            Confidence margin.
        steps (`int`, *optional*, defaults to `100`):
            Adam steps per search step.
        lr (`float`, *optional*, defaults to `0.01`):
            Adam learning rate on `w`.
        binary_search_steps (`int`, *optional*, defaults to `1`):
            Number of values of `c` tried per example; 1 keeps `c` fixed.
        abort_early (`bool`, *optional*, defaults to `True`):
            Stop an example's search step once its loss stops decreasing.
        early_stop (`bool`, *optional*, defaults to `False`):
            Stop each example at its first misclassified iterate and return that iterate.

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    _check_images(images)
    attack = CarliniWagnerL2(c, kappa, steps, lr, binary_search_steps, abort_early, early_stop)
    return _run_iterative(attack, model, images, labels)


def _patch_attention_importance(attentions: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Attention each patch receives, averaged over heads and queries: `(batch_size, num_patches)`."""
    return attentions.mean(dim=1).mean(dim=1)[:, num_prefix_tokens:]


class PatchFool(IterativeAttack):
    """The steps of [`patch_fool`] (same arguments, plus `early_stop`). Each example has its own Adam moments and
    step count, so its learning-rate schedule does not depend on the batch."""

    def __init__(
        self,
        num_patches=1,
        steps=250,
        lr=0.05,
        lr_step_size=10,
        lr_gamma=0.95,
        attention_weight=0.002,
        selection_layer=4,
        attention_layers=None,
        early_stop=False,
    ):
        self.num_patches, self.steps, self.lr, self.lr_step_size, self.lr_gamma = (
            num_patches,
            steps,
            lr,
            lr_step_size,
            lr_gamma,
        )
        self.attention_weight, self.selection_layer, self.attention_layers = (
            attention_weight,
            selection_layer,
            attention_layers,
        )
        self.early_stop = early_stop

    def context(self, model):
        if not isinstance(model, PixelSpaceClassifier):
            raise ValueError("Patch-Fool needs a `PixelSpaceClassifier` (for the attention maps).")
        return model.eager_attention()

    def start(self, model, images, labels, generator):
        batch_size, _, height, width = images.shape
        patch_size = getattr(model.config, "patch_size", None)
        if patch_size is None:
            raise ValueError("Patch-Fool needs a ViT-family model with `config.patch_size`.")
        patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if height % patch_h or width % patch_w:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {patch_h}x{patch_w}.")
        grid_h, grid_w = height // patch_h, width // patch_w
        with torch.no_grad():
            _, attentions = model.logits_and_attentions(images)
        num_layers = len(attentions)
        num_prefix_tokens = attentions[0].shape[-1] - grid_h * grid_w
        if attentions[0].ndim != 4 or num_prefix_tokens < 0:
            raise ValueError(
                f"Attention maps of shape {tuple(attentions[0].shape)} do not match a {grid_h}x{grid_w} grid."
            )
        if self.attention_layers is None:
            self.attention_layers = range(1, num_layers // 2)
        for layer in [self.selection_layer, *self.attention_layers]:
            if layer is not None and not -num_layers <= layer < num_layers:
                raise ValueError(f"Layer {layer} out of range for a model with {num_layers} attention layers.")
        layer = self.selection_layer
        selection = torch.stack(attentions) if layer is None else attentions[layer][None]
        importance = torch.stack([_patch_attention_importance(a, num_prefix_tokens) for a in selection]).mean(0)
        patch_index = importance.topk(self.num_patches, dim=1).indices  # (batch_size, num_patches)

        mask = torch.zeros(batch_size, grid_h * grid_w, device=images.device, dtype=images.dtype)
        mask.scatter_(1, patch_index, 1.0)
        mask = mask.view(batch_size, 1, grid_h, 1, grid_w, 1).expand(-1, -1, -1, patch_h, -1, patch_w)
        mask = mask.reshape(batch_size, 1, height, width)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        patch = _rand(images.shape, generator, images)
        return {
            "labels": labels,
            "background": images * (1 - mask),
            "mask": mask,
            "token_index": (patch_index + num_prefix_tokens)[:, None, :],  # (batch_size, 1, num_patches)
            "patch": patch,
            "m": torch.zeros_like(patch),
            "v": torch.zeros_like(patch),
            "t": torch.zeros(batch_size, dtype=torch.long, device=images.device),
        }

    def step(self, model, s):
        labels, steps = s["labels"], s["t"]
        broken, active = _check_last_iterates(model, self.adversarial(s), labels, steps < self.steps)
        if active is None:
            return broken, torch.ones_like(broken)
        patch = s["patch"][active].detach().requires_grad_(True)
        mask, rows = s["mask"][active], labels[active]
        adv = s["background"][active] + patch * mask
        layers = list(self.attention_layers) if self.attention_weight else []
        if layers:
            logits, attentions = model.logits_and_attentions(adv)
        else:
            logits, attentions = model(adv), ()
        loss = F.cross_entropy(logits, rows, reduction="sum")
        grad = torch.autograd.grad(loss, patch, retain_graph=bool(layers))[0]
        if layers:
            ce_grad = grad.flatten(1)
            attention_grad_total = torch.zeros_like(ce_grad)
            token_index = s["token_index"][active]
            for i, layer in enumerate(layers):
                attention = attentions[layer].mean(dim=1)
                received = attention.gather(2, token_index.expand(-1, attention.shape[1], -1))
                attention_loss = received.log().sum(dim=2).mean(dim=1).sum()
                retain = i < len(layers) - 1
                attention_grad = torch.autograd.grad(attention_loss, patch, retain_graph=retain)[0].flatten(1)
                dot = (attention_grad * ce_grad).sum(dim=1, keepdim=True)
                conflict = F.cosine_similarity(attention_grad, ce_grad, dim=1)[:, None] < 0
                projection = dot / ce_grad.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-20) * ce_grad
                attention_grad_total += torch.where(conflict, attention_grad - projection, attention_grad)
            grad = grad + self.attention_weight * attention_grad_total.view_as(grad)
        with torch.no_grad():
            broken[active] = logits.detach().argmax(-1) != rows
            move = ~broken[active] if self.early_stop else torch.ones_like(rows, dtype=torch.bool)
            taken = steps[active]
            lr = self.lr * self.lr_gamma ** torch.div(taken, self.lr_step_size, rounding_mode="floor").to(grad.dtype)
            moments = {"m": s["m"][active], "v": s["v"][active]}
            updated = _adam(patch.detach(), -grad, moments, taken + 1, lr).clamp(0, 1)  # Adam, maximising
            keep = _per_example(move, grad)
            for key, new in (("patch", updated), ("m", moments["m"]), ("v", moments["v"])):
                s[key] = s[key].clone()
                s[key][active] = torch.where(keep, new, s[key][active])
            s["t"] = steps.clone()
            s["t"][active] += move
        return broken, s["t"] >= self.steps if not self.early_stop else steps >= self.steps

    def adversarial(self, state):
        return (state["background"] + state["patch"] * state["mask"]).detach()


def patch_fool(
    model: PixelSpaceClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_patches: int = 1,
    steps: int = 250,
    lr: float = 0.05,
    lr_step_size: int = 10,
    lr_gamma: float = 0.95,
    attention_weight: float = 0.002,
    selection_layer: int | None = 4,
    attention_layers: Sequence[int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """
    Patch-Fool (Fu et al., ICLR 2022, "Patch-Fool: Are Vision Transformers Always Robust Against Adversarial
    Perturbations?"): an unrestricted perturbation confined to the most influential patch(es) of each image.

    1. Patch selection: on the clean image, the attention map of layer `selection_layer` is averaged over heads and
       queries; the `num_patches` patches that receive the most attention are attacked (`selection_layer=None`
       averages over all layers).
    2. The selected patches are replaced by a variable initialised uniformly in [0, 1] and optimised by Adam
       (`maximize`) on `J_CE + attention_weight * sum_l J_ATTN^(l)`, where
       `J_ATTN^(l) = mean_i sum_p log a^(l)_{i,p}` is the log attention that all tokens `i` pay to the attacked
       patches `p` in layer `l` (heads averaged). Each layer's attention gradient is combined with the CE gradient
       through their cosine similarity (per example): where it is negative the attention gradient is projected onto
       the normal plane of the CE gradient (PCGrad), so the attention term never opposes the CE term.
    3. The patch is clamped to [0, 1] after each step; the final iterate is returned (with `early_stop`, the first
       misclassified one).

    Defaults follow the authors' code (GATECH-EIC/Patch-Fool) for DeiT: 250 steps, attention loss weight 0.002, patch
    selection at layer index 4, attention loss on layers `1 .. L // 2 - 1`, Adam with a StepLR schedule
    (step 10, gamma 0.95). Their learning rate 0.22 acts on normalised inputs (ImageNet std about 0.226); Adam's
    steps scale with the variable's units, so `lr=0.05` is the pixel-space equivalent. With several patches the
    attention loss covers all of them (the authors' code uses the first only); their PCGrad divides the projection by
    `||g_CE||` instead of `||g_CE||^2`, the textbook projection is used here.

    Args:
        model ([`PixelSpaceClassifier`]):
            A wrapped ViT-family model (it must return attentions; `config.patch_size` gives the patch grid).
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1]; height and width must be multiples of the patch size.
        labels (`torch.Tensor` of shape `(batch_size,)`):
            True labels.
        num_patches (`int`, *optional*, defaults to `1`):
            Number of patches attacked per image.
        steps (`int`, *optional*, defaults to `250`):
            Adam steps.
        lr (`float`, *optional*, defaults to `0.05`):
            Adam learning rate, in [0, 1] pixel units.
        lr_step_size (`int`, *optional*, defaults to `10`):
            Steps between learning-rate decays.
        lr_gamma (`float`, *optional*, defaults to `0.95`):
            Learning-rate decay factor.
        attention_weight (`float`, *optional*, defaults to `0.002`):
            Weight `alpha` of the attention-aware loss; 0 gives the CE-only variant.
        selection_layer (`int`, *optional*, defaults to `4`):
            Layer whose attention selects the patches; `None` averages over all layers.
        attention_layers (`Sequence[int]`, *optional*):
            Layers of the attention-aware loss; defaults to `1 .. L // 2 - 1` (empty for models with fewer than
            4 layers).
        generator (`torch.Generator` or a sequence of them, *optional*):
            Source of the random initialisation (one per example, or one for the batch); defaults to a fresh
            generator seeded with 0.
        early_stop (`bool`, *optional*, defaults to `False`):
            Stop each example at its first misclassified iterate and return that iterate.

    Returns:
        `torch.Tensor`: adversarial images in [0, 1], equal to `images` outside the selected patches.

    Raises:
        `ValueError`: if the model returns no attentions, the layers are out of range or the image size is not a
        multiple of the patch size.
    """
    _check_images(images)
    attack = PatchFool(
        num_patches,
        steps,
        lr,
        lr_step_size,
        lr_gamma,
        attention_weight,
        selection_layer,
        attention_layers,
        early_stop,
    )
    return _run_iterative(attack, model, images, labels, generator)


_GLOBAL_RNG = threading.Lock()  # held while AutoAttack draws from the global RNG


def autoattack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """
    AutoAttack (Croce and Hein, ICML 2020) through the official code, PyPI package `pyautoattack`.

    The `"standard"` version runs APGD-CE, APGD-T, FAB-T and Square (5,000 queries) in sequence on the examples still
    correctly classified. AutoAttack seeds the global RNG; it runs inside `torch.random.fork_rng`, so the caller's RNG
    state is unchanged, and one call at a time in a process (lanes of `evaluate_robustness` share that RNG).

    Args:
        model (`nn.Module`):
            Maps images in [0, 1] to logits, e.g. a [`PixelSpaceClassifier`].
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1].
        labels (`torch.Tensor` of shape `(batch_size,)`):
            True labels.
        epsilon (`float`):
            Budget in [0, 1] pixel units (e.g. `4 / 255` for L-inf on ImageNet).
        norm (`str`, *optional*, defaults to `"Linf"`):
            `"Linf"`, `"L2"` or `"L1"`.
        version (`str`, *optional*, defaults to `"standard"`):
            `"standard"`, `"plus"`, `"rand"` or `"custom"` (then `attacks` is required).
        attacks (`Sequence[str]`, *optional*):
            For `version="custom"`: any of `"apgd-ce"`, `"apgd-dlr"`, `"fab"`, `"square"`, `"apgd-t"`, `"fab-t"`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of AutoAttack's random starts.

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise ImportError(
            "AutoAttack needs the `pyautoattack` package: `pip install hf-nullspace[attacks]`."
        ) from error
    _check_images(images)
    devices = [images.device] if images.device.type == "cuda" else []
    with _GLOBAL_RNG, frozen_eval_mode(model), torch.random.fork_rng(devices=devices):
        adversary = AutoAttack(
            model,
            eps=epsilon,
            norm=norm,
            version=version,
            attacks=None if attacks is None else list(attacks),
            seed=seed,
            device=images.device,
        )
        adversary.verbose = False
        adv, _ = adversary.run_standard_evaluation(images.detach(), labels, batch_size=images.shape[0])
    return adv.detach()


ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "fgsm": fgsm,
    "pgd": pgd,
    "pgd_l2": partial(pgd, norm="l2"),
    "cw": cw_l2,
    "patchfool": patch_fool,
    "autoattack": autoattack,
}


# attacks that `evaluate_robustness` runs per example with early stop (through an `EarlyStopQueue`)
ITERATIVE_ATTACKS: dict[str, Callable[..., IterativeAttack]] = {
    "pgd": PGD,
    "pgd_l2": partial(PGD, norm="l2"),
    "cw": CarliniWagnerL2,
    "patchfool": PatchFool,
}


def run_attack(name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **params) -> torch.Tensor:
    """
    Runs the attack registered as `name` in `ATTACKS`.

    Args:
        name (`str`):
            One of `"fgsm"`, `"pgd"`, `"pgd_l2"`, `"cw"`, `"patchfool"`, `"autoattack"`.
        model (`nn.Module`):
            Maps images in [0, 1] to logits, e.g. a [`PixelSpaceClassifier`].
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1].
        labels (`torch.Tensor` of shape `(batch_size,)`):
            True labels.
        params:
            Keyword arguments of the attack (e.g. `epsilon`).

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; valid names: {', '.join(sorted(ATTACKS))}.")
    return ATTACKS[name](model, images, labels, **params)
