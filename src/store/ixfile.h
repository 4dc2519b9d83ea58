/*
 * ixfile.h - the files of the persistent index (docs/INDEX.md), below the
 * index itself: chunk files (entries, scan fields), the names file and the
 * state file. No knowledge of the store; every system call goes through
 * bp__os_table so that fault sweeps reach these files too.
 */
#ifndef BATPAK_STORE_IXFILE_H
#define BATPAK_STORE_IXFILE_H

#include "internal.h"

#include <pthread.h>

#define BP__IX_DIR "index"
#define BP__IX_STATE "state"
#define BP__IX_STATE_TMP "state.tmp"
#define BP__IX_ENTRIES "entries"
#define BP__IX_SCAN "scan"
#define BP__IX_NAMES "names"
#define BP__IX_SUMS "sums"
#define BP__IX_HEADER 4096u           /* bytes before a chunk file's first chunk */
#define BP__IX_EXTENT_CHUNKS 64u      /* chunks per mapping of a chunk file */
#define BP__IX_MAX_RUNS 64u
#define BP__IX_NAMES_HEADER 16u

/* A file of fixed-size chunks after a header, mapped an extent at a time.
 * Chunk ci's bytes are at BP__IX_HEADER + ci * chunk_bytes; chunk_bytes is a
 * whole number of pages so that every chunk is page-aligned. Mappings only
 * grow while the file is open, so a chunk pointer stays valid until close. */
typedef struct bp__cfile {
  int fd;
  bool writable;
  size_t chunk_bytes;
  uint64_t size;                    /* bytes of chunk data the file holds (allocated, for a writer) */
  _Atomic(uint8_t *) *extents;      /* by extent number */
  uint32_t nextents;
  pthread_mutex_t lock;             /* mapping a new extent */
} bp__cfile;

/* Opens (writable: creates or, when its header does not match, empties) a
 * chunk file whose header says magic, chunk_bytes and param (the entry size,
 * or the scan layout). *fresh: the file holds no chunks (created or emptied).
 * Errors: BP_EIO, BP_ECORRUPT (read-only and the header does not match),
 * BP_ENOMEM. */
bp_status bp__cfile_open(bp__cfile *cf, const char *path, const char magic[8], uint32_t param, size_t chunk_bytes,
                         bool writable, bool *fresh);
/* Chunk ci, mapped (existing bytes; read-only files never grow), or NULL
 * when it cannot be mapped (the error is set). */
uint8_t *bp__cfile_chunk(bp__cfile *cf, uint32_t ci);
/* Chunk ci, mapped, with disk space for its first `need` bytes (writable
 * files), so that stores into its mapping never meet a full disk. Errors:
 * BP_EIO (ENOSPC). */
bp_status bp__cfile_alloc(bp__cfile *cf, uint32_t ci, size_t need, uint8_t **out);
/* Disk space for the chunk data's first `upto` bytes, grown a step
 * (BP__IX_GROW) ahead. Errors: BP_EIO (ENOSPC). */
bp_status bp__cfile_reserve(bp__cfile *cf, uint64_t upto);
#define BP__IX_GROW (256u << 10)
/* Whether the chunk data's bytes from byte `from` to the end of the file
 * are all zero; when not and fix is set (a writable file), they are
 * cleared through the mapping. */
bool bp__cfile_clear_from(bp__cfile *cf, uint64_t from, bool fix);
/* Makes the chunks' bytes durable. Returns 0 or an errno value. */
int bp__cfile_sync(bp__cfile *cf);
void bp__cfile_close(bp__cfile *cf);

/* One run as the state file lists it. */
typedef struct bp__ixrun_ref {
  uint64_t no;                      /* its file: index/run-<no> */
  uint64_t first, end;              /* global sequences [first, end) */
  uint32_t level;
} bp__ixrun_ref;

/* Where the indexed events of one segment are. */
typedef struct bp__ixseg {
  uint64_t id, first, count, frames_end;
} bp__ixseg;

/* Where the newest copy of the state is in its file, and its number. */
typedef struct bp__ixstate_at {
  uint64_t gen;                     /* 0: no state file yet */
  uint32_t slot;                    /* 0 or 1 */
  size_t slot_bytes;                /* 0: no file, or one to be replaced */
  const char *other_damage;         /* read: what is wrong with the other slot's copy,
                                       NULL when whole or never written (all zeros) */
} bp__ixstate_at;

