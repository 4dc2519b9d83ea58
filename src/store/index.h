/*
 * index.h - the index: entries by global sequence, names, and the lookups
 * (id -> sequence, and the streams of an entity, scope, kind or category).
 *
 * Two parts (docs/INDEX.md). Runs are immutable files covering the oldest
 * events [0, runs_end); generations ("gens") are in memory and cover the
 * rest, the newest gen taking the writer's appends. With a persistent index
 * a gen is frozen once it holds BP__GEN_EVENTS published events, and the
 * store's index thread turns frozen gens into runs (ixstore.c). Without one
 * (a read-only open of a store that has none, compaction's new index) there
 * is one gen and no run, as before.
 *
 * Concurrency essay
 * -----------------
 * One writer (whoever holds the store's commit lock) mutates the index; any
 * number of readers read it without taking a lock. Readers find their way in
 * through atomic loads:
 *
 *  1. Entries live in fixed-size chunks found through a directory allocated
 *     once at its full size, so an entry never moves. A chunk is heap memory
 *     or a page-aligned piece of the mapped file index/entries. Entry n is
 *     written completely before `visible` is raised past n (release), and a
 *     reader loads `visible` (acquire) before touching entries below it.
 *  2. Growable arrays (streams of global sequences, the name table, the hash
 *     tables) grow by copying into a larger array and publishing the new
 *     pointer with a release store. The old array is kept on a retired list
 *     (the gen's, or the index's for names) until its owner is freed, so a
 *     reader still holding it reads valid memory. The writer publishes a new
 *     array before it publishes a length that needs it; readers load the
 *     length first, then the pointer.
 *  3. Streams hold global sequences in increasing order. A stream may already
 *     hold sequences that are not visible yet (the writer appends to streams
 *     before raising `visible`): readers stop at the first sequence at or
 *     above the `visible` they loaded. That is what makes every reader see a
 *     gap-free prefix of the log, and a batch appear all at once.
 *  4. Which runs and gens make up the index is one immutable record, the
 *     view, published through one pointer. A reader loads it once per lookup.
 *     A view, a gen or a run that a newer view dropped is freed only while
 *     no reader and no writer can hold it: readers hold the store's view lock
 *     shared, and the reclaimer takes it exclusively and the writer's lock
 *     (bp__index_reclaim).
 *  5. Names (entities and scopes) are interned: a name's string is allocated
 *     once and freed at close, so `const char *` handed to callers stays valid.
 */
#ifndef BATPAK_STORE_INDEX_H
#define BATPAK_STORE_INDEX_H

#include "store/index_entry.h"
#include "store/ixfile.h"
#include "store/run.h"

#include <pthread.h>
#include <stdatomic.h>

/* A slot of a gen's id table. key holds seq+1 in its low half (0: empty) and
 * the low 32 bits of the id's hash in its high half: lookups skip other ids'
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

/* An interned string and the entity's chain head. */
typedef struct bp__name {
  char *str;
  uint32_t len;
  uint32_t hash;
  uint32_t id;
  /* Chain head of the entity, writer only: valid when head_known, and then
   * next_clock is 0 for an entity without events. Names read back from the
   * persistent index learn theirs on first use (bp__index_entity_head). */
  bool head_known;
  uint32_t next_clock;
  uint64_t last_wall_ms;
  uint8_t last_hash[32];
} bp__name;

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

/* Streams by name id: an array of pointers (a stream never moves; the array
 * grows by copying pointers). */
typedef struct bp__streams {
  _Atomic(_Atomic(bp__seqvec *) *) v;
  _Atomic uint32_t cap;
} bp__streams;

/* A generation: the in-memory index of the events [first, next gen's first). */
typedef struct bp__gen {
  uint64_t first;
  _Atomic(bp__idtable *) id_table;
  uint64_t id_used;
  bp__streams ent, scope;
  /* By exact kind, each allocated on first use; the table of 65,536 is
   * allocated apart so that a gen's record stays small. */
  _Atomic(bp__seqvec *) *kinds;
  uint16_t *kind_list;      /* the kinds that occur (writer; freeing) */
  uint32_t nkinds, kinds_cap;
  bp__seqvec categories[16];
  bp__retired *retired;     /* arrays replaced while readers may hold them */
} bp__gen;

