/*
 * batpak/store.h - the store: configuration, lifecycle, appends, reads,
 * queries and maintenance.
 *
 * Threads: every function taking a bp_store is safe to call from any thread
 * at the same time as any other. bp_close is the last call on the handle,
 * with one exception: appends may race it. An append that arrives once
 * bp_close has begun (or after it returned) fails BP_ESHUTDOWN and touches
 * nothing; appends already queued are committed up to shutdown_drain_limit.
 * Reads, queries, cursors, subscriptions and maintenance calls must have
 * returned (and cursors, watchers and reactors been closed) before bp_close.
 *
 * Durability (sync_every_n_events, sync_mode): an append returns after its
 * frame was handed to the operating system (write returned). With
 * sync_every_n_events = N > 1, a power loss may lose up to the last N-1
 * acknowledged appends but never corrupts the store; a process crash loses
 * nothing that was acknowledged. With N = 1 every append is on stable storage
 * before it returns.
 */
#ifndef BATPAK_STORE_H
#define BATPAK_STORE_H

#include "batpak/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bp_store bp_store;
typedef struct bp_cache bp_cache;

/* ------------------------------------------------------------ configuration */

typedef enum bp_sync_mode {
  BP_SYNC_ALL = 0,    /* fsync: data and metadata */
  BP_SYNC_DATA = 1    /* fdatasync: data, and metadata only where needed to read it */
} bp_sync_mode;

typedef enum bp_index_layout {
  BP_INDEX_AOS = 0, BP_INDEX_SOA, BP_INDEX_AOSOA8, BP_INDEX_AOSOA16, BP_INDEX_AOSOA64,
  BP_INDEX_SOAOS
} bp_index_layout;

typedef enum bp_restart_kind {
  BP_RESTART_ONCE = 0,     /* one restart on a fresh segment per open store */
  BP_RESTART_BOUNDED = 1   /* at most max_restarts within any within_ms window */
} bp_restart_kind;

typedef struct bp_restart_policy {
  bp_restart_kind kind;
  uint32_t max_restarts;
  uint64_t within_ms;
} bp_restart_policy;

enum { BP_LOG_ERROR = 0, BP_LOG_WARN = 1, BP_LOG_INFO = 2, BP_LOG_DEBUG = 3 };

/* Every field, its default and its unit are in docs/TUNING.md. */
typedef struct bp_config {
  const char *data_dir;              /* the store directory (created if missing) */
  uint64_t segment_max_bytes;        /* rotate once a segment reaches this size: 256 MiB */
  uint32_t sync_every_n_events;      /* fsync after this many appends: 1000 */
  uint32_t fd_budget;                /* read descriptors kept open: 64 */
  uint32_t writer_queue_capacity;    /* appends that may wait for the writer: 4096 */
  uint32_t broadcast_capacity;       /* per-subscription queue length: 8192 */
  uint64_t cache_map_size_bytes;     /* LMDB cache map size: 1 GiB */
  bp_restart_policy restart_policy;  /* BP_RESTART_ONCE */
  uint32_t shutdown_drain_limit;     /* queued appends written by bp_close: 1024 */
  size_t writer_stack_size;          /* stack of threads the store starts: 1 MiB */
  int64_t (*clock)(void *ctx);       /* NULL: the system clock (microseconds since 1970) */
  void *clock_ctx;
  bp_sync_mode sync_mode;            /* BP_SYNC_ALL */
  uint32_t group_commit_max_batch;   /* appends per write+fsync, 0 = all waiting: 1 */
  bp_index_layout index_layout;      /* BP_INDEX_AOS */
  bool incremental_projection;       /* false */
  bool enable_checkpoint;            /* true */
  uint64_t max_payload_bytes;        /* 64 MiB */
  bool salvage;                      /* open a damaged sealed segment, keep what precedes: false */
  void (*log_fn)(int level, const char *message, void *ctx);   /* NULL: silent */
  void *log_ctx;
  uint32_t query_threads;            /* threads that share a large query copy or
                                      * projection replay, the caller's included,
                                      * at most one per CPU: 2 */
  uint64_t reserved[8];         /* for later versions: zero (docs/ABI.md) */
} bp_config;

/* Fills cfg with the defaults above. data_dir is borrowed: it must outlive bp_open. */
BP_API void bp_config_init(bp_config *cfg, const char *data_dir);

/* ------------------------------------------------------------ lifecycle */

/* Opens (creating if needed) the store in cfg->data_dir, takes its exclusive
 * lock and rebuilds the index: from the checkpoint, then SIDX footers, then
 * frame scans (docs/FORMAT.md, "Opening a store").
 * Errors: BP_ECONFIG (a field is invalid; the message names it; nothing was
 * created), BP_ELOCKED (another bp_store, in this or another process, holds
 * the directory), BP_ECORRUPT (a sealed segment is damaged and cfg->salvage is
 * off; the message names segment and offset), BP_EIO, BP_ENOMEM.
 * Ownership: cfg is only read during the call. *out is freed by bp_close. */
