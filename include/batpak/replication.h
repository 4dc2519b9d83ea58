/*
 * batpak/replication.h - carrying a store's log through NATS JetStream
 * (docs/REPLICATION.md).
 *
 * A separate library, libbatpak-nats, built when nats.c is found (CMake
 * option BATPAK_WITH_NATS), so that libbatpak itself keeps its small set of
 * dependencies. Link it with `pkg-config --libs batpak-nats`.
 *
 * The store stays the source of truth and is its own outbox. A relay
 * publishes the events of a region, in global order, as messages whose body
 * is the event's exact frame; a follower consumes them with a durable
 * consumer and appends the frames to a replica (bp_append_frames), which
 * then holds the source's bytes. Both are driven by the caller (no thread of
 * their own): call the pump functions in a loop.
 *
 * Threads: a relay or follower is used by one thread at a time; its store
 * may be used by others meanwhile.
 */
#ifndef BATPAK_REPLICATION_H
#define BATPAK_REPLICATION_H

#include "batpak/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How to reach the brokers and which stream to use. Strings are borrowed:
 * they must outlive the open call only. */
typedef struct bp_nats_options {
  const char *urls;              /* comma-separated server URLs, e.g. "nats://127.0.0.1:4222" */
  const char *stream;            /* the JetStream stream: 1-64 of [A-Za-z0-9_-] */
  const char *subject_prefix;    /* subjects are PREFIX.<scope>.<entity>: "batpak" */
  const char *durable;           /* the relay's durable cursor ("relay.STREAM") or the
                                  * follower's durable consumer ("batpak-follower") */
  uint32_t replicas;             /* relay: replicas of a stream it creates: 1 */
  uint64_t duplicate_window_ms;  /* relay: de-duplication window of a stream it creates: 120000 */
  uint32_t max_pending;          /* relay: publishes awaiting acknowledgement at once: 4096 */
  uint32_t ack_wait_ms;          /* how long an acknowledgement may take: 5000 */
  uint32_t connect_wait_ms;      /* how long opening keeps trying to reach a server: 10000 */
  uint32_t fetch_batch;          /* follower: messages asked for at once: 1024 */
  /* Credentials and TLS, handed to nats.c as they are (NULL: not used). */
  const char *creds_file;        /* a user's JWT and NKey seed (natsOptions_SetUserCredentialsFromFiles) */
  const char *user, *password;   /* natsOptions_SetUserInfo */
  const char *token;             /* natsOptions_SetToken */
  const char *tls_ca_file;       /* trusted certificates (natsOptions_LoadCATrustedCertificates) */
  const char *tls_cert_file;     /* the client's certificate chain and key */
  const char *tls_key_file;      /*   (natsOptions_LoadCertificatesChain) */
  bool tls_required;             /* a TLS connection even without the files above */
  void (*log_fn)(int level, const char *message, void *ctx);   /* BP_LOG_*; NULL: silent */
  void *log_ctx;
  uint64_t reserved[8];          /* for later versions: zero (docs/ABI.md) */
} bp_nats_options;

/* Fills o with the defaults above; urls and stream stay NULL. */
BP_API void bp_nats_options_init(bp_nats_options *o);

/* ------------------------------------------------------------ relay */

typedef struct bp_relay bp_relay;

/* Connects (retrying with backoff for connect_wait_ms), creates the stream
 * (subjects PREFIX.>, files, `replicas` copies, the de-duplication window)
 * when it is absent, and finds where to resume: right after the event the
 * stream's last message carries. A stream whose last message is not an event
 * of this store belongs to another primary: BP_EFENCED. A purged stream
 * (no message, but a last sequence) does not say what it held: the relay
 * publishes nothing into it (BP_EBROKER, retried) until it is deleted.
 * store may be read-only (a relay beside the writer's process) or
 * read-write; region (copied; NULL: every event) selects what is relayed.
 * Errors: BP_EBROKER (no server answered: the message names the URLs and
 * nats.c's reason; or the broker refused a request), BP_EFENCED, BP_EINVAL
 * (a missing or malformed option, named), BP_ECONFIG (the stream exists and
 * does not take PREFIX.>, or its subjects overlap another stream's), those of
 * bp_cursor_open_durable, BP_ENOMEM. Nothing is published by the open. */
BP_API bp_status bp_relay_open(bp_store *store, const bp_region *region, const bp_nats_options *opts,
                               bp_relay **out);
