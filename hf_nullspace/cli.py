"""`hf-nullspace`: finetune, evaluate, nullspace, card, push."""

import argparse
import json
import os
import sys
from pathlib import Path


def _finetune(args, rest):
    from .finetune import main

    main(rest, prog="hf-nullspace finetune")


def _evaluate(args, rest):
    from .data import spec_from_source
    from .robustness import evaluate_robustness, get_suite
    from .robustness.evaluate import init_process_group, process_group
    from .robustness.suites import parse_pairs

    names = args.names.split(",") if args.names else [os.path.basename(m.rstrip("/")) or m for m in args.models]
    if len(names) != len(args.models):
        raise SystemExit(f"--names gives {len(names)} names for {len(args.models)} models.")
    if args.push_results:
        from .results_pr import is_local_model

        local = [m for m in args.models if is_local_model(m)]
        if local:
            raise SystemExit(
                f"--push-results opens a pull request on each model's Hub repo, but {local} are local folders. "
                "Evaluate Hub ids (e.g. google/vit-base-patch16-224), or drop --push-results."
            )
    paths = parse_pairs(args.path, "--path")
    caps = parse_pairs(args.cap, "--cap", as_int=True)
    suite = get_suite(
        args.suite,
        data=spec_from_source(args.data, split=args.split) if args.data else None,
        paths=paths,
        corruptions=args.corruptions,
        severities=args.severities,
    )
    created = init_process_group(args.device)  # under accelerate launch / torchrun: every process scores a share
    try:
        report = evaluate_robustness(
            dict(zip(names, args.models)),
            suite=suite,
            max_samples=args.max_samples,
            sample_caps=caps,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            token=args.token,
            remap_labels=args.remap_labels,
            bf16=args.bf16,
            workers=args.workers,
        )
        if process_group()[0] == 0:
            figures = report.save(args.output_dir)
            print(report.to_markdown())
            print(
                f"Report and figures in {os.path.abspath(args.output_dir)}: "
                f"{', '.join(os.path.basename(f) for f in figures)}"
            )
            if args.push_results:
                _push_results(args, report.to_dict(), dict(zip(names, args.models)))
    finally:
        if created:
            import torch

            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def _push_results(args, report: dict, models: dict[str, str]) -> None:
    """Opens one pull request per evaluated model, adding its results to the card's model-index."""
    from .classifier import load_classifier
    from .results_pr import nullspace_figures, propose_results

    settings = {"seed": args.seed, "max_samples": args.max_samples, "caps": args.cap}
    settings.update(corruptions=args.corruptions, severities=args.severities)
    for name, repo_id in models.items():
        nullspace = nullspace_figures(load_classifier(repo_id, token=args.token))
        info = propose_results(repo_id, report, name, token=args.token, nullspace=nullspace, settings=settings)
        print(f"Pull request with the results of {name}: {info.pr_url}")


def _nullspace(args, rest):
    from .classifier import load_classifier
    from .nullspace import patch_embedding_nullspace
    from .plots import plot_patterns

    model = load_classifier(args.model)
    nullspace = patch_embedding_nullspace(model, module_name=args.module_name)
    summary = {
        "model": args.model,
        "patch_dim": nullspace.patch_dim,
        "hidden_size": nullspace.hidden_size,
        "rank": nullspace.rank,
        "nullspace_dimension": nullspace.dimension,
    }
    print(json.dumps(summary, indent=2))
    shown = min(args.count, nullspace.dimension)
    title = f"{nullspace.dimension}-dim nullspace of the patch projection: {shown} basis patterns"
    print(f"Figure: {plot_patterns(nullspace.patterns(args.count), args.output, title)}")


def _card(args, rest):
    from .card import write_model_card
    from .results import RunResults

    results = RunResults.load(args.output_dir)  # a finished run folder
    if args.license:  # recorded in results.json too, so a later push keeps it
        results = results.with_license(args.license)
        results.save(args.output_dir)
    print(f"Card: {write_model_card(args.output_dir, results, repo_id=args.repo_id, revision=args.revision)}")


