"""Data without a validation or test split: a seeded share of the training rows is held out and only it is scored."""

import json
import os

import numpy as np
import pytest
from datasets import Dataset, load_dataset

from hf_nullspace.data import load_image_dataset
from hf_nullspace.data.bundled import ASSETS
from hf_nullspace.data.heldout import HeldOutSplit


def flat_imagefolder(path, per_class=8):
    """`<class>/<n>.png` for the ten digits of the bundled MNIST: one split (train), no validation folder."""
    rows = load_dataset("parquet", data_files=str(ASSETS / "mnist" / "train.parquet"), split="train")
    count = dict.fromkeys(range(10), 0)
    for row in rows:
        label = row["label"]
        if count[label] < per_class:
            folder = os.path.join(path, str(label))
            os.makedirs(folder, exist_ok=True)
            row["image"].save(os.path.join(folder, f"{count[label]:03d}.png"))
            count[label] += 1
        if min(count.values()) == per_class:
            break
    return str(path)


def test_the_selection_is_seeded_disjoint_and_the_same_when_streamed():
    rows = Dataset.from_dict({"x": list(range(2000))})
    held_out = HeldOutSplit("train", 0.15, seed=42)
    train, evaluation = (list(part["x"]) for part in held_out.apply(rows))
    assert sorted(train + evaluation) == list(range(2000)) and not set(train) & set(evaluation)
    assert len(evaluation) == pytest.approx(300, abs=45)  # about 15%
    streamed_train, streamed_evaluation = held_out.apply(rows.to_iterable_dataset())
    assert [r["x"] for r in streamed_evaluation] == evaluation
    assert [r["x"] for r in streamed_train] == train
    assert list(HeldOutSplit("train", 0.15, seed=43).apply(rows)[1]["x"]) != evaluation
    assert list(HeldOutSplit("train", 0.15, seed=42).apply(rows)[1]["x"]) == evaluation
    with pytest.raises(ValueError, match="train_val_split must lie in"):
        HeldOutSplit("train", 1.5, seed=0)


def test_a_missing_validation_split_is_never_replaced_by_the_training_rows(tmp_path):
    folder = flat_imagefolder(tmp_path / "digits", per_class=2)
    with pytest.raises(ValueError, match="Split 'validation' not found"):
        load_image_dataset(folder, split="validation", only_split_fallback=False)
    assert load_image_dataset(folder, split="validation").num_rows == 20  # the lenient default, for benchmarks


def test_a_flat_imagefolder_run_scores_held_out_rows_only(tmp_path):
    from hf_nullspace.finetune import main

    folder = flat_imagefolder(tmp_path / "digits")
    output = tmp_path / "out"
    # fmt: off
    main([
        "--model_name_or_path", str(ASSETS / "vit-tiny-mnist"),
        "--dataset_name", folder, "--output_dir", str(output), "--max_steps", "2", "--do_train", "--do_eval",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "True",
        "--report_to", "none", "--save_strategy", "no", "--seed", "42", "--train_flip", "False",
        "--disable_tqdm", "True", "--dataloader_num_workers", "0", "--noise_max_updates", "5",
        "--robustness_suite", "corruptions", "--robustness_corruptions", "contrast", "--robustness_severities", "1",
    ])
    # fmt: on
    held = HeldOutSplit("train", 0.15, 42).held(np.arange(80))
    expected = {"split": "train", "held_out": True, "fraction": 0.15, "seed": 42, "rows": int(held.sum())}
    results = json.loads((output / "results.json").read_text())
    assert results["eval_rows"] == expected
    assert 0 < expected["rows"] < 80
    # the clean evaluation and the robustness suite read the held-out rows only, the training the others
    assert results["eval"]["eval_samples_per_second"] > 0
    clean = next(r for r in results["robustness"]["models"][-1]["results"] if r["benchmark"] == "clean")
    assert clean["num_samples"] == expected["rows"]
    assert "held-out 15%" in json.dumps(results["robustness"])
    train_rows = results["train"].get("train_samples", None)
    assert train_rows is None or train_rows == 80 - expected["rows"]