BP_API bp_status bp_open(const bp_config *cfg, bp_store **out);
/* Opens for reading only: no lock, no new segment, nothing written, appends
 * fail BP_EREADONLY. Sees the events the writer had published when it was
 * opened (with no live writer: every whole event in the log), and later ones
 * through bp_refresh, or by itself once it has a subscription (a thread then
 * follows the writer) or a cursor reaches the end. Beside a writer in
 * another process it reads one consistent set of segments: when a
 * compaction changes them under it, it reads them again (BP_EIO if they kept
 * changing through 64 attempts). Reads of such a handle after a compaction by
 * the writer may fail BP_ECORRUPT; they never return another event. */
BP_API bp_status bp_open_readonly(const bp_config *cfg, bp_store **out);
/* Brings a read-only handle up to what the writer has published since (the
 * writer's head file, docs/FORMAT.md), in commit order, as a gap-free
 * prefix: new events become visible to its readers, cursors and
 * subscriptions at once. Without a live writer of this library it reads
 * as far as whole events go. *added (may be NULL): how many events came.
 * On a read-write handle it does nothing (the writer is always current).
 * Errors: BP_ECORRUPT (a frame before the writer's head does not check, or
 * the writer compacted the store since the open: open it again; the handle
 * stays as it was and keeps serving what it had), BP_EIO, BP_ENOMEM.
 * Threads: any thread, but not from a callback of a query, cursor or
 * projection of the same handle (a reopen waits for readers to finish);
 * refreshes of one handle take turns. */
BP_API bp_status bp_refresh(bp_store *store, uint64_t *added);
/* Drains queued appends (up to shutdown_drain_limit; the rest fail
 * BP_ESHUTDOWN), writes the SIDX footer, fsyncs, writes the checkpoint and
 * frees the store. Accepts NULL. Returns the first error met; the store is
 * freed in every case. Appends racing it fail BP_ESHUTDOWN (see "Threads"
 * above): the handle's small record stays allocated for the next 1024 closes
 * in the process so that a late append can be refused; a second bp_close of
 * the same handle in that time fails BP_EINVAL. */
BP_API bp_status bp_close(bp_store *store);

/* ------------------------------------------------------------ appends */

/* The sequence in the receipt of an idempotent repeat whose event a
 * retention compaction has dropped since (its key is remembered: see
 * bp_append_with). */
#define BP_SEQUENCE_RETIRED UINT64_MAX

#define BP_EXPECT_ANY 0u
#define BP_EXPECT_EMPTY 1u
#define BP_EXPECT_SEQUENCE 2u

/* Flags bits reserved by the library: set on the frames of a batch but its
 * last, so that recovery can drop a batch that a crash cut short. */
#define BP_FLAG_BATCH_MEMBER 0x10u

typedef struct bp_disk_pos {
  uint64_t segment_id, offset;
  uint32_t length;              /* the whole frame, prefix included */
} bp_disk_pos;

