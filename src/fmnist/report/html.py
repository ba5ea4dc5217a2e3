"""report.html: one self-contained file (inline CSS, PNGs as base64 data URIs, no scripts)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from fmnist.report.document import (
    Banner,
    Block,
    Bullets,
    Details,
    Document,
    Heading,
    Image,
    Note,
    Pre,
    Table,
    Takeaway,
    Text,
)

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --accent:#0969da; --soft:#f6f8fa; --take:#ddf4ff; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); }
.layout { display:flex; max-width:1400px; margin:0 auto; }
nav { position:sticky; top:0; align-self:flex-start; width:250px; flex:none; max-height:100vh; overflow:auto;
      padding:24px 16px; border-right:1px solid var(--line); font-size:14px; }
nav h2 { font-size:13px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); margin:0 0 8px; }
nav ol { list-style:none; padding:0; margin:0; }
nav li { margin:4px 0; }
nav a { color:var(--fg); text-decoration:none; }
nav a:hover { color:var(--accent); }
main { flex:1; min-width:0; padding:24px 40px 64px; }
h1 { font-size:28px; margin:0 0 12px; }
h2 { font-size:22px; margin:40px 0 12px; padding-top:8px; border-top:1px solid var(--line); }
h3 { font-size:17px; margin:24px 0 8px; }
table { border-collapse:collapse; margin:8px 0 16px; font-size:13.5px; display:block; overflow-x:auto; max-width:100%; }
th, td { border:1px solid var(--line); padding:4px 10px; }
th { background:var(--soft); text-align:left; }
td.r, th.r { text-align:right; font-variant-numeric:tabular-nums; }
tr:nth-child(even) td { background:#fbfcfd; }
figure { margin:12px 0 20px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.takeaway { background:var(--take); border-left:4px solid var(--accent); padding:8px 14px; margin:12px 0;
            border-radius:0 4px 4px 0; }
.banner { background:#fff1e5; border:2px solid #bc4c00; color:#762c00; padding:10px 14px; margin:12px 0;
          border-radius:4px; font-size:16px; }
.note { color:var(--muted); font-style:italic; }
pre { background:var(--soft); padding:10px 14px; overflow-x:auto; font-size:13px; border-radius:4px; }
code { background:var(--soft); padding:1px 4px; border-radius:3px; font-size:90%; }
details { margin:8px 0; }
summary { cursor:pointer; color:var(--accent); }
ul.findings li { margin:4px 0; }
footer { color:var(--muted); font-size:13px; margin-top:48px; }
@media (max-width: 900px) { .layout { display:block; } nav { position:static; width:auto; max-height:none;
  border-right:none; border-bottom:1px solid var(--line); } main { padding:16px; } }
"""

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    out = html.escape(str(text), quote=False)
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<strong>\1</strong>", out)


def _image_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(table: Table) -> str:
    align = table.align or "l" + "r" * (len(table.headers) - 1)
    cls = [' class="r"' if a == "r" else "" for a in align]
    head = "".join(f"<th{c}>{inline(h)}</th>" for h, c in zip(table.headers, cls))
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{inline(v)}</td>" for v, c in zip(row, cls)) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_blocks(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Text):
            parts.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Takeaway):
            parts.append(f'<p class="takeaway"><strong>Takeaway:</strong> {inline(block.text)}</p>')
        elif isinstance(block, Banner):
            parts.append(f'<p class="banner" role="alert"><strong>⚠ {inline(block.text)}</strong></p>')
        elif isinstance(block, Note):
            parts.append(f'<p class="note">Note: {inline(block.text)}</p>')
        elif isinstance(block, Heading):
            parts.append(f"<h3>{inline(block.text)}</h3>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Image):
            caption = f"<figcaption>{inline(block.caption)}</figcaption>" if block.caption else ""
            alt = html.escape(block.alt)
            parts.append(f'<figure><img src="{_image_uri(block.path)}" alt="{alt}">{caption}</figure>')
        elif isinstance(block, Bullets):
            parts.append('<ul class="findings">' + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Pre):
            parts.append(f"<pre>{html.escape(block.text)}</pre>")
        elif isinstance(block, Details):
            parts.append(f"<details><summary>{inline(block.summary)}</summary>{html_blocks(block.blocks)}</details>")
    return "\n".join(parts)


def render_html(doc: Document) -> str:
    toc = "".join(f'<li><a href="#{s.anchor}">{inline(s.heading)}</a></li>' for s in doc.sections)
    body = [f"<h1>{inline(doc.title)}</h1>", html_blocks(doc.intro)]
    for section in doc.sections:
        body.append(f'<section id="{section.anchor}"><h2>{inline(section.heading)}</h2>')
        body.append(html_blocks(section.blocks))
        body.append("</section>")
    footer = f"<footer>{inline(doc.footer)}</footer>" if doc.footer else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n"
        f'<body><div class="layout"><nav><h2>Contents</h2><ol>{toc}</ol></nav>'
        f"<main>{''.join(body)}{footer}</main></div></body></html>\n"
    )
