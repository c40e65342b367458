"""Attacks in [0, 1] pixel space on a tiny ViT trained on a separable synthetic task."""

import sys

import pytest
import torch

from hf_nullspace.robustness.attacks import ATTACKS, cw_l2, fgsm, patch_fool, pgd, run_attack
from hf_nullspace.robustness.model import PixelSpaceClassifier, tiled_convolution_gradients

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
EPS_LINF, EPS_L2 = 8 / 255, 1.0  # L2 0.5 fools none of the 48 images once the model trains with dropout
PATCH = 8

# case id -> (registry name, parameters, budget: ("linf" | "l2", epsilon), "patch" or None)
CASES = {
    "fgsm": ("fgsm", {"epsilon": EPS_LINF}, ("linf", EPS_LINF)),
    "pgd": ("pgd", {"epsilon": EPS_LINF, "step_size": EPS_LINF / 4, "steps": 10}, ("linf", EPS_LINF)),
    "pgd_l2": ("pgd_l2", {"epsilon": EPS_L2, "step_size": EPS_L2 / 4, "steps": 10}, ("l2", EPS_L2)),
    "cw": ("cw", {"steps": 30, "lr": 0.05}, None),
    "cw_search": ("cw", {"steps": 20, "lr": 0.05, "c": 0.1, "binary_search_steps": 3}, None),
    "patchfool": ("patchfool", {"steps": 20, "selection_layer": None, "attention_layers": [0, 1]}, "patch"),
    "autoattack": (
        "autoattack",
        {"epsilon": EPS_LINF, "version": "custom", "attacks": ["apgd-ce"]},
        ("linf", EPS_LINF),
    ),
}
SEEDED = {"pgd", "pgd_l2", "patchfool"}
# the official AutoAttack code takes about 20 s a call here: its cases run in the slow tier
CASE_PARAMS = [pytest.param(case, marks=pytest.mark.slow) if case == "autoattack" else case for case in CASES]


