"""The README's Python snippets run as written (hybrid twin, engines)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("heading", [
    pytest.param("## Hybrid twins: train, personalise, predict", marks=pytest.mark.slow),  # ~25 s: `make test-all`
    "## Simulation engines",
    pytest.param("## Virtual trials and schedule optimisation", marks=pytest.mark.slow)])
def test_readme_snippet_runs(heading, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet(heading), f"README {heading}", "exec"), {"__name__": "readme"})
