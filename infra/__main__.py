"""Pulumi entry point (``main: infra/`` in Pulumi.yaml); the program is :mod:`rampart.pulumi.program`."""

from rampart.pulumi.program import main

main()
