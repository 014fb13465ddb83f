"""Record formats shared by the outputs: ``native`` (Bastion's own JSON with a
``kind`` key first: ``event`` or ``alert``) and ``ocsf`` (OCSF 1.x, see
:mod:`bastion.outputs.ocsf`)."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Final, Mapping

from bastion.outputs.ocsf import to_ocsf

Formatter = Callable[[str, Mapping[str, Any]], dict[str, Any]]
FORMATS: Final = ("native", "ocsf")


def native(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": kind, **data}


def make_formatter(fmt: str, *, hostname: str, product_version: str) -> Formatter:
    if fmt == "native":
        return native
    if fmt == "ocsf":
        return partial(to_ocsf, hostname=hostname, product_version=product_version)
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
