"""The main job's arguments: the embedded default (or a config file) is a base that the command line overrides."""

import json
import subprocess
import sys

import pytest
import yaml

from hf_nullspace.data.bundled import BUNDLED_MNIST, BUNDLED_MODEL
from hf_nullspace.finetune import parse_args
from hf_nullspace.run_config import DEFAULT_RUN

EMBEDDED = json.loads(DEFAULT_RUN.read_text())


def test_one_override_keeps_the_rest_of_the_embedded_default():
    model_args, data_args, nullspace_args, training_args, _, _ = parse_args(["--nullspace_mode", "random"])
    assert nullspace_args.nullspace_mode == "random"
    assert training_args.max_steps == EMBEDDED["max_steps"] == 480
    assert training_args.per_device_train_batch_size == EMBEDDED["per_device_train_batch_size"]
    assert training_args.learning_rate == pytest.approx(EMBEDDED["learning_rate"])
    assert training_args.output_dir == EMBEDDED["output_dir"]
    assert data_args.robustness_suite == "mnist" and data_args.train_flip is False
    assert (model_args.model_name_or_path, data_args.dataset_name) == (BUNDLED_MODEL, BUNDLED_MNIST)


def test_no_arguments_is_the_embedded_default():
    _, data_args, nullspace_args, training_args, _, _ = parse_args([])
    assert training_args.max_steps == 480 and nullspace_args.nullspace_mode == "nullspace"
    assert data_args.robustness_max_samples == EMBEDDED["robustness_max_samples"]


@pytest.mark.parametrize("form", ["positional", "--config"])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_plus_overrides(tmp_path, form, suffix):
    path = tmp_path / f"my{suffix}"
    config = {"nullspace_mode": "random", "learning_rate": 3e-4, "max_steps": 12}
    path.write_text(yaml.safe_dump(config) if suffix == ".yaml" else json.dumps(config))
    head = [str(path)] if form == "positional" else ["--config", str(path)]
    _, _, nullspace_args, training_args, _, _ = parse_args([*head, "--learning_rate", "1e-5"])
    assert training_args.learning_rate == pytest.approx(1e-5)  # the command line wins
    assert training_args.max_steps == 12 and nullspace_args.nullspace_mode == "random"  # the file over the default
    assert training_args.per_device_train_batch_size == 32  # the embedded default under the file
    _, _, _, alone, _, _ = parse_args([str(path)])  # the single-file form
    assert alone.learning_rate == pytest.approx(3e-4)


def test_naming_a_model_or_dataset_leaves_the_embedded_default_out(tmp_path):
    with pytest.raises(ValueError, match="--model_name_or_path given but not --dataset_name: name both"):
        parse_args(["--model_name_or_path", "google/vit-base-patch16-224"])
    with pytest.raises(ValueError, match="--dataset_name given but not --model_name_or_path"):
        parse_args(["--dataset-name", "/data/mine"])
    model_args, data_args, _, training_args, _, _ = parse_args(
        ["--model_name_or_path", "google/vit-base-patch16-224", "--dataset_name", "/data/mine"]
    )
    # transformers' and this project's defaults, not the bundled run's
    assert training_args.max_steps == -1 and training_args.learning_rate == pytest.approx(5e-5)
    assert data_args.robustness_suite is None and data_args.train_flip is True
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"dataset_name": "/data/mine", "model_name_or_path": "google/vit-base-patch16"}))
    _, data_args, _, training_args, _, _ = parse_args([str(path), "--max_steps", "9"])
    assert training_args.max_steps == 9 and data_args.robustness_suite is None


def test_unknown_names_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"nullspace_mod": "random"}))
    with pytest.raises(ValueError, match="sets arguments that do not exist: nullspace_mod"):
        parse_args([str(path)])
    with pytest.raises(ValueError, match="not used"):
        parse_args(["--nullspace_mod", "random"])


def test_finetune_help_names_the_subcommand_and_the_defaults():
    completed = subprocess.run(
        [sys.executable, "-m", "hf_nullspace.cli", "finetune", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("usage: hf-nullspace finetune ")
    assert "embedded default run is the base" in completed.stdout and "max_steps=480" in completed.stdout
    assert "--overwrite_output_dir" in completed.stdout
