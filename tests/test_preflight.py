"""Fail fast: every source of a suite and every model's labels are checked before any work; labels align by name."""

import socket
import time

import pytest
from imagenet_mirrors import IMAGENET_NAMES, paper_protocol
from testing_utils import cli_args, make_tiny_vit, manual_accuracy, save_model, write_images
from transformers import BitImageProcessorPil, ViTImageProcessorPil

from hf_nullspace.data import get_benchmark, spec_from_source
from hf_nullspace.data.labels import LabelOrderError, align_labels
from hf_nullspace.data.sources import MissingBenchmarksError, resolve_sources
from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness, get_suite
from hf_nullspace.robustness.evaluate import check_models

PROCESSOR = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
CORRUPTIONS, SEVERITIES = ("gaussian_noise", "fog"), (1, 5)


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory):
    return paper_protocol(tmp_path_factory.mktemp("mirrors"), size=32, per_source=6)


def imagenet_suite(mirrors, **overrides):
    paths = {k: v for k, v in mirrors.items() if k != "imagenet"}
    paths.update(overrides)
    data = spec_from_source(mirrors["imagenet"], split="validation")
    return get_suite("imagenet", data=data, paths=paths, corruptions=CORRUPTIONS, severities=SEVERITIES)


def test_missing_benchmarks_fail_in_seconds_naming_each_and_how_to_provide_it(tmp_path):
    model = make_tiny_vit(num_labels=1000).eval()
    start = time.perf_counter()
    with pytest.raises(MissingBenchmarksError) as error:
        evaluate_robustness(model, PROCESSOR, suite="imagenet", progress=False)
    assert time.perf_counter() - start < 10
    message = str(error.value)
    for name in ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"):
        assert f"  - {name}: " in message and f"{name}=PATH" in message, name
    assert "imagenet-c, 75 sources (imagenet-c/gaussian_noise/1 ... imagenet-c/jpeg_compression/5)" in message
    assert "HF_HUB_OFFLINE=1" in message and "--robustness_paths NAME=PATH" in message
    assert "  - data: ImageNet-1k validation" in message and "imagenet=PATH" in message
    assert len(error.value.problems) == 80
    # wrong local paths are named too, with what is wrong with them
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingBenchmarksError) as error:
        evaluate_robustness(
            model,
            PROCESSOR,
            suite="shift",
            paths={"imagenet-v2": str(tmp_path / "nope"), "imagenet-sketch": str(tmp_path / "empty")},
        )
    assert "the local copy at" in str(error.value) and "the path does not exist" in str(error.value)
    assert "no parquet, arrow, tar or image files" in str(error.value)
    with pytest.raises(ValueError, match=r"Unknown benchmark name\(s\) \['imagenet_v2'\]"):
        get_suite("imagenet", paths={"imagenet_v2": str(tmp_path)})


