"""batpak: an embedded event store (Python binding of batpak for C).

    import batpak
    with batpak.open("./data") as store:
        r = store.append("account:1", "bank", {"amount": 100})
        assert store.get(r.event_id).payload == {"amount": 100}
        assert [e.event_id for e in store.stream("account:1")] == [r.event_id]

Payloads are MessagePack in the store. `append` takes bytes (stored as they
are) or a value that JSON can express (converted by the library); `Event.payload`
is the decoded value when the bytes are MessagePack that JSON can express,
else the bytes. Event ids are `uuid.UUID` values (UUIDv7). Every failure is a
`batpak.Error` subclass carrying the library's code and message.
"""
import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Union

from ._native import ffi, lib

__all__ = [
    "open", "Store", "Cursor", "Subscription", "Receipt", "Entry", "Event", "Notification",
    "Error", "NotFound", "SequenceMismatch", "Corrupt", "ReadOnly", "Locked", "Closed", "Timeout",
    "InvalidArgument", "version",
]

DEFAULT_KIND = 0x1001


# ------------------------------------------------------------------ errors

class Error(Exception):
    """A failure of the library: `code` (e.g. "BP_ENOTFOUND"), `errno` of the
    system call that failed (0 when none), and the library's message."""

    def __init__(self, code: str, message: str, errno: int = 0):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errno = errno


class NotFound(Error, KeyError):
    """No such event or entity (BP_ENOTFOUND)."""


class SequenceMismatch(Error):
    """An expected sequence did not hold (BP_ESEQUENCE)."""


class Corrupt(Error):
    """Stored data is damaged (BP_ECORRUPT, BP_ECRC)."""


class ReadOnly(Error):
    """The store was opened read-only (BP_EREADONLY)."""


class Locked(Error):
    """Another handle, in this or another process, owns the store (BP_ELOCKED)."""


class Closed(Error):
    """The store or subscription was closed (BP_ECLOSED)."""


class Timeout(Error, TimeoutError):
    """A wait ran out (BP_ETIMEOUT)."""


class InvalidArgument(Error, ValueError):
    """An argument was refused (BP_EINVAL, BP_ECOORD, BP_EJSON, BP_ECONFIG, BP_ELIMIT)."""


_BY_CODE = {
    "BP_ENOTFOUND": NotFound, "BP_ESEQUENCE": SequenceMismatch, "BP_ECORRUPT": Corrupt, "BP_ECRC": Corrupt,
    "BP_EREADONLY": ReadOnly, "BP_ELOCKED": Locked, "BP_ECLOSED": Closed, "BP_ETIMEOUT": Timeout,
    "BP_EINVAL": InvalidArgument, "BP_ECOORD": InvalidArgument, "BP_EJSON": InvalidArgument,
    "BP_ECONFIG": InvalidArgument, "BP_ELIMIT": InvalidArgument,
}


def _raise(status: int) -> None:
    err = lib.bp_last_error()
    code = ffi.string(lib.bp_status_name(status)).decode()
    message = ffi.string(err.message).decode("utf-8", "replace")
    raise _BY_CODE.get(code, Error)(code, message, err.sys_errno)


def _check(status: int) -> None:
    if status != lib.BP_OK:
        _raise(status)


def version() -> str:
    """The library's version."""
    return ffi.string(lib.bp_version()).decode()


# --------------------------------------------------------------- values

def _id_out(i) -> uuid.UUID:
    b = ffi.new("uint8_t[16]")
    lib.bp_id_to_bytes(i, b)
    return uuid.UUID(bytes=bytes(ffi.buffer(b, 16)))


def _id_in(value: Union[uuid.UUID, str, bytes]):
    if isinstance(value, str):
        try:
            value = uuid.UUID(value)
        except ValueError:
            raise InvalidArgument("BP_EINVAL", f"not an event id: {value!r}") from None
    if isinstance(value, uuid.UUID):
        value = value.bytes
    if not isinstance(value, (bytes, bytearray)) or len(value) != 16:
        raise InvalidArgument("BP_EINVAL", f"an event id is a UUID, its text or 16 bytes, not {value!r}")
    return lib.bp_id_from_bytes(ffi.from_buffer("uint8_t[]", bytes(value)))


def _text(p) -> str:
    return ffi.string(p).decode("utf-8")


def _encode(payload: Any) -> bytes:
    """bytes as they are; anything else through JSON into MessagePack."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
    _check(lib.bp_json_to_msgpack(text, len(text), out, n))
    try:
        return bytes(ffi.buffer(out[0], n[0]))
    finally:
        lib.bp_free(out[0])


def _decode(raw: bytes) -> Any:
    """The value of MessagePack bytes that JSON can express, else the bytes."""
    out = ffi.new("char **")
    if lib.bp_msgpack_to_json(raw, len(raw), out) != lib.BP_OK:
        return raw
    try:
        return json.loads(ffi.string(out[0]).decode("utf-8"))
    finally:
        lib.bp_free(out[0])


@dataclass(frozen=True)
class Receipt:
    """What an append returns: the event's id and global sequence."""
    event_id: uuid.UUID
    sequence: int


