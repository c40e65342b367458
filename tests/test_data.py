"""Offline tests of hf_nullspace.data on small local copies laid out like the real Hub repos."""

import io
import os
import random
import tarfile
import types

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_nullspace.data import (
    IMAGENET_A_INDICES_IN_1K,
    IMAGENET_R_WNIDS,
    BadRowsError,
    BenchmarkSpec,
    EvalTransform,
    SkipCounter,
    TrainTransform,
    check_label_space,
    collate_fn,
    find_columns,
    get_benchmark,
    iter_benchmark,
    load_image_dataset,
    prepare_dataset,
    spec_from_source,
    to_rgb,
    transforms_from_image_processor,
)


def _noise(width=24, height=20, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _write_parquet(path, images, labels, label_name="label", label_feature=None):
    features = datasets.Features({"image": datasets.Image(), label_name: label_feature or datasets.Value("int64")})
    rows = {"image": [{"bytes": data, "path": None} for data in images], label_name: labels}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(path)


def _write_tar(path, samples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for extension, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _webdataset(root, labels_per_shard):
    """clip-benchmark layout: test/<n>.tar with jpg + cls, and test/nshards.txt beside them."""
    index = 0
    for shard, labels in enumerate(labels_per_shard):
        samples = []
        for label in labels:
            samples.append((f"s{index:07d}", {"jpg": _encode(_noise(seed=index), "JPEG"), "cls": str(label).encode()}))
            index += 1
        _write_tar(os.path.join(root, "test", f"{shard}.tar"), samples)
    with open(os.path.join(root, "test", "nshards.txt"), "w") as handle:
        handle.write(str(len(labels_per_shard)))
    return str(root)


def _bad_rows():
    """One row of each kind; with num_labels=5: 2 corrupt, 1 missing label, 2 out of range, 4 converted, 5 kept."""
    truncated = _encode(_noise(64, 64), "JPEG")
    sixteen = Image.fromarray(np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257)
    rows = [
        (_encode(_noise(), "JPEG"), 0),
        (truncated[: len(truncated) // 2], 1),
        (np.random.default_rng(1).bytes(300), 2),
        (_encode(_noise().convert("L")), 3),
        (_encode(_noise().convert("CMYK"), "JPEG"), 4),
        (_encode(_noise().convert("RGBA")), 0),
        (_encode(sixteen), 1),
        (_encode(_noise()), None),
        (_encode(_noise()), 10),
        (_encode(_noise()), -1),
    ]
    return [image for image, _ in rows], [label for _, label in rows]


EXPECTED_BAD_COUNTS = {
    "corrupt_image": 2,
    "missing_label": 1,
    "label_out_of_range": 2,
    "converted_L": 1,
    "converted_CMYK": 1,
    "converted_RGBA": 1,
    "converted_I;16": 1,
}


@pytest.fixture
def bad_parquet(tmp_path):
    path = str(tmp_path / "bad" / "test.parquet")
    _write_parquet(path, *_bad_rows())
    return path


# ---------------------------------------------------------------- transforms


def test_to_rgb_modes():
    sixteen = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 128, 255]  # scaled by 255/65535, not clipped
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0, 1000]], dtype=np.int32))))[0, :, 0].tolist() == [0, 4]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))))[0, :, 0].tolist() == [
        0,
        128,
        255,
    ]
    transparent = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (10, 20, 30)
    assert to_rgb(transparent, background=(255, 255, 255)).getpixel((0, 0)) == (255, 255, 255)
    for mode in ("L", "LA", "P", "PA", "CMYK", "1", "YCbCr"):
        assert to_rgb(_noise().convert(mode)).mode == "RGB"
    with pytest.raises(ValueError, match="'XYZ'"):
        to_rgb(types.SimpleNamespace(mode="XYZ"))


def test_train_transform_shape_range_and_seed():
    image = _noise(50, 40)
    first = TrainTransform(16, seed=3)
    outputs = [first(image) for _ in range(4)]
    again = TrainTransform(16, seed=3)
    assert all(torch.equal(out, again(image)) for out in outputs)
    assert not torch.equal(outputs[0], TrainTransform(16, seed=4)(image))
    assert outputs[0].shape == (3, 16, 16) and outputs[0].dtype == torch.float32
    assert 0 <= float(outputs[0].min()) and float(outputs[0].max()) <= 1
    assert torch.equal(first(image, rng=random.Random(7)), first(image, rng=random.Random(7)))
    normalised = TrainTransform((8, 12), image_mean=[0.5] * 3, image_std=[0.5] * 3, seed=0)(image)
    assert normalised.shape == (3, 8, 12) and float(normalised.min()) >= -1 and float(normalised.max()) <= 1


