#!/bin/sh
# `make demo`: back up a sample tree end to end, echoing each command as it runs.
set -eu
BS="$(pwd)/.venv/bin/backshift"
W="$(pwd)/demo-work"
rm -rf "$W"
mkdir -p "$W"
export BACKSHIFT_REPO="$W/repo"
run() { printf '\n$ %s\n' "$*"; "$@"; }

# A sample tree: text, a random file, a symlink, a hardlink, a FIFO, odd names.
SRC="$W/src"
mkdir -p "$SRC/docs/notes" "$SRC/bin" "$SRC/empty-dir"
i=0
while [ $i -lt 200 ]; do
  printf 'line %s of a sample text file\n' $(seq 1 $((i % 40 + 1))) > "$SRC/docs/file$i.txt"
  i=$((i + 1))
done
head -c 3000000 /dev/urandom > "$SRC/bin/random.bin"
printf 'hello\n' > "$SRC/docs/notes/hello.txt"
ln "$SRC/docs/notes/hello.txt" "$SRC/docs/hello-hardlink.txt"
ln -s ../docs/notes/hello.txt "$SRC/bin/hello-link"
mkfifo "$SRC/bin/a-fifo"
printf 'odd\n' > "$SRC/docs/name with spaces & $(printf '\351')t\303\251.txt"

run "$BS" init
printf '\n$ find %s -print0 | backshift save --subset demo\n' "$SRC"
find "$SRC" -print0 | "$BS" save --subset demo
sleep 2
printf '\n$ find %s -print0 | backshift save --subset demo   # unchanged: borrowed\n' "$SRC"
find "$SRC" -print0 | "$BS" save --subset demo
run "$BS" saves
