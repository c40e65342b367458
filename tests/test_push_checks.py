"""`hf-nullspace push` checks the folder before it creates anything: no model files, no repo (against the local Hub
test server in `tests/hub_server.py`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_testtokenAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    """The test Hub on 127.0.0.1, accepting only `TOKEN` for writes; yields `(endpoint, repos root)`."""
    root = tmp_path_factory.mktemp("hub")
    log_path = root.parent / f"{root.name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tests" / "hub_server.py"), "--root", str(root / "repos"), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "HUB_SERVER_TOKEN": TOKEN},
            text=True,
        )
    try:
        first_line = process.stdout.readline().split()
        assert first_line[:1] == ["PORT"], f"hub server did not start: {log_path.read_text()}"
        yield f"http://127.0.0.1:{first_line[1]}", root / "repos"
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def push(endpoint: str, folder: Path, repo_id: str, hf_home: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    command = ["push", str(folder), "--repo-id", repo_id, "--token", TOKEN]
    code = f"from hf_nullspace.cli import main; main({command!r})"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("contents", ["missing", "empty", "results only"])
def test_push_without_model_files_creates_no_repo(hub_server, tmp_path, contents):
    endpoint, repos = hub_server
    folder = tmp_path / "run"
    if contents != "missing":
        folder.mkdir()
    if contents == "results only":
        (folder / "results.json").write_text(json.dumps({"nullspace_args": {}}))
    name = f"empty-{contents.replace(' ', '-')}"
    completed = push(endpoint, folder, f"robust-org/{name}", tmp_path / "hf_home")
    assert completed.returncode != 0
    assert "Nothing to push" in completed.stderr and "no repo was created" in completed.stderr.replace("\n", " ")
    assert "Traceback" not in completed.stderr
    assert not (repos / "models" / "robust-org" / name).exists()


def fresh(code: str, endpoint: str, hf_home: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_cards_pushed_during_training_carry_the_licence_given(hub_server, tmp_path):
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    endpoint, _ = hub_server
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)) for _ in range(24)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    (tmp_path / "data").mkdir()
    for split, part in (("train", slice(0, 16)), ("test", slice(16, 24))):
        rows = {"image": images[part], "label": [i % 2 for i in range(len(images[part]))]}
        Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / f"{split}.parquet")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=96,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        id2label={0: "a", 1: "b"},
        label2id={"a": 0, "b": 1},
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "model")  # no README: its licence is unknown
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "model")
    repo = "robust-org/licensed"
    args = [
        *("--dataset_name", str(tmp_path / "data"), "--model_name_or_path", str(tmp_path / "model")),
        *("--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--save_steps", "2", "--use_cpu", "true"),
        *("--per_device_train_batch_size", "8", "--noise_refresh_steps", "2", "--noise_max_updates", "5"),
        *("--robustness_suite", "none", "--report_to", "none", "--disable_tqdm", "true", "--license", "apache-2.0"),
        *("--push_to_hub", "true", "--hub_model_id", repo, "--hub_token", TOKEN, "--hub_always_push", "true"),
    ]
    trained = fresh(f"from hf_nullspace.finetune import main; main({args!r})", endpoint, tmp_path / "hf_train")
    assert "licence of the finetuned model is unknown" not in trained.stderr
    history = fresh(
        f"""
import json
from huggingface_hub import HfApi, ModelCard, hf_hub_download
api = HfApi()
licences = []
for commit in api.list_repo_commits({repo!r}):
    if "README.md" in api.list_repo_files({repo!r}, revision=commit.commit_id):
        card = ModelCard.load(hf_hub_download({repo!r}, "README.md", revision=commit.commit_id))
        licences.append(card.data.license)
print(json.dumps(licences))
""",
        endpoint,
        tmp_path / "hf_history",
    )
    licences = json.loads(history.stdout.strip().splitlines()[-1])
    assert len(licences) >= 3 and set(licences) == {"apache-2.0"}, licences  # step 2, step 4, the finished run
