"""Helpers shared by the kernel, e2e and vm tests."""
