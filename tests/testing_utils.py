"""Helpers shared by the tests: tiny models built from configs, synthetic data, trainers, saved runs and the command
lines of the main job and of `accelerate launch`. Fixtures and pytest hooks live in `conftest.py`.

The tiny models keep dropout and drop-path above 0 where their family has them, so that a model left in training mode
gives noisy outputs and a train/eval-mode bug shows. A test that needs two identical train-mode forwards passes 0.
"""

import functools
import io
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import torch
from transformers import TrainerCallback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

# dropout and drop-path of every tiny model (see the module docstring)
DROPOUT = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
DROP_PATH = dict(drop_path_rate=0.1)
# for the few tests that compare two train-mode forward passes of one model
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# ---- tiny models ---------------------------------------------------------------------------------------------------


def make_tiny_vit(**overrides):
    """A tiny ViT for 32x32 RGB images with 8x8 patches (c*r*r = 192 > hidden 48), 10 labels, dropout 0.1."""
    from transformers import ViTConfig, ViTForImageClassification

    config = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=10,
        **DROPOUT,
    )
    config.update(overrides)
    return ViTForImageClassification(ViTConfig(**config))


TINY_IMAGE_SIZE = 32
_COMMON = dict(image_size=TINY_IMAGE_SIZE, num_channels=3, num_labels=10)
_VIT_LIKE = dict(_COMMON, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **DROPOUT)
# Swin merges 2x2 patches per stage and attends in windows: 4x4 patches of a 32x32 image give an 8x8 grid, windows of
# 4 fit both stages (8x8, then 4x4) without padding.
_SWIN_LIKE = dict(
    _COMMON,
    patch_size=4,
    embed_dim=16,
    depths=[1, 1],
    num_heads=[1, 2],
    window_size=4,
    mlp_ratio=2.0,
    **DROPOUT,
    **DROP_PATH,
)

# model_type -> (transformers model class, its config's arguments, (N, D) of the patch-token noise). DeiT's Auto
# entry names two classes (with and without the distillation head), so the classes are named here explicitly.
FAMILIES = {
    "vit": ("ViTForImageClassification", dict(_VIT_LIKE, intermediate_size=64), (16, 32)),
    "deit": ("DeiTForImageClassification", dict(_VIT_LIKE, intermediate_size=64), (16, 32)),
    "beit": (
        "BeitForImageClassification",
        dict(_VIT_LIKE, intermediate_size=64, use_mean_pooling=True, **DROP_PATH),
        (16, 32),
    ),
    "data2vec-vision": (
        "Data2VecVisionForImageClassification",
        dict(_VIT_LIKE, intermediate_size=64, **DROP_PATH),
        (16, 32),
    ),
    "dinov2": ("Dinov2ForImageClassification", dict(_VIT_LIKE, mlp_ratio=2, **DROP_PATH), (16, 32)),
    "dinov2_with_registers": (
        "Dinov2WithRegistersForImageClassification",
        dict(_VIT_LIKE, mlp_ratio=2, num_register_tokens=2, **DROP_PATH),
        (16, 32),
    ),
    "vit_msn": ("ViTMSNForImageClassification", dict(_VIT_LIKE, intermediate_size=64), (16, 32)),
    "swin": ("SwinForImageClassification", _SWIN_LIKE, (64, 16)),
    "swinv2": ("Swinv2ForImageClassification", _SWIN_LIKE, (64, 16)),
}


# SigLIP2 takes its images cut into patches and has no image size: 16 position embeddings (a 4x4 grid of 8x8 patches,
# c*r*r = 192 > hidden 32) and attention dropout, its only dropout
SIGLIP2_VISION = dict(
    patch_size=8,
    num_patches=16,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    attention_dropout=0.1,
)


def make_tiny_siglip2(**overrides):
    """A tiny `Siglip2ForImageClassification` (`SIGLIP2_VISION`) with 10 labels; train mode, as built."""
    from transformers import Siglip2Config, Siglip2ForImageClassification

    return Siglip2ForImageClassification(Siglip2Config(vision_config=SIGLIP2_VISION, num_labels=10, **overrides))


