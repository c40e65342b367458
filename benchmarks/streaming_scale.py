"""Streamed training data with 1, 2 and 4 processes: rows read and decoded per process, and the data pipeline's
images per second per process, split per process (`data.streams.split_stream`) side by side with accelerate's
dispatching (the main process reads, decodes and augments every batch and sends each process its own).

Writes `--shards` local parquet shards of `--rows` JPEG images, then launches `torchrun --nproc_per_node N` (gloo on
CPU) once per mode and N; each process streams one pass of the training set through the job's pipeline (keying,
decoding, `TrainTransform` at `--size`, batches of `--batch-size`) and counts what it read and received. No model:
this measures the data path only. JSON to `benchmarks/results/streaming_scale.json`.

    python benchmarks/streaming_scale.py [--rows 2048 --shards 8 --size 160]
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "__row__"


def write_shards(folder: str, rows: int, shards: int) -> str:
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    per_shard = rows // shards
    for shard in range(shards):
        images = []
        for _ in range(per_shard):
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            PILImage.fromarray(small).resize((320, 240), PILImage.BILINEAR).save(buffer, format="JPEG", quality=90)
            images.append({"bytes": buffer.getvalue(), "path": None})
        labels = [int(label) for label in rng.integers(0, 10, per_shard)]
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            os.path.join(folder, f"train-{shard:05d}-of-{shards:05d}.parquet")
        )
    return folder


def worker(args) -> None:
    """One process of a launch: one pass over the stream, in `args.mode`."""
    import torch
    from accelerate import PartialState
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from hf_nullspace.data import SkipCounter, TrainTransform, collate_fn, load_image_dataset, prepare_dataset
    from hf_nullspace.data.streams import ReadTally, keyed_stream, split_stream

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    tally = ReadTally()
    stream = keyed_stream(load_image_dataset(args.data, split="train", streaming=True), KEY, tally)
    if args.mode == "split":
        stream = split_stream(stream, KEY, rank, world, tally)
    transform = TrainTransform(args.size, seed=0)
    counter = SkipCounter()
    prepared = prepare_dataset(
        stream, transform, "image", "label", 10, counter=counter, batch_size=args.batch_size, key_column=KEY
    )
    loader = DataLoader(prepared, batch_size=args.batch_size, collate_fn=collate_fn)
    if args.mode == "split":  # what the trainer does: this process's own loader, nothing split or dispatched
        loader = prepare_data_loader(
            loader, torch.device("cpu"), num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
        )
    else:  # accelerate's default for an iterable dataset
        loader = prepare_data_loader(
            loader,
            torch.device("cpu"),
            num_processes=world,
            process_index=rank,
            dispatch_batches=True,
            put_on_device=True,
        )
    torch.distributed.barrier() if world > 1 else None
    start = time.perf_counter()
    received = 0
    for batch in loader:
        received += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - start
    record = {
        "process_index": rank,
        "rows_read": tally.read,
        "rows_decoded": counter.seen,
        "images_received": received,
        "seconds": round(seconds, 3),
        "images_per_second": round(received / seconds, 1),
    }
    with open(os.path.join(args.out, f"{args.mode}_{world}_{rank}.json"), "w") as handle:
        json.dump(record, handle)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def launch(args, data: str, out: str, mode: str, processes: int) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += [os.path.abspath(__file__), "--worker", "--mode", mode, "--data", data, "--out", out]
    command += ["--size", str(args.size), "--batch-size", str(args.batch_size)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(completed.stdout[-2000:] + completed.stderr[-4000:])
    records = []
    for rank in range(processes):
        with open(os.path.join(out, f"{mode}_{processes}_{rank}.json")) as handle:
            records.append(json.load(handle))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["split", "dispatch"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        os.makedirs(os.path.join(folder, "data"))
        data = write_shards(os.path.join(folder, "data"), args.rows, args.shards)
        results = []
        for processes in args.processes:
            for mode in ("dispatch", "split"):
                records = launch(args, data, folder, mode, processes)
                entry = {
                    "processes": processes,
                    "mode": mode,
                    "rows_read_per_process": [r["rows_read"] for r in records],
                    "rows_decoded_per_process": [r["rows_decoded"] for r in records],
                    "total_rows_read": sum(r["rows_read"] for r in records),
                    "images_received_per_process": [r["images_received"] for r in records],
                    "images_per_second_per_process": [r["images_per_second"] for r in records],
                    "seconds": max(r["seconds"] for r in records),
                }
                results.append(entry)
                print(
                    f"{processes} process(es), {mode:8s}: read {entry['rows_read_per_process']} "
                    f"(total {entry['total_rows_read']}), decoded {entry['rows_decoded_per_process']}, received "
                    f"{entry['images_received_per_process']}, images/s per process "
                    f"{entry['images_per_second_per_process']}, {entry['seconds']:.1f} s"
                )
    summary = {
        "rows": args.rows,
        "shards": args.shards,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "cpu_cores": os.cpu_count(),
        "note": "CPU gloo processes on this machine; images/s is the data pipeline alone (read, decode, augment, "
        "collate; dispatch also broadcasts), per process, over one pass.",
        "results": results,
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "results", "streaming_scale.json")
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"Saved {path}")


if __name__ == "__main__":
    main()
