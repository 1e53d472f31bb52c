"""Run Python code in a fresh interpreter where some packages cannot be imported, as if not installed.

A `sitecustomize` module (imported by `site` at start-up, before any code) puts None in `sys.modules`
for each package: Python's own way to block an import. `import pkg` then raises ImportError and
`importlib.util.find_spec("pkg")` returns None, for the code under test as for anything else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_without(packages: list[str], args: list[str], workdir: Path, *, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """`python *args` (from the repository root) with `packages` blocked; its output captured as text."""
    site = workdir / "blocked-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in packages))
    environment = {**os.environ, **(env or {}),
                   "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)
