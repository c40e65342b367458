"""Model cards and every push path against the local Hub-compatible server in `tests/hub_server.py`.

Pushes run in fresh subprocesses: huggingface_hub reads `HF_ENDPOINT` when it is imported, and this test process is
offline (see `conftest.py`). Every push test lists the files of every commit of the repos it pushed to.
"""

import json
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from PIL import Image
from safetensors.torch import load_file, save_file
from testing_utils import HUB_TOKEN as TOKEN
from testing_utils import cli_args, make_tiny_vit, run_fresh, save_model, write_parquet

from hf_nullspace.card import build_model_card, write_model_card
from hf_nullspace.examples import save_examples
from hf_nullspace.hub import _check_no_token, _run_files
from hf_nullspace.license import resolve_license
from hf_nullspace.results import RunResults, redact
from hf_nullspace.robustness.budgets import format_budget, readable_benchmark

REPO_ROOT = Path(__file__).resolve().parent.parent
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
# Never in any commit of any repo: pickles, training arguments, optimiser, scheduler, scaler, RNG and trainer states.
FORBIDDEN = re.compile(
    r"\.(bin|pt|pth|pkl|pickle|ckpt|npy|npz)$|(^|/)(training_args|optimizer|scheduler|scaler|rng_state|trainer_state)"
)
PUSHED_MODEL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json"}
RUN_FILES = PUSHED_MODEL_FILES | {
    "README.md",
    "results.json",
    "noise_bank.safetensors",
    "noise_history.json",
    "noise_norm.png",
}
CHECKPOINT_FILES = PUSHED_MODEL_FILES | {"noise_bank.safetensors", "noise_history.json"}


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
        "eval_dataset": {"name": "timm/mini-imagenet", "config": None, "split": "validation"},
        "eval": {"eval_loss": 0.7125, "eval_accuracy": 0.79, "eval_runtime": 1.5, "epoch": 3.0},
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
                        _result("pgd@0.00392157", "accuracy", 0.12, {"epsilon": 1 / 255, "steps": 10}),
                        _result("corruptions", "mce", 0.61, dataset=corrupted),
                    ],
                },
                {
                    "name": "finetuned",
                    "path": "out",
                    "results": [
                        _result("clean", "accuracy", 0.8),
                        _result("pgd@0.00392157", "accuracy", 0.25, {"epsilon": 1 / 255, "steps": 10}),
                        _result("corruptions", "mce", 0.55, dataset=corrupted),
                        _result("ood", "accuracy", None, dataset=("robust-org/mini-imagenet-a", "Mini-ImageNet-A")),
                    ],
                },
            ]
        },
    }


def expected_eval_results(results: dict) -> dict[str, dict]:
    """
    The model-index the card must carry, keyed by metric name: the clean evaluation (`eval_accuracy` -> "Accuracy",
    `eval_loss` -> "Loss") on the eval split, and the finetuned model's measured robustness results, attack budgets
    written as fractions of 1/255.
    """
    expected = {}
    dataset = results["eval_dataset"]
    for key, name in (("eval_accuracy", "Accuracy"), ("eval_loss", "Loss")):
        if key in (results.get("eval") or {}):
            expected[name] = {
                "metric": key.removeprefix("eval_"),
                "value": results["eval"][key],
                "params": {},
                "dataset_type": dataset["name"],
                "dataset_name": dataset["name"],
                "dataset_split": dataset["split"],
            }
    labels = {"accuracy": "Accuracy", "mce": "mCE"}
    models = (results.get("robustness") or {}).get("models", [])
    for model in models:
        if model["name"] == "finetuned":
            for result in model["results"]:
                if result["value"] is not None:
                    name = result["benchmark"].replace("@0.00392157", "@1/255")
                    expected[f"{name} {labels[result['metric']]}"] = result
    return expected


