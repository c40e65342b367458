"""Noise synthesis over a stream of training batches (`noise_synthesis_data="stream"`): one new batch per update, the
stop statistic on a batch before its update, the trainer's own data and RNG untouched, exact resume, and the
statistic on an unseen batch recorded for every refresh (both variants)."""

import random

import numpy as np
import pytest
import torch
from testing_utils import reading_tiny_vit, template_images
from transformers import TrainerCallback, TrainingArguments

import hf_nullspace.synthesis as synthesis_module
from hf_nullspace.config import NullspaceArguments
from hf_nullspace.synthesis import noise_statistic, synthesize_noise
from hf_nullspace.trainer import NullspaceTrainer

ROWS, BATCH = 96, 8


def row_id(pixel_values: torch.Tensor) -> list[int]:
    """The rows' indices in `Marked`, read from the marker pixel."""
    return [int(round(float(value))) for value in pixel_values[:, 0, 0, 0]]


class Marked(torch.utils.data.Dataset):
    """Template images whose first pixel holds the row index (so a batch tells where it came from), with a random
    augmentation drawn from torch's, Python's and NumPy's global RNGs (as transforms do) unless `augment=False`."""

    def __init__(self, augment: bool = True):
        self.augment = augment
        self.pixel_values, self.labels = template_images(ROWS, seed=7)
        self.pixel_values[:, 0, 0, 0] = torch.arange(ROWS, dtype=torch.float32)

    def __len__(self):
        return ROWS

    def __getitem__(self, i):
        pixel_values = self.pixel_values[i].clone()
        if self.augment:
            pixel_values[:, 1:, 1:] += 0.01 * (float(torch.rand(())) + random.random() + float(np.random.rand()))
        return {"pixel_values": pixel_values, "labels": self.labels[i]}


def make_trainer(folder, nullspace_args, augment=True, **overrides):
    arguments = dict(
        output_dir=str(folder),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=BATCH,
        max_steps=6,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    arguments.update(overrides)
    return NullspaceTrainer(
        model=reading_tiny_vit(),
        args=TrainingArguments(**arguments),
        train_dataset=Marked(augment),
        nullspace_args=nullspace_args,
    )


def spy_on_forwards(monkeypatch):
    """Records (row ids, with gradient) of every forward pass of the synthesis."""
    calls = []
    original = synthesis_module._logits

    def spy(model, inputs):
        calls.append((tuple(row_id(inputs["pixel_values"])), torch.is_grad_enabled()))
        return original(model, inputs)

    monkeypatch.setattr(synthesis_module, "_logits", spy)
    return calls


def test_the_variant_is_validated_with_what_to_use():
    with pytest.raises(ValueError, match="noise_synthesis_data='everything'.*'batch'.*'stream'"):
        NullspaceArguments(noise_synthesis_data="everything")


def test_each_update_uses_a_new_batch_and_the_stop_statistic_comes_before_its_update(tmp_path, monkeypatch):
    nullspace = NullspaceArguments(noise_synthesis_data="stream", noise_max_updates=10)
    trainer = make_trainer(tmp_path, nullspace)
    calls = spy_on_forwards(monkeypatch)
    current = template_images(BATCH, seed=55)[0]
    current[:, 0, 0, 0] = 1000.0  # the trainer's current batch: never synthesised on in this variant
    record = trainer.refresh_noise(trainer.model, {"pixel_values": current})
    assert record["synthesis_data"] == "stream" and record["updates"] >= 2 and record["reached"]
    # the forwards with gradient are the learned loop's: a stop check on each batch, then the update on it
    measured = [ids for ids, with_grad in calls if with_grad]
    assert len(measured) == record["updates"] + 1
    assert len(set(measured)) == len(measured)  # a different batch for every update
    assert all(len(ids) == BATCH and 1000 not in ids for ids in measured)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(measured) for b in measured[i + 1 :])  # one order
    # the stop statistic is on the last batch, measured before any update on it: recomputing it there agrees
    stream = trainer.synthesis_stream()
    batches = [next(stream) for _ in range(len(measured) + 1)]
    assert [tuple(row_id(b["pixel_values"])) for b in batches[:-1]] == measured
    assert noise_statistic(trainer.model, batches[-2], trainer.noise, nullspace) == pytest.approx(
        record["statistic"], rel=1e-4, abs=1e-7
    )
    assert record["statistic"] < nullspace.noise_epsilon
    # the first batch drawn calibrated the start: every calibration forward ran on it
    calibration = [ids for ids, with_grad in calls[: calls.index((measured[0], True))] if not with_grad]
    assert calibration and set(calibration) == {measured[0]}
    # and the unseen batch is the next one of the stream
    unseen = noise_statistic(trainer.model, batches[-1], trainer.noise, nullspace)
    assert record["unseen_batch_statistic"] == pytest.approx(unseen, rel=1e-4, abs=1e-7)


