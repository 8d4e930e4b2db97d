"""Proxmox VE driver: typed API adapter, placement, SSH into containers, firewall."""
