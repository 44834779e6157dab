#!/bin/sh
# Install the system tools the tests drive for real when they are missing (Debian/Ubuntu;
# root or sudo): GNU tar and bsdtar on the other end of the tar stream, OpenSSH (client and
# a server the tests start on 127.0.0.1) and sshfs for remote repositories, FUSE 3 for
# `backshift mount`, and attr, acl and libcap2-bin to set and compare extended attributes.
set -e
need=""
have() { command -v "$1" >/dev/null 2>&1; }
tar --version 2>/dev/null | grep -q "GNU tar" || need="$need tar"
have bsdtar || need="$need libarchive-tools"
have find || need="$need findutils"
have ssh || need="$need openssh-client"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
have sshfs || need="$need sshfs"
have fusermount3 || need="$need fuse3"
[ -e /usr/include/fuse3/fuse_lowlevel.h ] || need="$need libfuse3-dev"
have pkg-config || need="$need pkg-config"
have getfattr || need="$need attr"
have getfacl || need="$need acl"
have setcap || need="$need libcap2-bin"
[ -z "$need" ] && exit 0
echo "installing system packages:$need"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
