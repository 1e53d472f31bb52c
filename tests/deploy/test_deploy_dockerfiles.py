"""The Dockerfiles against the project's own set-up commands (Makefile, pyproject.toml, README.md).

No Docker engine exists on these machines, so the images are never built here. Instead these tests
read docker/Dockerfile (GPU) and docker/Dockerfile.cpu and check that they install what `make install`
installs, start what `make run` starts, and keep the deployment promises (non-root, /data volume,
health check, pinned versions). The Dockerfile parser below is shared by the other tests/deploy files.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
GPU_DOCKERFILE = ROOT / "docker" / "Dockerfile"
CPU_DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
DOCKERFILES = {"gpu": GPU_DOCKERFILE, "cpu": CPU_DOCKERFILE}
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- a small Dockerfile reader


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    value: str  # the rest of the logical line, continuation lines joined
    stage: int  # index of the FROM stage it belongs to (-1 before the first FROM)


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: tuple[Instruction, ...]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        """Logical instructions: comment lines dropped (also inside continuations), `\\` lines joined."""
        instructions: list[Instruction] = []
        stage = -1
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            logical = (pending + line).strip()
            pending = ""
            keyword, _, value = logical.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                stage += 1
            instructions.append(Instruction(keyword, value.strip(), stage))
        if pending:
            raise ValueError(f"{path}: the last instruction ends with a line continuation")
        return cls(path, tuple(instructions))

    def all(self, keyword: str, stage: int | None = None) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword and (stage is None or i.stage == stage)]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if len(found) != 1:
            raise AssertionError(f"{self.path.name}: expected one {keyword}, found {len(found)}")
        return found[0]

    @property
    def final_stage(self) -> int:
        return max(i.stage for i in self.instructions)

    def base_images(self) -> list[str]:
        return [shlex.split(i.value)[0] for i in self.all("FROM")]

    def env(self, stage: int | None = None) -> dict[str, str]:
        """ENV of a stage (default: the final one, i.e. the image's), in order; values unexpanded."""
        stage = self.final_stage if stage is None else stage
        values: dict[str, str] = {}
        for instruction in self.all("ENV", stage):
            for token in shlex.split(instruction.value):
                name, sep, value = token.partition("=")
                if not sep:
                    raise AssertionError(f"{self.path.name}: use ENV NAME=value, not {instruction.value!r}")
                values[name] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """CMD/ENTRYPOINT in JSON (exec) form; the shell form is refused (no signals through sh)."""
        value = self.one(keyword).value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{self.path.name}: {keyword} must be a JSON array, got {value!r}") from exc
        return parsed

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options, command) of the HEALTHCHECK instruction."""
        options_part, sep, command = self.one("HEALTHCHECK").value.partition("CMD ")
        if not sep:
            raise AssertionError(f"{self.path.name}: HEALTHCHECK without CMD")
        options = dict(token.lstrip("-").split("=", 1) for token in shlex.split(options_part))
        return options, json.loads(command)

    def runs(self, stage: int | None = None) -> list[Instruction]:
        return self.all("RUN", stage)


@dataclass(frozen=True)
class PipInstall:
    """One `pip install` inside a RUN: its requirement arguments and options."""

    requirements: tuple[str, ...]
    options: dict[str, str]
    flags: frozenset[str]
    stage: int
    order: int  # position of the RUN among all instructions


PIP_OPTIONS_WITH_VALUE = {
    "--index-url",
    "-i",
    "--extra-index-url",
    "--constraint",
    "-c",
    "--requirement",
    "-r",
}


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell-form RUN: tokens split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def pip_installs(dockerfile: Dockerfile) -> list[PipInstall]:
    installs = []
    for order, instruction in enumerate(dockerfile.instructions):
        if instruction.keyword != "RUN":
            continue
        for tokens in shell_commands(instruction.value):
            if "pip" not in tokens or "install" not in tokens:
                continue
            args = tokens[tokens.index("install") + 1 :]
            requirements, options, flags = [], {}, set()
            iterator = iter(args)
            for arg in iterator:
                if arg in PIP_OPTIONS_WITH_VALUE:
                    options[arg] = next(iterator)
                elif arg.startswith("-"):
                    flags.add(arg)
                else:
                    requirements.append(arg)
            installs.append(
                PipInstall(tuple(requirements), options, frozenset(flags), instruction.stage, order)
            )
    return installs


def project_install(dockerfile: Dockerfile) -> PipInstall:
    """The `pip install ".[extra]"` of the project itself."""
    found = [p for p in pip_installs(dockerfile) if any(r.startswith(".") for r in p.requirements)]
    assert len(found) == 1, f"{dockerfile.path.name}: expected one pip install of the project, found {found}"
    return found[0]


def torch_install(dockerfile: Dockerfile) -> PipInstall:
    found = [
        p
        for p in pip_installs(dockerfile)
        if any(canonicalize_name(Requirement(r).name) == "torch" for r in p.requirements if r[0] != ".")
    ]
    assert len(found) == 1, f"{dockerfile.path.name}: expected one pip install of torch, found {found}"
    return found[0]


def extras_of(requirement: str) -> set[str]:
    match = re.fullmatch(r"\.\[([a-z0-9_,-]+)\]", requirement)
    assert match, f"expected a local install with extras like .[cpu], got {requirement!r}"
    return set(match.group(1).split(","))


# ---------------------------------------------------------------- the project's own commands


def makefile_variables() -> dict[str, str]:
    values = {}
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*?)\s*$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:", line):
            recipe = []
            for body in lines[index + 1 :]:
                if not body.startswith("\t"):
                    break
                recipe.append(body.strip())
            return recipe
    raise AssertionError(f"Makefile has no target {target!r}")


def makefile_install_extras() -> set[str]:
    """Extras of the project install in the Makefile's `$(BIN)/cgd` rule (what `make run` installs)."""
    for command in makefile_recipe("$(BIN)/cgd"):
        match = re.search(r"pip install .*-e \"\.\[([a-z0-9_,-]+)\]\"", command)
        if match:
            return set(match.group(1).split(","))
    raise AssertionError('the Makefile\'s $(BIN)/cgd rule does not pip install -e ".[...]"')


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request) -> Dockerfile:
    return Dockerfile.read(DOCKERFILES[request.param])


