#!/bin/sh
# cli_test.sh BATPAK FIXTURES - runs the batpak tool on temporary stores and the
# crate's fixtures, checking output and exit codes. Fails on the first error.
set -eu
B=$1
FIX=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_exit() { want=$1; shift; set +e; "$@" >"$T/out" 2>"$T/err"; got=$?; set -e
  [ "$got" = "$want" ] || { cat "$T/out" "$T/err" >&2; fail "exit $got, expected $want: $*"; }; }

S="$T/store"
"$B" init "$S" >/dev/null
"$B" append "$S" --entity user:1 --scope s --json-payload '{"n": 1}' --kind 0x1001 >/dev/null
"$B" append "$S" --entity user:1 --scope s --json-payload '{"n": 2}' >/dev/null
"$B" append "$S" --entity user:10 --scope t --json-payload '[1, "two"]' --kind 0xF001 >/dev/null
[ "$("$B" stream "$S" user:1 | wc -l)" = 2 ] || fail "stream user:1"
[ "$("$B" query "$S" --entity-prefix user:1 | wc -l)" = 3 ] || fail "query prefix"
[ "$("$B" query "$S" --kind 0xF001 --json | wc -l)" = 1 ] || fail "query kind"
ID=$("$B" query "$S" --scope t --json | sed 's/.*"event_id":"\([0-9a-f]*\)".*/\1/')
"$B" get "$S" "$ID" --json | grep -q '"payload":\[1,"two"\]' || fail "get payload"
"$B" stats "$S" --json | grep -q '"events": 3' || fail "stats"
"$B" verify "$S" | grep -q intact || fail "verify"
"$B" tail "$S" | grep -c clock | grep -q 3 || fail "tail"
# tail -n: the last N events of the region, in order.
[ "$("$B" tail "$S" -n 1 --json | grep -c '"entity":"user:10"')" = 1 ] || fail "tail -n 1"
[ "$("$B" tail "$S" -n 1 --json | wc -l)" = 1 ] || fail "tail -n 1 count"
"$B" tail "$S" -n 1 --scope s --json | grep -q '"clock":1' || fail "tail -n 1 --scope s"
[ "$("$B" tail "$S" -n all --json | wc -l)" = 3 ] || fail "tail -n all"
[ "$("$B" tail "$S" -n 0 | wc -l)" = 0 ] || fail "tail -n 0"
expect_exit 2 "$B" tail "$S" -n x

# Usage: strict options anywhere, --name=value, version, help, exit codes.
"$B" -V | grep -q "^batpak " || fail "-V"
"$B" --version | grep -q "^batpak " || fail "--version"
[ "$("$B" query --limit=1 "$S" | wc -l)" = 1 ] || fail "an option before the operand, --name=value"
[ "$("$B" query "$S" --limit 2 --scope s | wc -l)" = 2 ] || fail "options after the operand"
expect_exit 2 "$B" query "$S" --bogus
grep -q "unknown option --bogus" "$T/err" || fail "an unknown option is named"
expect_exit 2 "$B" query "$S" --limit
grep -q "needs a value" "$T/err" || fail "a missing value is named"
expect_exit 2 "$B" query "$S" --limit x
expect_exit 2 "$B" tail "$S" -n
[ "$("$B" tail "$S" --lines=1 | wc -l)" = 1 ] || fail "tail --lines=1"
[ "$("$B" tail "$S" -n1 | wc -l)" = 1 ] || fail "tail -n1"
"$B" verify --help | grep -q -- "--all" || fail "verify --help lists --all"
"$B" tail --help | grep -q -- "-f, --follow" || fail "tail --help lists -f"
expect_exit 2 "$B" get "$S"
expect_exit 2 "$B" stream "$S" a b
# A directory that is not a store is refused, and left as it was.
mkdir "$T/plain"
echo hello > "$T/plain/notes.txt"
expect_exit 1 "$B" query "$T/plain"
grep -q "is not a batpak store" "$T/err" || fail "a plain directory is refused"
expect_exit 1 "$B" append "$T/plain" --entity a --scope b --json-payload 1
[ "$(ls "$T/plain")" = "notes.txt" ] || fail "a refused directory was changed"
expect_exit 1 "$B" stats "$T/missing"
# --json from the commands that used to print only for people.
"$B" init "$T/j" --json | grep -q '"initialised"' || fail "init --json"
"$B" snapshot "$S" "$T/snapj" --json | grep -q '"snapshot"' || fail "snapshot --json"

