#!/bin/sh
# Fetches Debian's current amd64 kernel package (without installing it)
# and unpacks it under $1/current, for the IPVS tests that boot it in qemu.
set -eu
dir=${1:?usage: fetch-kernel.sh DIR}
if ! command -v apt-cache >/dev/null; then
	echo "fetch-kernel: no apt-cache here; the IPVS guest tests will skip (they need Debian's kernel package)" >&2
	[ "${CI:-}" = true ] && exit 1
	exit 0
fi
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "fetch-kernel: apt-cache knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
if [ -d "$pkg" ]; then
	ln -sfn "$pkg" current
	exit 0
fi
rm -rf "$pkg.tmp" ./*.deb
# apt-get download as root warns that _apt cannot write here; harmless.
apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
dpkg -x "$pkg"_*.deb "$pkg.tmp"
rm -f ./*.deb
mv "$pkg.tmp" "$pkg"
ln -sfn "$pkg" current
echo "fetch-kernel: $pkg in $dir/current"
