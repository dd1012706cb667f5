"""The README's library example runs as written on the embedded defaults (issue 15)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import relaygate
from tests.integration._proc import clean_env

README = Path(__file__).resolve().parents[2] / "README.md"


def library_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no python block in the README's Library section"
    return found.group(1)


def test_the_readme_library_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(library_example())
    env = clean_env(PYTHONPATH=str(Path(relaygate.__file__).parent.parent))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Hello" and lines[1] == "one two three"
    assert lines[2].startswith("echo:") and "ready" in lines[2]
    assert "Traceback" not in done.stderr