# CAS through the tool: a stale expectation fails with the library's code.
expect_exit 1 "$B" append "$S" --entity user:1 --scope s --json-payload 1 --expect-sequence 0
grep -q BP_ESEQUENCE "$T/err" || fail "CAS error message"
# Bad input: clear errors, non-zero exits, store unchanged.
expect_exit 1 "$B" append "$S" --entity user:1 --scope s --json-payload '{"n": }'
grep -q BP_EJSON "$T/err" || fail "JSON error message"
expect_exit 2 "$B" append "$S" --entity user:1
expect_exit 2 "$B" frobnicate "$S"
expect_exit 1 "$B" get "$S" not-an-id
"$B" stats "$S" --json | grep -q '"events": 3' || fail "bad input changed the store"
expect_exit 0 "$B" append --help
# Numbers are read whole: never as 0 or cut short, which would defeat a CAS.
for n in abc '' -1 ' 1' 1x 4294967296 99999999999999999999 0x2; do
  expect_exit 2 "$B" append "$S" --entity user:1 --scope s --json-payload 1 --expect-sequence "$n"
  grep -q "expect-sequence" "$T/err" || fail "--expect-sequence '$n': $(cat "$T/err")"
done
for k in 0x10000 -1 0x 12z ''; do
  expect_exit 2 "$B" append "$S" --entity user:1 --scope s --json-payload 1 --kind "$k"
done
expect_exit 2 "$B" query "$S" --category 16
expect_exit 2 "$B" query "$S" --category x
# --limit stops the walk: exactly N lines, the first N of the full listing.
[ "$("$B" query "$S" --limit 2 | wc -l)" = 2 ] || fail "query --limit"
[ "$("$B" query "$S" --limit 2)" = "$("$B" query "$S" | head -2)" ] || fail "query --limit order"
expect_exit 2 "$B" query "$S" --limit x
expect_exit 2 "$B" compact "$S" --min-segments 0
expect_exit 2 "$B" compact "$S" --strategy retention --drop-before-ms 12abc
"$B" stats "$S" --json | grep -q '"events": 3' || fail "refused numbers changed the store"

# Export, import into a new store, export again: the same lines.
"$B" export "$S" > "$T/a.jsonl"
"$B" import "$T/copy" < "$T/a.jsonl" 2>/dev/null
"$B" export "$T/copy" > "$T/b.jsonl"
cmp "$T/a.jsonl" "$T/b.jsonl" || fail "export/import round trip"
[ "$(wc -l < "$T/a.jsonl")" = 3 ] || fail "export line count"
printf 'not json\n' > "$T/bad.jsonl"
expect_exit 1 "$B" import "$T/bad-import" < "$T/bad.jsonl"
# Import is strict: a bad field stops it at that line, naming the reason.
good=$(head -1 "$T/a.jsonl")
for bad in 's/"kind":[0-9]*/"kind":70000/' 's/"payload_msgpack_hex":"\([0-9a-f]*\)"/"payload_msgpack_hex":"\1zz"/' \
           's/"event_id":"[0-9a-f]*"/"event_id":"1234"/' 's/"flags":0/"flags":"0"/'; do
  echo "$good" | sed "$bad" > "$T/bad.jsonl"
  rm -rf "$T/bad-import"
  expect_exit 1 "$B" import "$T/bad-import" < "$T/bad.jsonl"
  grep -q "line 1 is not an exported event: " "$T/err" || fail "import error for $bad: $(cat "$T/err")"
