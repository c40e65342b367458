"""`evaluate_robustness`: one call scores one model or several side by side on a suite, on one process or many.

Before any work, every source of the suite is resolved (local layout or Hub repo, `data.sources.resolve_sources`)
and every model's labels are checked against every source (label space, and class names when both sides have them,
`check_models`); one error names everything that is missing or wrong.

Every source is streamed once; each row is decoded once and every model is scored on it as it passes (top-1 hits
counted per evaluation), so memory stays flat whatever the size. An evaluation reads its own subset of a source's
rows (all of them, or `max_samples` of them: evenly spaced when the number of rows is known, else the first ones)
in batches of `batch_size` consecutive subset rows. Under `torch.distributed` (`accelerate launch`, `torchrun`),
each process scores the batches that start in its slice of the source when the source's size is known, and reads only
the rows of those batches (a stream of parquet shards: only the shards that hold them); else batch `k` goes to process
`k % world_size`, which reads the whole source and decodes its own rows. `RobustnessReport.source_reads` records the
rows each process read and decoded. The hits are summed over processes after each
source, so every process returns the same report, equal to the one-process report: attacks draw their random starts
per example (from the seed and the row's index) and on-the-fly corruptions per batch (from the seed and the batch's
number), never from the process.

On a CPU, a process scores its batches in `workers` lanes: threads that take the batches in turn, each with its own
copy of every model's modules (the parameters are shared), while the process's thread reads and decodes the rows,
each once as before. Lanes change the order in which batches are scored, never what an example gets, so the report
is the same whatever their number. By default a process has as many lanes as it has cores that PyTorch's own threads
leave idle (`accelerate launch` gives each process one thread), and PyTorch's threads are divided among the lanes.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import torch
from torch import nn
from tqdm.auto import tqdm

from ..classifier import frozen_eval_mode
from ..data import SkipCounter, check_label_space, transforms_from_image_processor
from ..data.labels import LabelCoverageError, LabelOrderError, align_labels, label_coverage, model_label_names
from ..data.registry import label_names_of, open_benchmark
from ..data.rows import SKIP_KINDS, read_row
from ..data.sources import resolve_sources
from ..data.streams import ReadTally, iter_row_range
from ..data.transforms import precropped_transform
from .attacks import ITERATIVE_ATTACKS, EarlyStopQueue, loss_gradient, run_attack
from .corruptions import corrupt
from .model import PixelSpaceClassifier
from .report import RobustnessReport
from .suites import Evaluation, Suite, get_suite

logger = logging.getLogger(__name__)

# attacks whose random start `evaluate_robustness` seeds per example
_SEEDED_ATTACKS = ("pgd", "pgd_l2", "patchfool")


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


def _config(model_or_path, token):
    if isinstance(model_or_path, str):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_or_path, token=token)
    return model_or_path.config


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


def init_process_group(device: str | torch.device | None = None) -> bool:
    """Joins the process group that `accelerate launch` or `torchrun` set up in the environment (`WORLD_SIZE` > 1),
    with NCCL on GPUs (this process's `LOCAL_RANK`) and gloo on CPUs. Returns whether a group was created here (the
    caller then destroys it at the end)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return False
    if torch.distributed.is_initialized():
        return False
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return True


def process_group() -> tuple[int, int]:
    """`(rank, world_size)` of the initialised `torch.distributed` group, or `(0, 1)`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluation_workers(device: str | torch.device, workers: int | None = None) -> int:
    """The lanes (threads) a process scores its share in: `workers` when given, else on a CPU the cores this process
    may use (its CPU affinity divided by `LOCAL_WORLD_SIZE`, the processes of this machine) that PyTorch's own
    `torch.get_num_threads()` threads leave idle, at least 1; on a GPU 1."""
    if workers is not None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"`workers` must be a positive integer (1: no lanes), got {workers!r}.")
        return workers
    if torch.device(device).type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // torch.get_num_threads())


def _lane_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules and config sharing its parameters and buffers: a lane can switch its attention
    implementation or patch its modules' forwards (attacks do both) without touching the other lanes."""
    memo = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def label_plan(spec, config, data_names=None, remap: bool = False) -> list[int] | None:
    """The logits a model with `config` scores `spec` on: the label-space check, refined by class names.

    Returns:
        `list[int]` or `None`: logit columns to keep, in the order of the data's labels, or `None` for all.

    Raises:
        `ValueError` (`LabelOrderError` for a permuted head, `LabelCoverageError` for a model whose named classes
        are not the data's, both unless `remap`): when the model cannot score the data as it is.
    """
    subset = check_label_space(spec, config.num_labels)
    names = label_names_of(spec, data_names)
    uncovered = label_coverage(model_label_names(config), names) if spec.label_space == "custom" else None
    if uncovered and not remap:
        raise LabelCoverageError(
            f"The model's labels do not cover the classes of {spec.display_name or spec.name}: {uncovered}. Its "
            "accuracy would count its own classes as the data's by position. Score a model trained on these classes; "
            "or, to score it anyway (by name where the names match, else by position), ask for it: "
            "`remap_labels=True` (evaluate_robustness), `--remap-labels` (hf-nullspace evaluate) or "
            "`--robustness_remap_labels` (main job)."
        )
    mapping = align_labels(model_label_names(config), names, remap=remap, what=spec.display_name or spec.name)
    return mapping if mapping is not None else subset


