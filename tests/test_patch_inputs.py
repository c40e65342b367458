"""Models that take their images cut into patches (SigLIP2): the patching against the model's own image processor,
padding, the collator and transforms of the main job, and the pixel-space wrapper of the attacks and corruptions.
The per-family tests (nullspace, synthesis, noisy steps, pipeline, push) are in test_families_hub.py."""

import numpy as np
import pytest
import torch
from PIL import Image
from testing_utils import (
    make_tiny_siglip2,
    make_tiny_vit,
    make_trainer,
    save_model,
    template_images,
    tiny_siglip2_processor,
    write_images,
    write_parquet,
)

from hf_nullspace import inject_noise
from hf_nullspace.data import BenchmarkSpec, collate_fn, transforms_from_image_processor
from hf_nullspace.finetune import build_trainer, parse_args
from hf_nullspace.patch_inputs import PatchingCollator, PatchInputs, collator_for, conv_weight, takes_patches
from hf_nullspace.robustness import Evaluation, PixelSpaceClassifier, Suite, evaluate_robustness
from hf_nullspace.robustness.attacks import fgsm


def image(seed: int = 0, size=(32, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).random((*size, 3)) * 255
    return Image.fromarray(pixels.astype("uint8"))


def normalised(picture: Image.Image) -> torch.Tensor:
    """A PIL image as a (1, 3, H, W) tensor mapped to [-1, 1], as SigLIP2's processor normalises."""
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255
    return ((pixels - 0.5) / 0.5)[None]


@pytest.mark.parametrize("max_num_patches", [16, 20])
def test_patch_inputs_equal_the_image_processor(max_num_patches):
    processor = tiny_siglip2_processor(max_num_patches)
    picture = image()
    expected = processor(picture, return_tensors="pt")
    found = PatchInputs(8, max_num_patches)(normalised(picture))
    assert found.keys() == expected.keys()
    for key in expected:
        assert found[key].dtype == expected[key].dtype and found[key].shape == expected[key].shape, key
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-6)
    assert found["pixel_attention_mask"].sum() == 16  # the 4x4 grid; the rest is padding


def test_images_that_do_not_tile_or_exceed_the_patches_are_refused():
    with pytest.raises(ValueError, match="do not tile"):
        PatchInputs(8)(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="more than 9"):
        PatchInputs(8, 9)(torch.zeros(1, 3, 32, 32))


