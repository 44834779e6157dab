#!/bin/sh
# Install the peers `make bench` compares with: borg and restic (Debian packages) and the
# original backshift 1.62 (PyPI) with its compiled helpers, in a venv of its own under
# bench/.peers/original (its distribution name is ours, so it cannot share .venv).
set -e
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=""
command -v borg >/dev/null 2>&1 || need="$need borgbackup"
command -v restic >/dev/null 2>&1 || need="$need restic"
if [ -n "$need" ]; then
  echo "installing system packages:$need"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq $need >/dev/null
fi
PEER=bench/.peers/original
if [ ! -x "$PEER/bin/backshift" ]; then
  echo "installing backshift 1.62 (the original) into $PEER"
  command -v cc >/dev/null 2>&1 || $SUDO apt-get install -y -qq build-essential python3-dev >/dev/null
  python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q --upgrade pip setuptools wheel
  "$PEER/bin/pip" install -q "backshift==1.62"
  "$PEER/bin/pip" install -q pyx-treap rolling-checksum-pyx-mod
fi
"$PEER/bin/python" -c "import rolling_checksum_mod as r; print('original chunker:', r.min_max_chunker.__module__)"
borg --version
restic version
