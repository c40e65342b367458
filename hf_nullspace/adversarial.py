"""Adversarial-training baselines of the paper's Table 2 in the same trainer: Madry and TRADES, PGD in pixel space.

`nullspace_mode="madry"` trains on `CE(f(x)) + beta * CE(f(PGD(x)))` (Madry et al., ICLR 2018, as the paper's authors
ran it: clean and adversarial terms 1:1), `nullspace_mode="trades"` on `CE(f(x)) + beta * KL(f(x) || f(x_adv))`
(Zhang et al., ICML 2019) with the TRADES attack, which maximises that KL term. Both attack an L-inf ball in [0, 1]
pixel space: the batch arrives normalised (`(x - mean) / std`, see `data/transforms.py`), is mapped back to pixels,
attacked through the model's normalisation (a [`PixelSpaceClassifier`], the attacks of `robustness.attacks`), and
mapped forward again, so `epsilon=8/255` means 8 grey levels whatever the processor's mean and std.

The adversary runs with the model in eval mode and its parameters frozen (`frozen_eval_mode`), on the model
unwrapped from DDP (each process attacks its own shard; no collective runs inside the attack), and draws its random
start from a generator seeded by (seed, optimiser step, micro-batch, process): different on every step and process,
identical after a resume.

Defaults are the paper's Table 2 recipe for both baselines (docs/method.md): L-inf epsilon 8/255, step size
2/255, 10 steps; `beta=1` (the authors' 1:1 loss; the TRADES paper itself uses beta 6 on CIFAR-10).
"""

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import frozen_eval_mode
from .robustness.attacks import pgd
from .robustness.model import PixelSpaceClassifier

ADVERSARIAL_MODES = ("madry", "trades")
# the TRADES attack starts from x + 0.001 * N(0, 1) (the authors' code), not from a uniform point of the ball
TRADES_START_STD = 0.001


@dataclass
class AdversarialArguments:
    """
    Hyperparameters of the adversarial-training baselines (`nullspace_mode` `"madry"` or `"trades"`). Every field
    starts with `adversarial_` so that it never clashes with the other argument groups of one `HfArgumentParser`.

    Args:
        adversarial_epsilon (`float`, *optional*, defaults to `8/255`):
            L-inf budget of the training attack, in [0, 1] pixel units.
        adversarial_step_size (`float`, *optional*, defaults to `2/255`):
            Step size of each attack step, in [0, 1] pixel units.
        adversarial_steps (`int`, *optional*, defaults to `10`):
            Attack steps per training batch.
        adversarial_beta (`float`, *optional*, defaults to `1.0`):
            Weight of the adversarial term: Madry `CE(x) + beta * CE(x_adv)`, TRADES `CE(x) + beta * KL`.
        adversarial_random_start (`bool`, *optional*, defaults to `True`):
            Madry: start PGD from a uniform point of the ball; TRADES: from `x + 0.001 * N(0, 1)`.
        adversarial_image_mean (`list[float]`, *optional*):
            Per-channel mean the batch was normalised with; defaults to the trainer's image processor's.
        adversarial_image_std (`list[float]`, *optional*):
            Per-channel std the batch was normalised with; defaults to the trainer's image processor's.
    """

    adversarial_epsilon: float = field(
        default=8 / 255, metadata={"help": "L-inf budget of the training attack in [0, 1] pixel units (8/255)."}
    )
    adversarial_step_size: float = field(
        default=2 / 255, metadata={"help": "Step size of the training attack in [0, 1] pixel units (2/255)."}
    )
    adversarial_steps: int = field(default=10, metadata={"help": "Attack steps per training batch."})
    adversarial_beta: float = field(
        default=1.0, metadata={"help": "Weight of the adversarial term (Madry CE, TRADES KL)."}
    )
    adversarial_random_start: bool = field(
        default=True,
        metadata={"help": "Random start of the training attack (uniform for Madry, 0.001 N(0,1) TRADES)."},
    )
    adversarial_image_mean: list[float] | None = field(
        default=None, metadata={"help": "Mean the pixel_values were normalised with (default: the image processor's)."}
    )
    adversarial_image_std: list[float] | None = field(
        default=None, metadata={"help": "Std the pixel_values were normalised with (default: the image processor's)."}
    )

    def __post_init__(self):
        for name in ("adversarial_epsilon", "adversarial_step_size"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}.")
        if not (self.adversarial_beta >= 0 and math.isfinite(self.adversarial_beta)):
            raise ValueError(f"adversarial_beta must be a finite number >= 0, got {self.adversarial_beta}.")
        if self.adversarial_steps < 1:
            raise ValueError(f"adversarial_steps must be >= 1, got {self.adversarial_steps}.")
        if (self.adversarial_image_mean is None) != (self.adversarial_image_std is None):
            raise ValueError("Pass both adversarial_image_mean and adversarial_image_std, or neither.")
        if self.adversarial_image_std is not None and any(s <= 0 for s in self.adversarial_image_std):
            raise ValueError(f"adversarial_image_std must be > 0, got {self.adversarial_image_std}.")

    def to_dict(self) -> dict:
        """Returns the arguments as a JSON-serialisable dict."""
        return asdict(self)


