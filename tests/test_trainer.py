import json
import os

import pytest
import torch
from testing_utils import (
    NO_DROPOUT,
    StopAt,
    final_weights,
    make_tiny_vit,
    make_trainer,
    reading_tiny_vit,
    template_images,
)
from transformers import ResNetConfig, ResNetForImageClassification

from hf_nullspace.config import NullspaceArguments
from hf_nullspace.embedding import UnsupportedModelError
from hf_nullspace.noise_bank import NOISE_BANK_FILE, NOISE_STATE_FILE, NoiseBank, last_complete_checkpoint


def gradient(trainer, inputs):
    model = trainer.model
    model.train()
    model.zero_grad()
    trainer.compute_loss(model, inputs).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    return grad


def test_loss_contains_the_noisy_term(tmp_path):
    pixel_values, labels = template_images(8, seed=3)
    inputs = {"pixel_values": pixel_values, "labels": labels}
    # no dropout: the gradients of three trainers and a loss recomputed by hand must see the same forward passes
    plain = make_trainer(tmp_path / "none", NullspaceArguments(nullspace_mode="none"), reading_tiny_vit(**NO_DROPOUT))
    noisy = make_trainer(tmp_path / "ns", NullspaceArguments(noise_max_updates=5), reading_tiny_vit(**NO_DROPOUT))
    noisy.refresh_noise(noisy.model, inputs)
    zero = make_trainer(tmp_path / "w0", NullspaceArguments(noisy_loss_weight=0.0), reading_tiny_vit(**NO_DROPOUT))
    zero.noise_bank = NoiseBank(noisy.noise_bank.noises, noisy.noise_bank.history)
    for trainer in (plain, noisy, zero):
        trainer.model.load_state_dict(plain.model.state_dict())
    g_plain, g_noisy, g_zero = gradient(plain, inputs), gradient(noisy, inputs), gradient(zero, inputs)
    torch.testing.assert_close(g_zero, g_plain, rtol=1e-5, atol=1e-7)
    assert (g_noisy - g_plain).norm() > 1e-3 * g_plain.norm()

    # the loss is exactly CE(clean) + CE(noisy)
    from hf_nullspace.embedding import inject_noise

    model = noisy.model
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(model(pixel_values=pixel_values).logits, labels)
        with inject_noise(model, noisy.noise):
            noisy_ce = torch.nn.functional.cross_entropy(model(pixel_values=pixel_values).logits, labels)
        loss = noisy.compute_loss(model, inputs)
    torch.testing.assert_close(loss, clean + noisy_ce, rtol=1e-5, atol=1e-6)


def test_shared_forward_equals_separate_passes(tmp_path):
    pixel_values, labels = template_images(8, seed=4)
    inputs = {"pixel_values": pixel_values, "labels": labels}
    # no dropout: one doubled forward pass and two separate ones must give the same gradient
    shared_args = NullspaceArguments(noise_max_updates=5, noise_shared_forward=True)
    shared = make_trainer(tmp_path / "a", shared_args, make_tiny_vit(**NO_DROPOUT))
    shared.refresh_noise(shared.model, inputs)
    separate_args = NullspaceArguments(noise_shared_forward=False)
    separate = make_trainer(tmp_path / "b", separate_args, make_tiny_vit(**NO_DROPOUT))
    separate.model.load_state_dict(shared.model.state_dict())
    separate.noise_bank = NoiseBank(shared.noise_bank.noises, shared.noise_bank.history)
    torch.testing.assert_close(gradient(shared, inputs), gradient(separate, inputs), rtol=1e-4, atol=1e-6)


def test_refresh_counts_optimiser_steps_under_gradient_accumulation(tmp_path):
    trainer = make_trainer(
        tmp_path,
        NullspaceArguments(noise_max_updates=3, noise_refresh_steps=3),
        max_steps=7,
        gradient_accumulation_steps=2,
    )
    calls = []
    original = trainer.refresh_noise
    trainer.refresh_noise = lambda model, inputs: calls.append(trainer.state.global_step) or original(model, inputs)
    trainer.train()
    assert calls == [0, 3, 6]
    assert [r["step"] for r in trainer.noise_history] == [0, 3, 6]
    assert len(trainer.noise_bank) == 3


