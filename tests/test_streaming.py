"""Streamed training sets: a row key independent of the process layout, one share per process (read and decoded only
there), and a streamed run that resumes from the saved stream position without reading trained rows again."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_nullspace.data import load_image_dataset
from hf_nullspace.data import rows as rows_module
from hf_nullspace.data.streams import (
    ReadTally,
    iter_row_range,
    keyed_stream,
    shard_row_counts,
    split_strategy,
    split_stream,
)
from hf_nullspace.finetune import build_trainer, parse_args

SHARD_SIZES = (10, 14, 12, 12)  # uneven, so that a per-shard index is not the stream's index
KEY = "__row__"


def row_id(image) -> int:
    """The id written into pixel (0, 0) of every test image: `(k % 256, k // 256, 255)`."""
    r, g, b = image.convert("RGB").getpixel((0, 0))
    return r + 256 * g if b == 255 else -1


def cell_id(cell) -> int:
    """The id of an undecoded image cell (`{"bytes", "path"}`)."""
    return row_id(PILImage.open(io.BytesIO(cell["bytes"])))


def write_shards(folder, sizes=SHARD_SIZES, test_rows=8):
    """Parquet shards `train-<s>-of-<n>.parquet` of 32x32 images (row `k` carries its id in pixel (0, 0)) and a
    `test.parquet`; labels `k % 10`."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"class_{i}" for i in range(10)])})

    def images(first, count):
        out = []
        for k in range(first, first + count):
            array = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            array[0, 0] = (k % 256, k // 256, 255)
            out.append(PILImage.fromarray(array))
        return out

    first = 0
    for shard, size in enumerate(sizes):
        data = {"image": images(first, size), "label": [k % 10 for k in range(first, first + size)]}
        Dataset.from_dict(data, features=features).to_parquet(
            os.path.join(folder, f"train-{shard:05d}-of-{len(sizes):05d}.parquet")
        )
        first += size
    data = {"image": images(first, test_rows), "label": [k % 10 for k in range(test_rows)]}
    Dataset.from_dict(data, features=features).to_parquet(os.path.join(folder, "test.parquet"))
    return str(folder)


def stream(folder):
    return load_image_dataset(folder, split="train", streaming=True)


def keyed_ids(dataset) -> list[tuple[int, int]]:
    return [(row[KEY], cell_id(row["image"])) for row in dataset]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("streams") / "data")


def test_keys_are_the_one_process_index_whoever_reads_the_row(shards):
    dataset = stream(shards)
    assert shard_row_counts(dataset) == list(SHARD_SIZES)
    total = sum(SHARD_SIZES)
    one = keyed_ids(keyed_stream(dataset, KEY))
    assert one == [(k, k) for k in range(total)]
    # two DataLoader workers of one process take whole shards each: the keys still are the stream's index
    workers = DataLoader(keyed_stream(dataset, KEY), batch_size=None, num_workers=2)
    pairs = [(int(row[KEY]), cell_id(row["image"])) for row in workers]
    assert sorted(pairs) == one


@pytest.mark.parametrize("num_processes", [2, 4, 3])
def test_each_process_reads_and_decodes_its_share(shards, num_processes):
    total = sum(SHARD_SIZES)
    seen, read, decoded = [], [], []
    for rank in range(num_processes):
        tally = ReadTally()
        share = split_stream(keyed_stream(stream(shards), KEY, tally), KEY, rank, num_processes, tally)
        pairs = keyed_ids(share)
        assert all(key == ident for key, ident in pairs)
        seen += [key for key, _ in pairs]
        read.append(tally.read)
        decoded.append(tally.decoded)
        assert split_strategy(share) == ("shards" if len(SHARD_SIZES) % num_processes == 0 else "examples")
    assert sorted(seen) == list(range(total)), "every row exactly once over the processes"
    assert sum(decoded) == total
    if len(SHARD_SIZES) % num_processes == 0:  # whole shards: a process reads only its own rows
        assert read == decoded and max(read) <= 2 * total / num_processes
    else:  # every N-th row: every process reads the stream, decodes 1/N of it
        assert read == [total] * num_processes
        assert max(decoded) - min(decoded) <= 1


def test_a_row_range_opens_only_the_shards_that_hold_it(shards):
    tally = ReadTally()
    rows = list(iter_row_range(stream(shards), 12, 30, tally))
    assert [index for index, _ in rows] == list(range(12, 30))
    assert [row_id(row["image"]) for _, row in rows] == list(range(12, 30))
    # shards 1 and 2 (rows 10-35): rows 10, 11 passed over, 30-35 never read
    assert tally.read == 20


# ---- resume: the stream restarts where the checkpoint left it ------------------------------------------------------


