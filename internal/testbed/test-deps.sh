#!/bin/sh
# Installs the Debian packages that make test, make demo and make bench
# need, once: it does nothing when every command they use is present.
# Runs apt-get as it is (the make targets need root anyway).
set -eu
# command:package, for every tool the tests and the demo run.
need="ip:iproute2 nft:nftables conntrack:conntrack ping:iputils-ping nsenter:util-linux
keepalived:keepalived tshark:tshark tcpdump:tcpdump qemu-system-x86_64:qemu-system-x86
busybox:busybox-static nginx:nginx-light ethtool:ethtool vtysh:frr
systemd-analyze:systemd ipvsadm:ipvsadm promtool:prometheus
groff:groff-base modprobe:kmod"
missing=""
for pair in $need; do
	cmd=${pair%%:*}
	pkg=${pair#*:}
	# nginx and friends live in /usr/sbin, which a user's PATH may lack.
	if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
		missing="$missing $pkg"
	fi
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
	echo "test-deps: missing packages:$missing, and no apt-get here to install them" >&2
	exit 1
fi
echo "test-deps: installing Debian packages the tests need:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "test-deps: installed"