def test_refresh_is_logged_and_history_lands_in_output_dir(tmp_path):
    trainer = make_trainer(tmp_path, NullspaceArguments(noise_max_updates=10, noise_refresh_steps=2), max_steps=4)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "noise_norm" in entry]
    assert [entry["step"] for entry in logs] == [0, 2]
    assert {"noise_norm", "noise_updates", "noise_statistic", "noise_reached"} <= set(logs[0])
    history = json.loads((tmp_path / "noise_history.json").read_text())
    assert [r["step"] for r in history] == [0, 2]
    assert history[0]["norm"] == pytest.approx(float(trainer.noise_bank.noises[0].norm()), rel=1e-6)
    assert (tmp_path / "noise_norm.png").stat().st_size > 1000
    assert (tmp_path / NOISE_BANK_FILE).exists()


def test_mode_none_never_synthesises(tmp_path):
    trainer = make_trainer(tmp_path, NullspaceArguments(nullspace_mode="none"), max_steps=2)
    trainer.train()
    assert len(trainer.noise_bank) == 0 and trainer.noise_history == []


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    args = dict(max_steps=6, save_strategy="steps", save_steps=3)
    nullspace = NullspaceArguments(noise_max_updates=10, noise_refresh_steps=2)
    full = make_trainer(tmp_path / "full", nullspace, **args)
    full.train()

    interrupted = make_trainer(tmp_path / "cut", nullspace, **args)
    interrupted.add_callback(StopAt(4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert last_complete_checkpoint(str(tmp_path / "cut")).endswith("checkpoint-3")

    resumed = make_trainer(tmp_path / "cut", nullspace, **args)
    resumed.train(resume_from_checkpoint=True)
    assert [r["step"] for r in resumed.noise_history] == [0, 2, 4]
    assert not any(r["no_boundary"] for r in full.noise_history)
    # the checkpoint holds the current noise (step 2); the resumed run then synthesises the one of step 4
    for a, b in zip(full.noise_bank.noises[1:], resumed.noise_bank.noises, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(full.noise_history, resumed.noise_history, strict=True):
        assert a["norm"] == pytest.approx(b["norm"], rel=1e-5)
    torch.testing.assert_close(final_weights(resumed), final_weights(full), rtol=0, atol=1e-6)


def test_incomplete_checkpoint_is_never_resumed(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    assert (tmp_path / "checkpoint-4" / NOISE_STATE_FILE).exists()
    os.remove(tmp_path / "checkpoint-4" / NOISE_STATE_FILE)  # as if killed while writing
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-2")


def test_unsupported_model_fails_before_training(tmp_path):
    resnet = ResNetForImageClassification(ResNetConfig(num_labels=3, depths=[1], hidden_sizes=[8], embedding_size=8))
    with pytest.raises(UnsupportedModelError, match="nullspace_patch_embedding_module"):
        make_trainer(tmp_path, model=resnet)


def test_non_finite_noisy_loss_redraws_the_noise_and_training_continues(tmp_path):
    trainer = make_trainer(tmp_path, NullspaceArguments(noise_max_updates=10, noise_refresh_steps=100), max_steps=3)
    calls = {"n": 0}

    def poison_noisy_half_once(module, args, output):
        if not module.training or output.shape[0] != 16:  # synthesis runs in eval mode
            return output
        calls["n"] += 1
        if calls["n"] == 1:
            output = output.clone()
            output[8:] = float("nan")
        return output

    handle = trainer.model.classifier.register_forward_hook(poison_noisy_half_once)
    try:
        trainer.train()
    finally:
        handle.remove()
    assert [(r["step"], r["reason"]) for r in trainer.noise_history] == [(0, "schedule"), (0, "non-finite loss")]
    assert trainer.state.global_step == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