def pixel_normalisation(args: AdversarialArguments, processing_class=None) -> tuple[list[float], list[float]]:
    """
    The per-channel `(mean, std)` the training batch was normalised with: the explicit arguments, else the image
    processor's `image_mean`/`image_std` (mean 0 and std 1 when it does not normalise, as `data/transforms.py`).

    Raises:
        `ValueError`: when neither is given: the attack budget would be meaningless in the model's input units.
    """
    if args.adversarial_image_mean is not None:
        return list(args.adversarial_image_mean), list(args.adversarial_image_std)
    mean = getattr(processing_class, "image_mean", None)
    std = getattr(processing_class, "image_std", None)
    if processing_class is not None and mean is not None and std is not None:
        if not getattr(processing_class, "do_normalize", True):
            return [0.0] * len(mean), [1.0] * len(std)
        mean, std = list(mean), list(std)
        return (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    raise ValueError(
        "Adversarial training attacks in [0, 1] pixel space and needs the normalisation of the batches: pass the "
        "image processor to the trainer (`processing_class=processor`) or `adversarial_image_mean` and "
        "`adversarial_image_std` (e.g. --adversarial_image_mean 0.5 0.5 0.5 --adversarial_image_std 0.5 0.5 0.5)."
    )


def trades_attack(
    model: nn.Module,
    images: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """
    The TRADES attack (Zhang et al., ICML 2019): L-inf sign-gradient ascent on `KL(f(x) || f(x_adv))`, starting
    from `x + 0.001 * N(0, 1)`, projected onto the `epsilon` box and [0, 1] after each step.

    Args:
        model (`nn.Module`): maps images in [0, 1] to logits, e.g. a [`PixelSpaceClassifier`].
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): clean images in [0, 1].
        epsilon (`float`), step_size (`float`), steps (`int`): the L-inf budget, step size and number of steps.
        random_start (`bool`, *optional*, defaults to `True`): start from the small Gaussian perturbation.
        generator (`torch.Generator`, *optional*): source of the start; a fresh one seeded with 0 by default.

    Returns:
        `torch.Tensor`: adversarial images in [0, 1].
    """
    images = images.detach()
    adv = images.clone()
    if random_start:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        start = torch.randn(images.shape, generator=generator, device=generator.device, dtype=images.dtype)
        adv = (images + TRADES_START_STD * start.to(images.device)).clamp(0, 1)
    with frozen_eval_mode(model):
        with torch.no_grad():
            clean_probs = model(images).float().softmax(dim=-1)
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            log_probs = model(adv).float().log_softmax(dim=-1)
            loss = F.kl_div(log_probs, clean_probs, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + step_size * grad.sign()
            adv = (images + (adv - images).clamp(-epsilon, epsilon)).clamp(0, 1)
    return adv.detach()


class AdversarialTraining:
    """
    The adversarial-training part of [`NullspaceTrainer`] for `nullspace_mode` `"madry"` and `"trades"`: makes the
    adversarial batch, computes the loss and keeps the statistics logged with the training loss.

    Args:
        mode (`str`): `"madry"` or `"trades"`.
        args ([`AdversarialArguments`], *optional*): the attack and loss settings; the paper's recipe by default.
        processing_class (*optional*): the trainer's image processor, source of the normalisation.
    """

    STAT_KEYS = ("adversarial_clean_loss", "adversarial_loss", "adversarial_clean_accuracy", "adversarial_accuracy")

    def __init__(self, mode: str, args: AdversarialArguments | None = None, processing_class=None):
        if mode not in ADVERSARIAL_MODES:
            raise ValueError(f"mode must be one of {', '.join(ADVERSARIAL_MODES)}, got {mode!r}.")
        self.mode = mode
        self.args = args if args is not None else AdversarialArguments()
        self.mean, self.std = pixel_normalisation(self.args, processing_class)
        self._stats = torch.zeros(len(self.STAT_KEYS) + 1)
        self._position = (-1, 0)  # (optimiser step, micro-batch) of the last attack

    # ---- pixel space --------------------------------------------------------------------------------------------

    def _buffers(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.as_tensor(self.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    def to_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised model inputs to images in [0, 1] (clamped: resizing may overshoot by rounding)."""
        mean, std = self._buffers(pixel_values)
        return (pixel_values * std + mean).clamp(0, 1)

    def from_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] to normalised model inputs."""
        mean, std = self._buffers(images)
        return (images - mean) / std

    def generator(self, seed: int, step: int, process_index: int = 0) -> torch.Generator:
        """The attack's random source for this optimiser step, micro-batch and process (reproducible on resume)."""
        micro = self._position[1] + 1 if self._position[0] == step else 0
        self._position = (step, micro)
        return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 1_031 + process_index)

    def adversarial_examples(
        self, model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """
        Attacks a normalised batch in [0, 1] pixel space through the model's normalisation; returns the adversarial
        batch, normalised. `model` is called as `model(pixel_values=...)` (the model, not a DDP wrapper).
        """
        args = self.args
        classifier = PixelSpaceClassifier(model, self.mean, self.std).to(pixel_values.device)
        images = self.to_pixels(pixel_values.detach().float())
        budget = (args.adversarial_epsilon, args.adversarial_step_size, args.adversarial_steps)
        options = dict(random_start=args.adversarial_random_start, generator=generator)
        if self.mode == "madry":
            adv = pgd(classifier, images, labels, *budget, **options)
        else:  # TRADES maximises the KL to the clean prediction: no labels
            adv = trades_attack(classifier, images, *budget, **options)
        return self.from_pixels(adv).to(pixel_values.dtype)

    # ---- loss ---------------------------------------------------------------------------------------------------

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        The training loss of the mode on one micro-batch: Madry `CE(x) + beta * CE(x_adv)`, TRADES
        `CE(x) + beta * KL(softmax f(x) || softmax f(x_adv))` (gradient through both, as the TRADES code), reduced as
        the trainer reduces its cross-entropy. The clean and adversarial copies share one forward pass of twice the
        batch when `noise_shared_forward` is set.
        """
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        extra = {k: v for k, v in inputs.items() if k not in ("pixel_values", "labels")}
        generator = self.generator(trainer.args.seed, trainer.state.global_step, trainer.accelerator.process_index)
        # the attack runs on the plain module (no DDP: no collective inside; no compiled graph to retrace for its
        # frozen parameters and eval mode)
        plain = trainer.accelerator.unwrap_model(model, keep_torch_compile=False)
        adv_pixel_values = self.adversarial_examples(plain, pixel_values, labels, generator)
        batch_size = pixel_values.shape[0]
        if trainer.nullspace_args.noise_shared_forward:
            outputs = model(pixel_values=torch.cat([pixel_values, adv_pixel_values]), **extra)
            clean_logits, adv_logits = outputs.logits.split(batch_size)
        else:
            outputs = model(pixel_values=pixel_values, **extra)
            clean_logits, adv_logits = outputs.logits, model(pixel_values=adv_pixel_values, **extra).logits
        reduction = trainer.loss_reduction
        clean_loss = reduction.cross_entropy(clean_logits, labels, num_items_in_batch)
        if self.mode == "madry":
            adv_loss = reduction.cross_entropy(adv_logits, labels, num_items_in_batch)
        else:
            per_example = F.kl_div(
                adv_logits.float().log_softmax(dim=-1), clean_logits.float().softmax(dim=-1), reduction="none"
            ).sum(dim=-1)
            adv_loss = reduction.reduce(per_example, num_items_in_batch)
        loss = clean_loss + self.args.adversarial_beta * adv_loss
        with torch.no_grad():  # accumulated on the device: no synchronisation per step
            stats = torch.stack(
                [
                    F.cross_entropy(clean_logits.float(), labels),
                    F.cross_entropy(adv_logits.float(), labels),
                    (clean_logits.argmax(-1) == labels).float().mean(),
                    (adv_logits.argmax(-1) == labels).float().mean(),
                    torch.ones((), device=labels.device),
                ]
            )
            self._stats = self._stats.to(stats.device) + stats
        return (loss, outputs) if return_outputs else loss

    def pop_stats(self, accelerator=None) -> dict[str, float]:
        """
        The mean clean and adversarial cross-entropy and accuracy on the training batches since the last call,
        averaged over processes (a collective: every process calls it at the same log), then reset.
        """
        stats, self._stats = self._stats, torch.zeros_like(self._stats)
        if accelerator is not None and accelerator.num_processes > 1:
            stats = accelerator.reduce(stats.to(accelerator.device), reduction="sum")
        stats = stats.double().cpu()
        count = stats[-1].item()
        if count == 0:
            return {}
        return {key: round(float(value) / count, 4) for key, value in zip(self.STAT_KEYS, stats[:-1])}
