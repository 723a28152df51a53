"""Every ```python block of docs/integrations.md runs as written (tiny sizes), so the page stays true.

Each block runs in a fresh namespace with a temporary working directory; a block that imports an
optional library (transformers, accelerate, timm, pytorch_optimizer, lightning) is skipped when
that library is not installed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
OPTIONAL = {"transformers", "accelerate", "timm", "pytorch_optimizer", "lightning"}


def _blocks() -> list[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


def _heading(line: int) -> str:
    headings = [
        (number, text[3:].strip())
        for number, text in enumerate(DOC.read_text(encoding="utf-8").splitlines(), start=1)
        if text.startswith("## ")
    ]
    return next((text for number, text in reversed(headings) if number < line), "intro")


def _imported(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


BLOCKS = _blocks()


def test_the_page_has_a_snippet_per_integration():
    sections = {_heading(line) for line, _ in BLOCKS}
    for section in (
        "Hugging Face Trainer",
        "Accelerate in your own loop",
        "PyTorch Lightning",
        "timm",
        "pytorch_optimizer",
        "Mixed precision (GradScaler)",
    ):
        assert section in sections


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}-{_heading(line)}" for line, _ in BLOCKS])
def test_snippet_runs(line, code, tmp_path, monkeypatch):
    for name in sorted(_imported(code) & OPTIONAL):
        pytest.importorskip(name)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; fair to the other processes on the machine
    try:
        exec(compile(code, f"{DOC.name}:{line}", "exec"), {"__name__": f"snippet_line{line}"})
    finally:
        torch.set_num_threads(threads)
