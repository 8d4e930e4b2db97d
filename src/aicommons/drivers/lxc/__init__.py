"""Plain-LXC compute driver: the whole site on one Debian host, inside a network namespace."""
