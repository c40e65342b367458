import json
import os
import subprocess
import sys

import pytest
from datasets import Value
from testing_utils import ROOT, cli_args, save_model, write_parquet
from transformers import ResNetConfig, ResNetForImageClassification

from hf_nullspace.embedding import UnsupportedModelError
from hf_nullspace.finetune import build_trainer, parse_args


@pytest.mark.slow
def test_script_end_to_end_in_a_subprocess(tmp_path):
    data = write_parquet(tmp_path / "data")
    model = save_model(tmp_path / "model")
    out = str(tmp_path / "out")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "trainer_scripts", "run.py"), *cli_args(data, model, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(open(os.path.join(out, "results.json")).read())
    assert results["train"]["epoch"] > 0 and 0 <= results["eval"]["eval_accuracy"] <= 1
    assert results["skipped_rows"]["train"]["skipped"] == 0
    history = json.loads(open(os.path.join(out, "noise_history.json")).read())
    assert [r["step"] for r in history] == [0, 2]
    for name in ("model.safetensors", "preprocessor_config.json", "noise_bank.safetensors", "noise_norm.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(out)
    assert reloaded.config.id2label[3] == "class_3"


def build(tmp_path, data, model, *extra):
    return build_trainer(*parse_args(cli_args(data, model, str(tmp_path / "out"), *extra)))


def test_missing_label_column_lists_the_columns(tmp_path):
    data = write_parquet(tmp_path / "data", columns=("image", "target"))
    with pytest.raises(ValueError, match=r"(?s)label column.*image.*target"):
        build(tmp_path, data, save_model(tmp_path / "model"))
    trainer, _ = build(tmp_path, data, save_model(tmp_path / "model2"), "--label_column_name", "target")
    assert trainer.train_dataset is not None


def test_more_labels_than_the_model_has_is_an_error_before_training(tmp_path):
    data = write_parquet(tmp_path / "data", num_classes=12)
    with pytest.raises(ValueError, match="12 labels but the model's classifier has 10.*ignore_mismatched_sizes"):
        build(tmp_path, data, save_model(tmp_path / "model"))
    trainer, _ = build(tmp_path, data, save_model(tmp_path / "model2"), "--ignore_mismatched_sizes", "true")
    assert trainer.model.config.num_labels == 12


def test_labels_without_classlabel_take_the_model_label_names(tmp_path):
    data = write_parquet(tmp_path / "data", label_feature=Value("int64"))
    model = save_model(tmp_path / "model")
    trainer, _ = build(tmp_path, data, model)  # the model's id2label names the classes
    assert trainer.model.config.id2label[0] == "class_0"


def test_streaming_requires_max_steps(tmp_path):
    data = write_parquet(tmp_path / "data")
    args = cli_args(data, save_model(tmp_path / "model"), str(tmp_path / "out"), "--streaming", "true")
    args[args.index("--max_steps") + 1] = "-1"
    with pytest.raises(ValueError, match="pass --max_steps"):
        build_trainer(*parse_args(args))


def test_refresh_zero_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="noise_refresh_steps must be >= 1"):
        parse_args(cli_args("d", "m", str(tmp_path), "--noise_refresh_steps", "0"))


def test_unknown_model_family_is_an_error_before_training(tmp_path):
    data = write_parquet(tmp_path / "data")
    resnet = ResNetForImageClassification(ResNetConfig(num_labels=10, depths=[1], hidden_sizes=[8], embedding_size=8))
    with pytest.raises(UnsupportedModelError, match="Supported model types"):
        build(tmp_path, data, save_model(tmp_path / "model", resnet))


def test_streamed_training_runs(tmp_path):
    data = write_parquet(tmp_path / "data")
    trainer, counters = build(tmp_path, data, save_model(tmp_path / "model"), "--streaming", "true")
    trainer.train()
    assert trainer.state.global_step == 4 and len(trainer.noise_history) == 2
    assert counters["train"].seen >= 32 and counters["train"].skipped == 0