# ---------------------------------------------------------------- the reader itself


def test_reader_joins_continuations_and_drops_comments(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# syntax=docker/dockerfile:1\nFROM a:1 AS builder\nRUN one \\\n    # a comment\n"
        '    && two\nFROM b:2\nENV A=1 \\\n    B="x y"\nCMD ["run", "it"]\n',
        encoding="utf-8",
    )
    parsed = Dockerfile.read(path)
    assert [i.keyword for i in parsed.instructions] == ["FROM", "RUN", "FROM", "ENV", "CMD"]
    assert parsed.runs()[0].value == "one && two"
    assert shell_commands("a 'x && y'; b | c && pip install -c k \"p q\"") == [
        ["a", "x && y"],
        ["b"],
        ["c"],
        ["pip", "install", "-c", "k", "p q"],
    ]
    assert parsed.env() == {"A": "1", "B": "x y"}
    assert parsed.env(stage=0) == {}
    assert parsed.exec_form("CMD") == ["run", "it"]
    assert parsed.base_images() == ["a:1", "b:2"]


# ---------------------------------------------------------------- same commands as the README/Makefile


def test_readme_quick_start_uses_make_run_and_make_test():
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.fail(
            "README.md is missing: its Quick start must give `make run` and `make test`, the commands "
            "whose install and start steps the Dockerfiles repeat (see docs/DEPLOYMENT.md)"
        )
    text = readme.read_text(encoding="utf-8")
    assert re.search(r"^\s*make run\b", text, re.MULTILINE), "README.md does not show `make run`"
    assert re.search(r"^\s*make test\b", text, re.MULTILINE), "README.md does not show `make test`"


def test_start_command_is_the_makefile_run_target(dockerfile):
    """CMD = the `make run` recipe with the binary from the venv's PATH, HOST=0.0.0.0, PORT=EXPOSE."""
    cmd = dockerfile.exec_form("CMD")
    variables = makefile_variables()
    (recipe,) = makefile_recipe("run")
    recipe_tokens = shlex.split(recipe)
    assert recipe_tokens[0] == "$(BIN)/" + cmd[0], f"make run starts {recipe_tokens[0]}, the image {cmd[0]}"
    assert len(cmd) == len(recipe_tokens), f"make run: {recipe_tokens}; image CMD: {cmd}"
    substituted = {}
    for make_token, image_token in zip(recipe_tokens[1:], cmd[1:], strict=True):
        variable = re.fullmatch(r"\$\((\w+)\)", make_token)
        if variable:
            substituted[variable.group(1)] = image_token
        else:
            assert make_token == image_token, f"make run: {recipe_tokens}; image CMD: {cmd}"
    assert substituted.get("HOST") == "0.0.0.0", "the container must listen on all interfaces"
    assert substituted.get("PORT") == variables["PORT"], "the image serves on another port than `make run`"
    assert dockerfile.one("EXPOSE").value == variables["PORT"]
    assert not dockerfile.all("ENTRYPOINT"), "an ENTRYPOINT would change what CMD runs"
    image_env = dockerfile.env()
    assert image_env["CGD_HOST"] == substituted["HOST"] and image_env["CGD_PORT"] == substituted["PORT"]