#define BP__MAX_GENS 4
/* Events a gen takes before it is frozen (persistent index only). */
#define BP__GEN_EVENTS 8192u

typedef struct bp__runset {
  uint32_t n;
  uint64_t end;             /* the runs cover [0, end) */
  bp__run runs[BP__IX_MAX_RUNS];
} bp__runset;

typedef struct bp__ixview {
  bp__runset *runs;
  uint32_t ngens;
  bp__gen *gens[BP__MAX_GENS]; /* oldest first; the last takes appends */
} bp__ixview;

/* What a newer view dropped, freed by bp__index_reclaim. */
typedef struct bp__dead {
  struct bp__dead *next;
  bp__ixview *view;         /* freed */
  bp__runset *runset;       /* freed (its runs live on in the newer one, or in unmap) */
  bp__gen *gen;             /* freed with its streams, or NULL */
  bp__run *unmap;           /* runs merged away: unmapped, then the array freed */
  uint32_t nunmap;
} bp__dead;

typedef struct bp__index {
  _Atomic(bp__ientry *) *chunks;      /* BP__MAX_CHUNKS slots */
  _Atomic uint64_t visible;           /* entries below are complete and visible */
  uint64_t count;                     /* writer: entries written (>= visible) */

  /* Entries come from index/entries when efile is open: chunks below
   * heap_from are pieces of its mapping, the others heap memory. Chunks
   * below lazy_end were read back from the file and are checked against
   * their CRC-32 (sums) the first time this process touches one: until
   * then their slot is NULL and bp__index_at takes the slow path, which
   * checks the chunk, or has repair read it again from the log. */
  bp__cfile efile;
  bool efile_open;
  uint32_t heap_from;
  uint32_t lazy_end;
  const uint32_t *sums;               /* CRC-32 of each chunk below lazy_end */
  pthread_mutex_t lazy_lock;
  bp__ientry *(*repair)(void *ctx, uint32_t ci); /* a damaged chunk's entries, read from the log (malloc'd) */
  void *repair_ctx;
  bp__retired *repaired;              /* chunks repair returned */
  void (*log)(void *ctx, const char *msg); /* damage found in index files (a warning) */
  void *log_ctx;

  _Atomic(bp__name **) names;         /* by id; id 0 is "" */
  _Atomic uint32_t name_count;
  uint32_t name_cap;
  _Atomic(bp__nametable *) name_table; /* name -> id+1, open addressing */
  bp__retired *retired;               /* name arrays replaced */

  _Atomic(bp__ixview *) view;
  bp__gen *cur;                       /* writer: the gen taking appends */
  bool freeze;                        /* freeze full gens (a persistent index) */
  void (*on_freeze)(void *ctx);       /* told when a gen was frozen */
  void *on_freeze_ctx;
  pthread_mutex_t dead_lock;
  bp__dead *dead;                     /* dropped views, gens and runsets */
} bp__index;

bp_status bp__index_init(bp__index *ix);
void bp__index_free(bp__index *ix);

/* ---- writer side (caller holds the commit lock) ---- */
/* Interns a name (creating it if new). Errors: BP_ENOMEM. */
bp_status bp__index_intern(bp__index *ix, const char *s, size_t len, bp__name **out);
/* Appends an entry at sequence ix->count (not yet visible). Errors: BP_ENOMEM,
 * BP_ELIMIT, BP_EIO (no disk space for index/entries). */
bp_status bp__index_push(bp__index *ix, const bp__ientry *e);
/* Indexes the entry at sequence ix->count, which is in its chunk already
 * (read back from index/entries). Errors: BP_ENOMEM, BP_ECORRUPT (it names
 * an unknown name). */
