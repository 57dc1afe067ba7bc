"""The `sdmvae` command line (the top layer): one small module per command, each only parsing
options and calling one library function; :mod:`sdmvae_cli.cli.app` registers them and owns the
single error path."""

from sdmvae_cli.cli.app import app, main, run

__all__ = ["app", "main", "run"]