def _push(args, rest):
    from .hub import check_model_files, push_run

    try:
        check_model_files(Path(args.output_dir))
    except FileNotFoundError as error:
        raise SystemExit(f"hf-nullspace push: {error}") from None
    print(
        push_run(
            args.output_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            revision=args.revision,
            license=args.license,
        )
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows an argument's default after its help, when it has one and the help does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, [], False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-nullspace", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    finetune = commands.add_parser(
        "finetune", help="the main job (trainer_scripts/run.py); takes its arguments", add_help=False
    )
    finetune.set_defaults(run=_finetune)

    evaluate = commands.add_parser(
        "evaluate",
        help="score models on a robustness suite, side by side (under accelerate launch: trainer_scripts/evaluate.py)",
        description="Score models on a robustness suite, side by side. The first model is the reference: the "
        "report's change column and relative figures compare the others with it.",
        formatter_class=DefaultsHelpFormatter,
    )
    evaluate.add_argument(
        "models", nargs="+", help="Hub ids or local folders; the first is the reference the others are compared with"
    )
    evaluate.add_argument("--suite", default="mnist", help="mnist, imagenet, attacks, corruptions or shift")
    evaluate.add_argument("--data", help="clean data (local path or Hub id) for attacks and on-the-fly corruptions")
    evaluate.add_argument("--split", default="test", help="split of --data")
    evaluate.add_argument(
        "--path", action="append", default=[], help="BENCHMARK=LOCAL_PATH, repeatable (imagenet-c=PATH: all of -C)"
    )
    evaluate.add_argument("--names", help="comma-separated names of the models in the report")
    evaluate.add_argument("--max-samples", type=int, help="images per evaluation")
    evaluate.add_argument(
        "--cap",
        action="append",
        default=[],
        help="KEY=N images for matching evaluations (KEY: evaluation, attack, source or group; N or `all`), "
        "repeatable, e.g. --cap attack=5000 --cap corruption=all",
    )
    evaluate.add_argument(
        "--remap-labels",
        action="store_true",
        help="score a model by class name whose labels are the data's classes in another order, or (by name where "
        "names match, else by position) one whose labels do not cover the data's classes; both are refused otherwise",
    )
    evaluate.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPUs)")
    evaluate.add_argument("--corruptions", nargs="+", help="only these corruptions (a subset gives a partial mCE)")
    evaluate.add_argument("--severities", nargs="+", type=int, help="only these severities, 1-5")
    evaluate.add_argument("--token", help="Hub token for gated benchmarks (default: the logged-in one)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the subsets, attacks and corruptions")
    evaluate.add_argument("--device", help="cpu, cuda, ... (default: this process's GPU if any)")
    evaluate.add_argument(
        "--workers",
        type=int,
        help="lanes (threads) each process scores its batches in; the report does not depend on it (default: on a "
        "CPU, the cores torch's threads leave idle; on a GPU 1)",
    )
    evaluate.add_argument("--output-dir", default="robustness-report", help="where the report and figures go")
    evaluate.add_argument(
        "--push-results",
        action="store_true",
        help="open a pull request on each model's Hub repo adding its results to the card's model-index "
        "(never writes to main; needs a token allowed to open pull requests)",
    )
    evaluate.set_defaults(run=_evaluate)

    nullspace = commands.add_parser("nullspace", help="exact nullspace of a model's patch projection")
    nullspace.add_argument("model", help="Hub id or local folder")
    nullspace.add_argument("--module-name", help="dotted name of the patch projection (unsupported families)")
    nullspace.add_argument("--count", type=int, default=8, help="basis patterns to draw")
    nullspace.add_argument("--output", default="nullspace_patterns.png")
    nullspace.set_defaults(run=_nullspace)

    card = commands.add_parser("card", help="(re)build the model card of a finished run from its results.json")
    card.add_argument("output_dir")
    card.add_argument("--repo-id", help="the Hub repo the card is for (usage snippet, widget image URLs)")
    card.add_argument("--revision", help="the branch the card will be pushed to (widget image URLs); main by default")
    card.add_argument("--license", help="licence of the model (a Hub licence id), replacing the one in results.json")
    card.set_defaults(run=_card)

    push = commands.add_parser("push", help="push a finished run (weights, card, figures, results, noise bank)")
    push.add_argument("output_dir")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--token")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision")
    push.add_argument("--license", help="licence of the model (a Hub licence id), replacing the one in results.json")
    push.set_defaults(run=_push)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["finetune"]:
        return _finetune(None, argv[1:])
    args = parser.parse_args(argv)
    args.run(args, [])


if __name__ == "__main__":
    main()
