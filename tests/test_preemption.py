"""Faults: a job killed with SIGKILL after a checkpoint, then rerun, ends exactly where an uninterrupted job ends.

Every run is `python trainer_scripts/run.py <the same arguments>` in a subprocess (one process, no DataLoader workers,
the default random crops and flips, which draw from Python's global `random`). A rerun without a resume flag resumes
from the newest complete checkpoint (`finetune.main`); `--resume_from_checkpoint <dir>` resumes from the one named.
"""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import ROOT, cli_args, save_model, write_parquet

from hf_nullspace.noise_bank import NOISE_BANK_FILE, NOISE_STATE_FILE, is_complete_checkpoint, last_complete_checkpoint

SCRIPT = os.path.join(ROOT, "trainer_scripts", "run.py")
MAX_STEPS = 16
SAVE_STEPS = 3
TOLERANCE = 1e-5
RUN_TIMEOUT = 300


def job_command(data, model, out, *extra):
    args = cli_args(
        data,
        model,
        out,
        "--max_steps",
        str(MAX_STEPS),
        "--save_steps",
        str(SAVE_STEPS),
        "--noise_refresh_steps",
        "2",
        "--noise_max_updates",
        "20",
        "--learning_rate",
        "1e-3",
        "--seed",
        "0",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
        *extra,
    )
    return [sys.executable, SCRIPT, *args]


ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def run(cmd):
    completed = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def complete_checkpoints(out) -> list[str]:
    if not os.path.isdir(out):
        return []
    names = [n for n in os.listdir(out) if n.startswith("checkpoint-")]
    return sorted(
        (os.path.join(out, n) for n in names if is_complete_checkpoint(os.path.join(out, n))),
        key=lambda p: int(p.rsplit("-", 1)[1]),
    )


def run_and_kill(cmd, out) -> str:
    """Starts the job, SIGKILLs it as soon as a complete checkpoint exists, and returns that checkpoint."""
    process = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not complete_checkpoints(out):
            assert process.poll() is None, (
                f"the job ended before its first checkpoint: {process.stderr.read()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.005)
        assert process.poll() is None, "the job finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "results.json")), "the killed job got to the end"
    checkpoint = last_complete_checkpoint(out)
    assert checkpoint is not None and int(checkpoint.rsplit("-", 1)[1]) < MAX_STEPS
    return checkpoint


def final_state(out) -> dict[str, torch.Tensor]:
    """The final weights (`model.safetensors`) and noise bank of a finished job's output folder."""
    assert os.path.isfile(os.path.join(out, "results.json")), "the job did not finish"
    weights = load_file(os.path.join(out, "model.safetensors"))
    bank = load_file(os.path.join(out, NOISE_BANK_FILE))
    return {**{f"param.{k}": v for k, v in weights.items()}, **{f"noise.{k}": v for k, v in bank.items()}}


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# random crops are keyed by (seed, epoch, row), not by loading order: a mid-epoch resume draws the same crops
IDENTITY_TRANSFORM = ("--train_crop_scale_min", "1.0", "--train_flip", "false")  # RNG still drawn, crop = image


@pytest.fixture(
    scope="module",
    params=[pytest.param(False, id="fixed_crops"), pytest.param(True, id="random_crops")],
)
def jobs(request, tmp_path_factory, trained_tiny_vit):
    """Data, model, the uninterrupted run's final state, and a run killed after its first complete checkpoint."""
    random_crops = request.param
    root = tmp_path_factory.mktemp("preemption")
    data = write_parquet(root / "data")
    # a trained model, so that noise synthesis takes updates
    model = save_model(root / "model", copy.deepcopy(trained_tiny_vit))
    extra = () if random_crops else IDENTITY_TRANSFORM

    def command(data, model, out, *more):
        return job_command(data, model, out, *extra, *more)

    start = time.perf_counter()
    run(command(data, model, str(root / "uninterrupted")))
    seconds = time.perf_counter() - start
    reference = final_state(str(root / "uninterrupted"))
    killed = str(root / "killed")  # left as the kill left it: every test resumes a copy
    checkpoint = run_and_kill(command(data, model, killed), killed)
    print(f"uninterrupted run {seconds:.1f} s; killed after {os.path.basename(checkpoint)}")
    initial = load_file(os.path.join(model, "model.safetensors"))
    moved = max(float((reference[f"param.{k}"] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-3, "training did not change the weights: the comparison would prove nothing"
    return root, data, model, reference, killed, command, random_crops


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_result(jobs):
    root, data, model, reference, killed, command, _ = jobs
    automatic_out, explicit = str(root / "automatic"), str(root / "explicit")
    shutil.copytree(killed, automatic_out)
    shutil.copytree(killed, explicit)
    first = complete_checkpoints(explicit)[0]  # the oldest (the only one, unless the kill came late)

    run(command(data, model, automatic_out))  # no flag: resumes from the newest complete checkpoint
    automatic = largest_difference(final_state(automatic_out), reference)
    run(command(data, model, explicit, "--resume_from_checkpoint", first))
    named = largest_difference(final_state(explicit), reference)
    print(f"largest difference to the uninterrupted run: automatic resume {automatic}, explicit resume {named}")
    assert automatic <= TOLERANCE and named <= TOLERANCE, (automatic, named)
    with open(os.path.join(automatic_out, "trainer_state.json")) as f:
        assert f'"global_step": {MAX_STEPS}' in f.read()


@pytest.mark.slow
def test_a_half_written_checkpoint_is_skipped_on_resume(jobs):
    root, data, model, reference, killed, command, random_crops = jobs
    if random_crops:
        pytest.skip("one crop setting is enough for the skipping of a half-written checkpoint")
    out = str(root / "half_written")
    shutil.copytree(killed, out)
    complete = last_complete_checkpoint(out)
    step = int(complete.rsplit("-", 1)[1]) + SAVE_STEPS
    partial = os.path.join(out, f"checkpoint-{step}")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    # what a kill during the save leaves: a truncated weights file, the trainer state, no nullspace state
    weights = open(os.path.join(complete, "model.safetensors"), "rb").read()
    with open(os.path.join(partial, "model.safetensors"), "wb") as f:
        f.write(weights[: len(weights) // 3])
    shutil.copy(os.path.join(complete, "trainer_state.json"), os.path.join(partial, "trainer_state.json"))
    os.utime(partial, (time.time() + 5, time.time() + 5))  # newer than the complete one
    assert not os.path.exists(os.path.join(partial, NOISE_STATE_FILE))
    assert last_complete_checkpoint(out) == complete

    run(command(data, model, out))
    difference = largest_difference(final_state(out), reference)
    print(f"largest difference to the uninterrupted run after skipping {os.path.basename(partial)}: {difference}")
    assert difference <= TOLERANCE
