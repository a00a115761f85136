#!/usr/bin/env bash
# Install the Debian packages for a one-node SLURM and a one-host SGE, used by tests/cluster/.
#
# Non-interactive and idempotent: packages already installed are left alone, so a second run
# costs one dpkg query. Debconf is preseeded so that gridengine's postinst creates the "default"
# cell without asking (and whichever MTA gridengine pulls in does not prompt either).
# Must run as root. Nothing is started here: tests/cluster/slurm.sh and sge.sh do that.
set -euo pipefail

packages=(slurm-wlm munge gridengine-master gridengine-exec gridengine-client)

if [[ $(id -u) -ne 0 ]]; then
    echo "install-schedulers.sh: must run as root" >&2
    exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-schedulers.sh: all scheduler packages already installed"
    exit 0
fi

host=$(hostname)
debconf-set-selections <<CONF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-client shared/gridenginemaster string ${host}
gridengine-master shared/gridenginemaster string ${host}
postfix postfix/main_mailer_type select No configuration
CONF

export DEBIAN_FRONTEND=noninteractive
# Package lists can be missing on a fresh machine; refreshing them costs about a second.
apt-get update -qq
apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null
echo "install-schedulers.sh: installed ${missing[*]}"
