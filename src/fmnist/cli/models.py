"""`fmnist models`: every registered model, with what it costs."""

from __future__ import annotations

from fmnist.cli.output import console


def models_cmd() -> None:
    """List every registered model with its parameters, size and FLOPs."""
    from fmnist.models.flops import forward_flops
    from fmnist.models.registry import count_parameters, create_model, get_entry, list_models, model_size_mb

    rows = [("model", "params", "MB", "MFLOPs", "description")]
    for name in list_models():
        entry = get_entry(name)
        if not entry.has_network:  # a scikit-learn model with no tensor form to count
            rows.append((name, "-", "-", "-", entry.description))
            continue
        model = create_model(name)
        rows.append((name, f"{count_parameters(model):,}", f"{model_size_mb(model):.1f}",
                     f"{forward_flops(model) / 1e6:,.1f}", entry.description))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    # One line per model: the description gets the width that is left, cut rather than wrapped.
    room = max(console.width - sum(widths) - 8, 20)
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:4], widths[1:]))]
        text = row[4] if len(row[4]) <= room else row[4][: room - 1] + "…"
        console.print("  ".join([*cells, text]), markup=False, highlight=False)
