#!/usr/bin/env bash
# Install everything the tests and benchmarks need, idempotently and without prompts.
#
# CI runs on a fresh Debian 12 machine (root, registries only), so every system package the
# tests use must be installed here. Reruns are fast: apt is only touched when a package is
# missing. System-wide postfix/postgresql/nsd services are left stopped, because the tests
# start private instances on their own loopback addresses and ports.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    postgresql          # PrivatePostgres (tests/pgserver.py): the multi-node store
    postfix             # PrivatePostfix peer + smtp-source/smtp-sink for benchmarks
    swaks               # SMTP client as a real peer
    libnet-ssleay-perl libauthen-sasl-perl libio-socket-ssl-perl  # swaks TLS and AUTH
    nsd                 # real authoritative DNS for end-to-end tests
    opendkim-tools libmail-dkim-perl  # third-party DKIM sign/verify
    curl iproute2 procps  # HTTP checks, `ip addr add` for loopback aliases, ps
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
    # dpkg -s also succeeds for removed-but-not-purged packages; require "install ok installed".
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-test-deps: installing ${missing[*]}"
    # Without this, postfix's postinst asks which mail configuration to use. "No configuration"
    # is all we need: tests never use the system instance.
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    echo "postfix postfix/mailname string localhost" | as_root debconf-set-selections

    # Keep package scripts from starting daemons (postgres on 5432, postfix on 25, nsd on 53)
    # while installing. Only add the policy if none exists, and remove only ours.
    policy_added=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    cleanup_policy() { if [ -n "$policy_added" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup_policy EXIT

    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"

    cleanup_policy
    trap - EXIT
else
    echo "install-test-deps: all Debian packages present"
fi

# Stop system-wide services that may have been started by an earlier install or a boot:
# private test instances need their ports and a predictable machine. Errors are fine (not
# running, no init system).
as_root service postfix stop >/dev/null 2>&1 || true
as_root service nsd stop >/dev/null 2>&1 || true
as_root service postgresql stop >/dev/null 2>&1 || true
if command -v pg_lsclusters >/dev/null 2>&1; then
    # The service wrapper is a no-op without an init system; stop every online cluster directly.
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name port status _rest; do
        if [ "$status" = "online" ]; then
            as_root pg_ctlcluster "$ver" "$name" stop -m fast || true
        fi
    done
fi

# Python side: the venv the tests and benches run in.
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "install-test-deps: creating .venv"
    python3 -m venv "$ROOT/.venv"
fi
"$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"

echo "install-test-deps: done"
