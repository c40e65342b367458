"""Data checked before and while training: string labels become a ClassLabel up front, bad rows are named by file or
row, and each row is counted once however many epochs read it."""

import io
import os

import numpy as np
import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from testing_utils import save_model

from hf_nullspace.data import BadRowsError
from hf_nullspace.finetune import build_trainer, parse_args

NAMES = ["bird", "cat", "dog"]


def images(num, seed=0):
    rng = np.random.default_rng(seed)
    return [PILImage.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)) for _ in range(num)]


def args(data, model, out, *extra):
    return [
        *("--dataset_name", str(data), "--model_name_or_path", str(model), "--output_dir", str(out)),
        *("--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--noise_refresh_steps", "100"),
        *("--noise_max_updates", "3", "--robustness_suite", "none", "--use_cpu", "true", "--report_to", "none"),
        *("--disable_tqdm", "true", "--save_strategy", "no", "--eval_strategy", "no"),
        *extra,
    ]


def write_string_labels(folder, train_labels, test_labels):
    os.makedirs(folder, exist_ok=True)
    features = Features({"image": Image(), "label": Value("string")})
    for split, labels in (("train", train_labels), ("test", test_labels)):
        data = {"image": images(len(labels)), "label": labels}
        Dataset.from_dict(data, features=features).to_parquet(os.path.join(folder, f"{split}.parquet"))
    return str(folder)


def test_string_labels_are_cast_up_front_in_the_models_order(tmp_path):
    data = write_string_labels(tmp_path / "data", ["dog", "cat", "bird", "cat"] * 4, ["cat", "dog", "bird"])
    model = save_model(tmp_path / "model", names=["dog", "bird", "cat"])  # the data's classes, in another order
    trainer, _ = build_trainer(*parse_args(args(data, model, tmp_path / "out")))
    assert trainer.model.config.id2label == {0: "dog", 1: "bird", 2: "cat"}  # the head is kept as it is
    labels = [row["labels"] for row in trainer.train_dataset.__getitems__([0, 1, 2])]
    assert [trainer.model.config.id2label[label] for label in labels] == ["dog", "cat", "bird"]


def test_string_labels_of_new_classes_are_sorted_for_a_new_head(tmp_path):
    data = write_string_labels(tmp_path / "data", ["zebra", "ant", "moth", "ant"] * 4, ["moth", "ant"])
    model = save_model(tmp_path / "model", names=NAMES)
    extra = ("--ignore_mismatched_sizes", "true")
    trainer, _ = build_trainer(*parse_args(args(data, model, tmp_path / "out", *extra)))
    assert trainer.model.config.id2label == {0: "ant", 1: "moth", 2: "zebra"}
    assert [row["labels"] for row in trainer.eval_dataset.__getitems__([0, 1])] == [1, 0]


def test_eval_classes_missing_from_train_are_refused_before_training(tmp_path):
    data = write_string_labels(tmp_path / "data", ["cat", "dog", "bird"] * 4, ["cat", "horse"])
    with pytest.raises(ValueError, match="eval split has classes the train split lacks: 'horse'"):
        build_trainer(*parse_args(args(data, save_model(tmp_path / "model", names=NAMES), tmp_path / "out")))


def write_imagefolder(root, per_class=6, corrupt=("cat/1.png", "dog/2.png")):
    for split, num in (("train", per_class), ("test", 2)):
        for name in NAMES:
            os.makedirs(root / split / name, exist_ok=True)
            for i, image in enumerate(images(num, seed=hash((split, name)) % 1000)):
                path = root / split / name / f"{i}.png"
                image.save(path)
                if split == "train" and f"{name}/{i}.png" in corrupt:
                    path.write_bytes(path.read_bytes()[:100])  # truncated
    return root


def test_corrupt_images_are_named_and_counted_once_over_epochs(tmp_path):
    data = write_imagefolder(tmp_path / "data")
    model = save_model(tmp_path / "model", names=NAMES)
    extra = ("--num_train_epochs", "3", "--max_skip_fraction", "0.2", "--per_device_train_batch_size", "6")
    trainer, counters = build_trainer(*parse_args(args(data, model, tmp_path / "out", *extra)))
    trainer.train()
    assert trainer.state.epoch == pytest.approx(3)
    summary = counters["train"].as_dict()
    assert (summary["seen"], summary["skipped"], summary["kept"]) == (18, 2, 16)  # not 54 and 6 after 3 epochs
    named = summary["named"]["corrupt_image"]
    files = sorted(os.path.relpath(name.removeprefix("file "), data / "train") for name in named)
    assert files == ["cat/1.png", "dog/2.png"]
    trainer.evaluate()
    trainer.evaluate()
    assert counters["eval"].seen == 6  # two evaluations of 6 rows


def test_too_many_corrupt_images_stop_the_run_naming_the_files(tmp_path):
    data = write_imagefolder(tmp_path / "data")
    model = save_model(tmp_path / "model", names=NAMES)
    trainer, _ = build_trainer(*parse_args(args(data, model, tmp_path / "out", "--max_steps", "6")))
    with pytest.raises(
        BadRowsError, match=r"Dropped 2 of 18 rows.*corrupt_image=2 \(file .*train/(cat/1|dog/2)\.png, file .*\.png\)"
    ):
        trainer.train()


def test_a_dropped_row_without_a_file_is_named_by_its_row(tmp_path):
    from hf_nullspace.data import SkipCounter, prepare_dataset

    good = io.BytesIO()
    images(1)[0].save(good, format="PNG")
    cells = [{"bytes": good.getvalue(), "path": None}] * 3 + [{"bytes": b"not an image", "path": None}]
    dataset = Dataset.from_dict(
        {"image": cells, "label": [0, 1, 2, 0], "key": [10, 11, 12, 13]},
        features=Features({"image": Image(), "label": Value("int64"), "key": Value("int64")}),
    )
    counter = SkipCounter(max_skip_fraction=0.5)
    prepared = prepare_dataset(
        dataset, lambda image: np.asarray(image), "image", "label", 3, counter=counter, key_column="key"
    )
    for _ in range(3):
        assert len(prepared.__getitems__([0, 1, 2, 3])) == 3
    assert counter.as_dict()["named"] == {"corrupt_image": ["row 13"]} and counter.seen == 4
    # fewer rows than `min_rows`: judged once every row was seen
    strict = prepare_dataset(
        dataset, lambda image: np.asarray(image), "image", "label", 3, counter=SkipCounter(0.1), key_column="key"
    )
    with pytest.raises(BadRowsError, match=r"Dropped 1 of 4 rows.*corrupt_image=1 \(row 13\)"):
        strict.__getitems__([0, 1, 2, 3])
