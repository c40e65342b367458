"""`NullspaceArguments`: every hyperparameter of noise synthesis and nullspace augmented finetuning."""

import math
from dataclasses import asdict, dataclass, field

NULLSPACE_MODES = ("nullspace", "random", "norm_matched", "none", "madry", "trades")
NOISE_OBJECTIVES = ("logit_mse", "log_norm")
NOISE_SYNTHESIS_DATA = ("batch", "stream")


@dataclass
class NullspaceArguments:
    """
    Hyperparameters of approximate nullspace augmented finetuning (Liu et al., CPAL 2025). The defaults are the
    authors' ImageNet settings except for the start of the synthesis, whose scale is found per model (the authors'
    fixed start is `noise_init_limit=3.0`). Every field name starts with `nullspace_`, `noise_` or `noisy_` so that it
    never clashes with `transformers.TrainingArguments` in one `HfArgumentParser`.

    Args:
        nullspace_mode (`str`, *optional*, defaults to `"nullspace"`):
            `"nullspace"` trains on learned epsilon-approximate nullspace noise, `"random"` on the authors' random
            baseline (Gaussian noise shrunk until inside epsilon), `"norm_matched"` on a control that separates
            direction from magnitude (each refresh synthesises the learned noise, then trains on a Gaussian random
            direction of exactly its norm), `"none"` trains plainly (the vanilla baseline). `"madry"` and `"trades"`
            are the adversarial-training baselines of the paper's Table 2 (no noise; `AdversarialArguments` in
            `adversarial.py`).
        noise_epsilon (`float`, *optional*, defaults to `0.03`):
            Bound on the epsilon statistic: the batch mean of the squared L2 distance between the softmax outputs
            with and without noise. Synthesis stops at the first update where the statistic is below it.
        noise_lr (`float`, *optional*, defaults to `0.1`):
            AdamW learning rate of the noise, for the authors' start U(-3, 3). With the automatic start the rate is
            relative to it: `noise_lr * L / 3`, where L is the uniform bound of the start (its RMS x sqrt(3)), so the
            synthesis does the same thing at any scale of the patch embeddings.
        noise_weight_decay (`float`, *optional*, defaults to `0.01`):
            AdamW weight decay of the noise (torch's default, as the authors ran it).
        noise_init_limit (`float`, *optional*):
            `None` (the default): the start's scale is found per model. A uniform random direction is scaled (from
            the RMS of the patch embeddings, doubling or halving, then bisection; a few no-grad forward passes) to
            where it leaves the epsilon ball, and the noise starts `noise_init_factor` times beyond it. A float fixes
            the start to the authors' Uniform(-limit, limit) (they used 3.0 for ViT-S/B), with `noise_lr` absolute.
        noise_init_factor (`float`, *optional*, defaults to `2.0`):
            With the automatic start: how many times the scale at which a random draw leaves the epsilon ball the
            start is. Above 1, so that the learned updates move the noise into the approximate nullspace and it is
            returned near the epsilon boundary, larger than a random noise inside epsilon.
        noise_max_norm_ratio (`float`, *optional*, defaults to `10.0`):
            With the automatic start: how far the calibration looks for the epsilon boundary, in multiples of the RMS
            of the patch embeddings (about the norm ratio of a noise to the embeddings); the start is capped there
            too. A model whose predictions stay within epsilon under a random noise that large does not read its
            input yet (e.g. a freshly initialised head): that refresh synthesises no noise, the steps until the next
            refresh train on the clean loss alone, and the noise history records it (`no_boundary`).
        noise_fallback (`bool`, *optional*, defaults to `True`):
            When the cap is hit before the statistic is below epsilon, shrink the noise along its learned direction
            (bisection) until it is inside epsilon on the batch of the last statistic, instead of training on a
            noise outside the approximate nullspace. The noise history records it (`fallback`).
        noise_max_updates (`int`, *optional*, defaults to `3000`):
            Cap on the noise updates of one synthesis (about the authors' ImageNet setting of 3 rounds x 10% of the
            loader). Past it the noise is shrunk inside epsilon (`noise_fallback`) or returned as it is.
        noise_cosine_schedule (`bool`, *optional*, defaults to `True`):
            Cosine decay of the noise learning rate over `noise_max_updates` (almost flat in practice).
        noise_objective (`str`, *optional*, defaults to `"logit_mse"`):
            `"logit_mse"` minimises the batch mean of ||logits(u+v) - logits(u)||^2 (the authors' runs);
            `"log_norm"` minimises the paper's explicit objective E||f(u+v) - f(u)|| - lambda * log||v||.
        noise_log_norm_weight (`float`, *optional*, defaults to `1.0`):
            lambda of the `"log_norm"` objective.
        noise_random_shrink (`float`, *optional*, defaults to `0.8`):
            Factor applied per batch to the random baseline's N(0, 1) noise until it is inside epsilon.
        noise_refresh_steps (`int`, *optional*, defaults to `40`):
            A fresh noise is synthesised at the first optimiser step and then every this many optimiser steps.
        noise_synthesis_batch_size (`int`, *optional*):
            Synthesise on the first this many rows of the (micro-)batch; the other rows are held out and the
            statistic of the noise on them is recorded (`heldout_statistic`). `None` (the default): the whole
            batch, no held-out statistic. Under gradient accumulation the batch is the first micro-batch of the
            optimiser step at which the refresh falls. Current-batch synthesis only (`noise_synthesis_data="batch"`).
        noise_synthesis_data (`str`, *optional*, defaults to `"batch"`):
            What the noise is synthesised on. `"batch"`: the current training batch, every update and the stop
            statistic on it. `"stream"` (the authors' runs): a stream of training batches drawn by a second loader
            built like the trainer's own (same collator, batch size and per-process share, its own random order and
            RNG): the stop statistic is measured on each new batch before the update on it, so the returned noise is
            inside epsilon on a batch it was never updated on. Either way every refresh records the statistic of the
            returned noise on the next batches of that stream (`unseen_batch_statistic`).
        noise_stop_batches (`int`, *optional*, defaults to `1`):
            The stop rule's statistic is the mean of the statistics measured before the last this many updates (each
            on the batch of its update), instead of the last one alone (the authors' rule, `1`). With stream
            synthesis each of those batches is a new one, so the synthesis stops on an estimate over this many
            batches rather than on the first batch that happens to dip below epsilon; as the noise moves into the
            nullspace between them, the mean errs on the side of a smaller noise. The random baseline, which only
            shrinks, measures its current noise on this many next batches before each shrink step.
        noise_warm_start (`bool`, *optional*, defaults to `False`):
            Start each synthesis from the previous learned noise (rescaled as a fresh start would be) instead of a
            fresh draw.
        noise_bank_save_all (`bool`, *optional*, defaults to `False`):
            Save every noise synthesised (the full bank, N x D x 4 bytes per refresh: about 600 KB for ViT-B/16) with
            each checkpoint and with the finished run, instead of the current one. The noise history is always
            saved whole; resuming needs only the current noise.
        noisy_loss_weight (`float`, *optional*, defaults to `1.0`):
            Weight beta of the noisy term: loss = CE(clean) + beta * CE(noisy).
        noise_shared_forward (`bool`, *optional*, defaults to `True`):
            Run the clean and the noisy copy of a batch in one forward pass of twice the batch size, instead of two.
        noise_max_redraws (`int`, *optional*, defaults to `3`):
            How often a synthesis that produced a non-finite noise or statistic is redrawn before it gives up.
        nullspace_patch_embedding_module (`str`, *optional*):
            Dotted name of the patch-embedding projection for architectures outside the built-in table
            (e.g. `"vit.embeddings.patch_embeddings.projection"`).
    """

    nullspace_mode: str = field(
        default="nullspace",
        metadata={"help": f"Which noise (or adversarial baseline) to train on: one of {', '.join(NULLSPACE_MODES)}."},
    )
    noise_epsilon: float = field(
        default=0.03,
        metadata={"help": "Epsilon bound on the batch mean squared L2 distance between clean and noisy softmax."},
    )
    noise_lr: float = field(default=0.1, metadata={"help": "AdamW learning rate of the noise."})
    noise_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the noise."})
    noise_init_limit: float | None = field(
        default=None,
        metadata={
            "help": "Fixed start Uniform(-limit, limit) (the authors': 3.0); unset: the start's scale is found per "
            "model."
        },
    )
    noise_init_factor: float = field(
        default=2.0,
        metadata={"help": "Automatic start: this many times the scale at which a random draw leaves epsilon."},
    )
    noise_max_norm_ratio: float = field(
        default=10.0,
        metadata={
            "help": "Automatic start: look for the epsilon boundary up to this many times the patch embeddings' RMS "
            "(the start is capped there); none there (e.g. a fresh head): clean loss until the next refresh."
        },
    )
    noise_fallback: bool = field(
        default=True,
        metadata={"help": "At the cap, shrink the noise along its learned direction until inside epsilon."},
    )
    noise_max_updates: int = field(default=3000, metadata={"help": "Cap on the noise updates of one synthesis."})
    noise_cosine_schedule: bool = field(
        default=True, metadata={"help": "Cosine decay of the noise learning rate over noise_max_updates."}
    )
    noise_objective: str = field(
        default="logit_mse",
        metadata={"help": f"Synthesis objective: one of {', '.join(NOISE_OBJECTIVES)}."},
    )
    noise_log_norm_weight: float = field(
        default=1.0, metadata={"help": "lambda of the log_norm objective E||f(u+v)-f(u)|| - lambda log||v||."}
    )
    noise_random_shrink: float = field(
        default=0.8, metadata={"help": "Shrink factor per batch of the random baseline noise."}
    )
    noise_refresh_steps: int = field(
        default=40, metadata={"help": "Synthesise a fresh noise every this many optimiser steps."}
    )
    noise_synthesis_batch_size: int | None = field(
        default=None,
        metadata={"help": "Synthesise on the first k rows of the batch, hold out the rest (unset: whole batch)."},
    )
    noise_synthesis_data: str = field(
        default="batch",
        metadata={
            "help": f"Synthesise on the current batch or on a stream of training batches: one of "
            f"{', '.join(NOISE_SYNTHESIS_DATA)}."
        },
    )
    noise_stop_batches: int = field(
        default=1,
        metadata={"help": "Stop when the mean statistic of the last this many updates' batches is below epsilon."},
    )
    noise_warm_start: bool = field(
        default=False, metadata={"help": "Start each synthesis from the previous learned noise, rescaled."}
    )
    noise_bank_save_all: bool = field(
        default=False,
        metadata={"help": "Save every noise synthesised with checkpoints and the run (default: the current one)."},
    )
    noisy_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight beta of the noisy loss: CE(clean) + beta * CE(noisy)."}
    )
    noise_shared_forward: bool = field(
        default=True, metadata={"help": "Clean and noisy copies share one forward pass of twice the batch size."}
    )
    noise_max_redraws: int = field(
        default=3, metadata={"help": "Redraws of a synthesis that produced non-finite values before giving up."}
    )
    nullspace_patch_embedding_module: str | None = field(
        default=None,
        metadata={"help": "Dotted module name of the patch-embedding projection, for unsupported architectures."},
    )

    def __post_init__(self):
        if self.nullspace_mode not in NULLSPACE_MODES:
            raise ValueError(
                f"nullspace_mode={self.nullspace_mode!r} is not supported: use one of {', '.join(NULLSPACE_MODES)}."
            )
        if self.noise_objective not in NOISE_OBJECTIVES:
            raise ValueError(
                f"noise_objective={self.noise_objective!r} is not supported: use one of {', '.join(NOISE_OBJECTIVES)}."
            )
        if self.noise_synthesis_data not in NOISE_SYNTHESIS_DATA:
            raise ValueError(
                f"noise_synthesis_data={self.noise_synthesis_data!r} is not supported: use 'batch' (synthesise on "
                "the current batch) or 'stream' (on a stream of training batches, as the authors ran it)."
            )
        for name in ("noise_epsilon", "noise_lr", "noise_init_limit", "noise_init_factor", "noise_max_norm_ratio"):
            value = getattr(self, name)
            if value is None and name == "noise_init_limit":
                continue
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}.")
        for name in ("noise_weight_decay", "noise_log_norm_weight", "noisy_loss_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if not 0 < self.noise_random_shrink < 1:
            raise ValueError(f"noise_random_shrink must lie in (0, 1), got {self.noise_random_shrink}.")
        if self.noise_max_updates < 1:
            raise ValueError(f"noise_max_updates must be >= 1, got {self.noise_max_updates}.")
        if self.noise_refresh_steps < 1:
            raise ValueError(
                f"noise_refresh_steps must be >= 1 (optimiser steps between two noise syntheses), "
                f"got {self.noise_refresh_steps}."
            )
        if self.noise_synthesis_batch_size is not None and self.noise_synthesis_batch_size < 1:
            raise ValueError(
                f"noise_synthesis_batch_size must be >= 1 (rows of the batch), got {self.noise_synthesis_batch_size}."
            )
        if self.noise_stop_batches < 1:
            raise ValueError(
                f"noise_stop_batches must be >= 1 (batches the stop statistic is averaged over), "
                f"got {self.noise_stop_batches}."
            )
        if self.noise_max_redraws < 0:
            raise ValueError(f"noise_max_redraws must be >= 0, got {self.noise_max_redraws}.")

    def to_dict(self) -> dict:
        """Returns the arguments as a JSON-serialisable dict."""
        return asdict(self)
