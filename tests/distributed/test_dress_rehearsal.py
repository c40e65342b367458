"""Dress rehearsal of the paper's protocol: the real main job under `accelerate launch` with two gloo processes, at
ViT-B/16 input shape, on local mirrors of every ImageNet benchmark the `imagenet` suite reads, through the card.

The mirrors (`imagenet_mirrors.paper_protocol`) hold a few 224x224 JPEGs per source in the layouts the registry
documents: ImageNet-1k and ImageNet-C as parquet (ImageNet-C as a downloaded copy of the Hub repo, 2 corruptions x
2 severities), ImageNet-A, -R and -Sketch as clip-benchmark webdataset tars, ImageNet-V2 as its numbered folders;
1000 or 200 classes. The model has ViT-B/16's input and head (224 px, 16 px patches, 196 tokens, 1000 classes) but a
narrow, shallow encoder (width 32, 5 layers, the fewest PatchFool's patch selection at layer 4 allows; ViT-B has 768
and 12), randomly initialised: with full ViT-B, CW's 100 and PatchFool's 250 steps take many minutes on two CPU
cores. Stylized-ImageNet and DAmageNet (local-only, optional in the
suite) are left out, so the card has a partial mCE and no paper Average.
"""

import json
import os
import re
import subprocess
import time

import pytest
import yaml
from imagenet_mirrors import IMAGENET_NAMES, paper_protocol
from testing_utils import ROOT, accelerate_launch, subprocess_env


def vit_b16_shape(folder) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=224,
        patch_size=16,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=5,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1000,
        id2label=dict(enumerate(IMAGENET_NAMES)),
        label2id={name: i for i, name in enumerate(IMAGENET_NAMES)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)  # 224x224, mean = std = 0.5, as google/vit-base-patch16-224
    return str(folder)


@pytest.mark.slow
def test_paper_protocol_dress_rehearsal(tmp_path):
    start = time.perf_counter()
    # 2 validation images: one per process for the attacks (CW 100 and PatchFool 250 steps dominate on CPU)
    mirrors = paper_protocol(tmp_path / "data", size=224, per_source=4, validation=2)
    model = vit_b16_shape(tmp_path / "vit-b16-shape")
    prepared = time.perf_counter() - start
    out = tmp_path / "out"
    paths = [f"{name}={path}" for name, path in mirrors.items() if name != "imagenet"]
    command = [
        *accelerate_launch(2),
        os.path.join(ROOT, "trainer_scripts", "run.py"),
        "--model_name_or_path",
        model,
        "--dataset_name",
        mirrors["imagenet"],
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--per_device_eval_batch_size",
        "2",
        "--noise_refresh_steps",
        "2",
        "--noise_max_updates",
        "5",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
        "--seed",
        "0",
        "--license",
        "apache-2.0",
        "--use_cpu",
        "True",
        "--robustness_suite",
        "imagenet",
        "--robustness_paths",
        *paths,
        "--robustness_corruptions",
        "gaussian_noise",
        "fog",
        "--robustness_severities",
        "1",
        "5",
    ]
    launched = time.perf_counter()
    completed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    wall = time.perf_counter() - launched
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    stages = json.loads(re.search(r"Stage seconds: (\{.*\})", completed.stdout).group(1))
    print(f"mirrors and model written: {prepared:.1f} s; launch to exit: {wall:.1f} s; rank 0 stages: {stages}")

    results = json.loads((out / "results.json").read_text())
    assert results["robustness"]["num_processes"] == 2, "the evaluation did not run on both processes"
    assert results["train"]["epoch"] > 0 and set(stages) >= {"train", "robustness evaluation", "card"}

    card = (out / "README.md").read_text()
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    # the card groups the metrics of one dataset in one entry: one key per (metric type, benchmark)
    entries = {}
    for entry in index:
        for metric in entry["metrics"]:
            entries[(metric["type"], metric["name"].split(" ")[0])] = {"dataset": entry["dataset"], "metric": metric}
    assert not any(metric == "mce" for metric, _ in entries), "a full mCE from 2 of 15 corruptions"
    assert not any(metric == "average" for metric, _ in entries), "the paper Average without all its columns"
    partial = entries[("partial_mce", "imagenet-c-partial")]
    assert partial["dataset"] == {
        "name": "ImageNet-C, 2 of 15 corruptions (2 corruptions x 1, 5 severities)",
        "type": "imagenet-c",
        "config": "gaussian_noise,fog",
        "split": "severity_1,severity_5",
    }
    assert partial["metric"]["args"]["missing"][:2] == ["shot_noise", "impulse_noise"]
    assert entries[("accuracy", "imagenet-c")]["dataset"] == partial["dataset"]  # the same aggregate
    fog = entries[("accuracy", "imagenet-c/fog")]
    assert fog["dataset"]["config"] == "fog" and fog["dataset"]["name"] == "ImageNet-C fog, mean over severities 1, 5"
    assert entries[("accuracy", "cw")]["metric"]["args"]["steps"] == 100
    assert entries[("accuracy", "patchfool")]["metric"]["args"]["steps"] == 250
    for shift in ("imagenet-a", "imagenet-r", "imagenet-v2", "imagenet-sketch"):
        assert entries[("accuracy", shift)]["dataset"]["type"] == shift
    assert ("accuracy", "clean") not in entries  # the clean accuracy appears once: the eval split's "Accuracy"
    assert entries[("accuracy", "Accuracy")]["dataset"]["split"] == "validation"
    rows = {r["benchmark"]: r for r in results["robustness"]["models"][1]["results"]}
    assert rows["clean"]["num_samples"] == 2 and rows["imagenet-a"]["num_samples"] == 4
