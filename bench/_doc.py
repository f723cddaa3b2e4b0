"""Shared by the benchmark scripts: write a results block into a docs/ page between two markers."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_block(page: str, text: str, start: str, end: str):
    """Replace the block between ``start`` and ``end`` in docs/<page> (appended when absent), atomically."""
    doc = REPO / "docs" / page
    old = doc.read_text() if doc.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, doc)