def _synthetic(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes, each a fixed random +-1 pattern on the 4x4 patch grid, on grey with pixel noise."""
    prototypes = torch.randint(0, 2, (10, 3, 4, 4), generator=torch.Generator().manual_seed(1234)).float() * 2 - 1
    prototypes = prototypes.repeat_interleave(PATCH, dim=2).repeat_interleave(PATCH, dim=3)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (num,), generator=generator)
    noise = torch.randn(num, 3, 32, 32, generator=generator)
    return (0.5 + 0.2 * prototypes[labels] + 0.1 * noise).clamp(0, 1), labels


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on 2 shared cores a second OpenMP thread makes this tiny model up to 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store():
    """Trained weights, evaluation data and adversarial images, shared by the tests of this module."""
    return {"data": _synthetic(48, seed=1)}


@pytest.fixture
def classifier(tiny_vit, store):
    """The conftest tiny ViT, trained once per module (about 2 s), wrapped in [0, 1] pixel space."""
    if "state" not in store:
        model = PixelSpaceClassifier(tiny_vit.train(), MEAN, STD)
        optimizer = torch.optim.AdamW(tiny_vit.parameters(), lr=3e-3)
        for step in range(60):
            images, labels = _synthetic(64, seed=100 + step)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tiny_vit.zero_grad(set_to_none=True)
        store["state"] = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    tiny_vit.load_state_dict(store["state"])
    return PixelSpaceClassifier(tiny_vit.eval(), MEAN, STD)


def _accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def _run(case: str, model, images, labels, seed: int = 0) -> torch.Tensor:
    name, params, _ = CASES[case]
    if name == "autoattack":
        pytest.importorskip("pyautoattack")
        params = {**params, "seed": seed}
    if case in SEEDED:
        params = {**params, "generator": torch.Generator().manual_seed(seed)}
    return run_attack(name, model, images, labels, **params)


@pytest.fixture
def adversarial(classifier, store, request):
    """Adversarial images of the case `request.param`, computed once per module with seed 0."""
    case = request.param
    if case not in store:
        store[case] = _run(case, classifier, *store["data"])
    return case, store[case]


def test_clean_accuracy_well_above_chance(classifier, store):
    assert _accuracy(classifier, *store["data"]) >= 0.9


def test_normalisation_matches_manual(tiny_vit):
    from transformers import ViTImageProcessorPil

    processor = ViTImageProcessorPil()
    wrapped = PixelSpaceClassifier.from_image_processor(tiny_vit, processor)
    images = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny_vit(pixel_values=(images - mean) / std).logits
        torch.testing.assert_close(wrapped(images), expected, rtol=0, atol=1e-6)


def test_label_subset_restricts_logits(tiny_vit):
    subset = [7, 2, 5]
    full = PixelSpaceClassifier(tiny_vit, MEAN, STD)
    restricted = PixelSpaceClassifier(tiny_vit, MEAN, STD, label_subset=subset)
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        logits, sub_logits = full(images), restricted(images)
    torch.testing.assert_close(sub_logits, logits[:, subset])
    masked = torch.full_like(logits, float("-inf"))
    masked[:, subset] = logits[:, subset]
    assert torch.equal(torch.tensor(subset)[sub_logits.argmax(dim=1)], masked.argmax(dim=1))
    assert restricted.to_subset_labels(torch.tensor([5, 7, 2])).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="not in `label_subset`"):
        restricted.to_subset_labels(torch.tensor([3]))


def test_tiled_convolution_gradients_match_the_convolution_backward():
    """A patch embedding (stride = kernel) on an image its patches do not cover to the edge: same output, same input
    gradient (zero on the uncovered edge); other convolutions and trainable ones are left alone."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Conv2d(8, 5, 2, stride=1))
    model.requires_grad_(False)
    images, weights = torch.rand(6, 3, 18, 18), torch.randn(6, 5, 3, 3)

    def output_and_gradient():
        x = images.clone().requires_grad_(True)
        out = model(x)
        return out.detach(), torch.autograd.grad((out * weights).sum(), x)[0]

    reference = output_and_gradient()
    with tiled_convolution_gradients(model):
        assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
        tiled = output_and_gradient()
    assert torch.equal(tiled[0], reference[0])
    torch.testing.assert_close(tiled[1], reference[1], rtol=1e-5, atol=1e-7)
    assert (tiled[1][..., 16:, :] == 0).all() and (tiled[1][..., 16:] == 0).all()
    assert reference[1].abs().sum() > 0
    assert "forward" not in vars(model[0])  # restored
    model[0].weight.requires_grad_(True)
    with tiled_convolution_gradients(model):
        assert "forward" not in vars(model[0])  # a trainable convolution keeps its own backward
    model[0].weight.requires_grad_(False)
    model[0].forward = hooked = model[0].forward  # e.g. accelerate's device hook
    with tiled_convolution_gradients(model):
        assert vars(model[0])["forward"] is hooked
    assert vars(model[0])["forward"] is hooked


@pytest.mark.parametrize("adversarial", CASE_PARAMS, indirect=True)
def test_attack_fools_within_budget(classifier, store, adversarial):
    case, adv = adversarial
    images, labels = store["data"]
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    clean = _accuracy(classifier, images, labels)
    robust = _accuracy(classifier, adv, labels)
    assert robust <= clean
    assert robust < clean or case == "fgsm"
    delta = (adv - images).flatten(1)
    budget = CASES[case][2]
    if budget == "patch":
        changed = (adv != images).any(dim=1).view(len(adv), 4, PATCH, 4, PATCH).any(dim=(2, 4))
        assert (changed.sum(dim=(1, 2)) <= 1).all()
    elif budget is not None:
        norm, epsilon = budget
        if norm == "linf":
            assert delta.abs().max() <= epsilon + 1e-6
        else:
            assert delta.norm(dim=1).max() <= epsilon + 1e-5


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_attack_leaves_model_and_rng_alone(classifier, store, case):
    images, labels = store["data"]
    images, labels = images[:8], labels[:8]
    classifier.train()
    rng_state = torch.get_rng_state()
    attn_implementation = classifier.config._attn_implementation
    _run(case, classifier, images, labels)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert classifier.training and classifier.model.training
    assert all(p.grad is None and p.requires_grad for p in classifier.parameters())
    assert classifier.config._attn_implementation == attn_implementation


@pytest.mark.parametrize("adversarial", CASE_PARAMS, indirect=True)
def test_attack_is_deterministic(classifier, store, adversarial):
    case, adv = adversarial
    images, labels = store["data"]
    assert torch.equal(_run(case, classifier, images, labels, seed=0), adv)
    if case in SEEDED:
        assert not torch.equal(_run(case, classifier, images, labels, seed=1), adv)


@pytest.mark.parametrize(
    "case, epsilons",
    [
        ("fgsm", [0.0, 1 / 255, 4 / 255, 16 / 255, 64 / 255]),
        ("pgd", [0.0, 1 / 255, 4 / 255, 16 / 255, 64 / 255]),
        ("pgd_l2", [0.0, 0.1, 0.5, 2.0, 8.0]),
    ],
)
def test_larger_budget_never_helps(classifier, store, case, epsilons):
    images, labels = store["data"]
    name, params, _ = CASES[case]
    accuracies = []
    for epsilon in epsilons:
        seeded = {"generator": torch.Generator().manual_seed(0)} if case in SEEDED else {}
        steps = {"step_size": epsilon / 4} if "step_size" in params else {}
        adv = run_attack(name, classifier, images, labels, **{**params, "epsilon": epsilon, **steps, **seeded})
        accuracies.append(_accuracy(classifier, adv, labels))
    assert accuracies[0] == _accuracy(classifier, images, labels)
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < accuracies[0]


def test_fgsm_and_pgd_match_torchattacks(classifier, store):
    torchattacks = pytest.importorskip("torchattacks")
    images, labels = store["data"]
    oracle = torchattacks.FGSM(classifier, eps=EPS_LINF)(images, labels)
    torch.testing.assert_close(fgsm(classifier, images, labels, EPS_LINF), oracle, rtol=0, atol=1e-6)
    oracle = torchattacks.PGD(classifier, eps=EPS_LINF, alpha=EPS_LINF / 4, steps=10, random_start=False)(
        images, labels
    )
    ours = pgd(classifier, images, labels, EPS_LINF, EPS_LINF / 4, 10, random_start=False)
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-6)
    oracle = torchattacks.PGDL2(classifier, eps=EPS_L2, alpha=EPS_L2 / 4, steps=10, random_start=False)(images, labels)
    ours = pgd(classifier, images, labels, EPS_L2, EPS_L2 / 4, 10, norm="l2", random_start=False)
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-5)


