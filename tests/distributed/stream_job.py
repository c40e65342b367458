"""Test-only launcher for streamed training under `accelerate launch` (or plain `python` for one process): runs the
job's `parse_args` + `build_trainer` + `trainer.train` (resuming from `--resume_from_checkpoint` when given), then
rank `i` writes `stream_rank_<i>.json` to the output folder:

- `stream_reads`: the trainer's `stream_reads` (rows read and decoded by this process, re-read on resume).
- `decoded`: the ids of the images this process decoded, in order (the test data carries row `k`'s id in pixel
  (0, 0) as `(k % 256, k // 256, 255)`).
- `trained`: a digest of every augmented training image, in the order trained (the `i`-th trained image is the
  `i`-th decoded one: the stream is decoded in training order).
- `weights`: every parameter after training.

An extra argument `--stop_at N` stops training after step `N` (an interruption after the checkpoint of step `N`).
"""

import hashlib
import json
import os
import sys

import torch
from transformers import TrainerCallback, set_seed

from hf_nullspace.data import rows as rows_module
from hf_nullspace.finetune import build_trainer, parse_args


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()[:16]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def main(argv):
    stop_at = None
    if "--stop_at" in argv:
        position = argv.index("--stop_at")
        stop_at = int(argv[position + 1])
        argv = argv[:position] + argv[position + 2 :]
    model_args, data_args, nullspace_args, training_args, adversarial_args, lora_args = parse_args(argv)
    set_seed(training_args.seed)
    decoded, trained = [], []
    decode = rows_module.decode_image

    def recording_decode(value):
        image = decode(value)
        r, g, b = image.convert("RGB").getpixel((0, 0))
        decoded.append(r + 256 * g if b == 255 else -1)
        return image

    rows_module.decode_image = recording_decode
    trainer, _ = build_trainer(model_args, data_args, nullspace_args, training_args, adversarial_args, lora_args)
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at))
    training_step = trainer.training_step

    def recording_training_step(model, inputs, num_items_in_batch=None):
        trained.extend(digest(image) for image in inputs["pixel_values"])
        return training_step(model, inputs, num_items_in_batch)

    trainer.training_step = recording_training_step
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    model = trainer.accelerator.unwrap_model(trainer.model)
    record = {
        "rank": training_args.process_index,
        "world_size": training_args.world_size,
        "global_step": trainer.state.global_step,
        "stream_reads": trainer.stream_reads,
        "decoded": decoded,
        "trained": trained,
        "weights": {name: p.detach().cpu().tolist() for name, p in model.named_parameters()},
    }
    os.makedirs(training_args.output_dir, exist_ok=True)
    with open(os.path.join(training_args.output_dir, f"stream_rank_{training_args.process_index}.json"), "w") as f:
        json.dump(record, f)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