/* Publishes the events the stream lacks, in windows of max_pending
 * asynchronous publishes whose acknowledgements it awaits, then commits the
 * durable cursor. When there is nothing to publish it waits up to
 * timeout_ms (< 0: forever) for the store to get some. After a broker
 * failure it resumes from the stream's last message (retrying with backoff
 * within timeout_ms): JetStream's de-duplication and the expected-last-
 * sequence check on every publish keep the stream exactly once and in order.
 * *published (may be NULL): events the stream acknowledged in this call.
 * Errors: BP_EFENCED (another primary published into the stream: stop),
 * BP_ELIMIT (an event larger than the server's max_payload), BP_EBROKER
 * (the broker kept failing for the whole timeout), read errors of the store. */
BP_API bp_status bp_relay_pump(bp_relay *relay, int timeout_ms, uint64_t *published);

typedef struct bp_relay_stats {
  uint64_t published;            /* events the stream acknowledged since the open */
  uint64_t behind_events;        /* events of the log at or after the relay's position */
  uint64_t behind_ms;            /* age of the oldest event not yet published (0: none) */
  uint64_t stream_sequence;      /* the stream's last sequence as the relay knows it */
  uint64_t resumes;              /* times it found its place again after a failure */
  uint64_t reserved[4];
} bp_relay_stats;
BP_API void bp_relay_get_stats(bp_relay *relay, bp_relay_stats *out);
/* Closes the connection and frees the relay (its store stays open). Accepts NULL. */
BP_API void bp_relay_close(bp_relay *relay);

/* ------------------------------------------------------------ follower */

typedef struct bp_follower bp_follower;

/* Connects, and creates or binds the durable pull consumer `durable` of the
 * stream. replica must be opened read-write (other processes may read it
 * through read-only handles meanwhile); it may be empty or hold what an
 * earlier follower applied. Errors: BP_EBROKER, BP_ENOTFOUND (no such
 * stream), BP_EINVAL, BP_EREADONLY, BP_ENOMEM. */
BP_API bp_status bp_follower_open(bp_store *replica, const bp_nats_options *opts, bp_follower **out);
/* Fetches up to fetch_batch messages (waiting up to timeout_ms for the
 * first), checks each and appends them to the replica (a source batch whole),
 * makes them durable (bp_sync), then acknowledges them. A message the
 * replica already holds must repeat it byte for byte and is skipped.
 * *applied (may be NULL): events appended in this call.
 * Errors, after which the replica holds exactly what it held before the
 * failing message, and nothing is acknowledged past it: BP_EDIVERGED (a
 * message that is not a batpak event, a frame that does not match its
 * headers or subject, a gap, a duplicate with other bytes, a broken chain;
 * the message names the stream sequence), BP_ECRC / BP_ESERIAL (a damaged
 * frame), BP_ENOTFOUND (the stream or the consumer was deleted under it),
 * BP_EBROKER, and the write errors of bp_append_frames. */
BP_API bp_status bp_follower_pump(bp_follower *follower, int timeout_ms, uint64_t *applied);

typedef struct bp_follower_stats {
  uint64_t applied;              /* events appended since the open */
  uint64_t duplicates;           /* messages skipped as repeats of held events */
  uint64_t stream_sequence;      /* stream sequence of the last message handled */
  uint64_t pending;              /* messages of the stream not yet acknowledged (the consumer's view) */
  uint64_t reserved[4];
} bp_follower_stats;
BP_API void bp_follower_get_stats(bp_follower *follower, bp_follower_stats *out);
/* Closes the connection and frees the follower (the consumer stays, and so
 * does the replica's store). Accepts NULL. */
BP_API void bp_follower_close(bp_follower *follower);

/* ------------------------------------------------------------ subjects */

/* Escapes text for one subject token: bytes outside [A-Za-z0-9_-] become
 * "~XX" (two upper-case hex digits), '~' included, so that the mapping is
 * reversible. Writes at most size bytes including the NUL; returns the
 * length the whole token needs (excluding the NUL). */
BP_API size_t bp_nats_token_escape(const char *text, size_t len, char *out, size_t size);
/* The reverse: decodes a token into out (size bytes, NUL-terminated). Returns
 * the decoded length, or SIZE_MAX for a token that no escape produces. */
BP_API size_t bp_nats_token_unescape(const char *token, size_t len, char *out, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* BATPAK_REPLICATION_H */
