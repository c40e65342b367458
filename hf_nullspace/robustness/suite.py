"""Robustness suites and `evaluate_robustness`: one call scores one model or several side by side.

A suite is a list of evaluations, each reading a source (the suite's clean data, or a benchmark of the registry),
optionally attacking or corrupting each batch in [0, 1] pixel space, and counting top-1 hits. Every source is
streamed once and every model is scored on each batch as it passes, so memory stays flat whatever the size.
"""

import dataclasses
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import (
    IMAGENET_C_CORRUPTIONS,
    BenchmarkSpec,
    SkipCounter,
    check_label_space,
    get_benchmark,
    iter_benchmark,
    transforms_from_image_processor,
)
from .attacks import run_attack
from .corruptions import corrupt
from .model import PixelSpaceClassifier
from .report import RobustnessReport

BUNDLED_MNIST = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "mnist")
SEVERITIES = (1, 2, 3, 4, 5)
# corruptions whose definition fits small grey digits (weather textures and glass blur are photograph effects)
DIGIT_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "zoom_blur",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


@dataclass(frozen=True)
class Evaluation:
    """
    One row of a robustness report.

    Args:
        name (`str`): row name, e.g. `"clean"`, `"fgsm@0.0039"`, `"corruption/fog/3"`, `"imagenet-a"`.
        source (`str`, *optional*, defaults to `"data"`): `"data"` (the suite's clean data) or a registry benchmark.
        group (`str`, *optional*, defaults to `"clean"`): `"clean"`, `"attack"`, `"corruption"` or `"shift"`.
        attack (`str`, *optional*): attack name of `robustness.attacks.ATTACKS`, with `params`.
        corruption (`str`, *optional*): corruption name, with `severity`, applied on the fly (or the ImageNet-C copy
            named by `source`).
    """

    name: str
    source: str = "data"
    group: str = "clean"
    attack: str | None = None
    params: tuple = ()
    corruption: str | None = None
    severity: int | None = None

    @property
    def kwargs(self) -> dict:
        return dict(self.params)


@dataclass
class Suite:
    """A named list of evaluations and the clean data (`data`) that evaluations with `source="data"` read."""

    name: str
    evaluations: list[Evaluation]
    data: BenchmarkSpec | None = None
    description: str = ""
    paths: dict = field(default_factory=dict)

    def sources(self) -> dict[str, BenchmarkSpec]:
        """The data each source name stands for (checked before any work)."""
        specs = {}
        for evaluation in self.evaluations:
            if evaluation.source in specs:
                continue
            if evaluation.source == "data":
                if self.data is None:
                    raise ValueError(f"Suite {self.name!r} evaluates on clean data: pass `data` (a dataset).")
                specs["data"] = self.data
            else:
                specs[evaluation.source] = get_benchmark(evaluation.source, path=self.paths.get(evaluation.source))
        return specs


def _attacks(budgets: Mapping[str, Sequence[float]], pgd_steps: int = 10) -> list[Evaluation]:
    rows = []
    for attack, epsilons in budgets.items():
        for epsilon in epsilons:
            params = {"epsilon": epsilon}
            if attack.startswith("pgd"):
                params.update(step_size=epsilon / 4, steps=pgd_steps)
            rows.append(
                Evaluation(f"{attack}@{epsilon:g}", group="attack", attack=attack, params=tuple(params.items()))
            )
    return rows


def _corruptions(names: Sequence[str], severities: Sequence[int] = SEVERITIES) -> list[Evaluation]:
    return [
        Evaluation(f"corruption/{c}/{s}", group="corruption", corruption=c, severity=s)
        for c in names
        for s in severities
    ]


def mnist_data(path: str = BUNDLED_MNIST) -> BenchmarkSpec:
    """The bundled real MNIST test split (1,000 digits) as a benchmark."""
    return BenchmarkSpec(
        name="mnist",
        path=path,
        split="test",
        label_space="custom",
        num_classes=10,
        display_name="MNIST (bundled 1,000-image test split)",
    )


def _as_spec(data) -> BenchmarkSpec | None:
    if data is None or isinstance(data, BenchmarkSpec):
        return data
    return BenchmarkSpec(name=os.path.basename(str(data).rstrip("/")) or str(data), path=str(data), label_space="custom",
                         num_classes=None, display_name=str(data))  # fmt: skip


