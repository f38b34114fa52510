import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*parts):
    with open(os.path.join(HERE, *parts), encoding="utf-8") as fh:
        return fh.read()


VERSION = re.search(r'^__version__ = "([^"]+)"', read("sync_gateway", "_version.py"), re.M).group(1)

TESTING = ["websockets>=13.0"]
ZSTD = ["zstandard>=0.22"]
METRICS = ["prometheus_client>=0.17"]

setup(
    name="sync-gateway",
    version=VERSION,
    description="A Discord Gateway client on plain threads, for programs that do not run asyncio",
    long_description=read("README.rst"),
    long_description_content_type="text/x-rst",
    license="MIT",
    packages=find_packages(include=["sync_gateway", "sync_gateway.*"]),
    package_data={"sync_gateway": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=[
        "websocket-client>=1.6",
        "requests>=2.25",
        "tenacity>=8.2",
    ],
    extras_require={
        "zstd": ZSTD,
        "redis": ["redis>=4.5"],
        "speed": ["orjson>=3.9"],
        "metrics": METRICS,
        "testing": TESTING,
        # the reference (docs/): sphinx-build -W -n -b html docs docs/_build
        "docs": ["sphinx>=7"],
        "test": TESTING
        + ZSTD
        + METRICS
        # setuptools: the plugin tests write install metadata with setup.py (venvs of 3.12+ lack it)
        + ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6.80", "redis>=4.5", "setuptools"],
    },
    entry_points={
        "console_scripts": ["sync-gateway=sync_gateway.cli:main"],
        # the fake_gateway / gateway_client fixtures; the module imports the library only inside them
        # (named as the module, so "-p sync_gateway.testing.pytest_plugin" on top of it is harmless)
        "pytest11": ["sync_gateway.testing.pytest_plugin=sync_gateway.testing.pytest_plugin"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Intended Audience :: Developers",
        "Topic :: Communications :: Chat",
    ],
)
