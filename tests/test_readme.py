"""The README's FakeGateway example runs as written."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_readme_fakegateway_example_runs():
    text = Path(__file__).resolve().parent.parent.joinpath("README.rst").read_text(encoding="utf-8")
    start = text.index("    import threading\n")
    block = []
    for line in text[start:].splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    namespace = {}
    exec(compile("\n".join(block), "README.rst", "exec"), namespace)
    namespace["test_my_bot_survives_op7"]()


def test_readme_test_command_matches_ci():
    root = Path(__file__).resolve().parent.parent
    readme = root.joinpath("README.rst").read_text(encoding="utf-8")
    ci = root.joinpath(".ci", "run").read_text(encoding="utf-8")
    command = "pip install -e '.[test]' && pytest"
    assert command in readme
    assert re.search(r"^" + re.escape(command) + r"$", ci, re.M)