@pytest.fixture
def finished_run(tmp_path):
    """A finished run folder, with files that must be pushed and files that must not; yields `(folder, model)`."""
    from transformers import ViTImageProcessor

    run = tmp_path / "run"
    label2id = {label: index for index, label in ID2LABEL.items()}
    model = make_tiny_vit(num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id=label2id).eval()
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
        "| pgd@1/255 (epsilon=1/255, steps=10) | Mini-ImageNet (test) | Accuracy ↑ | 12.00% | 25.00% | +13.00 pp |"
        in text
    )
    assert "| timm/mini-imagenet (validation) | Accuracy | 79.00% |" in text
    assert "| timm/mini-imagenet (validation) | Loss | 0.7125 |" in text
    names = [m["name"] for r in metadata["model-index"][0]["results"] for m in r["metrics"]]
    assert "pgd@1/255 Accuracy" in names and not any("0.0039" in name for name in names)
    assert "0.0039" not in text
    assert metadata["license"] == "apache-2.0"
    assert "| corruptions | Mini-ImageNet-C (test) | mCE ↓ | 61.00% | 55.00% | -6.00 pp |" in text
    assert "| ood | Mini-ImageNet-A (test) | Accuracy ↑ | — | — | — |" in text
    assert "![Noise norm over training](noise_norm.png)" in text
    assert f'pipeline("image-classification", model="{REPO_ID}")' in text
    assert "import hf_nullspace" not in text and "from hf_nullspace" not in text
    assert "Singh, Aditya" in text and "Conference on Parsimony and Learning" in text
    assert TOKEN not in card.content


def test_attack_budgets_read_as_fractions_of_1_255_or_short_decimals():
    assert [format_budget(e / 255) for e in (1, 2, 4, 8, 16)] == ["1/255", "2/255", "4/255", "8/255", "16/255"]
    assert format_budget(0.5 / 255) == "0.5/255" and format_budget(0.00392157) == "1/255"
    # short decimals stay decimals, even when they are multiples of 1/255 (0.2 = 51/255)
    assert [format_budget(e) for e in (0.02, 0.05, 0.1, 0.2, 0.03)] == ["0.02", "0.05", "0.1", "0.2", "0.03"]
    assert format_budget(0.01234) == "0.01234" and format_budget(0.0123456) == "0.01235"
    assert readable_benchmark("fgsm@0.00392157") == "fgsm@1/255"
    assert readable_benchmark("pgd@0.0313725") == "pgd@8/255"
    assert readable_benchmark("fgsm@0.1") == "fgsm@0.1"
    assert readable_benchmark("corruption/fog/3") == "corruption/fog/3" and readable_benchmark("clean") == "clean"


def test_clean_evaluation_alone_fills_the_model_index():
    """A run without a robustness suite still shows its evaluation on the Hub."""
    results = make_results()
    del results["robustness"]
    metadata = yaml.safe_load(build_model_card(results, repo_id=REPO_ID).content.split("---")[1])
    assert_model_index(metadata, results)
    (entry,) = metadata["model-index"]
    (result,) = entry["results"]
    assert result["dataset"] == {"name": "timm/mini-imagenet", "type": "timm/mini-imagenet", "split": "validation"}
    assert [(m["type"], m["name"], m["value"]) for m in result["metrics"]] == [
        ("accuracy", "Accuracy", 0.79),
        ("loss", "Loss", 0.7125),
    ]
    # nothing evaluated, nothing claimed
    del results["eval"]
    assert "model-index" not in build_model_card(results).content


def test_base_model_and_datasets_only_for_hub_ids():
    results = make_results()
    results["eval_dataset"] = {"name": "robust-org/held-out", "config": None, "split": "test"}
    metadata = yaml.safe_load(build_model_card(results).content.split("---")[1])
    assert metadata["base_model"] == "google/vit-base-patch16-224"
    assert metadata["datasets"] == ["timm/mini-imagenet", "robust-org/held-out"]
    for local in ("./my-vit", "/data/models/vit", "hf_nullspace/assets/vit-tiny-mnist"):
        results = {**make_results(), "base_model": local, "dataset": {"name": local, "split": "train"}}
        results["eval_dataset"] = {"name": local, "split": "test"}
        metadata = yaml.safe_load(build_model_card(results).content.split("---")[1])
        assert "base_model" not in metadata and "datasets" not in metadata, local
    results = {key: value for key, value in make_results().items() if key not in ("dataset", "eval_dataset")}
    card = build_model_card(results)
    assert "datasets" not in yaml.safe_load(card.content.split("---")[1]) and "/datasets/" not in card.text


