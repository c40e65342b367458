"""`hf-nullspace evaluate ... --push-results`: robustness results offered to a model's card as a pull request, round
trip on the local test Hub (`tests/hub_server.py`), for a ViT (with the nullspace figures) and a CNN (without)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import serve
from huggingface_hub import EvalResult
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

from hf_nullspace.cli import main
from hf_nullspace.results_pr import SOURCE_NAME, SOURCE_URL, merge_eval_results, robustness_eval_results

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_resultsprtokenAbCdEfGhIjKlMnOpQrStUvWxYz01"
VIT_REPO, CNN_REPO = "owner-org/tiny-vit", "owner-org/tiny-resnet"
PREVIOUS = EvalResult(
    task_type="image-classification",
    task_name="Image Classification",
    dataset_type="owner-org/private-benchmark",
    dataset_name="Owner's benchmark",
    dataset_split="test",
    metric_type="accuracy",
    metric_name="Accuracy",
    metric_value=0.875,
)
OWNER_CARD = """---
license: apache-2.0
tags:
- vision
- image-classification
model-index:
- name: tiny-vit
  results:
  - task:
      type: image-classification
      name: Image Classification
    dataset:
      type: owner-org/private-benchmark
      name: Owner's benchmark
      split: test
    metrics:
    - type: accuracy
      name: Accuracy
      value: 0.875
---

# tiny-vit

The owner's own words about this model, which the pull request must keep.
"""


def _vit():
    config = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3)
    config.update(intermediate_size=96, num_labels=10, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return ViTForImageClassification(ViTConfig(**config))


def _resnet():
    return ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    )


def _save(model, folder: Path) -> Path:
    from transformers import ViTImageProcessor

    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return folder


def _images(folder: Path, num: int = 8) -> str:
    import io

    import numpy as np
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images = []
    for _ in range(num):
        buffer = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    labels = [int(v) for v in rng.integers(0, 10, num)]
    folder.mkdir(parents=True)
    features = Features({"image": Image(), "label": Value("int64")})
    Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(folder / "test.parquet")
    return str(folder)


def run_fresh(args: list[str], endpoint: str, hf_home: Path) -> subprocess.CompletedProcess:
    """Runs Python in a fresh process with the test Hub as `HF_ENDPOINT` (read when huggingface_hub is imported)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    process = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, f"subprocess failed:\n{process.stdout[-3000:]}\n{process.stderr[-4000:]}"
    return process


SET_UP = """
import sys
from huggingface_hub import HfApi

token, vit, cnn, card = sys.argv[1:5]
api = HfApi(token=token)
for repo, folder in (("{vit}", vit), ("{cnn}", cnn)):
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=folder, commit_message="the owner's model")
api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="{vit}", commit_message="the owner's card")
"""

