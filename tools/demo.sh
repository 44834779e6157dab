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

# Files modified less than 2 s before a save are not trusted as unchanged by the next one
# (timestamp granularity): let the fresh sample tree age first.
sleep 2
run "$BS" init
printf '\n$ find %s -print0 | backshift save --subset demo\n' "$SRC"
find "$SRC" -print0 | "$BS" save --subset demo
printf '\n$ find %s -print0 | backshift save --subset demo   # unchanged: borrowed\n' "$SRC"
find "$SRC" -print0 | "$BS" save --subset demo
run "$BS" saves

# Browsing and restoring: list the latest save, restore it through GNU tar, compare.
run "$BS" list --backup latest
run "$BS" list --backup latest -v --dir "$SRC/docs/notes"
RESTORE="$W/restore"
mkdir -p "$RESTORE"
printf '\n$ backshift tar --backup latest | tar -xpf - -C %s\n' "$RESTORE"
"$BS" tar --backup latest | tar -xpf - -C "$RESTORE" 2>&1 | grep -v "hdrcharset" || true
# diff compares contents (it reports FIFOs as different from each other: drop those lines),
# find compares type, mode, owner, mtime to the nanosecond and symlink targets.
printf '\n$ diff -r --no-dereference %s %s\n' "$SRC" "$RESTORE$SRC"
diff -r --no-dereference "$SRC" "$RESTORE$SRC" | grep -v 'is a fifo while file .* is a fifo$' \
  && { echo "demo: restored contents differ" >&2; exit 1; }
meta() { (cd "$1" && find . -printf '%y %m %u:%g %T@ %n %p -> %l\n' | LC_ALL=C sort); }
printf '\n$ diff <(find %s -printf ...) <(find %s -printf ...)\n' "$SRC" "$RESTORE$SRC"
meta "$SRC" > "$W/meta.src"
meta "$RESTORE$SRC" > "$W/meta.restored"
diff "$W/meta.src" "$W/meta.restored"
echo "restored tree is identical to the source: contents, types, modes, owners, mtimes, links"

# Asking questions: reports and read-only SQL over the catalog.
echo "one more line" >> "$SRC/docs/file1.txt"
printf '\n$ find %s -print0 | backshift save --subset demo   # after an edit\n' "$SRC"
find "$SRC" -print0 | "$BS" save --subset demo
run "$BS" diff 2 3
run "$BS" history "$SRC/docs/file1.txt"
run "$BS" find '*.bin'
run "$BS" stats
run "$BS" sql "SELECT type, count(*) AS n, sum(size) AS bytes FROM files WHERE save_id = 3 GROUP BY type ORDER BY n DESC"

# Keeping the repository healthy.
run "$BS" check --read-data
run "$BS" expire --keep-last 2 --dry-run
run "$BS" expire --keep-last 2
run "$BS" saves
