"""
Adversarial attacks in [0, 1] pixel space.

Every attack is a plain batched function `attack(model, images, labels, ...)` where `model` maps images in [0, 1] to
logits (a [`PixelSpaceClassifier`], which holds the normalisation) and returns adversarial images in [0, 1]. Attacks
run the model in eval mode with its parameters frozen (both restored afterwards), take gradients with respect to the
input only, leave no parameter `.grad` behind and never touch the global random number generator: random starts draw
from `generator`, which defaults to a fresh `torch.Generator` seeded with 0, so results are deterministic. A list of
generators, one per image, draws each image's start from its own: an image then gets the same start whatever batch
(or process) it is in, which is how `evaluate_robustness` seeds attacks (per example).
"""

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import frozen_eval_mode
from .model import PixelSpaceClassifier


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


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
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

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    _check_images(images)
    with frozen_eval_mode(model):
        grad = _input_gradient(model, images, labels)
    return (images + epsilon * grad.sign()).clamp(0, 1).detach()


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

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    _check_images(images)
    images = images.detach()
    adv = images.clone()
    if random_start:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if norm == "linf":
            delta = (2 * _rand(images.shape, generator, images) - 1) * epsilon
        else:
            direction = _rand(images.shape, generator, images, normal=True)
            radius = _rand((images.shape[0], 1, 1, 1), generator, images)
            delta = direction / _flat_norm(direction) * radius * epsilon
        adv = (images + delta).clamp(0, 1)
    with frozen_eval_mode(model):
        for _ in range(steps):
            grad = _input_gradient(model, adv, labels)
            if norm == "linf":
                adv = adv + step_size * grad.sign()
                delta = (adv - images).clamp(-epsilon, epsilon)
            else:
                adv = adv + step_size * grad / (_flat_norm(grad) + 1e-10)
                delta = adv - images
                delta = delta * (epsilon / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1)
            adv = (images + delta).clamp(0, 1)
    return adv.detach()


