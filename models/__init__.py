"""PyTorch models of edge-export: layer factories, families and the variant registry."""

from .registry import Variant, create, from_source, get_variant, list_variants, load, resolve, spec

__all__ = ["Variant", "create", "from_source", "get_variant", "list_variants", "load", "resolve", "spec"]
