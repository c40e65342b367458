"""The publishing half of [`NullspaceTrainer`]: the run's results, the robust card and every push through `hub.py`."""

import logging
import os

from .card import write_model_card
from .examples import save_examples
from .hub import push_run, push_run_in_background
from .license import resolve_license
from .lora import is_peft_model, lora_summary
from .noise_bank import NOISE_NORM_FIGURE
from .results import DatasetRef, RunResults

logger = logging.getLogger(__name__)


class RunPublishingMixin:
    """
    The publishing half of [`NullspaceTrainer`]: the run's [`~results.RunResults`], the robust card and an exact
    upload set instead of the Trainer's generic ones. Every push goes through [`~hub.push_run`], which uploads only
    the allowed files (safetensors weights, configs, card, figures, results, example images, noise bank and history):
    `push_to_hub`, `save_model` with `push_to_hub=True`, and the push at every save under `hub_strategy`
    (`_push_from_checkpoint`). Never `training_args.bin`, the optimiser, scheduler, scaler or RNG states, or any
    other pickle. It reads the trainer's `noise_bank`, `noise_history`, `nullspace_args` and `adversarial`.
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

    @property
    def card_arguments(self) -> dict:
        """The card arguments given to `create_model_card` / `push_to_hub` so far, as `RunResults` fields."""
        if getattr(self, "_card_argument_values", None) is None:
            self._card_argument_values = {}
        return self._card_argument_values

    def _card_arguments(self, kwargs: dict) -> None:
        """
        Keeps `Trainer.create_model_card` / `push_to_hub`'s card arguments, for this card and the later ones:
        `license`, `model_name`, `finetuned_from` (the base model), `dataset_tags` / `dataset` (the training data's
        Hub id) and `tags`. Others (`language`, `tasks`, `dataset_args`) do not apply and are logged.
        """
        kept = self.card_arguments
        for key, value in kwargs.items():
            if value is None:
                continue
            if key in ("license", "model_name"):
                kept[key] = value
            elif key == "finetuned_from":
                kept["base_model"] = value
            elif key in ("dataset_tags", "dataset"):
                name = value if isinstance(value, str) else next(iter(value), None)
                if name and (key == "dataset_tags" or "dataset_tags" not in kwargs):
                    kept["dataset"] = DatasetRef(name=name, split="train")
            elif key == "tags":
                kept["tags"] = [value] if isinstance(value, str) else list(value)
            else:
                logger.info(f"{key}={value!r} does not apply to the robust card: ignored.")

    def _license(self, explicit: str | None) -> dict:
        """`license.resolve_license` for this run, looked up once (the base card may be on the Hub)."""
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

    def _eval_dataset_info(self, training_data: DatasetRef | None) -> DatasetRef | None:
        """The data of `eval_dataset`: the training data's name, the split it says it is."""
        dataset = self.eval_dataset
        if dataset is None or isinstance(dataset, dict):
            return None
        info = getattr(dataset, "info", None)
        name = (training_data.name if training_data else None) or getattr(info, "dataset_name", None)
        split = getattr(dataset, "split", None)
        if name is None and split is None:
            return None
        config = training_data.config if training_data else None
        return DatasetRef(name=name, config=config, split=str(split) if split else None)

    def _write_examples(self) -> list[str]:
        """A few eval images in `output_dir/examples/` for the card widget (written once; see `examples.py`)."""
        if getattr(self, "_examples", None) is None:
            model = self.accelerator.unwrap_model(self.model)
            self._examples = save_examples(
                self.args.output_dir,
                self.eval_dataset,
                id2label=getattr(getattr(model, "config", None), "id2label", None),
                processor=self.processing_class,
            )
        return list(self._examples)

    def build_results(self, **sections) -> RunResults:
        """
        The run's results: what the trainer knows (name, base model and its licence, arguments, noise history, the
        newest evaluation in the log history, the eval split, the noise figure and example images of the eval split,
        an adapter's summary), the card arguments given so far, and `sections`, which win. The main job calls it once,
        after the evaluation, and hands the result to `create_model_card` or `push_to_hub`.

        Args:
            **sections: [`~results.RunResults`] fields, e.g. `dataset`, `eval_dataset`, `eval`, `robustness`,
                `figures` (files of `output_dir`, after the noise figure), `license`, `no_base_comparison`.
        """
        given = {**self.card_arguments, **{key: value for key, value in sections.items() if value is not None}}
        folder = self.args.output_dir
        name = given.pop("model_name", None) or self._hub_repo_id()
        base_model = given.pop("base_model", None)
        if base_model is None and self._base_model_path():  # a relative local folder must not read as a Hub id
            base_model = self._base_model_path()
            local = os.path.exists(base_model) and not os.path.isabs(base_model)
            base_model = os.path.join(".", base_model) if local else base_model
        noise_figure = [NOISE_NORM_FIGURE] if os.path.isfile(os.path.join(folder, NOISE_NORM_FIGURE)) else []
        figures = noise_figure + list(given.pop("figures", []))
        model = self.accelerator.unwrap_model(self.model)
        if "lora" not in given and is_peft_model(model):  # an adapter run (lora.py): its settings, counts, card
            given["lora"] = lora_summary(model)
        eval_metrics = given.pop("eval", None) or self._last_eval_metrics()
        eval_dataset = given.pop("eval_dataset", None) or self._eval_dataset_info(
            DatasetRef.from_dict(given.get("dataset"))
        )
        adversarial = self.adversarial.args.to_dict() if self.adversarial is not None else {}
        return RunResults(
            model_name=name.split("/")[-1],
            base_model=base_model,
            **self._license(given.pop("license", None)),
            nullspace_args={**self.nullspace_args.to_dict(), **adversarial},
            training_args=self.args.to_dict(),
            noise_history=self.noise_history,
            figures=figures,
            examples=self._write_examples(),
            eval=eval_metrics,
            eval_dataset=eval_dataset if eval_metrics else None,
            **given,
        )

    def _stage_run(self, folder: str, results: RunResults) -> None:
        """Writes what a push uploads besides the model and the results to `folder`: noise bank and history, the
        figures and examples the results list."""
        import shutil

        if len(self.noise_bank):
            self.noise_bank.export(folder, self.nullspace_args.to_dict())
        if os.path.abspath(folder) != os.path.abspath(self.args.output_dir):
            for name in results.examples + results.figures:
                source = os.path.join(self.args.output_dir, name)
                if os.path.isfile(source) and not os.path.isfile(os.path.join(folder, name)):
                    os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
                    shutil.copy2(source, os.path.join(folder, name))

    def create_model_card(self, results: RunResults | None = None, **kwargs) -> None:
        """
        Writes `results.json`, a few example images of the eval split and the robust model card (method, arguments,
        evaluation and robustness tables, `model-index`, licence) to `output_dir`, instead of the Trainer's generic
        card.

        Args:
            results ([`~results.RunResults`], *optional*): the run's results; `build_results()` when not given.
            **kwargs: the Trainer's card arguments that apply: `license`, `model_name`, `finetuned_from`,
                `dataset_tags` / `dataset`, `tags` (kept for later cards).
        """
        if not self.is_world_process_zero():
            return
        self._card_arguments(kwargs)
        if results is None:
            results = self.build_results()
        elif kwargs.get("license"):
            results = results.with_license(kwargs["license"])
        results.save(self.args.output_dir)
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        write_model_card(self.args.output_dir, results, repo_id=repo_id, revision=self.args.hub_revision)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        results: RunResults | None = None,
        **kwargs,
    ):
        """
        Saves the model and uploads the run with `hub.push_run` (which writes `results.json` and the card for the
        repo): weights, image processor, card, figures, results, example images, the noise bank and its history;
        never checkpoints, `training_args.bin` or optimiser states. Waits for the pushes made during training first.

        Args:
            commit_message (`str`, *optional*, defaults to `"End of training"`): the commit message.
            blocking (`bool`, *optional*, defaults to `True`): wait for the upload; otherwise return a `Future`.
            token (`str`, *optional*): a write token; `args.hub_token` by default.
            revision (`str`, *optional*): the branch; `args.hub_revision` (else `main`) by default.
            private (`bool`, *optional*): whether a new repo is private; `args.hub_private_repo` by default.
            results ([`~results.RunResults`], *optional*): the run's results; `build_results()` when not given.
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
        if results is None:
            results = self.build_results()
        self._stage_run(self.args.output_dir, results)
        push = dict(
            token=token,
            private=bool(self.args.hub_private_repo if private is None else private),
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
            license=kwargs.get("license"),
            results=results,
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
            results = self.build_results()
            self._stage_run(staging, results)
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
            results=results,
        )
        if in_progress is None or in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            in_progress.jobs.append(job)
