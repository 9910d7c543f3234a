"""The compiled part of the package: the judge's fast path (replicator/_fastcheck.c, see
replicator/checks_native.py). Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "replicator._fastcheck",
            sources=["replicator/_fastcheck.c"],
            extra_compile_args=["-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
