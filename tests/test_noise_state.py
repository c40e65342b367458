"""Noise state on disk and in special set-ups: numeric order, flat checkpoint size, exact resume of norm_matched with
warm start, DataParallel refused; and the pixel-space wrapper's normalisation follows `do_normalize`."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from testing_utils import TemplateDataset, make_tiny_vit, reading_tiny_vit
from transformers import TrainerCallback, TrainingArguments, ViTImageProcessor

from hf_nullspace.config import NullspaceArguments
from hf_nullspace.noise_bank import NOISE_BANK_FILE, NoiseBank, last_complete_checkpoint
from hf_nullspace.robustness.model import PixelSpaceClassifier
from hf_nullspace.trainer import NullspaceTrainer


def make_trainer(folder, nullspace_args, **overrides):
    arguments = dict(
        output_dir=str(folder),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        max_steps=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    arguments.update(overrides)
    return NullspaceTrainer(
        model=reading_tiny_vit(),
        args=TrainingArguments(**arguments),
        train_dataset=TemplateDataset(),
        nullspace_args=nullspace_args,
    )


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated preemption")


def weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


# ---- the pixel-space wrapper ----------------------------------------------------------------------------------------


def test_the_wrapper_does_not_normalise_when_the_processor_does_not():
    model = make_tiny_vit().eval()
    images = torch.rand(2, 3, 32, 32)
    processor = ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3, do_normalize=False)
    plain = PixelSpaceClassifier.from_image_processor(model, processor)
    torch.testing.assert_close(plain.normalize(images), images)  # as the training batches were prepared
    with torch.no_grad():
        torch.testing.assert_close(plain(images), model(pixel_values=images).logits)
    processor.do_normalize = True
    normalising = PixelSpaceClassifier.from_image_processor(model, processor)
    torch.testing.assert_close(normalising.normalize(images), (images - 0.5) / 0.25)


# ---- the noise bank on disk --------------------------------------------------------------------------------------


def test_a_bank_of_more_than_ten_thousand_noises_reloads_in_order(tmp_path):
    count = 10_001  # noise_10000 sorts before noise_1001 as a string
    noises = [torch.full((1, 1, 2), float(i)) for i in range(count)]
    bank = NoiseBank(noises, [{"step": i} for i in range(count)], save_all=True)
    bank.save(str(tmp_path))
    loaded = NoiseBank.load(str(tmp_path), save_all=True)
    assert [int(noise[0, 0, 0]) for noise in loaded.noises] == list(range(count))


def test_keys_that_sort_wrongly_as_strings_load_in_numeric_order(tmp_path):
    count = 12
    save_file({f"noise_{i}": torch.full((1, 1, 2), float(i)) for i in range(count)}, tmp_path / NOISE_BANK_FILE)
    NoiseBank([torch.zeros(1, 1, 2)], [{"step": 0}]).save(str(tmp_path / "state"))
    os.replace(tmp_path / "state" / "nullspace_state.json", tmp_path / "nullspace_state.json")
    import json

    state = json.loads((tmp_path / "nullspace_state.json").read_text())
    state["history"] = [{"step": i} for i in range(count)]
    (tmp_path / "nullspace_state.json").write_text(json.dumps(state))
    loaded = NoiseBank.load(str(tmp_path))
    assert [int(noise[0, 0, 0]) for noise in loaded.noises] == list(range(count))


def test_checkpoints_do_not_grow_with_the_number_of_refreshes(tmp_path):
    trainer = make_trainer(tmp_path / "run", NullspaceArguments(noise_refresh_steps=1, noise_max_updates=5))
    trainer.train()
    assert len(trainer.noise_history) == 8
    sizes = [os.path.getsize(tmp_path / "run" / f"checkpoint-{step}" / NOISE_BANK_FILE) for step in (1, 8)]
    assert sizes[1] <= sizes[0] * 1.05  # one noise, whatever the number of refreshes
    assert len(load_file(tmp_path / "run" / "checkpoint-8" / NOISE_BANK_FILE)) == 1
    full = make_trainer(
        tmp_path / "all",
        NullspaceArguments(noise_refresh_steps=1, noise_max_updates=5, noise_bank_save_all=True),
        max_steps=3,
    )
    full.train()
    assert len(load_file(tmp_path / "all" / "checkpoint-3" / NOISE_BANK_FILE)) == 3
    assert len(load_file(tmp_path / "all" / NOISE_BANK_FILE)) == 3  # the finished run's bank, on request


@pytest.mark.parametrize("mode", ["nullspace", "norm_matched"])
def test_warm_started_runs_resume_exactly(tmp_path, mode):
    nullspace = NullspaceArguments(
        nullspace_mode=mode, noise_warm_start=True, noise_refresh_steps=2, noise_max_updates=10
    )
    full = make_trainer(tmp_path / "full", nullspace, max_steps=6, save_steps=3)
    full.train()
    assert not any(record["no_boundary"] for record in full.noise_history)
    assert [record["warm_start"] for record in full.noise_history] == [False, True, True]

    interrupted = make_trainer(tmp_path / "cut", nullspace, max_steps=6, save_steps=3)
    interrupted.add_callback(StopAt(4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert last_complete_checkpoint(str(tmp_path / "cut")).endswith("checkpoint-3")
    resumed = make_trainer(tmp_path / "cut", nullspace, max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert [record["step"] for record in resumed.noise_history] == [0, 2, 4]
    torch.testing.assert_close(resumed.noise, full.noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights(resumed), weights(full), rtol=0, atol=1e-6)


def test_data_parallel_is_refused_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    with pytest.raises(ValueError, match="DataParallel.*accelerate launch --multi_gpu.*torchrun"):
        make_trainer(tmp_path, NullspaceArguments())
    make_trainer(tmp_path, NullspaceArguments(nullspace_mode="none"))  # no shared noise: the Trainer's own
