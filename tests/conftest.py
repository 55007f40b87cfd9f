"""Fixtures shared by the test files."""

import pytest


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core machine two spinning OpenMP threads made a
    training step up to 10x slower; results do not depend on it beyond float noise."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_readme_example(tmp_path):
    """Run the first Python block after a README heading as a script in `tmp_path`, next to a
    `my_data.jsonl` of 20 training conversations, with this checkout's package; returns the
    finished process (its stdout, stderr and return code)."""
    import json
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from sft_helpers.course.data import load_split

    root = Path(__file__).resolve().parents[1]

    def run(heading: str) -> subprocess.CompletedProcess:
        readme = (root / "README.md").read_text(encoding="utf-8")
        code = re.search(r"```python\n(.*?)```", readme[readme.index(heading):], re.S).group(1)
        with open(tmp_path / "my_data.jsonl", "w", encoding="utf-8") as f:
            for r in load_split("train")[:20]:
                f.write(json.dumps({"messages": r["messages"]}) + "\n")
        (tmp_path / "example.py").write_text(code, encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path,
                              timeout=600, env=env)

    return run