def tiny_siglip2_processor(max_num_patches: int = 16):
    """SigLIP2's image processor for the tiny SigLIP2: a 32x32 image becomes its 16 patches of 8x8 (padded to
    `max_num_patches`), pixels mapped from [0, 1] to [-1, 1]."""
    from transformers import Siglip2ImageProcessorPil

    return Siglip2ImageProcessorPil(patch_size=8, max_num_patches=max_num_patches)


def make_tiny_model(model_type: str, **overrides):
    """A tiny `*ForImageClassification` of a supported family (`FAMILIES`) for 32x32 RGB images: 10 labels, dropout
    and drop-path 0.1, 2 ViT layers of width 32 or 2 Swin stages from width 16; train mode, as built.
    `FAMILIES[model_type][2]` is the (N, D) of its patch-token noise."""
    import transformers

    class_name, config, _ = FAMILIES[model_type]
    model_class = getattr(transformers, class_name)
    model = model_class(model_class.config_class(**{**config, **overrides}))
    assert model.config.model_type == model_type
    return model


# ---- synthetic data ------------------------------------------------------------------------------------------------


def template_images(num: int, seed: int = 0, num_classes: int = 10):
    """A separable synthetic task: each class is a fixed random template plus noise. Returns (pixel_values, labels)."""
    generator = torch.Generator().manual_seed(1234)
    templates = torch.randn(num_classes, 3, 32, 32, generator=generator)
    generator.manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    return templates[labels] + 0.5 * torch.randn(num, 3, 32, 32, generator=generator), labels


class TemplateDataset(torch.utils.data.Dataset):
    """`template_images(size, seed)` as a map-style dataset of `{"pixel_values", "labels"}` rows."""

    def __init__(self, size: int = 96, seed: int = 7):
        self.pixel_values, self.labels = template_images(size, seed=seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


# processor of the saved tiny models: 32x32, pixels mapped from [0, 1] to [-1, 1]
def tiny_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def write_parquet(folder, num=48, num_classes=10, label_feature=None, columns=("image", "label")):
    """`template_images` as PNG rows of `train.parquet` (all but the last 16) and `test.parquet` (the last 16)."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    pixel_values, labels = template_images(num, num_classes=num_classes)
    arrays = ((pixel_values.clamp(-2, 2) + 2) / 4 * 255).byte().permute(0, 2, 3, 1).numpy()
    images = [PILImage.fromarray(np.ascontiguousarray(a)) for a in arrays]
    label_feature = label_feature or ClassLabel(names=[f"class_{i}" for i in range(num_classes)])
    features = Features({columns[0]: Image(), columns[1]: label_feature})
    os.makedirs(folder, exist_ok=True)
    for split, part in (("train", slice(0, num - 16)), ("test", slice(num - 16, num))):
        data = {columns[0]: images[part], columns[1]: labels[part].tolist()}
        Dataset.from_dict(data, features=features).to_parquet(os.path.join(folder, f"{split}.parquet"))
    return str(folder)


def write_images(path, num=24, num_classes=10, corrupt_rows=(), class_names=None):
    """`num` random 32x32 PNGs with random labels as `test.parquet`; `corrupt_rows` are truncated (undecodable)."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(num):
        buffer = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()
        images.append({"bytes": data[: len(data) // 3] if i in corrupt_rows else data, "path": None})
        labels.append(int(rng.integers(0, num_classes)))
    label = ClassLabel(names=class_names) if class_names else Value("int64")
    features = Features({"image": Image(), "label": label})
    os.makedirs(path, exist_ok=True)
    Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
        os.path.join(path, "test.parquet")
    )
    return str(path)


def save_model(folder, model=None, names=None):
    """Saves `model` (default: a new `make_tiny_vit` with a class per name of `names`) with `tiny_processor`, its
    label names `names` (default: `class_i`)."""
    model = model if model is not None else make_tiny_vit(num_labels=len(names) if names else 10)
    names = names or [f"class_{i}" for i in range(model.config.num_labels)]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return str(folder)


def manual_accuracy(model, path, columns=None, bf16: bool = False) -> float:
    """Accuracy of `model` (in eval mode) on `path/test.parquet` by hand (resize to 32, [-1, 1]), over logit `columns`
    if given, under bfloat16 autocast if `bf16`."""
    from datasets import load_dataset

    from hf_nullspace.data import EvalTransform

    rows = load_dataset("parquet", data_files=os.path.join(path, "test.parquet"), split="train")
    transform = EvalTransform(32, crop_pct=1.0)
    images = torch.stack([transform(row["image"]) for row in rows])
    labels = torch.tensor(rows["label"])
    training = model.training
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model.eval()(pixel_values=(images - 0.5) / 0.5).logits.float()
    model.train(training)
    logits = logits if columns is None else logits[:, columns]
    return float((logits.argmax(-1) == labels).float().mean())


# ---- trainers ------------------------------------------------------------------------------------------------------


def tiny_training_args(output_dir, **overrides):
    """`TrainingArguments` of the trainer tests: CPU, constant lr 1e-3, batch 8, 4 steps, logs every step, no saves."""
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**defaults, **overrides})


@functools.cache
def _reading_tiny_vit_state() -> dict:
    torch.manual_seed(0)
    model = make_tiny_vit()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        pixel_values, labels = template_images(32, seed=100 + step)
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def reading_tiny_vit(**overrides):
    """A `make_tiny_vit(**overrides)` with the weights of 30 steps on the templates: unlike an untrained head, it reads
    its input, so an epsilon boundary exists and the automatic start synthesises a noise (an untrained one gets none:
    `no_boundary`)."""
    model = make_tiny_vit(**overrides)
    model.load_state_dict(_reading_tiny_vit_state())
    return model


def make_trainer(output_dir, nullspace_args=None, model=None, train_dataset=None, **training):
    """A `NullspaceTrainer` on `TemplateDataset()` with `tiny_training_args(output_dir, **training)`; the model
    defaults to a new `reading_tiny_vit()`, the nullspace arguments to 20 updates per refresh, every 2 steps.
    Keyword arguments of the trainer itself (`processing_class`, `adversarial_args`, `data_collator`) pass through."""
    from hf_nullspace.config import NullspaceArguments
    from hf_nullspace.trainer import NullspaceTrainer

    trainer_keys = ("processing_class", "adversarial_args", "data_collator", "eval_dataset", "compute_metrics")
    trainer_kwargs = {key: training.pop(key) for key in trainer_keys if key in training}
    arguments = tiny_training_args(output_dir, **training)
    model = model if model is not None else reading_tiny_vit()
    torch.manual_seed(0)
    return NullspaceTrainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset if train_dataset is not None else TemplateDataset(),
        nullspace_args=nullspace_args or NullspaceArguments(noise_max_updates=20, noise_refresh_steps=2),
        **trainer_kwargs,
    )


