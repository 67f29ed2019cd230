"""The README's Python API block runs as shown and prints the numbers it says it prints."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_python_api_block_prints_what_the_readme_says():
    section = README[README.index("## Python API"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    block = block[:block.index("```")]
    marker = "# prints"
    code, shown = block[:block.index(marker)], block[block.index(marker):].splitlines()[1:]
    expected = [line[2:] for line in shown if line.startswith("# ")]
    assert len(expected) == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Python API)", "exec"), {})
    assert out.getvalue().splitlines() == expected
