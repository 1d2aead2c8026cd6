"""What a model was trained with, recorded in its manifest: the library versions and the commit.

A model card's figures can be reproduced only with the same code and the same libraries; the lock
file (training/requirements.lock) pins the libraries, this records which ones a model actually saw."""
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment():
    """Library versions and the git commit of the training code (`dirty` when training/ had
    uncommitted changes: the commit alone then does not reproduce the model)."""
    import numpy
    import onnx
    import onnxruntime
    import torch
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--", "training")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "git_commit": commit,
        "git_dirty": bool(changes) if changes is not None else None,
    }