bp_status bp__index_adopt(bp__index *ix);
/* Sizes the id table for `more` further entries, so that loading a known
 * number of entries does not rehash on the way. Errors: BP_ENOMEM. */
bp_status bp__index_reserve(bp__index *ix, uint64_t more);
/* Starts loading the id-table slot of id into the cache: bulk loaders call it
 * a few entries ahead, so that the random accesses of inserts overlap. */
void bp__index_prefetch_id(const bp__index *ix, bp_id id);
/* Makes every pushed entry visible; freezes the newest gen when it is full
 * (ix->freeze) and tells on_freeze. */
void bp__index_publish(bp__index *ix);
/* Drops pushed entries that were not published (a failed write). Streams and
 * the id table forget them too. */
void bp__index_rollback(bp__index *ix, uint64_t to_count);
/* The entity's chain head, learnt from its last event when unknown. */
void bp__index_entity_head(bp__index *ix, bp__name *nm);

/* ---- runs (the caller holds the commit lock and, to reclaim, the view lock exclusively) ---- */
/* The oldest frozen gen's range, when there is one: [*first, *end). */
bool bp__index_frozen(const bp__index *ix, uint64_t *first, uint64_t *end);
/* Replaces the oldest frozen gen by the run that covers it (mapped by the
 * caller), and runs [from, from + k) of the runset by `merged` when k > 0.
 * Errors: BP_ENOMEM (nothing changed). */
bp_status bp__index_swap_runs(bp__index *ix, bp__run *covering, uint32_t from, uint32_t k, bp__run *merged);
/* Installs runs (opening a persistent index: no reader yet). */
bp_status bp__index_set_runs(bp__index *ix, const bp__run *runs, uint32_t n, uint64_t end);
/* Frees what dropped views left, once nobody can hold it. */
void bp__index_reclaim(bp__index *ix);
/* The runset of the current view (never NULL). */
static inline const bp__runset *bp__index_runs(const bp__index *ix) {
  return atomic_load_explicit(&ix->view, memory_order_acquire)->runs;
}

/* ---- reader side (any thread) ---- */
static inline uint64_t bp__index_visible(const bp__index *ix) {
  return atomic_load_explicit(&ix->visible, memory_order_acquire);
}
/* Chunk ci below lazy_end, checked (or repaired) and installed. */
bp__ientry *bp__index_chunk_slow(const bp__index *ix, uint32_t ci);
static inline bp__ientry *bp__index_at(const bp__index *ix, uint64_t seq) {
  bp__ientry *chunk = atomic_load_explicit(&ix->chunks[seq >> BP__CHUNK_SHIFT], memory_order_acquire);
  if (BP__UNLIKELY(!chunk)) chunk = bp__index_chunk_slow(ix, (uint32_t)(seq >> BP__CHUNK_SHIFT));
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

/* One stream (BP__STREAM_ENTITY, _SCOPE, _KIND, _CATEGORY) below a limit:
 * pieces in increasing order, from the runs and then the gens. */
#define BP__MAX_PIECES (BP__IX_MAX_RUNS + BP__MAX_GENS)
typedef struct bp__stream {
  uint32_t n;
  uint64_t total;
  struct {
    const uint32_t *v;
    uint32_t n;
  } p[BP__MAX_PIECES];
} bp__stream;
void bp__index_stream(const bp__index *ix, int what, uint32_t key, uint64_t limit, bp__stream *out);
/* Item i of a stream (i < total). */
/* Whether stream what/key holds any item below limit, reading run
 * directories rather than postings where it can. */
bool bp__index_stream_any(const bp__index *ix, int what, uint32_t key, uint64_t limit);
uint32_t bp__stream_item(const bp__stream *st, uint64_t i);
/* The place of the first item at or above seq (total when none). */
uint64_t bp__stream_lower_bound(const bp__stream *st, uint64_t seq);
/* Copies items [from, from + n) into out. */
void bp__stream_copy(const bp__stream *st, uint64_t from, uint64_t n, uint32_t *out);

#endif
