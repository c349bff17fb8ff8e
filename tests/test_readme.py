"""README.md: every ```python block runs, in order, as one script (a later block may use what an earlier one
trained), in a fresh directory, so the examples never rot. They train the offline demo (data/demo, a tiny encoder),
so this needs no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    return PYTHON_BLOCK.findall(text)


def test_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nprint(a)\n```\n")
    assert blocks == ["a = 1\n", "print(a)\n"]


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "the README shows training and predicting from Python"
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    # A subprocess: the examples run as a reader runs them, in a directory of their own (relative paths land in
    # tmp_path), with the package importable and the logging they configure kept out of this process.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "demo" / "model" / "config.json").is_file()
    printed = done.stdout.strip().splitlines()
    # The demo's last block prints one decision per text: a label, then its scores.
    labels = [line.split()[0] for line in printed[-2:]]
    assert all(label == "Decline" or label.isidentifier() for label in labels), printed
