"""Only the optional C extension; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: where it cannot be compiled, spangraph uses the same code in Python
        Extension(
            "spangraph._speedups",
            [
                "src/spangraph/_speedups.c",
                "src/spangraph/_speedups_text.c",
                "src/spangraph/_speedups_live.c",
            ],
            optional=True,
        ),
    ]
)
