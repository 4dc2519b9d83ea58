/*
 * retired.h - the idempotency keys of events that a retention compaction
 * dropped (retired.c), so that a repeat of such an append is still known as
 * one instead of writing the event again.
 */
#ifndef BATPAK_STORE_RETIRED_H
#define BATPAK_STORE_RETIRED_H

#include "internal.h"

#define BP__RETIRED_FILE "retired.keys"
/* The window: the keys of this many dropped events, the latest kept. */
#define BP__RETIRED_MAX 262144u

typedef struct bp__retired_keys {
  uint8_t (*by_age)[24];    /* id (16, BE) | digest (8, LE), oldest first: the file's order */
  uint8_t (*by_id)[24];     /* the same, sorted by id, for lookups */
  size_t n;
} bp__retired_keys;

/* What a repeat must match: the event's hash, entity, scope and kind. */
uint64_t bp__retired_digest(const uint8_t event_hash[32], const char *entity, const char *scope, bp_kind kind);
/* Loads dir/retired.keys into r (none: empty). A damaged file is logged by
 * the caller and ignored (the window is then empty): it only spares repeats.
 * Errors: BP_ECORRUPT (damaged), BP_ENOMEM, BP_EIO. */
bp_status bp__retired_load(const char *dir, bp__retired_keys *r);
/* Whether key is retired, and its digest. */
bool bp__retired_find(const bp__retired_keys *r, bp_id key, uint64_t *digest);
/* A set holding r's keys and the n given ones (ids and digests, oldest
 * first), the oldest dropped beyond BP__RETIRED_MAX, written to
 * dir/retired.keys (temporary file, fsync, rename, directory fsync) and
 * returned in *out. Errors: BP_EIO, BP_ENOMEM (r unchanged). */
bp_status bp__retired_add(const char *dir, const bp__retired_keys *r, const bp_id *ids, const uint64_t *digests, size_t n,
                          bp__retired_keys *out);
void bp__retired_free(bp__retired_keys *r);

#endif
