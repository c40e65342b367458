"""The families added to `PATCH_EMBEDDING_MODULES` beyond ViT/DeiT/BEiT/Data2Vec/DINOv2/ViT-MSN/Swin: CLIP, MetaCLIP-2,
SigLIP, SigLIP2, I-JEPA, Donut-Swin, FocalNet and PVT classifiers, and timm vision transformers through `TimmWrapper`.
SigLIP2 takes its images cut into patches: every forward here goes through `model_inputs`, which cuts them as its
image processor does (`PatchInputs`).

Each family, as a tiny model built from its config with dropout and drop-path above 0: the exact nullspace and the
invariance along it, synthesis reaching epsilon, a few noisy `NullspaceTrainer` steps, save and `from_pretrained` /
`pipeline("image-classification")`, and a push to the local test Hub whose files the family's own loader reads
(timm's `create_model("hf-hub:...")` for timm). timm imports torchvision; where timm cannot be imported the timm
cases are skipped.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import serve
from PIL import Image
from safetensors.torch import save_file
from testing_utils import SIGLIP2_VISION, tiny_siglip2_processor
from transformers import TrainingArguments, ViTImageProcessor

from hf_nullspace import (
    PATCH_EMBEDDING_MODULES,
    NullspaceArguments,
    NullspaceTrainer,
    UnsupportedModelError,
    epsilon_statistic,
    find_patch_embedding,
    inject_noise,
    noise_shape,
    patch_embedding_nullspace,
    synthesize_noise,
)
from hf_nullspace.patch_inputs import PatchInputs, collator_for

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_familiestokenAbCdEfGhIjKlMnOpQrStUvWxYz0123"
HAS_TIMM = importlib.util.find_spec("timm") is not None and importlib.util.find_spec("torchvision") is not None
TIMM_SKIP = "timm (and the torchvision it imports) is not installed: pip install 'hf-nullspace[timm]'"
# the nine families of the first table, tested in tests/test_families.py
FIRST_FAMILIES = {
    "vit",
    "deit",
    "beit",
    "data2vec-vision",
    "dinov2",
    "dinov2_with_registers",
    "vit_msn",
    "swin",
    "swinv2",
}
NUM_LABELS = 10
ID2LABEL = {i: f"class_{i}" for i in range(NUM_LABELS)}
_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    attention_dropout=0.1,
)
_SWIN = dict(
    image_size=32,
    patch_size=4,
    embed_dim=16,
    depths=[1, 1],
    hidden_dropout_prob=0.1,
    drop_path_rate=0.1,
)
_TIMM_VIT = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    drop_rate=0.1,
    proj_drop_rate=0.1,
    attn_drop_rate=0.1,
    drop_path_rate=0.1,
)
# model_type -> (class name, config arguments, (N, D) of the patch-token noise on 32x32 images)
FAMILIES = {
    "clip": ("CLIPForImageClassification", dict(vision_config=_VISION), (16, 32)),
    "metaclip_2": ("MetaClip2ForImageClassification", dict(vision_config=_VISION), (16, 32)),
    "siglip": ("SiglipForImageClassification", dict(vision_config=_VISION), (16, 32)),
    "siglip2": ("Siglip2ForImageClassification", dict(vision_config=SIGLIP2_VISION), (16, 32)),
    "ijepa": (
        "IJepaForImageClassification",
        dict(_VISION, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
        (16, 32),
    ),
    "donut-swin": (
        "DonutSwinForImageClassification",
        dict(_SWIN, num_heads=[1, 2], window_size=4, mlp_ratio=2.0, attention_probs_dropout_prob=0.1),
        (64, 16),
    ),
    "focalnet": ("FocalNetForImageClassification", dict(_SWIN, focal_levels=[2, 2]), (64, 16)),
    "pvt": (
        "PvtForImageClassification",
        dict(
            image_size=32,
            num_encoder_blocks=2,
            depths=[1, 1],
            sequence_reduction_ratios=[2, 1],
            hidden_sizes=[16, 32],
            patch_sizes=[4, 2],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            drop_path_rate=0.1,
        ),
        (64, 16),
    ),
    "timm_wrapper": ("TimmWrapperForImageClassification", dict(architecture="vit_tiny_patch16_224"), (16, 32)),
}
FAMILY_PARAMS = [
    pytest.param(t, id=t, marks=pytest.mark.skipif(t == "timm_wrapper" and not HAS_TIMM, reason=TIMM_SKIP))
    for t in FAMILIES
]


def make_processor(model_type: str):
    """The family's image processor for 32x32 images (mean and std 0.5): SigLIP2's cuts them into 16 patches."""
    if model_type == "siglip2":
        return tiny_siglip2_processor()
    return ViTImageProcessor(size={"height": 32, "width": 32})


def model_inputs(model, pixel_values: torch.Tensor) -> dict:
    """The model's inputs for normalised images (B, 3, 32, 32): the images, or for SigLIP2 their patches as its
    processor gives them."""
    patch_inputs = PatchInputs.for_model(model, make_processor(model.config.model_type))
    return {"pixel_values": pixel_values} if patch_inputs is None else patch_inputs(pixel_values)


def make_model(model_type: str, folder: Path):
    """The family's tiny classifier, saved to `folder` and loaded back with `AutoModelForImageClassification` as a
    Hub checkpoint would be (train mode). A timm model is made and saved by timm itself, in timm's format."""
    import transformers
    from transformers import AutoModelForImageClassification

    class_name, config, _ = FAMILIES[model_type]
    if model_type == "timm_wrapper":
        import timm
        from timm.models import save_for_hf

        model = timm.create_model(config["architecture"], num_classes=NUM_LABELS, **_TIMM_VIT)
        labels = {"label_names": list(ID2LABEL.values())}
        save_for_hf(model, folder, model_config=labels, model_args=_TIMM_VIT, safe_serialization=True)
        # timm 1.0 writes num_classes into model_args too, which TimmWrapper then passes to timm twice (TypeError);
        # the checkpoints on the Hub keep it at the top level only
        saved = json.loads((folder / "config.json").read_text())
        saved["model_args"].pop("num_classes", None)
        (folder / "config.json").write_text(json.dumps(saved))
    else:
        model_class = getattr(transformers, class_name)
        labels = dict(num_labels=NUM_LABELS, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
        model_class(model_class.config_class(**config, **labels)).save_pretrained(folder)
    make_processor(model_type).save_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert type(model).__name__ == class_name and model.config.model_type == model_type
    return model.train()


def template_images(num: int, seed: int):
    """A separable task: each class is a fixed random template plus noise. Returns (pixel_values, labels)."""
    generator = torch.Generator().manual_seed(1234)
    templates = torch.randn(NUM_LABELS, 3, 32, 32, generator=generator)
    generator.manual_seed(seed)
    labels = torch.randint(0, NUM_LABELS, (num,), generator=generator)
    return templates[labels] + 0.5 * torch.randn(num, 3, 32, 32, generator=generator), labels


def logits(model, pixel_values, noise=None):
    inputs = model_inputs(model, pixel_values)
    with torch.no_grad():
        if noise is None:
            return model(**inputs).logits
        with inject_noise(model, noise):
            return model(**inputs).logits


@pytest.fixture(scope="module", params=FAMILY_PARAMS)
def model_type(request):
    return request.param


@pytest.fixture(scope="module")
def trained(model_type, tmp_path_factory):
    """The family's tiny model after a few AdamW steps on `template_images` (eval mode): confident enough that a
    large uniform noise leaves the epsilon-approximate nullspace."""
    torch.manual_seed(0)
    model = make_model(model_type, tmp_path_factory.mktemp(f"{model_type}-base"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(8):
        pixel_values, labels = template_images(16, seed=step + 1)
        loss = model(**model_inputs(model, pixel_values), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_every_supported_model_type_is_tested_here_or_in_test_families():
    assert set(PATCH_EMBEDDING_MODULES) == FIRST_FAMILIES | set(FAMILIES)


def test_exact_nullspace_leaves_the_logits_unchanged(model_type, trained):
    pixel_values = template_images(4, seed=50)[0]
    name, projection = find_patch_embedding(trained)
    assert name.endswith(PATCH_EMBEDDING_MODULES[model_type])
    assert noise_shape(trained, model_inputs(trained, pixel_values)) == (1, *FAMILIES[model_type][2])
    nullspace = patch_embedding_nullspace(trained)
    _, dim = FAMILIES[model_type][2]
    assert nullspace.hidden_size == dim and nullspace.rank == dim  # a random projection has full rank
    assert nullspace.dimension == nullspace.patch_dim - dim > 0

    draw = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(0))
    inside = nullspace.project(draw)
    inside = inside * (pixel_values.norm() / inside.norm())  # as large as the images themselves
    outside = draw - nullspace.project(draw)
    outside = outside * (pixel_values.norm() / outside.norm())
    clean = logits(trained, pixel_values)
    scale = float(clean.abs().max())
    assert float((logits(trained, pixel_values + inside) - clean).abs().max()) < 1e-4 * max(scale, 1.0)
    assert float((logits(trained, pixel_values + outside) - clean).abs().max()) > 1e-2


def test_synthesis_reaches_epsilon_as_measured_independently(model_type, trained):
    pixel_values = template_images(8, seed=99)[0]
    shape = noise_shape(trained, model_inputs(trained, pixel_values))
    limit = 3.0
    start = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * limit
    clean = logits(trained, pixel_values)
    epsilon = float(epsilon_statistic(clean, logits(trained, pixel_values, start))) / 4
    assert epsilon > 1e-6, "the uniform start must leave the epsilon ball, or synthesis has nothing to do"
    args = NullspaceArguments(noise_epsilon=epsilon, noise_init_limit=limit, noise_max_updates=300)
    inputs = model_inputs(trained, pixel_values)
    result = synthesize_noise(trained, inputs, args, generator=torch.Generator().manual_seed(0))

    assert result.reached and result.updates > 0, result.summary()
    measured = float(epsilon_statistic(clean, logits(trained, pixel_values, result.noise)))
    assert measured < epsilon * (1 + 1e-4)
    assert result.norm > 0.05 * float(start.norm())  # moved into the nullspace, not shrunk to nothing


def _rows(num: int, seed: int) -> list[dict]:
    pixel_values, labels = template_images(num, seed)
    return [{"pixel_values": pixel_values[i], "labels": labels[i]} for i in range(num)]


def _collate(rows):
    return {key: torch.stack([row[key] for row in rows]) for key in ("pixel_values", "labels")}


@pytest.fixture(scope="module")
def noisy_run(model_type, trained, tmp_path_factory):
    """Two `NullspaceTrainer` steps from the trained model (dropout active), the projection's batch sizes recorded,
    saved with `save_model`; returns `(trainer, batch sizes, output folder)`."""
    output_dir = tmp_path_factory.mktemp(f"{model_type}-run")
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        learning_rate=1e-3,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = NullspaceTrainer(
        model=trained.train(),
        args=args,
        train_dataset=_rows(8, seed=7),
        data_collator=collator_for(trained, make_processor(model_type), _collate),
        # the authors' fixed start: these untrained models barely read their input, and the automatic start would
        # find no epsilon boundary for some (no noise to train on, `no_boundary`)
        nullspace_args=NullspaceArguments(noise_refresh_steps=1, noise_max_updates=5, noise_init_limit=3.0),
    )
    _, projection = find_patch_embedding(trainer.model)
    batches = []
    handle = projection.register_forward_hook(
        lambda module, inputs, output: batches.append(output.shape[0]) if module.training else None
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    try:
        trainer.train()
    finally:
        handle.remove()
    trainer.save_model(str(output_dir))
    make_processor(model_type).save_pretrained(output_dir)
    changed = max(float((p.detach() - before[name]).abs().max()) for name, p in trainer.model.named_parameters())
    return trainer, batches, changed, output_dir


def test_noisy_training_steps(model_type, noisy_run):
    trainer, batches, changed, _ = noisy_run
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), trainer.state.log_history
    assert changed > 1e-5
    # each step's forward pass holds the clean and the noisy copy of the batch of 4
    assert batches == [8, 8], batches
    assert trainer.noise.shape == (1, *FAMILIES[model_type][2]) and torch.isfinite(trainer.noise).all()
    assert [record["step"] for record in trainer.noise_history] == [0, 1]


def test_saved_run_loads_and_classifies(model_type, noisy_run):
    from transformers import AutoModelForImageClassification, pipeline

    trainer, _, _, output_dir = noisy_run
    pixel_values = template_images(3, seed=5)[0]
    expected = logits(trainer.model.eval(), pixel_values)
    loaded = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    torch.testing.assert_close(logits(loaded, pixel_values), expected, rtol=0, atol=1e-5)

    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    predictions = classifier(image, top_k=NUM_LABELS)
    with torch.no_grad():
        scores = loaded(**classifier.image_processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    assert predictions[0]["label"] == loaded.config.id2label[int(scores.argmax())]
    for prediction in predictions:
        score = float(scores[loaded.config.label2id[prediction["label"]]])
        assert prediction["score"] == pytest.approx(score, abs=1e-5)


PUSH_AND_LOAD = """
import json, sys
import torch
import transformers
from huggingface_hub import HfApi, hf_hub_download
from safetensors import safe_open
from safetensors.torch import load_file

from hf_nullspace.hub import push_run

folder, repo, token, class_name, inputs = sys.argv[1:6]
out = {"commit": push_run(folder, repo, token=token)}
# read back from the Hub into an empty cache
inputs = load_file(inputs)
with torch.no_grad():
    model = getattr(transformers, class_name).from_pretrained(repo).eval()
    out["transformers"] = model(**inputs).logits.tolist()
    if class_name == "TimmWrapperForImageClassification":
        import timm

        out["timm"] = timm.create_model("hf-hub:" + repo, pretrained=True).eval()(inputs["pixel_values"]).tolist()
with safe_open(hf_hub_download(repo, "model.safetensors"), "pt") as weights:
    out["keys"] = sorted(weights.keys())
out["files"] = sorted(HfApi().list_repo_files(repo))
print(json.dumps(out))
"""


def run_fresh(args: list[str], endpoint: str, hf_home: Path) -> str:
    """Runs a Python command in a fresh process with the test Hub as `HF_ENDPOINT`; returns its last stdout line."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    process = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, f"subprocess failed:\n{process.stdout}\n{process.stderr[-4000:]}"
    return process.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_pushed_run_is_read_by_the_familys_own_loader(model_type, noisy_run, tmp_path):
    trainer, _, _, output_dir = noisy_run
    pixel_values = template_images(3, seed=6)[0]
    expected = logits(trainer.model.eval(), pixel_values)
    save_file(model_inputs(trainer.model, pixel_values), tmp_path / "inputs.safetensors")
    repo_id = f"robust-org/tiny-{model_type.replace('_', '-')}-nullspace"
    with serve(tmp_path / "hub", token=TOKEN) as (endpoint, _):
        args = [str(output_dir), repo_id, TOKEN, FAMILIES[model_type][0], str(tmp_path / "inputs.safetensors")]
        loaded = json.loads(run_fresh(["-c", textwrap.dedent(PUSH_AND_LOAD), *args], endpoint, tmp_path / "home"))
    assert loaded["commit"].startswith(f"{endpoint}/{repo_id}/commit/")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "noise_bank.safetensors"} <= set(
        loaded["files"]
    )
    torch.testing.assert_close(torch.tensor(loaded["transformers"]), expected, rtol=0, atol=1e-5)
    if model_type == "timm_wrapper":
        # the pushed weights are in timm's own format (no `timm_model.` prefix) and timm reads the trained values
        assert loaded["keys"] and not any(key.startswith("timm_model.") for key in loaded["keys"])
        torch.testing.assert_close(torch.tensor(loaded["timm"]), expected, rtol=0, atol=1e-5)


def test_unsupported_model_error_names_the_families_and_the_way_out(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    with pytest.raises(UnsupportedModelError) as error:
        find_patch_embedding(model)
    message = str(error.value)
    assert "'resnet'" in message and "ResNetForImageClassification" in message
    for model_type in ("vit", "clip", "siglip", "timm_wrapper"):
        assert model_type in message
    assert "nullspace_patch_embedding_module" in message and "--module-name" in message

    # a wrong name is answered with the projections the model does have
    clip = make_model("clip", tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"found in it: \['vision_model.embeddings.patch_embedding'\]"):
        find_patch_embedding(clip, "vision_model.nope")
