"""The web portal (`aicommons serve`): each person's workbench page and the operator's console.

Thin like the CLI: every page and API call goes through the same service functions the commands
call (ops.users, ops.status, ops.backup, engine.api), under the same lock and run history.
Identity comes from the sign-in provider's forward-auth headers, believed only from the site's Traefik.
"""
