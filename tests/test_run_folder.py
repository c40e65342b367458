"""The main job's output folder: resume an unfinished run with the same arguments, refuse anything else, start over
with `--overwrite_output_dir`."""

import json
import os

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from testing_utils import save_model

from hf_nullspace.finetune import main, parse_args
from hf_nullspace.run_folder import (
    RUN_ARGUMENTS_FILE,
    OutputFolderError,
    checkpoint_to_resume,
    run_arguments,
)

NAMES = ["circle", "square", "triangle"]


def write_data(folder, num=24):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(NAMES), num)
    images = [PILImage.fromarray((rng.integers(0, 255, (32, 32, 3)) // (1 + k)).astype(np.uint8)) for k in labels]
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    os.makedirs(folder, exist_ok=True)
    for split, part in (("train", slice(0, num - 8)), ("test", slice(num - 8, num))):
        Dataset.from_dict({"image": images[part], "label": labels[part].tolist()}, features=features).to_parquet(
            os.path.join(folder, f"{split}.parquet")
        )
    return str(folder)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return write_data(root / "data"), save_model(root / "model", names=NAMES)


def job(sources, out, *extra):
    data, model = sources
    return [
        *("--dataset_name", data, "--model_name_or_path", model, "--output_dir", str(out)),
        *("--max_steps", "2", "--save_steps", "2", "--per_device_train_batch_size", "8"),
        *("--per_device_eval_batch_size", "8", "--noise_refresh_steps", "2", "--noise_max_updates", "5"),
        *("--robustness_suite", "none", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true"),
        *extra,
    ]


def test_rerun_into_a_finished_run_is_refused_and_overwrite_starts_over(sources, tmp_path):
    out = tmp_path / "out"
    main(job(sources, out))
    weights = (out / "model.safetensors").read_bytes()
    # other arguments: refused, naming the argument, before anything is written
    refusal = r"holds a finished run with other arguments: --nullspace_mode: 'nullspace' there, 'random' now"
    with pytest.raises(OutputFolderError, match=refusal):
        main(job(sources, out, "--nullspace_mode", "random"))
    assert (out / "model.safetensors").read_bytes() == weights
    assert json.loads((out / RUN_ARGUMENTS_FILE).read_text())["nullspace"]["nullspace_mode"] == "nullspace"
    # the same arguments: finished, nothing to resume
    with pytest.raises(OutputFolderError, match="holds a finished run with these arguments"):
        main(job(sources, out))
    # --overwrite_output_dir: a new run from step 0 (no stale checkpoint), recorded with its own arguments
    (out / "checkpoint-999").mkdir()
    main(job(sources, out, "--nullspace_mode", "random", "--overwrite_output_dir", "true"))
    assert not (out / "checkpoint-999").exists()
    assert json.loads((out / RUN_ARGUMENTS_FILE).read_text())["nullspace"]["nullspace_mode"] == "random"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((out / "results.json").read_text())["nullspace_args"]["nullspace_mode"] == "random"


def test_a_non_empty_folder_without_a_run_is_refused(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="already exists and is not empty: pass --overwrite_output_dir"):
        main(job(sources, out))
    assert (out / "notes.txt").read_text() == "mine"


def _unfinished_run(folder, arguments, step=2):
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name in ("nullspace_state.json", "trainer_state.json"):
        (checkpoint / name).write_text("{}")
    (folder / RUN_ARGUMENTS_FILE).write_text(json.dumps(arguments))
    return str(checkpoint)


def test_an_unfinished_run_is_resumed_only_with_the_same_arguments(sources, tmp_path):
    arguments = run_arguments(*parse_args(job(sources, tmp_path / "out")))
    checkpoint = _unfinished_run(tmp_path / "out", arguments)
    assert checkpoint_to_resume(str(tmp_path / "out"), arguments) == checkpoint
    other = run_arguments(*parse_args(job(sources, tmp_path / "out", "--learning_rate", "1e-3")))
    refusal = r"holds an unfinished run with other arguments: --learning_rate: 5e-05 there, 0.001 now"
    with pytest.raises(OutputFolderError, match=refusal):
        checkpoint_to_resume(str(tmp_path / "out"), other)
    assert checkpoint_to_resume(str(tmp_path / "out"), other, overwrite=True) is None
    # arguments that do not shape the training (logging, saving, the robustness suite) may change on a resume
    relaxed = run_arguments(*parse_args(job(sources, tmp_path / "out", "--logging_steps", "7", "--save_steps", "9")))
    assert checkpoint_to_resume(str(tmp_path / "out"), relaxed) == checkpoint


def test_a_run_stopped_before_its_first_checkpoint_starts_over(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_ARGUMENTS_FILE).write_text(json.dumps({"nullspace": {"nullspace_mode": "none"}}))
    arguments = run_arguments(*parse_args(job(sources, out)))
    assert checkpoint_to_resume(str(out), arguments) is None


def test_checkpoints_without_recorded_arguments_are_refused(sources, tmp_path):
    out = tmp_path / "out"
    _unfinished_run(out, {})
    (out / RUN_ARGUMENTS_FILE).unlink()
    arguments = run_arguments(*parse_args(job(sources, out)))
    with pytest.raises(OutputFolderError, match="arguments were not recorded"):
        checkpoint_to_resume(str(out), arguments)
