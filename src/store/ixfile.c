/* ixfile.c - the persistent index's chunk files, names file and state file (see ixfile.h). */
#include "store/ixfile.h"
#include "store/os.h"
#include "wire/records.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#define CF_VERSION 1u
#define MAX_EXTENTS (((1u << 19) + BP__IX_EXTENT_CHUNKS - 1) / BP__IX_EXTENT_CHUNKS)

static void path_in(char *buf, size_t size, const char *dir, const char *name) {
  snprintf(buf, size, "%s/%s", dir, name);
}

/* ---------------------------------------------------------- chunk files */

/* The header page: magic, version, param, chunk size, zeros, and a CRC-32
 * of the rest of the page in its last 4 bytes. */
static void cf_header(uint8_t h[BP__IX_HEADER], const char magic[8], uint32_t param, size_t chunk_bytes) {
  memset(h, 0, BP__IX_HEADER);
  memcpy(h, magic, 8);
  bp__put_le32(h + 8, CF_VERSION);
  bp__put_le32(h + 12, param);
  bp__put_le64(h + 16, chunk_bytes);
  bp__put_le32(h + BP__IX_HEADER - 4, bp__crc32(h, BP__IX_HEADER - 4));
}

bp_status bp__cfile_open(bp__cfile *cf, const char *path, const char magic[8], uint32_t param, size_t chunk_bytes,
                         bool writable, bool *fresh) {
  memset(cf, 0, sizeof *cf);
  cf->fd = -1;
  cf->writable = writable;
  cf->chunk_bytes = chunk_bytes;
  *fresh = false;
  cf->extents = calloc(MAX_EXTENTS, sizeof *cf->extents);
  if (!cf->extents) return bp__fail(BP_ENOMEM, "out of memory opening %s", path);
  pthread_mutex_init(&cf->lock, NULL);
  cf->fd = bp__os_table.open(path, (writable ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (cf->fd < 0) {
    int err = errno;
    bp__cfile_close(cf);
    return bp__fail_errno(err == ENOENT ? BP_ENOTFOUND : BP_EIO, err, "open %s", path);
  }
  uint8_t *want = malloc(2 * BP__IX_HEADER);
  if (!want) {
    bp__cfile_close(cf);
    return bp__fail(BP_ENOMEM, "out of memory opening %s", path);
  }
  uint8_t *have = want + BP__IX_HEADER;
  cf_header(want, magic, param, chunk_bytes);
  int rc = bp__os_read_all(cf->fd, have, BP__IX_HEADER, 0);
  bool same = rc == 0 && memcmp(want, have, BP__IX_HEADER) == 0;
  if (same || rc != -1 || !writable) free(want);
  if (same) {
    struct stat st;
    if (bp__os_table.fstat(cf->fd, &st) == 0 && (uint64_t)st.st_size > BP__IX_HEADER)
      cf->size = (uint64_t)st.st_size - BP__IX_HEADER;
    return BP_OK;
  }
  if (rc > 0) {
    bp__cfile_close(cf);
    return bp__fail_errno(BP_EIO, rc, "read %s", path);
  }
  if (!writable || rc == 0) {
    /* A header that is there and differs is damage (or another layout):
     * never started over in place, where a reader may have it mapped. */
    bp__cfile_close(cf);
    return bp__fail(BP_ECORRUPT, "%s: not an index file of this kind, or its header is damaged", path);
  }
  /* New (shorter than its header): written. */
  struct iovec iov = {want, BP__IX_HEADER};
  if (bp__os_table.ftruncate(cf->fd, 0) != 0 || (rc = bp__os_write_all(cf->fd, &iov, 1, 0)) != 0) {
    int err = rc ? rc : errno;
    free(want);
    bp__cfile_close(cf);
    return bp__fail_errno(BP_EIO, err, "initialize %s", path);
  }
  free(want);
  *fresh = true;
  return BP_OK;
}

static uint8_t *map_extent(bp__cfile *cf, uint32_t e) {
  uint8_t *m = atomic_load_explicit(&cf->extents[e], memory_order_acquire);
  if (m) return m;
  pthread_mutex_lock(&cf->lock);
  m = atomic_load_explicit(&cf->extents[e], memory_order_relaxed);
  if (!m) {
    size_t len = cf->chunk_bytes * BP__IX_EXTENT_CHUNKS;
    off_t off = (off_t)BP__IX_HEADER + (off_t)e * (off_t)len;
    /* The extent may reach past the end of the file: only chunks that the
     * file holds are ever touched. */
    void *p = bp__os_table.mmap(NULL, len, cf->writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, cf->fd, off);
    if (p == MAP_FAILED) {
      bp__fail_errno(BP_EIO, errno, "map an index file");
    } else {
      m = p;
      atomic_store_explicit(&cf->extents[e], m, memory_order_release);
      if (e + 1 > cf->nextents) cf->nextents = e + 1;
    }
  }
  pthread_mutex_unlock(&cf->lock);
  return m;
}

uint8_t *bp__cfile_chunk(bp__cfile *cf, uint32_t ci) {
  uint8_t *m = map_extent(cf, ci / BP__IX_EXTENT_CHUNKS);
  return m ? m + (size_t)(ci % BP__IX_EXTENT_CHUNKS) * cf->chunk_bytes : NULL;
}

bp_status bp__cfile_reserve(bp__cfile *cf, uint64_t upto) {
  if (upto <= cf->size) return BP_OK;
  uint64_t size = (upto + BP__IX_GROW - 1) / BP__IX_GROW * BP__IX_GROW;
  off_t off = (off_t)BP__IX_HEADER + (off_t)cf->size, len = (off_t)(size - cf->size);
  if (bp__os_table.fallocate(cf->fd, 0, off, len) != 0) {
    int err = errno;
    /* A file system without fallocate: extend the file (space is then
     * allocated as pages are written back). */
    if (err != EOPNOTSUPP || bp__os_table.ftruncate(cf->fd, off + len) != 0)
      return bp__fail_errno(BP_EIO, err, "allocate space for the index");
  }
  cf->size = size;
  return BP_OK;
}

bp_status bp__cfile_alloc(bp__cfile *cf, uint32_t ci, size_t need, uint8_t **out) {
  bp_status st = bp__cfile_reserve(cf, (uint64_t)ci * cf->chunk_bytes + need);
  if (st) return st;
  return (*out = bp__cfile_chunk(cf, ci)) ? BP_OK : BP_EIO;
}

bool bp__cfile_clear_from(bp__cfile *cf, uint64_t from, bool fix) {
  bool clear = true;
  for (uint64_t ci = from / cf->chunk_bytes; ci * cf->chunk_bytes < cf->size; ci++) {
    uint8_t *c = bp__cfile_chunk(cf, (uint32_t)ci);
    if (!c) return false;
    uint64_t at = ci == from / cf->chunk_bytes ? from % cf->chunk_bytes : 0;
    uint64_t end = cf->size - ci * cf->chunk_bytes < cf->chunk_bytes ? cf->size - ci * cf->chunk_bytes : cf->chunk_bytes;
    for (uint64_t i = at; i < end; i++) {
      if (!c[i]) continue;
      clear = false;
      if (!fix) return false;
      memset(c + i, 0, end - i);
      break;
    }
  }
  return clear;
}

int bp__cfile_sync(bp__cfile *cf) { return cf->fd >= 0 ? bp__os_sync(cf->fd, 1) : 0; }

void bp__cfile_close(bp__cfile *cf) {
  if (cf->extents) {
    for (uint32_t e = 0; e < cf->nextents; e++) {
      uint8_t *m = atomic_load(&cf->extents[e]);
      if (m) bp__os_table.munmap(m, cf->chunk_bytes * BP__IX_EXTENT_CHUNKS);
    }
    free(cf->extents);
    pthread_mutex_destroy(&cf->lock);
  }
  if (cf->fd >= 0) bp__os_table.close(cf->fd);
  memset(cf, 0, sizeof *cf);
  cf->fd = -1;
}

/* ----------------------------------------------------------- state file */

#define STATE_MAGIC "BPXSTAT1"
#define STATE_VERSION 2u
#define STATE_FIXED 112u
#define STATE_RUN 32u
#define STATE_SEG 32u
#define STATE_MAX_SEGS (1u << 24)
#define STATE_PAGE 4096u

static size_t state_len(uint32_t nruns, uint32_t nsegs) {
  return STATE_FIXED + (size_t)nruns * STATE_RUN + (size_t)nsegs * STATE_SEG + 4;
}

/* Decodes one copy of the state from b (avail bytes: the rest of its slot).
 * NULL, or what is wrong with it. */
static const char *state_decode(const uint8_t *b, size_t avail, bp__ixstate *st) {
  memset(st, 0, sizeof *st);
  if (avail < STATE_FIXED + 4 || memcmp(b, STATE_MAGIC, 8) != 0) return "damaged (magic)";
  uint32_t nruns = bp__get_le32(b + 52), nsegs = bp__get_le32(b + 80);
  if (bp__get_le32(b + 8) != STATE_VERSION || nruns > BP__IX_MAX_RUNS || nsegs > STATE_MAX_SEGS)
    return "version, run or segment count does not fit";
  size_t len = state_len(nruns, nsegs);
  if (len > avail) return "longer than its slot";
  if (bp__get_le32(b + len - 4) != bp__crc32(b, len - 4)) return "damaged (CRC)";
  st->count = bp__get_le64(b + 16);
  st->names = bp__get_le64(b + 24);
  st->names_bytes = bp__get_le64(b + 32);
  st->epoch = (int64_t)bp__get_le64(b + 40);
  st->layout = bp__get_le32(b + 48);
  st->nruns = nruns;
  st->next_run_no = bp__get_le64(b + 56);
  st->last_id.hi = bp__get_le64(b + 64);
  st->last_id.lo = bp__get_le64(b + 72);
  st->names_crc = bp__get_le32(b + 84);
  st->sums_crc = bp__get_le32(b + 88);
  st->tail_crc = bp__get_le32(b + 92);
  st->scan_tail_crc = bp__get_le32(b + 96);
  st->at.gen = bp__get_le64(b + 100);
  const uint8_t *p = b + STATE_FIXED;
  uint64_t expect_first = 0;
  for (uint32_t i = 0; i < st->nruns; i++, p += STATE_RUN) {
    bp__ixrun_ref *r = &st->runs[i];
    r->no = bp__get_le64(p);
    r->first = bp__get_le64(p + 8);
    r->end = bp__get_le64(p + 16);
    r->level = bp__get_le32(p + 24);
    if (r->first != expect_first || r->end <= r->first || r->end > st->count || r->no >= st->next_run_no)
      return "a run does not follow the one before it";
    expect_first = r->end;
  }
  if (!(st->segs = calloc(nsegs ? nsegs : 1, sizeof *st->segs))) return "";
  st->nsegs = nsegs;
  uint64_t seq = 0;
  for (uint32_t i = 0; i < nsegs; i++, p += STATE_SEG) {
    bp__ixseg *g = &st->segs[i];
    g->id = bp__get_le64(p);
    g->first = bp__get_le64(p + 8);
    g->count = bp__get_le64(p + 16);
    g->frames_end = bp__get_le64(p + 24);
    if (g->first != seq || g->count == 0 || (i > 0 && g->id <= st->segs[i - 1].id))
      return "a segment does not follow the one before it";
    seq += g->count;
  }
  if (seq != st->count) return "its segments do not hold the events it counts";
  return NULL;
}

bp_status bp__ixstate_read(const char *ixdir, bp__ixstate *st) {
  memset(st, 0, sizeof *st);
  char path[4200];
  path_in(path, sizeof path, ixdir, BP__IX_STATE);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) {
    int err = errno;
    return bp__fail_errno(err == ENOENT ? BP_ENOTFOUND : BP_EIO, err, "open %s", path);
  }
  struct stat sb;
  uint8_t *b = NULL;
  bp_status rs = BP_OK;
  if (bp__os_table.fstat(fd, &sb) != 0) {
    rs = bp__fail_errno(BP_EIO, errno, "stat %s", path);
    goto out;
  }
  size_t len = (size_t)sb.st_size, slot = len / 2;
  if (len == 0 || len % (2 * STATE_PAGE) != 0 || slot > 2 * state_len(BP__IX_MAX_RUNS, STATE_MAX_SEGS)) {
    rs = bp__fail(BP_ECORRUPT, "%s: %zu bytes is not a state file's size", path, len);
    goto out;
  }
  if (!(b = malloc(len))) {
    rs = bp__fail(BP_ENOMEM, "out of memory reading %s", path);
    goto out;
  }
  int rc = bp__os_read_all(fd, b, len, 0);
  if (rc) {
    rs = rc > 0 ? bp__fail_errno(BP_EIO, rc, "read %s", path) : bp__fail(BP_ECORRUPT, "%s: cut short", path);
    goto out;
  }
  /* Two copies, written in turn: the newer that is whole wins. A write torn
   * by a crash leaves the other one, which its files still back (nothing it
   * names is removed until a later state is durable). */
  bp__ixstate copy[2];
  const char *why[2];
  memset(copy, 0, sizeof copy);
  for (int k = 0; k < 2; k++) {
    why[k] = state_decode(b + (size_t)k * slot, slot, &copy[k]);
    if (why[k] && !*why[k]) {
      bp__ixstate_free(&copy[0]);
      bp__ixstate_free(&copy[1]);
      rs = bp__fail(BP_ENOMEM, "out of memory reading %s", path);
      goto out;
    }
  }
  int pick = !why[0] && (why[1] || copy[0].at.gen >= copy[1].at.gen) ? 0 : !why[1] ? 1 : -1;
  if (pick < 0) {
    rs = bp__fail(BP_ECORRUPT, "%s: both copies damaged: %s; %s", path, why[0], why[1]);
  } else {
    *st = copy[pick];
    st->at.slot = (uint32_t)pick;
    st->at.slot_bytes = slot;
    copy[pick].segs = NULL;
    const uint8_t *other = b + (size_t)(pick ^ 1) * slot;
    bool unused = true;
    for (size_t i = 0; i < slot && unused; i++) unused = other[i] == 0;
    st->at.other_damage = why[pick ^ 1] && !unused ? why[pick ^ 1] : NULL;
  }
  bp__ixstate_free(&copy[0]);
  bp__ixstate_free(&copy[1]);
out:
  free(b);
  bp__os_table.close(fd);
  return rs;
}

/* Writes the whole file anew (both slots, the state in the first), through a
 * temporary file renamed over it: when there is none yet, or the state has
 * outgrown its slot. */
static int state_replace(const char *ixdir, const uint8_t *b, size_t len, size_t slot) {
  char tmp[4200], path[4200];
  path_in(tmp, sizeof tmp, ixdir, BP__IX_STATE_TMP);
  path_in(path, sizeof path, ixdir, BP__IX_STATE);
  int fd = bp__os_table.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return errno ? errno : EIO;
  struct iovec iov = {(void *)b, len};
  int rc = bp__os_write_all(fd, &iov, 1, 0);
  if (!rc && bp__os_table.ftruncate(fd, (off_t)(2 * slot)) != 0) rc = errno ? errno : EIO;
  if (!rc) rc = bp__os_sync(fd, 0);
  bp__os_table.close(fd);
  if (!rc && bp__os_table.rename(tmp, path) != 0) rc = errno ? errno : EIO;
  if (!rc) rc = bp__os_sync_dir(ixdir);
  if (rc) bp__os_table.unlink(tmp);
  return rc;
}

/* Writes over the slot the newest copy is not in, and syncs its data only:
 * the file keeps its size, so no metadata need reach the disk. */
static int state_overwrite(const char *ixdir, const uint8_t *b, size_t len, size_t at) {
  char path[4200];
  path_in(path, sizeof path, ixdir, BP__IX_STATE);
  int fd = bp__os_table.open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return errno ? errno : EIO;
  struct iovec iov = {(void *)b, len};
  int rc = bp__os_write_all(fd, &iov, 1, at);
  if (!rc) rc = bp__os_sync(fd, 1);
  bp__os_table.close(fd);
  return rc;
}

bp_status bp__ixstate_write(const char *ixdir, const bp__ixstate *st, bp__ixstate_at *at) {
  size_t len = state_len(st->nruns, st->nsegs);
  uint8_t *b = calloc(1, len);
  if (!b) return bp__fail(BP_ENOMEM, "out of memory writing the index state");
  uint64_t gen = at->gen + 1;
  memcpy(b, STATE_MAGIC, 8);
  bp__put_le32(b + 8, STATE_VERSION);
  bp__put_le64(b + 16, st->count);
  bp__put_le64(b + 24, st->names);
  bp__put_le64(b + 32, st->names_bytes);
  bp__put_le64(b + 40, (uint64_t)st->epoch);
  bp__put_le32(b + 48, st->layout);
  bp__put_le32(b + 52, st->nruns);
  bp__put_le64(b + 56, st->next_run_no);
  bp__put_le64(b + 64, st->last_id.hi);
  bp__put_le64(b + 72, st->last_id.lo);
  bp__put_le32(b + 80, st->nsegs);
  bp__put_le32(b + 84, st->names_crc);
  bp__put_le32(b + 88, st->sums_crc);
  bp__put_le32(b + 92, st->tail_crc);
  bp__put_le32(b + 96, st->scan_tail_crc);
  bp__put_le64(b + 100, gen);
  uint8_t *p = b + STATE_FIXED;
  for (uint32_t i = 0; i < st->nruns; i++, p += STATE_RUN) {
    bp__put_le64(p, st->runs[i].no);
    bp__put_le64(p + 8, st->runs[i].first);
    bp__put_le64(p + 16, st->runs[i].end);
    bp__put_le32(p + 24, st->runs[i].level);
  }
  for (uint32_t i = 0; i < st->nsegs; i++, p += STATE_SEG) {
    bp__put_le64(p, st->segs[i].id);
    bp__put_le64(p + 8, st->segs[i].first);
    bp__put_le64(p + 16, st->segs[i].count);
    bp__put_le64(p + 24, st->segs[i].frames_end);
  }
  bp__put_le32(b + len - 4, bp__crc32(b, len - 4));

  int rc;
  bp__ixstate_at next = *at;
  next.gen = gen;
  if (len <= at->slot_bytes) {
    next.slot = at->slot ^ 1;
    rc = state_overwrite(ixdir, b, len, (uint64_t)next.slot * at->slot_bytes);
  } else {
    /* Room to grow: the segment list lengthens by 32 bytes a segment. */
    next.slot = 0;
    next.slot_bytes = (2 * len + STATE_PAGE - 1) / STATE_PAGE * STATE_PAGE;
    rc = state_replace(ixdir, b, len, next.slot_bytes);
  }
  free(b);
  if (rc) return bp__fail_errno(BP_EIO, rc, "write %s/%s", ixdir, BP__IX_STATE);
  *at = next;
  return BP_OK;
}

bool bp__ixstate_tail(const char *ixdir, uint64_t *segment, uint64_t *frames_end, int64_t *epoch) {
  bp__ixstate st;
  if (bp__ixstate_read(ixdir, &st) != BP_OK) return false;
  bool any = st.nsegs > 0;
  if (any) {
    *segment = st.segs[st.nsegs - 1].id;
    *frames_end = st.segs[st.nsegs - 1].frames_end;
    *epoch = st.epoch;
  }
  bp__ixstate_free(&st);
  return any;
}

void bp__ixstate_free(bp__ixstate *st) {
  free(st->segs);
  st->segs = NULL;
  st->nsegs = 0;
}

/* ----------------------------------------------------------- names file */

#define NAMES_MAGIC "BPXNAME1"

bp_status bp__ixnames_read(const char *ixdir, uint64_t bytes, bp_status (*fn)(void *ctx, const char *s, size_t len),
                           void *ctx, uint32_t want_crc) {
  if (bytes == 0) return BP_OK;
  char path[4200];
  path_in(path, sizeof path, ixdir, BP__IX_NAMES);
  if (bytes < BP__IX_NAMES_HEADER || bytes > ((uint64_t)1 << 40))
    return bp__fail(BP_ECORRUPT, "%s: %" PRIu64 " bytes is not a names file's size", path, bytes);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "open %s", path);
  uint8_t *b = malloc(bytes);
  bp_status rs = BP_OK;
  int rc;
  if (!b) {
    rs = bp__fail(BP_ENOMEM, "out of memory reading %s", path);
  } else if ((rc = bp__os_read_all(fd, b, bytes, 0)) != 0) {
    rs = rc > 0 ? bp__fail_errno(BP_EIO, rc, "read %s", path) : bp__fail(BP_ECORRUPT, "%s: cut short", path);
  } else if (memcmp(b, NAMES_MAGIC, 8) != 0) {
    rs = bp__fail(BP_ECORRUPT, "%s: not a names file", path);
  } else if (bp__crc32(b, bytes) != want_crc) {
    rs = bp__fail(BP_ECORRUPT, "%s: damaged (CRC)", path);
  } else {
    for (uint64_t at = BP__IX_NAMES_HEADER; at < bytes && !rs;) {
      if (bytes - at < 4 || bytes - at - 4 < bp__get_le32(b + at)) {
        rs = bp__fail(BP_ECORRUPT, "%s: a name at byte %" PRIu64 " runs past the end", path, at);
        break;
      }
      uint32_t len = bp__get_le32(b + at);
      rs = fn(ctx, (const char *)b + at + 4, len);
      at += 4 + (uint64_t)len;
    }
  }
  free(b);
  bp__os_table.close(fd);
  return rs;
}