@functools.cache
def command_help(script: str, subcommand: str) -> str:
    """`script subcommand --help` of this venv's console script (run once per pair)."""
    command = [str(VENV_BIN / script), subcommand, "--help"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def test_start_command_is_a_console_script_with_those_flags(dockerfile):
    cmd = dockerfile.exec_form("CMD")
    scripts = pyproject()["project"]["scripts"]
    assert cmd[0] in scripts, f"{cmd[0]} is not a [project.scripts] entry ({sorted(scripts)})"
    help_text = command_help(cmd[0], cmd[1])
    for flag in (token for token in cmd[2:] if token.startswith("--")):
        assert flag in help_text, f"`{cmd[0]} {cmd[1]}` has no {flag} option"


def test_torch_pins_are_the_makefiles_and_installed_first(dockerfile):
    makefile_pins = set(makefile_variables()["TORCH"].split())
    torch = torch_install(dockerfile)
    assert set(torch.requirements) == makefile_pins, (
        f"Makefile TORCH: {makefile_pins}; image: {torch.requirements}"
    )
    assert torch.order < project_install(dockerfile).order, "torch must be installed before the project"
    assert "--extra-index-url" not in torch.options, "an extra index lets PyPI's torch build win"


def test_cpu_image_installs_the_makefile_extras_without_dev():
    install = project_install(Dockerfile.read(CPU_DOCKERFILE))
    (requirement,) = install.requirements
    assert extras_of(requirement) == makefile_install_extras() - {"dev"}


def test_each_image_installs_exactly_one_faiss_extra():
    optional = pyproject()["project"]["optional-dependencies"]
    faiss_of = {
        extra: {canonicalize_name(Requirement(r).name) for r in optional[extra]} for extra in ("cpu", "gpu")
    }
    assert "faiss-cpu" in faiss_of["cpu"] and "faiss-gpu" in faiss_of["gpu"]
    for kind, extra in (("cpu", "cpu"), ("gpu", "gpu")):
        (requirement,) = project_install(Dockerfile.read(DOCKERFILES[kind])).requirements
        assert extras_of(requirement) == {extra}, f"the {kind} image must install .[{extra}] only"


def test_every_pip_install_is_cacheless_and_the_project_is_constrained(dockerfile):
    installs = pip_installs(dockerfile)
    assert installs
    for install in installs:
        assert "--no-cache-dir" in install.flags, (
            f"{dockerfile.path.name}: pip install without --no-cache-dir"
        )
    constraint = project_install(dockerfile).options.get("--constraint")
    copied = [i.value.split() for i in dockerfile.all("COPY")]
    assert ["docker/constraints.txt", constraint] in copied, (
        "the project install must use docker/constraints.txt"
    )


def test_constraints_pin_every_runtime_dependency_compatibly():
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = specifier.version
    project = pyproject()["project"]
    direct = (
        project["dependencies"]
        + project["optional-dependencies"]["cpu"]
        + project["optional-dependencies"]["gpu"]
    )
    for text in direct:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in {"torch", "torchvision"}:
            continue  # pinned in the Dockerfiles, from the Makefile (test above)
        assert name in pins, (
            f"add {name}==<tested version> to docker/constraints.txt (pyproject needs {text!r})"
        )
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"docker/constraints.txt pins {name}=={pins[name]}, outside pyproject's {text!r}"
        )
    for name in ("torch", "torchvision"):
        assert name not in pins, f"{name} is pinned by the Makefile's TORCH, not docker/constraints.txt"


def test_base_images_are_pinned_and_stages_share_them(dockerfile):
    images = dockerfile.base_images()
    assert len(images) >= 2, "multi-stage: a builder and a runtime stage"
    assert len(set(images)) == 1, "the runtime stage must match the builder (the venv links its Python)"
    _, _, tag = images[0].partition(":")
    assert re.match(r"\d+\.\d+\.\d+-", tag), f"{images[0]}: pin an exact version tag"


