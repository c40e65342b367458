"""A fresh classifier head (predictions that do not depend on the input yet) is a normal case for the method."""

import pytest
import torch
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification

from hf_nullspace.config import NullspaceArguments
from hf_nullspace.synthesis import synthesize_noise
from hf_nullspace.trainer import NullspaceTrainer

CONFIG = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=96,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


def templates(num: int, num_classes: int, seed: int):
    """Each class a fixed random template plus noise: (pixel_values, labels)."""
    generator = torch.Generator().manual_seed(99)
    patterns = torch.randn(num_classes, 3, 32, 32, generator=generator)
    generator.manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    return patterns[labels] + 0.5 * torch.randn(num, 3, 32, 32, generator=generator), labels


@pytest.fixture(scope="module")
def replaced_head(tmp_path_factory):
    """A tiny ViT trained on 10 classes, saved, and reloaded for 3 classes: its new head is freshly initialised."""
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=10, **CONFIG))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        pixel_values, labels = templates(32, 10, seed=step)
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("trained")
    model.save_pretrained(folder)
    return str(folder)


def load_replaced(folder):
    torch.manual_seed(1)
    return ViTForImageClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)


class Shapes(torch.utils.data.Dataset):
    def __init__(self):
        self.pixel_values, self.labels = templates(96, 3, seed=1000)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


def test_synthesis_on_a_fresh_head_finds_no_boundary_and_returns_no_noise(replaced_head, caplog):
    model = load_replaced(replaced_head).eval()
    pixel_values, _ = templates(16, 3, seed=5)
    with caplog.at_level("WARNING", logger="hf_nullspace.synthesis"):
        generator = torch.Generator().manual_seed(0)
        result = synthesize_noise(model, pixel_values, NullspaceArguments(), generator=generator)
    assert "do not depend on the input yet" in caplog.text
    assert result.no_boundary and result.updates == 0 and result.boundary_scale is None
    assert result.norm == 0.0 and result.inside
    assert 0 <= result.summary()["limit_statistic"] < 0.03
    # norm_matched trains on nothing either (a random noise of the learned one's norm, zero)
    matched = synthesize_noise(model, pixel_values, NullspaceArguments(nullspace_mode="norm_matched"))
    assert matched.no_boundary and matched.norm == 0.0


def test_the_search_limit_bounds_every_noise_trained_on(replaced_head):
    """A model that leaves epsilon only far out: no noise beyond about `noise_max_norm_ratio` x its embeddings."""
    model = load_replaced(replaced_head).eval()
    pixel_values, _ = templates(16, 3, seed=5)
    with torch.no_grad():  # a head that reads its input weakly
        model.classifier.weight.normal_(0, 0.5)
    for ratio in (2.0, 8.0, 64.0):
        result = synthesize_noise(model, pixel_values, NullspaceArguments(noise_max_norm_ratio=ratio))
        if result.no_boundary:
            assert result.norm == 0.0
        else:
            assert result.inside and result.norm_ratio <= 1.2 * ratio


def test_a_run_with_a_replaced_head_trains_on_the_clean_loss_until_a_boundary_is_found(replaced_head, tmp_path):
    model = load_replaced(replaced_head)
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=16,
        max_steps=40,
        learning_rate=3e-3,
        save_strategy="no",
        logging_steps=5,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = NullspaceTrainer(
        model=model,
        args=arguments,
        train_dataset=Shapes(),
        nullspace_args=NullspaceArguments(noise_refresh_steps=5, noise_max_updates=50),
    )
    trainer.train()
    history = trainer.noise_history
    assert len(history) == 8
    # the fresh head: no boundary at first, recorded as such, no noise trained on
    assert history[0]["no_boundary"] and history[0]["norm"] == 0.0 and history[0]["updates"] == 0
    # once the head reads its input the calibration finds a boundary, and the noise is of the embeddings' size
    found = [record for record in history if not record["no_boundary"]]
    assert found, history
    assert all(record["norm_ratio"] <= 10 and record["inside"] for record in found)
    assert all(record["norm"] == 0.0 for record in history if record["no_boundary"])


def test_the_card_says_how_many_syntheses_found_no_boundary():
    from hf_nullspace.card import build_model_card
    from hf_nullspace.results import RunResults

    record = dict(norm=1.0, updates=3, statistic=0.01, reached=True, norm_ratio=2.0, unseen_batch_inside=False)
    history = [
        dict(record, norm=0.0, updates=0, norm_ratio=0.0, no_boundary=True, limit_statistic=0.005),
        record,
        dict(record, unseen_batch_inside=True),
    ]
    card = str(build_model_card(RunResults(model_name="fresh-head", noise_history=history)))
    assert "Syntheses without noise" in card and "| 1 / 3 |" in card
    assert "Noises inside ε on a batch they were not fitted to | 1 / 3 |" in card
    plain = str(build_model_card(RunResults(model_name="read", noise_history=[record])))
    assert "Syntheses without noise" not in plain