done
# ... and names the line and the reason for a NUL in a string, a number past
# 64 bits (which JSON parsers clamp) and a key given twice.
for case in 's/"entity":"user:1"/"entity":"user\\u00001"/@holds a NUL' \
            's/"timestamp_us":[0-9]*/"timestamp_us":99999999999999999999/@out of range' \
            's/"timestamp_us":[0-9]*/"timestamp_us":-99999999999999999999/@out of range' \
            's/"kind":[0-9]*/"kind":18446744073709551617/@out of range' \
            's/"flags":0/"flags":0,"flags":1/@appears twice'; do
  bad=${case%@*}; why=${case#*@}
  { echo "$good"; echo "$good" | sed "$bad"; } > "$T/bad.jsonl"
  rm -rf "$T/bad-import"
  expect_exit 1 "$B" import "$T/bad-import" < "$T/bad.jsonl"
  grep -q "line 2 is not an exported event: .*$why" "$T/err" || fail "import error for $bad: $(cat "$T/err")"
done

# Snapshot, then verify it.
"$B" snapshot "$S" "$T/snap" >/dev/null
"$B" verify "$T/snap" >/dev/null || fail "snapshot verify"

# Compaction of a copy of the crate's store: merge keeps every event exactly;
# retention drops what the rule matches; bad options change nothing.
C="$T/compact"
cp -r "$FIX/basic" "$C" && chmod -R u+w "$C"
"$B" export "$C" > "$T/c.jsonl"
nseg=$(ls "$C"/*.fbat | wc -l)
expect_exit 2 "$B" compact "$C" --strategy retention
expect_exit 2 "$B" compact "$C" --strategy shred
expect_exit 2 "$B" compact "$C" --strategy tombstone --drop-kind 0x1FFFF
[ "$(ls "$C"/*.fbat | wc -l)" = "$nseg" ] || fail "a refused compaction changed the store"
"$B" compact "$C" --json | grep -q "\"segments_removed\":$((nseg - 1))," || fail "compact merge"
[ "$(ls "$C"/*.fbat | wc -l)" = 1 ] || fail "merge left more than one segment"
"$B" export "$C" | cmp - "$T/c.jsonl" || fail "merge changed an event"
"$B" verify "$C" >/dev/null || fail "verify after merge"
"$B" compact "$C" --strategy retention --drop-entity-prefix order: --min-segments 1 | grep -q "31 events (was 41)" \
  || fail "retention of order:*"
[ "$("$B" export "$C" | grep -c order:)" = 0 ] || fail "retention kept an order event"
grep -v '"entity":"order:' "$T/c.jsonl" > "$T/c-kept.jsonl"
"$B" export "$C" | cmp - "$T/c-kept.jsonl" || fail "retention changed a kept event"
"$B" verify "$C" >/dev/null || fail "verify after retention"

# The crate's stores: verify, stats and export work on copies.
for f in basic crashed torn; do
  cp -r "$FIX/$f" "$T/$f" && chmod -R u+w "$T/$f"
  "$B" verify "$T/$f" >/dev/null || fail "verify fixture $f"
  n=$("$B" export "$T/$f" | wc -l)
  want=41; [ "$f" = torn ] && want=40
  [ "$n" = "$want" ] || fail "fixture $f exported $n events"
done

# repair: a sealed segment of a copy of the crate's store has a damaged frame.
D="$T/damaged"
cp -r "$FIX/basic" "$D" && chmod -R u+w "$D"
printf '\377\377\377\377' | dd of="$D/000003.fbat" bs=1 seek=1000 conv=notrunc 2>/dev/null
expect_exit 3 "$B" verify "$D"
grep -q "CRC mismatch" "$T/out" || fail "verify names the damage"
expect_exit 1 "$B" export "$D"
before=$(cat "$D"/* | cksum)
expect_exit 0 "$B" repair "$D" "$T/repaired"
grep -q "kept 40 events" "$T/out" || fail "repair report: $(cat "$T/out")"
grep -q "salvage skips" "$T/err" || fail "repair says what it skipped: $(cat "$T/err")"
[ "$(cat "$D"/* | cksum)" = "$before" ] || fail "repair changed its source"
"$B" verify "$T/repaired" >/dev/null || fail "the repaired store verifies"
[ "$("$B" export "$T/repaired" | wc -l)" = 40 ] || fail "repaired event count"
# Every kept event is exactly one of the crate's events (id, coordinate, kind,
# flags, timestamp, links and payload).
"$B" export "$T/basic" | sort > "$T/orig.jsonl"
"$B" export "$T/repaired" | sort > "$T/rep.jsonl"
[ "$(comm -13 "$T/orig.jsonl" "$T/rep.jsonl" | wc -l)" = 0 ] || fail "repair altered or invented events"
[ "$(comm -23 "$T/orig.jsonl" "$T/rep.jsonl" | wc -l)" = 1 ] || fail "repair lost more than the damaged event"
expect_exit 1 "$B" repair "$D" "$T/repaired"
grep -q "already holds" "$T/err" || fail "repair into a non-empty store"
expect_exit 2 "$B" repair "$D"
# repair never writes into the store it repairs.
expect_exit 1 "$B" repair "$D" "$D"
expect_exit 1 "$B" repair "$D" "$D/sub/new"
grep -q "inside the store" "$T/err" || fail "repair into its source"
[ "$(cat "$D"/* | cksum)" = "$before" ] || fail "repair into itself changed the store"
[ ! -e "$D/sub" ] || fail "repair created a directory in its source"
# relay and follow: usage errors are refused before any connection (the
# commands themselves run against a cluster in test_replication).
if ! "$B" relay "$T/basic" 2>&1 | grep -q "has no replication"; then
  "$B" relay --help | grep -q -- "--exit-when-idle" || fail "relay --help lists --exit-when-idle"
  expect_exit 2 "$B" relay "$T/basic" --stream S
  grep -q -- "--nats URLS" "$T/err" || fail "relay without --nats names it"
  expect_exit 2 "$B" follow "$T/replica" --nats nats://127.0.0.1:1
  expect_exit 2 "$B" relay "$T/basic" --nats nats://127.0.0.1:1 --stream S --replicas 7
  expect_exit 1 "$B" relay "$T/basic" --nats nats://127.0.0.1:1 --stream S --connect-wait-ms 200 --exit-when-idle
  grep -q "BP_EBROKER.*nats://127.0.0.1:1" "$T/err" || fail "an unreachable broker is named: $(cat "$T/err")"
  [ ! -e "$T/replica" ] || fail "follow without --stream created its directory"
fi
echo "cli: all checks passed"
