"""Enforcement backends and the tier report."""
