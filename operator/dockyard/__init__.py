"""Dockyard: a Kubernetes operator that runs OCI container registries declaratively."""

__version__ = "0.1.0"
