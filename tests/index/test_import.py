"""`import index` must stay free of torch (and of the web stack)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_index_does_not_import_torch_or_http() -> None:
    code = ("import sys, index; "
            "print(sorted(m for m in ('torch', 'fastapi', 'starlette', 'httpx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"