def write_base_card(folder: Path, metadata: str | None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    if metadata is not None:
        (folder / "README.md").write_text(f"---\n{metadata}---\n\n# A base model\n")
    return str(folder)


def test_license_rules(tmp_path, caplog):
    licensed = write_base_card(tmp_path / "licensed", "license: cc-by-nc-4.0\n")
    custom = write_base_card(tmp_path / "custom", "license: other\nlicense_name: vendor-1\nlicense_link: LICENSE\n")
    silent = write_base_card(tmp_path / "silent", "tags:\n- vision\n")
    bare = write_base_card(tmp_path / "bare", None)

    assert resolve_license("mit", licensed) == {"license": "mit"}  # an explicit licence wins
    assert resolve_license(None, licensed) == {"license": "cc-by-nc-4.0"}  # never relabelled
    assert resolve_license(None, custom) == {"license": "other", "license_name": "vendor-1", "license_link": "LICENSE"}
    # unknown: `other` and a warning that says how to set it; this process is offline, so the Hub id is unknown too
    for base in (silent, bare, "google/vit-base-patch16-224", None):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_nullspace.card"):
            assert resolve_license(None, base) == {"license": "other"}
        assert "license: other" in caplog.text and "--license" in caplog.text, base

    results = {**make_results(), "license": None}
    metadata = yaml.safe_load(build_model_card(results).content.split("---")[1])
    assert metadata["license"] == "other"
    results.update(license="other", license_name="vendor-1", license_link="LICENSE")
    card = build_model_card(results)
    metadata = yaml.safe_load(card.content.split("---")[1])
    assert (metadata["license"], metadata["license_name"], metadata["license_link"]) == (
        "other",
        "vendor-1",
        "LICENSE",
    )
    assert "[vendor-1](LICENSE)" in card.text


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
        assert {"type", "name"} <= set(result["dataset"])
        for metric in result["metrics"]:
            assert metric["name"] not in seen
            seen[metric["name"]] = (result["dataset"], metric)
    assert set(seen) == set(expected)
    for name, (dataset, metric) in seen.items():
        assert metric["type"] == expected[name]["metric"]
        assert metric["value"] == expected[name]["value"]
        assert dataset["type"] == expected[name]["dataset_type"]
        assert dataset.get("split") == expected[name]["dataset_split"]
        assert metric.get("args", {}) == expected[name]["params"]


def test_run_files_and_token_check(finished_run):
    run, _ = finished_run
    write_model_card(run, RunResults.load(run))
    assert set(_run_files(run, RunResults.load(run))) == UPLOADED
    _check_no_token(run, _run_files(run, RunResults.load(run)), TOKEN)
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
    assert widget == [{"src": f"{constants.ENDPOINT}/{REPO_ID}/resolve/main/examples/cat.png", "example_title": "cat"}]
    widget = build_model_card(results, repo_id=REPO_ID, revision="v1").data.widget
    assert widget[0]["src"].endswith(f"/{REPO_ID}/resolve/v1/examples/cat.png")
    assert build_model_card(results).data.get("widget") is None
    assert set(_run_files(run, RunResults.from_dict(results))) == UPLOADED - {"README.md"} | {"examples/cat.png"}


def test_save_examples_from_an_image_dataset_and_from_pixel_values(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from transformers import ViTImageProcessor

    names = ["cat", "dog", "bird"]
    colours = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}
    labels = [0, 0, 1, 0, 2, 1]
    images = [Image.fromarray(np.full((40, 30, 3), colours[label], dtype=np.uint8)) for label in labels]
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=names)})
    dataset = Dataset.from_dict({"img": images, "label": labels}, features=features)
    dataset = dataset.with_transform(lambda batch: {"pixel_values": [torch.zeros(3, 8, 8)] * len(batch["img"])})

    written = save_examples(tmp_path / "raw", dataset)
    assert written == ["examples/cat.png", "examples/dog.png", "examples/bird.png"]  # one per label first
    for name, label in zip(written, (0, 1, 2)):
        image = Image.open(tmp_path / "raw" / name)
        assert image.size == (30, 40) and image.getpixel((5, 5)) == colours[label]  # as stored, not transformed

    processor = ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    rows = [
        {"pixel_values": processor(images[i], return_tensors="pt")["pixel_values"][0], "labels": torch.tensor(label)}
        for i, label in enumerate(labels)
    ]
    written = save_examples(tmp_path / "tensors", rows, id2label=dict(enumerate(names)), processor=processor, count=2)
    assert written == ["examples/cat.png", "examples/dog.png"]
    image = Image.open(tmp_path / "tensors" / "examples" / "dog.png")
    assert image.size == (8, 8)
    assert np.abs(np.asarray(image, dtype=int) - colours[1]).max() <= 1  # normalisation undone
    assert save_examples(tmp_path / "none", None) == []