def test_conv_weight_is_the_linear_projection_on_image_patches():
    model = make_tiny_siglip2().eval()
    projection = model.vision_model.embeddings.patch_embedding
    images = torch.randn(2, 3, 32, 32)
    by_linear = projection(PatchInputs(8)(images)["pixel_values"])  # (2, 16, 32)
    by_conv = torch.nn.functional.conv2d(images, conv_weight(model, projection), projection.bias, stride=8)
    torch.testing.assert_close(by_linear, by_conv.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert takes_patches(model) and not takes_patches(make_tiny_vit())


def test_padding_changes_no_logit_and_noise_on_padding_does_nothing():
    torch.manual_seed(0)
    model = make_tiny_siglip2().eval()
    images = template_images(3, seed=1)[0]
    padded = PatchInputs(8, 20)(images)
    with torch.no_grad():
        plain = model(**PatchInputs(8)(images)).logits
        torch.testing.assert_close(model(**padded).logits, plain, rtol=1e-4, atol=1e-5)
        on_padding = torch.zeros(1, 20, 32)
        on_padding[:, 16:] = 10 * torch.randn(1, 4, 32)
        with inject_noise(model, on_padding):
            torch.testing.assert_close(model(**padded).logits, plain, rtol=1e-4, atol=1e-5)
        on_patches = torch.zeros(1, 20, 32)
        on_patches[:, :16] = torch.randn(1, 16, 32)
        with inject_noise(model, on_patches):
            assert float((model(**padded).logits - plain).abs().max()) > 1e-2


def test_collator_and_transforms_of_the_siglip2_processor():
    processor = tiny_siglip2_processor(20)
    train, evaluation = transforms_from_image_processor(processor)
    assert train.size == evaluation.size == (32, 32)  # 8 x floor(sqrt(20)) pixels a side
    torch.testing.assert_close(evaluation(image()), normalised(image())[0], rtol=0, atol=1e-6)  # no resize at 32x32

    model = make_tiny_siglip2()
    collate = collator_for(model, processor)
    assert isinstance(collate, PatchingCollator) and collator_for(make_tiny_vit(), processor) is collate_fn
    rows = [{"pixel_values": evaluation(image(seed)), "labels": seed} for seed in range(3)]
    batch = collate(rows)
    expected = processor([image(seed) for seed in range(3)], return_tensors="pt")
    for key in expected:
        torch.testing.assert_close(batch[key], expected[key], rtol=0, atol=1e-6)
    assert batch["labels"].tolist() == [0, 1, 2]


def test_pixel_space_wrapper_cuts_normalised_images_into_patches():
    model = make_tiny_siglip2().eval()
    wrapper = PixelSpaceClassifier.from_image_processor(model, tiny_siglip2_processor())
    pictures = [image(seed) for seed in range(2)]
    pixels = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in pictures])
    with torch.no_grad():
        expected = model(**tiny_siglip2_processor()(pictures, return_tensors="pt")).logits
        torch.testing.assert_close(wrapper(pixels), expected, rtol=1e-5, atol=1e-5)
    # attacks act on pixels: the gradient reaches them through the patching
    labels = expected.argmax(-1)
    adversarial = fgsm(wrapper, pixels, labels, epsilon=8 / 255)
    assert adversarial.shape == pixels.shape and float((adversarial - pixels).abs().max()) <= 8 / 255 + 1e-6
    assert float((adversarial - pixels).abs().max()) > 1 / 255


def test_main_job_trains_and_evaluates_siglip2(tmp_path):
    data = write_parquet(tmp_path / "data")
    folder = save_model(tmp_path / "model", make_tiny_siglip2())
    tiny_siglip2_processor().save_pretrained(folder)  # in place of the ViT processor save_model writes
    args = [
        "--dataset_name",
        data,
        "--model_name_or_path",
        folder,
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--noise_refresh_steps",
        "1",
        "--noise_max_updates",
        "5",
        "--noise_init_limit",
        "3.0",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--robustness_suite",
        "none",
    ]
    trainer, _ = build_trainer(*parse_args(args))
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.noise.shape == (1, 16, 32)
    assert 0 <= trainer.evaluate()["eval_accuracy"] <= 1

    eval_data = write_images(tmp_path / "eval", num=8)
    spec = BenchmarkSpec(name="local", path=eval_data, split="test", label_space="custom", num_classes=10)
    attack = Evaluation("fgsm@8/255", group="attack", attack="fgsm", params=(("epsilon", 8 / 255),))
    noise = Evaluation("corruption/gaussian_noise/3", group="corruption", corruption="gaussian_noise", severity=3)
    suite = Suite("s", [Evaluation("clean"), attack, noise], spec)
    report = evaluate_robustness({"siglip2": folder}, suite=suite, progress=False)
    rows = {row["benchmark"]: row for row in report.to_dict()["models"][0]["results"]}
    for name in ("clean", "fgsm@8/255", "corruption/gaussian_noise"):  # severities are averaged per corruption
        assert rows[name]["num_samples"] == 8 and 0 <= rows[name]["value"] <= 1, rows[name]


def test_adversarial_modes_refuse_a_model_that_takes_patches(tmp_path):
    from hf_nullspace import NullspaceArguments

    with pytest.raises(ValueError, match="nullspace_mode='madry' attacks batches of images"):
        make_trainer(
            tmp_path,
            NullspaceArguments(nullspace_mode="madry"),
            make_tiny_siglip2(),
            processing_class=tiny_siglip2_processor(),
        )
