"""docker-compose.yml and docker-compose.cpu.yml: valid Compose files that run the images as documented.

No `docker compose` exists here, so the files are validated against the Compose Specification's JSON
schema, vendored as tests/deploy/compose-spec.json (source and version: compose-spec.SOURCE.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.test_deploy_dockerfiles import CPU_DOCKERFILE, GPU_DOCKERFILE, ROOT, Dockerfile

SCHEMA_PATH = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
COMPOSE_FILES = {"gpu": ROOT / "docker-compose.yml", "cpu": ROOT / "docker-compose.cpu.yml"}
DOCKERFILE_OF = {"gpu": GPU_DOCKERFILE, "cpu": CPU_DOCKERFILE}
SERVICE = "api"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def interpolate(value, environment: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default} substitution, applied to every string."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        if operator == ":-":
            return environment.get(name) or default
        if operator == "-":
            return environment.get(name, default)
        if name not in environment:
            raise AssertionError(f"${{{name}}} has no default: `docker compose` would warn and use ''")
        return environment[name]

    return re.sub(r"\$\{(\w+)(?:(:?-)([^}]*))?\}", substitute, value)


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module", params=sorted(COMPOSE_FILES))
def kind(request) -> str:
    return request.param


def service_of(kind: str, environment: dict[str, str] | None = None) -> dict:
    return interpolate(load(COMPOSE_FILES[kind]), environment or {})["services"][SERVICE]


def test_vendored_schema_is_the_recorded_one():
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "compose-spec.json changed: update SCHEMA_SHA256 and compose-spec.SOURCE.md together"
    )


def test_compose_file_matches_the_compose_specification(validator, kind):
    document = load(COMPOSE_FILES[kind])
    for variant in (document, interpolate(document, {}), interpolate(document, {"API_BIND": "0.0.0.0"})):
        errors = sorted(validator.iter_errors(variant), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_rejects_what_compose_rejects(validator):
    """The validator is not vacuous: misspelt keys and wrong types in this very file are errors."""
    document = load(COMPOSE_FILES["gpu"])
    misspelt = copy.deepcopy(document)
    misspelt["services"][SERVICE]["healthcheck"]["intervall"] = "30s"
    wrong_type = copy.deepcopy(document)
    wrong_type["services"][SERVICE]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = [1]
    unknown_top_level = {**document, "service": {}}
    for broken in (misspelt, wrong_type, unknown_top_level):
        assert list(validator.iter_errors(broken))


def test_cpu_file_is_the_gpu_file_without_the_gpu():
    gpu, cpu = load(COMPOSE_FILES["gpu"]), load(COMPOSE_FILES["cpu"])
    assert gpu["name"] == cpu["name"], "one project name, so both files use the same data volume"
    assert gpu["volumes"] == cpu["volumes"]
    gpu_service, cpu_service = gpu["services"][SERVICE], cpu["services"][SERVICE]
    assert cpu_service["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert gpu_service["build"]["dockerfile"] == "docker/Dockerfile"
    assert cpu_service["image"] != gpu_service["image"]
    assert "deploy" not in cpu_service
    differing = {"image", "build", "deploy"}
    assert {k: v for k, v in gpu_service.items() if k not in differing} == {
        k: v for k, v in cpu_service.items() if k not in differing
    }
    assert {k: v for k, v in gpu_service["build"].items() if k != "dockerfile"} == {
        k: v for k, v in cpu_service["build"].items() if k != "dockerfile"
    }


def test_gpu_service_reserves_an_nvidia_gpu():
    devices = service_of("gpu")["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_build_uses_the_repository_root_and_the_dockerfile_exists(kind):
    build = service_of(kind)["build"]
    assert build["context"] == "."
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE_OF[kind].resolve()


def test_data_directory_is_a_named_volume(kind):
    document = load(COMPOSE_FILES[kind])
    service = document["services"][SERVICE]
    data_dir = Dockerfile.read(DOCKERFILE_OF[kind]).env()["CGD_DATA_DIR"]
    named = [v.split(":") for v in service["volumes"] if v.split(":")[0] in document["volumes"]]
    assert [target for _, target in named] == [data_dir]


def test_published_port_reaches_the_served_port_on_localhost_by_default(kind):
    dockerfile = Dockerfile.read(DOCKERFILE_OF[kind])
    (mapping,) = service_of(kind)["ports"]
    assert mapping == f"127.0.0.1:8000:{dockerfile.one('EXPOSE').value}"
    (custom,) = service_of(kind, {"API_BIND": "0.0.0.0", "API_PORT": "9000"})["ports"]
    assert custom == "0.0.0.0:9000:8000"


def test_healthcheck_restart_and_signals(kind):
    service = service_of(kind)
    options, command = Dockerfile.read(DOCKERFILE_OF[kind]).healthcheck()
    health = service["healthcheck"]
    assert health["test"] == ["CMD", *command], "the Compose health check must be the image's HEALTHCHECK"
    assert {
        key.replace("_", "-"): health[key] for key in ("interval", "timeout", "start_period", "retries")
    } == {key: (int(value) if key == "retries" else value) for key, value in options.items()}
    assert service["restart"] == "unless-stopped"
    assert service["init"] is True
    grace = int(service["stop_grace_period"].removesuffix("s"))
    serve_source = (ROOT / "service" / "cli" / "serve.py").read_text(encoding="utf-8")
    drain = int(re.search(r"timeout_graceful_shutdown=(\d+)", serve_source).group(1))
    assert grace > drain, "docker stop must wait longer than the server drains requests"


def test_settings_come_from_an_optional_env_file(kind):
    service = service_of(kind)
    assert service["env_file"] == [{"path": "cgd.env", "required": False}]
    assert "environment" not in service, "`environment` would override cgd.env and the image's ENV"
