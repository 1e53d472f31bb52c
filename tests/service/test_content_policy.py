"""`ContentPolicy` on a real Starlette app: the safety headers on pages, JSON and errors alike."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from service.content_policy import CONTENT_SECURITY_POLICY, SAFETY_HEADERS, ContentPolicy


def app_with_policy() -> FastAPI:
    app = FastAPI()

    @app.get("/page")
    def page() -> dict:
        return {"ok": True}

    @app.get("/own")
    def own() -> dict:
        raise HTTPException(418, headers={"Content-Security-Policy": "default-src 'none'"})

    app.add_middleware(ContentPolicy)
    return app


def test_every_response_carries_the_headers():
    client = TestClient(app_with_policy())
    for path in ("/page", "/missing"):
        response = client.get(path)
        for name, value in SAFETY_HEADERS.items():
            assert response.headers[name] == value, (path, name)


def test_the_policy_forbids_inline_scripts_eval_and_other_origins():
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    for directive, sources in directives.items():
        assert "http" not in sources and "*" not in sources, directive


def test_a_response_that_sets_its_own_policy_keeps_it():
    response = TestClient(app_with_policy()).get("/own")
    assert response.status_code == 418
    assert response.headers["content-security-policy"] == "default-src 'none'"
