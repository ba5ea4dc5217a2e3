"""`fmnist recipes`: the named recipes, with what benchmarks/frontier.py measured for each."""

from __future__ import annotations

import textwrap

from rich.table import Table

from fmnist.cli.output import console, layout_width

# Below this many columns the six-column table wraps every cell into a word-per-line stack,
# so each recipe gets a short block of labelled lines instead.
TABLE_MIN_WIDTH = 110


def recipes_cmd() -> None:
    """List the named recipes with their measured accuracy, time and hardware."""
    from fmnist.training.recipes import RECIPES, accuracy_label, measured

    figures = measured()

    def cells(m: dict) -> tuple[str, str, str]:  # accuracy, time per run, hardware
        return accuracy_label(m), f"{m['seconds_mean']:.0f} s", m.get("hardware", "?")

    width = layout_width()
    if width >= TABLE_MIN_WIDTH:
        table = Table("recipe", "model", "for", "test accuracy", "time per run", "measured on")
        for name, recipe in RECIPES.items():
            rows = figures.get(name) or [None]
            for i, m in enumerate(rows):  # one row per machine; the recipe is named on the first
                about = (name, recipe.model, recipe.goal) if i == 0 else ("", "", "")
                table.add_row(*about, *(cells(m) if m else ("not measured yet", "-", "-")))
        console.print(table)
    else:
        for name, recipe in RECIPES.items():
            console.print(f"[bold]{name}[/bold] ({recipe.model})", highlight=False)
            console.print(f"  for: {recipe.goal}", markup=False, highlight=False)
            for m in figures.get(name) or [None]:  # the machine on lines of its own: its name can be long
                if m is None:
                    console.print("  measured: not measured yet", markup=False, highlight=False)
                    continue
                accuracy, seconds, hardware = cells(m)
                console.print(f"  measured: {accuracy}, {seconds} a run", markup=False, highlight=False)
                hardware_lines = textwrap.wrap(f"on {hardware}", width=max(width - 12, 20))
                console.print("\n".join(" " * 12 + line for line in hardware_lines), markup=False, highlight=False)
    console.print("train one: fmnist train --recipe NAME   measure: python benchmarks/frontier.py", markup=False,
                  highlight=False)  # fmt: skip
