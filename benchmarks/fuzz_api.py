"""Schemathesis over every operation of a real `cgd serve`, without and with the API key, for a while.

Starts the service on 127.0.0.1 with a write key, a tiny training budget and a small labelled gallery
of generated images (enough labels for `POST /train` to start), then runs `schemathesis run` against
its OpenAPI schema twice: without a key (reads pass, writes must answer 401) and with the write key.
Every check runs except `positive_data_acceptance` (a schema cannot say "an image": random bytes of a
schema-valid upload are rightly refused with 400). Training jobs the fuzzer starts are cancelled at the
end. Prints one JSON line per run: test cases, failures by check, operations, seconds, server 5xx.

    nice -n 10 .venv/bin/python benchmarks/fuzz_api.py --minutes 5 --examples 30
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from local_service import free_port, wait_ready
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("fuzz_api")
WRITE_KEY = "fuzz-write-key"
CHECKS_EXCLUDED = "positive_data_acceptance"


def png(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 10 + seed).convert("RGB").rotate(seed * 7).save(buffer, "PNG")
    return buffer.getvalue()


def seed_gallery(client: httpx.Client, labels: int, per_label: int) -> None:
    """A small labelled gallery, enough for a training job to start."""
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(labels * per_label)]
    data = {"labels": [f"label{i % labels}" for i in range(len(files))],
            "external_ids": [f"seed/{i}" for i in range(len(files))]}
    response = client.post("/gallery", files=files, data=data, headers={"X-API-Key": WRITE_KEY})
    response.raise_for_status()


def cancel_jobs(client: httpx.Client) -> int:
    """Cancel every queued or running job; returns how many."""
    cancelled = 0
    for job in client.get("/train", params={"limit": 1000}).json()["jobs"]:
        if job["status"] in ("queued", "running"):
            client.post(f"/train/{job['id']}/cancel", headers={"X-API-Key": WRITE_KEY})
            cancelled += 1
    return cancelled


def schemathesis(url: str, *, key: str | None, examples: int, seconds: float, seed: int,
                 report: Path) -> dict:
    """One `schemathesis run`; returns the figures of its JSON report."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
               "--checks", "all", "--exclude-checks", CHECKS_EXCLUDED, "--max-examples", str(examples),
               "--max-time", str(int(seconds)), "--request-timeout", "60", "--seed", str(seed),
               "--report", "json", "--report-json-path", str(report)]
    if key is not None:
        command += ["--header", f"X-API-Key: {key}"]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=report.parent, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    result = json.loads(report.read_text())
    failures = Counter(failure.get("title", failure.get("code", "?")) for failure in result["failures"])
    if done.returncode != 0:
        LOG.warning("schemathesis exited with %d:\n%s", done.returncode, done.stdout[-4000:])
    return {"key": key is not None, "exit_code": done.returncode, "seconds": round(elapsed, 1),
            "operations": result["operations"]["tested"], "test_cases": result["test_cases"]["generated"],
            "unique_failures": result["test_cases"]["unique_failures"], "failures": dict(failures),
            "errors": len(result["errors"]), "phases": {k: v["status"] for k, v in result["phases"].items()}}


def server_errors(log: Path) -> int:
    """Responses with a 5xx status other than 503/507 in uvicorn's access log."""
    pattern = re.compile(r'" (5\d\d) ')
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if (match := pattern.search(line)) and match.group(1) not in ("503", "507"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="time budget of each of the two runs")
    parser.add_argument("--examples", type=int, default=30, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="cgd-fuzz-") as tmp:
        work = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CGD_DATA_DIR": str(work / "data"), "CGD_PORT": str(port), "CGD_DEVICE": "cpu",
               "CGD_API_KEY": WRITE_KEY, "CGD_TRAIN_MAX_MINUTES": "0.05"}
        log = work / "server.log"
        with open(log, "w") as log_file:
            server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=REPO, env=env,
                                      stdout=log_file, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                try:
                    wait_ready(client, server)
                except (RuntimeError, TimeoutError):
                    LOG.error("the service did not start:\n%s", log.read_text(errors="replace")[-4000:])
                    raise
                seed_gallery(client, labels=4, per_label=6)
                for key in (None, WRITE_KEY):
                    record = schemathesis(url, key=key, examples=args.examples, seconds=args.minutes * 60,
                                          seed=args.seed, report=work / "report.json")
                    record["server_5xx"] = server_errors(log)
                    record["cancelled_jobs"] = cancel_jobs(client)
                    sys.stdout.write(json.dumps(record) + "\n")
                    sys.stdout.flush()
        finally:
            server.terminate()
            server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