def test_benchmark_figure_legend_covers_no_bar(tmp_path, monkeypatch):
    from hf_nullspace import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, **kwargs: figures.append(fig) or path)
    names = ["clean", "fgsm@0.00392157", "pgd@0.0313725", "corruption/fog", "corruptions"]
    report = {
        "models": [
            {"name": model, "results": [{"benchmark": b, "metric": "accuracy", "value": 0.97} for b in names]}
            for model in ("base", "finetuned")
        ]
    }
    plots.plot_benchmark_accuracy(report, str(tmp_path / "robustness.png"))
    (fig,) = figures
    fig.canvas.draw()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent()
    bars = [patch.get_window_extent() for patch in ax.patches]
    assert len(bars) == 10 and not any(legend.overlaps(bar) for bar in bars)
    assert [label.get_text() for label in ax.get_xticklabels()][1:3] == ["fgsm@1/255", "pgd@8/255"]


def test_card_command_sets_the_licence(finished_run):
    from hf_nullspace.cli import main

    run, _ = finished_run
    main(["card", str(run), "--repo-id", REPO_ID])
    assert ModelCard.load(run / "README.md").data.license == "apache-2.0"  # as results.json says
    main(["card", str(run), "--repo-id", REPO_ID, "--license", "cc-by-nc-4.0"])
    assert ModelCard.load(run / "README.md").data.license == "cc-by-nc-4.0"
    assert json.loads((run / "results.json").read_text())["license"] == "cc-by-nc-4.0"


def test_write_model_card_offline(finished_run):
    run, _ = finished_run
    (run / "robustness.png").unlink()
    card = ModelCard.load(write_model_card(run, RunResults.load(run)))
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


@pytest.mark.slow
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
    history = repo_history(endpoint, tmp_path / "hf_home_history", [REPO_ID])
    assert_no_forbidden_file(history)
    assert [set(commit["files"]) for commit in history[REPO_ID]] == [set(), UPLOADED]

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
        from hf_nullspace.results import RunResults

        run = {str(run)!r}
        print(ModelCard.load(write_model_card(run, RunResults.load(run), repo_id={REPO_ID!r})).content)
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


REPO_HISTORY = """
import json
import sys

import yaml
from huggingface_hub import HfApi, hf_hub_download

api = HfApi()
history = {}
for repo in json.loads(sys.argv[1]):
    commits = []
    for commit in reversed(api.list_repo_commits(repo)):  # oldest first
        files = sorted(api.list_repo_files(repo, revision=commit.commit_id))
        card = results = None
        if "README.md" in files:
            text = open(hf_hub_download(repo, "README.md", revision=commit.commit_id)).read()
            card = yaml.safe_load(text.split("---")[1])
        if "results.json" in files:
            results = json.load(open(hf_hub_download(repo, "results.json", revision=commit.commit_id)))
        commits.append({"title": commit.title, "files": files, "card": card, "results": results})
    history[repo] = commits
print(json.dumps(history))
"""


