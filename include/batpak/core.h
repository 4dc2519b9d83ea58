/*
 * batpak/core.h - the core layer: status codes and errors, event ids, kinds,
 * coordinates, regions, DAG positions, event headers and hashing.
 *
 * Everything here is plain data plus pure functions. Nothing in this header
 * touches the file system or starts a thread.
 *
 * Conventions that hold for every header of the library:
 *   - Fallible functions return bp_status (BP_OK == 0). Details of the last
 *     failure on the calling thread are in bp_last_error().
 *   - Borrowed pointers are never kept past the call unless the function says so.
 *   - Whatever the library allocates for the caller is freed with the matching
 *     *_free function or with bp_free(); every free function accepts NULL.
 */
#ifndef BATPAK_CORE_H
#define BATPAK_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- export */

#if defined(BP_STATIC_DEFINE)
#  define BP_API
#elif defined(_WIN32)
#  ifdef BP_BUILDING_LIBRARY
#    define BP_API __declspec(dllexport)
#  else
#    define BP_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define BP_API __attribute__((visibility("default")))
#else
#  define BP_API
#endif

/* Marks the functions the policy macros generate: a program uses only some of
 * them, and compilers warn about unused static functions otherwise. */
#if defined(__GNUC__) || defined(__clang__)
#  define BP_MAYBE_UNUSED __attribute__((unused))
#else
#  define BP_MAYBE_UNUSED
#endif

/* --------------------------------------------------------------- version */

#define BP_VERSION_MAJOR 0
#define BP_VERSION_MINOR 2
#define BP_VERSION_PATCH 0
#define BP_VERSION_STRING "0.2.0"
/* One number that orders releases: major * 10000 + minor * 100 + patch. */
#define BP_VERSION_NUMBER (BP_VERSION_MAJOR * 10000 + BP_VERSION_MINOR * 100 + BP_VERSION_PATCH)

/* The version of the library actually linked, as "MAJOR.MINOR.PATCH".
 * Compare with BP_VERSION_STRING to detect a header/library mismatch. */
BP_API const char *bp_version(void);
/* BP_VERSION_NUMBER of the linked library. */
BP_API unsigned bp_version_number(void);

/* ---------------------------------------------------------- status codes */

/* The numeric values never change once released; new codes are added at the end. */
typedef enum bp_status {
  BP_OK = 0,
  BP_EINVAL = 1,                  /* an argument is invalid (misuse) */
  BP_ENOMEM = 2,                  /* out of memory */
  BP_EIO = 3,                     /* an operating system call failed; see sys_errno */
  BP_ECORRUPT = 4,                /* stored data is damaged (message names the place) */
  BP_ECRC = 5,                    /* a frame failed its CRC check on read */
  BP_ESERIAL = 6,                 /* malformed MessagePack or a record of the wrong shape */
  BP_EJSON = 7,                   /* malformed JSON text */
  BP_ENOTFOUND = 8,               /* no such event, entity, or nothing new */
  BP_ELIMIT = 9,                  /* a size limit was exceeded */
  BP_ECOORD = 10,                 /* an entity or scope is empty or too long */
  BP_ESEQUENCE = 11,              /* optimistic concurrency check failed */
  BP_EIDEMPOTENCY_REQUIRED = 12,  /* group commit requires an idempotency key */
  BP_ECONFIG = 13,                /* a configuration field is invalid */
  BP_ELOCKED = 14,                /* another process holds the store */
  BP_EWRITER = 15,                /* the writer failed for good; reopen the store */
  BP_ESHUTDOWN = 16,              /* the store is closing; the append was not written */
  BP_ETIMEOUT = 17,               /* a timed wait expired */
  BP_ECLOSED = 18,                /* the handle's store was closed */
  BP_EDENIED = 19,                /* a policy gate denied the proposal */
  BP_ERECEIPT = 20,               /* a receipt was already consumed, freed or forged */
  BP_EREADONLY = 21,              /* the store was opened read-only */
  BP_EUNSUPPORTED = 22,           /* the operation is not available in this build */
  BP_EIDEMPOTENCY_CONFLICT = 23,  /* an idempotency key already names a different event */
  BP_EDIVERGED = 24,              /* replicated frames do not continue this store (a gap, an
                                   * event changed, a broken chain): nothing was written */
  BP_EFENCED = 25,                /* another primary publishes into the replication stream */
  BP_EBROKER = 26                 /* the message broker is unreachable or refused a request */
} bp_status;