bp_status bp__ixnames_append(const char *ixdir, uint64_t *bytes, uint32_t *crc, uint32_t n,
                             const char *(*get)(void *ctx, uint32_t i, uint32_t *len), void *ctx) {
  char path[4200];
  path_in(path, sizeof path, ixdir, BP__IX_NAMES);
  int fd = bp__os_table.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "open %s", path);
  bp__buf b;
  bp__buf_init(&b);
  uint64_t at = *bytes;
  if (at == 0) {
    uint8_t h[BP__IX_NAMES_HEADER] = {0};
    memcpy(h, NAMES_MAGIC, 8);
    bp__buf_append(&b, h, sizeof h);
  }
  int rc = 0;
  uint32_t c = *crc;
  for (uint32_t i = 0; i < n && !rc; i++) {
    uint32_t len;
    const char *s = get(ctx, i, &len);
    uint8_t l[4];
    bp__put_le32(l, len);
    bp__buf_append(&b, l, 4);
    bp__buf_append(&b, s, len);
    if (b.len >= (1u << 20)) {
      if (!b.oom) c = bp__crc32_update(c, b.data, b.len);
      rc = bp__os_write_buf(fd, &b, &at);
    }
  }
  if (b.oom) rc = ENOMEM;
  if (!rc) {
    c = bp__crc32_update(c, b.data, b.len);
    rc = bp__os_write_buf(fd, &b, &at);
  }
  if (!rc) rc = bp__os_sync(fd, 1);
  bp__buf_free(&b);
  bp__os_table.close(fd);
  if (rc) return bp__fail_errno(BP_EIO, rc, "append to %s", path);
  *bytes = at;
  *crc = c;
  return BP_OK;
}

