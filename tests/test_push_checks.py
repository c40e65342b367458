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
