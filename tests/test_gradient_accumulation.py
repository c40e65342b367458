"""`NullspaceTrainer`'s loss under gradient accumulation: the Trainer passes `num_items_in_batch` (the labels of all
accumulated micro-batches) and the loss divides its sums by it, so accumulated micro-batches of unequal sizes make the
update of one batch holding them all."""

import pytest
import torch
from testing_utils import TemplateDataset, final_weights, make_tiny_vit, make_trainer

from hf_nullspace.config import NullspaceArguments

ROWS = 12  # micro-batches of 8 and 4 rows: a mean of per-micro-batch means would weight the 4 rows twice as much
NOISE = torch.randn(1, 16, 48, generator=torch.Generator().manual_seed(3))  # the tiny ViT's (1, N, D)


def one_update(folder, mode, batch_size, accumulation):
    """The parameter update of one optimiser step over the `ROWS` rows: plain SGD at lr 1 (the update is the
    gradient), no clipping, and for a noise mode a fixed noise (synthesis would see other batches in the two runs)."""
    torch.manual_seed(0)  # the same initial weights in every run
    # no dropout: the two runs must see the same train-mode forward passes
    model = make_tiny_vit(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = make_trainer(
        folder,
        NullspaceArguments(nullspace_mode=mode, noise_refresh_steps=100),
        model,
        train_dataset=TemplateDataset(ROWS),
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
    )
    if mode != "none":
        trainer.noise_bank.append(NOISE, {"step": 0, "norm": float(NOISE.norm()), "reason": "fixed by the test"})
    before = final_weights(trainer).clone()
    trainer.train()
    if mode != "none":
        assert [r["reason"] for r in trainer.noise_history] == ["fixed by the test"]  # no synthesis ran
    return final_weights(trainer) - before


@pytest.mark.parametrize("mode", ["none", "nullspace"])
def test_two_accumulated_micro_batches_update_like_one_batch_of_both(tmp_path, mode):
    accumulated = one_update(tmp_path / "accumulated", mode, batch_size=8, accumulation=2)
    single = one_update(tmp_path / "single", mode, batch_size=ROWS, accumulation=1)
    assert float(single.abs().max()) > 1e-3
    torch.testing.assert_close(accumulated, single, rtol=1e-4, atol=1e-6)


def test_the_noise_enters_the_accumulated_update(tmp_path):
    """The comparison above is not trivially the clean loss's: the noisy term changes the update."""
    plain = one_update(tmp_path / "none", "none", batch_size=8, accumulation=2)
    noisy = one_update(tmp_path / "nullspace", "nullspace", batch_size=8, accumulation=2)
    assert float((noisy - plain).abs().max()) > 1e-3