@dataclass(frozen=True)
class Entry:
    """An event as the index knows it (no payload)."""
    event_id: uuid.UUID
    correlation_id: uuid.UUID
    causation_id: Optional[uuid.UUID]
    entity: str
    scope: str
    kind: int
    clock: int
    wall_ms: int
    global_sequence: int
    event_hash: bytes
    prev_hash: bytes

    @staticmethod
    def _of(e) -> "Entry":
        cause = _id_out(e.causation_id)
        return Entry(_id_out(e.event_id), _id_out(e.correlation_id), None if cause.int == 0 else cause,
                     _text(e.entity), _text(e.scope), e.kind, e.clock, e.wall_ms, e.global_sequence,
                     bytes(e.hash_chain.event_hash), bytes(e.hash_chain.prev_hash))


@dataclass(frozen=True)
class Event:
    """A whole stored event: its header fields and its payload."""
    event_id: uuid.UUID
    correlation_id: uuid.UUID
    causation_id: Optional[uuid.UUID]
    entity: str
    scope: str
    kind: int
    clock: int
    timestamp_us: int
    raw: bytes

    @property
    def payload(self) -> Any:
        """The decoded payload (see the module's note), or the bytes."""
        return _decode(self.raw)


@dataclass(frozen=True)
class Notification:
    """What a subscription delivers: an event just published."""
    event_id: uuid.UUID
    entity: str
    scope: str
    kind: int
    sequence: int


def _entries(out) -> List[Entry]:
    try:
        return [Entry._of(out.items[i]) for i in range(out.len)]
    finally:
        lib.bp_entries_free(out)


class _Region:
    """A bp_region and the strings it borrows, kept alive together."""

    def __init__(self, entity_prefix: Optional[str], scope: Optional[str], kind: Optional[int]):
        self.keep = []
        self.c = ffi.new("bp_region *", lib.bp_region_all())
        if entity_prefix is not None:
            self.keep.append(ffi.new("char[]", entity_prefix.encode("utf-8")))
            self.c.entity_prefix = self.keep[-1]
        if scope is not None:
            self.keep.append(ffi.new("char[]", scope.encode("utf-8")))
            self.c.scope = self.keep[-1]
        if kind is not None:
            self.c.fact = lib.BP_FACT_EXACT
            self.c.kind = kind


# ---------------------------------------------------------------- store

