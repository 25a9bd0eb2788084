#!/bin/sh
# Install every Debian package promguard's build, tests, demo and benchmarks need.
# Safe to run again: apt-get install is idempotent; the package lists are refreshed
# only when they are older than a day or absent.
set -eu

PKGS="build-essential cmake pkg-config git ca-certificates curl python3 \
libevent-dev libprotobuf-c-dev protobuf-c-compiler libsnappy-dev libyaml-dev \
libpcre2-dev libxxhash-dev libcmocka-dev clang libclang-rt-14-dev valgrind \
prometheus nginx-light wrk procps"

if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ -n "$missing" ]; then
	stamp=/var/lib/apt/periodic/update-success-stamp
	lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)
	if [ -z "$lists" ] || [ ! -e "$stamp" ]; then
		$SUDO apt-get update -qq
	fi
	# On a machine with systemd the prometheus package also starts its own service on :9090;
	# tests and the demo run their own instances on other ports, so it does not interfere.
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
echo "deps: all packages present"
