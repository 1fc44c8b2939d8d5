"""PyTorch models of edge-export: layer factories, families and the variant registry."""

from .registry import Variant, create, get_variant, list_variants, resolve

__all__ = ["Variant", "create", "get_variant", "list_variants", "resolve"]
