"""The layer kinds a variant can be built with, and their check (no torch)."""

from __future__ import annotations

from runtime.errors import check_choice

CONV_KINDS = ("standard", "dsc", "asym")
NORM_KINDS = ("batch", "layer", "instance", "group")
UPSAMPLE_KINDS = ("interp", "transpose")


def check_kind(what: str, kind: str, valid: tuple[str, ...]) -> str:
    return check_choice(f"{what} kind", kind, valid)
