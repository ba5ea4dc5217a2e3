"""Find measured figures typed by hand into the README and docs/ prose.

A percentage, a duration, a speed-up ratio or a throughput belongs in a rendered block
(`<!-- results: SOURCE -->`, see results_tables.py), where it comes from JSON with its hardware and
command. Outside one, a figure passes only in one of two explicit forms:

    ≥ 94.0% in ≤ 5 s          a target, bound or setting: the figure right after ≥ ≤ < > (or >= <=)
    93.04% <!-- published: seed 004 -->
                              a seed's or a paper's published figure: every figure before the marker
                              on its line; the marker names where the figure was published

FPR@95% names an operating point, not a result, so a figure right after `@` passes too. `28×28` is
a size, not a ratio. Code fences are code or a transcript and are skipped, apart from the comments
(` # ...`) of console and code lines, which are prose; a measured transcript is a rendered block
(as `make run`'s is). Inline code is prose here: a program's output quoted as an example writes
a placeholder for its figures.

    python docs/scripts/prose_figures.py     # exit 1, listing file:line and the figure, where one is typed
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

_WORDS = ("one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|"
          "fifty|sixty|ninety")  # fmt: skip
FIGURE = re.compile(
    rf"""(?P<bound>(?:[≥≤]|[<>]=?)\s?)?    # a target or bound: exempt
    (?<![\w.@])                            # not inside a word or a decimal, not FPR@95%
    (?P<figure>
        [+\-−±]?\d+(?:[.,]\d+)*\s?(?:
            %|\s?per\s?cent\b|\s?(?:percentage\s)?points?\b|\s?pp\b   # a percentage
            |×(?!\s?\d)|x\b(?!\s?\d)                                  # a ratio (28×28 is a size)
            |(?:[µm]?s|sec|seconds?|min|minutes?|h|hours?|days?)\b     # a duration
            |\s?(?:images|requests|views)?/s\b                         # a throughput
        )
        |\b(?:{_WORDS})[\s-](?:seconds?|minutes?|hours?|days?)\b     # "ten minutes"
        |\b(?:half\s)?an\shour\b
    )""",
    re.X | re.I,
)
PUBLISHED = re.compile(r"<!-- published: \S[^>]*?-->")
FENCE = re.compile(r"^\s*(```|~~~)\s*(\S*)")
COMMENT = re.compile(r"\s#\s(.*)$")


def hand_typed_figures(text: str) -> list[tuple[int, str]]:
    """(line number, figure) for each figure in TEXT that is neither a target (right after ≥ ≤ < >)
    nor before a `<!-- published: WHERE -->` marker on its line. A figure may run over a line break."""
    found = []
    for m in FIGURE.finditer(text):
        end_of_line = text.find("\n", m.end())
        rest_of_line = text[m.end() : None if end_of_line < 0 else end_of_line]
        if not m["bound"] and not PUBLISHED.search(rest_of_line):
            found.append((text.count("\n", 0, m.start("figure")) + 1, " ".join(m["figure"].split())))
    return found


def prose(text: str) -> str:
    """TEXT with everything that is not prose blanked, line for line: rendered blocks, fences (but for
    their lines' comments), blockquote markers."""
    lines, rendered, fence = [], False, None
    for line in text.splitlines():
        keep = ""
        if line.startswith("<!-- results: "):
            rendered = True
        elif line.startswith("<!-- /results -->"):
            rendered = False
        elif rendered:
            pass
        elif (opened := FENCE.match(line)) and (fence is None or not opened[2]):
            fence = (opened[2] or "text") if fence is None else None
        elif fence is None:
            keep = re.sub(r"^\s*(?:>\s?)+", "", line)  # a blockquote's > is no bound
        elif fence != "text" and (comment := COMMENT.search(line)):
            keep = comment[1]
        lines.append(keep)
    return "\n".join(lines)


def check(pages: list[Path] = PAGES) -> list[str]:
    """'file:line: figure' for every hand-typed figure in the pages."""
    out = []
    for page in pages:
        name = page.relative_to(REPO) if page.is_relative_to(REPO) else page
        out += [f"{name}:{n}: {figure}" for n, figure in hand_typed_figures(prose(page.read_text(encoding="utf-8")))]
    return out


def main() -> int:
    typed = check()
    for line in typed:
        print(line, file=sys.stderr)
    if typed:
        print("error: render these figures from JSON (docs/scripts/results_tables.py), link to the table that "
              "has them, or mark a target (≥ 94%) or a published figure (<!-- published: WHERE -->)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