/* The code's enumerator name, e.g. "BP_ECRC"; "BP_E?" for an unknown value. */
BP_API const char *bp_status_name(bp_status code);
/* A short English description of the code. Never NULL. */
BP_API const char *bp_strerror(bp_status code);

/* Details of a failure. message names the specifics: the segment and offset of
 * damage, the expected and actual sequence of a CAS failure, the OS call. */
typedef struct bp_error {
  bp_status code;
  int sys_errno;          /* errno of the failed OS call, 0 when none */
  char message[256];
} bp_error;

/* The last failure recorded on the calling thread (code BP_OK if none yet).
 * Ownership: thread-local storage of the library; valid until the next
 * library call on this thread. Threads: any. */
BP_API const bp_error *bp_last_error(void);
/* Records code and a printf-style message as the calling thread's last
 * error (sys_errno 0) and returns code: for code built on the library
 * (custom caches, projections, the replication library) whose failures
 * callers read through bp_last_error like the library's own. */
BP_API bp_status bp_set_error(bp_status code, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Frees memory the library allocated for the caller (JSON text, MessagePack
 * buffers). Accepts NULL. */
BP_API void bp_free(void *ptr);

/* --------------------------------------------------------------- ids */

/* A 128-bit id. As a number, hi holds the upper 64 bits. nil = {0, 0}. */
typedef struct bp_id {
  uint64_t hi, lo;
} bp_id;

#define BP_ID_NIL ((bp_id){0, 0})

/* A new UUIDv7: 48-bit Unix milliseconds, version 7, RFC 4122 variant, the rest
 * random. Ids from one thread strictly increase, even within a millisecond;
 * ids from different threads never collide. Threads: any. */
BP_API bp_id bp_id_v7(void);
BP_API bool bp_id_is_nil(bp_id id);
BP_API bool bp_id_eq(bp_id a, bp_id b);
/* -1, 0 or 1 comparing the ids as unsigned 128-bit numbers. */
BP_API int bp_id_cmp(bp_id a, bp_id b);
/* The version nibble (7 for bp_id_v7 ids) and the 48-bit millisecond field. */
BP_API unsigned bp_id_version(bp_id id);
BP_API uint64_t bp_id_unix_ms(bp_id id);

/* 32 lowercase hex digits and a NUL. */
BP_API void bp_id_to_hex(bp_id id, char out[33]);
/* Exactly 32 hex digits (either case). Errors: BP_EINVAL for anything else. */
BP_API bp_status bp_id_from_hex(const char *text, bp_id *out);
/* The 8-4-4-4-12 UUID form, lowercase, and a NUL. */
BP_API void bp_id_to_uuid(bp_id id, char out[37]);
/* The 8-4-4-4-12 UUID form (either case). Errors: BP_EINVAL. */
BP_API bp_status bp_id_from_uuid(const char *text, bp_id *out);
/* 16 big-endian bytes, the on-disk order. */
BP_API void bp_id_to_bytes(bp_id id, uint8_t out[16]);
BP_API bp_id bp_id_from_bytes(const uint8_t in[16]);

/* --------------------------------------------------------------- kinds */

/* An event kind: upper 4 bits category, lower 12 bits type. */
typedef uint16_t bp_kind;

/* Not the crate's EventKind::DATA (0x0000): that value lies in the reserved
 * system category, which appends refuse (the crate's later versions refuse it
 * too). BP_KIND_DATA is the first kind of the first product category, so a
 * caller may append it. Events of kind 0x0000 in a crate-written store read
 * back as kind 0x0000. */
#define BP_KIND_DATA                 ((bp_kind)0x1000)
#define BP_KIND_SYSTEM_INIT          ((bp_kind)0x0001)
#define BP_KIND_SYSTEM_SHUTDOWN      ((bp_kind)0x0002)
#define BP_KIND_SYSTEM_HEARTBEAT     ((bp_kind)0x0003)
#define BP_KIND_SYSTEM_CONFIG_CHANGE ((bp_kind)0x0004)
#define BP_KIND_SYSTEM_CHECKPOINT    ((bp_kind)0x0005)
#define BP_KIND_EFFECT_ERROR         ((bp_kind)0xD001)
#define BP_KIND_EFFECT_RETRY         ((bp_kind)0xD002)
#define BP_KIND_EFFECT_ACK           ((bp_kind)0xD004)
#define BP_KIND_EFFECT_BACKPRESSURE  ((bp_kind)0xD005)
#define BP_KIND_EFFECT_CANCEL        ((bp_kind)0xD006)
#define BP_KIND_EFFECT_CONFLICT      ((bp_kind)0xD007)
#define BP_KIND_TOMBSTONE            ((bp_kind)0x0FFE)

#define BP_KIND_CATEGORY_SYSTEM 0x0
#define BP_KIND_CATEGORY_EFFECT 0xD

/* A product kind. type_id keeps its low 12 bits.
 * Errors: BP_EINVAL when category > 15 or is reserved (0x0 system, 0xD effect). */
BP_API bp_status bp_kind_custom(uint8_t category, uint16_t type_id, bp_kind *out);
BP_API uint8_t bp_kind_category(bp_kind kind);
BP_API uint16_t bp_kind_type_id(bp_kind kind);
BP_API bool bp_kind_is_system(bp_kind kind);
BP_API bool bp_kind_is_effect(bp_kind kind);
/* "0xF001": 0x and four uppercase hex digits, and a NUL. */
BP_API void bp_kind_format(bp_kind kind, char out[7]);

/* ---------------------------------------------------------- coordinates */

/* Largest entity or scope, in bytes. */
#define BP_MAX_COORD_LEN 65536u

/* Where an event lives: the entity whose stream and hash chain it extends, and
 * the scope it belongs to. Both are NUL-terminated, non-empty UTF-8 strings of
 * at most BP_MAX_COORD_LEN bytes. */
typedef struct bp_coord {
  const char *entity;
  const char *scope;
} bp_coord;

/* Errors: BP_ECOORD naming the part that is NULL, empty, too long or not
 * valid UTF-8 (overlong forms, surrogates and code points above U+10FFFF are
 * refused), and for UTF-8 the offset of the first bad byte. */
BP_API bp_status bp_coord_validate(const bp_coord *coord);

/* --------------------------------------------------------------- regions */

typedef enum bp_fact_filter {
  BP_FACT_ANY = 0,        /* every kind */
  BP_FACT_EXACT = 1,      /* region.kind only */
  BP_FACT_CATEGORY = 2    /* any kind whose category is region.category */
} bp_fact_filter;

/* A predicate over events, used by queries, cursors and subscriptions.
 * Strings are borrowed: a region built by the caller must outlive its use;
 * the library copies what it keeps (a subscription's region, for example). */
typedef struct bp_region {
  const char *entity_prefix;   /* NULL: any entity; else entities starting with it */
  const char *scope;           /* NULL: any scope; else exactly this scope */
  bp_fact_filter fact;
  bp_kind kind;                /* with BP_FACT_EXACT */
  uint8_t category;            /* with BP_FACT_CATEGORY */
  bool has_clock_range;        /* per-entity clock in [clock_min, clock_max] */
  uint32_t clock_min, clock_max;
  uint64_t reserved[2];         /* for later versions: zero (docs/ABI.md) */
} bp_region;

BP_API bp_region bp_region_all(void);
BP_API bp_region bp_region_entity(const char *prefix);
BP_API bp_region bp_region_scope(const char *scope);
BP_API bp_region bp_region_with_scope(bp_region region, const char *scope);
BP_API bp_region bp_region_with_kind(bp_region region, bp_kind kind);
BP_API bp_region bp_region_with_category(bp_region region, uint8_t category);
/* Inclusive on both ends. */
BP_API bp_region bp_region_with_clock_range(bp_region region, uint32_t min, uint32_t max);

/* Whether an event with this entity, scope and kind matches the region's
 * entity prefix, scope and kind filter. The clock range is not consulted
 * (it needs the per-entity clock; see bp_region_matches). */
BP_API bool bp_region_matches_event(const bp_region *region, const char *entity,
                                    const char *scope, bp_kind kind);
/* The full test, clock range included. */
BP_API bool bp_region_matches(const bp_region *region, const char *entity,
                              const char *scope, bp_kind kind, uint32_t clock);

/* ------------------------------------------------------------ positions */

/* A place in an entity's event DAG plus a hybrid logical clock. In this
 * version depth and lane are always 0 and sequence is the per-entity clock. */
typedef struct bp_position {
  uint64_t wall_ms;
  uint16_t counter;
  uint32_t depth, lane, sequence;
} bp_position;

BP_API bp_position bp_position_root(void);
BP_API bp_position bp_position_child(uint32_t sequence);
BP_API bp_position bp_position_child_at(uint32_t sequence, uint64_t wall_ms, uint16_t counter);
/* A new lane one level deeper than parent_depth. */
BP_API bp_position bp_position_fork(uint32_t parent_depth, uint32_t new_lane);
BP_API bool bp_position_is_root(const bp_position *p);
/* Same lane and depth, lower sequence. */
BP_API bool bp_position_is_ancestor_of(const bp_position *a, const bp_position *b);
/* The partial order: false when a and b are in different lanes or depths
 * (incomparable); otherwise true with *order set to -1, 0 or 1 by sequence. */
BP_API bool bp_position_compare(const bp_position *a, const bp_position *b, int *order);
/* "depth:lane:sequence@wall_ms.counter" into out (NUL-terminated, truncated to
 * size). Returns the length it would have had. */
BP_API int bp_position_format(const bp_position *p, char *out, size_t size);

/* --------------------------------------------------------------- headers */

#define BP_FLAG_REQUIRES_ACK   0x01u
#define BP_FLAG_TRANSACTIONAL  0x02u
#define BP_FLAG_REPLAY         0x08u

/* Metadata of every event (the crate's EventHeader). */
typedef struct bp_header {
  bp_id event_id, correlation_id;
  bp_id causation_id;          /* nil: a root cause */
  int64_t timestamp_us;
  bp_position position;
  uint32_t payload_size;
  bp_kind kind;
  uint8_t flags;
  uint8_t content_hash[32];    /* BLAKE3 of the payload bytes */
} bp_header;

BP_API bool bp_header_requires_ack(const bp_header *h);
BP_API bool bp_header_is_transactional(const bp_header *h);
BP_API bool bp_header_is_replay(const bp_header *h);
/* now_us - timestamp_us, never negative (0 when the event is in the future). */
BP_API uint64_t bp_header_age_us(const bp_header *h, int64_t now_us);

/* --------------------------------------------------------------- hashing */

/* One link of an entity's chain: prev_hash is the previous event's event_hash
 * (32 zero bytes for the first), event_hash the BLAKE3 of this payload. */
typedef struct bp_hash_chain {
  uint8_t prev_hash[32];
  uint8_t event_hash[32];
} bp_hash_chain;

/* BLAKE3 (32-byte output) of data. data may be NULL when len is 0. */
BP_API void bp_compute_hash(const void *data, size_t len, uint8_t out[32]);
/* True when chain->prev_hash equals expected_prev and chain->event_hash is the
 * BLAKE3 of data. */
BP_API bool bp_verify_chain(const void *data, size_t len, const bp_hash_chain *chain,
                            const uint8_t expected_prev[32]);

#ifdef __cplusplus
}
#endif

#endif /* BATPAK_CORE_H */
