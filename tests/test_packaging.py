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
