"""Evaluation shares a source among processes by contiguous blocks of batches, so that each process reads only the
rows it scores; the batches (and so the report) are those of one process."""

import os

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_nullspace.robustness import evaluate_robustness, get_suite
from hf_nullspace.robustness.evaluate import _Selection, _Share

SIZES = (6, 7, 5, 6)


def write_test_shards(folder, sizes=SIZES):
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": Value("int64")})
    os.makedirs(folder, exist_ok=True)
    for shard, size in enumerate(sizes):
        images = [PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(size)]
        labels = [int(label) for label in rng.integers(0, 10, size)]
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            os.path.join(folder, f"test-{shard:05d}-of-{len(sizes):05d}.parquet")
        )
    return str(folder)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("caps", [{"clean": None}, {"clean": None, "attack": 9}, {"a": 5, "b": 23}])
def test_processes_score_every_batch_once_from_their_own_row_range(world, caps):
    total, batch_size = 24, 4
    selections = {name: _Selection(cap, total) for name, cap in caps.items()}
    owners = {name: {} for name in caps}
    for rank in range(world):
        share = _Share(selections, batch_size, rank, world)
        assert share.blocks
        start, stop = share.rows
        for name, selection in selections.items():
            for index in range(total):
                if index not in selection:
                    continue
                batch = selection.position(index) // batch_size
                if share.owns(name, batch):
                    assert start <= index < stop, (rank, name, index, share.rows)
                    owners[name].setdefault(batch, set()).add(rank)
        # a contiguous range of about 1/world of the rows (one batch more at most for each boundary)
        assert stop - start <= total / world + 2 * batch_size * total / min(s.count for s in selections.values())
    for name, selection in selections.items():
        batches = -(-selection.count // batch_size)
        assert sorted(owners[name]) == list(range(batches)) and all(len(r) == 1 for r in owners[name].values())


def test_selection_index_inverts_position():
    selection = _Selection(7, 23)
    chosen = [i for i in range(23) if i in selection]
    assert [selection.position(i) for i in chosen] == list(range(7))
    assert [selection.index(p) for p in range(7)] == chosen


def test_one_process_reads_each_row_of_a_sharded_source_once(tmp_path):
    data = write_test_shards(tmp_path / "data")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=10,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    suite = get_suite("mnist", data=data, split="test", corruptions=["gaussian_noise"], severities=[1])
    report = evaluate_robustness(
        model, processor, suite=suite, sample_caps={"attack": 5}, batch_size=4, device="cpu", progress=False
    )
    assert report.source_reads == {"data": [{"process_index": 0, "rows_read": 24, "rows_decoded": 24}]}
