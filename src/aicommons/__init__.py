"""aicommons: the control plane for a shared-services AI workbench site."""

__version__ = "0.1.0"
