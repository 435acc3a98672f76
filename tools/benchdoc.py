"""Shared by the tools that record figures: put a labelled section into docs/benchmarks.md."""

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def record(tool: str, label: str, text: str) -> None:
    """Put ``text`` into docs/benchmarks.md between the markers of ``tool`` and ``label``,
    replacing what a run with the same label wrote before (appended the first time)."""
    begin, end = f"<!-- {tool} {label} -->", f"<!-- /{tool} {label} -->"
    body = DOC.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        body = body[:body.index(begin)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(body)
