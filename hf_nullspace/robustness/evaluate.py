"""`evaluate_robustness`: one call scores one model or several side by side on a suite.

Every source is streamed once and every model is scored on each batch as it passes (top-1 hits counted per
evaluation), so memory stays flat whatever the size.
"""

from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import SkipCounter, check_label_space, iter_benchmark, transforms_from_image_processor
from .attacks import run_attack
from .corruptions import corrupt
from .model import PixelSpaceClassifier
from .report import RobustnessReport
from .suites import Evaluation, Suite, get_suite


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