class Store:
    """An open store. Use it as a context manager, or call close()."""

    def __init__(self, path: str, readonly: bool = False, sync_every_n_events: Optional[int] = None,
                 segment_max_bytes: Optional[int] = None):
        self._path = ffi.new("char[]", str(path).encode("utf-8"))
        cfg = ffi.new("bp_config *")
        lib.bp_config_init(cfg, self._path)
        if sync_every_n_events is not None:
            cfg.sync_every_n_events = sync_every_n_events
        if segment_max_bytes is not None:
            cfg.segment_max_bytes = segment_max_bytes
        out = ffi.new("bp_store **")
        _check(lib.bp_open_readonly(cfg, out) if readonly else lib.bp_open(cfg, out))
        self._s = out[0]
        self._children = []

    def _store(self):
        if self._s is None:
            raise Closed("BP_ECLOSED", "the store is closed")
        return self._s

    def close(self) -> None:
        """Closes the store (and its cursors and subscriptions). Safe to call twice."""
        if self._s is None:
            return
        for child in self._children:
            child.close()
        s, self._s = self._s, None
        _check(lib.bp_close(s))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def append(self, entity: str, scope: str, payload: Any, kind: int = DEFAULT_KIND,
               expect_sequence: Optional[int] = None, expect_empty: bool = False,
               idempotency_key: Union[uuid.UUID, str, bytes, None] = None) -> Receipt:
        """Appends one event. payload: bytes, or a value converted to
        MessagePack. expect_sequence: the entity's latest clock must be this
        (SequenceMismatch otherwise); expect_empty: it must have no events.
        An idempotency key already in the store returns the first receipt."""
        coord = ffi.new("bp_coord *")
        e, sc = ffi.new("char[]", entity.encode("utf-8")), ffi.new("char[]", scope.encode("utf-8"))
        coord.entity, coord.scope = e, sc
        data = _encode(payload)
        opts = ffi.new("bp_append_options *")
        if expect_sequence is not None:
            opts.expect = lib.BP_EXPECT_SEQUENCE
            opts.expected_sequence = expect_sequence
        elif expect_empty:
            opts.expect = lib.BP_EXPECT_EMPTY
        if idempotency_key is not None:
            opts.idempotency_key = _id_in(idempotency_key)
        r = ffi.new("bp_append_receipt *")
        _check(lib.bp_append_with(self._store(), coord, kind, data, len(data), opts, r))
        return Receipt(_id_out(r.event_id), r.sequence)

    def get(self, event_id: Union[uuid.UUID, str, bytes]) -> Event:
        """The event with this id (NotFound when there is none)."""
        out = ffi.new("bp_event **")
        _check(lib.bp_get(self._store(), _id_in(event_id), out))
        ev = out[0]
        try:
            h = ev.header
            cause = _id_out(h.causation_id)
            return Event(_id_out(h.event_id), _id_out(h.correlation_id), None if cause.int == 0 else cause,
                         _text(ev.entity), _text(ev.scope), h.kind, h.position.sequence, h.timestamp_us,
                         bytes(ffi.buffer(ev.payload, ev.payload_len)) if ev.payload_len else b"")
        finally:
            lib.bp_event_free(ev)

    def stream(self, entity: str) -> List[Entry]:
        """One entity's events, in order."""
        out = ffi.new("bp_entries *")
        _check(lib.bp_stream(self._store(), entity.encode("utf-8"), out))
        return _entries(out)

    def query(self, entity_prefix: Optional[str] = None, scope: Optional[str] = None,
              kind: Optional[int] = None) -> List[Entry]:
        """Events matching every filter given, in global order."""
        region = _Region(entity_prefix, scope, kind)
        out = ffi.new("bp_entries *")
        _check(lib.bp_query(self._store(), region.c, out))
        return _entries(out)

    def cursor(self, entity_prefix: Optional[str] = None, scope: Optional[str] = None,
               kind: Optional[int] = None, position: int = 0) -> "Cursor":
        """A cursor over the matching events from a global position."""
        c = Cursor(self, _Region(entity_prefix, scope, kind), position)
        self._children.append(c)
        return c

    def subscribe(self, entity_prefix: Optional[str] = None, scope: Optional[str] = None,
                  kind: Optional[int] = None) -> "Subscription":
        """Notifications of matching events appended from now on."""
        sub = Subscription(self, _Region(entity_prefix, scope, kind))
        self._children.append(sub)
        return sub

    def refresh(self) -> int:
        """A read-only store catches up with its writer; how many events came."""
        n = ffi.new("uint64_t *")
        _check(lib.bp_refresh(self._store(), n))
        return n[0]

    def sync(self) -> None:
        """Makes every append so far durable."""
        _check(lib.bp_sync(self._store()))

    def __len__(self) -> int:
        st = ffi.new("bp_store_stats *")
        lib.bp_stats(self._store(), st)
        return st.event_count


class Cursor:
    """Reads matching events in global order; iterating yields what is there
    now (a read-only store's cursor catches up with the writer at its end)."""

    def __init__(self, store: Store, region: _Region, position: int):
        self._store, self._region = store, region
        self._c = lib.bp_cursor_open(store._store(), region.c)
        if self._c == ffi.NULL:
            _raise(lib.bp_last_error().code)
        lib.bp_cursor_seek(self._c, position)

    def poll(self, max_entries: int = 256) -> List[Entry]:
        """Up to max_entries new entries (none: an empty list)."""
        if self._c is None:
            raise Closed("BP_ECLOSED", "the cursor is closed")
        out = ffi.new("bp_entries *")
        _check(lib.bp_cursor_poll_batch(self._c, max_entries, out))
        return _entries(out)

    @property
    def position(self) -> int:
        return lib.bp_cursor_position(self._c)

    def __iter__(self) -> Iterator[Entry]:
        while True:
            batch = self.poll()
            if not batch:
                return
            yield from batch

    def close(self) -> None:
        if self._c is not None:
            c, self._c = self._c, None
            lib.bp_cursor_close(c)

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Subscription:
    """Live notifications. fileno() works with select, selectors and asyncio's
    add_reader; recv() waits for the next one."""

    def __init__(self, store: Store, region: _Region):
        self._store, self._region = store, region
        self._sub = lib.bp_subscribe(store._store(), region.c)
        if self._sub == ffi.NULL:
            _raise(lib.bp_last_error().code)

    def recv(self, timeout: Optional[float] = None) -> Notification:
        """The next notification; None waits forever, 0 polls (Timeout when
        nothing comes in time)."""
        if self._sub is None:
            raise Closed("BP_ECLOSED", "the subscription is closed")
        ms = -1 if timeout is None else int(timeout * 1000)
        n = ffi.new("bp_notification *")
        _check(lib.bp_sub_recv(self._sub, n, ms))
        return Notification(_id_out(n.event_id), _text(n.entity), _text(n.scope), n.kind, n.sequence)

    def fileno(self) -> int:
        return lib.bp_sub_fd(self._sub)

    def __iter__(self) -> Iterator[Notification]:
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            lib.bp_sub_close(sub)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(path: str, readonly: bool = False, **config) -> Store:  # noqa: A001 (the module's verb)
    """Opens (creating when needed, unless readonly) the store in path.
    config: sync_every_n_events, segment_max_bytes."""
    return Store(path, readonly=readonly, **config)