def test_the_batch_variant_synthesises_on_the_current_batch_and_measures_on_an_unseen_one(tmp_path, monkeypatch):
    nullspace = NullspaceArguments(noise_max_updates=10)
    trainer = make_trainer(tmp_path, nullspace)
    calls = spy_on_forwards(monkeypatch)
    current = template_images(BATCH, seed=55)[0]
    current[:, 0, 0, 0] = 1000.0
    record = trainer.refresh_noise(trainer.model, {"pixel_values": current})
    assert record["synthesis_data"] == "batch" and record["updates"] >= 1
    assert {ids for ids, with_grad in calls if with_grad} == {(1000,) * BATCH}
    first = next(trainer.synthesis_stream())
    assert 1000 not in row_id(first["pixel_values"])
    unseen = noise_statistic(trainer.model, first, trainer.noise, nullspace)
    assert record["unseen_batch_statistic"] == pytest.approx(unseen, rel=1e-4, abs=1e-7)
    assert record["unseen_batch_inside"] == (unseen < nullspace.noise_epsilon)


def test_drawing_the_stream_leaves_the_global_rng_untouched(tmp_path):
    trainer = make_trainer(tmp_path, NullspaceArguments(noise_synthesis_data="stream"))
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    stream = trainer.synthesis_stream()
    drawn = [next(stream) for _ in range(ROWS // BATCH + 2)]  # past one pass: a fresh order
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    first_pass = sorted(i for batch in drawn[: ROWS // BATCH] for i in row_id(batch["pixel_values"]))
    assert first_pass == list(range(ROWS))
    # the stream depends on the step (a new order per refresh), not on how often it was drawn
    again = next(trainer.synthesis_stream())
    torch.testing.assert_close(again["pixel_values"], drawn[0]["pixel_values"], rtol=0, atol=0)
    trainer.state.global_step = 40
    assert row_id(next(trainer.synthesis_stream())["pixel_values"]) != row_id(drawn[0]["pixel_values"])


def trained_rows(trainer, pixels=None):
    """Runs `trainer.train()` and returns the row ids of every batch it trained on, in order (their pixel values
    appended to `pixels`)."""
    seen = []
    original = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        seen.append(row_id(inputs["pixel_values"]))
        if pixels is not None:
            pixels.append(inputs["pixel_values"].clone())
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    return seen


def test_the_trainers_own_batches_are_the_same_in_every_variant(tmp_path):
    runs, pixels = {}, {}
    for name, nullspace in [
        ("none", NullspaceArguments(nullspace_mode="none")),
        ("batch", NullspaceArguments(noise_refresh_steps=2, noise_max_updates=5)),
        ("stream", NullspaceArguments(noise_synthesis_data="stream", noise_refresh_steps=2, noise_max_updates=5)),
    ]:
        pixels[name] = []
        runs[name] = trained_rows(make_trainer(tmp_path / name, nullspace, max_steps=6), pixels[name])
    assert len(runs["none"]) == 6
    assert runs["stream"] == runs["batch"] == runs["none"]
    # the random augmentation too: both variants draw one noise direction per refresh from the global RNG, and the
    # stream's loader draws nothing from it
    for stream, batch in zip(pixels["stream"], pixels["batch"], strict=True):
        torch.testing.assert_close(stream, batch, rtol=0, atol=0)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_a_stream_run_resumes_exactly(tmp_path):
    nullspace = NullspaceArguments(noise_synthesis_data="stream", noise_refresh_steps=2, noise_max_updates=10)
    # no augmentation in the main process: the Trainer's loader fetches one batch ahead of a checkpoint, so a random
    # transform there would not resume exactly in any mode
    save = dict(max_steps=6, save_strategy="steps", save_steps=3, augment=False)
    full = make_trainer(tmp_path / "full", nullspace, **save)
    full.train()
    assert not any(record["no_boundary"] for record in full.noise_history)
    interrupted = make_trainer(tmp_path / "cut", nullspace, **save)
    interrupted.add_callback(StopAt(4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    resumed = make_trainer(tmp_path / "cut", nullspace, **save)
    resumed.train(resume_from_checkpoint=True)
    assert [record["step"] for record in resumed.noise_history] == [0, 2, 4]
    for key in ("updates", "statistic", "unseen_batch_statistic"):
        assert [r[key] for r in resumed.noise_history] == pytest.approx([r[key] for r in full.noise_history])
    torch.testing.assert_close(resumed.noise, full.noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights(resumed), weights(full), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["batch", "stream"])
@pytest.mark.parametrize("mode", ["nullspace", "random", "norm_matched"])
def test_every_refresh_records_the_statistic_on_an_unseen_batch(tmp_path, variant, mode):
    nullspace = NullspaceArguments(
        nullspace_mode=mode, noise_synthesis_data=variant, noise_refresh_steps=2, noise_max_updates=5
    )
    trainer = make_trainer(tmp_path, nullspace, max_steps=5)
    trainer.train()
    history = trainer.noise_history
    assert [record["step"] for record in history] == [0, 2, 4]
    for record in history:
        assert record["synthesis_data"] == variant
        assert record["unseen_batch_statistic"] is not None and record["unseen_batch_statistic"] >= 0
        assert record["unseen_batch_inside"] == (record["unseen_batch_statistic"] < nullspace.noise_epsilon)


def streamed_marked():
    """`Marked` (no augmentation) as a streamed `datasets.IterableDataset` in 3 shards."""
    from datasets import Dataset

    rows = Marked(augment=False)
    table = Dataset.from_dict({"pixel_values": rows.pixel_values.numpy(), "labels": rows.labels.numpy()})
    return table.to_iterable_dataset(num_shards=3).with_format("torch")


def test_a_streamed_training_set_keeps_its_batches_and_saved_position(tmp_path, monkeypatch):
    import json

    runs = {}
    for name, nullspace in [
        ("none", NullspaceArguments(nullspace_mode="none")),
        ("stream", NullspaceArguments(noise_synthesis_data="stream", noise_refresh_steps=2, noise_max_updates=5)),
    ]:
        trainer = make_trainer(tmp_path / name, nullspace, max_steps=4, save_strategy="steps", save_steps=3)
        trainer.train_dataset = streamed_marked()
        calls = spy_on_forwards(monkeypatch)
        runs[name] = trained_rows(trainer)
        with open(tmp_path / name / "checkpoint-3" / "stream_state_0.json") as handle:
            runs[name + " position"] = json.load(handle)["state"]
        if name == "stream":
            assert [record["step"] for record in trainer.noise_history] == [0, 2]
            synthesised = {i for ids, with_grad in calls if with_grad for i in ids}
            assert synthesised and synthesised <= set(range(ROWS))
            assert all(record["unseen_batch_statistic"] is not None for record in trainer.noise_history)
    assert len(runs["none"]) == 4 and runs["stream"] == runs["none"]
    assert runs["stream position"] == runs["none position"] and runs["none position"] is not None


class TorchStream(torch.utils.data.IterableDataset):
    def __iter__(self):
        rows = Marked(augment=False)
        return iter(rows[i] for i in range(ROWS))


def test_a_stream_needs_a_training_set_it_can_draw_from(tmp_path):
    trainer = make_trainer(tmp_path, NullspaceArguments(noise_synthesis_data="stream"))
    trainer.train_dataset = None
    with pytest.raises(ValueError, match="no train_dataset.*noise_synthesis_data='batch'"):
        trainer.refresh_noise(trainer.model, {"pixel_values": template_images(BATCH, seed=1)[0]})
    trainer.train_dataset = TorchStream()
    with pytest.raises(ValueError, match="got TorchStream"):
        trainer.refresh_noise(trainer.model, {"pixel_values": template_images(BATCH, seed=1)[0]})
    # the current-batch variant still runs on such a set, without an unseen-batch statistic
    batch = make_trainer(tmp_path, NullspaceArguments(noise_max_updates=5))
    batch.train_dataset = TorchStream()
    record = batch.refresh_noise(batch.model, {"pixel_values": template_images(BATCH, seed=1)[0]})
    assert record["unseen_batch_statistic"] is None and record["unseen_batch_inside"] is None


def test_the_stop_rule_over_several_batches_is_validated():
    with pytest.raises(ValueError, match="noise_stop_batches must be >= 1"):
        NullspaceArguments(noise_stop_batches=0)


def test_the_stop_rule_averages_the_statistics_of_the_last_batches(monkeypatch):
    # a stream of distinct batches; the same start and order for every rule, so the trajectories agree until a rule
    # stops: the mean of the last k statistics can only fall below epsilon after one of them did
    model = reading_tiny_vit()
    pool = [template_images(BATCH, seed=100 + i)[0] for i in range(100)]
    measured = []  # with the authors' fixed start nothing is calibrated: every statistic is a stop check
    original = synthesis_module.epsilon_statistic

    def spy(clean, noisy):
        value = original(clean, noisy)
        measured.append(float(value))
        return value

    monkeypatch.setattr(synthesis_module, "epsilon_statistic", spy)
    results = {}
    for k in (1, 4):
        measured.clear()
        args = NullspaceArguments(
            noise_synthesis_data="stream", noise_init_limit=3.0, noise_max_updates=99, noise_stop_batches=k
        )
        result = synthesize_noise(model, iter(pool), args, generator=torch.Generator().manual_seed(0))
        results[k] = (result, list(measured))
    (single, single_values), (averaged, averaged_values) = results[1], results[4]
    assert single.reached and averaged.reached
    assert averaged.updates >= single.updates
    assert averaged_values[: len(single_values)] == pytest.approx(single_values, rel=1e-4)
    # the returned statistic is the mean of the last four checks, below epsilon; no earlier window of four was
    assert averaged.statistic == pytest.approx(sum(averaged_values[-4:]) / 4, rel=1e-5)
    assert averaged.statistic < args.noise_epsilon
    windows = [averaged_values[max(0, i - 3) : i + 1] for i in range(len(averaged_values) - 1)]
    assert all(sum(w) / len(w) >= args.noise_epsilon for w in windows)


def test_the_random_baseline_measures_its_current_noise_on_the_next_batches(monkeypatch):
    model = reading_tiny_vit()
    pool = [template_images(BATCH, seed=200 + i)[0] for i in range(60)]
    args = NullspaceArguments(nullspace_mode="random", noise_synthesis_data="stream", noise_stop_batches=3)
    result = synthesize_noise(model, iter(pool), args, generator=torch.Generator().manual_seed(0))
    # one check per shrink step, each on three new batches: the last three batches drawn were the stop check's
    checked = pool[3 * result.updates : 3 * result.updates + 3]
    assert result.statistic == pytest.approx(noise_statistic(model, checked, result.noise, args), rel=1e-4)
    assert result.statistic < args.noise_epsilon and result.reached
