"""Alembic revision scripts of the vpnca schema (a package so that setuptools installs them)."""