def final_weights(trainer) -> torch.Tensor:
    """All parameters of the trainer's model, flattened into one vector."""
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


class StopAt(TrainerCallback):
    """Raises `KeyboardInterrupt` at the end of optimiser step `step`: a simulated kill."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated preemption")


# ---- command lines -------------------------------------------------------------------------------------------------


def cli_args(data, model, out, *extra):
    """The main job's arguments for a 4-step CPU run on `data` from `model` into `out`, no robustness suite."""
    return [
        "--dataset_name",
        data,
        "--model_name_or_path",
        model,
        "--output_dir",
        out,
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--noise_refresh_steps",
        "2",
        "--noise_max_updates",
        "20",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--robustness_suite",
        "none",
        *extra,
    ]


def subprocess_env(**extra) -> dict:
    """The environment of a job in a subprocess: offline, this checkout first on the path, one thread."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it, so parallel workers get different ones)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(num_processes: int) -> list[str]:
    """The `accelerate launch` command line for `num_processes` CPU processes on this machine, on a free port."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


# ---- the local Hub server (`hub_server.py`) ------------------------------------------------------------------------

HUB_TOKEN = "hf_testtokenAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"  # the one token the test Hub accepts for writes


def run_fresh(code: str, endpoint: str, hf_home, offline: bool = False, cwd=None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python (in `cwd`, by default this one's) with the test Hub as `HF_ENDPOINT` (set before
    huggingface_hub is imported)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]),
    )
    # a generous limit: a hung server must not hang the suite, but a loaded machine must not fail a push either
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=900, cwd=cwd
    )
    assert process.returncode == 0, f"subprocess failed:\n{process.stdout}\n{process.stderr}"
    return process
