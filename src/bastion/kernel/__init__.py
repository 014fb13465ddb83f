"""Kernel side: the ctypes libbpf binding, BTF reading, ring buffer, bpffs helpers."""
