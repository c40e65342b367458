"""Test set-up: an offline, private Hub cache per test process, fixed seeds, and the shared fixtures. The helpers the
tests share live in `testing_utils.py`.

Two tiers: `pytest -m "not slow"` (`make test`) runs every module's behaviour on tiny models in a few minutes;
`pytest` (`make test-all`) adds the `slow` tests: multi-process runs (`tests/distributed/`), end-to-end jobs in
subprocesses and Hub round trips. Every test is safe under pytest-xdist (`-n auto`): ports are picked by the OS,
files live under `tmp_path`, and each worker has its own Hub cache and its own Hub server.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# Each test process (each xdist worker) gets its own HF_HOME, set before huggingface_hub, datasets and evaluate are
# imported: no test reads the user's cache, and two workers never write the same cache entry.
_HF_HOME = tempfile.mkdtemp(prefix=f"hf_nullspace_tests_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
for _variable in ("HF_DATASETS_CACHE", "HF_MODULES_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    os.environ.pop(_variable, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from testing_utils import HUB_TOKEN, NO_DROPOUT, TESTS, make_tiny_vit, template_images  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Every test under `tests/distributed/` (several processes) belongs to the slow tier."""
    for item in items:
        if "distributed" in item.path.relative_to(TESTS).parts[:-1]:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed(request):
    """Seeds every test; afterwards puts the shared `trained_tiny_vit` back in eval mode, so that a test that leaves
    it in training mode fails alone and not the tests that happen to run after it on the same worker."""
    torch.manual_seed(0)
    yield
    if "trained_tiny_vit" in request.fixturenames:
        request.getfixturevalue("trained_tiny_vit").eval()


@pytest.fixture
def tiny_vit():
    """An untrained tiny ViT (see `make_tiny_vit`), eval mode."""
    return make_tiny_vit().eval()


@pytest.fixture(scope="session")
def trained_tiny_vit():
    """The tiny ViT trained for a few dozen steps on `template_images`: confident, well above chance (eval mode)."""
    torch.manual_seed(0)
    # trained without dropout (the weights the synthesis tests' budgets were set on), returned with dropout 0.1
    model = make_tiny_vit(**NO_DROPOUT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(50):
        pixel_values, labels = template_images(32, seed=step + 1)
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = make_tiny_vit()
    trained.load_state_dict(model.state_dict())
    return trained.eval()


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    """The test Hub (`hub_server.py`) on 127.0.0.1 and a port the OS picks, accepting only `HUB_TOKEN` for writes;
    yields `(endpoint, root, log_path)`."""
    root = tmp_path_factory.mktemp("hub")
    log_path = root.parent / f"{root.name}.log"
    env = {**os.environ, "HUB_SERVER_TOKEN": HUB_TOKEN}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, os.path.join(TESTS, "hub_server.py"), "--root", str(root / "repos"), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
    try:
        first_line = process.stdout.readline().split()
        assert first_line[:1] == ["PORT"], f"hub server did not start: {log_path.read_text()}"
        yield f"http://127.0.0.1:{first_line[1]}", root / "repos", log_path
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
