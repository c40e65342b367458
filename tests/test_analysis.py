import pytest
import torch
from testing_utils import template_images

from hf_nullspace.analysis import convex_closure, noise_to_pixels, permuted_control, scaling_closure
from hf_nullspace.config import NullspaceArguments
from hf_nullspace.plots import plot_closure
from hf_nullspace.synthesis import synthesize_noise


@pytest.fixture(scope="module")
def learned(trained_tiny_vit):
    pixel_values = template_images(32, seed=11)[0]
    # a start large for this model's tokens, so the noise ends at the epsilon boundary far from the origin
    args = NullspaceArguments(noise_max_updates=1000, noise_init_limit=10.0)
    first = synthesize_noise(trained_tiny_vit, pixel_values, args, generator=torch.Generator().manual_seed(1))
    second = synthesize_noise(trained_tiny_vit, pixel_values, args, generator=torch.Generator().manual_seed(2))
    assert first.reached and second.reached
    return pixel_values, first.noise, second.noise


def test_scaling_closure_stays_inside_epsilon_below_scale_one(trained_tiny_vit, learned, tmp_path):
    pixel_values, noise, _ = learned
    records = scaling_closure(trained_tiny_vit, noise, pixel_values, [0.0, 0.25, 0.5, 0.75, 1.0, 3.0])
    statistics = {r["scale"]: r["statistic"] for r in records}
    assert statistics[0.0] == pytest.approx(0.0, abs=1e-10)
    assert all(statistics[a] < 0.03 for a in (0.25, 0.5, 0.75, 1.0))
    assert statistics[3.0] > statistics[1.0]
    assert plot_closure(records, "scale", 0.03, str(tmp_path / "s.png"), "scaling").endswith("s.png")


def test_convex_combinations_of_two_noises_stay_inside_epsilon(trained_tiny_vit, learned):
    pixel_values, first, second = learned
    records = convex_closure(trained_tiny_vit, first, second, pixel_values, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert all(r["statistic"] < 0.03 for r in records)


def test_learned_noise_keeps_predictions_better_than_its_permuted_control(trained_tiny_vit, learned):
    pixel_values, noise, _ = learned
    control = permuted_control(trained_tiny_vit, noise, pixel_values, generator=torch.Generator().manual_seed(0))
    assert control["norm"] == pytest.approx(float(noise.norm()))
    assert control["statistic"] < 0.03
    assert control["permuted_statistic"] > 3 * control["statistic"]
    assert control["agreement"] == 1.0 and control["permuted_agreement"] < 0.9


def test_noise_to_pixels_reaches_reachable_tokens_within_bounds(trained_tiny_vit):
    projection = trained_tiny_vit.vit.embeddings.patch_embeddings.projection
    pixels = torch.rand(1, 3, 32, 32) * 0.4 - 0.2
    with torch.no_grad():
        tokens = projection(pixels) - projection(torch.zeros_like(pixels))  # W x, without the bias
    noise = tokens.flatten(2).transpose(1, 2)
    recovered, residual = noise_to_pixels(trained_tiny_vit, noise, bounds=(-1.0, 1.0))
    assert recovered.shape == (3, 32, 32)
    assert residual < 1e-4 and recovered.abs().max() <= 1.0 + 1e-6
    _, clipped_residual = noise_to_pixels(trained_tiny_vit, noise * 50, bounds=(-0.01, 0.01))
    assert clipped_residual > 0.5
