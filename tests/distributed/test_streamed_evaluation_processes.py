"""Evaluation of a sharded source on two gloo processes on CPU: each process reads only the shards that hold the rows
it scores, the two together read the source once, and the merged report is the one-process report."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB = os.path.join(ROOT, "tests", "distributed", "eval_job.py")
SIZES = (6, 6, 6, 6)


def write_test_shards(folder):
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": Value("int64")})
    os.makedirs(folder, exist_ok=True)
    for shard, size in enumerate(SIZES):
        images = [PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(size)]
        labels = [int(label) for label in rng.integers(0, 10, size)]
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            os.path.join(folder, f"test-{shard:05d}-of-{len(SIZES):05d}.parquet")
        )
    return str(folder)


def save_model(folder):
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=10,
        # dropout 0: with dropout the scores of a model loaded from a folder vary from run to run (seen before this
        # change too), which would hide whether the two-process report is the one-process report
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
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


def run(model, data, out, processes):
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", str(free_port())]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)
    completed = subprocess.run(
        [*launch, JOB, model, data, out], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    records = []
    for rank in range(processes):
        with open(os.path.join(out, f"eval_rank_{rank}.json")) as handle:
            records.append(json.load(handle))
    return records


@pytest.mark.slow
def test_two_processes_read_their_own_shards_and_give_the_one_process_report(tmp_path):
    data = write_test_shards(tmp_path / "data")
    model = save_model(tmp_path / "model")
    (one,) = run(model, data, str(tmp_path / "one"), 1)
    two = run(model, data, str(tmp_path / "two"), 2)
    assert two[0]["report"]["num_processes"] == 2, "the launch did not start two processes"
    assert two[0]["report"]["models"] == two[1]["report"]["models"] == one["report"]["models"]
    assert one["source_reads"] == {"data": [{"process_index": 0, "rows_read": 24, "rows_decoded": 24}]}
    # clean and corruptions score all 24 rows (6 batches of 4: 3 per process), the attacks 9 evenly spaced ones:
    # process 0 scores rows 0-11, process 1 rows 12-23, each reading only the two shards that hold them
    expected = [{"process_index": 0, "rows_read": 12, "rows_decoded": 12}]
    expected.append({"process_index": 1, "rows_read": 12, "rows_decoded": 12})
    assert two[0]["source_reads"] == two[1]["source_reads"] == {"data": expected}