def save_model(folder):
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=10,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        id2label={i: f"class_{i}" for i in range(10)},
        label2id={f"class_{i}": i for i in range(10)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return str(folder)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def build(data, model, out, *extra):
    argv = [
        "--dataset_name", data, "--model_name_or_path", model, "--output_dir", out, "--streaming", "true",
        "--max_steps", "6", "--per_device_train_batch_size", "4", "--save_steps", "3", "--noise_refresh_steps", "2",
        "--noise_max_updates", "5", "--learning_rate", "1e-3", "--train_crop_scale_min", "0.5", "--seed", "3",
        "--use_cpu", "true", "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
        "--logging_steps", "1", "--eval_strategy", "no", *extra,
    ]  # fmt: skip
    trainer, _ = build_trainer(*parse_args(argv))
    return trainer


@pytest.fixture
def decoded_ids(monkeypatch):
    """Ids of the images decoded by the data pipeline (`rows.decode_image`), in order."""
    seen = []
    decode = rows_module.decode_image

    def recording(value):
        image = decode(value)
        seen.append(row_id(image))
        return image

    monkeypatch.setattr(rows_module, "decode_image", recording)
    return seen


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_a_resumed_stream_reads_no_trained_row_again_and_ends_on_the_same_weights(tmp_path, shards, decoded_ids):
    model = save_model(tmp_path / "model")
    whole = build(shards, model, str(tmp_path / "whole"))
    whole.train()
    whole.save_model()
    assert whole.stream_reads["rows_read"] == whole.stream_reads["rows_decoded"] == 24
    uninterrupted = list(decoded_ids)

    decoded_ids.clear()
    out = str(tmp_path / "interrupted")
    first = build(shards, model, out)
    first.add_callback(StopAt(3))
    first.train()
    assert first.state.global_step == 3 and os.path.isfile(os.path.join(out, "checkpoint-3", "stream_state_0.json"))
    trained_before = set(uninterrupted[:12])
    assert set(decoded_ids) >= trained_before

    decoded_ids.clear()
    second = build(shards, model, out)
    second.train(resume_from_checkpoint=os.path.join(out, "checkpoint-3"))
    second.save_model()
    assert second.state.global_step == 6
    assert not set(decoded_ids) & trained_before, f"rows trained before the interruption read again: {decoded_ids}"
    assert decoded_ids == uninterrupted[12 : 12 + len(decoded_ids)] and len(decoded_ids) >= 12
    reads = second.stream_reads
    assert reads["rows_reread_on_resume"] == 0 and reads["resumed_from_stream_position"] is True
    assert reads["rows_read"] == 24  # counted over the whole run: 12 before the interruption, 12 after
    whole_weights, resumed = weights(str(tmp_path / "whole")), weights(out)
    worst = max(float((whole_weights[name] - resumed[name]).abs().max()) for name in whole_weights)
    assert worst <= 1e-6, f"the resumed run's weights differ from the uninterrupted run's by {worst}"


def test_without_a_saved_position_the_resume_reads_again_and_says_so(tmp_path, shards, decoded_ids):
    model = save_model(tmp_path / "model")
    out = str(tmp_path / "run")
    first = build(shards, model, out)
    first.add_callback(StopAt(3))
    first.train()
    os.remove(os.path.join(out, "checkpoint-3", "stream_state_0.json"))
    trained_before = set(decoded_ids[:12])
    decoded_ids.clear()
    second = build(shards, model, out)
    second.train(resume_from_checkpoint=os.path.join(out, "checkpoint-3"))
    assert trained_before <= set(decoded_ids)
    assert second.stream_reads["rows_reread_on_resume"] == 12
    assert second.stream_reads["resumed_from_stream_position"] is False
    shutil.rmtree(out)


def test_the_job_records_each_process_reads_in_its_results(tmp_path, shards):
    from hf_nullspace.finetune import main

    out = str(tmp_path / "job")
    argv = [
        "--dataset_name", shards, "--model_name_or_path", save_model(tmp_path / "model"), "--output_dir", out,
        "--streaming", "true", "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no",
        "--noise_max_updates", "2", "--use_cpu", "true", "--report_to", "none", "--dataloader_num_workers", "0",
        "--disable_tqdm", "true", "--eval_strategy", "no", "--do_train", "--robustness_suite", "none",
    ]  # fmt: skip
    main(argv)
    with open(os.path.join(out, "results.json")) as handle:
        results = json.load(handle)
    assert results["train_stream_reads"] == [
        {
            "process_index": 0,
            "num_processes": 1,
            "split": "one process",
            "rows_read": 8,
            "rows_decoded": 8,
            "rows_reread_on_resume": 0,
            "resumed_from_stream_position": None,
        }
    ]
