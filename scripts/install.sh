#!/usr/bin/env bash
# Install aicommons on Debian 12 as root: apt packages, a virtualenv in ./.venv, the package.
#   bash scripts/install.sh          runtime (+ LXC, PostgreSQL/Redis clients)
#   bash scripts/install.sh --test   also the servers and tools the test suite starts
# Idempotent: a second run with unchanged requirements does almost nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Everything the code runs, named here: a bare Debian 12 installed without Recommends has none of
# it (tests/test_fresh_debian.py proves this list in a fresh debootstrap rootfs). The programs the
# LXC driver runs are listed, with their packages, in src/aicommons/drivers/lxc/needs.py (what
# `aicommons doctor` checks); tests/test_doctor.py holds every package named there to this list.
#   lxc + lxc-templates   lxc-start/attach/info/stop; lxc-templates ships the debian.common.conf
#                         every container config includes (only a Recommends of lxc)
#   debootstrap           builds the container template; iproute2: ip netns/link/addr/route
#   iptables              the site's NAT and FORWARD rules, and ebtables-nft-restore for the site
#                         bridge's filter (render/bridge_filter.py); procps: sysctl (ip_forward)
#   util-linux            unshare, nsenter; systemd: systemctl --root on the template
#   curl                  Traefik's /ping and API from inside the namespace
#   postgresql-client-15, redis-tools   pg_dump/pg_restore/psql and redis-cli (backups, checks)
#   coreutils dash tar gzip mount dpkg apt   in every Debian already; named so the list is whole
apt_pkgs=(python3 python3-venv ca-certificates lxc lxc-templates debootstrap iproute2 iptables procps util-linux
          systemd curl postgresql-client-15 redis-tools coreutils dash tar gzip mount dpkg apt)
# The suite also starts real servers and checks rules and rendered scripts (shellcheck) with these.
[ $want_test = 1 ] && apt_pkgs+=(postgresql-15 redis-server prometheus shellcheck)
[ $want_test = 1 ] && apt_pkgs+=(chromium)  # the portal's browser tests (Playwright drives it)
# The sign-in provider's real test (tests/test_lemonldap.py): LemonLDAP::NG 2.16 with the packages
# its catalog recipe names (catalog/services/lemonldap.yaml: without Recommends the portal needs
# these), nginx as its FastCGI bridge; aiosmtpd: a real SMTP server for the invitation mail test.
[ $want_test = 1 ] && apt_pkgs+=(lemonldap-ng-fastcgi-server liblemonldap-ng-portal-perl liblemonldap-ng-handler-perl
                                 nginx libdbi-perl libdbd-pg-perl libapache-session-browseable-perl
                                 libgd-securityimage-perl libimage-magick-perl libdigest-hmac-perl
                                 libconvert-base32-perl libmime-tools-perl libemail-sender-perl libstring-random-perl
                                 libcrypt-openssl-bignum-perl libio-string-perl libunicode-string-perl
                                 python3-aiosmtpd)
# Native app layers: what their builds compile with (the catalog's native.build_packages; applayers checks too).
apt_pkgs+=(build-essential pkg-config libkrb5-dev)
# The model server's layer: llama.cpp compiled from its PyPI source package (drivers/modellayers.py).
apt_pkgs+=(cmake binutils)

missing=()
for p in "${apt_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these on install; the tests start their own on loopback.
  systemctl disable --now redis-server postgresql prometheus nginx lemonldap-ng-fastcgi-server >/dev/null 2>&1 || true
  # Without systemd as init (a build container), Debian's postinst started nginx by its init script.
  [ -x /etc/init.d/nginx ] && /etc/init.d/nginx stop >/dev/null 2>&1 || true
fi

# Python 3.11: Debian 12's /usr/bin/python3 (or PYTHON=...).
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3)
"$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
  || { echo "aicommons needs Python 3.11 or newer (found $("$PY" --version))" >&2; exit 1; }

# Every dependency, transitive ones included, pinned with hashes (scripts/lock.sh regenerates them).
lock=requirements.lock
[ $want_test = 1 ] && lock=requirements-test.lock
# The editable install below builds with the venv's own setuptools (Debian 12's 66.1), which needs
# the `wheel` package (setuptools < 70.1 has no bdist_wheel of its own): locked the same way.
build=requirements-build.lock
stamp=.venv/.aicommons-installed
sum=$( (cat "$lock" "$build" pyproject.toml; echo $want_test) | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Exactly the lock, resolved against nothing: --no-deps keeps pip from resolving any dependency (or
# extra, such as qdrant-client's httpx[http2]) against what the registry serves today, so a release
# published after the lock was made can never be chosen; `pip check` then proves the lock complete.
pip=(.venv/bin/pip --disable-pip-version-check --no-input)
"${pip[@]}" install -q --no-deps --require-hashes --only-binary :all: -r "$lock" -r "$build"
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"${pip[@]}" check
echo "$sum" > "$stamp"
echo "installed: $(.venv/bin/aicommons --help >/dev/null && echo .venv/bin/aicommons)"
