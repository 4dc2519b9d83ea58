/*
 * index_entry.h - one event in the index, and the hash of an event id: what
 * the index, its files and its runs all share.
 */
#ifndef BATPAK_STORE_INDEX_ENTRY_H
#define BATPAK_STORE_INDEX_ENTRY_H

#include "internal.h"

/* One event in the index; its global sequence is its position. 152 bytes.
 * Stored as it is in memory in index/entries (docs/INDEX.md). */
typedef struct bp__ientry {
  bp_id event_id, correlation_id, causation_id;
  uint8_t prev_hash[32], event_hash[32];
  uint64_t wall_ms;
  uint64_t offset;
  uint32_t length;
  uint32_t segment_id;
  uint32_t entity;          /* name id */
  uint32_t scope;           /* name id */
  uint32_t clock;
  bp_kind kind;
  uint8_t flags;
} bp__ientry;

#define BP__CHUNK_SHIFT 13
#define BP__CHUNK_SIZE (1u << BP__CHUNK_SHIFT)
#define BP__MAX_CHUNKS (1u << 19)   /* 2^32 events */

/* The id tables' hash: the low bits place a slot, the high half is kept in
 * it to skip other ids without reading their entries. */
static inline uint64_t bp__hash_id(bp_id id) {
  uint64_t x = id.hi ^ (id.lo * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

#endif