def test_train_crop_stays_inside_image():
    transform = TrainTransform(8, seed=0)
    for width, height in [(5, 300), (300, 5), (40, 40), (1, 1), (17, 9)]:
        for _ in range(200):
            left, top, crop_w, crop_h = transform.crop_box(width, height)
            assert 0 <= left and 0 <= top and 0 < crop_w and 0 < crop_h
            assert left + crop_w <= width and top + crop_h <= height


def test_flip_flag():
    image = _noise(20, 20)
    transform = TrainTransform(20, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, seed=0)
    expected = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    assert all(torch.allclose(transform(image), expected) for _ in range(10))
    flipping = TrainTransform(20, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True, seed=0)
    assert any(torch.allclose(flipping(image), expected.flip(-1)) for _ in range(10))


def test_eval_transform_by_hand():
    array = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    # shorter side floor(4 / 0.5) = 8 = the image's: no resize; crop rows 2..5, columns 6..9
    out = EvalTransform(4, crop_pct=0.5)(Image.fromarray(array))
    expected = torch.from_numpy(array[2:6, 6:10].copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(out, expected)
    normalised = EvalTransform(4, crop_pct=0.5, image_mean=[0.2, 0.4, 0.6], image_std=[0.5, 0.25, 0.1])
    mean, std = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1), torch.tensor([0.5, 0.25, 0.1]).view(3, 1, 1)
    assert torch.allclose(normalised(Image.fromarray(array)), (expected - mean) / std, atol=1e-6)
    # ImageNet's Resize(256) + CenterCrop(224) on a 100x50 image: 512x256, crop at left 144, top 16
    image = _noise(100, 50)
    resized = np.asarray(image.resize((512, 256), Image.Resampling.BILINEAR))
    expected = torch.from_numpy(resized[16:240, 144:368].copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(EvalTransform(224)(image), expected)


def test_transforms_from_image_processor():
    from transformers import BitImageProcessorPil, ViTImageProcessorPil

    train, evaluation = transforms_from_image_processor(ViTImageProcessorPil(), flip=False)
    assert train.size == evaluation.size == (224, 224) and not train.flip
    assert evaluation.resize_to == (224, 224)  # ViT squashes to 224x224: no crop
    assert torch.allclose(evaluation.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    train, evaluation = transforms_from_image_processor(ViTImageProcessorPil(), normalize=False)
    assert train.mean is None and evaluation.mean is None
    processor = BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    train, evaluation = transforms_from_image_processor(processor)
    assert evaluation.size == (32, 32) and evaluation.crop_pct == pytest.approx(0.8)
    assert evaluation(_noise()).shape == (3, 32, 32)
    # the torchvision recipe on request
    _, recipe = transforms_from_image_processor(ViTImageProcessorPil(), crop_pct=0.875)
    assert recipe.resize_to is None and recipe.crop_pct == 0.875


@pytest.mark.parametrize("name", ["ViT", "DeiT", "Beit", "Bit", "ConvNext", "ConvNext-384"])
def test_eval_transform_equals_the_models_own_processor(name):
    """Clean evaluation follows the processor: ViT/BEiT squash, DeiT squashes then crops, BiT resizes the shorter
    side then crops, ConvNeXt applies its crop_pct rule; pixel for pixel on non-square images."""
    import transformers

    kwargs = {"ConvNext": {"size": {"shortest_edge": 224}}}.get(name, {})
    processor = getattr(transformers, f"{name.split('-')[0]}ImageProcessorPil")(**kwargs)
    _, evaluation = transforms_from_image_processor(processor)
    for width, height in ((211, 150), (200, 301), (333, 97)):
        image = _noise(width, height, seed=width)
        expected = processor(image, return_tensors="pt").pixel_values[0]
        assert torch.allclose(evaluation(image), expected, atol=1e-6), (name, width, height)


def test_precropped_benchmarks_are_not_resized_again():
    from transformers import BitImageProcessorPil

    from hf_nullspace.data.transforms import precropped_transform

    # a resize-then-crop processor (shorter side 256, crop 224) would crop a 224x224 ImageNet-C image to its centre
    # 196 pixels and enlarge them; the benchmark was cropped already, so it is evaluated as stored
    _, evaluation = transforms_from_image_processor(
        BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}), normalize=False
    )
    stored = _noise(224, 224)
    as_stored = torch.from_numpy(np.asarray(stored).copy()).permute(2, 0, 1).float() / 255
    assert not torch.allclose(evaluation(stored), as_stored)
    assert torch.equal(precropped_transform(evaluation)(stored), as_stored)
    # a model of another size gets one resize, straight to its input size
    _, small = transforms_from_image_processor(
        BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), normalize=False
    )
    resized = np.asarray(stored.resize((32, 32), Image.Resampling.BICUBIC))
    assert torch.equal(precropped_transform(small)(stored), torch.from_numpy(resized.copy()).permute(2, 0, 1) / 255)


