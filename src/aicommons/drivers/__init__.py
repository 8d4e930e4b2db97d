"""Compute back ends behind one protocol: Proxmox VE (`proxmox/`) and plain LXC (`lxc/`)."""

from aicommons.drivers.base import ComputeDriver, ContainerState, ExecResult

__all__ = ["ComputeDriver", "ContainerState", "ExecResult"]
