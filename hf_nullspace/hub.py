"""Pushing a run to the Hub: exactly the files the design allows (never a pickle), and no token in them.

A finished run folder holds the model (`model.safetensors`, `config.json`, `preprocessor_config.json`), the noise
bank (`*.safetensors`), the figures (`*.png`), `noise_history.json`, `results.json`, example images
(`examples/*.png`) and the card (`README.md`, rendered by `card.py`). Every push path goes through [`push_run`]:
`NullspaceTrainer.push_to_hub`, the Trainer's push at every save (`hub_strategy`), and `hf-nullspace push`.
"""

import json
import logging
import os
import struct
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.utils import filter_repo_objects

from .card import (
    CARD_FILE,
    HF_TOKEN_PATTERN,
    RESULTS_FILE,
    collect_results,
    resolve_license,
    save_examples,
    save_results,
    write_model_card,
)
from .lora import is_peft_model, lora_summary
from .noise_bank import NOISE_BANK_FILE, NOISE_HISTORY_FILE, NOISE_NORM_FIGURE

logger = logging.getLogger(__name__)

# Files of a run folder that are pushed: root-level only (plus the figures and examples listed in the results).
ALLOWED_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "adapter_config.json",  # a LoRA run (lora.py): adapter_config.json + adapter_model.safetensors
    CARD_FILE,
    "*.png",
    RESULTS_FILE,
    NOISE_HISTORY_FILE,
)
# Never pushed, even when matched above: checkpoints, optimiser and trainer states, pickles.
DENIED_PATTERNS = [
    "checkpoint-*",
    "*/checkpoint-*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    "optimizer.*",
    "scheduler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.*",
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml")
# What a checkpoint folder in the repo holds (hub_strategy "checkpoint" / "all_checkpoints"): the model and its noise
# bank, loadable with from_pretrained; never the optimiser, scheduler, RNG or trainer states (pickles or not).
CHECKPOINT_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "adapter_config.json",
    NOISE_BANK_FILE,
    NOISE_HISTORY_FILE,
)
# One background pusher, so pushes made during training reach the repo one after the other, in order.
_BACKGROUND = HfApi()


