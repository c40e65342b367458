import copy
import json

import pytest
import torch
from testing_utils import make_tiny_vit, make_trainer, template_images

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
    # the authors' fixed start U(-3, 3)
    args = NullspaceArguments(noise_epsilon=0.03, noise_max_updates=400, noise_init_limit=3.0)
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
    args = NullspaceArguments(noise_epsilon=1e-9, noise_max_updates=3, noise_fallback=False)
    result = synthesize_noise(trained_tiny_vit, batch, args)
    assert result.updates == 3 and not result.reached and result.statistic >= 1e-9
    assert not result.inside and not result.fallback


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


# ---- scale-free synthesis, fallback, held-out statistic, warm start, norm-matched control ---------------------------


def scaled_patch_projection(model, factor):
    """A copy of `model` whose patch-projection weight and bias are multiplied by `factor`."""
    scaled = copy.deepcopy(model)
    projection = scaled.vit.embeddings.patch_embeddings.projection
    with torch.no_grad():
        projection.weight.mul_(factor)
        projection.bias.mul_(factor)
    return scaled


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_fallback_never_returns_a_noise_outside_epsilon(trained_tiny_vit, batch, cap):
    # a start far outside epsilon and a cap of a few updates: the updates cannot bring it inside
    args = NullspaceArguments(noise_epsilon=0.01, noise_init_factor=8.0, noise_max_updates=cap)
    result = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(0))
    assert result.updates == cap and not result.reached and result.fallback and result.inside
    measured = statistic_of(trained_tiny_vit, batch["pixel_values"], result.noise)
    assert measured < args.noise_epsilon * (1 + 1e-4)
    assert measured == pytest.approx(result.statistic, rel=1e-3, abs=1e-8)
    assert result.norm > 0  # shrunk along the learned direction, not to nothing

    # without the fallback the same synthesis returns the noise outside epsilon
    args.noise_fallback = False
    unchecked = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(0))
    assert statistic_of(trained_tiny_vit, batch["pixel_values"], unchecked.noise) > args.noise_epsilon
    assert unchecked.norm > result.norm


def test_automatic_start_follows_the_scale_of_the_patch_embeddings(trained_tiny_vit, batch):
    scaled = scaled_patch_projection(trained_tiny_vit, 10.0)
    args = NullspaceArguments(noise_max_updates=300)
    plain = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(0))
    large = synthesize_noise(scaled, batch, args, generator=torch.Generator().manual_seed(0))
    assert plain.reached and large.reached and plain.updates > 0 and large.updates > 0
    assert large.norm >= 5 * plain.norm
    assert large.start_scale >= 5 * plain.start_scale
    # weight and bias times 10: the patch embeddings are exactly 10 times larger (up to float32 rounding)
    assert large.embedding_norm == pytest.approx(10 * plain.embedding_norm, rel=1e-5)
    assert statistic_of(scaled, batch["pixel_values"], large.noise) < args.noise_epsilon * (1 + 1e-4)

    # the authors' fixed start does not follow: the same U(-3, 3) lies deep inside epsilon of the scaled model
    fixed = NullspaceArguments(noise_max_updates=300, noise_init_limit=3.0)
    fixed_large = synthesize_noise(scaled, batch, fixed, generator=torch.Generator().manual_seed(0))
    assert fixed_large.updates == 0 and fixed_large.norm < 2 * plain.norm


def test_summary_records_scale_updates_statistics_and_norm_ratio(trained_tiny_vit, batch):
    result = synthesize_noise(
        trained_tiny_vit, batch, NullspaceArguments(), generator=torch.Generator().manual_seed(0)
    )
    summary = result.summary()
    for key in (
        "norm",
        "norm_ratio",
        "updates",
        "statistic",
        "heldout_statistic",
        "reached",
        "inside",
        "fallback",
        "start_scale",
        "boundary_scale",
        "embedding_norm",
        "redraws",
    ):
        assert key in summary, key
    tokens = []
    projection = trained_tiny_vit.vit.embeddings.patch_embeddings.projection
    handle = projection.register_forward_hook(lambda module, args, output: tokens.append(output.detach()))
    with torch.no_grad():
        trained_tiny_vit(pixel_values=batch["pixel_values"])
    handle.remove()
    embedding_norm = float(tokens[0].flatten(1).norm(dim=1).mean())
    assert summary["embedding_norm"] == pytest.approx(embedding_norm, rel=1e-4)
    assert summary["norm_ratio"] == pytest.approx(result.norm / embedding_norm, rel=1e-4)
    # started outside epsilon, beyond the calibrated boundary, and was learned back inside
    assert summary["start_scale"] == pytest.approx(2.0 * summary["boundary_scale"], rel=1e-4)
    assert summary["reached"] and summary["updates"] > 0 and summary["heldout_statistic"] is None
    json.dumps(summary)


def test_heldout_statistic_is_measured_on_the_heldout_data(trained_tiny_vit, batch):
    heldout = template_images(16, seed=123)[0]
    result = synthesize_noise(
        trained_tiny_vit, batch, NullspaceArguments(), generator=torch.Generator().manual_seed(0), heldout=heldout
    )
    expected = statistic_of(trained_tiny_vit, heldout, result.noise)
    assert result.heldout_statistic == pytest.approx(expected, rel=1e-4, abs=1e-8)
    assert result.heldout_statistic != pytest.approx(result.statistic, rel=1e-3)
    assert result.summary()["heldout_statistic"] == result.heldout_statistic