def test_an_unreachable_hub_is_reported_at_once(monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(MissingBenchmarksError, match=f"no network connection to http://127.0.0.1:{port}"):
        resolve_sources({"imagenet-a": get_benchmark("imagenet-a")})
    assert time.perf_counter() - start < 6


def test_local_mirrors_resolve_and_every_models_labels_are_checked_before_any_work(mirrors, tmp_path):
    suite = imagenet_suite(mirrors)
    sources = suite.sources()
    assert len(sources) == 1 + 4 + 4  # clean data, 2 x 2 ImageNet-C, A, R, V2, Sketch
    resolved = resolve_sources(sources)
    assert resolved["data"].class_names == IMAGENET_NAMES and resolved["data"].num_rows == 6
    assert resolved["imagenet-c/fog/5"].builder == "parquet" and resolved["imagenet-a"].builder == "webdataset"
    assert resolved["imagenet-v2"].builder == "imagefolder"
    # a 10-label model cannot be scored on any of them: one error lists every pair
    with pytest.raises(ValueError) as error:
        check_models(sources, {"small": make_tiny_vit().config}, resolved)
    assert "model 'small' on 'imagenet-a'" in str(error.value) and "model 'small' on 'imagenet-c/fog/5'" in str(
        error.value
    )
    # a corruption the local copy lacks is named before any work
    with pytest.raises(MissingBenchmarksError, match="config 'snow' is not among the configs"):
        resolve_sources(get_suite("imagenet", paths=dict(mirrors), corruptions=["snow"]).sources())


def test_label_alignment_by_class_name():
    names = ["tench", "goldfish", "crane", "crane2", "shark"]
    # ILSVRC's "crane2" against an id2label that says "crane" twice: same order, logits as they are
    assert align_labels([*names[:3], "crane", "shark"] * 20, names * 20) is None
    assert align_labels(names, ["shark", "tench"]) == [4, 0]  # a subset, by name
    assert align_labels(names, ["n01", "n02"]) is None  # other naming scheme: positional
    with pytest.raises(LabelOrderError, match="in another order .*'tench' is label 0 of the data but logit 1"):
        align_labels(["goldfish", "tench", "crane", "crane2", "shark"], names)
    assert align_labels(["goldfish", "tench", "crane", "crane2", "shark"], names, remap=True) == [1, 0, 2, 3, 4]


def test_a_permuted_head_is_refused_unless_remapped_then_scored_by_name(tmp_path):
    from hf_nullspace.data import BenchmarkSpec

    data = write_images(tmp_path / "data", num=20, class_names=[f"class_{i}" for i in range(10)])
    model = make_tiny_vit().eval()
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]  # logit j of the model is class_{order[j]}
    model.config.id2label = {j: f"class_{c}" for j, c in enumerate(order)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    spec = BenchmarkSpec(name="local", path=data, split="test", label_space="custom", num_classes=10)
    suite = Suite("clean-only", [Evaluation("clean")], spec)
    with pytest.raises(LabelOrderError, match="remap_labels=True"):
        evaluate_robustness(model, PROCESSOR, suite=suite, progress=False)
    report = evaluate_robustness(model, PROCESSOR, suite=suite, progress=False, remap_labels=True)
    columns = [order.index(c) for c in range(10)]
    assert report.value("model_0", "clean") == pytest.approx(manual_accuracy(model, data, columns=columns))


def test_precropped_imagenet_c_is_scored_as_stored(mirrors):
    """ImageNet-C is stored at the model's size already: a resize-and-crop processor would zoom into the centre;
    the copy is scored without a second resize (same numbers as a squash processor, which leaves it unchanged)."""
    model = make_tiny_vit(num_labels=1000).eval()
    crop = BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    suite = Suite(
        "c",
        [Evaluation("imagenet-c/fog/5", source="imagenet-c/fog/5", group="corruption", corruption="fog", severity=5)],
        paths={"imagenet-c": mirrors["imagenet-c"]},
    )
    cropped = evaluate_robustness({"m": model}, crop, suite=suite, progress=False)
    squashed = evaluate_robustness({"m": model}, PROCESSOR, suite=suite, progress=False)
    assert cropped.to_dict()["models"][0]["details"] == squashed.to_dict()["models"][0]["details"]


def test_the_main_job_fails_before_loading_anything_naming_the_missing_benchmark(mirrors, tmp_path):
    from hf_nullspace.finetune import main

    model = save_model(tmp_path / "model", make_tiny_vit(num_labels=1000))
    out = tmp_path / "out"
    paths = [f"{k}={v}" for k, v in mirrors.items() if k not in ("imagenet", "imagenet-v2")]
    args = cli_args(
        mirrors["imagenet"],
        model,
        str(out),
        "--robustness_paths",
        *paths,
        "--robustness_corruptions",
        *CORRUPTIONS,
        "--robustness_severities",
        "1",
        "5",
    )
    args[args.index("--robustness_suite") + 1] = "imagenet"
    start = time.perf_counter()
    with pytest.raises(MissingBenchmarksError) as error:
        main(args)
    assert time.perf_counter() - start < 10
    assert list(error.value.problems) == ["imagenet-v2"] and "imagenet-v2=PATH" in str(error.value)
    assert not out.exists(), "nothing was trained or written"
    # a head whose classes are permuted is refused before training too, unless remapped
    permuted = make_tiny_vit(num_labels=1000, num_hidden_layers=5)  # PatchFool selects at layer 4
    permuted.config.id2label = {i: IMAGENET_NAMES[(i + 1) % 1000] for i in range(1000)}
    permuted.save_pretrained(tmp_path / "permuted")
    PROCESSOR.save_pretrained(tmp_path / "permuted")
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "permuted")
    args[args.index("--robustness_paths") + 1 : args.index("--robustness_paths") + 1] = [
        f"imagenet-v2={mirrors['imagenet-v2']}"
    ]
    with pytest.raises(LabelOrderError, match="model 'base' on 'data'"):
        main(args)
    assert not (out / "checkpoint-2").exists()
