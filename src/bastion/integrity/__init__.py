"""Kernel integrity guard: PatchGuard's job without a kernel module.

Each check (:mod:`.checks`) is a small class that says what it needs and why
it cannot run here; :func:`.scanner.run_scan` runs them against a baseline
(:mod:`.baseline`), and :func:`.scanner.to_findings` turns the result into
:class:`bastion.detect.engine.Finding` alerts.  Nothing here acts on a
process: :func:`.response.kill_loader` is for the response layer.
"""
