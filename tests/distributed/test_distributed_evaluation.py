"""Distributed evaluation: `trainer_scripts/evaluate.py` under `accelerate launch` with two gloo processes on CPU gives
the report of one process, number for number (attacks seeded per example, corruptions per batch, hits summed)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from testing_utils import ROOT, accelerate_launch, make_tiny_vit, save_model, subprocess_env, write_images

SCRIPT = os.path.join(ROOT, "trainer_scripts", "evaluate.py")


def run_evaluate(arguments, output_dir, processes=1):
    if processes == 1:
        command = [sys.executable, SCRIPT]
    else:
        command = [*accelerate_launch(processes), SCRIPT]
    completed = subprocess.run(
        [*command, *arguments, "--output-dir", output_dir],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    with open(os.path.join(output_dir, "robustness.json")) as handle:
        return json.load(handle)


@pytest.mark.slow
def test_two_processes_give_the_one_process_report(tmp_path):
    # 23 rows (one undecodable), batches of 4: 6 batches per evaluation, so the processes get 3 each, the last short;
    # attacks capped at 9 rows (evenly spaced over the 23), corruptions on all
    data = write_images(tmp_path / "data", num=23, corrupt_rows=(5,))
    torch.manual_seed(1)
    first = save_model(tmp_path / "first", make_tiny_vit())
    second = save_model(tmp_path / "second", make_tiny_vit(hidden_size=24))
    arguments = [
        first,
        second,
        "--names",
        "first,second",
        "--suite",
        "mnist",
        "--data",
        data,
        "--split",
        "test",
        "--batch-size",
        "4",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--cap",
        "attack=9",
        "--severities",
        "1",
        "4",
    ]
    one = run_evaluate(arguments, str(tmp_path / "one"))
    two = run_evaluate(arguments, str(tmp_path / "two"), processes=2)
    assert one["num_processes"] == 1 and two["num_processes"] == 2, "the launch did not start two processes"
    assert two["models"] == one["models"]
    rows = {r["benchmark"]: r for r in one["models"][0]["results"]}
    assert rows["clean"]["num_samples"] == 22 and rows["clean"]["skipped"] == 1
    assert rows["pgd@0.05"]["params"]["max_samples"] == 9 and rows["pgd@0.05"]["num_samples"] in (8, 9)
    assert rows["pgd@0.05"]["sampling"]["selection"] == "evenly spaced over the 23 rows"
    assert len(one["models"][0]["details"]) == 10 * 2