def cosine(a, b):
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def test_warm_start_starts_from_the_previous_noise(trained_tiny_vit, batch):
    args = NullspaceArguments()
    previous = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(0)).noise
    other = template_images(32, seed=7)[0]
    cold = synthesize_noise(trained_tiny_vit, other, args, generator=torch.Generator().manual_seed(1))
    warm = synthesize_noise(trained_tiny_vit, other, args, generator=torch.Generator().manual_seed(1), init=previous)
    assert abs(cosine(cold.noise, previous)) < 0.3
    assert cosine(warm.noise, previous) > 0.8
    assert warm.inside and statistic_of(trained_tiny_vit, other, warm.noise) < args.noise_epsilon * (1 + 1e-4)
    # the fixed start keeps the draw's RMS: the previous direction at the RMS of U(-3, 3)
    fixed = NullspaceArguments(noise_init_limit=3.0, noise_epsilon=10.0)  # inside at once: no update
    start = synthesize_noise(trained_tiny_vit, other, fixed, init=previous)
    assert start.updates == 0
    torch.testing.assert_close(start.noise, previous * (3.0 / 3**0.5 / float(previous.pow(2).mean().sqrt())))


def test_norm_matched_control_has_the_learned_norm_and_a_random_direction(trained_tiny_vit, batch):
    args = NullspaceArguments(nullspace_mode="norm_matched")
    learned = synthesize_noise(
        trained_tiny_vit, batch, NullspaceArguments(), generator=torch.Generator().manual_seed(0)
    )
    control = synthesize_noise(trained_tiny_vit, batch, args, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(control.learned_noise, learned.noise)
    assert control.norm == pytest.approx(learned.norm, rel=1e-5)
    assert control.learned_norm == pytest.approx(learned.norm, rel=1e-6)
    assert abs(cosine(control.noise, learned.noise)) < 0.3
    # the same norm in a random direction changes the predictions more than the learned noise does
    measured = statistic_of(trained_tiny_vit, batch["pixel_values"], control.noise)
    assert measured == pytest.approx(control.statistic, rel=1e-3, abs=1e-8)
    assert measured > learned.statistic
    assert control.summary()["learned_statistic"] == pytest.approx(learned.statistic)


def test_trainer_synthesises_on_a_sub_batch_and_holds_out_the_rest(tmp_path, monkeypatch, trained_tiny_vit):
    import hf_nullspace.trainer as trainer_module

    calls = []
    original = trainer_module.synthesize_noise

    def spy(model, batches, args, **kwargs):
        calls.append((batches["pixel_values"].shape[0], kwargs.get("heldout")))
        return original(model, batches, args, **kwargs)

    monkeypatch.setattr(trainer_module, "synthesize_noise", spy)
    pixel_values = template_images(8, seed=3)[0]
    trainer = make_trainer(
        tmp_path,
        NullspaceArguments(noise_synthesis_batch_size=5, noise_max_updates=5),
        copy.deepcopy(trained_tiny_vit),
    )
    record = trainer.refresh_noise(trainer.model, {"pixel_values": pixel_values})
    ((rows, heldout),) = calls
    assert rows == 5 and torch.equal(heldout["pixel_values"], pixel_values[5:])  # the held-out rows' model inputs
    assert record["heldout_statistic"] is not None and record["heldout_statistic"] >= 0

    whole = make_trainer(tmp_path, NullspaceArguments(noise_max_updates=5), copy.deepcopy(trained_tiny_vit))
    record = whole.refresh_noise(whole.model, {"pixel_values": pixel_values})
    assert calls[-1][0] == 8 and calls[-1][1] is None and record["heldout_statistic"] is None


def test_trainer_warm_start_passes_the_previous_learned_noise(tmp_path, monkeypatch, trained_tiny_vit):
    import hf_nullspace.trainer as trainer_module

    inits = []
    original = trainer_module.synthesize_noise

    def spy(model, batches, args, **kwargs):
        inits.append(kwargs.get("init"))
        return original(model, batches, args, **kwargs)

    monkeypatch.setattr(trainer_module, "synthesize_noise", spy)
    inputs = {"pixel_values": template_images(8, seed=3)[0]}
    for mode in ("nullspace", "norm_matched"):
        inits.clear()
        args = NullspaceArguments(nullspace_mode=mode, noise_warm_start=True, noise_max_updates=5)
        trainer = make_trainer(tmp_path, args, copy.deepcopy(trained_tiny_vit))
        first = trainer.refresh_noise(trainer.model, inputs)
        trainer.refresh_noise(trainer.model, inputs)
        assert inits[0] is None and not first["warm_start"]
        learned = trainer.noise_bank.noises[0] if mode == "nullspace" else None
        if learned is not None:
            torch.testing.assert_close(inits[1], learned)
        else:  # the learned noise, not the random one trained on
            assert trainer.noise_history[1]["warm_start"]
            assert float(inits[1].norm()) == pytest.approx(trainer.noise_history[0]["learned_norm"], rel=1e-5)
            assert abs(cosine(inits[1], trainer.noise_bank.noises[0])) < 0.3
    cold = make_trainer(tmp_path, NullspaceArguments(noise_max_updates=5), copy.deepcopy(trained_tiny_vit))
    inits.clear()
    cold.refresh_noise(cold.model, inputs)
    cold.refresh_noise(cold.model, inputs)
    assert inits == [None, None]


def test_a_model_that_ignores_its_input_gets_no_noise_and_a_warning(batch, caplog):
    model = make_tiny_vit().eval()
    with torch.no_grad():  # the head reads nothing: predictions never move, whatever the noise
        model.classifier.weight.zero_()
    with caplog.at_level("WARNING", logger="hf_nullspace.synthesis"):
        result = synthesize_noise(model, batch, NullspaceArguments(), generator=torch.Generator().manual_seed(0))
    assert "do not depend on the input yet" in caplog.text
    # no noise at the search limit (before: a start 2 x 1024 x the embeddings' RMS, trained on as it was)
    assert result.no_boundary and result.norm == 0.0 and result.updates == 0