def get_suite(name: str, data=None, paths: Mapping[str, str] | None = None, split: str | None = None) -> Suite:
    """
    Builds a registered suite.

    Suites:
        - `mnist`: the embedded default's data: clean, FGSM (0.02, 0.05, 0.1), PGD-10 (0.02, 0.05), and 10
          corruptions that fit digits x 5 severities, on the fly.
        - `imagenet`: the paper's protocol: clean ImageNet val, FGSM (1/255), CW-L2, PatchFool on it; ImageNet-C
          (15 x 5 from the Hub), -A, -R, -V2, -Sketch; Stylized-ImageNet and DAmageNet when `paths` has them.
        - `attacks`: clean, FGSM and PGD at 1, 2, 4 and 8 /255 on `data`.
        - `corruptions`: clean and the 15 ImageNet-C corruptions x 5 severities applied on the fly to `data`.
        - `shift`: ImageNet-A, -R, -V2, -Sketch.

    Args:
        name (`str`): the suite.
        data (`str` or `BenchmarkSpec`, *optional*): the clean data (a local path, or a spec); the suite's own if any.
        paths (`Mapping[str, str]`, *optional*): local paths replacing registry sources, e.g.
            `{"imagenet-a": "/data/imagenet-a", "damagenet": "/data/damagenet"}`.
        split (`str`, *optional*): split of `data` to read.
    """
    paths = dict(paths or {})
    data = _as_spec(data)
    if data is not None and split is not None:
        data = dataclasses.replace(data, split=split)
    if name == "mnist":
        evaluations = [Evaluation("clean")]
        evaluations += _attacks({"fgsm": (0.02, 0.05, 0.1), "pgd": (0.02, 0.05)})
        evaluations += _corruptions(DIGIT_CORRUPTIONS)
        return Suite(name, evaluations, data or mnist_data(), "bundled MNIST: attacks and corruptions", paths)
    if name == "attacks":
        budgets = tuple(k / 255 for k in (1, 2, 4, 8))
        return Suite(name, [Evaluation("clean"), *_attacks({"fgsm": budgets, "pgd": budgets})], data, "attacks", paths)
    if name == "corruptions":
        return Suite(name, [Evaluation("clean"), *_corruptions(IMAGENET_C_CORRUPTIONS)], data, "corruptions", paths)
    shift = [
        Evaluation(b, source=b, group="shift") for b in ("imagenet-a", "imagenet-r", "imagenet-v2", "imagenet-sketch")
    ]
    if name == "shift":
        return Suite(name, shift, data, "distribution shift", paths)
    if name == "imagenet":
        evaluations = [
            Evaluation("clean"),
            *_attacks({"fgsm": (1 / 255,)}),
            Evaluation("cw", group="attack", attack="cw"),
            Evaluation("patchfool", group="attack", attack="patchfool"),
        ]
        evaluations += [
            Evaluation(
                f"imagenet-c/{c}/{s}", source=f"imagenet-c/{c}/{s}", group="corruption", corruption=c, severity=s
            )
            for c in IMAGENET_C_CORRUPTIONS
            for s in SEVERITIES
        ]
        evaluations += shift
        evaluations += [
            Evaluation(b, source=b, group="shift") for b in ("stylized-imagenet", "damagenet") if b in paths
        ]
        return Suite(name, evaluations, data or get_benchmark("imagenet", path=paths.get("imagenet")), "paper", paths)
    raise ValueError(f"Unknown suite {name!r}. Valid suites: {', '.join(SUITES)}.")


SUITES = ("mnist", "imagenet", "attacks", "corruptions", "shift")


def _load(model_or_path, processor, token):
    from transformers import AutoImageProcessor

    from ..classifier import load_classifier

    if isinstance(model_or_path, str):
        model = load_classifier(model_or_path, token=token)
        processor = processor or AutoImageProcessor.from_pretrained(model_or_path, token=token)
        return model, processor, model_or_path
    if processor is None:
        raise ValueError("Pass `image_processor` with a model object (its size and normalisation are needed).")
    return model_or_path, processor, getattr(model_or_path, "name_or_path", "") or type(model_or_path).__name__


def _named_models(models) -> dict:
    if isinstance(models, Mapping):
        return dict(models)
    if isinstance(models, (str, nn.Module)):
        models = [models]
    names = {}
    for i, model in enumerate(models):
        name = model if isinstance(model, str) else f"model_{i}"
        names[name if name not in names else f"{name}#{i}"] = model
    return names


