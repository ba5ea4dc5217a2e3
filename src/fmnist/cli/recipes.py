"""`fmnist recipes`: the named recipes, with what benchmarks/frontier.py measured for each."""

from __future__ import annotations

from rich.table import Table

from fmnist.cli.app import app, console


@app.command("recipes")
def recipes_cmd() -> None:
    """List the named recipes with their measured accuracy, time and hardware."""
    from fmnist.recipes import RECIPES, accuracy_label, measured

    figures = measured()
    table = Table("recipe", "model", "for", "test accuracy", "time per run", "measured on")
    for name, recipe in RECIPES.items():
        m = figures.get(name)
        if m:
            table.add_row(name, recipe.model, recipe.goal, accuracy_label(m),
                          f"{m['seconds_mean']:.0f} s", m.get("hardware", "?"))  # fmt: skip
        else:
            table.add_row(name, recipe.model, recipe.goal, "not measured yet", "-", "-")
    console.print(table)
    console.print("train one: fmnist train --recipe NAME   measure: python benchmarks/frontier.py", markup=False,
                  highlight=False)  # fmt: skip
