import pytest
import torch
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    Swinv2Config,
    Swinv2ForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_nullspace.embedding import UnsupportedModelError, find_patch_embedding, inject_noise, noise_shape
from hf_nullspace.nullspace import patch_embedding_nullspace

COMMON = dict(image_size=32, num_channels=3, num_labels=5)
VIT_LIKE = dict(COMMON, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
SWIN_LIKE = dict(COMMON, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)

# family -> (model class, config, expected (N, D) of the noise)
FAMILIES = {
    "vit": (ViTForImageClassification, ViTConfig(**VIT_LIKE), (16, 32)),
    "deit": (DeiTForImageClassification, DeiTConfig(**VIT_LIKE), (16, 32)),
    "beit": (BeitForImageClassification, BeitConfig(**VIT_LIKE, use_mean_pooling=True), (16, 32)),
    "data2vec-vision": (Data2VecVisionForImageClassification, Data2VecVisionConfig(**VIT_LIKE), (16, 32)),
    "dinov2": (Dinov2ForImageClassification, Dinov2Config(**VIT_LIKE), (16, 32)),
    "swin": (SwinForImageClassification, SwinConfig(**SWIN_LIKE), (64, 16)),
    "swinv2": (Swinv2ForImageClassification, Swinv2Config(**SWIN_LIKE), (64, 16)),
}


@pytest.fixture(params=sorted(FAMILIES))
def family_model(request):
    model_class, config, shape = FAMILIES[request.param]
    torch.manual_seed(0)
    return request.param, model_class(config).eval(), shape


def test_finds_patch_projection_and_noise_shape(family_model):
    family, model, (num_patches, dim) = family_model
    name, projection = find_patch_embedding(model)
    assert name.endswith("embeddings.patch_embeddings.projection")
    assert isinstance(projection, torch.nn.Conv2d) and projection.kernel_size == projection.stride
    assert noise_shape(model, torch.rand(2, 3, 32, 32)) == (1, num_patches, dim)


def test_injected_noise_changes_logits_only_inside_context(family_model):
    _, model, (num_patches, dim) = family_model
    pixel_values = torch.rand(4, 3, 32, 32)
    noise = torch.randn(1, num_patches, dim) * 3
    with torch.no_grad():
        clean = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise):
            noisy = model(pixel_values=pixel_values).logits
        after = model(pixel_values=pixel_values).logits
    assert torch.isfinite(noisy).all()
    assert (noisy - clean).abs().max() > 1e-3
    torch.testing.assert_close(after, clean, rtol=0, atol=0)


def test_noise_on_a_slice_of_rows_equals_separate_passes(family_model):
    _, model, (num_patches, dim) = family_model
    pixel_values = torch.rand(3, 3, 32, 32)
    noise = torch.randn(1, num_patches, dim)
    with torch.no_grad():
        clean = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise):
            noisy = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise, rows=slice(3, 6)):
            both = model(pixel_values=torch.cat([pixel_values, pixel_values])).logits
    torch.testing.assert_close(both[:3], clean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[3:], noisy, rtol=1e-4, atol=1e-5)


def test_exact_nullspace_leaves_every_family_invariant(family_model):
    _, model, _ = family_model
    nullspace = patch_embedding_nullspace(model)
    assert nullspace.dimension == nullspace.patch_dim - nullspace.rank > 0
    pixel_values = torch.rand(2, 3, 32, 32)
    perturbation = nullspace.sample(pixel_values.shape, norm=50.0)
    with torch.no_grad():
        clean = model(pixel_values=pixel_values).logits
        shifted = model(pixel_values=pixel_values + perturbation).logits
    torch.testing.assert_close(shifted, clean, rtol=1e-4, atol=1e-4)


def test_noise_gradient_flows_through_hook():
    model = ViTForImageClassification(ViTConfig(**VIT_LIKE)).eval()
    noise = torch.zeros(1, 16, 32, requires_grad=True)
    with inject_noise(model, noise):
        model(pixel_values=torch.rand(2, 3, 32, 32)).logits.sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0


def test_wrong_noise_shape_is_a_clear_error():
    model = ViTForImageClassification(ViTConfig(**VIT_LIKE)).eval()
    with pytest.raises(ValueError, match=r"expected \(1, 16, 32\)"):
        with inject_noise(model, torch.zeros(1, 9, 32)):
            model(pixel_values=torch.rand(1, 3, 32, 32))


def test_model_without_patch_embedding_lists_families_and_override():
    model = ResNetForImageClassification(ResNetConfig(num_labels=3, depths=[1], hidden_sizes=[8], embedding_size=8))
    with pytest.raises(UnsupportedModelError, match="Supported model types: .*vit.*nullspace_patch_embedding_module"):
        find_patch_embedding(model)


def test_module_name_override():
    model = ViTForImageClassification(ViTConfig(**VIT_LIKE))
    name, module = find_patch_embedding(model, "vit.embeddings.patch_embeddings.projection")
    assert module is model.vit.embeddings.patch_embeddings.projection
    with pytest.raises(UnsupportedModelError, match="no module named"):
        find_patch_embedding(model, "vit.nope")
    with pytest.raises(UnsupportedModelError, match="not a patch projection"):
        find_patch_embedding(model, "classifier")