def _run_files(output_dir: Path) -> list[str]:
    """The run folder's files that are pushed, as POSIX paths relative to `output_dir`."""
    listed = []
    if (output_dir / RESULTS_FILE).is_file():
        results = json.loads((output_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        listed = [name for key in ("figures", "examples") for name in results.get(key) or []]
    candidates = sorted(path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file())
    root_files = [name for name in candidates if "/" not in name]
    listed_images = [name for name in candidates if name in listed and name.lower().endswith(IMAGE_SUFFIXES)]
    allowed = set(filter_repo_objects(root_files, allow_patterns=list(ALLOWED_PATTERNS))) | set(listed_images)
    return sorted(filter_repo_objects(sorted(allowed), ignore_patterns=DENIED_PATTERNS))


def _check_no_token(output_dir: Path, files: list[str], token: str | None) -> None:
    """Refuses to push when a text file or a safetensors header holds a Hugging Face token."""
    for name in files:
        path = output_dir / name
        if name.endswith(TEXT_SUFFIXES):
            text = path.read_text(encoding="utf-8", errors="replace")
        elif name.endswith(".safetensors"):
            with path.open("rb") as file:
                (header_size,) = struct.unpack("<Q", file.read(8))
                text = file.read(min(header_size, 100 << 20)).decode("utf-8", errors="replace")
        else:
            continue
        if HF_TOKEN_PATTERN.search(text) or (token and token in text):
            raise ValueError(f"{path} contains a Hugging Face token: redact it before pushing (see `redact`).")


def _allowed(names: list[str], patterns) -> list[str]:
    allowed = filter_repo_objects(names, allow_patterns=list(patterns))
    return sorted(filter_repo_objects(sorted(allowed), ignore_patterns=DENIED_PATTERNS))


def check_model_files(output_dir: Path) -> None:
    """Raises `FileNotFoundError` unless `output_dir` holds a model to push: safetensors weights and their config."""
    if not output_dir.is_dir():
        raise FileNotFoundError(
            f"Nothing to push: {output_dir} is not a folder. Pass the output folder of a run; no repo was created."
        )
    names = {path.name for path in output_dir.iterdir() if path.is_file()}
    weights = {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"} & names
    configs = {"config.json", "adapter_config.json"} & names
    if not weights or not configs:
        raise FileNotFoundError(
            f"Nothing to push: {output_dir} holds no model (it needs model.safetensors, or adapter_model.safetensors, "
            "with its config.json or adapter_config.json). Pass the output folder of a finished run; no repo was "
            "created."
        )


def push_run(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    checkpoint_in_repo: str | None = None,
) -> str:
    """
    Creates the repo (if needed) and uploads a run folder in one commit: model weights and configs, the model card
    (rewritten from `results.json` for this repo and branch when present), the figures, example images listed in the
    results, `results.json`, `noise_history.json` and the noise bank. Checkpoint folders, optimiser and trainer
    states, `training_args.bin` and every pickle (`*.bin`, `*.pt`, `*.pth`, `*.pkl`) stay local, and the push is
    refused if a pushed text file or safetensors header holds a token. Files unchanged on the Hub are not uploaded
    again; an unchanged run makes no commit.

    Args:
        output_dir (`str` or `Path`):
            The run folder.
        repo_id (`str`):
            The Hub repo, `namespace/name`.
        token (`str`, *optional*):
            A Hub token with write access. Defaults to the locally saved token.
        private (`bool`, *optional*, defaults to `False`):
            Whether a newly created repo is private.
        revision (`str`, *optional*):
            The branch to push to, created from `main` if missing. Defaults to `main`.
        commit_message (`str`, *optional*):
            The commit message.
        license (`str`, *optional*):
            The licence to put on the card, replacing the one in `results.json` (which is updated).
        checkpoint_in_repo (`str`, *optional*):
            Also upload the model files of the run (weights, configs, noise bank and history: `CHECKPOINT_PATTERNS`)
            under this folder of the repo, e.g. `last-checkpoint` (the Trainer's `hub_strategy="checkpoint"`).

    Returns:
        `str`: the URL of the commit (of the branch's head when nothing changed).
    """
    output_dir = Path(output_dir)
    check_model_files(output_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    results_path = output_dir / RESULTS_FILE
    if license and results_path.is_file():
        results = json.loads(results_path.read_text(encoding="utf-8"))
        results.update(license=license)
        for key in ("license_name", "license_link"):
            results.pop(key, None)
        save_results(output_dir, results)
    if results_path.is_file():
        write_model_card(output_dir, repo_id=repo_id, revision=revision)
    files = _run_files(output_dir)
    uploads = {name: name for name in files}
    if checkpoint_in_repo:
        folder = checkpoint_in_repo.strip("/")
        root_files = [name for name in files if "/" not in name]
        uploads.update({f"{folder}/{name}": name for name in _allowed(root_files, CHECKPOINT_PATTERNS)})
    _check_no_token(output_dir, files, token or get_token())
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    logger.info(f"Pushing {len(uploads)} files from {output_dir} to {repo_id}: {sorted(uploads)}")
    commit = api.create_commit(
        repo_id=repo_id,
        operations=[
            CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=str(output_dir / local))
            for in_repo, local in sorted(uploads.items())
        ],
        revision=revision,
        commit_message=commit_message or "Upload robust model (approximate nullspace augmented finetuning)",
    )
    return commit.commit_url


def push_run_in_background(output_dir: str | Path, repo_id: str, *, cleanup: bool = False, **kwargs) -> Future:
    """
    [`push_run`] on a background thread (one push at a time, in the order asked); `cleanup` removes `output_dir`
    (a staging folder) once pushed. A failed push is logged and raised by the future's `result()`.
    """
    import shutil

    def push() -> str:
        try:
            return push_run(output_dir, repo_id, **kwargs)
        except Exception:
            logger.exception(f"Pushing {output_dir} to {repo_id} failed")
            raise
        finally:
            if cleanup:
                shutil.rmtree(output_dir, ignore_errors=True)

    return _BACKGROUND.run_as_future(push)


class RunPublishingMixin:
    """
    The publishing half of [`NullspaceTrainer`]: the robust card and an exact upload set instead of the Trainer's
    generic ones. Every push goes through [`push_run`], which uploads only the allowed files (safetensors weights,
    configs, card, figures, results, example images, noise bank and history): `push_to_hub`, `save_model` with
    `push_to_hub=True`, and the push at every save under `hub_strategy` (`_push_from_checkpoint`). Never
    `training_args.bin`, the optimiser, scheduler, scaler or RNG states, or any other pickle. It reads the trainer's
    `run_info`, `noise_bank`, `nullspace_args` and `adversarial`.
    """

    def _hub_repo_id(self) -> str:
        return (
            getattr(self, "hub_model_id", None)
            or self.args.hub_model_id
            or os.path.basename(os.path.abspath(self.args.output_dir))
        )

    def _base_model_path(self) -> str | None:
        model = self.accelerator.unwrap_model(self.model)
        return getattr(getattr(model, "config", None), "_name_or_path", None) or None

    def _card_arguments(self, kwargs: dict) -> None:
        """
        Keeps `Trainer.create_model_card` / `push_to_hub`'s card arguments in `run_info`, for this card and the later
        ones: `license`, `model_name`, `finetuned_from` (the base model), `dataset_tags` / `dataset` (the training
        data's Hub id) and `tags`. Others (`language`, `tasks`, `dataset_args`) do not apply and are logged.
        """
        for key, value in kwargs.items():
            if value is None:
                continue
            if key in ("license", "model_name"):
                self.run_info[key] = value
            elif key == "finetuned_from":
                self.run_info["base_model"] = value
            elif key in ("dataset_tags", "dataset"):
                name = value if isinstance(value, str) else next(iter(value), None)
                if name and (key == "dataset_tags" or "dataset_tags" not in kwargs):
                    self.run_info["dataset"] = {"config": None, "split": "train", **self.run_info.get("dataset", {})}
                    self.run_info["dataset"]["name"] = name
            elif key == "tags":
                self.run_info["tags"] = [value] if isinstance(value, str) else list(value)
            else:
                logger.info(f"{key}={value!r} does not apply to the robust card: ignored.")

    def _license(self, explicit: str | None) -> dict:
        """`card.resolve_license` for this run, looked up once (the base card may be on the Hub)."""

        key = (explicit, self._base_model_path())
        cached = getattr(self, "_resolved_license", None)
        if cached is None or cached[0] != key:
            self._resolved_license = (key, resolve_license(explicit, key[1], token=self.args.hub_token))
        return dict(self._resolved_license[1])

    def _last_eval_metrics(self) -> dict | None:
        """The newest `evaluate()` metrics in the log history (`eval_loss`, `eval_accuracy`, ...), if any."""
        for entry in reversed(self.state.log_history):
            metrics = {key: value for key, value in entry.items() if key.startswith("eval_")}
            if metrics:
                return metrics
        return None

    def _eval_dataset_info(self, training_data: dict | None) -> dict | None:
        """`{"name", "config", "split"}` of `eval_dataset`: the training data's name, the split it says it is."""
        dataset = self.eval_dataset
        if dataset is None or isinstance(dataset, dict):
            return None
        info = getattr(dataset, "info", None)
        name = (training_data or {}).get("name") or getattr(info, "dataset_name", None)
        split = getattr(dataset, "split", None)
        if name is None and split is None:
            return None
        return {"name": name, "config": (training_data or {}).get("config"), "split": str(split) if split else None}

    def _write_examples(self) -> list[str]:
        """A few eval images in `output_dir/examples/` for the card widget (written once; see `card.save_examples`)."""

        if "examples" in self.run_info:
            return list(self.run_info["examples"])
        if getattr(self, "_examples", None) is None:
            model = self.accelerator.unwrap_model(self.model)
            self._examples = save_examples(
                self.args.output_dir,
                self.eval_dataset,
                id2label=getattr(getattr(model, "config", None), "id2label", None),
                processor=self.processing_class,
            )
        return list(self._examples)

    def collect_results(self, output_dir: str | None = None) -> dict:
        """
        The run's results (see `card.collect_results`): what the trainer knows (name, base model and its licence,
        arguments, noise history, the newest evaluation in the log history, the eval split, figures and example images
        in the folder) and what the caller added to `run_info` (data, metrics, robustness, licence), which wins.

        Args:
            output_dir (`str`, *optional*): the folder whose figures and examples are listed; `args.output_dir` by
                default.
        """

        folder = output_dir or self.args.output_dir
        info = dict(self.run_info)
        name = info.pop("model_name", None) or self._hub_repo_id()
        base_path = self._base_model_path()
        base_model = info.pop("base_model", None)
        if base_model is None and base_path:  # a relative local folder must not read as a Hub id
            local = os.path.exists(base_path) and not os.path.isabs(base_path)
            base_model = os.path.join(".", base_path) if local else base_path
        figures = [f for f in (NOISE_NORM_FIGURE, *info.pop("figures", [])) if os.path.isfile(os.path.join(folder, f))]
        examples = info.pop("examples", None)
        if examples is None and os.path.isdir(os.path.join(folder, "examples")):
            examples = sorted(
                f"examples/{f}"
                for f in os.listdir(os.path.join(folder, "examples"))
                if f.lower().endswith(IMAGE_SUFFIXES)
            )
        model = self.accelerator.unwrap_model(self.model)
        if "lora" not in info and is_peft_model(model):  # an adapter run (lora.py): its settings, counts, card
            info["lora"] = lora_summary(model)
        eval_metrics = info.pop("eval", None) or self._last_eval_metrics()
        eval_dataset = info.pop("eval_dataset", None) or self._eval_dataset_info(info.get("dataset"))
        return collect_results(
            model_name=name.split("/")[-1],
            base_model=base_model,
            **self._license(info.pop("license", None)),
            nullspace_args={
                **self.nullspace_args.to_dict(),
                **(self.adversarial.args.to_dict() if self.adversarial is not None else {}),
            },
            training_args=self.args.to_dict(),
            noise_history=self.noise_history,
            figures=figures,
            examples=examples or None,
            eval=eval_metrics,
            eval_dataset=eval_dataset if eval_metrics else None,
            **info,
        )

    def _stage_run(self, folder: str) -> None:
        """Writes what a push uploads besides the model to `folder`: noise bank and history, examples, results."""
        import shutil

        if len(self.noise_bank):
            self.noise_bank.export(folder, self.nullspace_args.to_dict())
        examples = self._write_examples()
        if os.path.abspath(folder) != os.path.abspath(self.args.output_dir):
            for name in examples + list(self.run_info.get("figures", [])):
                source = os.path.join(self.args.output_dir, name)
                if os.path.isfile(source):
                    os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
                    shutil.copy2(source, os.path.join(folder, name))
        save_results(folder, self.collect_results(folder))

    def create_model_card(self, **kwargs) -> None:
        """
        Writes `results.json`, a few example images of the eval split and the robust model card (method, arguments,
        evaluation and robustness tables, `model-index`, licence) to `output_dir`, instead of the Trainer's generic
        card. Takes the Trainer's card arguments that apply: `license`, `model_name`, `finetuned_from`,
        `dataset_tags` / `dataset`, `tags`.
        """
        if not self.is_world_process_zero():
            return

        self._card_arguments(kwargs)
        self._write_examples()
        results = self.collect_results()
        save_results(self.args.output_dir, results)
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        write_model_card(self.args.output_dir, results, repo_id=repo_id, revision=self.args.hub_revision)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """
        Saves the model and uploads the run with `hub.push_run` (which writes the card for the repo): weights, image
        processor, card, figures, results, example images, the noise bank and its history; never checkpoints,
        `training_args.bin` or optimiser states. Waits for the pushes made during training first.

        Args:
            commit_message (`str`, *optional*, defaults to `"End of training"`): the commit message.
            blocking (`bool`, *optional*, defaults to `True`): wait for the upload; otherwise return a `Future`.
            token (`str`, *optional*): a write token; `args.hub_token` by default.
            revision (`str`, *optional*): the branch; `args.hub_revision` (else `main`) by default.
            private (`bool`, *optional*): whether a new repo is private; `args.hub_private_repo` by default.
            **kwargs: card arguments (see [`~NullspaceTrainer.create_model_card`]), e.g. `license="apache-2.0"`.

        Returns:
            `str` (the commit URL), a `Future` of it when `blocking=False`, or `None` on processes other than the
            main one.
        """

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if getattr(self, "hub_model_id", None) is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._card_arguments(kwargs)
        self._finish_current_push()
        self._stage_run(self.args.output_dir)
        push = dict(
            token=token,
            private=bool(self.args.hub_private_repo if private is None else private),
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
        )
        if blocking:
            return push_run(self.args.output_dir, self._hub_repo_id(), **push)
        from transformers.utils.hub import PushInProgress

        job = push_run_in_background(self.args.output_dir, self._hub_repo_id(), **push)
        self.push_in_progress = PushInProgress([job])  # the next push waits for it
        return job

    # the model files a save under `hub_strategy` takes from its checkpoint (the rest of the push is written fresh)
    _CHECKPOINT_MODEL_FILES = (
        "config.json",
        "preprocessor_config.json",
        "model*.safetensors",
        "model.safetensors.index.json",
        "adapter_config.json",  # a LoRA run (lora.py) saves its adapter instead of the model
        "adapter_model.safetensors",
    )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """
        The push at every save (`hub_strategy` `every_save`, `checkpoint`, `all_checkpoints`), replacing the
        Trainer's, which uploads `training_args.bin` and, under the checkpoint strategies, the optimiser, scheduler
        and RNG states. Here a save pushes what `push_to_hub` does (the card and results as of this step included)
        and, under `checkpoint` / `all_checkpoints`, the model files again under `last-checkpoint/` or
        `checkpoint-N/`: weights, configs, noise bank and history, no training state (so the Hub's checkpoint is a
        model to load or finetune further, not a run to resume). Each push is staged in its own folder (hard links to
        the checkpoint's weights) and uploaded in the background, one after the other; like the Trainer, a save made
        while the previous push is still running is skipped unless `hub_always_push`, which waits for it instead.
        """
        import fnmatch
        import shutil
        import tempfile

        from transformers.trainer_utils import HubStrategy, SaveStrategy
        from transformers.utils.hub import PushInProgress

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        in_progress = getattr(self, "push_in_progress", None)
        if in_progress is not None and not in_progress.is_done():
            if not self.args.hub_always_push:
                return
            in_progress.wait_until_done()  # never restage while an upload may still read the previous files
        self.callback_handler.on_push_begin(self.args, self.state, self.control)

        staging = tempfile.mkdtemp(prefix=".hub-push-", dir=self.args.output_dir)
        try:
            for name in os.listdir(checkpoint_folder):
                source = os.path.join(checkpoint_folder, name)
                if os.path.isfile(source) and any(fnmatch.fnmatch(name, p) for p in self._CHECKPOINT_MODEL_FILES):
                    try:
                        os.link(source, os.path.join(staging, name))  # checkpoint files are never rewritten
                    except OSError:
                        shutil.copy2(source, os.path.join(staging, name))
            if self.processing_class is not None and not os.path.isfile(
                os.path.join(staging, "preprocessor_config.json")
            ):
                self.processing_class.save_pretrained(staging)
            self._stage_run(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

        if self.args.save_strategy == SaveStrategy.STEPS:
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch)}"
        checkpoint_in_repo = {
            HubStrategy.CHECKPOINT: "last-checkpoint",
            HubStrategy.ALL_CHECKPOINTS: os.path.basename(os.path.normpath(checkpoint_folder)),
        }.get(self.args.hub_strategy)
        job = push_run_in_background(
            staging,
            self._hub_repo_id(),
            cleanup=True,
            token=self.args.hub_token,
            private=bool(self.args.hub_private_repo),
            revision=self.args.hub_revision,
            commit_message=commit_message,
            checkpoint_in_repo=checkpoint_in_repo,
        )
        if in_progress is None or in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            in_progress.jobs.append(job)
