"""Subcommands of the `splitinfer` CLI (see splitinfer/cli.py)."""
