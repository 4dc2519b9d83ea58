/*
 * run.h - runs: immutable files of the persistent index (docs/INDEX.md).
 *
 * A run indexes the events of one range of global sequences [first, end):
 * an open-addressing table from event id to sequence, and the postings (the
 * sorted sequences) of every entity, scope, kind and kind category that
 * occurs in the range. Runs are built from index entries, never changed,
 * and replaced by a merged run covering several of them.
 *
 * Layout (native byte order; this file never leaves the machine):
 *   header   128 bytes: magic, version, level, range, counts, id fences,
 *            total length, CRC-32 of the body, CRC-32 of the header
 *   entity directory  (name id, offset, count) x nent, by name id
 *   scope directory   (name id, offset, count) x nscope, by name id
 *   kind directory    (kind, offset, count) x nkind, by kind
 *   category directory (offset, count) x 16
 *   postings  u32 sequences; a directory's offset counts u32 from here
 *   id table  (high half of the id's hash, sequence + 1) x nslots, a power
 *             of two, half full or less; 0 marks an empty slot
 *   block CRCs  the CRC-32 of each 64 KiB block of everything between the
 *             header and this table; the header holds the table's CRC
 *
 * A reader checks a block the first time it reads from it, so that the
 * first lookup in a run of millions of events costs a block or two, not
 * the whole file.
 */
#ifndef BATPAK_STORE_RUN_H
#define BATPAK_STORE_RUN_H

#include "store/index_entry.h"
#include "store/ixfile.h"

#include <pthread.h>

#define BP__RUN_HEADER 128u
#define BP__RUN_BLOCK (64u << 10)

/* Which blocks of a run were checked in this process, shared by every copy
 * of the run (runsets copy runs by value). */
typedef struct bp__runcheck {
  _Atomic int state;        /* BP__RUN_CHECKING, _GOOD or _REPLACED */
  _Atomic uint64_t *done;   /* a bit per block: checked */
  pthread_mutex_t lock;
  struct bp__run *replacement; /* built from the entries when a block failed */
} bp__runcheck;
enum { BP__RUN_CHECKING, BP__RUN_GOOD, BP__RUN_REPLACED };

typedef struct bp__run {
  bp__ixrun_ref ref;
  uint8_t *map;
  size_t len;
  bp_id min_id, max_id;
  const uint32_t *edir, *sdir, *kdir, *cdir, *post, *slots;
  uint32_t nent, nscope, nkind;
  uint64_t npost, nslots;
  const uint32_t *block_crcs;
  uint64_t nblocks;
  bp__runcheck *check;      /* NULL for a replacement (built here, in memory) */
  bool anonymous;           /* map is anonymous memory, not the file */
} bp__run;

/* The entries a run is built from: entry seq of the index (any thread may
 * call it; the entries are immutable once indexed). */
typedef const bp__ientry *(*bp__run_entry_fn)(void *ctx, uint64_t seq);

/* Writes run ref->no for entries [ref->first, ref->end) (names below
 * nnames), fsynced, under its final name. Memory: O(nnames + kinds); the
 * file is filled through a mapping. Errors: BP_EIO, BP_ENOMEM, BP_ESHUTDOWN
 * (cancel was set: the file is removed). */
bp_status bp__run_build(const char *ixdir, const bp__ixrun_ref *ref, uint32_t nnames, bp__run_entry_fn at, void *ctx,
                        const _Atomic bool *cancel);
/* Maps a run and checks its header against ref; its body is checked on
 * first use (bp__run_ready) unless trusted (this process just wrote it).
 * Errors: BP_ENOTFOUND, BP_ECORRUPT (the message says what), BP_EIO,
 * BP_ENOMEM. */
bp_status bp__run_map(const char *ixdir, const bp__ixrun_ref *ref, bool trusted, bp__run *out);
/* What a reader needs to replace a damaged run: the entries (nnames names)
 * and where to log. */
typedef void (*bp__run_log_fn)(void *ctx, const char *msg);
typedef struct bp__run_fix {
  uint32_t nnames;
  bp__run_entry_fn at;
  void *ctx;
  bp__run_log_fn log;
  void *log_ctx;
} bp__run_fix;
/* Checks every block (bp_verify). Errors: BP_ECORRUPT naming the block. */
bp_status bp__run_check_body(const bp__run *r);
void bp__run_unmap(bp__run *r);
void bp__run_path(const char *ixdir, uint64_t no, char *buf, size_t size);

enum { BP__STREAM_ENTITY, BP__STREAM_SCOPE, BP__STREAM_KIND, BP__STREAM_CATEGORY };
/* The postings of one key in a run; false (and *n 0) when it does not occur.
 * The blocks read are checked first; a run that fails is replaced by one
 * made in memory from the entries (fix), the failure logged. */
bool bp__run_postings(const bp__run *r, int what, uint32_t key, const uint32_t **v, uint32_t *n,
                      const bp__run_fix *fix);
/* The sequence of event id (its hash h) in the run, below limit, confirmed
 * against the entries; false when absent. Blocks checked as postings. */
/* How many items the run's stream what/key holds, from its directory alone
 * (checked; the postings are not read). */
uint32_t bp__run_count(const bp__run *r, int what, uint32_t key, const bp__run_fix *fix);
bool bp__run_find(const bp__run *r, bp_id id, uint64_t h, uint64_t limit, uint64_t *seq, const bp__run_fix *fix);

/* Whether id may be in the run, by its fences. */
static inline bool bp__run_may_hold(const bp__run *r, bp_id id) {
  return bp_id_cmp(id, r->min_id) >= 0 && bp_id_cmp(id, r->max_id) <= 0;
}

#endif