def repo_history(endpoint: str, hf_home: Path, repos: list[str]) -> dict[str, list[dict]]:
    """Every commit of each repo, oldest first: its title, the files of the repo at that commit, its card's metadata
    and its results.json, read back through the client (`list_repo_commits`, `list_repo_files(revision=...)`)."""
    code = f"import sys; sys.argv[1:] = [{json.dumps(repos)!r}]\n" + REPO_HISTORY
    return json.loads(run_fresh(code, endpoint, hf_home).stdout.strip().splitlines()[-1])


def assert_no_forbidden_file(history: dict[str, list[dict]]) -> None:
    for repo, commits in history.items():
        assert commits[0]["title"] == "initial commit" and commits[0]["files"] == [], repo
        for commit in commits:
            forbidden = [name for name in commit["files"] if FORBIDDEN.search(name)]
            assert not forbidden, f"{repo} at {commit['title']!r} holds {forbidden}"


def metrics_by_name(card: dict) -> dict[str, dict]:
    """The card's model-index metrics by name, each with its dataset."""
    return {
        metric["name"]: {**metric, "dataset": result["dataset"]}
        for result in card["model-index"][0]["results"]
        for metric in result["metrics"]
    }


@pytest.mark.slow
def test_cli_push_uploads_only_the_run_with_the_licence_given(hub_server, finished_run, tmp_path):
    endpoint, _, _ = hub_server
    run, _ = finished_run
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "pytorch_model.bin", "notes.pkl"):
        torch.save({"state": 1}, run / name)
    repo = "robust-org/cli-push"
    run_fresh(
        f"""
        from hf_nullspace.cli import main

        main(["push", {str(run)!r}, "--repo-id", {repo!r}, "--token", {TOKEN!r}, "--license", "cc-by-4.0"])
        main(["push", {str(run)!r}, "--repo-id", {repo!r}, "--token", {TOKEN!r}])
        """,
        endpoint,
        tmp_path / "hf_home_cli",
    )
    history = repo_history(endpoint, tmp_path / "hf_home_history", [repo])
    assert_no_forbidden_file(history)
    commits = history[repo]
    assert len(commits) == 2, "the second, unchanged push must make no commit"
    assert set(commits[1]["files"]) == UPLOADED
    assert commits[1]["card"]["license"] == "cc-by-4.0" and commits[1]["results"]["license"] == "cc-by-4.0"
    assert json.loads((run / "results.json").read_text())["license"] == "cc-by-4.0"
    assert set(metrics_by_name(commits[1]["card"])) == set(expected_eval_results(make_results()))


