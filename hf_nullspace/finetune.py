"""The main job: finetune an image classifier with nullspace noise, evaluate its robustness, write a card, push.

Shaped like transformers' `examples/pytorch/image-classification/run_image_classification.py`. It runs unchanged
under `python`, `accelerate launch` and `torchrun`; `trainer_scripts/run.py` and `hf-nullspace finetune` call
`main`. With no model and no dataset named, the embedded offline default (`assets/default_run.json`) is the base
that the arguments override (`run_config.py`); the output folder is resumed, started over or refused as
`run_folder.py` says.
"""

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import transformers
from datasets import ClassLabel, Value
from transformers import (
    AutoImageProcessor,
    HfArgumentParser,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from .adversarial import AdversarialArguments
from .classifier import load_classifier
from .config import NullspaceArguments
from .data import (
    SkipCounter,
    find_columns,
    load_image_dataset,
    prepare_dataset,
    transforms_from_image_processor,
)
from .data.bundled import ASSETS
from .data.checks import cast_string_labels
from .data.heldout import HeldOutSplit, carve_held_out, held_out_spec, scored_rows
from .data.streams import ReadTally, keyed_stream, split_stream
from .lora import LoraArguments, apply_lora, lora_summary, merge_into_trainer
from .patch_inputs import collator_for
from .results import DatasetRef, RunResults
from .run_config import HELP_DESCRIPTION, HelpFormatter, parse_with_base
from .run_folder import resume_point, run_arguments, start_run_folder
from .trainer import NullspaceTrainer

logger = logging.getLogger(__name__)

ROW_KEY = "__row__"


class AugmentationEpoch(TrainerCallback):
    """Tells the train transform which epoch it augments, so each (epoch, row) draws its own crop."""

    def __init__(self, transform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.epoch = int((state.epoch or 0) + 1e-6)


@dataclass
class ModelArguments:
    """Which model and image processor to finetune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub model id or local folder of the model to finetune (the bundled ViT when neither a model nor "
            "a dataset is named)."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor id or folder, if not the model's own."}
    )
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models and datasets."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token for gated or private repos (defaults to the logged-in one)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace a classifier head whose size differs from the dataset's number of labels."},
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "Licence of the finetuned model on its card (a Hub licence id, e.g. apache-2.0). Defaults to the "
            "base model card's licence, else `other` with a warning."
        },
    )


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to read it."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local imagefolder, or local parquet/arrow files or folder (the bundled MNIST "
            "when neither a model nor a dataset is named)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Dataset revision."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (defaults to validation, else test, if present)."}
    )
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Without a validation or test split: the share of the training rows held out (seeded by --seed) "
            "for evaluation and the robustness suite; the rest is trained on. 0: no held-out rows."
        },
    )
    held_out: HeldOutSplit | None = field(default=None, init=False)  # set by build_trainer when rows were carved
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (requires --max_steps)."})
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (autodetected)."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (autodetected)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    train_crop_scale_min: float = field(
        default=0.08, metadata={"help": "Smallest crop area fraction of the random resized crop."}
    )
    train_flip: bool = field(default=True, metadata={"help": "Random horizontal flips (turn off for digits)."})
    max_skip_fraction: float = field(
        default=0.01, metadata={"help": "Fraction of bad rows (corrupt images, bad labels) tolerated before failing."}
    )
    robustness_suite: str | None = field(
        default=None,
        metadata={"help": "Robustness suite to score the base and finetuned models on at the end (none: skip)."},
    )
    robustness_max_samples: int | None = field(
        default=None, metadata={"help": "Images per robustness benchmark (a quick subset)."}
    )
    robustness_paths: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local copies of robustness benchmarks as BENCHMARK=PATH ... (e.g. imagenet-v2=/data/v2 "
            "imagenet-c=/data/imagenet-c); checked with every other source before training starts.",
            "nargs": "+",
        },
    )
    robustness_sample_caps: list[str] | None = field(
        default=None,
        metadata={
            "help": "Images per evaluation as KEY=N ... (KEY: evaluation name, attack, source or group: clean, "
            "attack, corruption, shift; N or `all`), e.g. attack=5000 corruption=all. Overrides "
            "--robustness_max_samples for the matching evaluations; stated on the card.",
            "nargs": "+",
        },
    )
    robustness_corruptions: list[str] | None = field(
        default=None,
        metadata={
            "help": "Only these ImageNet-C corruptions (default: the suite's own; a subset gives a partial mCE).",
            "nargs": "+",
        },
    )
    robustness_severities: list[int] | None = field(
        default=None,
        metadata={"help": "Only these corruption severities, 1-5 (a subset gives a partial mCE).", "nargs": "+"},
    )
    robustness_remap_labels: bool = field(
        default=False,
        metadata={"help": "Score a model whose class names are a permutation of the data's by name (else refused)."},
    )
    robustness_bf16: bool = field(
        default=False, metadata={"help": "Run the robustness evaluation under bfloat16 autocast (GPUs)."}
    )
    robustness_workers: int | None = field(
        default=None,
        metadata={
            "help": "Lanes (threads) each process scores its robustness batches in; the report does not depend on "
            "it. Default: on a CPU, the cores this process has that torch's threads leave idle; on a GPU 1."
        },
    )


@dataclass
class RunTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with `overwrite_output_dir`, which transformers 5 removed."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output folder that holds a run (its checkpoints and files are deleted), instead "
            "of resuming an unfinished run with the same arguments or refusing."
        },
    )


def parse_args(argv: list[str] | None = None, prog: str | None = None):
    """
    Parses the argument groups: `(model, data, nullspace, training, adversarial, lora)` arguments
    (`build_trainer(*parse_args(argv))` takes them all). A .json/.yaml file (first, or after `--config`) is the base
    that the other arguments override; with no model and no dataset named, the embedded default run is the base under
    it (`run_config.py`).
    """
    parser = HfArgumentParser(
        (
            ModelArguments,
            DataTrainingArguments,
            NullspaceArguments,
            RunTrainingArguments,
            AdversarialArguments,
            LoraArguments,
        ),
        prog=prog,
        description=HELP_DESCRIPTION,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # an abbreviated --model_name_or_path would hide that a model was named
    )
    return parse_with_base(parser, sys.argv[1:] if argv is None else argv)


def _label_names(dataset, label_column: str, model_config) -> list[str]:
    feature = dataset.features.get(label_column) if dataset.features else None
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    id2label = getattr(model_config, "id2label", None) or {}
    if id2label and not all(str(v).startswith("LABEL_") for v in id2label.values()):
        return [id2label[i] for i in sorted(id2label)]
    raise ValueError(
        f"The label column {label_column!r} is not a ClassLabel and the model has no label names: cast it with "
        "`dataset.cast_column(label_column, ClassLabel(names=[...]))` or use a model whose config has id2label."
    )


def _accuracy(eval_prediction) -> dict:
    predictions = np.argmax(eval_prediction.predictions, axis=-1)
    return {"accuracy": float((predictions == eval_prediction.label_ids).mean())}


def _with_row_keys(raw, streaming: bool):
    """`raw` with its row index as the column `ROW_KEY`."""
    if streaming:
        features = (raw.features or raw._resolve_features().features).copy()
        features[ROW_KEY] = Value("int64")
        return raw.map(lambda _, i: {ROW_KEY: i}, with_indices=True, features=features)
    return raw.add_column(ROW_KEY, list(range(len(raw))))


def build_trainer(model_args, data_args, nullspace_args, training_args, adversarial_args=None, lora_args=None):
    """
    Loads data, model and processor, checks them, and returns `(trainer, counters)` ready to train. With
    `lora_args.use_lora` the model is wrapped in LoRA adapters (`lora.py`); `adversarial_args` configure modes
    `madry` and `trades` (`adversarial.py`).
    """
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError(
            "A streamed dataset has no length: pass --max_steps (the number of optimiser steps to train for)."
        )
    training_args.remove_unused_columns = False  # the image column is read by our transform

    load = dict(
        config_name=data_args.dataset_config_name,
        streaming=data_args.streaming,
        revision=data_args.dataset_revision,
        token=model_args.token,
        cache_dir=model_args.cache_dir,
    )
    train_raw = load_image_dataset(data_args.dataset_name, split=data_args.train_split, **load)
    eval_raw = None
    for split in [data_args.eval_split] if data_args.eval_split else ["validation", "test"]:
        try:
            eval_raw = load_image_dataset(data_args.dataset_name, split=split, only_split_fallback=False, **load)
            data_args.eval_split = split  # the robustness suite reads the same split
            break
        except ValueError:
            if data_args.eval_split:
                raise
    if eval_raw is None and data_args.train_val_split:  # never score on training rows: hold some out
        train_raw, eval_raw, data_args.held_out = carve_held_out(train_raw, data_args, training_args.seed)
        data_args.eval_split = data_args.train_split
    if eval_raw is None and training_args.do_eval:
        raise ValueError(
            f"{data_args.dataset_name} has no validation or test split: pass --eval_split, or --train_val_split "
            "above 0 to hold out a share of the training rows."
        )

    columns = list(train_raw.features) if train_raw.features else list(train_raw.column_names or [])
    image_column, label_column = find_columns(columns, data_args.image_column_name, data_args.label_column_name)

    config = transformers.AutoConfig.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, token=model_args.token
    )
    train_raw, eval_raw = cast_string_labels(train_raw, eval_raw, label_column, config)
    labels = _label_names(train_raw, label_column, config)
    if config.num_labels != len(labels) and not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"The dataset has {len(labels)} labels but the model's classifier has {config.num_labels}: its label ids "
            "would be out of range. Pass --ignore_mismatched_sizes to train a new classifier head."
        )
    model = load_classifier(
        model_args.model_name_or_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        revision=model_args.model_revision,
        token=model_args.token,
        cache_dir=model_args.cache_dir,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    if lora_args is not None and lora_args.use_lora:
        model = apply_lora(model, lora_args, base_model_name=model_args.model_name_or_path)
    processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        revision=model_args.model_revision,
        token=model_args.token,
    )
    train_transform, eval_transform = transforms_from_image_processor(
        processor, flip=data_args.train_flip, seed=training_args.seed
    )
    train_transform.scale = (data_args.train_crop_scale_min, 1.0)

    if data_args.max_train_samples is not None:
        train_raw = train_raw.take(data_args.max_train_samples)
    if eval_raw is not None and data_args.max_eval_samples is not None:
        eval_raw = eval_raw.take(data_args.max_eval_samples)

    counters = {
        "train": SkipCounter(max_skip_fraction=data_args.max_skip_fraction),
        "eval": SkipCounter(max_skip_fraction=data_args.max_skip_fraction),
    }
    # each row's augmentation is keyed by (seed, epoch, row index), never by loading order: exact resumes; the
    # counters count each row once, however often it is read. A stream is keyed by the one-process index and split
    # per process before decoding (data/streams.py)
    prepare = dict(image_column=image_column, label_column=label_column, num_labels=len(labels), key_column=ROW_KEY)
    if data_args.streaming:
        tally = ReadTally()
        train_raw = keyed_stream(train_raw, ROW_KEY, tally)
        train_raw = split_stream(train_raw, ROW_KEY, training_args.process_index, training_args.world_size, tally)
    else:
        train_raw = _with_row_keys(train_raw, streaming=False)
    # a stream decodes one training batch at a time, so that its saved position falls between two batches
    batch = training_args.per_device_train_batch_size if data_args.streaming else 64
    train_dataset = prepare_dataset(train_raw, train_transform, counter=counters["train"], batch_size=batch, **prepare)
    eval_dataset = None
    if eval_raw is not None:
        eval_raw = _with_row_keys(eval_raw, data_args.streaming)
        eval_dataset = prepare_dataset(eval_raw, eval_transform, counter=counters["eval"], **prepare)
    trainer = NullspaceTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator_for(model, processor),
        processing_class=processor,
        compute_metrics=_accuracy,
        nullspace_args=nullspace_args,
        adversarial_args=adversarial_args,
        callbacks=[AugmentationEpoch(train_transform)],
    )
    return trainer, counters


def _num_rows(dataset) -> int | None:
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # streamed
        return None


def robustness_data(data_args):
    """The clean data a robustness suite reads: the bundled MNIST for the default, else the run's eval split."""
    from .data import spec_from_source
    from .data.bundled import BUNDLED_MNIST

    if data_args.robustness_suite == "mnist" and data_args.dataset_name == BUNDLED_MNIST:
        return None
    spec = spec_from_source(
        data_args.dataset_name,
        split=data_args.eval_split or "validation",
        config_name=data_args.dataset_config_name,
    )
    return held_out_spec(spec, data_args.held_out)


def robustness_suite(data_args):
    """The `Suite` the job scores at the end (`None` without `--robustness_suite`)."""
    if data_args.robustness_suite in (None, "none"):
        return None
    from .robustness import get_suite
    from .robustness.suites import parse_pairs

    paths = parse_pairs(data_args.robustness_paths, "--robustness_paths")
    return get_suite(
        data_args.robustness_suite,
        data=robustness_data(data_args),
        paths=paths,
        corruptions=data_args.robustness_corruptions,
        severities=data_args.robustness_severities,
    )


def resolve_robustness_sources(suite, token=None, names=None) -> dict:
    """Resolves the sources `names` of `suite` (all by default; local layout or Hub repo) before any work; raises one
    error naming each missing benchmark. The outcome is handed to `evaluate_robustness`, which resolves nothing
    again."""
    from .data.sources import resolve_sources

    sources = suite.sources()
    if names is not None:
        sources = {name: spec for name, spec in sources.items() if name in names}
    return resolve_sources(sources, token=token, suite_name=suite.name) if sources else {}


def no_base_comparison(suite, resolved, base_config, finetuned_config) -> str | None:
    """
    Why the base model is not scored beside the finetuned one, or `None` when it is comparable: its head was replaced
    (another number of labels), or its named classes do not cover the classes of the run's own data (by name, as
    `data.labels.label_coverage` decides; the data's names are the finetuned model's labels when the source does not
    say them before loading).
    """
    from .data.labels import label_coverage, model_label_names
    from .data.registry import label_names_of

    if base_config.num_labels != finetuned_config.num_labels:
        return (
            f"its classifier head has {base_config.num_labels} labels and was replaced by one for the data's "
            f"{finetuned_config.num_labels} classes, so its predictions are not the data's classes."
        )
    for source, spec in suite.sources().items():
        if spec.label_space != "custom":
            continue
        names = getattr(resolved.get(source), "class_names", None) or model_label_names(finetuned_config)
        reason = label_coverage(model_label_names(base_config), label_names_of(spec, names))
        if reason:
            return f"its labels are other classes than the data's: {reason}."
    return None


def _shown(path: str) -> str:
    """Hub ids as they are; the bundled assets by their place in the package, not this machine's path; a relative
    local path with `./`, so the card never takes it for a Hub id."""
    if path.startswith(str(ASSETS)):
        return "hf_nullspace/assets/" + os.path.relpath(path, str(ASSETS))
    return os.path.join(".", path) if os.path.exists(path) and not os.path.isabs(path) else path


class StageClock:
    """Wall time per stage of the job (`results.json` `stage_seconds`, and the log)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._last, 3)
        self._last = now
        logger.info("Stage %r took %.1f s", stage, self.seconds[stage])


def main(argv: list[str] | None = None, prog: str | None = None) -> RunResults | None:
    """Runs the whole job and returns its results (also in `output_dir/results.json`), on the main process."""
    from .robustness.suites import parse_pairs

    arguments = parse_args(argv, prog=prog)
    model_args, data_args, nullspace_args, training_args, adversarial_args, lora_args = arguments
    log_level = training_args.get_process_log_level()  # warning unless asked for (--log_level info)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if training_args.device.type == "cpu":  # pinned memory needs an accelerator: torch warns at every data loader
        training_args.dataloader_pin_memory = False
    set_seed(training_args.seed)
    training, run_args = training_args.do_train or not training_args.do_eval, run_arguments(*arguments)
    if training:  # resume, start over or refuse (run_folder.py), before anything is loaded
        checkpoint = resume_point(training_args, run_args)
    # with --push_to_hub the trainer pushes the run's allowed files at every save under --hub_strategy, and the
    # finished run (card with the robustness results) at the end
    push_to_hub = training_args.push_to_hub

    clock = StageClock()
    # fail fast: every benchmark of the robustness suite is found before any data or model is loaded
    suite = robustness_suite(data_args)
    caps = parse_pairs(data_args.robustness_sample_caps, "--robustness_sample_caps", as_int=True)
    resolved = {}
    if suite is not None:
        from .robustness.evaluate import check_sample_caps

        check_sample_caps(suite, caps)
        resolved = resolve_robustness_sources(suite, token=model_args.token, names=set(suite.sources()) - {"data"})
        clock.mark("robustness sources check")

    trainer, counters = build_trainer(
        model_args, data_args, nullspace_args, training_args, adversarial_args, lora_args
    )
    clock.mark("data, model and trainer")
    models = {"base": model_args.model_name_or_path, "finetuned": None}
    not_compared = None
    if model_args.license:  # on every card, the ones pushed at checkpoints (--hub_strategy) too
        trainer.card_arguments["license"] = model_args.license
    if suite is not None:
        # the eval split is known now: the clean data (the only source not resolved yet) and every model's labels are
        # checked before training; the outcome is handed to the evaluation, which checks no source again
        from .robustness.evaluate import check_attacks, check_models

        suite = robustness_suite(data_args)
        resolved.update(resolve_robustness_sources(suite, token=model_args.token, names={"data"}))
        base_config = transformers.AutoConfig.from_pretrained(
            model_args.model_name_or_path, revision=model_args.model_revision, token=model_args.token
        )
        not_compared = no_base_comparison(suite, resolved, base_config, trainer.model.config)
        configs = {"base": base_config, "finetuned": trainer.model.config}
        if not_compared is not None:
            logger.warning("The base model is not scored beside the finetuned one: %s", not_compared)
            del models["base"], configs["base"]
        check_models(suite.sources(), configs, resolved, remap=data_args.robustness_remap_labels)
        check_attacks(suite, configs)
        clock.mark("robustness data and label check")
    metrics = {}
    lora = None
    if training:
        start_run_folder(training_args, run_args, checkpoint)
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        if lora_args.merge_lora:  # the output folder (and the push) hold the merged plain model, not the adapter
            lora = lora_summary(trainer.accelerator.unwrap_model(trainer.model), merged=True)
            merge_into_trainer(trainer)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics["train"] = train_result.metrics
        # per process, see stream_training.py
        metrics["train_stream_reads"] = trainer.gather_stream_reads()
        clock.mark("train")
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
        trainer.log_metrics("eval", metrics["eval"])
        trainer.save_metrics("eval", metrics["eval"])
        clock.mark("eval")
    report = None
    if suite is not None:  # every process scores its share; all get the merged report
        from .robustness import evaluate_robustness

        models["finetuned"] = trainer.accelerator.unwrap_model(trainer.model)
        report = evaluate_robustness(
            models,
            image_processor=trainer.processing_class,
            suite=suite,
            max_samples=data_args.robustness_max_samples,
            sample_caps=caps,
            batch_size=training_args.per_device_eval_batch_size,
            seed=training_args.seed,
            device=training_args.device,
            token=model_args.token,
            remap_labels=data_args.robustness_remap_labels,
            bf16=data_args.robustness_bf16,
            workers=data_args.robustness_workers,
            progress=not training_args.disable_tqdm,
            resolved_sources=resolved,
        )
        clock.mark("robustness evaluation")
    if not trainer.is_world_process_zero():
        return None

    output_dir = training_args.output_dir
    for split, counter in counters.items():
        log = logger.warning if counter.skipped else logger.info
        log("Rows of the %s data read, skipped and converted: %s", split, counter.as_dict())
    robustness, figures = None, []
    if report is not None:
        figures = [os.path.basename(f) for f in report.save(output_dir)]
        robustness = report.to_dict()
        for entry in robustness["models"]:
            entry["path"] = _shown(entry["path"])
        print(report.to_markdown())
    clock.mark("report")
    dataset = DatasetRef(_shown(data_args.dataset_name), data_args.dataset_config_name, data_args.train_split)
    eval_dataset = None
    if trainer.eval_dataset is not None:
        eval_dataset = DatasetRef(_shown(data_args.dataset_name), data_args.dataset_config_name, data_args.eval_split)
    # the run's results, built once: results.json, the card and the push all take this object
    results = trainer.build_results(
        base_model=_shown(model_args.model_name_or_path),
        dataset=dataset,
        eval_dataset=eval_dataset,
        eval_rows=scored_rows(data_args.eval_split, _num_rows(trainer.eval_dataset), data_args.held_out)
        if trainer.eval_dataset is not None
        else None,
        license=model_args.license,
        train=metrics.get("train"),
        train_stream_reads=metrics.get("train_stream_reads"),
        eval=metrics.get("eval"),
        skipped_rows={split: counter.as_dict() for split, counter in counters.items()},
        lora=lora,
        robustness=robustness,
        figures=figures,
        no_base_comparison=f"the base model was not scored: {not_compared}" if not_compared else None,
        stage_seconds=dict(clock.seconds),  # the card and the push below are not in it
    )
    if push_to_hub:  # writes results.json and the card for the repo, then uploads
        logger.info("Pushed to %s", trainer.push_to_hub(results=results))
    else:
        trainer.create_model_card(results=results)
    clock.mark("card" if not push_to_hub else "card and push")
    print(f"Stage seconds: {json.dumps(clock.seconds)}")
    print(f"Finished: everything is in {os.path.abspath(output_dir)}")
    return results


if __name__ == "__main__":
    main()
