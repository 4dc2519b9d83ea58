/*
 * cursor_file.h - durable cursor files (cursor_file.c): their format, and
 * keeping them valid when a retention compaction drops events.
 */
#ifndef BATPAK_STORE_CURSOR_FILE_H
#define BATPAK_STORE_CURSOR_FILE_H

#include "internal.h"

#define BP__CURSOR_FILE_SIZE (4 + 4 + 8 + 1 + 16)

typedef struct bp__cursor_file {
  uint64_t position;        /* where the next poll started when it was written */
  bool has_anchor;
  bp_id anchor;             /* the last event examined before position */
} bp__cursor_file;

/* Errors: BP_ENOTFOUND (no file), BP_ECORRUPT (bad magic, size or CRC), BP_EIO. */
bp_status bp__cursor_file_read(const char *path, bp__cursor_file *out);
/* Writes path.tmp, fsyncs it and renames it over path (the caller fsyncs the
 * directory). Returns 0 or an errno value. */
int bp__cursor_file_write(const char *path, const bp__cursor_file *f);
/* Before a retention compaction that drops the global sequences drop[0..n)
 * (increasing, in the index as it is) commits: rewrites every cursor file
 * of s whose anchor is dropped to anchor on the last event kept before it.
 * Errors: BP_EIO (the compaction must not commit then). */
bp_status bp__cursor_files_reanchor(bp_store *s, const uint32_t *drop, size_t ndrop);

#endif
