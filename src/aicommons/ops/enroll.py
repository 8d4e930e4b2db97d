"""Enrollment: the invitation a new person gets, and redeeming it (set a password, then sign in).

The identity provider keeps the people; this is the service the CLI (`users add`, `users show`,
`users invite`) and the portal (`/invite/{token}`) call. The token is a state secret
(`<user>/invitation_token`, encrypted like every other), so `users show` can show a pending link
again. With `smtp:` in site.yaml the link is also e-mailed to the person.
- LemonLDAP::NG (tenancy/lemonldap.py) stores only the token's SHA-256 and its expiry; the link
  is the portal's `/invite/{token}`, where the person sets a password (`redeem`).
- Authentik (tenancy/authentik.py) makes its own invitation, whose pk is the token (stored here in
  place of the generated one); the link is Authentik's enrollment flow (render/authentik_flows.py),
  where the person sets a password in Authentik itself.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

from aicommons.errors import AicError, PermanentError
from aicommons.plan.identity import sign_in

TOKEN_KEY = "invitation_token"
MIN_PASSWORD = 12
MAX_PASSWORD = 256
PORTAL_PREFIX = "portal"  # catalog portal.yaml route prefix


def _provider(ctx):
    """The site's sign-in back end that can invite (LL::NG), or None."""
    return next((b for b in ctx.backends if hasattr(b, "invite")), None)


def link(resolved, token: str) -> str:
    s = sign_in(resolved)
    if s is not None and s.provider == "authentik":
        from aicommons.render.authentik_flows import enrollment_url

        return enrollment_url(s.portal_host, token)
    return f"https://{PORTAL_PREFIX}.{resolved.site.domain}/invite/{token}"


def invite(ctx, name: str, *, renew: bool = False) -> str | None:
    """A fresh invitation for `name` (the previous one withdrawn); returns its link, or None where
    the site's provider does not take invitations from aicommons. E-mailed when smtp is set."""
    b = _provider(ctx)
    if b is None:
        return None
    t = ctx.tenant(name)
    if renew and ctx.secrets.version(name, TOKEN_KEY):
        ctx.secrets.rotate(name, TOKEN_KEY)
    token = ctx.secrets.get(name, TOKEN_KEY)
    site = ctx.resolved.site
    made = b.invite(name, site.identity.invitation_hours, token)
    if made is not None and made != token:  # the provider's own invitation id is the token
        ctx.secrets.put(name, TOKEN_KEY, made)
        token = made
    url = link(ctx.resolved, token)
    if site.smtp is not None and t.email:
        send_invitation(site, ctx.session.site_file.parent, t.email, name, url)
    return url


def invite_user(site_file: Path, name: str, *, state_path=None, renew: bool = False) -> str | None:
    """`users add` (a new person) and `users invite` (a new link): the invitation, under its own Context."""
    from aicommons.ops.users import Context, require_user

    require_user(Path(site_file), name)
    with Context(Path(site_file), state_path=state_path) as ctx:
        return invite(ctx, name, renew=renew)


def pending(ctx, name: str) -> str | None:
    """The link of `name`'s invitation if it is still open (never made, used or expired: None)."""
    b = _provider(ctx)
    if b is None or not ctx.secrets.version(name, TOKEN_KEY):
        return None
    token = ctx.secrets.get(name, TOKEN_KEY)
    return link(ctx.resolved, token) if b.invitation_user(token) == name else None


def password_problem(password: str, name: str) -> str | None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    if name.lower() in password.lower():
        return "a password must not contain your user name"
    return None


def invitee(ctx, token: str) -> str | None:
    b = _provider(ctx)
    return b.invitation_user(token) if b is not None else None


def redeem(ctx, token: str, password: str) -> str:
    """Set the password of the invitation's person; returns where to sign in. Refuses a bad
    password (the invitation stays open) and an unknown, used or expired token."""
    b = _provider(ctx)
    if b is None:
        raise PermanentError("this site's identity provider does not take aicommons invitations")
    if not hasattr(b, "redeem"):  # Authentik: the person sets the password in Authentik's own flow
        raise PermanentError(f"on this site an invitation is opened at {link(ctx.resolved, token)}")
    who = b.invitation_user(token)
    if who is None:
        raise PermanentError("this invitation is unknown, already used or expired; ask an operator for a new one "
                             "(`aicommons users invite NAME`)")
    if (why := password_problem(password, who)) is not None:
        raise PermanentError(why)
    if b.redeem(token, password) is None:  # used or expired in between
        raise PermanentError("this invitation was used or expired meanwhile; ask an operator for a new one")
    return after_sign_in(ctx.resolved)


def after_sign_in(resolved) -> str:
    """The provider's sign-in page, sending the person on to their portal page when the site runs
    the portal (LL::NG's `url` parameter is the base64 of the target, which it follows only to a
    host it protects: Portal/Main/Process.pm controlUrl)."""
    s = sign_in(resolved)
    if s is None:
        return "/"
    me = f"{PORTAL_PREFIX}.{resolved.site.domain}"
    if s.provider == "lemonldap" and any(r.host == me for r in resolved.routes):
        return f"https://{s.portal_host}/?url=" + quote(base64.b64encode(f"https://{me}/me".encode()).decode(), safe="")
    return f"https://{s.portal_host}/"


def send_invitation(site, base_dir: Path, to: str, name: str, url: str) -> None:
    """One e-mail through the site's SMTP server (smtp: in site.yaml)."""
    from aicommons.spec.secretref import resolve_ref

    s = site.smtp
    msg = EmailMessage()
    msg["From"], msg["To"] = s.sender, to
    msg["Subject"] = f"Your invitation to {site.domain}"
    hours = site.identity.invitation_hours
    msg.set_content(f"Hello {name},\n\nyou have been invited to the AI workbench at {site.domain}.\n"
                    f"Set your password here (valid for {hours} hours, once):\n\n  {url}\n\n"
                    "Then sign in with your user name and that password.\n")
    try:
        if s.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=20, context=ssl.create_default_context())
        else:
            server = smtplib.SMTP(s.host, s.port, timeout=20)
        with server:
            if s.security == "starttls":
                server.starttls(context=ssl.create_default_context())
            if s.username and s.password:
                server.login(s.username, resolve_ref(s.password, "smtp.password", base_dir))
            server.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise AicError(f"the invitation for {name} was made but not e-mailed (smtp {s.host}:{s.port}: {exc}); "
                       f"give them the link by hand or fix smtp and run `aicommons users invite {name}`") from None
