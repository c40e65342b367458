import pytest
import torch
from testing_utils import FAMILIES, make_tiny_model
from transformers import ResNetConfig, ResNetForImageClassification

from hf_nullspace.embedding import NoiseHook, UnsupportedModelError, find_patch_embedding, inject_noise, noise_shape
from hf_nullspace.nullspace import patch_embedding_nullspace


@pytest.fixture(params=sorted(FAMILIES))
def family_model(request):
    """`(model_type, its tiny model in eval mode, (N, D) of its noise)` for every family of `FAMILIES`."""
    torch.manual_seed(0)
    return request.param, make_tiny_model(request.param).eval(), FAMILIES[request.param][2]


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
    model = make_tiny_model("vit").eval()
    noise = torch.zeros(1, 16, 32, requires_grad=True)
    with inject_noise(model, noise):
        model(pixel_values=torch.rand(2, 3, 32, 32)).logits.sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0


def test_wrong_noise_shape_is_a_clear_error():
    model = make_tiny_model("vit").eval()
    with pytest.raises(ValueError, match=r"expected \(1, 16, 32\)"):
        with inject_noise(model, torch.zeros(1, 9, 32)):
            model(pixel_values=torch.rand(1, 3, 32, 32))


def test_model_without_patch_embedding_lists_families_and_override():
    model = ResNetForImageClassification(ResNetConfig(num_labels=3, depths=[1], hidden_sizes=[8], embedding_size=8))
    with pytest.raises(UnsupportedModelError, match="Supported model types: .*vit.*nullspace_patch_embedding_module"):
        find_patch_embedding(model)


def test_module_name_override():
    model = make_tiny_model("vit")
    name, module = find_patch_embedding(model, "vit.embeddings.patch_embeddings.projection")
    assert module is model.vit.embeddings.patch_embeddings.projection
    with pytest.raises(UnsupportedModelError, match="no module named"):
        find_patch_embedding(model, "vit.nope")
    with pytest.raises(UnsupportedModelError, match="not a patch projection"):
        find_patch_embedding(model, "classifier")


# ---- NoiseHook: the hook training installs once -------------------------------------------------------------------


def test_find_patch_embedding_walks_the_model_once():
    model = make_tiny_model("vit")
    walks = []
    original = model.named_modules
    model.named_modules = lambda *a, **k: walks.append(1) or original(*a, **k)
    first = find_patch_embedding(model)
    for _ in range(5):
        assert find_patch_embedding(model) == first
    assert len(walks) == 1
    # a module replaced since is found by its path, not a stale object
    model.vit.embeddings.patch_embeddings.projection = torch.nn.Conv2d(3, 32, 8, 8)
    assert find_patch_embedding(model)[1] is model.vit.embeddings.patch_embeddings.projection


def test_noise_hook_matches_inject_noise_and_is_inert_when_disabled(family_model):
    _, model, (num_patches, dim) = family_model
    pixel_values = torch.rand(3, 3, 32, 32)
    noise = torch.randn(1, num_patches, dim)
    with torch.no_grad():
        clean = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise):
            noisy = model(pixel_values=pixel_values).logits
        hook = NoiseHook(model)
        try:
            hook.set_noise(noise)
            torch.testing.assert_close(model(pixel_values=pixel_values).logits, clean, rtol=0, atol=0)
            with hook.enabled("all"):
                torch.testing.assert_close(model(pixel_values=pixel_values).logits, noisy, rtol=0, atol=0)
            with hook.enabled("halves"):
                both = model(pixel_values=torch.cat([pixel_values, pixel_values])).logits
            torch.testing.assert_close(model(pixel_values=pixel_values).logits, clean, rtol=0, atol=0)
        finally:
            hook.remove()
    torch.testing.assert_close(both[:3], clean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[3:], noisy, rtol=1e-4, atol=1e-5)
    assert not find_patch_embedding(model)[1]._forward_hooks


def test_noise_hook_updates_its_noise_in_place():
    model = make_tiny_model("vit").eval()
    pixel_values = torch.rand(2, 3, 32, 32)
    hook = NoiseHook(model)
    try:
        hook.set_noise(torch.randn(1, 16, 32))
        storage = hook._pair.data_ptr()
        second = torch.randn(16, 32)  # (N, D) works too
        hook.set_noise(second)
        assert hook._pair.data_ptr() == storage and hook.source is second
        with torch.no_grad(), hook.enabled("all"):
            noisy = model(pixel_values=pixel_values).logits
        with torch.no_grad(), inject_noise(model, second):
            expected = model(pixel_values=pixel_values).logits
        torch.testing.assert_close(noisy, expected, rtol=0, atol=0)
    finally:
        hook.remove()


def test_noise_hook_gradient_matches_separate_passes():
    torch.manual_seed(0)
    # no dropout: the shared and the separate passes must see the same train-mode forward
    model = make_tiny_model("vit", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    pixel_values, labels, noise = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(1, 16, 32)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    ce = torch.nn.functional.cross_entropy
    separate_clean = ce(model(pixel_values=pixel_values).logits, labels)
    with inject_noise(model, noise):
        separate = grads(separate_clean + ce(model(pixel_values=pixel_values).logits, labels))
    hook = NoiseHook(model)
    try:
        hook.set_noise(noise)
        with hook.enabled("halves"):
            clean, noisy = model(pixel_values=torch.cat([pixel_values, pixel_values])).logits.split(4)
        shared = grads(ce(clean, labels) + ce(noisy, labels))
    finally:
        hook.remove()
    torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-6)


def test_noise_hook_errors():
    model = make_tiny_model("vit").eval()
    hook = NoiseHook(model)
    try:
        with pytest.raises(RuntimeError, match="set_noise"):
            with hook.enabled("all"):
                pass
        hook.set_noise(torch.zeros(1, 9, 32))
        with pytest.raises(ValueError, match=r"expected \(1, 16, 32\)"):
            with hook.enabled("all"):
                model(pixel_values=torch.rand(1, 3, 32, 32))
        hook.set_noise(torch.zeros(1, 16, 32))
        with pytest.raises(ValueError, match="even batch"):
            with hook.enabled("halves"):
                model(pixel_values=torch.rand(3, 3, 32, 32))
        with pytest.raises(ValueError, match="layout"):
            with hook.enabled("rows"):
                pass
    finally:
        hook.remove()


def test_inject_noise_on_any_rows():
    model = make_tiny_model("vit").eval()
    pixel_values, noise = torch.rand(4, 3, 32, 32), torch.randn(1, 16, 32)
    with torch.no_grad():
        clean = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise):
            noisy = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise, rows=slice(1, 4, 2)):
            mixed = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(mixed[[0, 2]], clean[[0, 2]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[[1, 3]], noisy[[1, 3]], rtol=1e-4, atol=1e-5)