/* The state file: what of the index is valid, and of which log. */
typedef struct bp__ixstate {
  uint64_t count;                   /* entries [0, count) are valid and durable */
  uint64_t names;                   /* names (with "" as name 0) */
  uint64_t names_bytes;             /* valid bytes of the names file */
  int64_t epoch;                    /* the log epoch it was made for */
  uint32_t layout;                  /* the scan file's layout */
  uint32_t names_crc;               /* CRC-32 of the names file's valid bytes */
  uint32_t sums_crc;                /* CRC-32 of the sums file's records */
  uint32_t tail_crc;                /* CRC-32 of the entries of the last chunk filled in part */
  uint32_t scan_tail_crc;           /* bp__scan_chunk_crc of that chunk's scan fields */
  bp_id last_id;                    /* the id of event count - 1 */
  uint64_t next_run_no;
  uint32_t nruns;
  bp__ixrun_ref runs[BP__IX_MAX_RUNS];
  uint32_t nsegs;
  bp__ixseg *segs;                  /* malloc'd */
  bp__ixstate_at at;                /* filled by bp__ixstate_read */
} bp__ixstate;

/* Reads index/state: the newer of its two copies that is whole. Errors:
 * BP_ENOTFOUND (no state file), BP_ECORRUPT (both copies damaged: CRC, size,
 * impossible values; the message says which), BP_EIO, BP_ENOMEM. */
bp_status bp__ixstate_read(const char *ixdir, bp__ixstate *st);
/* Makes st the newest state: written over the older copy's slot and its data
 * synced (no metadata changes), or, when there is no file yet (at->slot_bytes
 * 0) or st outgrew its slot, a new file with room to grow replaces it
 * atomically (temporary file, fsync, rename, directory fsync). at is where
 * the newest copy was, and on success where it is now. Errors: BP_EIO,
 * BP_ENOMEM. */
bp_status bp__ixstate_write(const char *ixdir, const bp__ixstate *st, bp__ixstate_at *at);
void bp__ixstate_free(bp__ixstate *st);
/* From index/state (a whole copy): the last segment it lists, where that
 * segment's frames end, and the log epoch it was made for. false when there
 * is no usable state or it lists no segment. */
bool bp__ixstate_tail(const char *ixdir, uint64_t *segment, uint64_t *frames_end, int64_t *epoch);

/* Calls fn for each name of the names file, in id order from id 1, up to
 * `bytes`, once those bytes match want_crc. Errors: BP_ECORRUPT (CRC, or a
 * record past the end), fn's, BP_EIO. */
bp_status bp__ixnames_read(const char *ixdir, uint64_t bytes, bp_status (*fn)(void *ctx, const char *s, size_t len),
                           void *ctx, uint32_t want_crc);
/* Appends names [0, n) (by the caller's getter) at byte *bytes of the names
 * file (created with its header when *bytes is 0) and fsyncs it; *bytes moves
 * past them and *crc, the CRC-32 of the file's bytes, is carried on.
 * Errors: BP_EIO. */
bp_status bp__ixnames_append(const char *ixdir, uint64_t *bytes, uint32_t *crc, uint32_t n,
                             const char *(*get)(void *ctx, uint32_t i, uint32_t *len), void *ctx);

/* index/sums: a 16-byte header, then for each full chunk the CRC-32 of its
 * entries and of its scan fields. Reads the first n records into two
 * malloc'd arrays and returns their CRC in *crc. Errors: BP_ECORRUPT (too
 * short, bad header), BP_EIO, BP_ENOMEM. */
bp_status bp__ixsums_read(const char *ixdir, uint32_t n, uint32_t **entries, uint32_t **scan, uint32_t *crc);
/* Writes records [from, from + n) and fsyncs; *crc is carried on over them.
 * Errors: BP_EIO. */
bp_status bp__ixsums_write(const char *ixdir, uint32_t from, uint32_t n, const uint32_t *entries,
                           const uint32_t *scan, uint32_t *crc);

/* Cuts index/<name> to len bytes when it is longer (what a crash left after
 * the state's end). Returns 0 or an errno value. */
int bp__ixfile_cut(const char *ixdir, const char *name, uint64_t len);
/* The size of index/<name>, or -1. */
int64_t bp__ixfile_size(const char *ixdir, const char *name);

/* Creates the index directory (and makes its creation durable). Errors: BP_EIO. */
bp_status bp__ixdir_make(const char *ixdir);
/* Removes the index directory and everything in it. Returns 0 or an errno value. */
int bp__ixdir_remove(const char *ixdir);
/* Removes every file of the index directory but `keep` (NULL: none).
 * Returns 0 or an errno value. */
int bp__ixdir_clear(const char *ixdir, const char *keep);

#endif
