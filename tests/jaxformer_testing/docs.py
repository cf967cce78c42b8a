"""The README's and the docs pages' examples, read for the tests: fenced blocks, the Python
blocks run top to bottom in a fresh interpreter, shell examples that must use only folders an
earlier example made, and relative links that must point to files that exist."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def doc_pages() -> list:
    """Every Markdown page under ``docs/``, in a fixed order."""
    return sorted(DOCS.rglob("*.md"))


def fenced_blocks(path: pathlib.Path, language: str) -> list:
    """``(line number, code)`` of every fenced block of ``language`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


def run_python_blocks(path: pathlib.Path, cwd: pathlib.Path, timeout: int = 900):
    """Every ```python block of ``path``, in order, in one fresh interpreter with nothing done
    first, in ``cwd`` (an empty folder, so the files the examples write land there)."""
    blocks = fenced_blocks(path, "python")
    script = "\n".join(f"# --- {path.name} line {line}\n{code}" for line, code in blocks)
    (cwd / "doc_blocks.py").write_text(script, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="error::DeprecationWarning:jaxformer")
    return subprocess.run([sys.executable, "doc_blocks.py"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def shell_problems(path: pathlib.Path, made: set) -> list:
    """A ``--run DIR`` / ``--from-run DIR`` / ``--init-from DIR`` in a ```bash block names a
    folder that an earlier command (on this page, or in ``made``) wrote with ``--out DIR``;
    ``--data`` / ``--file`` / ``--config`` paths exist in a fresh clone (glob patterns match
    something there), are built-in names, or (``--data``) a folder an earlier command wrote.
    Adds this page's ``--out`` folders to ``made``."""
    problems = []
    for line, code in fenced_blocks(path, "bash"):
        for cmd in code.splitlines():
            cmd = cmd.split("#", 1)[0].strip()
            if not cmd.startswith("jaxformer"):
                continue
            words = shlex.split(cmd)
            flags = dict(zip(words, words[1:]))
            for flag in ("--run", "--from-run", "--init-from"):
                if flag in flags and flags[flag].rstrip("/") not in made:
                    problems.append(f"{path.name} line {line}: {flag} {flags[flag]} is not created by an earlier command")
            for flag in ("--data", "--file", "--config"):
                value = flags.get(flag)
                exists = any(ROOT.glob(value)) if value and "*" in value else \
                    bool(value) and (ROOT / value).exists()
                earlier = flag == "--data" and bool(value) and value.rstrip("/") in made
                if value and value not in ("pydoc", "shakespeare") and "/" in value and not earlier \
                        and (value.startswith("..") or not exists):
                    problems.append(f"{path.name} line {line}: {flag} {value} does not exist in a fresh clone")
            if "--out" in flags:
                made.add(flags["--out"].rstrip("/"))
    return problems


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def link_problems(path: pathlib.Path) -> list:
    """Relative links (``[text](target)``, images included) that point to no file."""
    problems = []
    text = path.read_text(encoding="utf-8")
    for m in LINK.finditer(text):
        target = m.group(1).split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        if not (path.parent / target).exists():
            line = text[:m.start()].count("\n") + 1
            problems.append(f"{path.relative_to(ROOT)} line {line}: {m.group(1)} does not exist")
    return problems