# Trains a tiny NullspaceTrainer once per hub_strategy, pushing through the Trainer's paths: each save
# (_push_from_checkpoint), save_model() with push_to_hub=True, and push_to_hub(). The base models: one on the Hub
# whose card says cc-by-4.0, one local with a README saying cc-by-nc-4.0, one local without a card.
TRAINER_PUSHES = """
import json
import sys

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from huggingface_hub import HfApi
from PIL import Image
from transformers import AutoModelForImageClassification, TrainingArguments, ViTConfig, ViTForImageClassification
from transformers import ViTImageProcessor

from hf_nullspace import NullspaceArguments, NullspaceTrainer

token, root, endpoint = sys.argv[1:4]
names = ["cat", "dog", "bird"]
processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
templates = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3))


def split(size, seed):
    noise = np.random.default_rng(seed)
    labels = [i % 3 for i in range(size)]
    images = [Image.fromarray(np.clip(templates[y] + noise.normal(0, 20, (32, 32, 3)), 0, 255).astype("uint8"))
              for y in labels]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features).with_transform(
        lambda batch: {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"],
                       "labels": batch["label"]})


def collate(rows):
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def base_model(folder, card=None):
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                       intermediate_size=96, num_labels=3, id2label=dict(enumerate(names)),
                       label2id={n: i for i, n in enumerate(names)})
    ViTForImageClassification(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    if card is not None:
        open(f"{folder}/README.md", "w").write(card)
    return folder


api = HfApi(token=token)
api.create_repo("base-org/tiny-base", exist_ok=True)
hub_base = base_model(f"{root}/hub-base", "---\\nlicense: cc-by-4.0\\n---\\n")
api.upload_folder(repo_id="base-org/tiny-base", folder_path=hub_base)
licensed = base_model(f"{root}/licensed-base", "---\\nlicense: cc-by-nc-4.0\\n---\\n# base\\n")
plain = base_model(f"{root}/plain-base")
runs = {
    "end": ("base-org/tiny-base", {"dataset_tags": "robust-org/tiny-shapes"}),
    "every_save": (licensed, {}),
    "checkpoint": (plain, {}),
    "all_checkpoints": (plain, {"license": "mit"}),
}
train, evaluation = split(16, 1), split(6, 2)
out = {}
for strategy, (base, card_arguments) in runs.items():
    args = TrainingArguments(
        output_dir=f"{root}/{strategy}", push_to_hub=True, hub_model_id=f"user/tiny-{strategy}", hub_token=token,
        hub_strategy=strategy, hub_always_push=True, max_steps=4, save_strategy="steps", save_steps=2,
        save_total_limit=1, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=4,
        per_device_eval_batch_size=6, logging_steps=1, use_cpu=True, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = NullspaceTrainer(
        model=AutoModelForImageClassification.from_pretrained(base), args=args, train_dataset=train,
        eval_dataset=evaluation, data_collator=collate, processing_class=processor, compute_metrics=accuracy,
        nullspace_args=NullspaceArguments(noise_refresh_steps=2, noise_max_updates=5),
    )
    trainer.train()
    metrics = trainer.evaluate()
    if strategy == "end":
        trainer.save_model()  # with push_to_hub=True, the Trainer's save_model pushes too
    if strategy == "every_save":  # the non-blocking push: a future of the commit URL
        url = trainer.push_to_hub(blocking=False, **card_arguments).result()
    else:
        url = trainer.push_to_hub(**card_arguments)
    out[strategy] = {"eval": metrics, "url": url}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_trainer_push_path_uploads_only_the_design_files(hub_server, tmp_path):
    """Each hub_strategy, save_model() and push_to_hub(): every commit holds only the design's files, every card the
    clean evaluation, the true licence, base_model / datasets for Hub ids, and a widget on uploaded eval images."""
    endpoint, server_root, log_path = hub_server
    code = f"import sys; sys.argv[1:] = [{TOKEN!r}, {str(tmp_path)!r}, {endpoint!r}]\n" + TRAINER_PUSHES
    process = run_fresh(code, endpoint, tmp_path / "hf_home_train")
    pushed = json.loads(process.stdout.strip().splitlines()[-1])
    repos = {strategy: f"user/tiny-{strategy}" for strategy in pushed}
    history = repo_history(endpoint, tmp_path / "hf_home_history", list(repos.values()))
    assert_no_forbidden_file(history)

    examples = {"examples/cat.png", "examples/dog.png", "examples/bird.png"}  # one per label of the eval split
    root = RUN_FILES | examples

    def checkpoint(folder):
        return {f"{folder}/{name}" for name in CHECKPOINT_FILES}

    step = [f"Training in progress, step {s}" for s in (2, 4)]
    expected = {  # strategy -> [(commit title, files of the repo at that commit)], after the initial commit
        "end": [("Model save", root), ("End of training", root)],
        "every_save": [(step[0], root), (step[1], root), ("End of training", root)],
        "checkpoint": [
            (step[0], root | checkpoint("last-checkpoint")),
            (step[1], root | checkpoint("last-checkpoint")),
            ("End of training", root | checkpoint("last-checkpoint")),
        ],
        "all_checkpoints": [
            (step[0], root | checkpoint("checkpoint-2")),
            (step[1], root | checkpoint("checkpoint-2") | checkpoint("checkpoint-4")),
            ("End of training", root | checkpoint("checkpoint-2") | checkpoint("checkpoint-4")),
        ],
    }
    licences = {"end": "cc-by-4.0", "every_save": "cc-by-nc-4.0", "checkpoint": "other", "all_checkpoints": "mit"}
    for strategy, repo in repos.items():
        commits = history[repo][1:]
        assert [(c["title"], set(c["files"])) for c in commits] == expected[strategy], strategy
        for commit in commits:  # every card: the clean evaluation of the eval split, as measured at that point
            metrics = metrics_by_name(commit["card"])
            assert {"Accuracy", "Loss"} <= set(metrics), (strategy, commit["title"])
            assert metrics["Accuracy"]["type"] == "accuracy" and metrics["Loss"]["type"] == "loss"
            logged = commit["results"]["eval"]
            assert metrics["Accuracy"]["value"] == round(logged["eval_accuracy"], 4)  # model-index values are rounded
            assert metrics["Loss"]["value"] == float(f"{logged['eval_loss']:.4g}")
        final = commits[-1]["card"]
        evaluated = pushed[strategy]["eval"]
        metrics = metrics_by_name(final)
        assert (metrics["Accuracy"]["value"], metrics["Loss"]["value"]) == (
            round(evaluated["eval_accuracy"], 4),
            float(f"{evaluated['eval_loss']:.4g}"),
        ), strategy
        assert final["license"] == licences[strategy], strategy
        assert pushed[strategy]["url"].startswith(f"{endpoint}/{repo}/commit/")
        widget = final["widget"]
        assert {w["src"] for w in widget} == {f"{endpoint}/{repo}/resolve/main/{name}" for name in examples}
        assert {w["example_title"] for w in widget} == {"cat", "dog", "bird"}
        if strategy == "end":  # a Hub base model and a Hub dataset id (given to push_to_hub) are named
            assert final["base_model"] == "base-org/tiny-base" and final["datasets"] == ["robust-org/tiny-shapes"]
            assert "datasets" not in commits[0]["card"], "no dataset was named before push_to_hub(dataset_tags=...)"
        else:  # local base models and data are not Hub ids
            assert "base_model" not in final and "datasets" not in final, strategy
    assert [c["card"]["license"] for c in history[repos["all_checkpoints"]][1:]] == ["other", "other", "mit"]
    assert "license: other" in process.stderr and "--license" in process.stderr
    assert TOKEN not in log_path.read_text() and TOKEN not in process.stdout + process.stderr
    for path in server_root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert not list(tmp_path.glob("*/.hub-push-*")), "staging folders are removed once pushed"


@pytest.mark.slow
def test_a_finished_training_run_is_pushed_and_loads_with_plain_transformers(hub_server, tmp_path):
    """The main job trains, scores base vs finetuned, writes the card and pushes; a fresh process loads it back."""
    endpoint, _, log_path = hub_server
    data = write_parquet(tmp_path / "data")
    model = save_model(tmp_path / "model")
    out = tmp_path / "out"
    args = cli_args(
        data,
        model,
        str(out),
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "user/trained-nullspace",
        "--hub_token",
        TOKEN,
        "--hub_always_push",
        "true",
        "--robustness_suite",
        "attacks",
        "--robustness_max_samples",
        "8",
        "--license",
        "cc-by-sa-4.0",
    )
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
    examples = sorted(f"examples/{path.name}" for path in (out / "examples").glob("*.png"))
    assert len(examples) == 3 and all(re.fullmatch(r"examples/class_\d\.png", name) for name in examples)
    assert set(loaded["files"]) == RUN_FILES | {"robustness.png", "attack_budgets.png"} | set(examples)
    history = repo_history(endpoint, tmp_path / "hf_home_history", ["user/trained-nullspace"])
    assert_no_forbidden_file(history)
    titles = [commit["title"] for commit in history["user/trained-nullspace"]]
    # every_save (--hub_always_push: a save waits for the previous push instead of skipping it)
    assert titles[1:3] == ["Training in progress, step 2", "Training in progress, step 4"], titles
    *_, pushed = history["user/trained-nullspace"]
    assert set(pushed["files"]) == set(loaded["files"])
    card = pushed["card"]
    assert card["license"] == "cc-by-sa-4.0" and "base_model" not in card and "datasets" not in card
    assert {w["src"] for w in card["widget"]} == {
        f"{endpoint}/user/trained-nullspace/resolve/main/{name}" for name in examples
    }
    metrics = metrics_by_name(card)
    results = json.loads((out / "results.json").read_text())
    assert (metrics["Accuracy"]["value"], metrics["Loss"]["value"]) == (
        round(results["eval"]["eval_accuracy"], 4),
        float(f"{results['eval']['eval_loss']:.4g}"),
    )
    assert metrics["Accuracy"]["dataset"]["split"] == "test"  # the split the job evaluated on
    assert {"fgsm@1/255 Accuracy", "pgd@8/255 Accuracy"} <= set(metrics)  # the clean accuracy once: "Accuracy"
    from transformers import AutoModelForImageClassification

    local = AutoModelForImageClassification.from_pretrained(out)
    assert loaded["state"] == pytest.approx({k: v.sum().item() for k, v in local.state_dict().items()}, abs=0)
    finetuned = next(m for m in results["robustness"]["models"] if m["name"] == "finetuned")
    clean_eval = [round(results["eval"]["eval_accuracy"], 4), float(f"{results['eval']['eval_loss']:.4g}")]
    robust = [round(r["value"], 4) for r in finetuned["results"] if r["benchmark"] != "clean"]
    assert sorted(value for _, value in loaded["eval"]) == sorted(clean_eval + robust)
    assert TOKEN not in log_path.read_text()


def test_pinned_dataset_revision_and_partial_mce_reach_the_model_index():
    results = make_results()
    finetuned = results["robustness"]["models"][1]["results"]
    finetuned[2] = {**finetuned[2], "metric": "partial_mce", "dataset_revision": "bb0fa9db"}
    card = build_model_card(results, repo_id=REPO_ID)
    metadata = yaml.safe_load(card.content.split("---")[1])
    entries = [
        (r["dataset"], m)
        for r in metadata["model-index"][0]["results"]
        for m in r["metrics"]
        if m["type"] == "partial_mce"
    ]
    assert len(entries) == 1
    dataset, metric = entries[0]
    assert dataset["revision"] == "bb0fa9db" and metric["name"] == "corruptions partial mCE"
    assert "partial mCE ↓" in card.text and "55.00%" in card.text


@pytest.mark.parametrize("mode", ["none", "random", "norm_matched", "madry", "trades"])
def test_a_baseline_card_says_it_is_a_baseline(mode):
    results = make_results()
    results["nullspace_args"]["nullspace_mode"] = mode
    text = build_model_card(results, repo_id=REPO_ID).text
    intro = text.split("## How it was made")[0]
    assert "baseline or control" in intro and "with **approximate nullspace augmented finetuning**" not in intro
    assert (
        f'nullspace_mode="{mode}"' in text and "unknown" not in text.split("**Noise trained on:**")[1].split("\n")[0]
    )


def test_a_nullspace_card_names_the_method():
    intro = build_model_card(make_results(), repo_id=REPO_ID).text.split("## How it was made")[0]
    assert "with **approximate nullspace augmented finetuning**" in intro and "baseline" not in intro


def test_card_shows_how_often_epsilon_was_met_and_the_norm_ratio():
    results = make_results()
    results["noise_history"] = [
        {
            "step": 0,
            "norm": 2.0,
            "updates": 4,
            "statistic": 0.02,
            "reached": True,
            "fallback": False,
            "norm_ratio": 0.5,
            "heldout_statistic": 0.05,
        },
        {
            "step": 40,
            "norm": 3.0,
            "updates": 3000,
            "statistic": 0.029,
            "reached": False,
            "fallback": True,
            "norm_ratio": 0.75,
            "heldout_statistic": 0.07,
        },
        {
            "step": 80,
            "norm": 4.0,
            "updates": 6,
            "statistic": 0.01,
            "reached": True,
            "fallback": False,
            "norm_ratio": 1.0,
            "heldout_statistic": None,
        },
    ]
    text = build_model_card(results, repo_id=REPO_ID).text
    assert "| Syntheses that reached ε by their updates | 2 / 3 |" in text
    assert "| Syntheses shrunk back inside ε after the update cap | 1 / 3 |" in text
    assert "| Noise norm / patch-embedding norm, median (min-max) | 0.75 (0.5-1) |" in text
    assert "| ε statistic on held-out rows, median | 0.06 |" in text
