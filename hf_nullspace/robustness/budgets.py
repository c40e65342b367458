"""Attack budgets as people write them: `8/255`, `0.5/255`, `0.02`; benchmark names with readable budgets."""

import math
import re


def format_budget(value: float) -> str:
    """
    An attack budget (in [0, 1] pixel units) as people write it: a short decimal as it is (`0.02`, `0.1`, `0.2`),
    otherwise a multiple of 1/255 when it is one, halves and quarters included (`1/255`, `8/255`, `0.5/255`),
    otherwise 4 significant digits (`0.007`, `0.01234`).
    """
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        return f"{value:g}"
    if abs(value - round(value, 3)) <= 1e-9 * max(1.0, abs(value)):
        return f"{round(value, 3):g}"
    steps = value * 255
    for denominator in (1, 2, 4):
        multiple = round(steps * denominator)
        if multiple and abs(steps * denominator - multiple) <= 1e-4 * multiple:
            return f"{multiple / denominator:g}/255"
    return f"{value:.4g}"


_BUDGET_NAME = re.compile(r"^(?P<attack>[^@]+)@(?P<budget>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def readable_benchmark(name: str) -> str:
    """A benchmark name with its attack budget readable: `fgsm@0.00392157` -> `fgsm@1/255`; others unchanged."""
    match = _BUDGET_NAME.match(str(name))
    if match is None:
        return str(name)
    return f"{match['attack']}@{format_budget(float(match['budget']))}"
