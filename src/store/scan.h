/*
 * scan.h - the scan index: the four fields a region filters on (kind, clock,
 * entity id, scope id), for every event, in one of six memory layouts.
 *
 * Queries and cursors that no narrower stream can serve (an entity prefix
 * alone, a clock range, everything) filter here, touching 14-16 bytes per
 * event instead of a whole 152-byte index entry. The layouts are those of the
 * Rust crate's IndexLayout; each stores the same fields and answers the same
 * filter, so they differ only in speed and memory:
 *
 *   AOS       one 16-byte record per event: kind, clock, entity, scope
 *   SOA       four arrays per chunk: kinds, clocks, entities, scopes
 *   AOSOA8    tiles of 8 events, each tile a small SOA (also 16 and 64)
 *   SOAOS     two arrays of records: {entity, scope} and {kind, clock}
 *
 * Storage is chunked like the index entries (BP__CHUNK_SIZE events a chunk,
 * chunks never move); the writer fills a slot before the index publishes it,
 * so readers below `visible` need no lock (index.h).
 */
#ifndef BATPAK_STORE_SCAN_H
#define BATPAK_STORE_SCAN_H

#include "batpak/store.h"
#include "store/index.h"
#include "store/ixfile.h"

typedef struct bp__scan {
  bp_index_layout layout;
  uint32_t tile;                 /* events per tile (AOSOA layouts), else 0 */
  _Atomic(uint8_t *) *chunks;    /* BP__MAX_CHUNKS slots */
  /* With a persistent index the chunks are pieces of index/scan (those below
   * heap_from; the others, of a read-only handle, heap memory). */
  bp__cfile file;
  bool file_open;
  uint32_t heap_from;
  /* Chunks below lazy_end were read back from index/scan: each is checked
   * against its CRC-32 (sums) the first time it is used, and made again
   * from the index entries (ix) when it fails. */
  uint32_t lazy_end;
  const uint32_t *sums;
  const bp__index *ix;
  pthread_mutex_t lazy_lock;
  bp__retired *repaired;
} bp__scan;

/* What a region asks of the four fields (names resolved to ids). */
typedef struct bp__scan_pred {
  bp_fact_filter fact;
  bp_kind kind;
  uint8_t category;
  bool has_clock;
  uint32_t clock_min, clock_max;
  const uint8_t *prefix_ok;      /* by entity name id; NULL: any entity */
  bool any_scope;
  uint32_t scope_id;
} bp__scan_pred;

/* The kind, category and clock parts of a region, for any entity and scope
 * (callers narrow those themselves). */
bp__scan_pred bp__scan_pred_of(const bp_region *r);

bp_status bp__scan_init(bp__scan *sc, bp_index_layout layout);
/* Opens index/scan at path (writable: created, or emptied when it holds
 * another layout; *fresh then says so) and takes the fields of events
 * [0, count) from it: a read-only handle copies a last chunk filled in part
 * into memory, so that it can go on past count. Errors: as bp__cfile_open. */
bp_status bp__scan_open_file(bp__scan *sc, const char *path, bool writable, uint64_t count, bool *fresh);
/* The CRC-32 of chunk ci's bytes (a full chunk, or the first n events'
 * bytes of each of its arrays for a last chunk filled in part). */
uint32_t bp__scan_chunk_crc(const bp__scan *sc, const uint8_t *chunk, uint32_t n);
/* Whether the slots [from, chunk size) of a chunk are all zero; when not
 * and fix is set, they are cleared. */
bool bp__scan_chunk_clear_from(const bp__scan *sc, uint8_t *chunk, uint32_t from, bool fix);
/* Bytes of one chunk. */
size_t bp__scan_chunk_bytes(const bp__scan *sc);
/* Makes index/scan's chunks durable. Returns 0 or an errno value. */
int bp__scan_sync(bp__scan *sc);
void bp__scan_free(bp__scan *sc);
/* Records event seq's fields (writer; before the event is published). */
bp_status bp__scan_set(bp__scan *sc, uint64_t seq, bp_kind kind, uint32_t clock, uint32_t entity, uint32_t scope);
/* Writes the sequences in [from, to) that satisfy p, in order, into out (at
 * most max); returns how many, and sets *next to where the search stopped. */
size_t bp__scan_filter(const bp__scan *sc, uint64_t from, uint64_t to, const bp__scan_pred *p, uint32_t *out,
                       size_t max, uint64_t *next);
/* Tiles in use for count events (AOSOA layouts), else 0. */
uint64_t bp__scan_tiles(const bp__scan *sc, uint64_t count);
const char *bp__layout_name(bp_index_layout layout);

#endif
