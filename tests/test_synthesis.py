import pytest
import torch
from conftest import template_images

from hf_nullspace.config import NullspaceArguments
from hf_nullspace.embedding import inject_noise
from hf_nullspace.synthesis import epsilon_statistic, synthesize_noise


@pytest.fixture(scope="module")
def batch():
    return {"pixel_values": template_images(32, seed=99)[0]}


def statistic_of(model, pixel_values, noise):
    with torch.no_grad():
        clean = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise):
            noisy = model(pixel_values=pixel_values).logits
    return float(epsilon_statistic(clean, noisy))


def test_epsilon_statistic_is_batch_mean_squared_softmax_distance():
    clean = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    noisy = torch.tensor([[0.0, 0.0], [0.0, 10.0]])
    p = torch.sigmoid(torch.tensor(10.0))
    expected = (0 + 2 * (p - (1 - p)) ** 2) / 2
    torch.testing.assert_close(epsilon_statistic(clean, noisy), expected)


def test_learned_noise_reaches_epsilon_from_a_large_start(trained_tiny_vit, batch):
    args = NullspaceArguments(noise_epsilon=0.03, noise_max_updates=400)
    result = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(0))
    assert result.noise.shape == (1, 16, 48) and result.noise.dtype == torch.float32
    assert result.reached and result.updates > 0
    # the uniform start is outside epsilon; the returned noise is inside, measured independently
    start = (torch.rand((1, 16, 48), generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3.0
    assert statistic_of(trained_tiny_vit, batch["pixel_values"], start) > args.noise_epsilon
    measured = statistic_of(trained_tiny_vit, batch["pixel_values"], result.noise)
    assert measured < args.noise_epsilon
    assert measured == pytest.approx(result.statistic, rel=1e-4, abs=1e-7)
    # near the epsilon boundary, not shrunk to nothing: a large share of the start's norm survives
    assert result.norm > 0.2 * float(start.norm())


def test_update_cap_returns_noise_without_reaching_epsilon(trained_tiny_vit, batch):
    args = NullspaceArguments(noise_epsilon=1e-9, noise_max_updates=3)
    result = synthesize_noise(trained_tiny_vit, batch, args)
    assert result.updates == 3 and not result.reached and result.statistic >= 1e-9


def test_model_state_is_restored_and_no_parameter_gradients(trained_tiny_vit, batch):
    trained_tiny_vit.train()
    try:
        modes = []
        handle = trained_tiny_vit.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        synthesize_noise(trained_tiny_vit, batch, NullspaceArguments(noise_max_updates=5))
        handle.remove()
        assert modes and not any(modes), "synthesis must run the model in eval mode"
        assert trained_tiny_vit.training
        assert all(p.requires_grad for p in trained_tiny_vit.parameters())
        assert all(p.grad is None for p in trained_tiny_vit.parameters())
    finally:
        trained_tiny_vit.eval()


def test_same_generator_same_noise(trained_tiny_vit, batch):
    args = NullspaceArguments(noise_max_updates=20)
    first = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(3))
    second = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first.noise, second.noise, rtol=0, atol=0)
    assert first.updates == second.updates


def test_random_baseline_shrinks_gaussian_noise_until_inside_epsilon(trained_tiny_vit, batch):
    # N(0, 1) is small next to this model's patch tokens: a tight epsilon makes the baseline shrink
    args = NullspaceArguments(nullspace_mode="random", noise_epsilon=1e-5, noise_max_updates=200)
    result = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(5))
    start = torch.randn((1, 16, 48), generator=torch.Generator().manual_seed(5))
    assert result.reached and result.updates > 0
    torch.testing.assert_close(result.noise, start * 0.8**result.updates, rtol=1e-5, atol=1e-6)
    assert statistic_of(trained_tiny_vit, batch["pixel_values"], result.noise) < 1e-5
    assert statistic_of(trained_tiny_vit, batch["pixel_values"], result.noise / 0.8) >= 1e-5


def test_log_norm_objective_reaches_epsilon(trained_tiny_vit, batch):
    args = NullspaceArguments(noise_objective="log_norm", noise_log_norm_weight=0.1, noise_max_updates=600)
    result = synthesize_noise(trained_tiny_vit, batch, args)
    assert result.reached
    assert statistic_of(trained_tiny_vit, batch["pixel_values"], result.noise) < args.noise_epsilon


def test_batches_are_cycled(trained_tiny_vit):
    seen = []
    batches = [template_images(8, seed=s)[0] for s in (1, 2)]
    handle = trained_tiny_vit.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True
    )
    try:
        synthesize_noise(trained_tiny_vit, batches, NullspaceArguments(noise_epsilon=1e-9, noise_max_updates=4))
    finally:
        handle.remove()
    ids = [id(b) for b in batches]
    order = [ids.index(id(t)) for t in seen if id(t) in ids]
    assert order.count(0) >= 2 and order.count(1) >= 2  # 5 statistics over 2 batches: both reused


def test_non_finite_statistic_is_redrawn_then_raises(trained_tiny_vit, batch):
    calls = {"n": 0}

    def poison_once(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    handle = trained_tiny_vit.classifier.register_forward_hook(poison_once)
    try:
        result = synthesize_noise(trained_tiny_vit, batch, NullspaceArguments(noise_max_updates=50))
    finally:
        handle.remove()
    assert result.redraws == 1 and torch.isfinite(result.noise).all()

    handle = trained_tiny_vit.classifier.register_forward_hook(lambda m, a, o: o * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="non-finite"):
            synthesize_noise(trained_tiny_vit, batch, NullspaceArguments(noise_max_redraws=2))
    finally:
        handle.remove()


def test_single_process_accelerator_gives_the_same_noise(trained_tiny_vit, batch):
    from accelerate import Accelerator

    args = NullspaceArguments(noise_max_updates=30)
    plain = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(1))
    synced = synthesize_noise(
        trained_tiny_vit, batch, args, accelerator=Accelerator(cpu=True), generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(plain.noise, synced.noise, rtol=0, atol=0)


def test_mode_none_has_nothing_to_synthesise(trained_tiny_vit, batch):
    with pytest.raises(ValueError, match="nothing to synthesise"):
        synthesize_noise(trained_tiny_vit, batch, NullspaceArguments(nullspace_mode="none"))
