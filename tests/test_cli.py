import json
import os
import subprocess
import sys

from testing_utils import make_tiny_vit, tiny_processor, write_images

from hf_nullspace.cli import main


def saved_model(folder, **overrides):
    model = make_tiny_vit(**overrides)
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return str(folder)


def test_nullspace_command_prints_dimension_and_draws_patterns(tmp_path, capsys):
    model = saved_model(tmp_path / "model")
    main(["nullspace", model, "--count", "6", "--output", str(tmp_path / "patterns.png")])
    printed = capsys.readouterr().out
    summary = json.loads(printed[: printed.index("}") + 1])
    assert summary["patch_dim"] == 192 and summary["hidden_size"] == 48
    assert summary["nullspace_dimension"] == 192 - summary["rank"] == 144
    assert (tmp_path / "patterns.png").stat().st_size > 2000


def test_nullspace_command_reports_zero_for_a_wide_projection(tmp_path, capsys):
    model = saved_model(tmp_path / "model", patch_size=4)  # c*r*r = 48 = hidden size
    main(["nullspace", model, "--output", str(tmp_path / "p.png")])
    assert '"nullspace_dimension": 0' in capsys.readouterr().out


def test_evaluate_command_compares_models(tmp_path):
    base, other = saved_model(tmp_path / "base"), saved_model(tmp_path / "other", hidden_size=24)
    data = write_images(tmp_path / "data", num=8)
    out = tmp_path / "report"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_nullspace.cli",
            "evaluate",
            base,
            other,
            "--names",
            "base,finetuned",
            "--suite",
            "attacks",
            "--data",
            data,
            "--split",
            "test",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| benchmark | metric | base | finetuned | change |" in completed.stdout
    report = json.loads((out / "robustness.json").read_text())
    assert [m["name"] for m in report["models"]] == ["base", "finetuned"]
    assert len(report["models"][0]["results"]) == 1 + 8  # clean + FGSM and PGD at 4 budgets
    assert (out / "attack_budgets.png").exists()


def test_evaluate_command_rejects_unknown_suite(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "hf_nullspace.cli", "evaluate", saved_model(tmp_path / "m"), "--suite", "nope"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=300,
    )
    assert completed.returncode != 0 and "Valid suites" in completed.stderr


def test_finetune_command_runs_the_main_job_parser(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="noise_refresh_steps must be >= 1"):
        main(["finetune", "--output_dir", str(tmp_path), "--noise_refresh_steps", "0"])


def test_pickled_checkpoint_is_refused_with_a_clear_message(tmp_path):
    import pytest
    import torch

    from hf_nullspace.classifier import load_classifier

    model = make_tiny_vit()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refuses pickled checkpoints"):
        load_classifier(str(tmp_path))
    with pytest.raises(ValueError, match="never loads remote code"):
        load_classifier(str(tmp_path), trust_remote_code=True)
    model.save_pretrained(tmp_path)  # safetensors next to it: loads
    assert load_classifier(str(tmp_path)).config.hidden_size == 48
