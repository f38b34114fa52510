"""Check the built sdist and wheel hold what users rely on (run by .ci/run after `python -m build`).

    python tools/check_dist.py DIST_DIR

The wheel: every module of the source tree (a subpackage missed by find_packages would only show
up as an ImportError on a user's machine), ``py.typed`` (the types are part of the API), the
``sync-gateway`` console script, and every extra with its requirements. The sdist: what a
rebuild needs (setup.py, pyproject.toml, README.rst, the package). Prints one line per check;
exits 1 if any failed.
"""
import argparse
import email.parser
import glob
import os
import sys
import tarfile
import zipfile
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "sync_gateway"
CONSOLE_SCRIPT = "sync-gateway = sync_gateway.cli:main"
#: extra -> a requirement name it must pull in (the rest is setup.py's business)
EXTRAS = {
    "zstd": "zstandard",
    "redis": "redis",
    "speed": "orjson",
    "metrics": "prometheus_client",
    "testing": "websockets",
    "test": "pytest",
}


def source_files() -> Set[str]:
    """The package's files as they should appear in an archive: .py modules and py.typed."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py") or name == "py.typed":
                out.add(os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/"))
    return out


def check_wheel(path: str, failures: List[str]) -> None:
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        dist_info = sorted({n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")})
        if len(dist_info) != 1:
            failures.append(f"wheel: expected one .dist-info directory, found {dist_info}")
            return
        meta_dir = dist_info[0]
        metadata = email.parser.Parser().parsestr(whl.read(f"{meta_dir}/METADATA").decode("utf-8"))
        entry_points = whl.read(f"{meta_dir}/entry_points.txt").decode("utf-8") if f"{meta_dir}/entry_points.txt" in names else ""
    missing = sorted(source_files() - names)
    _check(not missing, f"wheel: every module and py.typed of the source tree ({len(source_files())} files)", f"missing {missing}", failures)
    _check(f"{PACKAGE}/py.typed" in names, "wheel: sync_gateway/py.typed", "absent", failures)
    _check(
        CONSOLE_SCRIPT in [line.strip() for line in entry_points.splitlines()],
        f"wheel: console script '{CONSOLE_SCRIPT}'",
        f"entry_points.txt is {entry_points!r}",
        failures,
    )
    extras = set(metadata.get_all("Provides-Extra") or [])
    requires: Dict[str, List[str]] = {}
    for req in metadata.get_all("Requires-Dist") or []:
        if "extra ==" in req:
            extra = req.split("extra ==", 1)[1].strip().strip("'\"")
            requires.setdefault(extra, []).append(req.split(";")[0].strip().lower().replace("-", "_"))
    for extra, needed in EXTRAS.items():
        ok = extra in extras and any(r.startswith(needed.lower()) for r in requires.get(extra, []))
        _check(ok, f"wheel: extra [{extra}] requires {needed}", f"Provides-Extra {sorted(extras)}, requires {requires.get(extra)}", failures)
    _check(bool(metadata.get("Requires-Python")), f"wheel: Requires-Python {metadata.get('Requires-Python')}", "absent", failures)


def check_sdist(path: str, failures: List[str]) -> None:
    with tarfile.open(path) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "README.rst", f"{PACKAGE}/py.typed"):
        _check(needed in names, f"sdist: {needed}", "absent", failures)
    missing = sorted(source_files() - names)
    _check(not missing, "sdist: every module of the source tree", f"missing {missing}", failures)


def _check(ok: bool, what: str, why: str, failures: List[str]) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + ("" if ok else f": {why}"))
    if not ok:
        failures.append(what)


def main(argv: "List[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", help="the directory `python -m build` wrote to")
    args = parser.parse_args(argv)
    wheels = glob.glob(os.path.join(args.dist, "*.whl"))
    sdists = glob.glob(os.path.join(args.dist, "*.tar.gz"))
    failures: List[str] = []
    _check(len(wheels) == 1 and len(sdists) == 1, "one wheel and one sdist", f"found {wheels + sdists}", failures)
    for path in wheels:
        check_wheel(path, failures)
    for path in sdists:
        check_sdist(path, failures)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
