"""`push_run` in this process against the local Hub server (`hub_server.py`): the quick check of what is pushed. The
round trips in fresh processes (push, then load with plain transformers) are the slow tests of `test_hub.py`."""

import re

import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import save_file
from testing_utils import HUB_TOKEN, make_tiny_vit, make_trainer, tiny_processor

from hf_nullspace.config import NullspaceArguments
from hf_nullspace.hub import push_run

REPO_ID = "robust-org/pushed-in-process"
# training state and pickles: never pushed
FORBIDDEN = re.compile(
    r"\.(bin|pt|pth|pkl|pickle|ckpt)$|(^|/)(training_args|optimizer|scheduler|rng_state|trainer_state)"
)


@pytest.fixture
def online_hub(hub_server, monkeypatch):
    """The test Hub as huggingface_hub's endpoint, online, for this test only; yields the endpoint."""
    endpoint = hub_server[0]
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    return endpoint


def test_push_run_uploads_the_model_and_noise_bank_once_and_keeps_training_state_local(online_hub, tmp_path):
    run = tmp_path / "run"
    make_tiny_vit().save_pretrained(run)
    tiny_processor().save_pretrained(run)
    save_file({"noise_0000": torch.randn(1, 16, 48)}, run / "noise_bank.safetensors")
    torch.save({"hub_token": "not pushed"}, run / "training_args.bin")  # a pickle: stays local
    (run / "trainer_state.json").write_text("{}")
    (run / "checkpoint-2").mkdir()
    torch.save({"state": 1}, run / "checkpoint-2" / "optimizer.pt")

    first = push_run(run, REPO_ID, token=HUB_TOKEN)
    again = push_run(run, REPO_ID, token=HUB_TOKEN)
    assert first.startswith(f"{online_hub}/{REPO_ID}/commit/")
    assert again == first, "an unchanged run must not create a new commit"
    files = set(HfApi(endpoint=online_hub, token=HUB_TOKEN).list_repo_files(REPO_ID))
    assert files >= {"config.json", "model.safetensors", "preprocessor_config.json", "noise_bank.safetensors"}
    assert not files & {"training_args.bin", "trainer_state.json", "checkpoint-2/optimizer.pt"}, files


def test_the_trainers_push_uploads_the_run_and_its_card_but_not_its_training_state(online_hub, tmp_path):
    trainer = make_trainer(
        tmp_path / "run",
        NullspaceArguments(noise_max_updates=5, noise_refresh_steps=2),
        max_steps=2,
        push_to_hub=True,
        hub_model_id="user/tiny-pushed-by-the-trainer",
        hub_token=HUB_TOKEN,
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    url = trainer.push_to_hub()
    assert f"{online_hub}/user/tiny-pushed-by-the-trainer/commit/" in str(url)
    files = set(HfApi(endpoint=online_hub, token=HUB_TOKEN).list_repo_files("user/tiny-pushed-by-the-trainer"))
    assert {"README.md", "config.json", "model.safetensors", "noise_bank.safetensors", "results.json"} <= files
    assert not any(FORBIDDEN.search(name) for name in files), files
