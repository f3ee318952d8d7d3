"""The package's shape, as docs/architecture.md states it: imports run downward, the engine never
imports the dashboard or streamlit, modules stay small, and each option and variable is declared once."""

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from probing import environment
from probing.cli.main import build_parser
from probing.probes.params import TRAINING, ProbeConfig
from probing.study.config import SteeringConfig, StudyConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "probing"
FLOORS = {"constants": 0, "environment": 0, "options": 0, "formatting": 0, "housekeeping": 0, "probes.params": 0,
          "study.config": 0, "study.reporter": 0, "data": 1, "model": 1, "probes": 2, "store": 2, "analyses": 3,
          "study": 4, "cli": 5, "dashboard": 5}
"""docs/architecture.md's floors: a module imports from its own package or a lower floor."""
MAX_LINES = 450


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _home(module: str) -> str | None:
    """The entry of FLOORS a module belongs to (the longest that prefixes it)."""
    name = module.removeprefix("probing.")
    return max((key for key in FLOORS if name == key or name.startswith(f"{key}.")), key=len, default=None)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether inside a function) for every probing import outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    hidden = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
              and getattr(branch.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(branch)}
    lazy = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "probing":
            names = [f"probing.{alias.name}" for alias in node.names] if node.module == "probing" else [node.module]
            found += [(name, id(node) in lazy) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in lazy) for alias in node.names if alias.name.split(".")[0] == "probing"]
    return found


def test_imports_run_downward():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        home = _home(module)
        if home is None:  # probing/__init__.py and __main__.py: the lazy public names and the entry point
            continue
        for target, lazy in _imports(path):
            there = _home(target)
            if there is None or there == home or FLOORS[there] < FLOORS[home]:
                continue
            if home == "study.config" and lazy:  # resolving a value on demand: see docs/architecture.md
                continue
            if FLOORS[there] == 0 and FLOORS[home] == 0:
                continue
            wrong.append(f"{module} (floor {FLOORS[home]}) imports {target} (floor {FLOORS[there]})")
    assert wrong == []


def test_the_engine_imports_neither_streamlit_nor_the_dashboard():
    found = [f"{path.relative_to(ROOT)}: {target}" for path in sorted(PACKAGE.rglob("*.py"))
             if "dashboard" not in path.parts for target in _imports(path) if target[0].startswith("probing.dashboard")]
    found += [str(path.relative_to(ROOT)) for path in sorted(PACKAGE.rglob("*.py"))
              if re.search(r"^\s*(import|from) streamlit\b", path.read_text(), re.M)]
    assert found == []


def test_no_module_is_over_450_lines_unless_the_architecture_says_why():
    listed = (ROOT / "docs" / "architecture.md").read_text().split("## Modules over ~450 lines", 1)[1]
    long = [str(path.relative_to(ROOT)) for folder in ("probing", "pages") for path in sorted((ROOT / folder).rglob("*.py"))
            if len(path.read_text().splitlines()) > MAX_LINES]
    assert [path for path in long if f"`{path}`" not in listed] == []


@pytest.mark.parametrize("name", TRAINING)
def test_the_grid_s_training_options_are_the_probe_s_own_declarations(name):
    probe, study = ({spec.name: spec for spec in fields(options)}[name] for options in (ProbeConfig, StudyConfig))
    assert study.default == probe.default
    assert {key: study.metadata[key] for key in ("help", "check", "read", "choices")} == \
           {key: probe.metadata[key] for key in ("help", "check", "read", "choices")}


def test_probe_parameters_are_its_constructor_s_arguments():
    from probing.probes.estimators import Probe, make_probe

    parameters = [spec.name for spec in fields(ProbeConfig)]
    assert list(make_probe("tiny").get_params()) == parameters
    assert [name for name in Probe.__dataclass_fields__ if not name.endswith("_")] == parameters


@pytest.mark.parametrize("command, options", [("reproduce", StudyConfig), ("steer", SteeringConfig)])
def test_every_flag_comes_from_a_config_field(command, options):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001 - argparse keeps them here
    flags = {action.dest for action in sub._actions}  # noqa: SLF001
    declared = {spec.name for spec in fields(options) if spec.metadata["group"] in
                ({"steering"} if options is SteeringConfig else {"model", "dataset", "extraction", "grid", "analysis"})}
    assert declared <= flags


def test_environment_variables_are_read_only_through_probing_environment():
    reads = re.compile(r"os\.environ\.get\(\s*[\"'](PROBING_\w+)|os\.environ\[\s*[\"'](PROBING_\w+)|getenv\(\s*[\"'](PROBING_\w+)")
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for folder in ("probing", "pages")
             for path in sorted((ROOT / folder).rglob("*.py")) if path.name != "environment.py"
             for match in reads.finditer(path.read_text())]
    assert found == []
    named = set(re.findall(r"\bPROBING_[A-Z_]+\b", "\n".join(path.read_text() for folder in ("probing", "pages")
                                                                 for path in (ROOT / folder).rglob("*.py"))))
    assert named <= set(environment.VARIABLES)
