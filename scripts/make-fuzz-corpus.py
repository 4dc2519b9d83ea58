#!/usr/bin/env python3
"""Regenerates the seed corpora in fuzz/corpus/ from the fixture stores:
valid inputs (frame bodies, payloads, payload JSON) and damaged copies of a
few of them (truncated, one byte flipped)."""
import json, os, random, struct

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fx = os.path.join(root, "tests", "data", "fixtures", "basic")
out = os.path.join(root, "fuzz", "corpus")
rng = random.Random(7)
m = json.load(open(os.path.join(fx, "manifest.json")))

def put(kind, name, data):
    d = os.path.join(out, kind)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)

def damaged(kind, name, data):
    if len(data) > 2:
        put(kind, name + "-trunc", data[: rng.randrange(1, len(data))])
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        put(kind, name + "-flip", bytes(b))

for i, e in enumerate(m["events"][::4]):
    pos = e["disk_pos"]
    seg = open(os.path.join(fx, "%06d.fbat" % pos["segment_id"]), "rb").read()
    body = seg[pos["offset"] + 8 : pos["offset"] + pos["length"]]
    put("frame", "body-%02d" % i, body)
    payload = bytes.fromhex(e["payload_msgpack_hex"])
    put("msgpack", "payload-%02d" % i, payload)
    put("json", "payload-%02d" % i, json.dumps(e["payload"]).encode())
    if i % 3 == 0:
        damaged("frame", "body-%02d" % i, body)
        damaged("msgpack", "payload-%02d" % i, payload)
put("frame", "segment-header", open(os.path.join(fx, "000001.fbat"), "rb").read()[:57])
put("json", "numbers", b'[18446744073709551615,-9223372036854775808,1.5e300,-0.0,1e-7]')
put("json", "unicode", b'{"k":"caf\\u00e9 \\ud83d\\ude00","esc":"\\"\\\\\\/\\b\\f\\n\\r\\t"}')
put("json", "bad-trailing", b'{"a":1} x')
put("msgpack", "all-forms", bytes.fromhex("9fc0c2c3cc80cd0100ce00010000cf0000000100000000d0dfd1ff7fd2ffff7fffd3ffffffff7fffffffca3fc00000cb3ff8000000000000a161c40100d50701029100"))
