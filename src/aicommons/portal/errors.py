"""The portal's own refusals, as AicErrors with the HTTP status they answer with."""

from __future__ import annotations

from aicommons.errors import AicError


class Forbidden(AicError):
    status = 403


class NotSignedIn(AicError):
    status = 401


def http_status(exc: AicError) -> int:
    from aicommons.ops.users import UnknownUser
    from aicommons.state.lock import LockHeld

    if isinstance(exc, (Forbidden, NotSignedIn)):
        return exc.status
    from aicommons.gateway.site import NoGateway

    if isinstance(exc, (UnknownUser, NoGateway)):
        return 404
    if isinstance(exc, LockHeld):
        return 409  # another apply holds the site: try again when it is done
    return 400
