"""Scale: the real job under two gloo processes on CPU (`accelerate launch --multi_gpu --num_processes 2`).

Each launch runs `multiprocess_job.py` (the job's own `parse_args` + `build_trainer` + `trainer.train`), which makes
every rank write its weights, noise bank, noise history and the ids of the examples it trained on. The tests
then check that the ranks agree exactly (one noise per refresh, the epsilon stop on the same update, one set of
weights) while training on different data, and that a streamed dataset gives every example to exactly one rank;
the same for the adversarial baselines and for LoRA adapters.
"""

import copy
import json
import os
import subprocess
import time
from collections import Counter

import pytest
import torch
from datasets import Dataset, load_dataset
from safetensors.torch import load_file
from testing_utils import ROOT, accelerate_launch, cli_args, save_model, subprocess_env, write_parquet

from hf_nullspace.adversarial import ADVERSARIAL_MODES, AdversarialTraining

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_job.py")
WORLD_SIZE = 2
NUM_TRAIN = 32  # rows of the train split (write_parquet's 48 minus 16 test rows)
BATCH = 4  # per device: 2 ranks x 4 rows x 4 steps = one pass over the 32 rows
STEPS = 4
LAUNCH_TIMEOUT = 240


def write_id_shards(folder, num_shards=2):
    """`write_parquet`'s data with the train split cut into `num_shards` parquet files, row `k` carrying its id in
    pixel (0, 0) as `(k % 256, k // 256, 255)` (decoded back by `multiprocess_job.example_ids`)."""
    folder = write_parquet(folder)
    train_file = os.path.join(folder, "train.parquet")
    rows = load_dataset("parquet", data_files=train_file, split="train")
    features = rows.features
    images, labels = [], []
    for k, row in enumerate(rows):
        image = row["image"].convert("RGB").copy()
        image.putpixel((0, 0), (k % 256, k // 256, 255))
        images.append(image)
        labels.append(row["label"])
    os.remove(train_file)
    per_shard = len(images) // num_shards
    for s in range(num_shards):
        part = slice(s * per_shard, (s + 1) * per_shard)
        Dataset.from_dict({"image": images[part], "label": labels[part]}, features=features).to_parquet(
            os.path.join(folder, f"train-{s:05d}-of-{num_shards:05d}.parquet")
        )
    return folder, list(range(len(images)))


def job_args(data, model, out, *extra):
    return cli_args(
        data,
        model,
        out,
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        str(BATCH),
        "--save_strategy",
        "no",
        "--train_crop_scale_min",
        "1.0",
        "--train_flip",
        "false",
        "--noise_refresh_steps",
        "2",
        "--noise_max_updates",
        "30",
        "--seed",
        "0",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "True",
        *extra,
    )


def launch(data, model, out, *extra):
    """Runs the job on two ranks and returns their states, rank by rank, and the seconds it took."""
    command = [
        *accelerate_launch(WORLD_SIZE),
        JOB,
        *job_args(data, model, out, *extra),
    ]
    start = time.perf_counter()
    completed = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    states = []
    for rank in range(WORLD_SIZE):
        with open(os.path.join(out, f"rank_{rank}.json")) as f:
            state = json.load(f)
        state["tensors"] = load_file(os.path.join(out, f"rank_{rank}.safetensors"))
        states.append(state)
    assert [s["rank"] for s in states] == list(range(WORLD_SIZE))
    assert all(s["world_size"] == WORLD_SIZE and s["num_processes"] == WORLD_SIZE for s in states), (
        "the launch did not start two real processes"
    )
    return states, seconds


def ids_seen(state) -> list[int]:
    return [i for batch in state["batches"] for i in batch["ids"]]


def assert_ranks_in_step(states):
    """Both ranks hold the same noise after every refresh, stopped on the same update, and end on the same weights."""
    rank0, rank1 = states
    assert rank0["global_step"] == rank1["global_step"] == STEPS
    history0, history1 = rank0["history"], rank1["history"]
    assert [r["step"] for r in history0] == [r["step"] for r in history1] == list(range(0, STEPS, 2))
    assert rank0["refresh_digests"] == rank1["refresh_digests"]
    for r0, r1 in zip(history0, history1, strict=True):
        assert r0["updates"] == r1["updates"], (r0, r1)
        assert r0["statistic"] == r1["statistic"], (r0, r1)
        assert r0["reached"] == r1["reached"] and r0["norm"] == r1["norm"], (r0, r1)
    # the run really synthesised: at least one refresh took updates, and the epsilon stop was reached
    assert any(r["updates"] > 0 for r in history0), history0
    tensors0, tensors1 = rank0["tensors"], rank1["tensors"]
    assert tensors0.keys() == tensors1.keys()
    noises = sorted(k for k in tensors0 if k.startswith("noise."))
    params = sorted(k for k in tensors0 if k.startswith("param."))
    assert len(noises) == len(history0) and len(params) > 0
    for key in noises:
        assert torch.equal(tensors0[key], tensors1[key]), key
    worst = max(float((tensors0[k] - tensors1[k]).abs().max()) for k in params)
    assert worst <= 1e-7, f"the ranks' weights differ by up to {worst}"
    # the ranks trained on different data, so agreement is not trivial
    for b0, b1 in zip(rank0["batches"], rank1["batches"], strict=True):
        assert b0["ids"] != b1["ids"], (b0, b1)
    return worst


@pytest.fixture(scope="module")
def assets(tmp_path_factory, trained_tiny_vit):
    root = tmp_path_factory.mktemp("distributed")
    data, ids = write_id_shards(root / "data", num_shards=2)
    # a trained model, so that synthesis has work to do (an untrained one is inside epsilon from the first draw)
    model = save_model(root / "model", copy.deepcopy(trained_tiny_vit))
    return root, data, model, ids


@pytest.mark.slow
def test_two_ranks_share_one_noise_and_one_model(assets):
    root, data, model, ids = assets
    out = str(root / "map_style")
    states, seconds = launch(data, model, out)
    worst = assert_ranks_in_step(states)
    print(f"map-style launch: {seconds:.1f} s, largest weight difference between ranks {worst}")
    # one epoch of the map-style dataset: the distributed sampler gives every row to exactly one rank
    seen0, seen1 = ids_seen(states[0]), ids_seen(states[1])
    assert sorted(seen0 + seen1) == ids and not set(seen0) & set(seen1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dispatch_batches",
    [False, True],
    ids=["split_by_node", "dispatch"],
)
def test_streamed_examples_go_to_exactly_one_rank(assets, dispatch_batches):
    root, data, model, ids = assets
    out = str(root / f"streamed_dispatch_{dispatch_batches}")
    extra = ["--streaming", "true"]
    if not dispatch_batches:
        extra += ["--accelerator_config", json.dumps({"dispatch_batches": False})]
    states, seconds = launch(data, model, out, *extra)
    print(f"streamed launch (dispatch_batches={dispatch_batches}): {seconds:.1f} s")
    assert_ranks_in_step(states)
    seen0, seen1 = ids_seen(states[0]), ids_seen(states[1])
    assert -1 not in seen0 + seen1, "an example id could not be read back from the pixels"
    counts = Counter(seen0 + seen1)
    assert len(seen0) == len(seen1) == STEPS * BATCH
    # STEPS x BATCH x 2 ranks = one pass over the train rows: every id exactly once, on one rank
    assert not set(seen0) & set(seen1), f"examples seen by both ranks: {sorted(set(seen0) & set(seen1))}"
    assert sorted(counts) == ids, f"examples never seen: {sorted(set(ids) - set(counts))}"
    assert set(counts.values()) == {1}, counts


# ---- the adversarial baselines and LoRA adapters -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ADVERSARIAL_MODES)
def test_two_ranks_train_one_model_on_different_data(tmp_path, trained_tiny_vit, mode):
    data, _ = write_id_shards(tmp_path / "data", num_shards=2)
    model = save_model(tmp_path / "model", copy.deepcopy(trained_tiny_vit))
    out = str(tmp_path / "out")
    states, _ = launch(data, model, out, "--nullspace_mode", mode, "--adversarial_steps", "3")
    rank0, rank1 = states
    assert rank0["global_step"] == rank1["global_step"] == 4 and rank0["history"] == rank1["history"] == []
    params = sorted(k for k in rank0["tensors"] if k.startswith("param."))
    worst = max(float((rank0["tensors"][k] - rank1["tensors"][k]).abs().max()) for k in params)
    assert worst <= 1e-7, f"the ranks' weights differ by up to {worst}"
    for b0, b1 in zip(rank0["batches"], rank1["batches"], strict=True):
        assert b0["ids"] != b1["ids"]
    # the attack's statistics are averaged over the processes: both ranks log the same values with the loss
    logs = [[e for e in state["log_history"] if "loss" in e] for state in states]
    assert logs[0] and all("adversarial_accuracy" in e for e in logs[0])
    keys = AdversarialTraining.STAT_KEYS
    assert [[e[k] for k in keys] for e in logs[0]] == [[e[k] for k in keys] for e in logs[1]]


@pytest.mark.slow
def test_two_ranks_share_one_noise_and_one_adapter(tmp_path, trained_tiny_vit):
    pytest.importorskip("peft")
    data, _ = write_id_shards(tmp_path / "data", num_shards=2)
    model = save_model(tmp_path / "model", copy.deepcopy(trained_tiny_vit))
    states, _ = launch(data, model, str(tmp_path / "out"), "--use_lora", "true", "--lora_r", "4")
    assert_ranks_in_step(states)  # one noise per refresh on both ranks, the same weights at the end
    assert any(".lora_A." in key for key in states[0]["tensors"])
