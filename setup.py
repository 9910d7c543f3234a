"""The compiled part of the package: the judge's fast path (replicator/judge/_fastcheck.c, see
replicator/judge/native.py). Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "replicator.judge._fastcheck",
            sources=["replicator/judge/_fastcheck.c"],
            extra_compile_args=["-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
