"""The console's pages and files as the app serves them (no lifespan needed: they are static)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.routes.console import STATIC_DIR

PAGES = ("/", "/docs", "/redoc")
ASSET = re.compile(r'(?:src|href)="([^"#][^"]*)"')  # links within the page (#/view) aside
IMPORT = re.compile(r'^import .* from "(\./[^"]+)";$', re.MULTILINE)


@pytest.fixture(scope="module")
def client(tmp_path_factory, make_settings) -> TestClient:
    settings = make_settings(tmp_path_factory.mktemp("console") / "data", api_key="w", read_api_key="r")
    return TestClient(create_app(settings))  # not entered: no model, no gallery


@pytest.mark.parametrize("path", PAGES)
def test_each_page_is_public_and_loads_only_the_service_own_files(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text, "an inline script: the policy would block it"
    assets = ASSET.findall(page.text)
    assert assets and all(asset.startswith("/static/") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_every_module_the_console_imports_is_served(client):
    modules = sorted((STATIC_DIR / "js").glob("*.js"))
    assert modules
    for module in modules:
        for target in IMPORT.findall(module.read_text()):
            path = f"/static/js/{Path(target).name}"
            response = client.get(path)
            assert response.status_code == 200, (module.name, target)
            assert response.headers["content-type"].startswith("text/javascript")


def test_each_vendored_library_ships_with_its_license():
    vendor = STATIC_DIR / "vendor"
    for library in (folder for folder in vendor.iterdir() if folder.is_dir()):
        assert (library / "LICENSE").is_file(), library
        assert re.search(r"-\d+\.\d+\.\d+$", library.name), f"{library.name}: pin the version in the name"


def test_the_console_renders_user_strings_as_text_only():
    """No HTML parsing of strings anywhere in the console's code."""
    for module in (STATIC_DIR / "js").glob("*.js"):
        code = module.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function"):
            assert sink not in code, (module.name, sink)
