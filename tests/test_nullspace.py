import torch
from testing_utils import make_tiny_vit

from hf_nullspace.nullspace import patch_embedding_nullspace


def test_dimension_is_patch_dim_minus_rank(tiny_vit):
    nullspace = patch_embedding_nullspace(tiny_vit)
    weight = tiny_vit.vit.embeddings.patch_embeddings.projection.weight.detach().double().reshape(48, -1)
    rank = int(torch.linalg.matrix_rank(weight))
    assert nullspace.patch_dim == 3 * 8 * 8 == 192
    assert nullspace.rank == rank == 48
    assert nullspace.dimension == 192 - rank == 144
    basis = nullspace.basis
    torch.testing.assert_close(basis.T @ basis, torch.eye(144, dtype=basis.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(weight @ basis, torch.zeros(48, 144, dtype=basis.dtype), atol=1e-10, rtol=0)


def test_rank_deficient_projection_enlarges_the_nullspace(tiny_vit):
    projection = tiny_vit.vit.embeddings.patch_embeddings.projection
    with torch.no_grad():
        projection.weight[40:] = projection.weight[:8] * 2.0  # 8 rows now repeat others: rank 40
    assert patch_embedding_nullspace(tiny_vit).dimension == 192 - 40


def test_projected_noise_of_large_norm_leaves_logits_unchanged(tiny_vit):
    nullspace = patch_embedding_nullspace(tiny_vit)
    pixel_values = torch.rand(8, 3, 32, 32)
    noise = torch.randn(8, 3, 32, 32) * 20
    projected = nullspace.project(noise)
    assert projected.flatten(1).norm(dim=1).min() > 100
    with torch.no_grad():
        clean = tiny_vit(pixel_values=pixel_values).logits
        invariant = tiny_vit(pixel_values=pixel_values + projected).logits
        changed = tiny_vit(pixel_values=pixel_values + noise).logits
    torch.testing.assert_close(invariant, clean, rtol=1e-4, atol=1e-4)
    assert (changed - clean).abs().max() > 1e-2


def test_projection_is_idempotent_and_patchwise(tiny_vit):
    nullspace = patch_embedding_nullspace(tiny_vit)
    noise = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    once = nullspace.project(noise)
    torch.testing.assert_close(nullspace.project(once), once, atol=1e-10, rtol=0)
    # a perturbation confined to one patch stays in that patch
    local = torch.zeros_like(noise)
    local[:, :, 8:16, 16:24] = noise[:, :, 8:16, 16:24]
    projected = nullspace.project(local)
    outside = projected.clone()
    outside[:, :, 8:16, 16:24] = 0
    assert outside.abs().max() == 0 and projected.abs().max() > 0


def test_wide_patch_embedding_reports_dimension_zero():
    model = make_tiny_vit(patch_size=4, hidden_size=48, num_attention_heads=3)  # c*r*r = 48 <= d = 48
    nullspace = patch_embedding_nullspace(model)
    assert nullspace.patch_dim == 48 and nullspace.dimension == 0
    perturbation = torch.randn(1, 3, 32, 32)
    assert nullspace.project(perturbation).abs().max() == 0
    assert nullspace.sample((1, 3, 32, 32)).abs().max() == 0
    assert nullspace.patterns(4).shape == (0, 3, 4, 4)
