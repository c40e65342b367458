"""Checkpoints of every shape resume exactly: sharded safetensors (`model.safetensors.index.json`), and the noise state
when the Trainer's resume path skips `_load_from_checkpoint`, as it does under DeepSpeed.

DeepSpeed itself is not run: it is built for GPUs (installing it expects a CUDA toolchain, and its CPU backend needs
Intel's oneCCL bindings for the process group), and the test machines have neither. The second test stands in for its
resume path: the weights come back by another route than the override, and `train` alone restores the noise state.

FSDP is not tested here: accelerate 1.15 turns its FSDP plugin on only for GPU-family process groups
(`AcceleratorState` never makes a MULTI_CPU state an FSDP one), so `--fsdp` on CPU silently trains plain DDP, and
forcing the state to FSDP fails inside `fully_shard` (no device mesh for CPU). Under FSDP the Trainer calls
`_load_from_checkpoint` after `accelerator.prepare`; the override then leaves the weights to FSDP's own state dict
and restores the noise state (and `train` restores it too).
"""

import functools
import json
import os

import pytest
import torch
from testing_utils import StopAt, final_weights, make_trainer
from transformers import Trainer
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from hf_nullspace.config import NullspaceArguments
from hf_nullspace.noise_bank import last_complete_checkpoint

ARGS = dict(max_steps=6, save_strategy="steps", save_steps=3)
NULLSPACE = NullspaceArguments(noise_max_updates=10, noise_refresh_steps=2)


def sharded_trainer(folder):
    trainer = make_trainer(folder, NULLSPACE, **ARGS)
    model = trainer.model  # the Trainer saves with model.save_pretrained: small shards
    model.save_pretrained = functools.partial(model.save_pretrained, max_shard_size="40KB")
    return trainer


def interrupted_at_step_3(folder, make):
    trainer = make(folder)
    trainer.add_callback(StopAt(4))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    checkpoint = last_complete_checkpoint(str(folder))
    assert checkpoint.endswith("checkpoint-3")
    return checkpoint


def test_a_sharded_checkpoint_resumes_exactly_like_a_single_file(tmp_path):
    full = make_trainer(tmp_path / "full", NULLSPACE, **ARGS)
    full.train()
    checkpoint = interrupted_at_step_3(tmp_path / "cut", sharded_trainer)
    assert os.path.isfile(os.path.join(checkpoint, SAFE_WEIGHTS_INDEX_NAME))
    assert not os.path.isfile(os.path.join(checkpoint, SAFE_WEIGHTS_NAME))
    with open(os.path.join(checkpoint, SAFE_WEIGHTS_INDEX_NAME)) as handle:
        assert len(set(json.load(handle)["weight_map"].values())) > 1

    resumed = sharded_trainer(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=True)
    assert [r["step"] for r in resumed.noise_history] == [0, 2, 4]
    # the checkpoint holds the current noise (step 2); the resumed run then synthesises the one of step 4
    for a, b in zip(full.noise_bank.noises[1:], resumed.noise_bank.noises, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(final_weights(resumed), final_weights(full), rtol=0, atol=1e-6)


def test_train_restores_the_noise_state_when_load_from_checkpoint_is_bypassed(tmp_path):
    """A stand-in for DeepSpeed's resume path (not run here, see the module docstring): the Trainer resumes the
    weights through the engine and never calls the `_load_from_checkpoint` override, so `train` restores the noise
    bank itself. Here the override is replaced by `Trainer`'s own method, which loads the weights only."""
    checkpoint = interrupted_at_step_3(tmp_path, lambda folder: make_trainer(folder, NULLSPACE, **ARGS))
    saved = make_trainer(tmp_path / "unused", NULLSPACE, **ARGS)
    saved.load_noise_state(checkpoint)

    resumed = make_trainer(tmp_path, NULLSPACE, **ARGS)
    # the engine's path: weights restored by the engine (here: Trainer's plain load), no noise state from it
    resumed._load_from_checkpoint = functools.partial(Trainer._load_from_checkpoint, resumed)
    resumed.train(resume_from_checkpoint=True)
    assert [r["step"] for r in resumed.noise_history] == [0, 2, 4]  # not [2, 4]: the bank was restored
    for a, b in zip(saved.noise_bank.noises, resumed.noise_bank.noises[:1], strict=True):  # the current one
        torch.testing.assert_close(a, b, rtol=0, atol=0)
