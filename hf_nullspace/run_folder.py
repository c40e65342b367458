"""The output folder of the main job, as transformers' examples treat it: resume, start over, or refuse.

The arguments that define a run (model, data, method and optimisation) are written to `run_arguments.json` when it
starts. A later run into the same folder resumes from the newest complete checkpoint when the run there is unfinished
and its arguments are the same; it is refused, naming what differs, when they are not, and when the run there is
finished (nothing is ever "resumed" into a new card). `--overwrite_output_dir` starts over.
"""

import json
import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .noise_bank import last_complete_checkpoint

RUN_ARGUMENTS_FILE = "run_arguments.json"
# written at the end of training (`Trainer.save_state`) and of the job (`results.json`): the run there is finished
FINISHED_MARKERS = ("trainer_state.json", "results.json")
MODEL_FIELDS = ("model_name_or_path", "model_revision", "image_processor_name", "ignore_mismatched_sizes")
DATA_FIELDS = (
    "dataset_name",
    "dataset_config_name",
    "dataset_revision",
    "train_split",
    "streaming",
    "image_column_name",
    "label_column_name",
    "max_train_samples",
    "train_crop_scale_min",
    "train_flip",
)
# the TrainingArguments that shape the optimisation; logging, saving, evaluation and pushing may change on a resume
TRAINING_FIELDS = (
    "seed",
    "data_seed",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "optim",
    "optim_args",
    "label_smoothing_factor",
    "bf16",
    "fp16",
)


class OutputFolderError(ValueError):
    """The output folder holds a run that this one must not resume or overwrite."""


def _local(path):
    return os.path.abspath(path) if isinstance(path, str) and os.path.exists(path) else path


def run_arguments(model_args, data_args, nullspace_args, training_args, adversarial_args=None, lora_args=None) -> dict:
    """The arguments that define a run, as JSON values: a resume must have the same ones."""
    groups = {
        "model": {name: getattr(model_args, name) for name in MODEL_FIELDS},
        "data": {name: getattr(data_args, name) for name in DATA_FIELDS},
        "nullspace": nullspace_args.to_dict(),
        "training": {name: getattr(training_args, name, None) for name in TRAINING_FIELDS},
        "adversarial": vars(adversarial_args) if adversarial_args is not None else {},
        "lora": vars(lora_args) if lora_args is not None else {},
    }
    groups["model"]["model_name_or_path"] = _local(groups["model"]["model_name_or_path"])
    groups["data"]["dataset_name"] = _local(groups["data"]["dataset_name"])
    return json.loads(json.dumps(groups, default=str))


def differences(stored: dict, current: dict) -> list[str]:
    """`--name: stored -> current` for each argument that differs."""
    changed = []
    for group in sorted(set(stored) | set(current)):
        before, after = stored.get(group, {}), current.get(group, {})
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                changed.append(f"--{name}: {before.get(name)!r} there, {after.get(name)!r} now")
    return changed


def holds_run(output_dir: str) -> bool:
    """Whether `output_dir` holds (part of) a run: its arguments, a checkpoint or a finished run's files."""
    if not os.path.isdir(output_dir):
        return False
    names = os.listdir(output_dir)
    return any(
        name == RUN_ARGUMENTS_FILE or name in FINISHED_MARKERS or name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
        for name in names
    )


def checkpoint_to_resume(output_dir: str, arguments: dict, overwrite: bool = False) -> str | None:
    """
    Decides what a run with `arguments` does in `output_dir`, reading only: `None` to start (an empty or new
    folder, `overwrite`, or a run that stopped before its first checkpoint), the checkpoint to resume from, or
    `OutputFolderError`.
    """
    if overwrite or not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    path = os.path.join(output_dir, RUN_ARGUMENTS_FILE)
    stored = json.loads(open(path, encoding="utf-8").read()) if os.path.isfile(path) else None
    finished = any(os.path.isfile(os.path.join(output_dir, name)) for name in FINISHED_MARKERS)
    checkpoint = last_complete_checkpoint(output_dir)
    fix = "pass --overwrite_output_dir to start over, or choose another --output_dir"
    if stored is None:
        if not holds_run(output_dir):
            raise OutputFolderError(f"The output folder {output_dir} already exists and is not empty: {fix}.")
        raise OutputFolderError(
            f"The output folder {output_dir} holds a run whose arguments were not recorded ({RUN_ARGUMENTS_FILE} is "
            f"missing), so it cannot be resumed safely: {fix} (or --resume_from_checkpoint PATH to resume it as is)."
        )
    if checkpoint is None and not finished:  # stopped before its first checkpoint: nothing to resume or lose
        return None
    changed = differences(stored, arguments)
    if changed:
        state = "a finished" if finished else "an unfinished"
        raise OutputFolderError(
            f"The output folder {output_dir} holds {state} run with other arguments: "
            + "; ".join(changed)
            + f". Resuming it would describe one run with another's card: {fix}"
            + ("." if finished else " (or --resume_from_checkpoint PATH to continue it with these arguments anyway).")
        )
    if finished:
        raise OutputFolderError(
            f"The output folder {output_dir} holds a finished run with these arguments; nothing to resume. Its model, "
            f"results and card are there. To run it again, {fix}."
        )
    return checkpoint


def start_run(output_dir: str, arguments: dict, overwrite: bool = False) -> None:
    """Writes `run_arguments.json`, after clearing the folder when `overwrite` and it holds a run."""
    if overwrite and holds_run(output_dir):
        for name in os.listdir(output_dir):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, RUN_ARGUMENTS_FILE), "w", encoding="utf-8") as f:
        json.dump(arguments, f, indent=2)


def resume_point(training_args, arguments: dict) -> str | None:
    """
    The checkpoint a run with `arguments` starts from, decided before anything is loaded or written (every process
    reads the folder): `--resume_from_checkpoint` when given, else the newest complete checkpoint of an unfinished
    run with the same arguments in `--output_dir`, else `None`.

    Raises:
        `OutputFolderError`: see [`checkpoint_to_resume`].
    """
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    overwrite = getattr(training_args, "overwrite_output_dir", False)
    return checkpoint_to_resume(training_args.output_dir, arguments, overwrite=overwrite)


def start_run_folder(training_args, arguments: dict, checkpoint: str | None) -> None:
    """Right before training, on the main process: says what resumes, clears the folder with
    `--overwrite_output_dir`, and records the run's `arguments`; the other processes wait for it."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if state.is_main_process:
        if checkpoint is not None:
            print(f"Resuming the run in {training_args.output_dir} from {checkpoint}.")
        overwrite = getattr(training_args, "overwrite_output_dir", False) and not training_args.resume_from_checkpoint
        start_run(training_args.output_dir, arguments, overwrite=overwrite)
    state.wait_for_everyone()
