import dataclasses

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_nullspace.config import NullspaceArguments


def test_defaults_are_the_authors_except_the_automatic_start():
    args = NullspaceArguments()
    assert (args.nullspace_mode, args.noise_epsilon, args.noise_lr) == ("nullspace", 0.03, 0.1)
    assert (args.noise_refresh_steps, args.noisy_loss_weight, args.noise_weight_decay) == (40, 1.0, 0.01)
    assert args.noise_max_updates == 3000 and args.noise_random_shrink == 0.8
    # the start's scale is found per model, the fallback keeps every noise inside epsilon
    assert args.noise_init_limit is None and args.noise_init_factor == 2.0 and args.noise_fallback
    assert args.noise_synthesis_batch_size is None and not args.noise_warm_start
    # the authors' fixed start stays available
    assert NullspaceArguments(noise_init_limit=3.0).noise_init_limit == 3.0


def test_field_names_do_not_clash_with_training_arguments(tmp_path):
    ours = {f.name for f in dataclasses.fields(NullspaceArguments)}
    theirs = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert not ours & theirs
    parser = HfArgumentParser((NullspaceArguments, TrainingArguments))
    nullspace, training = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--noise_epsilon",
            "0.1",
            "--nullspace_mode",
            "random",
            "--noise_refresh_steps",
            "5",
        ]
    )
    assert (nullspace.noise_epsilon, nullspace.nullspace_mode, nullspace.noise_refresh_steps) == (0.1, "random", 5)
    assert all(f.metadata.get("help") for f in dataclasses.fields(NullspaceArguments))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_epsilon": 0}, "noise_epsilon must be a finite number > 0"),
        ({"noise_epsilon": -0.1}, "noise_epsilon must be a finite number > 0"),
        ({"noise_epsilon": float("nan")}, "noise_epsilon must be a finite number > 0"),
        ({"noise_lr": 0}, "noise_lr"),
        ({"noise_refresh_steps": 0}, "noise_refresh_steps must be >= 1"),
        ({"noise_max_updates": -1}, "noise_max_updates must be >= 1"),
        ({"noisy_loss_weight": -1}, "noisy_loss_weight must be a finite number >= 0"),
        ({"noise_random_shrink": 1.0}, "noise_random_shrink must lie in"),
        ({"nullspace_mode": "adversarial"}, "use one of nullspace, random, norm_matched, none"),
        ({"noise_init_limit": 0}, "noise_init_limit must be a finite number > 0"),
        ({"noise_init_factor": 0}, "noise_init_factor must be a finite number > 0"),
        ({"noise_synthesis_batch_size": 0}, "noise_synthesis_batch_size must be >= 1"),
        ({"noise_objective": "l1"}, "use one of logit_mse, log_norm"),
    ],
)
def test_invalid_values_raise_with_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NullspaceArguments(**kwargs)
