#!/bin/sh
# Install the system tools the tests drive on the other end of the tar stream (GNU tar,
# bsdtar from libarchive-tools) when they are missing. Debian/Ubuntu; root or sudo.
set -e
need=""
tar --version 2>/dev/null | grep -q "GNU tar" || need="$need tar"
command -v bsdtar >/dev/null 2>&1 || need="$need libarchive-tools"
command -v find >/dev/null 2>&1 || need="$need findutils"
[ -z "$need" ] && exit 0
echo "installing system packages:$need"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq $need >/dev/null
