"""Model cards and the push round trip against the local Hub-compatible server in `tests/hub_server.py`.

The round trip runs in fresh subprocesses: huggingface_hub reads `HF_ENDPOINT` when it is imported, and this test
process is offline (see `conftest.py`).
"""

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

from hf_nullspace.card import build_model_card, redact, write_model_card
from hf_nullspace.hub import _check_no_token, _run_files

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_testtokenAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
REPO_ID = "robust-org/tiny-vit-nullspace"
ID2LABEL = {0: "cat", 1: "dog", 2: "bird"}
UPLOADED = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "noise_bank.safetensors",
    "noise_norm.png",
    "robustness.png",
    "results.json",
    "noise_history.json",
}


def _result(benchmark, metric, value, params=None, dataset=("timm/mini-imagenet", "Mini-ImageNet"), split="test"):
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": value,
        "dataset_type": dataset[0],
        "dataset_name": dataset[1],
        "dataset_config": None,
        "dataset_split": split,
        "num_samples": 500,
        "skipped": 0,
        "params": params or {},
    }


def make_results() -> dict:
    corrupted = ("robust-org/mini-imagenet-c", "Mini-ImageNet-C")
    return {
        "model_name": "tiny-vit-nullspace",
        "base_model": "google/vit-base-patch16-224",
        "license": "apache-2.0",
        "dataset": {"name": "timm/mini-imagenet", "config": None, "split": "train"},
        "nullspace_args": {"nullspace_mode": "nullspace", "noise_epsilon": 0.03, "noise_refresh_steps": 40},
        "training_args": {"learning_rate": 3e-05, "per_device_train_batch_size": 8, "seed": 0, "output_dir": "out"},
        "noise_history": [
            {"step": 0, "norm": 10.5, "updates": 120, "statistic": 0.029, "reached": True},
            {"step": 40, "norm": 12.25, "updates": 3000, "statistic": 0.041, "reached": False},
        ],
        "figures": ["noise_norm.png", "robustness.png"],
        "robustness": {
            "models": [
                {
                    "name": "base",
                    "path": "google/vit-base-patch16-224",
                    "results": [
                        _result("clean", "accuracy", 0.81),
                        _result("pgd", "accuracy", 0.12, {"epsilon": 0.0039, "steps": 10}),
                        _result("corruptions", "mce", 0.61, dataset=corrupted),
                    ],
                },
                {
                    "name": "finetuned",
                    "path": "out",
                    "results": [
                        _result("clean", "accuracy", 0.8),
                        _result("pgd", "accuracy", 0.25, {"epsilon": 0.0039, "steps": 10}),
                        _result("corruptions", "mce", 0.55, dataset=corrupted),
                        _result("ood", "accuracy", None, dataset=("robust-org/mini-imagenet-a", "Mini-ImageNet-A")),
                    ],
                },
            ]
        },
    }


def expected_eval_results(results: dict) -> dict[str, dict]:
    """The finetuned model's measured results, keyed by the metric name the card gives them."""
    finetuned = next(model for model in results["robustness"]["models"] if model["name"] == "finetuned")
    labels = {"accuracy": "Accuracy", "mce": "mCE"}
    return {
        f"{result['benchmark']} {labels[result['metric']]}": result
        for result in finetuned["results"]
        if result["value"] is not None
    }


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    """The test Hub on 127.0.0.1, accepting only `TOKEN` for writes; yields `(endpoint, root, log_path)`."""
    root = tmp_path_factory.mktemp("hub")
    log_path = root.parent / f"{root.name}.log"
    env = {**os.environ, "HUB_SERVER_TOKEN": TOKEN}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tests" / "hub_server.py"), "--root", str(root / "repos"), "--port", "0"],
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


