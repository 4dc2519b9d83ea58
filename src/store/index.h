/*
 * index.h - the in-memory index.
 *
 * Concurrency essay
 * -----------------
 * One writer (whoever holds the store's commit lock) mutates the index; any
 * number of readers read it without taking a lock. Every structure is
 * append-only while the store is open, and readers find their way in through
 * atomic loads:
 *
 *  1. Entries live in fixed-size chunks found through a directory allocated
 *     once at its full size, so an entry never moves. Entry n is written
 *     completely before `visible` is raised past n (release), and a reader
 *     loads `visible` (acquire) before touching entries below it.
 *  2. Growable arrays (streams of global sequences, the name table, the hash
 *     tables) grow by copying into a larger array and publishing the new
 *     pointer with a release store. The old array is kept (on a retired list)
 *     until bp_close, so a reader still holding it reads valid memory. The
 *     writer publishes a new array before it publishes a length that needs it;
 *     readers load the length first, then the pointer.
 *  3. Streams hold global sequences in increasing order. A stream may already
 *     hold sequences that are not visible yet (the writer appends to streams
 *     before raising `visible`): readers stop at the first sequence at or
 *     above the `visible` they loaded. That is what makes every reader see a
 *     gap-free prefix of the log, and a batch appear all at once.
 *  4. Names (entities and scopes) are interned: a name's string is allocated
 *     once and freed at close, so `const char *` handed to callers stays valid.
 */
#ifndef BATPAK_STORE_INDEX_H
#define BATPAK_STORE_INDEX_H

#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>

/* One event in the index; its global sequence is its position. 152 bytes. */
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

/* A slot of the id table. key holds seq+1 in its low half (0: empty) and the
 * low 32 bits of the id's hash in its high half: lookups skip other ids'
 * entries without reading them, and growing the table places slots without
 * reading the entries. where is where the event's frame was when it was
 * indexed (segment id << 40 | offset, 0 if that does not fit): only a hint,
 * so that bp_get can start loading the frame while it reads the entry. */
typedef struct bp__idslot {
  _Atomic uint64_t key;
  uint64_t where;
} bp__idslot;
#define BP__WHERE_OFFSET_BITS 40

/* An append-only array of global sequences with lock-free reads. */
typedef struct bp__seqvec {
  _Atomic(uint32_t *) data;
  _Atomic uint32_t len;
  uint32_t cap;             /* writer only */
} bp__seqvec;

/* An interned string and the per-name state. */
typedef struct bp__name {
  char *str;
  uint32_t len;
  uint32_t hash;
  uint32_t id;
  bp__seqvec as_entity;     /* events whose entity is this name */
  bp__seqvec as_scope;      /* events whose scope is this name */
  /* Chain head of the entity, writer only (valid when next_clock > 0). */
  uint32_t next_clock;
  uint64_t last_wall_ms;
  uint8_t last_hash[32];
} bp__name;

#define BP__CHUNK_SHIFT 13
#define BP__CHUNK_SIZE (1u << BP__CHUNK_SHIFT)
#define BP__MAX_CHUNKS (1u << 19)   /* 2^32 events */

/* The hash tables keep their mask in the same allocation as their slots and
 * are published through one pointer, so that a reader probes with the mask of
 * the very table it reads (a mask loaded apart from its table may belong to
 * the table before or after, and a probe from the wrong home slot can miss a
 * key that is there). */
typedef struct bp__idtable {
  uint64_t mask;
  uint64_t unused;          /* keeps the slots 16-byte aligned */
  bp__idslot slots[];
} bp__idtable;

typedef struct bp__nametable {
  uint32_t mask;
  _Atomic uint32_t slots[]; /* name id + 1; 0: empty */
} bp__nametable;

typedef struct bp__retired {
  struct bp__retired *next;
  void *ptr;
} bp__retired;