/* ------------------------------------------------------------ sums file */

#define SUMS_MAGIC "BPXSUMS1"
#define SUMS_HEADER 16u

bp_status bp__ixsums_read(const char *ixdir, uint32_t n, uint32_t **entries, uint32_t **scan, uint32_t *crc) {
  *entries = *scan = NULL;
  *crc = 0;
  char path[4200];
  path_in(path, sizeof path, ixdir, BP__IX_SUMS);
  if (n == 0) return BP_OK;
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return bp__fail_errno(errno == ENOENT ? BP_ECORRUPT : BP_EIO, errno, "open %s", path);
  size_t len = SUMS_HEADER + (size_t)n * 8;
  uint8_t *b = malloc(len);
  uint32_t *e = malloc(sizeof *e * n), *c = malloc(sizeof *c * n);
  bp_status rs = BP_OK;
  int rc;
  if (!b || !e || !c) {
    rs = bp__fail(BP_ENOMEM, "out of memory reading %s", path);
  } else if ((rc = bp__os_read_all(fd, b, len, 0)) != 0) {
    rs = rc > 0 ? bp__fail_errno(BP_EIO, rc, "read %s", path) : bp__fail(BP_ECORRUPT, "%s: cut short", path);
  } else if (memcmp(b, SUMS_MAGIC, 8) != 0) {
    rs = bp__fail(BP_ECORRUPT, "%s: not a sums file", path);
  } else {
    for (uint32_t i = 0; i < n; i++) {
      e[i] = bp__get_le32(b + SUMS_HEADER + 8 * (size_t)i);
      c[i] = bp__get_le32(b + SUMS_HEADER + 8 * (size_t)i + 4);
    }
    *crc = bp__crc32(b, len);
  }
  bp__os_table.close(fd);
  free(b);
  if (rs) {
    free(e);
    free(c);
    return rs;
  }
  *entries = e;
  *scan = c;
  return BP_OK;
}