READ_BACK = """
import json, sys
from huggingface_hub import HfApi, ModelCard

api = HfApi()
out = {}
for repo in sys.argv[1:]:
    prs = [d for d in api.get_repo_discussions(repo) if d.is_pull_request]
    details = api.get_discussion_details(repo, prs[0].num)
    pr_files = api.list_repo_files(repo, revision=details.git_reference)
    card = ModelCard.load(api.hf_hub_download(repo, "README.md", revision=details.git_reference))
    main_card = None
    if "README.md" in api.list_repo_files(repo):
        main_card = open(api.hf_hub_download(repo, "README.md")).read()
    out[repo] = {
        "num_prs": len(prs),
        "title": details.title,
        "status": details.status,
        "target": details.target_branch,
        "ref": details.git_reference,
        "description": details.events[0].content,
        "commits_on_pr": [e.summary for e in details.events if e.type == "commit"],
        "pr_files": pr_files,
        "main_files": api.list_repo_files(repo),
        "main_commits": [c.title for c in api.list_repo_commits(repo)],
        "main_card": main_card,
        "pr_card": str(card),
        "pr_text": card.text,
        "eval_results": [vars(r) for r in card.data.eval_results],
        "model_name": card.data.model_name,
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_evaluate_push_results_opens_a_pull_request_that_keeps_the_card(tmp_path):
    torch.manual_seed(0)
    vit, cnn = _save(_vit(), tmp_path / "vit"), _save(_resnet(), tmp_path / "cnn")
    (tmp_path / "README.md").write_text(OWNER_CARD)
    data = _images(tmp_path / "data")
    with serve(tmp_path / "hub", token=TOKEN) as (endpoint, log_path):
        set_up = SET_UP.replace("{vit}", VIT_REPO).replace("{cnn}", CNN_REPO)
        run_fresh(["-c", set_up, TOKEN, str(vit), str(cnn), str(tmp_path / "README.md")], endpoint, tmp_path / "h0")
        before = json.loads(
            run_fresh(
                [
                    "-c",
                    "import json; from huggingface_hub import HfApi; api = HfApi(); "
                    f"print(json.dumps([api.model_info(r).sha for r in ({VIT_REPO!r}, {CNN_REPO!r})]))",
                ],
                endpoint,
                tmp_path / "h1",
            ).stdout.splitlines()[-1]
        )
        evaluate = run_fresh(
            ["-m", "hf_nullspace.cli", "evaluate", VIT_REPO, CNN_REPO, "--suite", "attacks", "--data", data]
            + ["--max-samples", "8", "--batch-size", "8", "--output-dir", str(tmp_path / "report")]
            + ["--device", "cpu", "--push-results", "--token", TOKEN],
            endpoint,
            tmp_path / "h2",
        )
        read = run_fresh(["-c", textwrap.dedent(READ_BACK), VIT_REPO, CNN_REPO], endpoint, tmp_path / "h3")
        after = json.loads(
            run_fresh(
                [
                    "-c",
                    "import json; from huggingface_hub import HfApi; api = HfApi(); "
                    f"print(json.dumps([api.model_info(r).sha for r in ({VIT_REPO!r}, {CNN_REPO!r})]))",
                ],
                endpoint,
                tmp_path / "h4",
            ).stdout.splitlines()[-1]
        )
        log = log_path.read_text()
    assert after == before, "main must not move"
    assert f"{endpoint}/{VIT_REPO}/discussions/1" in evaluate.stdout
    assert f"{endpoint}/{CNN_REPO}/discussions/1" in evaluate.stdout
    assert "POST /api/models/owner-org/tiny-vit/commit/main?create_pr=1" in log
    assert TOKEN not in evaluate.stdout + evaluate.stderr + log

    report = json.loads((tmp_path / "report" / "robustness.json").read_text())
    by_path = {model["path"]: model for model in report["models"]}
    found = json.loads(read.stdout.splitlines()[-1])
    for repo in (VIT_REPO, CNN_REPO):
        pr = found[repo]
        assert pr["num_prs"] == 1 and pr["ref"] == "refs/pr/1" and pr["target"] == "refs/heads/main"
        assert pr["commits_on_pr"] == [pr["title"]] and "attacks suite" in pr["title"]
        assert pr["main_commits"][0] != pr["title"]  # the commit is on the pull request's branch only
        assert set(pr["pr_files"]) == set(pr["main_files"]) | {"README.md"}
        # every new result is the report's own value, marked with this tool as its source
        expected = robustness_eval_results(by_path[repo]["results"])
        assert len(expected) == 9  # clean + FGSM and PGD at 4 budgets
        new = [r for r in pr["eval_results"] if r["source_name"] == SOURCE_NAME]
        assert [(r["metric_name"], r["metric_args"], r["metric_value"]) for r in new] == [
            (r.metric_name, r.metric_args, r.metric_value) for r in expected
        ]
        assert "Protocol" in pr["description"] and "[0, 1] pixel space" in pr["description"]
        table = [line for line in pr["description"].splitlines() if line.startswith("| ")]
        assert len(table) == 1 + len(expected) and any(line.startswith("| pgd@1/255 ") for line in table)

    vit_pr, cnn_pr = found[VIT_REPO], found[CNN_REPO]
    # the owner's card: its previous result first and unchanged, its text and other metadata kept, main untouched
    assert vit_pr["main_card"] == OWNER_CARD
    assert vit_pr["eval_results"][0] == vars(PREVIOUS)
    assert len(vit_pr["eval_results"]) == 1 + 9 and vit_pr["model_name"] == "tiny-vit"
    assert vit_pr["pr_text"].strip() == OWNER_CARD.split("---\n", 2)[2].strip()
    owner_metadata = yaml.safe_load(OWNER_CARD.split("---")[1])
    pr_metadata = yaml.safe_load(vit_pr["pr_card"].split("---")[1])
    assert {k: v for k, v in pr_metadata.items() if k != "model-index"} == {
        k: v for k, v in owner_metadata.items() if k != "model-index"
    }
    assert "exact nullspace has dimension 144" in vit_pr["description"]  # 3*8*8 - 48
    # a CNN has no card yet: one is made to hold the results; no nullspace figures
    assert cnn_pr["main_card"] is None and cnn_pr["model_name"] == "tiny-resnet"
    assert len(cnn_pr["eval_results"]) == 9
    assert "No patch projection was found" in cnn_pr["description"]


def test_push_results_refuses_local_folders_before_evaluating(tmp_path):
    folder = _save(_vit(), tmp_path / "vit")
    with pytest.raises(SystemExit, match="local folders"):
        main(["evaluate", str(folder), "--suite", "attacks", "--data", str(tmp_path / "missing"), "--push-results"])


def _result(value, source=SOURCE_NAME, epsilon=0.01):
    return EvalResult(
        task_type="image-classification",
        dataset_type="d",
        dataset_name="D",
        metric_type="accuracy",
        metric_value=value,
        metric_args={"epsilon": epsilon},
        source_name=source,
        source_url=SOURCE_URL if source else None,
    )


def test_merge_replaces_only_this_tools_own_earlier_result():
    owners = _result(0.5, source=None)
    earlier = _result(0.6)
    other_budget = _result(0.4, epsilon=0.02)
    merged = merge_eval_results([owners, earlier, other_budget], [_result(0.7), _result(0.3, epsilon=0.04)])
    assert [(r.source_name, r.metric_args["epsilon"], r.metric_value) for r in merged] == [
        (None, 0.01, 0.5),
        (SOURCE_NAME, 0.01, 0.7),
        (SOURCE_NAME, 0.02, 0.4),
        (SOURCE_NAME, 0.04, 0.3),
    ]


def test_results_relative_to_another_model_are_not_offered():
    row = dict(dataset_type="d", dataset_name="D", dataset_split="test", params={}, benchmark="corruptions")
    rows = [dict(row, metric="accuracy", value=0.5), dict(row, metric="relative_mce", value=0.9)]
    assert [r.metric_type for r in robustness_eval_results(rows)] == ["accuracy"]


def test_corruptions_score_a_cnn(tmp_path):
    from transformers import ViTImageProcessor

    from hf_nullspace.data import spec_from_source
    from hf_nullspace.robustness import evaluate_robustness, get_suite

    model = _resnet().eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    data = spec_from_source(_images(tmp_path / "data"), split="test")
    suite = get_suite("corruptions", data=data, corruptions=["gaussian_noise", "contrast"], severities=[1, 5])
    report = evaluate_robustness({"cnn": model}, processor, suite=suite, progress=False, device="cpu")
    rows = {(r["benchmark"], r["metric"]): r["value"] for r in report.to_dict()["models"][0]["results"]}
    assert rows[("clean", "accuracy")] is not None
    assert 0 <= rows[("corruption/gaussian_noise", "accuracy")] <= 1
    assert rows[("corruptions", "accuracy")] == pytest.approx(
        sum(r["value"] for r in report.details["cnn"]) / 4, abs=1e-9
    )