# ---------------------------------------------------------------- loading


def test_find_columns():
    assert find_columns(["jpg", "cls", "__key__"]) == ("jpg", "cls")
    assert find_columns(["img", "labels"]) == ("img", "labels")
    with pytest.raises(ValueError, match=r"available columns: \['picture', 'target'\]"):
        find_columns(["picture", "target"])
    with pytest.raises(ValueError, match=r"available columns: \['image', 'target'\]"):
        find_columns(["image", "target"])
    with pytest.raises(ValueError, match="'wnid' is not in the dataset"):
        find_columns(["image", "label"], label_column="wnid")


def test_load_parquet_file_and_directory(tmp_path):
    images = [_encode(_noise(seed=i)) for i in range(3)]
    _write_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"), images, [0, 1, 2])
    _write_parquet(str(tmp_path / "pq" / "data" / "validation-00000-of-00001.parquet"), images[:2], [2, 1])
    splits = load_image_dataset(str(tmp_path / "pq"))
    assert sorted(splits) == ["train", "validation"] and splits["validation"]["label"] == [2, 1]
    single = load_image_dataset(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"), split="train")
    assert single.num_rows == 3 and set(single.column_names) == {"image", "label"}
    stream = load_image_dataset(str(tmp_path / "pq" / "data" / "*.parquet"), split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and len(list(stream)) == 5


def test_load_webdataset_with_nshards(tmp_path):
    root = _webdataset(tmp_path / "wds", [[3, 1]])  # one shard + nshards.txt: datasets alone picks `text`
    stream = load_image_dataset(root, split="test", streaming=True)
    rows = list(stream)
    assert [row["cls"] for row in rows] == [3, 1] and rows[0]["jpg"].mode == "RGB"


def test_load_imagefolder(tmp_path):
    for label in ("cat", "dog"):
        os.makedirs(tmp_path / "folder" / "train" / label)
        _noise().save(tmp_path / "folder" / "train" / label / "a.png")
    dataset = load_image_dataset(str(tmp_path / "folder"), split="train")
    assert dataset.features["label"].names == ["cat", "dog"] and sorted(dataset["label"]) == [0, 1]
    assert load_image_dataset(str(tmp_path / "folder"), split="test").num_rows == 2  # the only split stands in
    _write_parquet(str(tmp_path / "two" / "train.parquet"), [_encode(_noise())], [0])
    _write_parquet(str(tmp_path / "two" / "test.parquet"), [_encode(_noise())], [0])
    with pytest.raises(ValueError, match=r"available splits: \['train', 'test'\]"):
        load_image_dataset(str(tmp_path / "two"), split="validation")


def _imagenet_c_copy(root):
    """Layout of WNJXYK/TTA-ImageNet-C: data/<corruption>/severity_<s>/*.parquet, configs declared in README.md."""
    lines = ["---", "configs:"]
    for corruption in ("gaussian_noise", "fog"):
        lines += [f"- config_name: {corruption}", "  data_files:"]
        for severity in (1, 5):
            path = f"data/{corruption}/severity_{severity}/part-0.parquet"
            _write_parquet(os.path.join(root, path), [_encode(_noise(seed=severity))] * 3, [severity, 999, 0])
            lines += [f"  - split: severity_{severity}", f"    path: {path}"]
    lines += ["---", "ImageNet-C copy"]
    with open(os.path.join(root, "README.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(root)


def test_load_imagenet_c_configs(tmp_path):
    root = _imagenet_c_copy(tmp_path / "imagenet-c")
    stream = load_image_dataset(root, "fog", split="severity_5", streaming=True)
    assert [row["label"] for row in stream] == [5, 999, 0]
    spec = get_benchmark("imagenet-c/fog/5", path=root)
    batches = list(iter_benchmark(spec, EvalTransform(16), batch_size=2))
    assert [batch["labels"].tolist() for batch in batches] == [[5, 999], [0]]
    assert batches[0]["pixel_values"].shape == (2, 3, 16, 16)


# ---------------------------------------------------------------- bad rows


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_rows_counted_and_dropped(bad_parquet, streaming):
    dataset = load_image_dataset(bad_parquet, split="train", streaming=streaming)
    counter = SkipCounter(max_skip_fraction=1.0)
    prepared = prepare_dataset(dataset, EvalTransform(8), "image", "label", 5, counter=counter, batch_size=4)
    if streaming:
        rows = list(prepared)
        batches = [collate_fn(rows)]
    else:
        loader = torch.utils.data.DataLoader(prepared, batch_size=10, collate_fn=collate_fn)
        batches = list(loader)
    assert sum(len(batch["labels"]) for batch in batches) == 5
    assert torch.cat([batch["labels"] for batch in batches]).tolist() == [0, 3, 4, 0, 1]
    assert batches[0]["pixel_values"].shape[1:] == (3, 8, 8)
    assert counter.seen == 10 and counter.skipped == 5 and counter.kept == 5
    assert dict(counter.counts) == EXPECTED_BAD_COUNTS


def test_bad_rows_threshold_raises(bad_parquet):
    stream = load_image_dataset(bad_parquet, split="train", streaming=True)
    counter = SkipCounter(max_skip_fraction=0.2, min_rows=5)
    prepared = prepare_dataset(stream, EvalTransform(8), "image", "label", 5, counter=counter, batch_size=10)
    with pytest.raises(BadRowsError, match="missing_label=1, label_out_of_range=2, corrupt_image=2") as error:
        list(prepared)
    assert "Dropped 5 of 10 rows" in str(error.value)
    quiet = SkipCounter(max_skip_fraction=0.2, min_rows=50)  # too few rows seen to judge
    assert len(list(prepare_dataset(stream, EvalTransform(8), "image", "label", 5, counter=quiet))) == 5


def test_collate_fn_empty_batch():
    with pytest.raises(ValueError, match="dropped"):
        collate_fn([])


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert get_benchmark("imagenet-c/gaussian_noise/5").config_name == "gaussian_noise"
    assert get_benchmark("imagenet-c/gaussian_noise/5").split == "severity_5"
    with pytest.raises(ValueError, match="Valid names: .*imagenet-a"):
        get_benchmark("imagenet-z")
    with pytest.raises(ValueError, match="pass a local path"):
        next(iter_benchmark(get_benchmark("stylized-imagenet"), EvalTransform(8), batch_size=2))
    info = get_benchmark("imagenet-a").dataset_card_info()
    assert info["type"] == "clip-benchmark/wds_imagenet-a" and info["split"] == "test"
    assert get_benchmark("imagenet-c/fog/1", repo_id="someone/imagenet-c").revision is None


def test_spec_from_source_reads_a_local_path_locally_and_anything_else_from_the_hub(tmp_path):
    folder = f"{tmp_path}/"
    assert spec_from_source(folder, split="validation", config_name="fog") == BenchmarkSpec(
        name=tmp_path.name,
        path=folder,
        config_name="fog",
        split="validation",
        label_space="custom",
        num_classes=None,
        display_name=folder,
    )
    assert spec_from_source("someone/digits", num_classes=10) == BenchmarkSpec(
        name="digits",
        repo_id="someone/digits",
        split="test",
        label_space="custom",
        num_classes=10,
        display_name="someone/digits",
    )


def test_check_label_space():
    assert check_label_space(get_benchmark("imagenet"), 1000) is None
    assert check_label_space(get_benchmark("imagenet-a"), 1000) == list(IMAGENET_A_INDICES_IN_1K)
    assert check_label_space(get_benchmark("imagenet-r"), 200) is None
    with pytest.raises(ValueError, match="10 labels cannot be scored on 'imagenet'"):
        check_label_space(get_benchmark("imagenet"), 10)
    with pytest.raises(ValueError, match="imagenet-a-200"):
        check_label_space(get_benchmark("imagenet-a"), 10)


def test_registry_webdataset_local_override(tmp_path):
    root = _webdataset(tmp_path / "imagenet-a", [[0, 199, 5], [7, 250]])
    spec = get_benchmark("imagenet-a", path=root)
    counter = SkipCounter(max_skip_fraction=1.0)
    batches = list(iter_benchmark(spec, EvalTransform(8), batch_size=3, counter=counter))
    assert [batch["labels"].tolist() for batch in batches] == [[0, 199, 5], [7]]
    assert counter.counts["label_out_of_range"] == 1
    assert spec.dataset_card_info()["type"] == "imagenet-a"
    capped = list(iter_benchmark(spec, EvalTransform(8), batch_size=3, max_samples=2))
    assert [batch["labels"].tolist() for batch in capped] == [[0, 199]]


def test_registry_wnid_and_numeric_folders(tmp_path):
    path = str(tmp_path / "imagenet-r" / "test.parquet")
    features = datasets.Features({"image": datasets.Image(), "wnid": datasets.Value("string")})
    rows = {"image": [{"bytes": _encode(_noise()), "path": None}] * 2, "wnid": [IMAGENET_R_WNIDS[7], "n00000000"]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(path)
    counter = SkipCounter(max_skip_fraction=1.0)
    spec = get_benchmark("imagenet-r-parquet", path=path)
    assert [b["labels"].tolist() for b in iter_benchmark(spec, EvalTransform(8), 4, counter=counter)] == [[7]]
    assert counter.counts["unmapped_label"] == 1
    # ImageNetV2 folders are class indices: imagefolder sorts them as strings (0, 1, 10, 2)
    for label in ("0", "1", "10", "2"):
        os.makedirs(tmp_path / "v2" / label)
        _noise().save(tmp_path / "v2" / label / f"{label}.png")
    batches = list(iter_benchmark(get_benchmark("imagenet-v2", path=str(tmp_path / "v2")), EvalTransform(8), 8))
    assert sorted(batches[0]["labels"].tolist()) == [0, 1, 2, 10]


@pytest.mark.slow  # about 45 s: full-size original layouts; test_load_imagenet_c_configs is the quick check
def test_original_release_layouts_of_imagenet_c_and_a(tmp_path):
    """The original ImageNet-C release (`<corruption>/<severity>/<wnid>/`, 1000 classes) is read one severity at a
    time; the original ImageNet-A release (`<wnid>/` folders of the 200 classes) maps to 0..199."""
    from hf_nullspace.data.imagenet_classes import IMAGENET_A_WNIDS
    from hf_nullspace.data.sources import resolve_sources

    tiny = Image.new("RGB", (4, 4))
    for k in range(1000):  # severity 2: one image per class; severity 1: two
        os.makedirs(tmp_path / "c" / "fog" / "2" / f"n{k:08d}")
        tiny.save(tmp_path / "c" / "fog" / "2" / f"n{k:08d}" / "x.png")
    for k in (0, 1):
        os.makedirs(tmp_path / "c" / "fog" / "1" / f"n{k:08d}")
        tiny.save(tmp_path / "c" / "fog" / "1" / f"n{k:08d}" / "x.png")
    for k in (3, 150):
        os.makedirs(tmp_path / "a" / IMAGENET_A_WNIDS[k])
        _noise().save(tmp_path / "a" / IMAGENET_A_WNIDS[k] / "x.jpg")
    specs = {
        "imagenet-c/fog/2": get_benchmark("imagenet-c/fog/2", path=str(tmp_path / "c")),
        "imagenet-a": get_benchmark("imagenet-a", path=str(tmp_path / "a")),
    }
    resolved = resolve_sources(specs)
    assert resolved["imagenet-c/fog/2"].num_rows == 1000 and resolved["imagenet-a"].builder == "imagefolder"
    labels = torch.cat([b["labels"] for b in iter_benchmark(specs["imagenet-c/fog/2"], EvalTransform(4), 500)])
    assert sorted(labels.tolist()) == list(range(1000))
    batches = list(iter_benchmark(specs["imagenet-a"], EvalTransform(8), batch_size=4))
    assert sorted(batches[0]["labels"].tolist()) == [3, 150]
    with pytest.raises(ValueError, match="2 WordNet-id class folders"):  # severity 1 lacks classes: caught first
        resolve_sources({"imagenet-c/fog/1": get_benchmark("imagenet-c/fog/1", path=str(tmp_path / "c"))})
