/*
 * retired.c - idempotency keys whose events retention dropped.
 *
 * A retention compaction removes events for good, their idempotency keys
 * with them: a client retrying an append it made before the compaction
 * would write it again. The keys of dropped events are therefore kept, with
 * a digest of what they named, in retired.keys (this library's own file;
 * the crate never reads it):
 *
 *   +--------+-----------+-----------+------------------------------------+
 *   | "BPRK" | crc32 u32 | count u32 | count x (id 16 BE | digest u64 LE) |
 *   +--------+-----------+-----------+------------------------------------+
 *   the CRC covers what follows it; entries oldest first
 *
 * The window is the latest BP__RETIRED_MAX dropped events. A repeat of a key
 * in it with the same digest is answered as a repeat (nothing written, the
 * receipt says the event was retired); with another digest it is a conflict.
 * The file is written before the compaction commits: should it not commit,
 * the keys listed name events still in the log, which are found there first.
 */
#include "store/retired.h"
#include "store/os.h"
#include "wire/records.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>

#define ENTRY 24
#define HEAD 12

uint64_t bp__retired_digest(const uint8_t event_hash[32], const char *entity, const char *scope, bp_kind kind) {
  size_t el = strlen(entity), sl = strlen(scope);
  uint8_t stack[512];
  size_t n = 32 + el + 1 + sl + 1 + 2;
  uint8_t *b = n <= sizeof stack ? stack : malloc(n);
  if (!b) return 0;
  memcpy(b, event_hash, 32);
  memcpy(b + 32, entity, el + 1);
  memcpy(b + 33 + el, scope, sl + 1);
  bp__put_le16(b + 34 + el + sl, kind);
  uint8_t h[32];
  bp_compute_hash(b, n, h);
  if (b != stack) free(b);
  return bp__get_le64(h);
}

static int cmp_entry(const void *a, const void *b) { return memcmp(a, b, 16); }

/* by_id from by_age. */
static bp_status index_set(bp__retired_keys *r) {
  r->by_id = malloc(ENTRY * (r->n ? r->n : 1));
  if (!r->by_id) return bp__fail(BP_ENOMEM, "out of memory for the retired keys");
  memcpy(r->by_id, r->by_age, ENTRY * r->n);
  qsort(r->by_id, r->n, ENTRY, cmp_entry);
  return BP_OK;
}

bp_status bp__retired_load(const char *dir, bp__retired_keys *r) {
  memset(r, 0, sizeof *r);
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, BP__RETIRED_FILE);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return errno == ENOENT ? BP_OK : bp__fail_errno(BP_EIO, errno, "open %s", path);
  uint8_t head[HEAD];
  int rc = bp__os_read_all(fd, head, HEAD, 0);
  uint32_t count = rc ? 0 : bp__get_le32(head + 8);
  if (rc || memcmp(head, "BPRK", 4) != 0 || count > BP__RETIRED_MAX) {
    bp__os_table.close(fd);
    return bp__fail(BP_ECORRUPT, "%s is damaged (header)", path);
  }
  r->by_age = malloc(ENTRY * (count ? count : 1));
  if (!r->by_age) {
    bp__os_table.close(fd);
    return bp__fail(BP_ENOMEM, "out of memory for %s", path);
  }
  rc = bp__os_read_all(fd, r->by_age, ENTRY * (size_t)count, HEAD);
  bp__os_table.close(fd);
  uint32_t crc = bp__crc32_update(bp__crc32(head + 8, 4), r->by_age, ENTRY * (size_t)count);
  if (rc || crc != bp__get_le32(head + 4)) {
    bp__retired_free(r);
    return bp__fail(BP_ECORRUPT, "%s is damaged (CRC)", path);
  }
  r->n = count;
  bp_status st = index_set(r);
  if (st) bp__retired_free(r);
  return st;
}

bool bp__retired_find(const bp__retired_keys *r, bp_id key, uint64_t *digest) {
  if (r->n == 0) return false;
  uint8_t k[16];
  bp_id_to_bytes(key, k);
  const uint8_t(*hit)[24] = bsearch(k, r->by_id, r->n, ENTRY, cmp_entry);
  if (!hit) return false;
  *digest = bp__get_le64(*hit + 16);
  return true;
}

bp_status bp__retired_add(const char *dir, const bp__retired_keys *r, const bp_id *ids, const uint64_t *digests, size_t n,
                          bp__retired_keys *out) {
  memset(out, 0, sizeof *out);
  size_t total = r->n + n, keep = total > BP__RETIRED_MAX ? BP__RETIRED_MAX : total;
  size_t skip = total - keep; /* the oldest, beyond the window */
  out->by_age = malloc(ENTRY * (keep ? keep : 1));
  if (!out->by_age) return bp__fail(BP_ENOMEM, "out of memory for the retired keys");
  size_t at = 0;
  for (size_t i = skip; i < r->n; i++) memcpy(out->by_age[at++], r->by_age[i], ENTRY);
  for (size_t i = skip > r->n ? skip - r->n : 0; i < n; i++) {
    bp_id_to_bytes(ids[i], out->by_age[at]);
    bp__put_le64(out->by_age[at] + 16, digests[i]);
    at++;
  }
  out->n = at;
  bp_status st = index_set(out);
  if (st) {
    bp__retired_free(out);
    return st;
  }
  uint8_t head[HEAD] = {'B', 'P', 'R', 'K'};
  bp__put_le32(head + 8, (uint32_t)out->n);
  bp__put_le32(head + 4, bp__crc32_update(bp__crc32(head + 8, 4), out->by_age, ENTRY * out->n));
  char path[4200], tmp[4300];
  snprintf(path, sizeof path, "%s/%s", dir, BP__RETIRED_FILE);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = bp__os_table.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  int rc = fd < 0 ? (errno ? errno : EIO) : 0;
  struct iovec iov[2] = {{head, HEAD}, {out->by_age, ENTRY * out->n}};
  if (!rc) rc = bp__os_write_all(fd, iov, 2, 0);
  if (!rc) rc = bp__os_sync(fd, 0);
  if (fd >= 0) bp__os_table.close(fd);
  if (!rc && bp__os_table.rename(tmp, path) != 0) rc = errno ? errno : EIO;
  if (!rc) rc = bp__os_sync_dir(dir);
  if (rc) {
    bp__os_table.unlink(tmp);
    bp__retired_free(out);
    return bp__fail_errno(BP_EIO, rc, "write %s", path);
  }
  return BP_OK;
}

void bp__retired_free(bp__retired_keys *r) {
  free(r->by_age);
  free(r->by_id);
  memset(r, 0, sizeof *r);
}
