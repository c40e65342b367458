"""Streamed training on two gloo processes on CPU: each process reads and decodes only its half of a sharded stream
(the two halves make the one-process pass), augments every row as one process does, and a run interrupted and
resumed reads no trained row again and ends on the uninterrupted run's weights."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB = os.path.join(ROOT, "tests", "distributed", "stream_job.py")
SIZES = (10, 14, 14, 10)  # uneven shards; processes 0 and 1 get shards {0, 2} and {1, 3}: 24 rows each
TOTAL = sum(SIZES)


def write_id_shards(folder):
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"class_{i}" for i in range(10)])})
    os.makedirs(folder, exist_ok=True)
    first = 0
    for shard, size in enumerate([*SIZES, 8]):
        images = []
        for k in range(first, first + size):
            array = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            array[0, 0] = (k % 256, k // 256, 255)
            images.append(PILImage.fromarray(array))
        name = f"train-{shard:05d}-of-{len(SIZES):05d}.parquet" if shard < len(SIZES) else "test.parquet"
        data = {"image": images, "label": [k % 10 for k in range(first, first + size)]}
        Dataset.from_dict(data, features=features).to_parquet(os.path.join(folder, name))
        first += size
    return str(folder)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(data, model, out, processes, batch, *extra):
    """Runs the job on `processes` processes; returns every rank's record."""
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", str(free_port())]
    arguments = [
        "--dataset_name", data, "--model_name_or_path", model, "--output_dir", out, "--streaming", "true",
        "--max_steps", "6", "--per_device_train_batch_size", str(batch), "--save_steps", "3",
        "--noise_refresh_steps", "2", "--noise_max_updates", "5", "--learning_rate", "1e-3",
        "--train_crop_scale_min", "0.5", "--seed", "3", "--use_cpu", "True", "--report_to", "none",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--eval_strategy", "no", *extra,
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)
    completed = subprocess.run(
        [*launch, JOB, *arguments], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    records = []
    for rank in range(processes):
        with open(os.path.join(out, f"stream_rank_{rank}.json")) as handle:
            records.append(json.load(handle))
    assert [r["world_size"] for r in records] == [processes] * processes, "the launch did not start the processes"
    return records


def augmented(record) -> dict[int, str]:
    """Row id -> digest of its augmented image (the stream is decoded in training order)."""
    return dict(zip(record["decoded"], record["trained"]))


def worst_difference(first, second) -> float:
    return max(
        float(np.abs(np.array(first["weights"][name]) - np.array(second["weights"][name])).max())
        for name in first["weights"]
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed_processes")
    return root, write_id_shards(root / "data"), save_model(root / "model")


@pytest.mark.slow
def test_two_processes_read_half_each_augment_alike_and_resume_without_rereading(assets):
    root, data, model = assets
    (one,) = run(data, model, str(root / "one"), 1, 8)
    two = run(data, model, str(root / "two"), 2, 4)
    # one pass either way: one process reads the 48 rows, two read 24 each (their shards), the same 48 together
    assert one["decoded"] == list(range(TOTAL)) and one["stream_reads"]["rows_read"] == TOTAL
    for record in two:
        assert record["stream_reads"]["split"] == "shards"
        assert record["stream_reads"]["rows_read"] == record["stream_reads"]["rows_decoded"] == TOTAL // 2
    assert sorted(two[0]["decoded"] + two[1]["decoded"]) == list(range(TOTAL))
    # every row gets the augmentation it gets on one process (its key is its index in the one-process stream)
    assert {**augmented(two[0]), **augmented(two[1])} == augmented(one)

    out = str(root / "interrupted")
    before = run(data, model, out, 2, 4, "--stop_at", "3")
    assert all(r["global_step"] == 3 for r in before)
    after = run(data, model, out, 2, 4, "--resume_from_checkpoint", os.path.join(out, "checkpoint-3"))
    for rank in range(2):
        trained_before = set(before[rank]["decoded"][: len(before[rank]["trained"])])
        assert len(trained_before) == 12
        assert not trained_before & set(after[rank]["decoded"]), f"process {rank} read trained rows again"
        reads = after[rank]["stream_reads"]
        assert reads["resumed_from_stream_position"] is True and reads["rows_reread_on_resume"] == 0
        assert after[rank]["global_step"] == 6
    worst = max(worst_difference(after[rank], two[rank]) for rank in range(2))
    assert worst <= 1e-6, f"the resumed run ends {worst} away from the uninterrupted run's weights"