def check_models(sources: Mapping, configs: Mapping, resolved: Mapping | None = None, remap: bool = False) -> dict:
    """Checks every model's labels against every source before any work (see `label_plan`).

    Args:
        sources (`Mapping[str, BenchmarkSpec]`): `Suite.sources()`.
        configs (`Mapping[str, PretrainedConfig]`): Model name -> config.
        resolved (`Mapping[str, ResolvedSource]`, *optional*): From `resolve_sources`; gives the data's class names.
        remap (`bool`, *optional*): Score heads whose classes are a permutation of the data's by name.

    Returns:
        `dict`: `(model name, source) -> logit columns or None`.

    Raises:
        `ValueError`: one error listing every (model, source) pair that cannot be scored.
    """
    plans, problems = {}, []
    for name, config in configs.items():
        for source, spec in sources.items():
            found = (resolved or {}).get(source)
            try:
                plans[(name, source)] = label_plan(spec, config, getattr(found, "class_names", None), remap)
            except ValueError as error:
                problems.append((name, source, error))
    if problems:
        kinds = {type(error) for _, _, error in problems}
        kind = kinds.pop() if kinds in ({LabelOrderError}, {LabelCoverageError}) else ValueError
        lines = "\n".join(f"  - model {name!r} on {source!r}: {error}" for name, source, error in problems)
        raise kind(f"The models' labels do not fit the suite's data (checked before any work):\n{lines}")
    return plans


def check_attacks(suite: Suite, configs: Mapping) -> None:
    """Checks before any work that every model can take the suite's attacks (PatchFool needs a ViT-family model
    with at least `selection_layer + 1` layers; AutoAttack its package)."""
    problems = []
    for evaluation in suite.evaluations:
        if evaluation.attack == "patchfool":
            layer = evaluation.kwargs.get("selection_layer", 4)
            for name, config in configs.items():
                layers = getattr(config, "num_hidden_layers", None)
                if getattr(config, "patch_size", None) is None:
                    problems.append(f"model {name!r}: {evaluation.name} needs a ViT-family model (config.patch_size)")
                elif layer is not None and layers is not None and not -layers <= layer < layers:
                    problems.append(
                        f"model {name!r}: {evaluation.name} selects patches with the attention of layer {layer}, "
                        f"the model has {layers} layers"
                    )
        if evaluation.attack == "autoattack":
            import importlib.util

            if importlib.util.find_spec("pyautoattack") is None:
                problems.append(
                    f"{evaluation.name} needs the `pyautoattack` package: pip install hf-nullspace[attacks]"
                )
    if problems:
        raise ValueError("The suite's attacks cannot run (checked before any work):\n  - " + "\n  - ".join(problems))


def sample_cap(evaluation: Evaluation, caps: Mapping[str, int | None], default: int | None) -> int | None:
    """The number of rows `evaluation` reads: `caps` keyed by evaluation name, attack, source, source group
    (`imagenet-c`) or group (`clean`, `attack`, `corruption`, `shift`), first match wins, else `default`."""
    group = evaluation.source.split("/", 1)[0]
    for key in (evaluation.name, evaluation.attack, evaluation.source, group, evaluation.group):
        if key is not None and key in caps:
            return caps[key]
    return default


def check_sample_caps(suite: Suite, caps: Mapping) -> None:
    """Raises before any work for sample-cap keys that match no evaluation of `suite`, or caps that are not counts."""
    valid = set()
    for e in suite.evaluations:
        valid |= {e.name, e.source, e.source.split("/", 1)[0], e.group} | ({e.attack} if e.attack else set())
    unknown = sorted(set(caps) - valid)
    if unknown:
        shown = sorted(k for k in valid if not k.startswith(("imagenet-c/", "corruption/")))
        raise ValueError(f"Sample caps for {unknown} match nothing in suite {suite.name!r}; valid keys: {shown}.")
    bad = {k: v for k, v in caps.items() if v is not None and (not isinstance(v, int) or v < 1)}
    if bad:
        raise ValueError(f"Sample caps must be positive integers (or None for all rows): {bad}.")


