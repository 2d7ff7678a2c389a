"""Pure rendering: API models -> the Kubernetes objects Dockyard applies."""

from dockyard.render.registry import RenderInput, render_registry

__all__ = ["RenderInput", "render_registry"]
