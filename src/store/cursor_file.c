/*
 * cursor_file.c - the file of a durable cursor, cursors/NAME, and keeping
 * those files valid across a retention compaction.
 *
 *   +--------+-----------+--------------+---------------+-------------------+
 *   | "BPC2" | crc32 u32 | position u64 | has_anchor u8 | anchor id 16 (BE) |
 *   +--------+-----------+--------------+---------------+-------------------+
 *   little-endian; the CRC covers everything after it (25 bytes)
 *
 * The anchor is the last event the cursor examined (the one just before its
 * position), whether or not it matched: a reopened cursor resumes right after
 * it, wherever a compaction has moved it. Files of the first format ("BPCR")
 * anchor on the last event delivered instead; they are read the same way.
 *
 * A retention compaction may drop an anchor. Before it commits, the
 * compaction rewrites each file whose anchor it drops to anchor on the last
 * event it keeps before that one (none: the cursor starts over at the first
 * event), so that the cursor resumes at the first surviving event after the
 * one it had examined: nothing skipped, nothing delivered twice. Should the
 * compaction not commit after all, the new anchor is an earlier event of the
 * same log, and the cursor only examines some events again.
 */
#include "store/cursor_file.h"
#include "store/store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>

bp_status bp__cursor_file_read(const char *path, bp__cursor_file *out) {
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) {
    if (errno == ENOENT) return bp__fail_errno(BP_ENOTFOUND, ENOENT, "no cursor file %s", path);
    return bp__fail_errno(BP_EIO, errno, "open cursor file %s", path);
  }
  uint8_t buf[BP__CURSOR_FILE_SIZE + 1];
  ssize_t got = bp__os_table.pread(fd, buf, sizeof buf, 0);
  bp__os_table.close(fd);
  bool known = got == BP__CURSOR_FILE_SIZE && (memcmp(buf, "BPC2", 4) == 0 || memcmp(buf, "BPCR", 4) == 0);
  if (!known || bp__crc32(buf + 8, BP__CURSOR_FILE_SIZE - 8) != bp__get_le32(buf + 4))
    return bp__fail(BP_ECORRUPT, "cursor file %s is damaged", path);
  out->position = bp__get_le64(buf + 8);
  out->has_anchor = buf[16] != 0;
  out->anchor = bp_id_from_bytes(buf + 17);
  return BP_OK;
}

int bp__cursor_file_write(const char *path, const bp__cursor_file *f) {
  char tmp[4400];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  uint8_t buf[BP__CURSOR_FILE_SIZE] = {'B', 'P', 'C', '2'};
  bp__put_le64(buf + 8, f->position);
  buf[16] = f->has_anchor ? 1 : 0;
  bp_id_to_bytes(f->has_anchor ? f->anchor : BP_ID_NIL, buf + 17);
  bp__put_le32(buf + 4, bp__crc32(buf + 8, BP__CURSOR_FILE_SIZE - 8));
  int fd = bp__os_table.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return errno ? errno : EIO;
  struct iovec iov = {buf, sizeof buf};
  int rc = bp__os_write_all(fd, &iov, 1, 0);
  if (!rc) rc = bp__os_sync(fd, 0);
  bp__os_table.close(fd);
  if (!rc && bp__os_table.rename(tmp, path) != 0) rc = errno ? errno : EIO;
  if (rc) bp__os_table.unlink(tmp);
  return rc;
}

static bool dropped(const uint32_t *v, size_t n, uint64_t seq) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v[mid] < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && v[lo] == seq;
}

bp_status bp__cursor_files_reanchor(bp_store *s, const uint32_t *drop, size_t ndrop) {
  if (ndrop == 0) return BP_OK;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/cursors", s->dir);
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? BP_OK : bp__fail_errno(BP_EIO, errno, "open %s", dir);
  bp_status st = BP_OK;
  bool wrote = false;
  struct dirent *e;
  while (!st && (e = readdir(d))) {
    if (e->d_name[0] == '.' || bp__has_suffix(e->d_name, ".tmp")) continue;
    char path[4500];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    bp__cursor_file f;
    if (bp__cursor_file_read(path, &f) != BP_OK || !f.has_anchor) continue; /* its open reports it */
    uint64_t seq;
    if (!bp__index_find_id(&s->ix, f.anchor, s->ix.count, &seq) || !dropped(drop, ndrop, seq)) continue;
    /* The last event kept before the anchor. */
    uint64_t k = seq;
    while (k > 0 && dropped(drop, ndrop, k - 1)) k--;
    f.has_anchor = k > 0;
    f.anchor = k > 0 ? bp__index_at(&s->ix, k - 1)->event_id : BP_ID_NIL;
    f.position = k;
    int rc = bp__cursor_file_write(path, &f);
    if (rc) st = bp__fail_errno(BP_EIO, rc, "compaction: re-anchor cursor file %s", path);
    wrote = true;
  }
  closedir(d);
  if (!st && wrote) {
    int rc = bp__os_sync_dir(dir);
    if (rc) st = bp__fail_errno(BP_EIO, rc, "compaction: fsync %s", dir);
  }
  return st;
}