class _Selection:
    """Which rows of a source an evaluation reads: all, `cap` evenly spaced ones over `total`, or the first `cap`."""

    def __init__(self, cap: int | None, total: int | None):
        self.cap, self.total = cap, total
        self.spaced = cap is not None and total is not None and cap < total

    def __contains__(self, index: int) -> bool:
        if self.cap is None:
            return True
        if self.spaced:
            return ((index + 1) * self.cap) // self.total > (index * self.cap) // self.total
        return index < self.cap

    def position(self, index: int) -> int:
        """The place of a selected row `index` among the selected rows."""
        return (index * self.cap) // self.total if self.spaced else index

    def index(self, position: int) -> int:
        """The row at `position` among the selected rows (the inverse of `position`)."""
        return -((-(position + 1) * self.total) // self.cap) - 1 if self.spaced else position

    @property
    def count(self) -> int | None:
        """Rows selected (`None` when the source's size is not known and not capped below it)."""
        if self.total is None:
            return None
        return self.total if self.cap is None else min(self.cap, self.total)

    @property
    def last(self) -> int | None:
        """Rows to read for this selection (`None`: to the end)."""
        if self.cap is None or self.spaced:
            return None if self.cap is None else self.total
        return self.cap

    def describe(self) -> dict:
        if self.cap is None:
            return {}
        if self.spaced:
            return {"max_samples": self.cap, "selection": f"evenly spaced over the {self.total} rows"}
        return {"max_samples": self.cap, "selection": "the first rows" + ("" if self.total else " (size unknown)")}


class _Share:
    """Which batches of each evaluation a process scores, and which rows of the source it reads for them.

    When the source's size `total` is known, process `p` of `world` scores the batches (of every evaluation) whose
    first row lies in its slice of the source, rows `[p * total // world, (p + 1) * total // world)`, so it reads one
    contiguous range: `rows` (`start`, `stop`), its slice and the rest of its last batches; a stream of parquet
    shards opens only the shards of that range (`data.streams.iter_row_range`). Otherwise batch `b` goes to process
    `b % world` and every process reads the whole source (decoding only its own rows). The batches are those of one
    process either way.
    """

    def __init__(self, selections: Mapping[str, _Selection], batch_size: int, rank: int, world: int):
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.selections = selections
        totals = {selection.total for selection in selections.values()}
        self.total = totals.pop() if len(totals) == 1 else None
        self.blocks = world > 1 and self.total is not None
        self.rows: tuple[int, int | None] = (0, None)
        if self.blocks:
            ranges = []
            for name, selection in selections.items():
                owned = [b for b in range(-(-selection.count // batch_size)) if self.owns(name, b)]
                if owned:
                    last_position = min((owned[-1] + 1) * batch_size, selection.count) - 1
                    ranges.append((selection.index(owned[0] * batch_size), selection.index(last_position) + 1))
            self.rows = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (0, 0)

    def owns(self, name: str, batch: int) -> bool:
        if self.blocks:
            first_row = self.selections[name].index(batch * self.batch_size)
            return first_row * self.world // self.total == self.rank
        return batch % self.world == self.rank


def _example_seed(seed: int, index: int) -> int:
    return (int(seed) * 0x100000000 + int(index) * 0x9E3779B1 + 0x5851F42D) % (2**63 - 1)


def _stats():
    return {"seen": 0, "kept": 0, "counts": Counter()}


def evaluate_robustness(
    models,
    image_processor=None,
    suite: str | Suite = "mnist",
    data=None,
    split: str | None = None,
    paths: Mapping[str, str] | None = None,
    max_samples: int | None = None,
    sample_caps: Mapping[str, int | None] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    token: str | bool | None = None,
    max_skip_fraction: float = 0.01,
    progress: bool = True,
    remap_labels: bool = False,
    bf16: bool = False,
    distributed: bool | None = None,
    resolved_sources: Mapping | None = None,
    workers: int | None = None,
) -> RobustnessReport:
    """
    Scores one model or several side by side on a robustness suite.

    Args:
        models (`nn.Module`, `str`, or a list or `{name: model}` dict of them):
            Image classifiers or Hub ids / local folders (loaded with `from_pretrained`).
        image_processor (`BaseImageProcessor`, *optional*):
            Processor of in-memory models (their size, geometry and normalisation); loaded with the model for paths.
            Clean data is prepared as this processor prepares images; benchmarks stored pre-cropped (ImageNet-C,
            DAmageNet, Stylized-ImageNet) are not resized and cropped a second time.
        suite (`str` or [`Suite`], *optional*, defaults to `"mnist"`):
            A suite name of `SUITES` or a `Suite`.
        data (`str` or `BenchmarkSpec`, *optional*), split (`str`, *optional*), paths (`Mapping`, *optional*):
            See [`get_suite`].
        max_samples (`int`, *optional*): rows per evaluation (a quick subset), unless `sample_caps` says otherwise.
        sample_caps (`Mapping[str, int | None]`, *optional*): rows per evaluation by evaluation name, attack, source,
            source group or group, e.g. `{"attack": 5000, "corruption": None}` (attacks on 5,000 images, corruptions
            on all). A capped evaluation reads its rows evenly spaced over the source when its size is known (the
            ImageNet validation set is sorted by class), else the first ones; the report states which.
        batch_size (`int`, *optional*, defaults to 64): images per batch (per process).
        seed (`int`, *optional*, defaults to 0): seeds random starts (per example) and corruptions (per batch).
        device (`str` or `torch.device`, *optional*): where to run (CUDA when available by default; under
            `torch.distributed`, this process's GPU).
        token (`str` or `bool`, *optional*): Hub token for gated benchmarks.
        max_skip_fraction (`float`, *optional*, defaults to 0.01): undecodable or mislabelled rows tolerated per
            source before failing; skipped rows are counted in the report.
        progress (`bool`, *optional*, defaults to `True`): tqdm bars (on the first process).
        remap_labels (`bool`, *optional*, defaults to `False`): score a model whose class names are a permutation
            of the data's by name, instead of refusing it.
        bf16 (`bool`, *optional*, defaults to `False`): run models under bfloat16 autocast (meant for GPUs).
        distributed (`bool`, *optional*): share the work among the processes of the initialised `torch.distributed`
            group (the default when there is one); every process must call this function with the same arguments.
        resolved_sources (`Mapping[str, ResolvedSource]`, *optional*): the outcome of `resolve_sources` for every
            source of `suite`, when the caller checked them already (the main job does, before training): used as it
            is, nothing is resolved again. By default every source is resolved here, before any work.
        workers (`int`, *optional*): lanes (threads) this process scores its share in, each with the process's torch
            threads divided among them, while this thread reads and decodes the rows; the report does not depend on
            it. By default, on a CPU, the cores of this process that torch's threads leave idle
            (`evaluation_workers`), on a GPU 1.

    Returns:
        [`RobustnessReport`]: `to_dict()`, `to_markdown()`, `save(output_dir)` (JSON, Markdown, PNG figures).

    Raises:
        `MissingBenchmarksError`: before any work, naming every source that cannot be read and how to provide it.
        `ValueError`: before any work, for models whose labels do not fit the data (`LabelOrderError` for a head
            whose classes are permuted, `LabelCoverageError` for a model whose named classes are not the data's, both
            without `remap_labels`).
    """
    suite = suite if isinstance(suite, Suite) else get_suite(suite, data=data, paths=paths, split=split)
    caps = dict(sample_caps or {})
    check_sample_caps(suite, caps)
    sources = suite.sources()
    if resolved_sources is None:
        resolved = resolve_sources(sources, token=token, suite_name=suite.name)
    else:
        unchecked = sorted(set(sources) - set(resolved_sources))
        if unchecked:
            raise ValueError(f"resolved_sources lacks sources of suite {suite.name!r}: {unchecked}.")
        resolved = dict(resolved_sources)
    named = _named_models(models)
    configs = {name: _config(model, token) for name, model in named.items()}
    plans = check_models(sources, configs, resolved, remap=remap_labels)
    check_attacks(suite, configs)

    rank, world = process_group() if distributed is not False else (0, 1)
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    if bf16 and device.type != "cuda":
        logger.warning("bf16 autocast on %s: supported, but meant for GPUs (slow on most CPUs).", device)
    lanes = evaluation_workers(device, workers)
    loaded = {name: _load(model, image_processor, token) for name, model in named.items()}
    for model, _, _ in loaded.values():
        model.to(device)
    by_source = defaultdict(list)
    for evaluation in suite.evaluations:
        by_source[evaluation.source].append(evaluation)

    # every model is scored in eval mode; each module's mode and `requires_grad` are restored afterwards
    with contextlib.ExitStack() as frozen:
        for model, _, _ in loaded.values():
            frozen.enter_context(frozen_eval_mode(model))
        lane_models = [loaded] + [
            {name: (_lane_copy(model), processor, path) for name, (model, processor, path) in loaded.items()}
            for _ in range(lanes - 1)
        ]
        report = RobustnessReport(suite=suite.name, models={name: path for name, (_, _, path) in loaded.items()})
        report.num_processes = world
        # per source, per process: {"process_index", "rows_read", "rows_decoded"} (see `_Share`)
        report.source_reads = {}
        for source, evaluations in by_source.items():
            spec = sources[source]
            found = resolved.get(source)
            opened = open_benchmark(spec, token=token, num_rows=getattr(found, "num_rows", None))
            if opened.label_names is not None and getattr(found, "class_names", None) is None:
                # the data's class names were not known before loading (a Hub source): check them now
                names = {source: SimpleNamespace(class_names=opened.label_names)}
                plans.update(check_models({source: spec}, {n: configs[n] for n in loaded}, names, remap_labels))
            selections = {e.name: _Selection(sample_cap(e, caps, max_samples), opened.num_rows) for e in evaluations}
            correct, stats, reads = _score_source(
                suite,
                source,
                spec,
                opened,
                evaluations,
                selections,
                lane_models,
                plans,
                batch_size,
                seed,
                device,
                bf16,
                rank,
                world,
                progress and rank == 0,
            )
            correct, stats = _merge(correct, stats, world)
            report.source_reads[source] = _gather_reads(reads, world)
            _check_skips(spec, stats, max_skip_fraction)
            for evaluation in evaluations:
                sampling = selections[evaluation.name].describe()
                for name in loaded:
                    report.add(
                        name, evaluation, spec, correct[(name, evaluation.name)], stats[evaluation.name], sampling
                    )
    report.finalize()
    return report


class _Lane:
    """The scoring state of one lane of a source: its copies of the models (as classifiers, per input pipeline), and
    its hits, clean verdicts, FGSM gradients and early-stop queues. A lane scores its batches in the order it gets
    them; every row of a batch of any evaluation is scored in the same lane (see `_Lanes.lane_of`)."""

    def __init__(self, loaded, spec, plans, source, evaluations, selections, batch_size, seed, device, bf16):
        # models sharing an input pipeline share one transform of each decoded image
        self.pipelines: dict[tuple, tuple] = {}
        for name, (model, processor, _) in loaded.items():
            _, transform = transforms_from_image_processor(processor, normalize=False)
            if spec.image_size is not None:
                transform = precropped_transform(transform)
            entry = self.pipelines.setdefault(transform.geometry, (transform, {}))
            entry[1][name] = PixelSpaceClassifier.from_image_processor(
                model, processor, label_subset=plans[(name, source)]
            ).to(device)
        self.seed, self.device, self.bf16 = seed, device, bf16
        self.correct: Counter = Counter()
        # the clean forward's verdict per (model, row), and one early-stop queue per (model, iterative attack)
        self.clean_hits: dict[tuple[str, int], bool] = {}
        self.gradients: dict = {}  # per model, FGSM's gradient on the last batch of rows it attacked
        queues = {
            (name, e.name): EarlyStopQueue(
                ITERATIVE_ATTACKS[e.attack](**e.kwargs, early_stop=True), classifier, batch_size=batch_size
            )
            for e in evaluations
            if e.attack in ITERATIVE_ATTACKS
            for _, classifiers in self.pipelines.values()
            for name, classifier in classifiers.items()
        }
        self.nesting = _Nesting(evaluations, selections, queues, self.correct)

    def score(self, evaluation: Evaluation, batch: int, rows: list) -> None:
        """Scores every model of the lane on one batch of `evaluation` (rows: tensors per geometry, label, index)."""
        labels = torch.tensor([label for _, label, _ in rows], dtype=torch.long, device=self.device)
        indices = [index for _, _, index in rows]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        for geometry, (_, classifiers) in self.pipelines.items():
            images = torch.stack([tensors[geometry] for tensors, _, _ in rows]).to(self.device)
            if evaluation.corruption is not None and evaluation.source == "data":
                images = corrupt(images, evaluation.corruption, evaluation.severity, generator=self.seed + batch)
            for name, classifier in classifiers.items():
                with autocast:
                    if evaluation.attack is None:
                        with torch.inference_mode():
                            hits = classifier(images).argmax(-1) == labels
                        if evaluation.corruption is None:  # the clean forward: attacks of this source reuse it
                            self.clean_hits.update(zip(((name, i) for i in indices), hits.tolist()))
                        self.correct[(name, evaluation.name)] += int(hits.sum())
                    else:
                        clean = _clean(classifier, name, images, labels, indices, self.clean_hits)
                        _attacked(
                            name,
                            classifier,
                            images,
                            labels,
                            evaluation,
                            self.seed,
                            indices,
                            clean,
                            self.nesting,
                            self.gradients,
                        )

    def drain(self) -> None:
        """Scores the examples still waiting or in the queues."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            self.nesting.run(drain=True)


class _Lanes:
    """Runs each lane's work in order on a thread of its own (in the calling thread when there is one lane), with at
    most `backlog` batches waiting per lane, so that decoded images do not pile up ahead of the scoring (the batches of
    the evaluations that read the same rows share their images: twice a source's evaluations keeps about two batches
    of rows per lane in memory). The batches of an evaluation that the process scores go to the lanes in turn (batch
    `b` to lane `(b // stride) % lanes`, `stride` being the number of processes when they take batches in turn, else
    1); the batches of equal-capped evaluations hold the same rows, so an attack row finds the clean verdicts and the
    nested rows' verdicts of its rows in its own lane."""

    def __init__(self, lanes: list[_Lane], stride: int, backlog: int):
        self.lanes, self.stride = lanes, stride
        self.pools = (
            [ThreadPoolExecutor(1, thread_name_prefix="robustness-lane") for _ in lanes] if len(lanes) > 1 else []
        )
        self.slots = [threading.Semaphore(backlog) for _ in lanes]
        self.errors: list[BaseException] = []

    def lane_of(self, batch: int) -> int:
        return (batch // self.stride) % len(self.lanes)

    def submit(self, lane: int, function, *args) -> None:
        if not self.pools:
            function(*args)
            return
        self._check()  # a lane's failure stops the reading at once
        self.slots[lane].acquire()

        def task():
            try:
                function(*args)
            except BaseException as error:
                self.errors.append(error)
                raise
            finally:
                self.slots[lane].release()

        self.pools[lane].submit(task)

    def _check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def finish(self) -> None:
        """Drains every lane and waits for all their work (re-raising the first failure)."""
        for lane, state in enumerate(self.lanes):
            self.submit(lane, state.drain)
        for pool in self.pools:
            pool.shutdown(wait=True)
        self._check()

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


def _score_source(
    suite,
    source,
    spec,
    opened,
    evaluations,
    selections,
    lane_models,
    plans,
    batch_size,
    seed,
    device,
    bf16,
    rank,
    world,
    progress,
):
    """Reads this process's share of a source, decoding each row once, and scores its batches in the lanes."""
    lanes = [
        _Lane(models, spec, plans, source, evaluations, selections, batch_size, seed, device, bf16)
        for models in lane_models
    ]
    transforms = {geometry: transform for geometry, (transform, _) in lanes[0].pipelines.items()}
    last = [selections[e.name].last for e in evaluations]
    read_limit = None if any(limit is None for limit in last) else max(last)
    share = _Share(selections, batch_size, rank, world)
    reads = ReadTally()
    reads.filtered = True  # rows passed on: those decoded
    start, stop = share.rows
    if not share.blocks and read_limit is not None:
        stop = read_limit
    buffers: dict[str, dict] = {e.name: {"batch": None, "rows": []} for e in evaluations}
    stats = {e.name: _stats() for e in evaluations}
    threads = torch.get_num_threads()
    if len(lanes) > 1:  # the torch threads that a lane starts take the number set here
        torch.set_num_threads(max(1, threads // len(lanes)))
    scoring = _Lanes(lanes, stride=1 if share.blocks else world, backlog=2 * len(evaluations))

    def flush(evaluation: Evaluation) -> None:
        buffer = buffers[evaluation.name]
        if buffer["rows"]:
            lane = scoring.lane_of(buffer["batch"])
            scoring.submit(lane, lanes[lane].score, evaluation, buffer["batch"], buffer["rows"])
        buffer["rows"] = []

    rows = iter_row_range(opened.rows, start, stop, reads)
    total = stop - start if stop is not None else None  # the rows this process reads
    rows = tqdm(rows, desc=f"{suite.name}: {source}", unit="row", total=total, disable=not progress)
    try:
        for index, row in rows:
            owned = []
            for evaluation in evaluations:
                selection = selections[evaluation.name]
                if index in selection:
                    batch = selection.position(index) // batch_size
                    if share.owns(evaluation.name, batch):
                        owned.append((evaluation, batch))
            if not owned:
                continue
            reads.passed += 1
            image, label, kind, converted = read_row(
                [row[column] for column in opened.image_columns],
                row[opened.label_column],
                spec.num_classes,
                opened.label_fn,
            )
            tensors = {}
            for evaluation, batch in owned:
                record = stats[evaluation.name]
                record["seen"] += 1
                if kind is not None:
                    record["counts"][kind] += 1
                    continue
                record["kept"] += 1
                if converted is not None:
                    record["counts"][f"converted_{converted}"] += 1
                buffer = buffers[evaluation.name]
                if buffer["batch"] != batch:
                    flush(evaluation)
                    buffer["batch"] = batch
                for geometry, transform in transforms.items():
                    if geometry not in tensors:
                        tensors[geometry] = transform(image)
                buffer["rows"].append((dict(tensors), label, index))
        for evaluation in evaluations:
            flush(evaluation)
        scoring.finish()
    finally:
        scoring.close()
        torch.set_num_threads(threads)
    correct = Counter()
    for lane in lanes:
        correct.update(lane.correct)
    return correct, stats, {"process_index": rank, **reads.as_dict()}


def _clean(classifier, name, images, labels, indices, clean_hits) -> torch.Tensor:
    """Which images the model classifies correctly, from the clean evaluation's forward where it ran on them."""
    missing = [position for position, i in enumerate(indices) if (name, i) not in clean_hits]
    if missing:
        with torch.inference_mode():
            hits = classifier(images[missing]).argmax(-1) == labels[missing]
        clean_hits.update(zip(((name, indices[p]) for p in missing), hits.tolist()))
    return torch.tensor([clean_hits[(name, i)] for i in indices], dtype=torch.bool, device=images.device)


def _attacked(name, classifier, images, labels, evaluation: Evaluation, seed, indices, clean, nesting, gradients):
    """Attacks the clean-correct images (the others are errors and are not attacked) and counts the robust ones in
    `nesting.correct`. Iterative attacks go through `nesting` to their `EarlyStopQueue` (hits counted as examples
    leave it, maybe in a later batch)."""
    images, labels = images[clean], labels[clean]
    indices = [i for i, keep in zip(indices, clean.tolist()) if keep]
    params = evaluation.kwargs
    if evaluation.attack in _SEEDED_ATTACKS:
        params["generator"] = [torch.Generator().manual_seed(_example_seed(seed, i)) for i in indices]
    if (name, evaluation.name) in nesting.queues:
        nesting.put(name, evaluation.name, images, labels, indices, params.get("generator"))
        nesting.run()
        return
    if not indices:
        return
    if evaluation.attack == "fgsm":  # the FGSM rows of a batch (one per budget) share the gradient
        rows = (indices, evaluation.corruption, evaluation.severity)
        cached, gradient = gradients.get(id(classifier), (None, None))
        if cached != rows:
            gradient = loss_gradient(classifier, images, labels)
            gradients[id(classifier)] = (rows, gradient)
        params["gradient"] = gradient
    attacked = run_attack(evaluation.attack, classifier, images, labels, **params)
    with torch.inference_mode():
        robust = classifier(attacked).argmax(-1) == labels
    nesting.record(name, evaluation.name, indices, robust.tolist())


def _ball(evaluation: Evaluation) -> tuple[str, float] | None:
    """`(norm, budget)` of an attack whose adversarials lie in a norm ball around the image (FGSM, PGD, PGD-L2)."""
    if evaluation.attack == "fgsm":
        return "linf", evaluation.kwargs["epsilon"]
    if evaluation.attack in ("pgd", "pgd_l2"):
        norm = "l2" if evaluation.attack == "pgd_l2" else evaluation.kwargs.get("norm", "linf")
        return norm, evaluation.kwargs["epsilon"]
    return None


class _Nesting:
    """
    Nested budgets, and the attack rows' hits. An adversarial found inside a ball of budget e' is inside every larger
    ball of the same norm: an example that an FGSM or PGD row of the source broke at budget e' counts as broken in
    every PGD row of that norm at a budget e >= e', without being attacked there. So a PGD row takes an example only
    once every row below it (same norm, budget <= e, the same selected rows) has its verdict: PGD rows run from the
    smallest budget up. FGSM rows attack every clean-correct example, as without nesting (their rows are unchanged).

    Args:
        evaluations (`list[Evaluation]`): the source's evaluations, in suite order.
        selections (`Mapping[str, _Selection]`): the rows each reads.
        queues (`Mapping[tuple[str, str], EarlyStopQueue]`): the `(model, evaluation)` early-stop queues.
        correct (`Counter`): robust hits per `(model, evaluation)`, counted here.
    """

    def __init__(self, evaluations, selections, queues, correct):
        balls = {e.name: _ball(e) for e in evaluations if _ball(e) is not None}
        order = {
            e.name: (balls[e.name][1], e.attack != "fgsm", i) for i, e in enumerate(evaluations) if e.name in balls
        }
        # rows whose verdicts an iterative row waits for: same norm, smaller budget (FGSM first at an equal one)
        self.below = {
            e.name: [
                d
                for d in balls
                if balls[d][0] == balls[e.name][0]
                and order[d] < order[e.name]
                and selections[d].cap == selections[e.name].cap
            ]
            for e in evaluations
            if e.name in balls and e.attack in ITERATIVE_ATTACKS
        }
        # queues in the order their examples are released: smallest budget first
        rank = {e.name: order.get(e.name, (float("inf"), True, i)) for i, e in enumerate(evaluations)}
        self.queues = dict(sorted(queues.items(), key=lambda item: rank[item[0][1]]))
        self.correct = correct
        self.known: dict[tuple[str, str], set] = defaultdict(set)  # (model, row) -> examples with a verdict
        self.broken: dict[tuple[str, str], set] = defaultdict(set)  # (model, row) -> examples it broke
        self.waiting: dict[tuple[str, str], list] = defaultdict(list)  # (model, row) -> queued entries

    def record(self, model: str, evaluation: str, keys, robust) -> None:
        """The verdicts of one row on `keys` (`robust`: booleans), counted as hits."""
        self.correct[(model, evaluation)] += sum(robust)
        self.known[(model, evaluation)].update(keys)
        self.broken[(model, evaluation)].update(key for key, flag in zip(keys, robust) if not flag)

    def put(self, model: str, evaluation: str, images, labels, keys, generator) -> None:
        if keys:
            self.waiting[(model, evaluation)].append((images, labels, list(keys), generator))

    def _release(self, model: str, evaluation: str, queue, drain: bool) -> None:
        """Moves the waiting examples whose rows below have all decided into the queue, or, when one of them broke
        the example, straight to broken (`drain`: every waiting example; the rows below have drained before)."""
        below = [(model, d) for d in self.below.get(evaluation, ())]
        entries, self.waiting[(model, evaluation)] = self.waiting[(model, evaluation)], []
        for images, labels, keys, generator in entries:
            ready = [drain or all(k in self.known[b] for b in below) for k in keys]
            broken = [r and any(k in self.broken[b] for b in below) for k, r in zip(keys, ready)]
            attack = [r and not b for r, b in zip(ready, broken)]
            self.record(model, evaluation, [k for k, b in zip(keys, broken) if b], [False] * sum(broken))
            for part, keep in ((attack, True), ([not r for r in ready], False)):
                if not any(part):
                    continue
                mask = torch.tensor(part, device=images.device)
                chosen = (
                    images[mask],
                    labels[mask],
                    [k for k, p in zip(keys, part) if p],
                    None if generator is None else [g for g, p in zip(generator, part) if p],
                )
                if keep:
                    queue.put(*chosen)
                else:
                    self.waiting[(model, evaluation)].append(chosen)

    def run(self, drain: bool = False) -> None:
        """Releases waiting examples and steps the queues, smallest budget first (`drain`: to the last example)."""
        for (model, evaluation), queue in self.queues.items():
            self._release(model, evaluation, queue, drain)
            for keys, robust, _ in queue.run(drain=drain):
                self.record(model, evaluation, keys, robust.tolist())


def _gather_reads(reads: dict, world: int) -> list[dict]:
    """Every process's reads of a source, in process order."""
    if world == 1:
        return [reads]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, reads)
    return gathered


def _merge(correct: Counter, stats: dict, world: int):
    """Sums the hits and row counts of every process (each row of each evaluation was scored on exactly one)."""
    if world == 1:
        return correct, stats
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, (dict(correct), stats))
    merged_correct: Counter = Counter()
    merged_stats = {name: _stats() for name in stats}
    for part_correct, part_stats in gathered:
        merged_correct.update(part_correct)
        for name, record in part_stats.items():
            merged_stats[name]["seen"] += record["seen"]
            merged_stats[name]["kept"] += record["kept"]
            merged_stats[name]["counts"].update(record["counts"])
    return merged_correct, merged_stats


def _check_skips(spec, stats: dict, max_skip_fraction: float) -> None:
    """The bad-row check of a source, on the merged counts (so every process raises together)."""
    counter = SkipCounter(max_skip_fraction=max_skip_fraction)
    widest = max(stats.values(), key=lambda record: record["seen"], default=None)
    if widest is None:
        return
    counter.seen = widest["seen"]
    counter.counts.update({kind: count for kind, count in widest["counts"].items() if kind in SKIP_KINDS})
    try:
        counter.check()
    except Exception as error:
        raise type(error)(f"{spec.name}: {error}") from error
