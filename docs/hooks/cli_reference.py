"""MkDocs hook: `<!-- cli-reference -->` becomes every command's `--help`, generated from the Typer app.

The app is built as `fmnist` builds it (commands registered, help polished), so the page is the
help a user sees and cannot drift. An import error fails the build instead of leaving a gap.
"""

from __future__ import annotations

MARKER = "<!-- cli-reference -->"
WIDTH = 100


def _sections(command, ctx, path: str, depth: int) -> list[str]:
    help_text = command.get_help(ctx)
    out = [f"{'#' * depth} `{path}`", "", "```text", help_text.rstrip(), "```", ""]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if getattr(sub, "hidden", False):
            continue
        sub_ctx = sub.context_class(sub, info_name=name, parent=ctx, max_content_width=WIDTH, terminal_width=WIDTH)
        out += _sections(sub, sub_ctx, f"{path} {name}", min(depth + 1, 3))
    return out


def cli_reference() -> str:
    import typer.main

    from fmnist.cli.app import app, polish

    command = typer.main.get_command(app)
    polish(command)
    ctx = command.context_class(command, info_name="fmnist", max_content_width=WIDTH, terminal_width=WIDTH)
    return "\n".join(_sections(command, ctx, "fmnist", 2))


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
