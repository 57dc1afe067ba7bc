"""The package version: one number, imported by every artefact writer (checkpoints, prepare.json,
summaries) from here rather than from the package root, which would pull the public API in."""

__version__ = "0.1.0"