typedef struct bp__index {
  _Atomic(bp__ientry *) *chunks;      /* BP__MAX_CHUNKS slots */
  _Atomic uint64_t visible;           /* entries below are complete and visible */
  uint64_t count;                     /* writer: entries written (>= visible) */

  _Atomic(bp__name **) names;         /* by id; id 0 is "" */
  _Atomic uint32_t name_count;
  uint32_t name_cap;
  _Atomic(bp__nametable *) name_table; /* name -> id+1, open addressing */

  /* Hash table event id -> sequence, open addressing. */
  _Atomic(bp__idtable *) id_table;
  uint64_t id_used;

  /* By exact kind, each allocated on first use. The table of 65,536 (512 KiB)
   * is allocated apart, so that the store's own record stays small: a
   * closed store's record outlives it (store.c, "closed handles"). */
  _Atomic(bp__seqvec *) *kinds;
  bp__seqvec categories[16];

  bp__retired *retired;               /* arrays replaced while readers may hold them */
} bp__index;

bp_status bp__index_init(bp__index *ix);
void bp__index_free(bp__index *ix);

/* ---- writer side (caller holds the commit lock) ---- */
/* Interns a name (creating it if new). Errors: BP_ENOMEM. */
bp_status bp__index_intern(bp__index *ix, const char *s, size_t len, bp__name **out);
/* Appends an entry at sequence ix->count (not yet visible). Errors: BP_ENOMEM, BP_ELIMIT. */
bp_status bp__index_push(bp__index *ix, const bp__ientry *e);
/* Sizes the id table for `more` further entries, so that loading a known
 * number of entries does not rehash on the way. Errors: BP_ENOMEM. */
bp_status bp__index_reserve(bp__index *ix, uint64_t more);
/* Starts loading the id-table slot of id into the cache: bulk loaders call it
 * a few entries ahead, so that the random accesses of inserts overlap. */
void bp__index_prefetch_id(const bp__index *ix, bp_id id);
/* Makes every pushed entry visible. */
void bp__index_publish(bp__index *ix);
/* Drops pushed entries that were not published (a failed write). Streams and
 * the id table forget them too. */
void bp__index_rollback(bp__index *ix, uint64_t to_count);

/* ---- reader side (any thread) ---- */
static inline uint64_t bp__index_visible(const bp__index *ix) {
  return atomic_load_explicit(&ix->visible, memory_order_acquire);
}
static inline bp__ientry *bp__index_at(const bp__index *ix, uint64_t seq) {
  bp__ientry *chunk = atomic_load_explicit(&ix->chunks[seq >> BP__CHUNK_SHIFT], memory_order_acquire);
  return &chunk[seq & (BP__CHUNK_SIZE - 1)];
}
static inline bp__name *bp__index_name(const bp__index *ix, uint32_t id) {
  return atomic_load_explicit(&ix->names, memory_order_acquire)[id];
}
static inline uint32_t bp__index_name_count(const bp__index *ix) {
  return atomic_load_explicit(&ix->name_count, memory_order_acquire);
}
/* Finds a name; NULL if unknown. */
bp__name *bp__index_find_name(const bp__index *ix, const char *s, size_t len);
/* Finds an event id among entries below limit; false if absent. */
bool bp__index_find_id(const bp__index *ix, bp_id id, uint64_t limit, uint64_t *seq);
/* Where the frame of id probably is (segment, offset), from the first slot
 * below limit whose hash half matches, without reading any entry; false if
 * no slot matches or the place is not known. A hint: only the id in the
 * frame found there, or bp__index_find_id, confirms it. */
bool bp__index_frame_hint(const bp__index *ix, bp_id id, uint64_t limit, uint64_t *segment_id, uint64_t *offset);
/* A snapshot of a stream: its array and how many of its items are below limit. */
static inline const uint32_t *bp__seqvec_view(const bp__seqvec *v, uint64_t limit, uint32_t *n) {
  uint32_t len = atomic_load_explicit(&v->len, memory_order_acquire);
  const uint32_t *d = atomic_load_explicit(&v->data, memory_order_acquire);
  /* Items are increasing: drop the tail at or above limit. */
  while (len > 0 && d[len - 1] >= limit) len--;
  *n = len;
  return d;
}
/* The stream of one exact kind, or NULL when the kind never occurred. */
static inline bp__seqvec *bp__index_kind(const bp__index *ix, bp_kind k) {
  return atomic_load_explicit(&ix->kinds[k], memory_order_acquire);
}

#endif
