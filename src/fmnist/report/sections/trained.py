"""The top of every report: how each model was trained, and a banner where training was cut.

A report travels without its run directory; whoever reads it must see first what the model is:
a real run of its recipe, or a smoke run of a few steps that proves only that the code runs.
"""

from __future__ import annotations

from fmnist.inference.rundir import plural
from fmnist.report.context import ReportContext, ReportedRun
from fmnist.report.document import Banner, Block, Heading, Table


def _row(run: ReportedRun) -> list[str]:
    r, config = run.results, run.config
    recipe = config.get("recipe")
    recipe_text = f"`{recipe}`" if recipe else ("none (built-in defaults)" if "recipe" in config else "not recorded")
    planned = config.get("epochs")
    epochs = r.epochs_run
    if run.classical:
        epochs_text, steps_text = "fitted in one pass", "-"
    else:
        epochs_text = f"{epochs} of {planned}" if planned else str(epochs)
        steps_text = f"{r.steps:,}"
        if r.smoke_steps is not None:
            steps_text += f" of {r.planned_steps:,} (cut by --max-steps)"
        elif r.stopped_early:
            epochs_text += " (early stopping)"
    return [
        run.name,
        f"`{r.model}`",
        recipe_text,
        epochs_text,
        steps_text,
        r.precision or "?",
        r.device or "?",
        str(r.seed),
    ]


def trained_blocks(ctx: ReportContext) -> list[Block]:
    """A smoke-run banner (if any run was cut) and the table of how every run was trained."""
    blocks: list[Block] = []
    cut = {run.name: run.results.smoke_steps for run in ctx.runs}
    cut = {name: steps for name, steps in cut.items() if steps is not None}
    if cut:
        steps = sorted(set(cut.values()))
        words = plural(steps[0], "step") if len(steps) == 1 else f"{steps[0]:,}-{plural(steps[-1], 'step')}"
        which = "" if len(cut) == len(ctx.runs) else f" ({', '.join(cut)})"
        blocks.append(Banner(f"smoke run: {words}, not a trained model{which}. Training was cut by --max-steps; "
                             "its accuracy says only that the code runs, not what the model can do."))  # fmt: skip
    rows = [_row(run) for run in ctx.runs]
    blocks += [Heading("How it was trained"),
               Table(["run", "model", "recipe", "epochs", "steps", "precision", "device", "seed"], rows,
                     "lllrrlll")]  # fmt: skip
    return blocks
