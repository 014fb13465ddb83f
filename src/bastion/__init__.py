"""Bastion: a Linux host intrusion prevention agent enforcing through BPF LSM.

Importing Bastion turns off bytecode writing for the rest of the process:
its install tree and virtualenv are under tamper protection, so a ``.pyc``
written next to a module would be a write into a protected directory (a
refused open and a false tamper alarm).  ``make setup`` and ``bastion
install`` compile the bytecode once, at install time.
"""

import sys

sys.dont_write_bytecode = True

__version__ = "0.1.0"
