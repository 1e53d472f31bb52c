"""docker-compose.scale.yml and docker/nginx.conf: several replicas behind nginx on PostgreSQL and Milvus.

Without Docker here, the Compose file is validated against the vendored Compose Specification schema
and linted with yamllint, and the nginx configuration is parsed with crossplane (nginx's own parser,
ported); the tests then check that the pieces point at each other.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.settings import Settings
from tests.deploy.test_deploy_compose import COMPOSE_FILES, interpolate, load, validator  # noqa: F401
from tests.deploy.test_deploy_dockerfiles import CPU_DOCKERFILE, ROOT, Dockerfile

SCALE_FILE = ROOT / "docker-compose.scale.yml"
NGINX_CONF = ROOT / "docker" / "nginx.conf"
VENV_BIN = Path(sys.executable).parent
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}"
ENVIRONMENT = {"POSTGRES_PASSWORD": "0123abcd"}


def required(value, environment: dict[str, str]):
    """Compose's ${VAR:?message} (an error when VAR is unset or empty), applied to every string."""
    if isinstance(value, dict):
        return {key: required(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [required(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if not environment.get(match.group(1)):
            raise AssertionError(f"docker compose stops: {match.group(2)}")
        return environment[match.group(1)]

    return re.sub(r"\$\{(\w+):\?([^}]*)\}", substitute, value)


def scale(environment: dict[str, str] | None = None) -> dict:
    environment = {**ENVIRONMENT, **(environment or {})}
    return interpolate(required(load(SCALE_FILE), environment), environment)


def nginx_directives() -> list[dict]:
    crossplane = pytest.importorskip("crossplane", reason="install the dev extra (crossplane)")
    parsed = crossplane.parse(str(NGINX_CONF), combine=True)
    assert parsed["status"] == "ok", parsed["errors"]
    return parsed["config"][0]["parsed"]


def find(directives: list[dict], *path: str) -> list[dict]:
    """Every directive at `path` (block names, then the directive's name) under `directives`."""
    found = [d for d in directives if d["directive"] == path[0]]
    if len(path) == 1:
        return found
    return [hit for block in found for hit in find(block.get("block", []), *path[1:])]


def test_scale_file_matches_the_compose_specification(validator):  # noqa: F811
    document = load(SCALE_FILE)
    for variant in (document, scale(), scale({"CGD_REPLICAS": "4", "API_BIND": "0.0.0.0"})):
        errors = sorted(validator.iter_errors(variant), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    broken = copy.deepcopy(document)
    broken["services"]["api"]["deploy"]["replica"] = 2
    assert list(validator.iter_errors(broken)), "the schema must reject a misspelt key"


def test_compose_files_have_no_yamllint_findings():
    yamllint = VENV_BIN / "yamllint"
    if not yamllint.is_file():
        pytest.skip(f"{yamllint} is missing: install the dev extra (yamllint)")
    result = subprocess.run([str(yamllint), "-f", "parsable", "-d", YAMLLINT_CONFIG, str(SCALE_FILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    bad = subprocess.run([str(yamllint), "-f", "parsable", "-d", YAMLLINT_CONFIG, "-"],
                         input="services:\n  api:\n    image: x\n    image: y\n", capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "key-duplicates" in bad.stdout


def test_every_image_is_pinned_and_every_service_has_a_health_check():
    services = scale()["services"]
    assert {"api", "lb", "postgres", "milvus", "etcd", "minio"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        pinned = tag != "latest" and any(c.isdigit() for c in tag)
        assert pinned or "build" in service, f"{name}: pin {image} (only images built here are named freely)"
        assert service["healthcheck"]["test"][0] == "CMD", f"{name} needs a health check"
        assert service.get("restart") == "unless-stopped", name


def test_replicas_run_the_cpu_image_as_the_single_service_does():
    api, single = scale()["services"]["api"], load(COMPOSE_FILES["cpu"])["services"]["api"]
    for key in ("image", "build", "init", "env_file", "stop_grace_period", "shm_size", "healthcheck"):
        assert api[key] == single[key], key
    assert "ports" not in api, "replicas are reached through the load balancer only"
    assert scale()["services"]["api"]["deploy"]["replicas"] == "2"
    assert scale({"CGD_REPLICAS": "5"})["services"]["api"]["deploy"]["replicas"] == "5"


def test_replicas_wait_for_the_engines_and_the_balancer_for_a_healthy_replica():
    services = scale()["services"]
    assert services["api"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                            "milvus": {"condition": "service_healthy"}}
    assert services["milvus"]["depends_on"] == {"etcd": {"condition": "service_healthy"},
                                               "minio": {"condition": "service_healthy"}}
    assert services["lb"]["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_replicas_share_the_gallery_database_milvus_and_the_image_volume():
    document = scale()
    services = document["services"]
    environment = services["api"]["environment"]
    url = urlsplit(environment["CGD_DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
    assert (url.username, url.password, url.path) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], f"/{postgres['POSTGRES_DB']}")
    assert url.password == ENVIRONMENT["POSTGRES_PASSWORD"]
    milvus = urlsplit(environment["CGD_MILVUS_URI"])
    assert (milvus.hostname, milvus.port) == ("milvus", 19530)
    for backend in ("milvus", "pgvector"):
        settings = Settings(**{k.removeprefix("CGD_").lower(): v for k, v in scale(
            {"CGD_VECTOR_BACKEND": backend})["services"]["api"]["environment"].items()})
        assert settings.vector_backend == backend
    data_dir = Dockerfile.read(CPU_DOCKERFILE).env()["CGD_DATA_DIR"]
    assert services["api"]["volumes"] == [f"cgd-data:{data_dir}"]
    assert "cgd-data" in document["volumes"]
    for name in ("postgres", "milvus", "etcd", "minio"):
        (volume,) = services[name]["volumes"]
        assert volume.split(":")[0] in document["volumes"], f"{name} keeps its data in a named volume"


def test_a_missing_database_password_stops_compose():
    for unset in ({}, {"POSTGRES_PASSWORD": ""}):
        with pytest.raises(AssertionError, match=re.escape("set POSTGRES_PASSWORD in ./.env")):
            required(load(SCALE_FILE), unset)


def test_nginx_balances_over_the_api_service_on_the_published_port():
    directives = nginx_directives()
    (upstream,) = find(directives, "http", "upstream")
    (server,) = find(upstream["block"], "server")
    expose = Dockerfile.read(CPU_DOCKERFILE).one("EXPOSE").value
    assert server["args"][0] == f"api:{expose}" and "resolve" in server["args"]
    assert find(directives, "http", "resolver")[0]["args"][0] == "127.0.0.11", "Docker's DNS"
    (proxy_pass,) = find(directives, "http", "server", "location", "proxy_pass")
    assert proxy_pass["args"] == [f"http://{upstream['args'][0]}"]
    (listen,) = find(directives, "http", "server", "listen")
    (mapping,) = scale()["services"]["lb"]["ports"]
    assert mapping == f"127.0.0.1:8000:{listen['args'][0]}"
    (mount,) = scale()["services"]["lb"]["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and target == "/etc/nginx/nginx.conf" and mode == "ro"
    assert "/health" in scale()["services"]["lb"]["healthcheck"]["test"][-1]
    assert f":{listen['args'][0]}/" in scale()["services"]["lb"]["healthcheck"]["test"][-1]


def test_nginx_lets_the_service_answer_oversized_requests():
    (limit,) = find(nginx_directives(), "http", "server", "client_max_body_size")
    assert limit["args"][0].endswith("m")
    assert int(limit["args"][0][:-1]) * 2**20 > Settings.model_fields["max_request_bytes"].default


def test_crossplane_rejects_a_broken_nginx_config(tmp_path: Path):
    crossplane = pytest.importorskip("crossplane", reason="install the dev extra (crossplane)")
    broken = tmp_path / "nginx.conf"
    broken.write_text(NGINX_CONF.read_text(encoding="utf-8").replace("keepalive 32;", "keepalive 32"))
    assert crossplane.parse(str(broken))["status"] == "failed"
