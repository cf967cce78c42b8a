"""The console script: --help, --version, a forward pass, and one-line errors with exit code 2."""
import subprocess
import sys

import jaxformer
from jaxformer.cli import main


def test_version_and_help(capsys):
    for argv in (["--version"], ["--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    out = capsys.readouterr().out
    assert f"jaxformer {jaxformer.__version__}" in out and "info" in out


def test_info_forward_pass(capsys):
    assert main(["info", "--set", "model.n_layer=1", "--set", "model.max_len=8"]) == 0
    out = capsys.readouterr().out
    # 32,768 token + 1,024 position + 198,528 in the block and final norm (worked out by hand)
    assert "parameters: 232,320" in out and "(2, 8, 256)" in out


def test_bad_config_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "jaxformer", "info", "--set", "model.n_head=7"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "jaxformer info: error: model.d_model=128 is not divisible by model.n_head=7"]