@pytest.fixture
def finished_run(tmp_path):
    """A finished run folder, with files that must be pushed and files that must not; yields `(folder, model)`."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    run = tmp_path / "run"
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=len(ID2LABEL),
        id2label=ID2LABEL,
        label2id={label: index for index, label in ID2LABEL.items()},
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(run)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(run)
    results = make_results()
    (run / "results.json").write_text(json.dumps(results, indent=2))
    (run / "noise_history.json").write_text(json.dumps(results["noise_history"]))
    save_file({"noise_0": torch.randn(16, 48), "noise_1": torch.randn(16, 48)}, run / "noise_bank.safetensors")
    for figure in results["figures"]:
        Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(run / figure)
    # Must stay local.
    (run / "checkpoint-5").mkdir()
    torch.save({"state": 1}, run / "checkpoint-5" / "optimizer.pt")
    model.save_pretrained(run / "checkpoint-5")
    torch.save({"hub_token": TOKEN}, run / "training_args.bin")
    (run / "trainer_state.json").write_text("{}")
    return run, model


def run_fresh(code: str, endpoint: str, hf_home: Path, offline: bool = False) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python with the test Hub as `HF_ENDPOINT` (set before huggingface_hub is imported)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, f"subprocess failed:\n{process.stdout}\n{process.stderr}"
    return process


def test_redact_drops_tokens():
    args = {
        "hub_token": TOKEN,
        "push_to_hub_token": "anything",
        "token": None,
        "learning_rate": 1e-4,
        "hub_model_id": "org/model",
        "nested": {"auth": TOKEN, "urls": [f"https://user:{TOKEN}@host/x", "hf_nullspace"]},
    }
    redacted = redact(args)
    assert redacted == {
        "learning_rate": 1e-4,
        "hub_model_id": "org/model",
        "nested": {"urls": ["https://user:<redacted>@host/x", "hf_nullspace"]},
    }
    assert TOKEN not in json.dumps(redacted)


def test_build_model_card_offline():
    results = make_results()
    results["training_args"]["hub_token"] = TOKEN
    card = build_model_card(results, repo_id=REPO_ID)

    metadata = yaml.safe_load(card.content.split("---")[1])
    assert metadata["base_model"] == "google/vit-base-patch16-224"
    assert metadata["datasets"] == ["timm/mini-imagenet"]
    assert metadata["pipeline_tag"] == "image-classification"
    assert metadata["library_name"] == "transformers"
    assert {"robustness", "nullspace", "hf-nullspace"} <= set(metadata["tags"])
    assert_model_index(metadata, results)

    text = card.text
    assert "https://arxiv.org/abs/2403.10476" in text
    assert "| `noise_refresh_steps` | 40 |" in text
    assert "| `learning_rate` | 3e-05 |" in text and "output_dir" not in text
    assert (
        "| pgd (epsilon=0.0039, steps=10) | Mini-ImageNet (test) | Accuracy ↑ | 12.00% | 25.00% | +13.00 pp |" in text
    )
    assert "| corruptions | Mini-ImageNet-C (test) | mCE ↓ | 61.00% | 55.00% | -6.00 pp |" in text
    assert "| ood | Mini-ImageNet-A (test) | Accuracy ↑ | — | — | — |" in text
    assert "![Noise norm over training](noise_norm.png)" in text
    assert f'pipeline("image-classification", model="{REPO_ID}")' in text
    assert "import hf_nullspace" not in text and "from hf_nullspace" not in text
    assert "Singh, Aditya" in text and "Conference on Parsimony and Learning" in text
    assert TOKEN not in card.content


def test_build_model_card_requires_finetuned_results():
    results = make_results()
    results["robustness"]["models"] = results["robustness"]["models"][:1]
    with pytest.raises(ValueError, match="finetuned"):
        build_model_card(results)


def assert_model_index(metadata: dict, results: dict) -> None:
    """The model-index holds one metric per measured benchmark and metric of the finetuned model, and no more."""
    (entry,) = metadata["model-index"]
    assert entry["name"] == results["model_name"]
    expected = expected_eval_results(results)
    seen = {}
    for result in entry["results"]:
        assert result["task"] == {"type": "image-classification", "name": "Image Classification"}
        assert {"type", "name", "split"} <= set(result["dataset"])
        for metric in result["metrics"]:
            assert metric["name"] not in seen
            seen[metric["name"]] = (result["dataset"], metric)
    assert set(seen) == set(expected)
    for name, (dataset, metric) in seen.items():
        assert metric["type"] == expected[name]["metric"]
        assert metric["value"] == expected[name]["value"]
        assert dataset["type"] == expected[name]["dataset_type"]
        assert dataset["split"] == expected[name]["dataset_split"]
        assert metric.get("args", {}) == expected[name]["params"]


def test_run_files_and_token_check(finished_run):
    run, _ = finished_run
    write_model_card(run)
    assert set(_run_files(run)) == UPLOADED
    _check_no_token(run, _run_files(run), TOKEN)
    (run / "results.json").write_text(json.dumps({**make_results(), "hub_token": TOKEN}))
    with pytest.raises(ValueError, match="contains a Hugging Face token"):
        _check_no_token(run, _run_files(run), None)


def test_example_images_feed_the_widget_and_are_pushed(finished_run):
    run, _ = finished_run
    results = {**make_results(), "examples": ["examples/cat.png"]}
    (run / "examples").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(run / "examples" / "cat.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(run / "examples" / "unlisted.png")
    (run / "results.json").write_text(json.dumps(results))
    widget = build_model_card(results, repo_id=REPO_ID).data.widget
    assert len(widget) == 1 and widget[0]["src"].endswith(f"/{REPO_ID}/resolve/main/examples/cat.png")
    assert build_model_card(results).data.get("widget") is None
    assert set(_run_files(run)) == UPLOADED - {"README.md"} | {"examples/cat.png"}


def test_write_model_card_offline(finished_run):
    run, _ = finished_run
    (run / "robustness.png").unlink()
    card = ModelCard.load(write_model_card(run))
    assert "noise_norm.png" in card.text and "robustness.png" not in card.text
    assert card.data.eval_results and card.data.model_name == "tiny-vit-nullspace"


def test_server_refuses_writes_without_the_token(hub_server):
    endpoint, _, _ = hub_server
    for headers in ({}, {"Authorization": "Bearer hf_wrongtoken"}):
        request = urllib.request.Request(
            f"{endpoint}/api/repos/create",
            data=json.dumps({"name": "x", "organization": "robust-org"}).encode(),
            headers={"Content-Type": "application/json", **headers},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        assert error.value.code == 401


def test_push_and_load_round_trip(hub_server, finished_run, tmp_path):
    endpoint, server_root, log_path = hub_server
    run, model = finished_run
    pixel_values = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        local_logits = model(pixel_values=pixel_values).logits
    save_file({"pixel_values": pixel_values}, tmp_path / "input.safetensors")

    push = run_fresh(
        f"""
        import json
        from hf_nullspace.hub import push_run

        first = push_run({str(run)!r}, {REPO_ID!r}, token={TOKEN!r})
        again = push_run({str(run)!r}, {REPO_ID!r}, token={TOKEN!r})
        branch = push_run({str(run)!r}, {REPO_ID!r}, token={TOKEN!r}, revision="v1")
        print(json.dumps([first, again, branch]))
        """,
        endpoint,
        tmp_path / "hf_home_push",
    )
    first, again, branch = json.loads(push.stdout.strip().splitlines()[-1])
    assert first.startswith(f"{endpoint}/{REPO_ID}/commit/")
    assert again == first, "an unchanged run must not create a new commit"
    assert branch == first, "a new branch starts from main"

    load = run_fresh(
        f"""
        import json
        import numpy as np
        import torch
        from huggingface_hub import HfApi, ModelCard
        from PIL import Image
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForImageClassification, pipeline

        model = AutoModelForImageClassification.from_pretrained({REPO_ID!r}).eval()
        pixel_values = load_file({str(tmp_path / "input.safetensors")!r})["pixel_values"]
        with torch.no_grad():
            save_file({{"logits": model(pixel_values=pixel_values).logits}}, {str(tmp_path / "hub.safetensors")!r})
        classifier = pipeline("image-classification", model={REPO_ID!r})
        image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
        card = ModelCard.load({REPO_ID!r})
        print(json.dumps({{
            "files": HfApi().list_repo_files({REPO_ID!r}),
            "branch_files": HfApi().list_repo_files({REPO_ID!r}, revision="v1"),
            "labels": [prediction["label"] for prediction in classifier(image)],
            "eval_results": [vars(result) for result in card.data.eval_results],
            "model_name": card.data.model_name,
            "card": card.content,
        }}))
        """,
        endpoint,
        tmp_path / "hf_home_load",
    )
    loaded = json.loads(load.stdout.strip().splitlines()[-1])

    assert set(loaded["files"]) == UPLOADED
    assert set(loaded["branch_files"]) == UPLOADED
    assert torch.equal(load_file(tmp_path / "hub.safetensors")["logits"], local_logits)
    assert sorted(loaded["labels"]) == sorted(ID2LABEL.values())

    results = json.loads((run / "results.json").read_text())
    expected = expected_eval_results(results)
    assert loaded["model_name"] == results["model_name"]
    assert {result["metric_name"] for result in loaded["eval_results"]} == set(expected)
    for result in loaded["eval_results"]:
        reference = expected[result["metric_name"]]
        assert result["metric_value"] == reference["value"]
        assert result["metric_type"] == reference["metric"]
        assert result["dataset_type"] == reference["dataset_type"]
        assert result["dataset_name"] == reference["dataset_name"]
        assert result["dataset_split"] == reference["dataset_split"]
        assert (result["metric_args"] or {}) == reference["params"]
    assert loaded["card"] == (run / "README.md").read_text()
    assert_model_index(yaml.safe_load(loaded["card"].split("---")[1]), results)

    # The card also renders with no network at all.
    offline = run_fresh(
        f"""
        from huggingface_hub import ModelCard
        from hf_nullspace.card import write_model_card

        print(ModelCard.load(write_model_card({str(run)!r}, repo_id={REPO_ID!r})).content)
        """,
        endpoint,
        tmp_path / "hf_home_offline",
        offline=True,
    )
    assert offline.stdout.strip() == loaded["card"].strip()

    # The token is in no stored file, no server log line and no client output.
    for path in server_root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    log = log_path.read_text()
    assert "POST /api/models/robust-org/tiny-vit-nullspace/commit/main" in log
    for text in (log, push.stdout, push.stderr, load.stdout, load.stderr):
        assert TOKEN not in text


@pytest.mark.slow
def test_a_finished_training_run_is_pushed_and_loads_with_plain_transformers(hub_server, tmp_path):
    """The main job trains, scores base vs finetuned, writes the card and pushes; a fresh process loads it back."""
    from test_finetune import cli_args, save_model, write_parquet

    endpoint, _, log_path = hub_server
    data = write_parquet(tmp_path / "data")
    model = save_model(tmp_path / "model")
    out = tmp_path / "out"
    args = cli_args(data, model, str(out), "--push_to_hub", "true", "--hub_model_id", "user/trained-nullspace",
                    "--hub_token", TOKEN, "--robustness_suite", "attacks", "--robustness_max_samples", "8")  # fmt: skip
    args.remove("none")
    args.remove("--robustness_suite")  # the first occurrence: "none", replaced by the suite above
    run_fresh(f"from hf_nullspace.finetune import main; main({args!r})", endpoint, tmp_path / "hf_home_train")
    assert not any(TOKEN in path.read_text(errors="ignore") for path in out.glob("*.json"))

    load = run_fresh(
        """
        import json
        from huggingface_hub import HfApi, ModelCard
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained("user/trained-nullspace")
        card = ModelCard.load("user/trained-nullspace")
        print(json.dumps({
            "files": sorted(HfApi().list_repo_files("user/trained-nullspace")),
            "eval": [[r.metric_name, r.metric_value] for r in card.data.eval_results],
            "state": {k: v.sum().item() for k, v in model.state_dict().items()},
        }))
        """,
        endpoint,
        tmp_path / "hf_home_load",
    )
    loaded = json.loads(load.stdout.strip().splitlines()[-1])
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "results.json",
            "noise_bank.safetensors", "noise_history.json", "noise_norm.png"} <= set(loaded["files"])  # fmt: skip
    assert not any(f.startswith("checkpoint-") or f.endswith((".bin", ".pt")) for f in loaded["files"])
    from transformers import AutoModelForImageClassification

    local = AutoModelForImageClassification.from_pretrained(out)
    assert loaded["state"] == pytest.approx({k: v.sum().item() for k, v in local.state_dict().items()}, abs=0)
    results = json.loads((out / "results.json").read_text())
    finetuned = next(m for m in results["robustness"]["models"] if m["name"] == "finetuned")
    assert sorted(value for _, value in loaded["eval"]) == sorted(r["value"] for r in finetuned["results"])
    assert TOKEN not in log_path.read_text()
