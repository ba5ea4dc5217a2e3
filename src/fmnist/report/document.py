"""The report as data: sections of blocks, rendered to Markdown here and to HTML in report.html.

Sections build blocks from numbers; renderers never compute anything. Inline text may use
**bold** and `code`, which both renderers understand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Text:
    text: str


@dataclass
class Takeaway:
    """The plain-language conclusion a section draws from its numbers.

    `headline` is the shortest version (for the key findings at the top): with several
    models, the sentence about the most accurate one.
    """

    text: str
    headline: str = ""


@dataclass
class Banner:
    """What a reader must see before any figure (a smoke run is not a trained model)."""

    text: str


@dataclass
class Note:
    """Caveats and skipped analyses, said out loud rather than left out silently."""

    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l"/"r" per column; default: first left, the rest right


@dataclass
class Image:
    path: Path
    alt: str
    caption: str = ""


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Pre:
    text: str


@dataclass
class Heading:
    text: str


@dataclass
class Details:
    """Long material (layer listings): folded in HTML, a plain sub-heading in Markdown."""

    summary: str
    blocks: list = field(default_factory=list)


Block = Text | Takeaway | Banner | Note | Table | Image | Bullets | Pre | Heading | Details


@dataclass
class Section:
    number: int | None
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def heading(self) -> str:
        return f"{self.number}. {self.title}" if self.number is not None else self.title

    @property
    def anchor(self) -> str:
        return f"s-{self.key}"

    def takeaways(self) -> list[str]:
        return [b.headline or b.text for b in self.blocks if isinstance(b, Takeaway)]


@dataclass
class Document:
    title: str
    intro: list[Block]
    sections: list[Section]
    footer: str = ""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_align(table: Table) -> str:
    align = table.align or "l" + "r" * (len(table.headers) - 1)
    return "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"


def markdown_blocks(blocks: list[Block], folder: Path) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Takeaway):
            lines += [f"> **Takeaway:** {block.text}", ""]
        elif isinstance(block, Banner):
            lines += [f"> **⚠ {block.text}**", ""]
        elif isinstance(block, Note):
            lines += [f"*Note: {block.text}*", ""]
        elif isinstance(block, Heading):
            lines += [f"### {block.text}", ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            lines.append(_md_align(block))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Image):
            rel = block.path.relative_to(folder).as_posix() if block.path.is_relative_to(folder) else str(block.path)
            lines += [f"![{block.alt}]({rel})", ""]
            if block.caption:
                lines += [f"*{block.caption}*", ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Pre):
            lines += ["```", block.text.rstrip("\n"), "```", ""]
        elif isinstance(block, Details):
            lines += [f"#### {block.summary}", ""] + markdown_blocks(block.blocks, folder)
    return lines


def render_markdown(doc: Document, folder: Path) -> str:
    lines = [f"# {doc.title}", ""] + markdown_blocks(doc.intro, folder)
    lines += ["## Contents", ""]
    lines += [f"- [{s.heading}](#{_md_slug(s.heading)})" for s in doc.sections] + [""]
    for section in doc.sections:
        lines += [f"## {section.heading}", ""] + markdown_blocks(section.blocks, folder)
    if doc.footer:
        lines += ["---", "", doc.footer, ""]
    return "\n".join(lines)


def _md_slug(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")