def test_runtime_stage_is_the_builders_venv_run_by_an_unprivileged_user(dockerfile):
    final = dockerfile.final_stage
    copies = [i.value for i in dockerfile.all("COPY", final)]
    assert copies == ["--from=builder /opt/venv /opt/venv", "docker/backup.py /opt/cgd/backup.py"], (
        "the runtime stage copies the venv and the backup script, nothing else"
    )
    assert not [p for p in pip_installs(dockerfile) if p.stage == final], "no installs in the runtime stage"
    assert dockerfile.env()["PATH"].startswith("/opt/venv/bin:")
    (user,) = dockerfile.all("USER", final)
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, (
        "run as a numeric non-root UID:GID"
    )
    setup = " ".join(i.value for i in dockerfile.runs(final))
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup, "the user must exist in /etc/passwd"
    assert re.search(rf"chown {uid}:{gid}|chown \w+:\w+ /data", setup) and "mkdir /data" in setup


def test_data_directory_is_a_volume(dockerfile):
    data_dir = dockerfile.env()["CGD_DATA_DIR"]
    assert json.loads(dockerfile.one("VOLUME").value) == [data_dir] == ["/data"]


def test_healthcheck_probes_health_on_the_served_port_without_curl(dockerfile):
    options, command = dockerfile.healthcheck()
    port = dockerfile.exec_form("CMD")[dockerfile.exec_form("CMD").index("--port") + 1]
    assert command[:2] == ["python", "-c"], "slim images have no curl: use Python's urllib"
    assert f"http://127.0.0.1:{port}/health" in command[2]
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    compile(command[2], "HEALTHCHECK", "exec")


def test_stop_signal_is_sigterm(dockerfile):
    assert dockerfile.one("STOPSIGNAL").value == "SIGTERM"


# ---------------------------------------------------------------- offline default model


def offline_probe(dockerfile: Dockerfile) -> str:
    (probe,) = [i.value for i in dockerfile.runs() if "cgd embed" in i.value]
    assert probe.startswith("--network=none "), "the probe must run with the network off"
    return probe.removeprefix("--network=none ")


def test_both_images_run_the_same_offline_probe():
    assert offline_probe(Dockerfile.read(GPU_DOCKERFILE)) == offline_probe(Dockerfile.read(CPU_DOCKERFILE))


def _network_off_prefix() -> list[str]:
    """`unshare --net` (a network namespace with no interfaces up) when this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True).returncode == 0:
        return [unshare, "--net"]
    return []


@pytest.mark.slow
def test_offline_probe_of_the_image_passes_here(tmp_path):
    """The image's build-time check (embed one image with the embedded default, network off) passes here.

    It runs with /bin/sh as Docker's RUN does, with the venv first on PATH like the image, and without any
    network namespace access when `unshare --net` is permitted (root, as in CI).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("CGD_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [*_network_off_prefix(), "/bin/sh", "-c", offline_probe(Dockerfile.read(CPU_DOCKERFILE))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "offline default model OK:" in result.stdout
    assert list(tmp_path.iterdir()) == [], "the probe must clean up after itself"


# ---------------------------------------------------------------- build context


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one relative path: the last pattern matching it or a parent wins.

    Supports the syntax used here: `*` and `?` within one path element, `**` across elements, `!` exceptions.
    """
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else "[" + token[1:-1] + "]"
            if token.startswith("[")
            else re.escape(token)
            for token in re.findall(r"\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern)
        )
        regex = regex.replace(".*/", "(.*/)?")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_matcher_follows_docker_rules():
    patterns = ["*", "!model/", "!docker/keep.txt", "**/__pycache__", "**/*.pt"]
    assert dockerignore_excludes(".venv/bin/python", patterns)
    assert dockerignore_excludes("docker/other.txt", patterns)
    assert not dockerignore_excludes("docker/keep.txt", patterns)
    assert not dockerignore_excludes("model/cgd.py", patterns)
    assert dockerignore_excludes("model/__pycache__/cgd.cpython-311.pyc", patterns)
    assert dockerignore_excludes("model/weights.pt", patterns)


def test_build_context_holds_what_the_images_copy_and_nothing_heavy_or_secret():
    patterns = dockerignore_patterns()
    for path in DOCKERFILES.values():
        for copy in Dockerfile.read(path).all("COPY"):
            if copy.value.startswith("--from="):
                continue
            *sources, _ = shlex.split(copy.value)
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file"
                files = (
                    [source]
                    if (ROOT / source).is_file()
                    else [p.relative_to(ROOT).as_posix() for p in (ROOT / source).rglob("*.py")]
                )
                for file in files:
                    assert not dockerignore_excludes(file, patterns), f".dockerignore excludes {file}"
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        "cgd-data/gallery/items.sqlite3",
        "runs/x/last.pt",
        "tests/conftest.py",
        "cgd.env",
        ".env",
        "docs/DEPLOYMENT.md",
        "checkpoints/cgd.pt",
    ):
        assert dockerignore_excludes(heavy, patterns), f".dockerignore lets {heavy} into the build context"
