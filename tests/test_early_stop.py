"""Attacks with per-example early stop (`EarlyStopQueue`), and `evaluate_robustness` attacking only clean-correct
rows: robust here implies robust under the independent implementations, and FGSM and corruption rows are unchanged."""

import os
from collections import defaultdict

import pytest
import torch
from datasets import load_dataset
from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification

from hf_nullspace.classifier import load_classifier
from hf_nullspace.data import spec_from_source, transforms_from_image_processor
from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness
from hf_nullspace.robustness import evaluate as evaluate_module
from hf_nullspace.robustness.attacks import PGD, EarlyStopQueue, cw_l2, fgsm, patch_fool, pgd
from hf_nullspace.robustness.corruptions import corrupt
from hf_nullspace.robustness.model import PixelSpaceClassifier

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf_nullspace", "assets")
EPS_LINF, EPS_L2 = 2 / 255, 0.1


def _synthetic(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes, each a fixed random +-1 pattern on the 4x4 patch grid, on grey with pixel noise."""
    prototypes = torch.randint(0, 2, (10, 3, 4, 4), generator=torch.Generator().manual_seed(1234)).float() * 2 - 1
    prototypes = prototypes.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (num,), generator=generator)
    noise = torch.randn(num, 3, 32, 32, generator=generator)
    return (0.5 + 0.1 * prototypes[labels] + 0.15 * noise).clamp(0, 1), labels


@pytest.fixture(scope="module")
def classifier():
    """A tiny ViT with dropout, trained briefly on the synthetic task (well above chance, not perfect), eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=10,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    model = PixelSpaceClassifier(ViTForImageClassification(config), (0.5,) * 3, (0.5,) * 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(40):
        images, labels = _synthetic(64, seed=100 + step)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    yield model.eval()
    torch.set_num_threads(threads)


def _predict(model, images):
    with torch.no_grad():
        return model(images).argmax(-1)


def _generators(num: int, offset: int = 0):
    return [torch.Generator().manual_seed(1000 + offset + i) for i in range(num)]


def test_robust_with_early_stop_implies_robust_under_torchattacks(classifier):
    torchattacks = pytest.importorskip("torchattacks")
    images, labels = _synthetic(48, seed=1)
    clean_correct = _predict(classifier, images) == labels
    assert 0.6 <= clean_correct.float().mean() < 1
    for norm, epsilon, oracle_class in (("linf", EPS_LINF, torchattacks.PGD), ("l2", EPS_L2, torchattacks.PGDL2)):
        ours = pgd(
            classifier, images, labels, epsilon, epsilon / 4, 10, norm=norm, random_start=False, early_stop=True
        )
        oracle = oracle_class(classifier, eps=epsilon, alpha=epsilon / 4, steps=10, random_start=False)(images, labels)
        robust_here = _predict(classifier, ours) == labels
        robust_there = _predict(classifier, oracle) == labels
        assert not (robust_here & ~robust_there).any(), norm  # example by example
        assert not (robust_here & ~clean_correct).any(), norm  # a clean error is broken at the first iterate
        assert 0 < robust_here.sum() < clean_correct.sum(), norm  # the budget breaks some, not all


@pytest.mark.parametrize("attack", ["cw", "patchfool"])
def test_robust_with_early_stop_implies_robust_after_every_step(classifier, attack):
    """Same trajectories: an example no iterate broke is also correct on the full run's result."""
    images, labels = _synthetic(32, seed=2)
    if attack == "cw":
        run = lambda early_stop: cw_l2(classifier, images, labels, steps=20, lr=0.05, early_stop=early_stop)  # noqa: E731
    else:
        run = lambda early_stop: patch_fool(  # noqa: E731
            classifier,
            images,
            labels,
            steps=15,
            selection_layer=None,
            generator=_generators(32),
            early_stop=early_stop,
        )
    robust_early = _predict(classifier, run(True)) == labels
    robust_full = _predict(classifier, run(False)) == labels
    assert not (robust_early & ~robust_full).any()
    assert robust_early.sum() < (_predict(classifier, images) == labels).sum()


def test_refill_keeps_the_working_batch_full_and_results_do_not_depend_on_it(classifier):
    images, labels = _synthetic(48, seed=3)
    attack = PGD(EPS_LINF, EPS_LINF / 4, 10, early_stop=True)
    queue = EarlyStopQueue(attack, classifier, batch_size=8)
    queue.put(images[:0], labels[:0], [])  # a batch without clean-correct examples adds nothing
    results = []
    for start in range(0, 48, 7):  # examples arrive 7 at a time, as batches of a stream would
        end = min(start + 7, 48)
        queue.put(images[start:end], labels[start:end], list(range(start, end)), _generators(end - start, start))
        results += queue.run()
    streamed_steps = len(queue.batch_sizes)
    assert streamed_steps > 10 and all(size == 8 for size in queue.batch_sizes)
    results += queue.run(drain=True)
    tail = queue.batch_sizes[streamed_steps:]
    assert all(a >= b for a, b in zip(tail, tail[1:])) and queue.pending == 0
    keys = [key for group, _, _ in results for key in group]
    assert sorted(keys) == list(range(48))
    assert sum(queue.batch_sizes) < 48 * 11  # early stop: fewer steps than every example taking all of them

    whole = EarlyStopQueue(PGD(EPS_LINF, EPS_LINF / 4, 10, early_stop=True), classifier, batch_size=48)
    whole.put(images, labels, list(range(48)), _generators(48))
    reference = {
        k: (bool(r), a) for group, robust, adv in whole.run(drain=True) for k, r, a in zip(group, robust, adv)
    }
    streamed = {k: (bool(r), a) for group, robust, adv in results for k, r, a in zip(group, robust, adv)}
    assert {k: v[0] for k, v in streamed.items()} == {k: v[0] for k, v in reference.items()}
    for key in range(48):
        torch.testing.assert_close(streamed[key][1], reference[key][1], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The first 64 bundled MNIST test digits as a local parquet source."""
    rows = load_dataset("parquet", data_files=os.path.join(ASSETS, "mnist", "test.parquet"), split="train")
    folder = tmp_path_factory.mktemp("digits")
    rows.select(range(64)).to_parquet(os.path.join(folder, "test.parquet"))
    return str(folder)


def test_evaluation_attacks_only_clean_correct_rows_and_keeps_fgsm_and_corruptions(digits, monkeypatch):
    """The bundled MNIST ViT (as shipped: no dropout) on 64 digits in batches of 16, against the computation without
    the convention: every row attacked and scored on its last iterate."""
    path = os.path.join(ASSETS, "vit-tiny-mnist")
    model, processor = load_classifier(path).eval(), AutoImageProcessor.from_pretrained(path)
    pgd_params = {"epsilon": 0.05, "step_size": 0.0125, "steps": 4}
    suite = Suite(
        "check",
        [
            Evaluation("clean"),
            Evaluation("fgsm", group="attack", attack="fgsm", params=(("epsilon", 0.1),)),
            Evaluation("fgsm2", group="attack", attack="fgsm", params=(("epsilon", 0.05),)),
            Evaluation("pgd", group="attack", attack="pgd", params=tuple(pgd_params.items())),
            Evaluation("contrast", group="corruption", corruption="contrast", severity=4),
            Evaluation("noise", group="corruption", corruption="gaussian_noise", severity=3),
        ],
        spec_from_source(digits, split="test", name="digits", num_classes=10),
    )
    attacked = []
    real_run_attack, real_put = evaluate_module.run_attack, EarlyStopQueue.put
    monkeypatch.setattr(
        evaluate_module,
        "run_attack",
        lambda name, m, x, y, **p: attacked.append(len(y)) or real_run_attack(name, m, x, y, **p),
    )
    monkeypatch.setattr(
        EarlyStopQueue,
        "put",
        lambda self, x, y, keys, g=None: attacked.append(list(keys)) or real_put(self, x, y, keys, g),
    )
    # one lane: the attacks are logged in the order of the batches
    report = evaluate_robustness(
        {"m": model}, processor, suite=suite, batch_size=16, seed=5, progress=False, workers=1
    )
    pgd_keys = [key for entry in attacked if isinstance(entry, list) for key in entry]

    _, transform = transforms_from_image_processor(processor, normalize=False)
    rows = load_dataset("parquet", data_files=os.path.join(digits, "test.parquet"), split="train")
    images, labels = torch.stack([transform(image) for image in rows["image"]]), torch.tensor(rows["label"])
    classifier = PixelSpaceClassifier.from_image_processor(model.eval(), processor).eval()
    clean = _predict(classifier, images) == labels
    wrong = (~clean).nonzero().squeeze(1).tolist()
    assert wrong  # the check below is not vacuous
    per_batch = [int(clean[i : i + 16].sum()) for i in range(0, 64, 16)]
    assert [n for n in attacked if isinstance(n, int)] == [n for n in per_batch for _ in range(2)]  # per FGSM row

    old = {"clean": int(clean.sum()), "fgsm": 0, "fgsm2": 0, "pgd": 0, "contrast": 0, "noise": 0}
    fgsm2_robust = []
    for batch, start in enumerate(range(0, 64, 16)):
        x, y = images[start : start + 16], labels[start : start + 16]
        old["fgsm"] += int((_predict(classifier, fgsm(classifier, x, y, 0.1)) == y).sum())
        fgsm2_robust += (_predict(classifier, fgsm(classifier, x, y, 0.05)) == y).tolist()
        old["fgsm2"] += sum(fgsm2_robust[start:])
        generators = [
            torch.Generator().manual_seed(evaluate_module._example_seed(5, i)) for i in range(start, start + 16)
        ]
        old["pgd"] += int((_predict(classifier, pgd(classifier, x, y, **pgd_params, generator=generators)) == y).sum())
        for name, corruption, severity in (("contrast", "contrast", 4), ("noise", "gaussian_noise", 3)):
            corrupted = corrupt(x, corruption, severity, generator=5 + batch)
            old[name] += int((_predict(classifier, corrupted) == y).sum())
    new = {name: round(report.value("m", name) * 64) for name in old}
    unchanged = ("clean", "fgsm", "fgsm2", "contrast", "noise")
    assert {k: new[k] for k in unchanged} == {k: old[k] for k in unchanged}
    assert new["pgd"] <= old["pgd"]
    # clean errors are never attacked, nor (nested budgets) the examples FGSM broke at the same budget
    assert sorted(pgd_keys) == [i for i in range(64) if clean[i] and fgsm2_robust[i]]
    assert len(pgd_keys) < int(clean.sum())  # the check is not vacuous


def test_nested_budgets_count_an_example_broken_below_as_broken_and_do_not_attack_it(digits, monkeypatch):
    """PGD at 0.05 takes only the examples that FGSM at 0.05 and PGD at 0.02 left unbroken, whatever the suite's
    order; every other row is what it is without the rows below it, example by example."""
    path = os.path.join(ASSETS, "vit-tiny-mnist")
    model, processor = load_classifier(path).eval(), AutoImageProcessor.from_pretrained(path)
    data = spec_from_source(digits, split="test", name="digits", num_classes=10)

    def row(attack, epsilon):
        params = (
            {"epsilon": epsilon} if attack == "fgsm" else {"epsilon": epsilon, "step_size": epsilon / 4, "steps": 4}
        )
        return Evaluation(f"{attack}@{epsilon}", group="attack", attack=attack, params=tuple(params.items()))

    real_put, real_record = EarlyStopQueue.put, evaluate_module._Nesting.record

    def run(rows):
        put, verdicts = defaultdict(list), defaultdict(dict)

        def logged_put(self, x, y, keys, g=None):
            put[self.attack.epsilon] += list(keys)
            return real_put(self, x, y, keys, g)

        def logged_record(self, m, evaluation, keys, robust):
            verdicts[evaluation].update(zip(keys, robust))
            return real_record(self, m, evaluation, keys, robust)

        monkeypatch.setattr(EarlyStopQueue, "put", logged_put)
        monkeypatch.setattr(evaluate_module._Nesting, "record", logged_record)
        suite = Suite("check", [Evaluation("clean"), *rows], data)
        report = evaluate_robustness({"m": model}, processor, suite=suite, batch_size=16, seed=5, progress=False)
        return report, put, verdicts

    nested, put, verdicts = run([row("pgd", 0.05), row("fgsm", 0.1), row("fgsm", 0.05), row("pgd", 0.02)])
    alone = {name: run([r]) for name, r in (("pgd@0.05", row("pgd", 0.05)), ("pgd@0.02", row("pgd", 0.02)))}
    # robust at every row of budget <= 0.05 but PGD at 0.05 itself
    robust_below = {k for k, r in verdicts["pgd@0.02"].items() if r and verdicts["fgsm@0.05"][k]}
    assert sorted(put[0.05]) == sorted(robust_below)
    assert sorted(put[0.02]) == sorted(alone["pgd@0.02"][1][0.02])  # nothing below 0.02: every clean-correct example
    assert 0 < len(robust_below) < len(verdicts["pgd@0.02"])  # the nesting skipped some examples, not all
    alone_robust = alone["pgd@0.05"][2]["pgd@0.05"]
    assert verdicts["pgd@0.05"] == {k: alone_robust[k] and k in robust_below for k in alone_robust}
    assert nested.value("m", "pgd@0.05") <= alone["pgd@0.05"][0].value("m", "pgd@0.05")
    for name in ("clean", "pgd@0.02"):  # the smallest PGD budget has nothing below it
        assert nested.value("m", name) == alone["pgd@0.02"][0].value("m", name)