bp_status bp__ixsums_write(const char *ixdir, uint32_t from, uint32_t n, const uint32_t *entries,
                           const uint32_t *scan, uint32_t *crc) {
  char path[4200];
  path_in(path, sizeof path, ixdir, BP__IX_SUMS);
  int fd = bp__os_table.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "open %s", path);
  size_t len = (size_t)n * 8 + (from == 0 ? SUMS_HEADER : 0);
  uint8_t *b = malloc(len ? len : 1);
  int rc = b ? 0 : ENOMEM;
  if (b) {
    uint8_t *p = b;
    if (from == 0) {
      memset(p, 0, SUMS_HEADER);
      memcpy(p, SUMS_MAGIC, 8);
      p += SUMS_HEADER;
    }
    for (uint32_t i = 0; i < n; i++, p += 8) {
      bp__put_le32(p, entries[i]);
      bp__put_le32(p + 4, scan[i]);
    }
    struct iovec iov = {b, len};
    rc = bp__os_write_all(fd, &iov, 1, from == 0 ? 0 : SUMS_HEADER + (uint64_t)from * 8);
    if (!rc) rc = bp__os_sync(fd, 1);
    if (!rc) *crc = bp__crc32_update(*crc, b, len);
  }
  free(b);
  bp__os_table.close(fd);
  return rc ? bp__fail_errno(BP_EIO, rc, "write %s", path) : BP_OK;
}

