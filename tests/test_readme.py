"""The README cannot drift from code that runs.

Every Python block in README.rst is a ``.. code-block:: python`` whose text is found verbatim in a
file of examples/ — and tests/test_examples.py runs every one of those files against a
FakeGateway. Each block is also complete as pasted: it compiles and uses no name it does not
define or import (the NameError a fragment would raise). Plain ``::`` literal blocks are for shell
commands and output only, so Python cannot hide in one untested.
"""
import builtins
import re
import subprocess
import symtable
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
EXAMPLES = ROOT / "examples"


def blocks(text):
    """(kind, first line number, dedented text) of every literal block: kind is the code-block
    language, or "literal" for a ``::`` block."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*\.\. code-block::\s*(\S*)\s*$", line)
        kind = (m.group(1) or "text") if m else ("literal" if line.rstrip().endswith("::") and not line.lstrip().startswith("..") else None)
        if kind is None:
            i += 1
            continue
        base = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].lstrip().startswith(":")) and kind != "literal":
            j += 1  # directive options (":linenos:") and the blank line
        while j < len(lines) and not lines[j].strip():
            j += 1
        body = []
        start = j
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        if body:
            indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
            found.append((kind, start + 1, "\n".join(b[indent:] for b in body)))
        i = max(j, i + 1)
    return found


def undefined_names(source):
    """Global names a program reads but never binds (imports, assignments, defs) and that are not
    builtins: each would be a NameError when the block runs on its own."""
    top = symtable.symtable(source, "<block>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_parameter()}
    bound |= {c.get_name() for c in top.get_children()}  # def / class names
    used = set()

    def walk(table, is_top):
        for s in table.get_symbols():
            if (is_top and s.is_referenced() and not s.is_assigned() and not s.is_imported()) or (
                not is_top and s.is_global() and s.is_referenced()
            ):
                used.add(s.get_name())
        for child in table.get_children():
            walk(child, False)

    walk(top, True)
    return sorted(n for n in used - bound if not hasattr(builtins, n))


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = blocks(README_TEXT)
PYTHON = [(line, text) for kind, line, text in BLOCKS if kind == "python"]
EXAMPLE_SOURCES = {p.name: p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.py"))}


def test_the_readme_has_python_blocks_and_only_marked_ones():
    assert len(PYTHON) >= 8
    kinds = {kind for kind, _, _ in BLOCKS}
    assert kinds <= {"python", "literal"}, kinds
    for kind, line, text in BLOCKS:
        if kind == "literal":
            code_like = [l for l in text.splitlines() if re.match(r"^(import |from \S+ import |def |class |@\w)", l)]
            assert not code_like, f"README.rst:{line}: Python in a '::' block; use '.. code-block:: python' from examples/"


@pytest.mark.parametrize("line,text", PYTHON, ids=[f"README.rst:{line}" for line, _ in PYTHON])
def test_python_block_is_an_example_file_excerpt(line, text):
    homes = [name for name, source in EXAMPLE_SOURCES.items() if text in source]
    assert homes, f"README.rst:{line}: this block is in no file of examples/ (edit the example, then copy it here)"


@pytest.mark.parametrize("line,text", PYTHON, ids=[f"README.rst:{line}" for line, _ in PYTHON])
def test_python_block_runs_as_pasted(line, text):
    compile(text, f"README.rst:{line}", "exec")
    assert undefined_names(text) == [], f"README.rst:{line}: names used but never defined or imported"


def test_the_name_check_catches_a_fragment():
    assert undefined_names("client = sg.GatewayClient(TOKEN)\n") == ["TOKEN", "sg"]
    assert undefined_names("import signal\ndef f():\n    signal.signal(x, handler)\n") == ["handler", "x"]
    assert undefined_names("import os\nx = [os.sep for _ in range(2)]\n") == []


def test_the_readme_shows_the_examples_it_names():
    for name in re.findall(r"``examples/([\w.-]+)``", README_TEXT):
        assert (EXAMPLES / name).exists(), name
    shown = {name for name, source in EXAMPLE_SOURCES.items() if any(text in source for _, text in PYTHON)}
    assert {"plain_script.py", "cron_job.py", "systemd_service.py", "health.py", "sharding.py",
            "redis_gateway.py", "redis_worker.py", "test_recipes.py"} <= shown


def test_the_coming_from_table_has_a_header_row():
    table = README_TEXT.split("Coming from another library", 1)[1].split("Using it", 1)[0]
    rules = [i for i, l in enumerate(table.splitlines()) if re.match(r"^=+\s+=+$", l)]
    assert len(rules) == 3 and rules[1] == rules[0] + 2, "a simple table needs top rule, header, rule"


def test_readme_test_command_matches_ci():
    ci = ROOT.joinpath(".ci", "run").read_text(encoding="utf-8")
    command = "pip install -e '.[test]' && pytest"
    assert command in README_TEXT
    assert re.search(r"^" + re.escape(command) + r"$", ci, re.M)


def test_every_public_name_is_in_the_reference():
    import sync_gateway

    api = (ROOT / "docs" / "api.rst").read_text(encoding="utf-8")
    missing = [n for n in sync_gateway.__all__ if n != "__version__" and not re.search(rf"\b{re.escape(n)}\b", api)]
    assert not missing, f"docs/api.rst does not document: {missing}"


def test_the_reference_builds_with_warnings_as_errors(tmp_path):
    # .ci/run builds it too (after installing the docs extra); here when Sphinx is at hand.
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[docs]')")

    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(ROOT / "docs"), str(tmp_path / "html")],
        cwd=str(ROOT), capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    for anchor in ("sync_gateway.GatewayClient.update_presence", "sync_gateway.Dispatch.session_id",
                   "sync_gateway.LifecycleEvent.shard_id", "sync_gateway.GatewayClient.on"):
        assert f'id="{anchor}"' in api, anchor
    testing = (tmp_path / "html" / "testing.html").read_text(encoding="utf-8")
    for anchor in ("sync_gateway.testing.ServerConnection.wait_for", "sync_gateway.testing.pytest_plugin.gateway_client"):
        assert f'id="{anchor}"' in testing, anchor
    import html

    cli = html.unescape(re.sub(r"<[^>]+>", "", (tmp_path / "html" / "cli.html").read_text(encoding="utf-8")))
    for option in ("--heartbeat-interval", "--max-attempts", "--timeout", "--gateway-url"):
        assert option in cli, option