typedef struct bp_append_receipt { /* written whole by appends, padding included */
  bp_id event_id;
  uint64_t sequence;            /* the global sequence */
  bp_disk_pos disk_pos;
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_append_receipt;

/* Idempotency: an append whose key names an event already in the log writes
 * nothing and returns that event's receipt, provided it repeats it (same
 * payload, entity, scope and kind); otherwise it fails
 * BP_EIDEMPOTENCY_CONFLICT. The keys of the latest 262,144 events that
 * retention compactions dropped are remembered (retired.keys): a repeat of
 * one writes nothing either, and its receipt has the key as event_id,
 * sequence BP_SEQUENCE_RETIRED and a zero disk_pos. Past that window such a
 * key is new again. */
typedef struct bp_append_options {  /* all-zero = a plain append */
  uint32_t expect;                  /* BP_EXPECT_ANY, _EMPTY or _SEQUENCE */
  uint32_t expected_sequence;       /* with BP_EXPECT_SEQUENCE: the entity's latest clock */
  bp_id idempotency_key;            /* nil: none; else it becomes the event id */
  bp_id correlation_id;             /* nil: the event's own id */
  bp_id causation_id;               /* nil: a root cause */
  uint8_t flags;                    /* BP_FLAG_REQUIRES_ACK, _TRANSACTIONAL, _REPLAY */
  uint64_t reserved[4];         /* for later versions: zero (docs/ABI.md) */
} bp_append_options;

typedef struct bp_event_in {
  bp_coord coord;
  bp_kind kind;
  const void *payload;
  size_t len;
  bp_append_options opts;
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_event_in;

/* Appends one event. payload (len bytes, may be NULL when len is 0) is copied.
 * Errors: BP_ECOORD (see bp_coord_validate), BP_ELIMIT (payload over
 * max_payload_bytes), BP_EINVAL (among others a kind of the reserved system
 * 0x0 or effect 0xD category, which only the library writes),
 * BP_ESEQUENCE (CAS; the message has expected and actual), BP_EIDEMPOTENCY_REQUIRED
 * (group commit without a key), BP_EIO (the write or fsync failed; nothing
 * was acknowledged), BP_EWRITER (failed for good), BP_ESHUTDOWN, BP_EREADONLY.
 * On error nothing was written and no file was created or changed. Blocks
 * while writer_queue_capacity appends wait. */
BP_API bp_status bp_append(bp_store *store, const bp_coord *coord, bp_kind kind,
                           const void *payload, size_t len, bp_append_receipt *out);
/* Converts JSON text (NUL-terminated) to MessagePack and appends it. Also BP_EJSON. */
BP_API bp_status bp_append_json(bp_store *store, const bp_coord *coord, bp_kind kind,
                                const char *json, bp_append_receipt *out);
/* Appends an event caused by another: correlation_id and causation_id as given. */
BP_API bp_status bp_append_reaction(bp_store *store, const bp_coord *coord, bp_kind kind,
                                    const void *payload, size_t len, bp_id correlation_id,
                                    bp_id causation_id, bp_append_receipt *out);
/* Appends with options (opts may be NULL). With an idempotency key already in
 * the store, returns the original receipt and writes nothing. */
BP_API bp_status bp_append_with(bp_store *store, const bp_coord *coord, bp_kind kind,
                                const void *payload, size_t len, const bp_append_options *opts,
                                bp_append_receipt *out);
/* Appends n events atomically: every check (coordinates, limits, CAS against
 * the store and against earlier events of the batch) passes before anything is
 * written; the events become visible together; after a crash they are all
 * present or all absent. outs (n receipts) may be NULL. */
BP_API bp_status bp_append_batch(bp_store *store, const bp_event_in *events, size_t n,
                                 bp_append_receipt *outs);

/* A state-machine transition as the store sees it: the kind and payload of
 * the event that records it. The typestate macros of the policy layer produce
 * these; anything else may too. */
typedef struct bp_transition {
  bp_kind kind;
  const void *payload;          /* borrowed */
  size_t len;
} bp_transition;

/* Appends the event that records a transition (the storage half of the
 * crate's apply_transition). opts may be NULL. Errors: those of bp_append_with,
 * and BP_EINVAL for a NULL transition. */
BP_API bp_status bp_apply_transition(bp_store *store, const bp_coord *coord, const bp_transition *transition,
                                     const bp_append_options *opts, bp_append_receipt *out);

/* ------------------------------------------------------------ reads */

/* An index entry (the crate's IndexEntry). */
typedef struct bp_entry {
  bp_id event_id, correlation_id, causation_id;   /* causation nil = root cause */
  const char *entity, *scope;                     /* interned: valid until bp_close */
  bp_kind kind;
  uint64_t wall_ms;
  uint32_t clock;
  bp_hash_chain hash_chain;
  bp_disk_pos disk_pos;
  uint64_t global_sequence;
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_entry;

typedef struct bp_entries {
  bp_entry *items;
  size_t len;
} bp_entries;

/* A whole stored event (the crate's StoredEvent). */
typedef struct bp_event {
  bp_header header;
  const char *entity, *scope;       /* owned by the event */
  bool has_hash_chain;
  bp_hash_chain hash_chain;
  const uint8_t *payload;           /* owned by the event */
  size_t payload_len;
} bp_event;

typedef struct bp_events {
  bp_event **items;
  size_t len;
} bp_events;

/* Reads one event by id, checking its frame's CRC.
 * Errors: BP_ENOTFOUND, BP_ECRC (segment id and offset in the message),
 * BP_ECORRUPT, BP_EIO, BP_ENOMEM. Ownership: free *out with bp_event_free. */
BP_API bp_status bp_get(bp_store *store, bp_id id, bp_event **out);
BP_API void bp_event_free(bp_event *ev);
/* The payload as JSON text, or NULL when it is not one MessagePack document.
 * Ownership: free with bp_free. */
BP_API char *bp_event_payload_json(const bp_event *ev);
/* Looks an entry up by event id without reading the log. Errors: BP_ENOTFOUND. */
BP_API bp_status bp_get_entry(bp_store *store, bp_id id, bp_entry *out);

/* Entries matching a region, in global-sequence order. Free with bp_entries_free. */
BP_API bp_status bp_query(bp_store *store, const bp_region *region, bp_entries *out);
/* Calls visit for each matching entry in global-sequence order until it returns false.
 * The entry is valid during the call. */
BP_API bp_status bp_query_each(bp_store *store, const bp_region *region,
                               bool (*visit)(const bp_entry *entry, void *ctx), void *ctx);
/* The events of exactly this entity, in clock order. */
BP_API bp_status bp_stream(bp_store *store, const char *entity, bp_entries *out);
/* bp_stream, calling visit for each entry as it is found (valid during the call)
 * until it returns false: nothing is collected. */
BP_API bp_status bp_stream_each(bp_store *store, const char *entity,
                                bool (*visit)(const bp_entry *entry, void *ctx), void *ctx);
BP_API bp_status bp_by_scope(bp_store *store, const char *scope, bp_entries *out);
BP_API bp_status bp_by_fact(bp_store *store, bp_kind kind, bp_entries *out);
BP_API void bp_entries_free(bp_entries *entries);
BP_API void bp_events_free(bp_events *events);

BP_API bool bp_entry_is_correlated(const bp_entry *a, const bp_entry *b);
BP_API bool bp_entry_is_caused_by(const bp_entry *e, const bp_entry *cause);
BP_API bool bp_entry_is_root_cause(const bp_entry *e);

/* Reads the event `id` and its entity's earlier events, newest first, up to
 * `limit` events in all (the event itself included). The walk follows the
 * entity's stream, not hashes (events with equal payloads have equal hashes),
 * and checks every link: an event's prev_hash must be its predecessor's
 * event_hash, and the first event's prev_hash must be zero.
 * Errors: BP_ENOTFOUND, BP_ECORRUPT (a broken link, named), read errors of bp_get.
 * Ownership: free *out with bp_events_free. */
BP_API bp_status bp_walk_ancestors(bp_store *store, bp_id id, size_t limit, bp_events *out);

/* ------------------------------------------------------------ frames */

/* A frame is an event exactly as the log stores it: a 4-byte big-endian body
 * length, the body's CRC-32 (big-endian) and the MessagePack body
 * (docs/FORMAT.md, section 3). Replication carries frames, so that a replica
 * holds the same bytes as its source. */

/* Reads the frame of event id, checking its CRC. *frame (malloc'd: free with
 * bp_free) receives *len bytes. Errors: those of bp_get. */
BP_API bp_status bp_get_frame(bp_store *store, bp_id id, void **frame, size_t *len);
/* Decodes a whole frame of len bytes, after checking its length prefix, its
 * CRC and that its content hash (and its chain's event hash) is the BLAKE3 of
 * its payload. Errors: BP_ECRC, BP_ESERIAL (a body that does not decode, or
 * hashes that do not match; the message says which), BP_EINVAL, BP_ENOMEM.
 * Ownership: free *out with bp_event_free. */
BP_API bp_status bp_frame_decode(const void *frame, size_t len, bp_event **out);

typedef struct bp_frame_in {
  const void *data;             /* a whole frame, as bp_get_frame returns it */
  size_t len;
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_frame_in;

/* Appends n frames of another store exactly as they are (same ids, clocks,
 * timestamps, hashes and bytes), atomically: every check passes before
 * anything is written, and they become visible together. Each frame must
 * decode (bp_frame_decode's checks), be no larger than max_payload_bytes
 * allows, carry an event id this store does not hold, and continue its
 * entity: its clock is the entity's next, and its chain's prev_hash is the
 * entity's last event hash (zeros for an entity's first event). A batch of
 * the source stays atomic through the flag its frames carry: the last frame
 * given must not be a batch member (BP_FLAG_BATCH_MEMBER). Any kind is
 * accepted, the library's own included: the frames are the source's record.
 * Errors: BP_EDIVERGED (an id already here, a clock or chain that does not
 * continue; the message names the frame and the entity), BP_ECRC,
 * BP_ESERIAL, BP_ECOORD, BP_ELIMIT, BP_EINVAL (among others a last frame
 * that is a batch member), and the write errors of bp_append. On error
 * nothing was written. outs (n receipts) may be NULL. */
BP_API bp_status bp_append_frames(bp_store *store, const bp_frame_in *frames, size_t n, bp_append_receipt *outs);

/* ------------------------------------------------------------ cursors */

/* A pull cursor over the events matching a region, in global-sequence order.
 * It never skips an event: its position is the global sequence where the next
 * poll starts looking (0 = the beginning). A poll costs O(log n + k) where k is
 * the number of events it examines. A cursor is used by one thread at a time. */
typedef struct bp_cursor bp_cursor;

/* Opens a cursor at position 0. The region (and its strings) is copied.
 * Returns NULL on failure (bp_last_error: BP_EINVAL, BP_ENOMEM). */
BP_API bp_cursor *bp_cursor_open(bp_store *store, const bp_region *region);
/* Opens a named durable cursor: its position is loaded from the store
 * directory (cursors/NAME), where bp_cursor_commit saved it. A consumer that
 * restarts resumes where it committed (at-least-once, never a skipped event).
 * name: 1..128 characters of [A-Za-z0-9._-], not starting with '.'.
 * On a read-only handle too (a consumer in another process, such as a relay):
 * the file is the consumer's, in the store's cursors/ directory, and a
 * writer's retention compaction re-anchors it like its own. Should such a
 * commit race that compaction and name an event it drops, the cursor starts
 * over at its next open (at-least-once still: nothing is skipped).
 * Returns NULL on failure (BP_EINVAL for a bad name, BP_ECORRUPT for a damaged
 * cursor file, BP_EIO). */
BP_API bp_cursor *bp_cursor_open_durable(bp_store *store, const char *name, const bp_region *region);
/* The next matching entry. Errors: BP_ENOTFOUND when there is nothing new. */
BP_API bp_status bp_cursor_poll(bp_cursor *cursor, bp_entry *out);
/* Up to max matching entries (possibly none: out->len == 0). Free with bp_entries_free. */
BP_API bp_status bp_cursor_poll_batch(bp_cursor *cursor, size_t max, bp_entries *out);
BP_API uint64_t bp_cursor_position(const bp_cursor *cursor);
BP_API void bp_cursor_seek(bp_cursor *cursor, uint64_t position);
/* How many visible events lie at or after the cursor's position (its lag). */
BP_API uint64_t bp_cursor_behind(const bp_cursor *cursor);
/* Saves a durable cursor's position (write to a temporary file, fsync,
 * rename), in the numbering of the log as it is now, anchored on the last
 * event the cursor examined: after a restart it resumes right after that
 * event, and when a retention compaction drops it, at the first event kept
 * after it. Waits for a compaction that is committing; not from inside a
 * query, cursor or projection callback. Errors: BP_EINVAL (not durable), BP_EIO. */
BP_API bp_status bp_cursor_commit(bp_cursor *cursor);
/* Frees the cursor (a durable one is not committed). Accepts NULL. Must be
 * called before bp_close of its store. */
BP_API void bp_cursor_close(bp_cursor *cursor);

/* ------------------------------------------------------------ subscriptions */

/* A lossy push subscription: a bounded queue (broadcast_capacity) of
 * notifications of new events matching a region. The writer never waits for
 * a subscriber: when the queue is full the notification is dropped and counted
 * (bp_sub_dropped). For a feed that never loses an event, use a cursor. */
typedef struct bp_subscription bp_subscription;

typedef struct bp_notification {
  bp_id event_id, correlation_id, causation_id;
  const char *entity, *scope;        /* interned: valid until bp_close */
  bp_kind kind;
  uint64_t sequence;                 /* the global sequence */
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_notification;

/* Subscribes to events appended from now on that match region (copied; its
 * clock range is ignored, as for live matching in the crate).
 * Returns NULL on failure (bp_last_error: BP_ENOMEM, BP_EINVAL, BP_ECLOSED). */
BP_API bp_subscription *bp_subscribe(bp_store *store, const bp_region *region);
/* Waits for the next notification: timeout_ms < 0 waits forever, 0 polls.
 * Errors: BP_ETIMEOUT, BP_ECLOSED (the store closed, or a take limit was
 * reached; nothing more will come), BP_ENOMEM (an operation could not be
 * added: ended). Threads: one receiver at a time. */
BP_API bp_status bp_sub_recv(bp_subscription *sub, bp_notification *out, int timeout_ms);
/* A descriptor that is readable exactly while notifications wait (for poll,
 * epoll, libuv). Do not read or close it: bp_sub_recv consumes. -1 if the
 * platform has no eventfd. */
BP_API int bp_sub_fd(bp_subscription *sub);
/* Notifications dropped because the queue was full. */
BP_API uint64_t bp_sub_dropped(const bp_subscription *sub);
/* Chainable operations applied at receive time, in the order added (the
 * crate's SubscriptionOps). filter drops notifications pred rejects; map
 * rewrites a notification in place; take ends the subscription (BP_ECLOSED)
 * after n more deliveries. They return sub. ctx is borrowed until bp_sub_close.
 * An operation that cannot be added (out of memory) ends the subscription:
 * bp_sub_recv then returns BP_ENOMEM. */
BP_API bp_subscription *bp_sub_filter(bp_subscription *sub, bool (*pred)(const bp_notification *, void *ctx),
                                      void *ctx);
BP_API bp_subscription *bp_sub_map(bp_subscription *sub, void (*fn)(bp_notification *, void *ctx), void *ctx);
BP_API bp_subscription *bp_sub_take(bp_subscription *sub, uint64_t n);
/* Ends the subscription and frees it (the writer forgets it at its next
 * append). Accepts NULL. May be called before or after bp_close. */
BP_API void bp_sub_close(bp_subscription *sub);

/* ------------------------------------------------------------ reactors */

typedef struct bp_reactor bp_reactor;
typedef struct bp_emitter bp_emitter;
/* Called on the reactor's thread for each matching event, in global order.
 * The event is valid during the call. */
typedef void (*bp_react_fn)(const bp_event *ev, bp_emitter *out, void *ctx);
/* Queues an event to append when react_fn returns, as a reaction: its
 * correlation id is the source event's, its causation the source event.
 * The payload is copied. Errors: BP_ECOORD, BP_EINVAL (a reserved kind),
 * BP_ELIMIT, BP_ENOMEM. */
BP_API bp_status bp_emit(bp_emitter *out, const bp_coord *coord, bp_kind kind, const void *payload, size_t len);
/* Starts a thread that reacts to every event matching region appended from
 * now on (it follows a cursor, so it misses none). Errors of reading or of
 * appending reactions go to the log callback, never silently dropped.
 * Returns NULL on failure (bp_last_error). Stop it before bp_close. */
BP_API bp_reactor *bp_react_loop(bp_store *store, const bp_region *region, bp_react_fn fn, void *ctx);
/* How many source events the reactor has handled. */
BP_API uint64_t bp_reactor_handled(const bp_reactor *reactor);
/* Stops the reactor after the event it is handling, joins its thread and
 * frees it. Accepts NULL. */
BP_API void bp_reactor_stop(bp_reactor *reactor);

/* ------------------------------------------------------------ caches */

/* A projection cache: a byte-keyed store of encoded states. The store owns a
 * cache passed to bp_open_with_cache and destroys it at bp_close. */
#define BP_CACHE_VERSION 1
#define BP_CACHE_CAP_PREFETCH 0x1u    /* prefetch is worth calling */
#define BP_CACHE_CAP_DURABLE 0x2u     /* survives a restart */

typedef struct bp_cache_vtable {
  uint32_t version;                   /* BP_CACHE_VERSION */
  uint32_t capabilities;              /* BP_CACHE_CAP_* */
  /* *value is malloc'd by the cache and freed by the caller with free().
   * BP_ENOTFOUND when the key is absent. */
  bp_status (*get)(void *ctx, const void *key, size_t key_len, void **value, size_t *value_len);
  bp_status (*put)(void *ctx, const void *key, size_t key_len, const void *value, size_t value_len);
  bp_status (*delete_prefix)(void *ctx, const void *prefix, size_t prefix_len);
  bp_status (*sync)(void *ctx);       /* optional */
  bp_status (*prefetch)(void *ctx, const void *key, size_t key_len);   /* optional */
  void (*destroy)(void *ctx);         /* optional */
} bp_cache_vtable;

/* A cache over a user-supplied table (copied) and context.
 * Errors: BP_EINVAL (a required function missing, unknown version), BP_ENOMEM. */
BP_API bp_status bp_cache_custom(const bp_cache_vtable *vtable, void *ctx, bp_cache **out);
/* A cache that stores nothing (every get misses). */
BP_API bp_status bp_cache_noop(bp_cache **out);
/* The optional parts this build of the library has (bits of BP_FEATURE_*):
 * the cache backends are build options (BATPAK_WITH_LMDB, BATPAK_WITH_SQLITE,
 * both on by default), so that programs that use no cache link neither. */
#define BP_FEATURE_LMDB_CACHE 0x1u
#define BP_FEATURE_SQLITE_CACHE 0x2u
BP_API uint32_t bp_build_features(void);
/* An LMDB environment in directory path (created, mode 0700) with a map of
 * map_size bytes (0: 1 GiB). Errors: BP_EIO (LMDB's message), BP_ENOMEM,
 * BP_EUNSUPPORTED (built without LMDB; nothing is created). */
BP_API bp_status bp_cache_lmdb_open(const char *path, size_t map_size, bp_cache **out);
/* A SQLite database file at path (created, WAL). Errors: BP_EIO, BP_ENOMEM,
 * BP_EUNSUPPORTED (built without SQLite; nothing is created). */
BP_API bp_status bp_cache_sqlite_open(const char *path, bp_cache **out);
/* The operations, for callers that use a cache directly (the store calls them
 * for projections). Errors: those of the backend; BP_ENOTFOUND from get. */
BP_API bp_status bp_cache_get(bp_cache *cache, const void *key, size_t key_len, void **value, size_t *value_len);
BP_API bp_status bp_cache_put(bp_cache *cache, const void *key, size_t key_len, const void *value, size_t value_len);
BP_API bp_status bp_cache_delete_prefix(bp_cache *cache, const void *prefix, size_t prefix_len);
BP_API bp_status bp_cache_sync(bp_cache *cache);
BP_API bp_status bp_cache_prefetch(bp_cache *cache, const void *key, size_t key_len);
BP_API uint32_t bp_cache_capabilities(const bp_cache *cache);
/* Destroys a cache the store does not own. Accepts NULL. */
BP_API void bp_cache_free(bp_cache *cache);

/* As bp_open, with a projection cache that the store takes over (it is freed
 * by bp_close, or here if the open fails). */
BP_API bp_status bp_open_with_cache(const bp_config *cfg, bp_cache *cache, bp_store **out);
/* As bp_open with an LMDB cache in cfg->data_dir/cache (map size
 * cfg->cache_map_size_bytes). */
BP_API bp_status bp_open_with_lmdb_cache(const bp_config *cfg, bp_store **out);

/* ------------------------------------------------------------ projections */

#define BP_PROJECTION_VERSION 1

/* Folds an entity's events into a caller-owned state. Callbacks run on the
 * calling thread; state and ctx are the caller's. */
typedef struct bp_projection {
  uint32_t version;                   /* BP_PROJECTION_VERSION */
  const char *name;                   /* part of the cache key */
  uint64_t schema_version;            /* part of the cache key: bump it when encode changes */
  const bp_kind *kinds;               /* relevant kinds; kinds_len 0: every event */
  size_t kinds_len;
  bool incremental;                   /* apply may continue from a cached state */
  bp_status (*init)(void *state, void *ctx);
  bp_status (*apply)(void *state, const bp_event *ev, void *ctx);
  /* Optional, for caching: encode allocates *bytes with malloc (the library
   * frees it); decode rebuilds a state from them, failing for bytes it does
   * not understand (the library then replays instead). */
  bp_status (*encode)(const void *state, void **bytes, size_t *len, void *ctx);
  bp_status (*decode)(void *state, const void *bytes, size_t len, void *ctx);
  /* Optional: releases what init/apply/decode allocated in a state that the
   * library abandons (a cached state that failed to decode, before the replay
   * initialises it again). The caller still owns the final state. */
  void (*destroy)(void *state, void *ctx);
} bp_projection;

enum { BP_FRESH_CONSISTENT = 0, BP_FRESH_BEST_EFFORT = 1 };
typedef struct bp_freshness {
  int mode;                           /* BP_FRESH_CONSISTENT or BP_FRESH_BEST_EFFORT */
  uint64_t max_stale_ms;              /* best effort: how old a cached state may be */
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_freshness;

/* Projects entity into state: from the cache when freshness allows
 * (consistent: the cached state covers the latest relevant event; best
 * effort: it is younger than max_stale_ms), by applying only newer events to a
 * cached state (cfg.incremental_projection and proj->incremental), or by
 * replaying every relevant event from init. A replayed or updated state is
 * written back to the cache when the projection can encode.
 * Errors: BP_ENOTFOUND (no relevant events), BP_EINVAL (bad vtable), errors of
 * the callbacks (returned as they are), read errors. If it fails, state is
 * whatever the callbacks left in it. */
BP_API bp_status bp_project(bp_store *store, const char *entity, const bp_projection *proj, void *ctx,
                            bp_freshness freshness, void *state);

/* A watcher re-projects an entity each time it changes. */
typedef struct bp_watcher bp_watcher;
/* Returns NULL on failure (bp_last_error). entity, proj and ctx must outlive it. */
BP_API bp_watcher *bp_watch_projection(bp_store *store, const char *entity, const bp_projection *proj, void *ctx,
                                       bp_freshness freshness);
/* Waits (timeout_ms < 0: forever) until the entity gets a relevant event,
 * then projects it into state. Errors: BP_ETIMEOUT, BP_ECLOSED, bp_project's. */
BP_API bp_status bp_watcher_recv(bp_watcher *watcher, void *state, int timeout_ms);
BP_API void bp_watcher_close(bp_watcher *watcher);

/* ------------------------------------------------------------ snapshots */

/* Copies the store into dest_dir (created, mode 0700; it must not exist or be
 * empty, and must not be the store's directory or inside it): a directory that
 * opens as a store holding every event acknowledged before the call, even while
 * appends continue. Sealed segments are hard-linked where the file system
 * allows (they never change), copied otherwise; the active segment is copied up
 * to the last acknowledged frame. On a read-only handle (a live backup of a
 * store another process writes) it first refreshes the handle (bp_refresh),
 * then copies the events the handle holds, each segment read through a
 * descriptor opened in one moment; should the writer have compacted the store
 * in between, it refreshes and starts again (BP_EIO after 8 attempts).
 * Errors: BP_EINVAL (dest_dir), BP_EIO, BP_ENOMEM, and those of bp_refresh;
 * on error the files it made are removed, and dest_dir too if it created it. */
BP_API bp_status bp_snapshot(bp_store *store, const char *dest_dir);
/* Called as a long operation goes: done of total bytes (total may grow). */
typedef void (*bp_progress_fn)(uint64_t done, uint64_t total, void *ctx);
/* bp_snapshot, calling fn (may be NULL) after each piece copied, on the
 * calling thread. */
BP_API bp_status bp_snapshot_with_progress(bp_store *store, const char *dest_dir, bp_progress_fn fn, void *ctx);

/* ------------------------------------------------------------ compaction */

#define BP_COMPACT_MERGE 0      /* keep every event */
#define BP_COMPACT_RETENTION 1  /* leave out the events keep() rejects */
#define BP_COMPACT_TOMBSTONE 2  /* rewrite the events keep() rejects as kind BP_KIND_TOMBSTONE */

typedef struct bp_compaction_config {
  int strategy;                 /* BP_COMPACT_MERGE, _RETENTION or _TOMBSTONE */
  /* Retention and tombstone: false for the events to drop or tombstone. Called
   * once per event of the merged segments, on the calling thread; the event is
   * valid only during the call. */
  bool (*keep)(const bp_event *ev, void *ctx);
  void *ctx;
  size_t min_segments;          /* merge only when at least this many are sealed; 0 means 2 */
  uint64_t reserved[4];         /* for later versions: zero (docs/ABI.md) */
} bp_compaction_config;

typedef struct bp_compaction_result {
  size_t segments_removed;      /* segment files that no longer exist */
  uint64_t bytes_reclaimed;     /* their bytes minus the merged segment's */
  uint64_t reserved[4];         /* for later versions: zero (docs/ABI.md) */
} bp_compaction_result;

/* Merges every segment below the highest (the sealed ones; the active segment
 * is never touched) into one segment that takes the lowest of their ids, by
 * the strategy, when there are at least min_segments of them; then rebuilds
 * the index and writes a checkpoint. With fewer it succeeds and changes
 * nothing (result all zero).
 *
 * Appends continue while the new segment is written and wait only for the
 * swap at the end; reads wait for it too. A crash at any point leaves either
 * the old segments or the new one. Retention renumbers the global sequences
 * of every later event (cursors follow; bp_entry values taken before do not),
 * and leaves a gap in the hash chain of an entity it drops only some events of;
 * retention and tombstone clear the projection cache. Strings of events read
 * before stay valid. Do not call it from a callback of a query, cursor or
 * projection of the same store, nor while bp_close runs.
 * Errors: BP_EINVAL (strategy, a missing keep), BP_EREADONLY, BP_EIO,
 * BP_ECRC / BP_ECORRUPT (a damaged frame in a segment to merge: nothing is
 * changed), BP_ENOMEM. On error the store is as it was. */
BP_API bp_status bp_compact(bp_store *store, const bp_compaction_config *cfg, bp_compaction_result *result);

/* ------------------------------------------------------------ verification */

typedef struct bp_verify_problem {
  char where[96];               /* "segment 000003 offset 1034", "entity user:1 clock 4", "index.ckpt" */
  char what[224];
} bp_verify_problem;

typedef struct bp_verify_report {
  uint64_t segments, frames, entities;
  uint64_t torn_bytes;          /* at the end of unsealed segments: not a problem */
  bp_verify_problem *problems;  /* owned: bp_verify_report_free */
  size_t problem_count;
  uint64_t reserved[4];         /* for later versions: zero (docs/ABI.md) */
} bp_verify_report;

/* Checks the store in directory dir (open or closed; read only, no lock):
 * every frame's length and CRC and that it decodes; that each content hash
 * is the BLAKE3 of its payload; every SIDX footer against the frames it
 * describes; every entity's hash chain (prev_hash links) and clocks; and the
 * checkpoint against the segments. Each problem is reported with its place.
 * What retention leaves is not a problem: in the lowest segment (where a
 * compaction writes) an entity's clock may jump forward and its chain link to
 * a dropped event, and so may its next event after that segment. Such a jump
 * anywhere else is reported.
 * Errors: BP_ECORRUPT when problems were found (report filled), BP_EIO,
 * BP_ENOMEM (the check was cut short: no problems are listed). The report is
 * filled in every case; free it with bp_verify_report_free. */
BP_API bp_status bp_verify(const char *dir, bp_verify_report *report);
/* bp_verify, calling fn(done, total, ctx) on the calling thread after each
 * segment checked (bytes of segment files). */
BP_API bp_status bp_verify_with_progress(const char *dir, bp_verify_report *report, bp_progress_fn fn, void *ctx);
BP_API void bp_verify_report_free(bp_verify_report *report);

/* ------------------------------------------------------------ maintenance */

/* Forces an fsync (per sync_mode) of everything written so far.
 * Errors: BP_EIO, BP_EWRITER, BP_EREADONLY. */
BP_API bp_status bp_sync(bp_store *store);

typedef struct bp_store_stats {
  uint64_t event_count;         /* visible events */
  uint64_t global_sequence;     /* the sequence the next event will get */
  uint64_t reserved[6];         /* for later versions: zero (docs/ABI.md) */
} bp_store_stats;
BP_API void bp_stats(bp_store *store, bp_store_stats *out);

typedef enum bp_open_path {
  BP_OPEN_EMPTY = 0,            /* no events */
  BP_OPEN_CHECKPOINT = 1,       /* index.ckpt, then the segments after its watermark */
  BP_OPEN_SIDX = 2,             /* SIDX footers (and scans of unsealed segments) */
  BP_OPEN_SCAN = 3,             /* frame scans only */
  BP_OPEN_INDEX = 4             /* the persistent index (index/), then the segments after it */
} bp_open_path;

typedef struct bp_store_diagnostics {
  uint64_t event_count;
  uint64_t global_head;          /* next global sequence */
  uint64_t durable_sequence;     /* events below this were fsynced */
  uint64_t segment_count;
  uint64_t active_segment_id;    /* 0 before the first append */
  uint64_t active_segment_bytes; /* bytes of frames in the active segment */
  uint64_t torn_bytes_dropped;   /* bytes of torn tails ignored at open */
  uint64_t batch_frames_dropped; /* frames of interrupted batches ignored at open */
  bp_open_path open_path;
  uint32_t segments_from_sidx, segments_scanned;
  uint32_t writer_restarts;
  uint64_t write_groups;         /* writes of one or more appends since open */
  uint64_t fsyncs;               /* fsyncs (or fdatasyncs) of the active segment since open */
  bool writer_failed;
  bool read_only;
  bp_index_layout index_layout;
  uint64_t index_tiles;          /* tiles of the scan indexes (tiled layouts) */
  uint64_t entity_count, scope_count;
  uint64_t queued_appends;       /* appends waiting for the writer */
  uint32_t query_helpers;        /* threads that help with large reads (query_threads - 1) */
  uint64_t helper_chunks;        /* pieces of large reads they did since open */
  uint64_t reserved[8];         /* for later versions: zero (docs/ABI.md) */
} bp_store_diagnostics;
BP_API void bp_diagnostics(bp_store *store, bp_store_diagnostics *out);

#ifdef __cplusplus
}
#endif

#endif /* BATPAK_STORE_H */
