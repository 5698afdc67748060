"""`python -m exporter`."""

from .cli import run

run()
