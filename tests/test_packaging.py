"""The package installs as a wheel: the shipped configs are in it as package data, and
nothing outside ``jaxformer/`` is needed (the configs are read with importlib.resources)."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_holds_the_shipped_configs(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"   # build from a copy, so the repository gets no build/ folder
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "jaxformer", src / "jaxformer", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("jaxformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "jaxformer" / "configs").glob("*.yaml"))
    assert shipped and sorted(n.split("/")[-1] for n in names if n.startswith("jaxformer/configs/")) == shipped
    assert {n.split("/")[0] for n in names} <= {"jaxformer", wheel.name.split("-py")[0] + ".dist-info"}


#: Folders whose modules become top-level names: a script's own folder goes first on sys.path
#: (``python benchmarks/x.py``), and pytest puts ``tests/`` there; the helper scripts run from
#: ``tests/jaxformer_testing/``.
SCRIPT_FOLDERS = ("benchmarks", "experiments", "tests", "tests/jaxformer_testing")


def top_level_names(folder: pathlib.Path) -> set:
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()
              and any(p.glob("*.py"))}
    return names


def installed_elsewhere(name: str):
    """Where ``name`` imports from outside this repository (site-packages, the standard
    library), or None."""
    import importlib.machinery

    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        return "the standard library"
    ours = lambda p: p.is_relative_to(REPO) and "site-packages" not in p.parts  # noqa: E731
    outside = [p for p in sys.path if p and not ours(pathlib.Path(p).resolve())]
    spec = importlib.machinery.PathFinder.find_spec(name, outside)
    return None if spec is None or spec.origin is None and not spec.submodule_search_locations else (
        spec.origin or list(spec.submodule_search_locations)[0])


def test_no_script_or_test_module_shadows_an_installed_one():
    """benchmarks/kernels.py once shadowed the ``kernels`` distribution that transformers
    imports: no top-level name in the script and test folders may exist outside the repo."""
    clashes = {}
    for folder in SCRIPT_FOLDERS:
        for name in top_level_names(REPO / folder) - {"conftest"}:
            where = installed_elsewhere(name)
            if where:
                clashes[f"{folder}/{name}"] = where
    assert not clashes, f"rename these (they shadow installed modules): {clashes}"


def test_the_shadowing_check_finds_a_clash():
    assert installed_elsewhere("json") == "the standard library"
    assert "site-packages" in installed_elsewhere("numpy")          # an installed distribution
    assert installed_elsewhere("jaxformer_testing") is None
    assert "kernel_sets" in top_level_names(REPO / "benchmarks") and "kernels" not in top_level_names(REPO / "benchmarks")
