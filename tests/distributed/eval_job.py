"""Test-only launcher: `evaluate_robustness` of one saved model on the `mnist` suite over a local data folder (its
`test` split), under `python` or `accelerate launch`; every rank writes `eval_rank_<i>.json` with the report
(`to_dict()`) and `source_reads`.

    eval_job.py MODEL DATA OUTPUT_DIR
"""

import json
import os
import sys

import torch

from hf_nullspace.robustness import evaluate_robustness, get_suite
from hf_nullspace.robustness.evaluate import init_process_group, process_group


def main(model, data, output_dir):
    init_process_group("cpu")
    suite = get_suite("mnist", data=data, split="test", corruptions=["gaussian_noise"], severities=[1, 3])
    report = evaluate_robustness(
        model, suite=suite, sample_caps={"attack": 9}, batch_size=4, seed=3, device="cpu", progress=False
    )
    rank, _ = process_group()
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"eval_rank_{rank}.json"), "w") as handle:
        json.dump({"report": report.to_dict(), "source_reads": report.source_reads}, handle)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
