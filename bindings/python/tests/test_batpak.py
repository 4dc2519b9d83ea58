"""The Python binding against the real library: each test in a fresh
directory; one test follows a writer in another process."""
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
import uuid

import batpak


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="batpak-py-")
        self.dir = os.path.join(self.tmp, "data")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_a_first_store_in_five_lines(self):
        with batpak.open(self.dir) as store:
            r = store.append("account:1", "bank", {"amount": 100})
            assert store.get(r.event_id).payload == {"amount": 100}
            assert [e.event_id for e in store.stream("account:1")] == [r.event_id]

    def test_events_come_back_whole_across_a_reopen(self):
        with batpak.open(self.dir) as store:
            a = store.append("account:1", "bank", {"amount": 100, "memo": "näive ✓"})
            b = store.append("account:1", "bank", b"\x01\x02not msgpack", kind=0x1002)
            c = store.append("account:2", "shop", [1, "two", None, True, 2.5])
            self.assertEqual((a.sequence, b.sequence, c.sequence), (0, 1, 2))
            self.assertIsInstance(a.event_id, uuid.UUID)
            self.assertEqual(a.event_id.version, 7)
        with batpak.open(self.dir, readonly=True) as store:
            self.assertEqual(len(store), 3)
            ev = store.get(a.event_id)
            self.assertEqual((ev.entity, ev.scope, ev.kind, ev.clock), ("account:1", "bank", 0x1001, 0))
            self.assertEqual(ev.payload, {"amount": 100, "memo": "näive ✓"})
            raw = store.get(str(b.event_id))
            self.assertEqual(raw.raw, b"\x01\x02not msgpack")
            self.assertEqual(raw.payload, b"\x01\x02not msgpack")  # not MessagePack: the bytes
            self.assertEqual(raw.clock, 1)
            self.assertEqual(store.get(c.event_id.bytes).payload, [1, "two", None, True, 2.5])
            stream = store.stream("account:1")
            self.assertEqual([e.global_sequence for e in stream], [0, 1])
            self.assertEqual(stream[1].prev_hash, stream[0].event_hash)  # the entity's hash chain

    def test_queries_and_cursors_filter_and_keep_order(self):
        with batpak.open(self.dir) as store:
            ids = [store.append(f"user:{i % 3}", "even" if i % 2 == 0 else "odd", {"i": i},
                                kind=0x1001 + i % 2).event_id for i in range(30)]
            self.assertEqual([e.event_id for e in store.query()], ids)
            self.assertEqual(len(store.query(entity_prefix="user:1")), 10)
            self.assertEqual(len(store.query(scope="odd")), 15)
            self.assertEqual(len(store.query(kind=0x1002, entity_prefix="user:")), 15)
            self.assertEqual(store.query(entity_prefix="nobody:"), [])
            with store.cursor(scope="even") as cur:
                first = cur.poll(4)
                self.assertEqual([e.event_id for e in first], ids[0:8:2])
                rest = list(cur)
                self.assertEqual([e.event_id for e in rest], ids[8::2])
                self.assertEqual(cur.poll(), [])
                store.append("user:9", "even", {"late": True})
                self.assertEqual([e.entity for e in cur.poll()], ["user:9"])

    def test_a_subscription_delivers_and_works_with_select(self):
        with batpak.open(self.dir) as store, store.subscribe(entity_prefix="order:") as sub:
            with self.assertRaises(batpak.Timeout):
                sub.recv(timeout=0)
            store.append("user:1", "s", 1)
            r = store.append("order:7", "s", {"qty": 2})
            readable, _, _ = select.select([sub], [], [], 5)
            self.assertEqual(readable, [sub])
            n = sub.recv(timeout=1)
            self.assertEqual((n.event_id, n.entity, n.sequence), (r.event_id, "order:7", 1))

    def test_errors_are_exceptions_with_the_librarys_code(self):
        with batpak.open(self.dir) as store:
            store.append("account:1", "bank", 1)
            with self.assertRaises(batpak.NotFound) as e:
                store.get(uuid.uuid4())
            self.assertEqual(e.exception.code, "BP_ENOTFOUND")
            self.assertIsInstance(e.exception, KeyError)
            with self.assertRaises(batpak.SequenceMismatch) as e:
                store.append("account:1", "bank", 2, expect_sequence=5)
            self.assertIn("expected", e.exception.message)
            store.append("account:1", "bank", 2, expect_sequence=0)
            with self.assertRaises(batpak.InvalidArgument):
                store.append("", "bank", 1)
            with self.assertRaises(batpak.InvalidArgument):
                store.get("not an id")
            with self.assertRaises(batpak.Locked):
                batpak.open(self.dir)
            with batpak.open(self.dir, readonly=True) as ro, self.assertRaises(batpak.ReadOnly):
                ro.append("account:1", "bank", 3)
            key = uuid.uuid4()
            first = store.append("account:2", "bank", {"n": 1}, idempotency_key=key)
            again = store.append("account:2", "bank", {"n": 1}, idempotency_key=key)
            self.assertEqual(first, again)
            self.assertEqual(len(store.stream("account:2")), 1)
        with self.assertRaises(batpak.Closed):
            store.append("account:1", "bank", 4)
        store.close()  # twice: nothing happens
        with self.assertRaises(batpak.Error):
            batpak.open(os.path.join(self.tmp, "missing"), readonly=True)

    def test_a_reader_follows_a_writer_in_another_process(self):
        writer = textwrap.dedent(f"""
            import sys, batpak
            with batpak.open({self.dir!r}) as s:
                for i in range(50):
                    s.append("tick:%d" % (i % 5), "clock", {{"i": i}})
                    if i == 9:
                        print("ten", flush=True)
                        sys.stdin.readline()
        """)
        p = subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "ten")
            with batpak.open(self.dir, readonly=True) as ro, ro.subscribe() as sub:
                self.assertEqual(len(ro), 10)
                cur = ro.cursor()
                self.assertEqual(len(list(cur)), 10)
                p.stdin.write("go\n")
                p.stdin.flush()
                self.assertEqual(p.wait(timeout=30), 0)
                got = [n.sequence for n in (sub.recv(timeout=5) for _ in range(40))]
                self.assertEqual(got, list(range(10, 50)))
                seen = [e.payload["i"] for e in (ro.get(x.event_id) for x in cur)]
                self.assertEqual(seen, list(range(10, 50)))
        finally:
            if p.poll() is None:
                p.kill()


if __name__ == "__main__":
    unittest.main()
