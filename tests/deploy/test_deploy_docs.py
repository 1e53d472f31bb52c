"""docs/DEPLOYMENT.md matches the code: settings and their defaults, the images, the sizing arithmetic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.test_deploy_dockerfiles import (
    CONSTRAINTS,
    CPU_DOCKERFILE,
    GPU_DOCKERFILE,
    ROOT,
    Dockerfile,
    makefile_variables,
    torch_install,
)

DEPLOYMENT = ROOT / "docs" / "DEPLOYMENT.md"
IMAGES = {"GPU": GPU_DOCKERFILE, "CPU": CPU_DOCKERFILE}


def text() -> str:
    return DEPLOYMENT.read_text(encoding="utf-8")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text(), re.MULTILINE | re.DOTALL)
    assert match, f"docs/DEPLOYMENT.md has no section '## {title}'"
    return match.group(1)


def table(body: str, first_header: str) -> list[list[str]]:
    """Rows (cells stripped) of the Markdown table whose header starts with `first_header`."""
    lines = body.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and line.strip("|").split("|")[0].strip() == first_header
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def settings_table() -> dict[str, tuple[str, str]]:
    """variable -> (default cell, image cell)."""
    rows = table(section("Settings"), "variable")
    return {code_spans(name)[0]: (default, image) for name, default, image, _ in rows}


def test_has_every_section_the_issue_asks_for():
    for title in (
        "Run with Compose on a GPU host",
        "Run with Compose on a CPU-only host",
        "Settings",
        "Serve a trained checkpoint",
        "Back up and restore the data directory",
        "Upgrade",
        "Sizing",
    ):
        assert section(title).strip()


def test_settings_table_lists_every_setting_with_its_default():
    """Needs service/settings.py: its Settings fields and defaults are the table's rows."""
    try:
        from service.settings import Settings
    except ImportError as exc:
        pytest.fail(
            f"service.settings.Settings is not importable yet ({exc}); this test waits on the service"
        )
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "CGD_"
    documented = settings_table()
    fields = {f"{prefix}{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert sorted(documented) == sorted(fields), "the Settings table and service.settings.Settings differ"
    for name, field in fields.items():
        default_cell, _ = documented[name]
        if field.default_factory is not None:  # computed on the machine (from its cores): described in words
            assert default_cell and not default_cell.startswith("`"), f"{name}: say what the default follows"
            continue
        default = field.get_default(call_default_factory=True)
        if default is None:
            assert default_cell.startswith("unset"), f"{name}: default is unset, docs say {default_cell!r}"
            continue
        spans = code_spans(default_cell)
        assert spans, f"{name}: give the default {default!r} in backticks"
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert float(spans[0]) == default, f"{name}: default {default!r}, docs say {default_cell!r}"
        else:
            assert spans[0] == str(default), f"{name}: default {default!r}, docs say {default_cell!r}"


def test_image_column_is_what_the_dockerfiles_set():
    documented = settings_table()
    for kind, path in IMAGES.items():
        image_env = {k: v for k, v in Dockerfile.read(path).env().items() if k.startswith("CGD_")}
        for name, (_, image_cell) in documented.items():
            if not image_cell:
                assert name not in image_env, f"{name} is set in the {kind} image: document it"
                continue
            labelled = dict(re.findall(r"`([^`]*)` \((GPU|CPU)\)", image_cell))
            values = (
                {label: value for value, label in labelled.items()}
                if labelled
                else {kind: code_spans(image_cell)[0]}
            )
            assert image_env.get(name) == values.get(kind), (
                f"{name} in the {kind} image: {image_env.get(name)!r}"
            )
        assert set(image_env) <= set(documented), f"undocumented ENV in the {kind} image"


def test_images_table_names_the_pinned_versions():
    rows = {row[0]: row[1:] for row in table(text(), "")}
    gpu, cpu = Dockerfile.read(GPU_DOCKERFILE), Dockerfile.read(CPU_DOCKERFILE)
    assert code_spans(rows["base image"][0])[0] == gpu.base_images()[0]
    assert code_spans(rows["base image"][1])[0] == cpu.base_images()[0]
    torch_pins = dict(pin.split("==") for pin in makefile_variables()["TORCH"].split())
    for cell, dockerfile in zip(rows["torch, torchvision"], (gpu, cpu), strict=True):
        assert cell.startswith(f"{torch_pins['torch']}, {torch_pins['torchvision']} ")
        assert f"`{torch_install(dockerfile).options['--index-url'].rsplit('/', 1)[1]}` index" in cell
    pins = dict(
        line.split("==")
        for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines()
        if line.startswith("faiss-")
    )
    assert f"`faiss-gpu` {pins['faiss-gpu']}" in rows["FAISS"][0]
    assert f"`faiss-cpu` {pins['faiss-cpu']}" in rows["FAISS"][1]
    assert rows["Dockerfile"] == ["`docker/Dockerfile`", "`docker/Dockerfile.cpu`"]
    assert rows["Compose file"] == ["`docker-compose.yml`", "`docker-compose.cpu.yml`"]
    for cell in rows["Dockerfile"] + rows["Compose file"]:
        assert (ROOT / code_spans(cell)[0]).is_file()


def test_start_command_in_the_docs_is_the_images():
    cmd = " ".join(Dockerfile.read(CPU_DOCKERFILE).exec_form("CMD"))
    assert f"`{cmd}`" in text()
    assert cmd == " ".join(Dockerfile.read(GPU_DOCKERFILE).exec_form("CMD"))


def test_sizing_arithmetic_uses_the_default_embedding_dimension():
    from model.config import CGDConfig

    dim = CGDConfig().embedding_dim
    rows = {code_spans(row[0])[0]: row for row in table(section("Sizing"), "`CGD_INDEX_KIND`")}
    assert f"d = {dim}" in section("Sizing")
    assert rows["Flat"][1].startswith(f"4 · d = {4 * dim} ")
    assert f"{4 * dim / 1e3:.1f} GB" in rows["Flat"][2]
    assert rows["SQ8"][1] == f"d = {dim}" and f"{dim / 1e3:.1f} GB" in rows["SQ8"][2]
    for kind, row in rows.items():
        pq = re.fullmatch(r"IVF(\d+),PQ(\d+)", kind)
        if pq:
            nlist, m = int(pq.group(1)), int(pq.group(2))
            assert row[1] == f"{m} (codes, m = {m}) + 8 (id) = {m + 8}"
            assert f"about {m + 8} MB, plus {round(nlist * dim * 4 / 1e6)} MB of centroids" == row[2]
    assert "benchmarks/index_bench.py" in section("Sizing") and "BENCHMARKS.md" in section("Sizing")


def test_paths_and_files_named_in_the_docs_exist():
    user_files = {"docker-compose.override.yml"}  # an example the operator writes
    for path in re.findall(
        r"`((?:docker|docs|tests|benchmarks)/[\w./-]+|docker-compose[\w.]*\.yml)`", text()
    ):
        if path != "benchmarks/index_bench.py" and path not in user_files:  # the bench lands with index/
            assert (ROOT / path).exists(), f"docs/DEPLOYMENT.md names {path}, which does not exist"
    assert Path(ROOT / "docker" / "backup.py").is_file()


def test_image_build_commands_in_the_docs_match_the_files():
    """Every `docker build -f F -t T .` builds an existing Dockerfile F into the image T that the
    Compose files build from F, and every `docker compose -f X` names an existing Compose file."""
    import yaml

    built_by_compose: dict[str, set[str]] = {}
    for compose in ROOT.glob("docker-compose*.yml"):
        for service in yaml.safe_load(compose.read_text(encoding="utf-8"))["services"].values():
            if "build" in service:
                built_by_compose.setdefault(service["build"]["dockerfile"], set()).add(service["image"])
    builds = re.findall(r"docker build -f (\S+) -t (\S+) \.", text())
    assert len(builds) >= 3, "the CPU, GPU and scale-out build commands"
    for dockerfile, tag in builds:
        assert (ROOT / dockerfile).is_file(), f"docker build names {dockerfile}, which does not exist"
        assert built_by_compose.get(dockerfile) == {tag}, f"{dockerfile} is built as {tag} in the docs"
    for compose_file in set(re.findall(r"docker compose -f (\S+)", text())):
        assert (ROOT / compose_file).is_file(), f"docker compose -f {compose_file}: no such file"


def test_both_images_set_the_huge_pages_tunable_the_sizing_section_names():
    tunable = "glibc.malloc.hugetlb=1"
    assert f"`GLIBC_TUNABLES={tunable} cgd" in section("Sizing")  # how to start cgd serve with it
    for kind, path in IMAGES.items():
        assert Dockerfile.read(path).env().get("GLIBC_TUNABLES") == tunable, f"the {kind} image"