def test_patchfool_attacks_the_most_attended_patches(classifier, store):
    images, labels = store["data"]
    adv = patch_fool(classifier, images, labels, num_patches=2, steps=5, selection_layer=1)
    changed = (adv != images).any(dim=1).view(len(adv), 4, PATCH, 4, PATCH).any(dim=(2, 4)).flatten(1)
    with torch.no_grad():
        _, attentions = classifier.logits_and_attentions(images)
    top2 = attentions[1].mean(dim=(1, 2))[:, 1:].topk(2, dim=1).indices
    expected = torch.zeros_like(changed).scatter_(1, top2, True)
    assert (changed <= expected).all() and changed.sum() > 0


def test_patchfool_needs_attentions():
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=10)
    cnn = PixelSpaceClassifier(ResNetForImageClassification(config).eval(), MEAN, STD)
    images, labels = _synthetic(2, seed=0)
    with pytest.raises(ValueError, match="ViT-family"):
        patch_fool(cnn, images, labels, steps=1)


def test_patchfool_rejects_missing_layer(classifier, store):
    images, labels = store["data"]
    with pytest.raises(ValueError, match="Layer 4 out of range"):
        patch_fool(classifier, images[:2], labels[:2], steps=1)


def test_cw_returns_original_where_it_fails(classifier, store):
    images, labels = store["data"]
    adv = cw_l2(classifier, images, labels, c=1e-4, steps=3)
    assert torch.equal(adv, images)


def test_autoattack_missing_package(classifier, store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(ImportError, match=r"pip install hf-nullspace\[attacks\]"):
        run_attack("autoattack", classifier, *store["data"], epsilon=EPS_LINF)


def test_unknown_attack_lists_valid_names(classifier, store):
    with pytest.raises(ValueError, match="valid names: autoattack, cw, fgsm, patchfool, pgd, pgd_l2"):
        run_attack("deepfool", classifier, *store["data"])
    assert set(ATTACKS) == {"fgsm", "pgd", "pgd_l2", "cw", "patchfool", "autoattack"}


def test_rejects_normalised_images(classifier, store):
    images, labels = store["data"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(classifier, classifier.normalize(images), labels, EPS_LINF)
