"""Edges: one sub-package per protocol. Adapters depend on hub's services and ports, never the reverse."""
