"""A run's results go one way: built once as a `RunResults`, handed to the card and the push, never read back."""

import ast
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessor

import hf_nullspace
from hf_nullspace import hub
from hf_nullspace.config import NullspaceArguments
from hf_nullspace.results import RESULTS_FILE, DatasetRef, RunResults
from hf_nullspace.trainer import NullspaceTrainer

PACKAGE = Path(hf_nullspace.__file__).resolve().parent
TOKEN = "hf_testtokenAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def robustness(value: float) -> dict:
    row = {
        "benchmark": "fgsm@1/255",
        "metric": "accuracy",
        "value": value,
        "dataset_type": "shapes",
        "dataset_name": "Shapes",
        "dataset_config": None,
        "dataset_split": "test",
        "num_samples": 10,
        "skipped": 0,
        "params": {"epsilon": 1 / 255},
    }
    return {"suite": "mnist", "models": [{"name": "finetuned", "path": "out", "results": [row]}]}


class FakeHub:
    """Stands in for `HfApi` in `hub.py`: records each commit's files and their bytes."""

    commits: list[dict] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private=False, exist_ok=True):
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, branch, exist_ok=True):
        pass

    def create_commit(self, repo_id, operations, revision=None, commit_message=None):
        FakeHub.commits.append({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})
        return SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/1")


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHub.commits = []
    monkeypatch.setattr(hub, "HfApi", FakeHub)
    return FakeHub


def test_results_are_typed_redacted_once_and_round_trip(tmp_path):
    results = RunResults(
        model_name="tiny",
        dataset={"name": "org/shapes", "config": None, "split": "train"},
        training_args={"hub_token": TOKEN, "learning_rate": 1e-3, "note": f"token {TOKEN}"},
        extra={"held_out": {"rows": 12}},
    )
    assert isinstance(results.dataset, DatasetRef) and results.dataset.name == "org/shapes"
    assert results.training_args == {"learning_rate": 1e-3, "note": "token <redacted>"}
    results.save(tmp_path)
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert TOKEN not in json.dumps(saved) and saved["held_out"] == {"rows": 12}
    assert RunResults.load(tmp_path) == results
    with pytest.raises(ValueError, match="no model named 'finetuned'"):
        RunResults(model_name="tiny", robustness={"models": [{"name": "base", "results": []}]})


def test_push_renders_the_card_from_the_results_it_is_handed(tmp_path, fake_hub):
    run = tmp_path / "run"
    run.mkdir()
    # a stale results.json of an earlier state of the run: the push must not render or upload it
    RunResults(model_name="stale", robustness=robustness(0.1)).save(run)
    (run / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, run / "model.safetensors")  # push_run refuses a folder without a model
    pushed = hub.push_run(run, "org/fresh", results=RunResults(model_name="fresh", robustness=robustness(0.4242)))
    assert pushed.startswith("https://hub/org/fresh/commit/")
    (files,) = fake_hub.commits
    assert json.loads(files[RESULTS_FILE])["model_name"] == "fresh"
    card = files["README.md"].decode()
    assert "name: fresh" in card and "stale" not in card and "value: 0.4242" in card


def make_trainer(tmp_path) -> NullspaceTrainer:
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=3,
        id2label={0: "circle", 1: "square", 2: "triangle"},
        label2id={"circle": 0, "square": 1, "triangle": 2},
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    return NullspaceTrainer(
        model=ViTForImageClassification(config),
        args=args,
        processing_class=ViTImageProcessor(size={"height": 16, "width": 16}),
        nullspace_args=NullspaceArguments(),
    )


def test_the_trainer_pushes_the_results_it_is_handed_and_reads_none_back(tmp_path, fake_hub, monkeypatch):
    trainer = make_trainer(tmp_path)
    assert not hasattr(trainer, "run_info")
    results = trainer.build_results(
        dataset=DatasetRef("org/shapes", None, "train"), robustness=robustness(0.5), license="mit"
    )
    assert results.license == "mit" and results.model_name == Path(tmp_path).name

    def no_read_back(*args, **kwargs):
        raise AssertionError("results.json was read back")

    repo = lambda token=None, private=None: setattr(trainer, "hub_model_id", "org/tiny")  # noqa: E731
    monkeypatch.setattr(trainer, "init_hf_repo", repo)
    monkeypatch.setattr(RunResults, "load", no_read_back)
    monkeypatch.setattr(RunResults, "from_dict", no_read_back)
    trainer.push_to_hub(results=results)
    (files,) = fake_hub.commits
    assert json.loads(files[RESULTS_FILE]) == results.to_dict()
    assert "value: 0.5" in files["README.md"].decode() and "license: mit" in files["README.md"].decode()
    trainer.create_model_card(results=results)
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == results.to_dict()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    return [
        (node.module or "", [alias.name for alias in node.names])
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    ]


def test_nothing_imports_the_main_job_as_a_library():
    for path in PACKAGE.rglob("*.py"):
        for module, names in _imports(path):
            if module.split(".")[-1] == "finetune":
                assert names == ["main"], f"{path.relative_to(PACKAGE)} imports {names} from the main job"


def test_the_adversarial_modes_read_no_private_member_of_the_trainer():
    tree = ast.parse((PACKAGE / "adversarial.py").read_text())
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "trainer"
        and node.attr.startswith("_")
    ]
    assert private == []


def test_the_card_module_only_renders():
    source = (PACKAGE / "card.py").read_text()
    for job in ("def redact", "def resolve_license", "def save_examples", "def format_budget", "class RunPublishing"):
        assert job not in source
    assert "RunPublishingMixin" not in (PACKAGE / "hub.py").read_text()
    assert "read_text" not in source and "json.loads" not in source


def test_each_argument_is_declared_once():
    source = inspect.getsource(NullspaceArguments)
    for name in ("noise_synthesis_batch_size", "noise_warm_start"):
        assert source.count(f"    {name}:") == 1, name


@pytest.mark.parametrize("sum_over_items", [False, True])
def test_one_loss_reduction_for_every_mode(tmp_path, sum_over_items):
    trainer = make_trainer(tmp_path)
    trainer.model_accepts_loss_kwargs = sum_over_items
    reduction = trainer.loss_reduction
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    for num_items in (None, 24, torch.tensor(24)):  # 24: four micro-batches of 6 accumulated
        scaled = sum_over_items and num_items is not None
        expected = per_example.sum() / 24 if scaled else per_example.mean()
        torch.testing.assert_close(reduction.cross_entropy(logits, labels, num_items), expected)
        torch.testing.assert_close(reduction.reduce(per_example, num_items), expected)
