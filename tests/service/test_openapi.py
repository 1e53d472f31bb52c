"""service/openapi.py: the schema documents every status and the real error body, keys where required;
schemathesis over every operation of a real `cgd serve` finds no 5xx, no schema violation, no
undocumented status, without and with the API key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import Server, pattern_image, start_server

WRITE_KEY = "schema-write-key"
FUZZ_SECONDS = 15  # per run at most; two runs (benchmarks/fuzz_api.py runs for minutes)
# A schema cannot say "an image": random bytes of a schema-valid upload are rightly refused with 400.
EXCLUDED_CHECKS = "positive_data_acceptance"


def schema_for(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    return create_app(Settings(data_dir=tmp_path, **settings)).openapi()


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_every_error_response_is_the_service_error_body(tmp_path: Path) -> None:
    schema = schema_for(tmp_path)
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert components["Error"]["required"] == ["detail", "code"]
    assert components["Error"]["properties"]["detail"]["type"] == "string"
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and path != "/ready":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, status)


def test_each_operation_documents_the_statuses_it_can_answer(tmp_path: Path) -> None:
    documented = {(method, path): set(operation["responses"])
                  for method, path, operation in operations(schema_for(tmp_path, api_key="w"))}
    everything = {"400", "401", "403", "408", "409", "413", "415", "422", "503", "507"}
    assert everything <= documented["POST", "/gallery"]
    assert {"400", "413", "415", "422", "503"} <= documented["POST", "/search"]
    assert "507" not in documented["POST", "/search"] and "401" not in documented["POST", "/search"]
    assert {"404", "422"} <= documented["GET", "/gallery/{item_id}"]
    assert {"409", "404"} <= documented["POST", "/train/{job_id}/cancel"]
    assert documented["GET", "/ready"] == {"200", "503"}
    assert documented["GET", "/health"] == {"200"}


@pytest.mark.parametrize(("settings", "keyed"), [
    ({}, set()),
    ({"api_key": "w"}, {"write"}),
    ({"api_key": "w", "read_api_key": "r"}, {"write", "read"}),
])
def test_the_key_scheme_is_declared_only_where_a_key_is_required(tmp_path: Path, settings: dict,
                                                                 keyed: set[str]) -> None:
    schema = schema_for(tmp_path, **settings)
    assert ("securitySchemes" in schema["components"]) == bool(keyed)
    for method, path, operation in operations(schema):
        if path in ("/health", "/ready"):
            assert "security" not in operation
            continue
        write = method in ("POST", "PATCH", "DELETE") and path not in ("/search", "/search/batch", "/embed")
        assert ("security" in operation) == (("write" if write else "read") in keyed), (method, path)
        assert ("401" in operation["responses"]) == ("security" in operation), (method, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    running = start_server(root / "data", root / "server.log",
                           {"CGD_API_KEY": WRITE_KEY, "CGD_TRAIN_MAX_MINUTES": "0.02"})
    files = [("files", (f"{i}.png", pattern_image(i, size=64), "image/png")) for i in range(8)]
    labels = {"labels": [f"label{i % 2}" for i in range(8)]}
    assert running.client.post("/gallery", files=files, data=labels,
                               headers={"X-API-Key": WRITE_KEY}).status_code == 201
    yield running
    for job in running.client.get("/train").json()["jobs"]:
        if job["status"] in ("queued", "running"):
            running.client.post(f"/train/{job['id']}/cancel", headers={"X-API-Key": WRITE_KEY})
    running.stop()


@pytest.mark.slow
@pytest.mark.parametrize("key", [None, WRITE_KEY], ids=["without-key", "with-key"])
def test_schemathesis_finds_no_failure(server: Server, tmp_path: Path, key: str | None) -> None:
    url = str(server.client.base_url).rstrip("/")
    report = tmp_path / "report.json"
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
               "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS, "--max-examples", "3",
               "--phases", "coverage,fuzzing",  # stateful runs in benchmarks/fuzz_api.py: it takes minutes
               "--max-time", str(FUZZ_SECONDS), "--request-timeout", "60", "--seed", "1",
               "--report", "json", "--report-json-path", str(report)]
    if key is not None:
        command += ["--header", f"X-API-Key: {key}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=FUZZ_SECONDS + 60)
    result = json.loads(report.read_text())
    assert done.returncode == 0 and not result["failures"] and not result["errors"], done.stdout[-6000:]
    assert result["operations"]["tested"] == result["operations"]["selected"] >= 20, "not every operation ran"
    assert not re.search(r'" 5(?!03|07)\d\d ', server.log.read_text(errors="replace"))  # no 5xx but 503/507
