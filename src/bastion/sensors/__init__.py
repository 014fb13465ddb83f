"""Event sources behind one protocol (see :mod:`bastion.sensors.base`)."""