int bp__ixfile_cut(const char *ixdir, const char *name, uint64_t len) {
  char path[4200];
  path_in(path, sizeof path, ixdir, name);
  struct stat st;
  if (stat(path, &st) != 0) return errno == ENOENT ? 0 : errno;
  if ((uint64_t)st.st_size <= len) return 0;
  int fd = bp__os_table.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return errno;
  int rc = bp__os_table.ftruncate(fd, (off_t)len) != 0 ? errno : bp__os_sync(fd, 1);
  bp__os_table.close(fd);
  return rc;
}

int64_t bp__ixfile_size(const char *ixdir, const char *name) {
  char path[4200];
  path_in(path, sizeof path, ixdir, name);
  struct stat st;
  return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* ------------------------------------------------------------ directory */

bp_status bp__ixdir_make(const char *ixdir) {
  if (bp__os_table.mkdir(ixdir, 0700) != 0) {
    if (errno != EEXIST) return bp__fail_errno(BP_EIO, errno, "create %s", ixdir);
    return BP_OK;
  }
  char parent[4200];
  snprintf(parent, sizeof parent, "%s", ixdir);
  char *slash = strrchr(parent, '/');
  if (slash) *slash = '\0';
  int rc = bp__os_sync_dir(slash ? parent : ".");
  return rc ? bp__fail_errno(BP_EIO, rc, "sync %s", parent) : BP_OK;
}

int bp__ixdir_clear(const char *ixdir, const char *keep) {
  DIR *d = opendir(ixdir);
  if (!d) return errno == ENOENT ? 0 : errno;
  int rc = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (keep && strcmp(e->d_name, keep) == 0) continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", ixdir, e->d_name);
    if (bp__os_table.unlink(p) != 0 && errno != ENOENT) rc = errno;
  }
  closedir(d);
  return rc;
}

int bp__ixdir_remove(const char *ixdir) {
  DIR *d = opendir(ixdir);
  if (!d) return errno == ENOENT ? 0 : errno;
  int rc = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", ixdir, e->d_name);
    if (bp__os_table.unlink(p) != 0 && errno != ENOENT) rc = errno;
  }
  closedir(d);
  if (!rc && bp__os_table.rmdir(ixdir) != 0 && errno != ENOENT) rc = errno;
  return rc;
}
