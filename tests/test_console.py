"""What a user reads: a quiet console by default, budgets as the card writes them, help and hints that name the real
flags and packages, and a package whose data setuptools installs without warnings."""

import logging
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from hf_nullspace.data import find_columns
from hf_nullspace.license import base_model_license
from hf_nullspace.robustness.report import RobustnessReport

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_the_printed_table_writes_budgets_as_the_card_does():
    rows = {"base": "base", "finetuned": "finetuned"}
    results = {
        name: [
            {"benchmark": "fgsm@0.00392157", "metric": "accuracy", "value": value},
            {"benchmark": "pgd@0.0313725", "metric": "accuracy", "value": value},
            {"benchmark": "fgsm@0.02", "metric": "accuracy", "value": value},
        ]
        for name, value in (("base", 0.5), ("finetuned", 0.6))
    }
    report = RobustnessReport("attacks", rows)
    report.results = results
    table = report.to_markdown()
    assert "| fgsm@1/255 |" in table and "| pgd@8/255 |" in table and "| fgsm@0.02 |" in table
    assert "0.00392157" not in table


def test_a_base_card_without_metadata_warns_nothing_from_huggingface_hub(tmp_path, caplog):
    (tmp_path / "README.md").write_text("# A model\n\nNo metadata block.\n")
    with caplog.at_level(logging.INFO):
        found, why = base_model_license(str(tmp_path))
    assert found is None and "declares no licence" in why
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]


def test_column_hints_name_the_main_job_flags():
    with pytest.raises(ValueError, match="Pass --image_column_name"):
        find_columns(["picture", "label"])
    with pytest.raises(ValueError, match="Pass --label_column_name"):
        find_columns(["image", "target"])


def test_the_peft_hint_names_an_installable_package(monkeypatch):
    import hf_nullspace.lora as lora

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(ImportError) as error:
        lora._peft()
    assert "pip install peft" in str(error.value) and "hf-nullspace[peft]" not in str(error.value)


def test_evaluate_help_shows_defaults_and_the_reference():
    completed = subprocess.run(
        [sys.executable, "-m", "hf_nullspace.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"},
    )
    text = " ".join(completed.stdout.split())
    assert "The first model is the reference" in text
    assert "(default: mnist)" in text and "(default: 64)" in text and "(default: robustness-report)" in text
    assert "(default: None)" not in text


def test_every_importable_folder_of_the_package_is_declared_with_its_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    package_dir = {name: ROOT / path for name, path in config.get("package-dir", {}).items()}
    folders = [p for p in (ROOT / "hf_nullspace").rglob("*") if p.is_dir() and p.name != "__pycache__"]
    for folder in folders:
        parts = folder.relative_to(ROOT).parts
        if all(part.isidentifier() for part in parts):  # Python could import it: setuptools warns unless declared
            assert ".".join(parts) in packages, f"{'.'.join(parts)} is not in [tool.setuptools] packages"
    data = config["package-data"]
    for path in (ROOT / "hf_nullspace" / "assets").rglob("*"):
        if path.is_file():
            owner = max(
                (p for p in packages if path.is_relative_to(package_dir.get(p, ROOT.joinpath(*p.split("."))))),
                key=len,
            )
            relative = path.relative_to(package_dir.get(owner, ROOT.joinpath(*owner.split(".")))).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in data.get(owner, [])), f"{relative} of {owner}"


def test_a_short_run_prints_a_page_not_a_wall(tmp_path):
    command = [
        *(sys.executable, str(ROOT / "trainer_scripts" / "run.py"), "--max_steps", "2", "--max_eval_samples", "50"),
        *("--robustness_suite", "none", "--save_strategy", "no", "--output_dir", str(tmp_path / "out")),
        *("--license", "apache-2.0", "--disable_tqdm", "true"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = (completed.stdout + completed.stderr).splitlines()
    text = "\n".join(lines)
    for noise in ("Model config", "loading configuration file", "[transformers]", "pin_memory", "metadata block"):
        assert noise not in text, noise
    assert "licence of the finetuned model is unknown" not in text  # --license was given
    assert len(lines) < 40, text


def test_the_evaluation_progress_bar_has_a_total(monkeypatch):
    import hf_nullspace.robustness.evaluate as evaluate
    from hf_nullspace.data.bundled import BUNDLED_MODEL
    from hf_nullspace.robustness import get_suite

    totals = []

    def recording_tqdm(iterable, **kwargs):
        totals.append((kwargs.get("desc"), kwargs.get("total")))
        return iterable

    monkeypatch.setattr(evaluate, "tqdm", recording_tqdm)
    suite = get_suite("mnist", corruptions=["contrast"], severities=[1])
    evaluate.evaluate_robustness({"base": BUNDLED_MODEL}, suite=suite, max_samples=8, device="cpu")
    assert totals and all(isinstance(total, int) and total > 0 for _, total in totals), totals
