"""freeze_startup_objects on a real app, in a child process (this one's collector is shared by every test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD_TIMEOUT_S = 900  # 33 s on a quiet machine; a full pass alone took 33-60 s at nice 19, load 13-20
SERVE_AND_COUNT = """
import gc, json, sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.gc_freeze import freeze_startup_objects
from service.settings import Settings

before = gc.get_freeze_count()
settings = Settings(data_dir=sys.argv[1], device="cpu", runtime="torch")
with TestClient(create_app(settings)) as client:
    assert client.get("/health").status_code == 200
    tracked = gc.get_objects()
    model = client.app.state.runtime.worker.embedder.model
    print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "tracked": len(tracked),
                      "model_collectable": any(obj is model for obj in tracked),
                      "again": freeze_startup_objects()}))
"""


def test_the_app_freezes_what_exists_at_its_start_but_not_its_model(tmp_path: Path):
    """Full collections walk only what was made after the start (a few % of the objects), and the
    serving model is among them, so a model swapped out later can still be collected."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CGD_")}
    done = subprocess.run([sys.executable, "-c", SERVE_AND_COUNT, str(tmp_path / "data")], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["before"] == 0
    assert counts["frozen"] > 100_000  # torch, timm, FAISS, FastAPI: about 500,000
    assert counts["tracked"] < counts["frozen"] / 10
    assert counts["model_collectable"]
    assert counts["again"] == 0  # once per process: a second app's start freezes nothing more