def _cw_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`Z_y - max_{j != y} Z_j` per example (the argument of Carlini and Wagner's f6)."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return true_logit - other


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
            Stop a search step once the loss stops decreasing.

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    _check_images(images)
    images = images.detach()
    batch_size = images.shape[0]
    w_init = torch.atanh((2 * images - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    best_adv = images.clone()
    best_l2 = torch.full((batch_size,), float("inf"), device=images.device)
    const = torch.full((batch_size,), float(c), device=images.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, float("inf"))
    check_every = max(steps // 10, 1)
    with frozen_eval_mode(model):
        for _ in range(binary_search_steps):
            w = w_init.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=lr)
            succeeded = torch.zeros(batch_size, dtype=torch.bool, device=images.device)
            previous_loss = math.inf
            for step in range(steps):
                adv = (torch.tanh(w) + 1) / 2
                l2 = (adv - images).pow(2).flatten(1).sum(dim=1)
                margin = _cw_margin(model(adv), labels)
                loss = (l2 + const * margin.clamp(min=-kappa)).sum()
                (grad,) = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    success = margin < -kappa
                    improved = success & (l2 < best_l2)
                    best_l2 = torch.where(improved, l2, best_l2)
                    best_adv = torch.where(improved.view(-1, 1, 1, 1), adv, best_adv)
                    succeeded |= success
                w.grad = grad
                optimizer.step()
                if abort_early and step % check_every == 0:
                    if loss.item() > previous_loss:
                        break
                    previous_loss = loss.item()
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10)
    return best_adv.detach()


def _patch_attention_importance(attentions: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Attention each patch receives, averaged over heads and queries: `(batch_size, num_patches)`."""
    return attentions.mean(dim=1).mean(dim=1)[:, num_prefix_tokens:]


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
    3. The patch is clamped to [0, 1] after each step; the final iterate is returned.

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

    Returns:
        `torch.Tensor`: adversarial images in [0, 1], equal to `images` outside the selected patches.

    Raises:
        `ValueError`: if the model returns no attentions, the layers are out of range or the image size is not a
        multiple of the patch size.
    """
    if not isinstance(model, PixelSpaceClassifier):
        raise ValueError("Patch-Fool needs a `PixelSpaceClassifier` (for the attention maps).")
    _check_images(images)
    images = images.detach()
    batch_size, _, height, width = images.shape
    patch_size = getattr(model.config, "patch_size", None)
    if patch_size is None:
        raise ValueError("Patch-Fool needs a ViT-family model with `config.patch_size`.")
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if height % patch_h or width % patch_w:
        raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {patch_h}x{patch_w}.")
    grid_h, grid_w = height // patch_h, width // patch_w

    with frozen_eval_mode(model), model.eager_attention():
        with torch.no_grad():
            _, attentions = model.logits_and_attentions(images)
        num_layers = len(attentions)
        num_prefix_tokens = attentions[0].shape[-1] - grid_h * grid_w
        if attentions[0].ndim != 4 or num_prefix_tokens < 0:
            raise ValueError(
                f"Attention maps of shape {tuple(attentions[0].shape)} do not match a {grid_h}x{grid_w} grid."
            )
        if attention_layers is None:
            attention_layers = range(1, num_layers // 2)
        for layer in [selection_layer, *attention_layers]:
            if layer is not None and not -num_layers <= layer < num_layers:
                raise ValueError(f"Layer {layer} out of range for a model with {num_layers} attention layers.")

        selection = torch.stack(attentions) if selection_layer is None else attentions[selection_layer][None]
        importance = torch.stack([_patch_attention_importance(a, num_prefix_tokens) for a in selection]).mean(0)
        patch_index = importance.topk(num_patches, dim=1).indices  # (batch_size, num_patches)

        mask = torch.zeros(batch_size, grid_h * grid_w, device=images.device, dtype=images.dtype)
        mask.scatter_(1, patch_index, 1.0)
        mask = mask.view(batch_size, 1, grid_h, 1, grid_w, 1).expand(-1, -1, -1, patch_h, -1, patch_w)
        mask = mask.reshape(batch_size, 1, height, width)
        background = images * (1 - mask)

        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        patch = _rand(images.shape, generator, images).requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=lr, maximize=True)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step_size, gamma=lr_gamma)
        token_index = (patch_index + num_prefix_tokens)[:, None, :]  # (batch_size, 1, num_patches)
        for _ in range(steps):
            adv = background + patch * mask
            if attention_weight and attention_layers:
                logits, attentions = model.logits_and_attentions(adv)
            else:
                logits, attentions = model(adv), ()
            loss = F.cross_entropy(logits, labels, reduction="sum")
            grad = torch.autograd.grad(loss, patch, retain_graph=bool(attentions))[0]
            if attentions:
                ce_grad = grad.flatten(1)
                attention_grad_total = torch.zeros_like(ce_grad)
                for i, layer in enumerate(attention_layers):
                    attention = attentions[layer].mean(dim=1)
                    received = attention.gather(2, token_index.expand(-1, attention.shape[1], -1))
                    attention_loss = received.log().sum(dim=2).mean(dim=1).sum()
                    retain = i < len(attention_layers) - 1
                    attention_grad = torch.autograd.grad(attention_loss, patch, retain_graph=retain)[0].flatten(1)
                    dot = (attention_grad * ce_grad).sum(dim=1, keepdim=True)
                    conflict = F.cosine_similarity(attention_grad, ce_grad, dim=1)[:, None] < 0
                    projection = dot / ce_grad.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-20) * ce_grad
                    attention_grad_total += torch.where(conflict, attention_grad - projection, attention_grad)
                grad = grad + attention_weight * attention_grad_total.view_as(grad)
            patch.grad = grad
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
    return (background + patch * mask).detach()


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
    state is unchanged.

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
    with frozen_eval_mode(model), torch.random.fork_rng(devices=devices):
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
