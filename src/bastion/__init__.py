"""Bastion: a Linux host intrusion prevention agent enforcing through BPF LSM."""

__version__ = "0.1.0"
