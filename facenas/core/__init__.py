"""The ground floor: small shared pieces with no face-specific knowledge (box geometry, local
weight loading, registries by name, progress bars, Pareto and hypervolume tools, plain values).

Every other package may import from here; nothing here imports from them.
"""