def evaluate_robustness(
    models,
    image_processor=None,
    suite: str | Suite = "mnist",
    data=None,
    split: str | None = None,
    paths: Mapping[str, str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    token: str | bool | None = None,
    max_skip_fraction: float = 0.01,
    progress: bool = True,
) -> RobustnessReport:
    """
    Scores one model or several side by side on a robustness suite.

    Args:
        models (`nn.Module`, `str`, or a list or `{name: model}` dict of them):
            Image classifiers or Hub ids / local folders (loaded with `from_pretrained`).
        image_processor (`BaseImageProcessor`, *optional*):
            Processor of in-memory models (their size and normalisation); loaded with the model for paths.
        suite (`str` or [`Suite`], *optional*, defaults to `"mnist"`):
            A suite name of `SUITES` or a `Suite`.
        data (`str` or `BenchmarkSpec`, *optional*), split (`str`, *optional*), paths (`Mapping`, *optional*):
            See [`get_suite`].
        max_samples (`int`, *optional*): images per source (a quick subset).
        batch_size (`int`, *optional*, defaults to 64): images per batch.
        seed (`int`, *optional*, defaults to 0): seeds random starts and corruptions (deterministic reports).
        device (`str` or `torch.device`, *optional*): where to run (CUDA when available by default).
        token (`str` or `bool`, *optional*): Hub token for gated benchmarks.
        max_skip_fraction (`float`, *optional*, defaults to 0.01): undecodable or mislabelled rows tolerated per
            source before failing; skipped rows are counted in the report.
        progress (`bool`, *optional*, defaults to `True`): tqdm bars.

    Returns:
        [`RobustnessReport`]: `to_dict()`, `to_markdown()`, `save(output_dir)` (JSON, Markdown, PNG figures).
    """
    suite = suite if isinstance(suite, Suite) else get_suite(suite, data=data, paths=paths, split=split)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = {name: _load(model, image_processor, token) for name, model in _named_models(models).items()}
    sources = suite.sources()
    # every check before any work: label spaces of every model against every source
    subsets = {
        (name, source): check_label_space(spec, model.config.num_labels)
        for name, (model, _, _) in loaded.items()
        for source, spec in sources.items()
    }
    by_source = defaultdict(list)
    for evaluation in suite.evaluations:
        by_source[evaluation.source].append(evaluation)

    report = RobustnessReport(suite=suite.name, models={name: path for name, (_, _, path) in loaded.items()})
    for model, _, _ in loaded.values():
        model.to(device).eval()
    for source, evaluations in by_source.items():
        spec = sources[source]
        # models sharing an input pipeline share one pass over the data
        pipelines = defaultdict(list)
        for name, (_, processor, _) in loaded.items():
            _, transform = transforms_from_image_processor(processor, normalize=False)
            pipelines[(transform.size, transform.crop_pct, transform.resample)].append(name)
        for names in pipelines.values():
            _, transform = transforms_from_image_processor(loaded[names[0]][1], normalize=False)
            classifiers = {
                name: PixelSpaceClassifier.from_image_processor(
                    loaded[name][0], loaded[name][1], label_subset=subsets[(name, source)]
                ).to(device)
                for name in names
            }
            counter = SkipCounter(max_skip_fraction=max_skip_fraction)
            correct = defaultdict(int)
            seen = 0
            batches = iter_benchmark(
                spec, transform, batch_size, max_samples=max_samples, counter=counter, token=token
            )
            bar = tqdm(batches, desc=f"{suite.name}: {source}", unit="batch", disable=not progress)
            for index, batch in enumerate(bar):
                images, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
                seen += labels.numel()
                for evaluation in evaluations:
                    inputs = _corrupted(images, evaluation, seed + index)
                    for name, classifier in classifiers.items():
                        attacked = _attacked(classifier, inputs, labels, evaluation, seed + index)
                        with torch.no_grad():
                            correct[(name, evaluation.name)] += int((classifier(attacked).argmax(-1) == labels).sum())
            counter.check()
            for evaluation in evaluations:
                for name in names:
                    report.add(name, evaluation, spec, correct[(name, evaluation.name)], seen, counter.as_dict())
    report.finalize()
    return report


def _corrupted(images: torch.Tensor, evaluation: Evaluation, seed: int) -> torch.Tensor:
    if evaluation.corruption is None or evaluation.source != "data":
        return images
    return corrupt(images, evaluation.corruption, evaluation.severity, generator=seed)


def _attacked(classifier, images: torch.Tensor, labels: torch.Tensor, evaluation: Evaluation, seed: int):
    if evaluation.attack is None:
        return images
    params = evaluation.kwargs
    if evaluation.attack.startswith("pgd"):
        params.setdefault("generator", torch.Generator(device=images.device).manual_seed(seed))
    return run_attack(evaluation.attack, classifier, images, labels, **params)
