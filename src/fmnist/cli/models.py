"""`fmnist models`: every registered model, with what it costs."""

from __future__ import annotations

from rich.table import Table

from fmnist.cli.app import app, console


@app.command("models")
def models_cmd() -> None:
    """List every registered model with its parameters, size and FLOPs."""
    from fmnist.models.registry import count_parameters, create_model, get_entry, list_models, model_size_mb

    try:
        from fmnist.models.flops import forward_flops
    except ImportError:  # pragma: no cover - the FLOP counter ships with the models
        forward_flops = None
    table = Table("model", "family", "params", "size (MB)", "MFLOPs", "description")
    for name in list_models():
        entry = get_entry(name)
        if not entry.has_network:  # a scikit-learn model with no tensor form to count
            table.add_row(name, entry.family, "-", "-", "-", entry.description)
            continue
        model = create_model(name)
        flops = f"{forward_flops(model) / 1e6:,.1f}" if forward_flops else "-"
        table.add_row(name, entry.family, f"{count_parameters(model):,}", f"{model_size_mb(model):.2f}", flops,
                      entry.description)  # fmt: skip
    console.print(table)
