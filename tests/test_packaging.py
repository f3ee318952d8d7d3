"""The project installs as a package: dependencies, package data, the console script, light imports."""

import email
import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import probing.constants

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_wheel_holds_the_package_data_the_script_and_requirements_txt(tmp_path):
    """Built from a copy of the sources (an in-tree build would leave build/ behind)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "probing", source / "probing", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt", "requirements-models.txt"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("probing-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(info))
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()

    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "probing").rglob("*.py")}
    data = {path.relative_to(ROOT).as_posix() for path in (ROOT / "probing" / "data" / "builtin" / "data").glob("*.csv")}
    assert len(data) == 6 and modules | data | {"probing/data/builtin/__init__.py", "probing/data/builtin/NOTICE"} <= names
    example = {path.relative_to(ROOT).as_posix() for path in (ROOT / "probing" / "study" / "example").rglob("*.*")}
    assert "probing/study/example/config.json" in example and example <= names  # the dashboard's first study
    assert "probing = probing.cli.main:main" in entry_points
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == requirement_lines("requirements.txt")
    dev = [r.split(";")[0].strip() for r in requires if 'extra == "dev"' in r]
    assert dev == requirement_lines("requirements-dev.txt")
    models = [r.split(";")[0].strip() for r in requires if 'extra == "models"' in r]
    assert models == requirement_lines("requirements-models.txt")
    assert not any(r.startswith("torch") and "+cpu" in r for r in requires)


def test_the_console_script_runs_the_command_line():
    script = Path(sys.executable).with_name("probing")
    assert script.is_file(), f"no {script}: install the project (`make setup` or `pip install -e '.[dev]'`)"
    finished = subprocess.run([str(script), "data", "--dataset", "missing.csv", "--out", "x.csv"], cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2 and "error: missing.csv: no such file or folder" in finished.stderr
    usage = subprocess.run([str(script), "reproduce", "--epochs", "0"], capture_output=True, text=True, timeout=60)
    assert usage.stderr.startswith("usage: probing reproduce")


def test_option_names_are_declared_once_in_the_light_module():
    """The command line checks options against probing.constants; the engine must use the same objects."""
    from probing.analyses import grid as experiments
    from probing.model import loading as models
    from probing.probes import params as probes
    from probing.store import activations

    assert activations.POSITIONS is probing.constants.POSITIONS
    assert probes.PROBE_KINDS is experiments.PROBE_KINDS is probing.constants.PROBE_KINDS
    assert tuple(probes.HIDDEN_SIZES) + ("mass_mean",) == probing.constants.PROBE_KINDS
    assert experiments.SPLIT_KINDS is probing.constants.SPLIT_KINDS
    assert models.EMBEDDED == probing.constants.EMBEDDED  # a string: `is` would hold for a copy too
    assert tuple(models.DTYPES) == probing.constants.DTYPE_NAMES
    assert inspect.signature(activations.Activations).parameters["max_tokens"].default == probing.constants.MAX_TOKENS


def test_no_machine_paths_in_the_code():
    """Data and caches are found relative to the repository or through options and variables."""
    machine_path = re.compile(r"""["'](/work|/farm|/tmp|/home|/root)/""")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("probing", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if machine_path.search(line)]
    assert found == []
