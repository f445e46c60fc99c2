"""The search spaces shipped with mmtune (package data): `--space default` is default.yaml here."""
