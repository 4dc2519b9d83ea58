/*
 * segment.c - segment files: names, the segment table and its read
 * descriptors, SIDX footers, and loading a segment at open.
 *
 * SIDX footer of a sealed segment (integers little-endian):
 *
 *   +------------------+--------------------------+------------------------------+
 *   | string table     | N entries of 154 bytes   | trailer (16 bytes)           |
 *   | msgpack [str...] |                          | st_off u64 | N u32 | "SIDX"  |
 *   +------------------+--------------------------+------------------------------+
 *   ^ st_off = where the frames end
 *
 *   entry: event_id u128 | entity_idx u32 | scope_idx u32 | kind u16 |
 *          wall_ms u64 | clock u32 | prev_hash 32 | event_hash 32 |
 *          frame_offset u64 | frame_length u32 | global_sequence u64 |
 *          correlation_id u128 | causation_id u128 (0 = none)
 *
 * The seal. The crate's footer has no checksum, so a flipped byte in an entry
 * would be believed. Footers written here end their string table with one
 * more string, which no entry refers to and no name can equal (names are C
 * strings; this one starts with a NUL byte):
 *
 *   "\0bpseal1" then the CRC-32 (IEEE) of the footer without that string,
 *   as 8 lowercase hex digits: 16 bytes, a fixstr
 *
 * The CRC covers the string table up to the seal (array header included),
 * then the entries and the trailer. The crate reads the seal as one more
 * string of the table and ignores it. A footer without a seal (the crate's,
 * or one written before seals) is never believed: its segment is scanned.
 */
#include "store/store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

void bp__segment_path(const bp_store *s, uint64_t id, char *buf, size_t size) {
  snprintf(buf, size, "%s/%06" PRIu64 ".fbat", s->dir, id);
}

bool bp__segment_parse_name(const char *name, uint64_t *id) {
  size_t n = strlen(name), digits = 0;
  while (digits < n && name[digits] >= '0' && name[digits] <= '9') digits++;
  if (digits < 6 || digits > 19 || strcmp(name + digits, ".fbat") != 0) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < digits; i++) v = v * 10 + (uint64_t)(name[i] - '0');
  if (v == 0) return false;
  *id = v;
  return true;
}

/* ---------------------------------------------------------- segment table */

static bp__segment *find_locked(bp_store *s, uint64_t id) {
  size_t lo = 0, hi = s->nsegs;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (s->segs[mid].id < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < s->nsegs && s->segs[lo].id == id ? &s->segs[lo] : NULL;
}

bp_status bp__segment_add(bp_store *s, uint64_t id, bool sealed, uint64_t size) {
  pthread_mutex_lock(&s->seg_lock);
  if (s->nsegs == s->segcap) {
    size_t cap = s->segcap ? s->segcap * 2 : 16;
    bp__segment *n = realloc(s->segs, cap * sizeof *n);
    if (!n) {
      pthread_mutex_unlock(&s->seg_lock);
      return bp__fail(BP_ENOMEM, "out of memory for the segment table");
    }
    s->segs = n;
    s->segcap = cap;
  }
  /* Ids arrive in increasing order. */
  bp__segment *g = &s->segs[s->nsegs++];
  memset(g, 0, sizeof *g);
  g->id = id;
  g->sealed = sealed;
  g->size = size;
  g->rfd = -1;
  pthread_mutex_unlock(&s->seg_lock);
  return BP_OK;
}

void bp__segment_sealed(bp_store *s, uint64_t id, uint64_t size) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  if (g) {
    g->sealed = true;
    g->size = size;
    if (g->map) g->map_len = size < g->map_size ? size : g->map_size; /* the footer too */
  }
  pthread_mutex_unlock(&s->seg_lock);
}

void bp__segment_unseal(bp_store *s, uint64_t id, uint64_t size) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  if (g) {
    if (g->map) bp__os_table.munmap((void *)g->map, g->map_size);
    g->map = NULL;
    g->map_len = g->map_size = 0;
    g->sealed = false;
    g->size = size;
  }
  pthread_mutex_unlock(&s->seg_lock);
}

void bp__segment_map_active(bp_store *s, uint64_t id, int fd, uint64_t reserve) {
  if (reserve > ((uint64_t)1 << 40) || reserve > SIZE_MAX / 2) return; /* an absurd size, or more than this address space */
  size_t len = (size_t)bp__os_page_ceil(reserve);
  void *m = bp__os_table.mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return;
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  if (g && !g->map) {
    g->map = m;
    g->map_size = len;
    g->map_len = 0;
    m = NULL;
  }
  pthread_mutex_unlock(&s->seg_lock);
  if (m) bp__os_table.munmap(m, len);
}

void bp__segment_readable(bp_store *s, uint64_t id, uint64_t upto) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  if (g && g->map) g->map_len = upto < g->map_size ? (size_t)upto : g->map_size;
  pthread_mutex_unlock(&s->seg_lock);
}

/* Closes the least recently used idle descriptor while over budget. */
static void evict_locked(bp_store *s) {
  while (s->open_rfds >= s->cfg.fd_budget) {
    bp__segment *victim = NULL;
    for (size_t i = 0; i < s->nsegs; i++) {
      bp__segment *g = &s->segs[i];
      if (g->rfd >= 0 && g->refs == 0 && (!victim || g->last_use < victim->last_use)) victim = g;
    }
    if (!victim) return;
    bp__os_table.close(victim->rfd);
    victim->rfd = -1;
    s->open_rfds--;
  }
}

const uint8_t *bp__segment_map(bp_store *s, uint64_t id, size_t *len) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  const uint8_t *map = g ? g->map : NULL;
  *len = map ? g->map_len : 0;
  pthread_mutex_unlock(&s->seg_lock);
  return map;
}

void bp__segment_release(bp_store *s, uint64_t id) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  if (g && g->map) madvise((void *)g->map, g->map_len, MADV_DONTNEED);
  pthread_mutex_unlock(&s->seg_lock);
}

bp_status bp__segment_read(bp_store *s, uint64_t id, uint64_t off, void *buf, size_t len) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  if (!g) {
    pthread_mutex_unlock(&s->seg_lock);
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " is not in the store", id);
  }
  if (g->sealed && !g->map && g->size > 0) {
    /* Sealed segments never change: map them once, for the life of the store. */
    int fd = g->rfd;
    bool opened = false;
    if (fd < 0) {
      char path[4096];
      bp__segment_path(s, id, path, sizeof path);
      fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
      opened = fd >= 0;
    }
    if (fd >= 0) {
      void *m = bp__os_table.mmap(NULL, g->size, PROT_READ, MAP_SHARED, fd, 0);
      if (m != MAP_FAILED) {
        g->map = m;
        g->map_len = g->map_size = g->size;
      }
      if (opened) bp__os_table.close(fd);
    }
  }
  if (g->map && off + len <= g->map_len) {
    memcpy(buf, g->map + off, len);
    pthread_mutex_unlock(&s->seg_lock);
    return BP_OK;
  }
  if (g->rfd < 0) {
    evict_locked(s);
    char path[4096];
    bp__segment_path(s, id, path, sizeof path);
    g->rfd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (g->rfd < 0) {
      int err = errno;
      pthread_mutex_unlock(&s->seg_lock);
      return bp__fail_errno(BP_EIO, err, "open %s", path);
    }
    s->open_rfds++;
  }
  g->refs++;
  g->last_use = ++s->lru_tick;
  int fd = g->rfd;
  pthread_mutex_unlock(&s->seg_lock);

  int rc = bp__os_read_all(fd, buf, len, off);

  pthread_mutex_lock(&s->seg_lock);
  g = find_locked(s, id);
  g->refs--;
  pthread_mutex_unlock(&s->seg_lock);
  if (rc == -1)
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 ": frame at offset %" PRIu64 " runs past the end of the file",
                    id, off);
  if (rc) return bp__fail_errno(BP_EIO, rc, "read segment %06" PRIu64 " at offset %" PRIu64, id, off);
  return BP_OK;
}

bp_status bp__frame_check(const uint8_t *frame, uint32_t len, uint64_t seg, uint64_t off) {
  if (bp__get_be32(frame) != len - BP__FRAME_PREFIX)
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " offset %" PRIu64 ": frame length %u, index says %u", seg, off,
                    bp__get_be32(frame), len - BP__FRAME_PREFIX);
  if (bp__crc32(frame + BP__FRAME_PREFIX, len - BP__FRAME_PREFIX) != bp__get_be32(frame + 4))
    return bp__fail(BP_ECRC, "segment %06" PRIu64 " offset %" PRIu64 ": CRC mismatch", seg, off);
  return BP_OK;
}

void bp__segments_free(bp_store *s) {
  for (size_t i = 0; i < s->nsegs; i++) {
    if (s->segs[i].map) bp__os_table.munmap(s->segs[i].map, s->segs[i].map_size);
    if (s->segs[i].rfd >= 0) bp__os_table.close(s->segs[i].rfd);
  }
  free(s->segs);
  s->segs = NULL;
  s->nsegs = s->segcap = 0;
}

/* ------------------------------------------------------------ SIDX footer */

bool bp__segment_note_fix(bp_store *s, uint64_t id, uint64_t first, uint64_t count, uint64_t frames_end, int why) {
  if (s->readonly) return true;
  struct bp__footer_fix *v = realloc(s->footer_fixes, (s->nfooter_fixes + 1) * sizeof *v);
  if (!v) return false;
  s->footer_fixes = v;
  v[s->nfooter_fixes++] = (struct bp__footer_fix){id, first, count, frames_end, why};
  return true;
}

bool bp__segment_take_newest_fix(bp_store *s, uint64_t *id, uint64_t *first, uint64_t *frames_end) {
  if (s->nfooter_fixes == 0 || s->nsegs == 0) return false;
  const struct bp__footer_fix *x = &s->footer_fixes[s->nfooter_fixes - 1];
  if (x->why != BP__FIX_CRASHED || x->id != s->segs[s->nsegs - 1].id) return false;
  *id = x->id;
  *first = x->first;
  *frames_end = x->frames_end;
  s->nfooter_fixes--;
  return true;
}

bp_status bp__segment_fix_footers(bp_store *s) {
  static const char *const what[] = {"", "crashed segment finished", "damaged SIDX footer rewritten",
                                     "SIDX footer renumbered"};
  bp_status st = BP_OK;
  for (size_t i = 0; i < s->nfooter_fixes && !st; i++) {
    const struct bp__footer_fix *x = &s->footer_fixes[i];
    char path[4096];
    bp__segment_path(s, x->id, path, sizeof path);
    uint64_t len = 0;
    int fd = bp__os_table.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    int rc = fd < 0 ? (errno ? errno : EIO) : 0;
    /* Written over what follows the frames (a torn tail, zeros allocated
     * ahead, an old footer), then the file is cut where the footer ends: a
     * crash in between leaves a footer whose seal does not match, which the
     * next open rewrites. */
    if (!rc) rc = bp__sidx_write(&s->ix, x->first, x->first + x->count, x->frames_end, fd, &len);
    if (!rc && bp__os_table.ftruncate(fd, (off_t)(x->frames_end + len)) != 0) rc = errno ? errno : EIO;
    if (!rc) rc = bp__os_sync(fd, 0);
    if (fd >= 0) bp__os_table.close(fd);
    if (!rc) {
      bp__segment_sealed(s, x->id, x->frames_end + len);
      bp__log(s, BP_LOG_INFO, "segment %06" PRIu64 ": %s (%" PRIu64 " events)", x->id, what[x->why], x->count);
    } else if (x->why == BP__FIX_CRASHED) {
      st = bp__fail_errno(BP_EIO, rc, "segment %06" PRIu64 ": finishing the crashed segment (writing its footer)",
                          x->id);
    } else {
      bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": %s failed: %s", x->id, what[x->why], strerror(rc));
    }
  }
  free(s->footer_fixes);
  s->footer_fixes = NULL;
  s->nfooter_fixes = 0;
  return st;
}

/* A footer is handed to its file in pieces of about this many bytes when it
 * is written straight to one (bp__sidx_write): 154 bytes an event, 88 MB for
 * a full segment of the default size, need not all be in memory at once. */
#define SIDX_PIECE (1u << 20)

/* The footer's string table into b: the entity and scope names of entries
 * [first, end) in first-use order. Returns local, local[name id] being the
 * name's place in the table (the caller frees it), or NULL when out of
 * memory. */
static uint32_t *sidx_names(const bp__index *ix, uint64_t first, uint64_t end, bp__buf *b) {
  uint32_t names = bp__index_name_count(ix);
  uint32_t *local = malloc(sizeof *local * names);
  uint32_t *order = malloc(sizeof *order * names);
  if (!local || !order) {
    free(local);
    free(order);
    return NULL;
  }
  memset(local, 0xff, sizeof *local * names);
  uint32_t used = 0;
  for (uint64_t seq = first; seq < end; seq++) {
    const bp__ientry *e = bp__index_at(ix, seq);
    uint32_t ids[2] = {e->entity, e->scope};
    for (int k = 0; k < 2; k++)
      if (local[ids[k]] == UINT32_MAX) {
        local[ids[k]] = used;
        order[used++] = ids[k];
      }
  }
  bp__mp_put_array(b, used + 1); /* and the seal */
  for (uint32_t i = 0; i < used; i++) {
    const bp__name *nm = bp__index_name(ix, order[i]);
    bp__mp_put_str(b, nm->str, nm->len);
  }
  free(order);
  return local;
}

static void put_entry(uint8_t *p, const bp__ientry *e, uint32_t entity, uint32_t scope, uint64_t seq) {
  bp__put_le64(p, e->event_id.lo);
  bp__put_le64(p + 8, e->event_id.hi);
  bp__put_le32(p + 16, entity);
  bp__put_le32(p + 20, scope);
  bp__put_le16(p + 24, e->kind);
  bp__put_le64(p + 26, e->wall_ms);
  bp__put_le32(p + 34, e->clock);
  memcpy(p + 38, e->prev_hash, 32);
  memcpy(p + 70, e->event_hash, 32);
  bp__put_le64(p + 102, e->offset);
  bp__put_le32(p + 110, e->length);
  bp__put_le64(p + 114, seq);
  bp__put_le64(p + 122, e->correlation_id.lo);
  bp__put_le64(p + 130, e->correlation_id.hi);
  bp__put_le64(p + 138, e->causation_id.lo);
  bp__put_le64(p + 146, e->causation_id.hi);
}

static void put_trailer(uint8_t *t, uint64_t frames_end, uint64_t count) {
  bp__put_le64(t, frames_end);
  bp__put_le32(t + 8, (uint32_t)count);
  memcpy(t + 12, "SIDX", 4);
}

/* The seal string's 16 bytes for a CRC. */
static void seal_text(uint32_t crc, char out[BP__SIDX_SEAL_LEN]) {
  static const char hex[] = "0123456789abcdef";
  memcpy(out, BP__SIDX_SEAL_MAGIC, 8);
  for (int i = 0; i < 8; i++) out[8 + i] = hex[(crc >> (28 - 4 * i)) & 0xF];
}

/* The footer of entries [first, end) into b; with fd >= 0, b's bytes go to fd
 * at *at whenever they make a piece (the last piece stays in b). The entries
 * are encoded twice: once for the seal's CRC, which precedes them, then for
 * good. Returns 0, ENOMEM, or an errno value of a write. */
static int sidx_emit(const bp__index *ix, uint64_t first, uint64_t end, uint64_t frames_end, bp__buf *b, int fd,
                     uint64_t *at) {
  size_t table_at = b->len;
  uint32_t *local = sidx_names(ix, first, end, b);
  if (!local) return ENOMEM;
  uint64_t count = end - first;
  if (!b->oom) {
    uint32_t crc = bp__crc32(b->data + table_at, b->len - table_at);
    uint8_t one[BP__SIDX_ENTRY_SIZE];
    for (uint64_t seq = first; seq < end; seq++) {
      const bp__ientry *e = bp__index_at(ix, seq);
      put_entry(one, e, local[e->entity], local[e->scope], seq);
      crc = bp__crc32_update(crc, one, sizeof one);
    }
    uint8_t t[BP__SIDX_TRAILER_SIZE];
    put_trailer(t, frames_end, count);
    crc = bp__crc32_update(crc, t, sizeof t);
    char seal[BP__SIDX_SEAL_LEN];
    seal_text(crc, seal);
    bp__mp_put_str(b, seal, sizeof seal);
  }
  uint64_t per_piece = fd >= 0 ? SIDX_PIECE / BP__SIDX_ENTRY_SIZE : count;
  int rc = 0;
  for (uint64_t seq = first; seq < end && !rc && !b->oom;) {
    uint64_t k = end - seq < per_piece ? end - seq : per_piece;
    if (!bp__buf_reserve(b, k * BP__SIDX_ENTRY_SIZE + BP__SIDX_TRAILER_SIZE)) break;
    for (uint64_t stop = seq + k; seq < stop; seq++) {
      const bp__ientry *e = bp__index_at(ix, seq);
      put_entry(b->data + b->len, e, local[e->entity], local[e->scope], seq);
      b->len += BP__SIDX_ENTRY_SIZE;
    }
    if (fd >= 0 && seq < end) rc = bp__os_write_buf(fd, b, at);
  }
  if (!rc && !b->oom && bp__buf_reserve(b, BP__SIDX_TRAILER_SIZE)) {
    put_trailer(b->data + b->len, frames_end, count);
    b->len += BP__SIDX_TRAILER_SIZE;
  }
  free(local);
  return rc ? rc : b->oom ? ENOMEM : 0;
}

int bp__sidx_seal_check(const uint8_t *table, size_t table_len, const uint8_t *rest, size_t rest_len,
                        uint32_t *names) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, table, table_len);
  uint32_t n;
  if (bp__mp_read_array(&r, &n) != BP_OK || n > bp__mp_remaining(&r)) return -1;
  size_t last_at = 0;
  const char *str = NULL;
  uint32_t len = 0;
  for (uint32_t i = 0; i < n; i++) {
    last_at = bp__mp_offset(&r);
    if (bp__mp_read_str(&r, &str, &len) != BP_OK) return -1;
  }
  if (bp__mp_remaining(&r) != 0) return -1;
  *names = n;
  if (n == 0 || len != BP__SIDX_SEAL_LEN || memcmp(str, BP__SIDX_SEAL_MAGIC, 8) != 0) return 0;
  *names = n - 1;
  uint32_t crc = bp__crc32(table, last_at);
  crc = bp__crc32_update(crc, rest, rest_len);
  char want[BP__SIDX_SEAL_LEN];
  seal_text(crc, want);
  return memcmp(str, want, sizeof want) == 0 ? 1 : 2;
}

int bp__sidx_length(const bp__index *ix, uint64_t first, uint64_t end, uint64_t *len) {
  bp__buf b;
  bp__buf_init(&b);
  uint32_t *local = sidx_names(ix, first, end, &b);
  int rc = local && !b.oom ? 0 : ENOMEM;
  *len = b.len + 1 + BP__SIDX_SEAL_LEN + (end - first) * BP__SIDX_ENTRY_SIZE + BP__SIDX_TRAILER_SIZE;
  free(local);
  bp__buf_free(&b);
  return rc;
}

bp_status bp__sidx_encode(const bp__index *ix, uint64_t first, uint64_t end, uint64_t frames_end,
                          bp__buf *b) {
  if (sidx_emit(ix, first, end, frames_end, b, -1, NULL)) return bp__fail(BP_ENOMEM, "out of memory for a SIDX footer");
  return BP_OK;
}

int bp__sidx_write(const bp__index *ix, uint64_t first, uint64_t end, uint64_t frames_end, int fd, uint64_t *len) {
  bp__buf b;
  bp__buf_init(&b);
  uint64_t at = frames_end;
  int rc = sidx_emit(ix, first, end, frames_end, &b, fd, &at);
  if (!rc) rc = bp__os_write_buf(fd, &b, &at);
  bp__buf_free(&b);
  *len = at - frames_end;
  return rc;
}

/* ----------------------------------------------------------- loading */

bp_status bp__segfile_open(bp_store *s, uint64_t id, bp__segfile *f) {
  memset(f, 0, sizeof *f);
  f->id = id;
  f->fd = -1;
  char path[4096];
  bp__segment_path(s, id, path, sizeof path);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "open %s", path);
  /* The size, the trailer and the header, read again should the file be
   * found shorter than its size said: beside a read-only open, a writer in
   * another process may seal the segment, cutting the space it allocated
   * ahead, between the two. */
  uint8_t head[4096];
  size_t size = 0, have = 0;
  for (int tries = 0;; tries++) {
    struct stat st;
    if (bp__os_table.fstat(fd, &st) != 0) {
      int err = errno;
      bp__os_table.close(fd);
      return bp__fail_errno(BP_EIO, err, "stat %s", path);
    }
    if (!S_ISREG(st.st_mode)) {
      bp__os_table.close(fd);
      return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " is not a regular file", id);
    }
    size = (size_t)st.st_size;
    if (size == 0) {
      bp__os_table.close(fd);
      return BP_OK;
    }
    f->has_trailer = false;
    int trc = size >= BP__SIDX_TRAILER_SIZE
                  ? bp__os_read_all(fd, f->trailer, BP__SIDX_TRAILER_SIZE, size - BP__SIDX_TRAILER_SIZE)
                  : 0;
    if (trc == 0 && size >= BP__SIDX_TRAILER_SIZE) f->has_trailer = memcmp(f->trailer + 12, "SIDX", 4) == 0;
    /* The header: magic, length, and the map (read with pread, a page at most). */
    have = size < sizeof head ? size : sizeof head;
    int rc = trc > 0 ? trc : bp__os_read_all(fd, head, have, 0);
    if ((rc == -1 || trc == -1) && tries < 3) continue; /* shorter than it was: look again */
    if (rc) {
      bp__os_table.close(fd);
      return bp__fail_errno(BP_EIO, rc > 0 ? rc : EIO, "read %s", path);
    }
    break;
  }
  f->fd = fd;
  f->size = size;
  bp__segment_header h;
  size_t consumed;
  if (memcmp(head, BP__SEGMENT_MAGIC, have < 4 ? have : 4) != 0) {
    bp__fail(BP_ECORRUPT, "bad magic (not an FBAT segment)");
    goto bad;
  }
  if (!f->has_trailer && bp__segment_header_torn(head, have, size)) {
    /* Cut short while its header was being written: an empty segment. */
    bp__segfile_close(f);
    f->id = id;
    f->torn_header = size;
    return BP_OK;
  }
  if (have < 8 || (size_t)bp__get_be32(head + 4) > have - 8) {
    bp__fail(BP_ECORRUPT, "header length %u is not plausible", have >= 8 ? bp__get_be32(head + 4) : 0);
    goto bad;
  }
  if (bp__segment_header_decode(head, have, &h, &consumed) != BP_OK) goto bad;
  if (h.segment_id != id)
    bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": header says segment %" PRIu64, id, h.segment_id);
  f->frames_start = consumed;
  f->created_ns = h.created_ns;
  return BP_OK;

bad:
  bp__segfile_close(f);
  return bp__fail_within(BP_ECORRUPT, "segment %06" PRIu64, id);
}

/* The byte at file offset off of a segment being scanned. */
static inline const uint8_t *at(const bp__segfile *f, size_t off) { return f->data + (off - f->base); }

#define WINDOW (4u << 20)

/* Makes file offsets [from, upto) readable through at(); false when the file
 * ends before upto. A read-only open reads the newest segment as the scan
 * goes, through a window that slides forward (a writer in another process
 * may seal that segment meanwhile, cutting the space it allocated ahead, and
 * a mapping of those pages would fault). The window holds the frame being
 * read, and grows only for a frame larger than it. A file found shorter than
 * at open is taken to end there (the open compares the directory before and
 * after, and reads again on a change). */
static bool have_range(bp__segfile *f, size_t from, size_t upto) {
  if (from >= f->base && upto <= f->base + f->have) return true;
  if (!f->incremental || upto > f->size || from < f->base) return false;
  uint8_t *buf = (uint8_t *)f->data;
  size_t drop = from - f->base;
  if (drop > f->have) drop = f->have;
  if (drop) {
    memmove(buf, buf + drop, f->have - drop);
    f->have -= drop;
    f->base += drop;
  }
  if (f->base < from) { /* the window was behind: start it at from */
    f->have = 0;
    f->base = from;
  }
  size_t need = upto - f->base;
  if (need > f->cap) {
    size_t cap = need > WINDOW ? need : WINDOW;
    buf = realloc(buf, cap);
    if (!buf) return false;
    f->data = buf;
    f->cap = cap;
  }
  size_t fill = f->size - f->base < f->cap ? f->size - f->base : f->cap;
  while (f->have < fill) {
    ssize_t got = bp__os_table.pread(f->fd, buf + f->have, fill - f->have, (off_t)(f->base + f->have));
    if (got <= 0) {
      f->size = f->base + f->have; /* shorter than it was */
      break;
    }
    f->have += (size_t)got;
  }
  return upto <= f->base + f->have;
}

/* Whether every byte of d[from, end) is zero (space allocated ahead of the
 * frames, never written). */
static bool all_zero(const uint8_t *d, size_t from, size_t end) {
  for (size_t i = from; i < end; i++)
    if (d[i]) return false;
  return true;
}

/* Whether every byte from off to the end of the file is zero. */
static bool tail_all_zero(bp__segfile *f, size_t off) {
  while (off < f->size) {
    size_t upto = f->incremental ? (f->size - off < WINDOW ? f->size : off + WINDOW) : f->size;
    if (!have_range(f, off, upto)) return false;
    if (!all_zero(at(f, off), 0, upto - off)) return false;
    off = upto;
  }
  return true;
}

/* Maps (or, failing that, reads) the whole file for a frame scan. A
 * read-only store reads the newest segment as the scan goes instead
 * (have_range): only that one can be the active segment of a writer in
 * another process, which shortens it when it seals it. */
static bp_status segfile_map(bp_store *s, bp__segfile *f, bool newest) {
  if (f->data || f->incremental || f->fd < 0) return BP_OK;
  if (s->readonly && newest) {
    f->incremental = true;
    return BP_OK;
  }
  void *m = bp__os_table.mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
  if (m != MAP_FAILED) {
    f->data = m;
    f->mapped = true;
    f->have = f->size;
    madvise(m, f->size, MADV_SEQUENTIAL);
    return BP_OK;
  }
  uint8_t *buf = malloc(f->size);
  if (!buf) return bp__fail(BP_ENOMEM, "out of memory reading segment %06" PRIu64, f->id);
  int rc = bp__os_read_all(f->fd, buf, f->size, 0);
  if (rc) {
    free(buf);
    return bp__fail_errno(BP_EIO, rc > 0 ? rc : EIO, "read segment %06" PRIu64, f->id);
  }
  f->data = buf;
  f->have = f->size;
  return BP_OK;
}

void bp__segfile_close(bp__segfile *f) {
  if (f->data) {
    if (f->mapped) bp__os_table.munmap((void *)f->data, f->size);
    else free((void *)f->data);
  }
  if (f->fd >= 0) bp__os_table.close(f->fd);
  memset(f, 0, sizeof *f);
  f->fd = -1;
}

void bp__forget_from(bp_store *s, uint64_t count) {
  for (uint64_t i = count; i < s->ix.count; i++) (void)bp__scan_set(&s->scan, i, 0, 0, 0, 0);
  bp__index_rollback(&s->ix, count);
}

bp_status bp__recover_entry(bp_store *s, bp__ientry *e) {
  bp_status st = bp__scan_set(&s->scan, s->ix.count, e->kind, e->clock, e->entity, e->scope);
  if (!st) st = bp__index_push(&s->ix, e);
  if (st) return st;
  bp__name *nm = bp__index_name(&s->ix, e->entity);
  if (!nm->head_known) nm->last_wall_ms = 0;
  nm->head_known = true;
  nm->next_clock = e->clock + 1;
  if (e->wall_ms > nm->last_wall_ms) nm->last_wall_ms = e->wall_ms;
  memcpy(nm->last_hash, e->event_hash, 32);
  return BP_OK;
}

/* The bytes of a segment file from offset `from` to its end, for reading a
 * footer: mapped from the page cache where the platform allows (no copy and
 * no fresh memory to fault in and zero, which cost more than reading the
 * footer), else read into a buffer. at[x] is the byte at file offset x. */
typedef struct tail_bytes {
  uint8_t *base;
  size_t len;
  bool mapped;
  const uint8_t *at;
} tail_bytes;

static bool tail_open(const bp__segfile *f, uint64_t from, tail_bytes *t) {
  uint64_t map_from = bp__os_page_floor(from);
  t->len = (size_t)(f->size - map_from);
  void *m = bp__os_table.mmap(NULL, t->len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, f->fd, (off_t)map_from);
  if (m != MAP_FAILED) {
    t->base = m;
    t->mapped = true;
    t->at = t->base - map_from;
    return true;
  }
  t->len = (size_t)(f->size - from);
  t->mapped = false;
  t->base = malloc(t->len ? t->len : 1);
  if (!t->base) return false;
  if (bp__os_read_all(f->fd, t->base, t->len, from) != 0) {
    free(t->base);
    t->base = NULL;
    return false;
  }
  t->at = t->base - from;
  return true;
}

static void tail_close(tail_bytes *t) {
  if (!t->base) return;
  if (t->mapped) bp__os_table.munmap(t->base, t->len);
  else free(t->base);
  t->base = NULL;
}

/* What became of a footer (load_sidx). SIDX_GAP: it proves events before
 * it are gone (the error is set). */
enum { SIDX_USED, SIDX_UNSEALED, SIDX_BAD, SIDX_GAP };

/* Reads the footer into entries: SIDX_USED. Otherwise (with a log line
 * saying why) SIDX_UNSEALED for a footer without a seal, SIDX_BAD for one
 * that is damaged or inconsistent with the file; nothing was added. */
static int load_sidx(bp_store *s, const bp__segfile *f) {
  size_t size = f->size;
  if (size < f->frames_start + BP__SIDX_TRAILER_SIZE) return SIDX_BAD;
  const uint8_t *t = f->trailer;
  uint64_t st_off = bp__get_le64(t);
  uint64_t count = bp__get_le32(t + 8);
  const char *why = NULL;
  bool unsealed = false;
  uint64_t entries_at = 0;
  tail_bytes footer = {0};
  const uint8_t *d = NULL;   /* d[x] is file offset x, valid for x >= st_off */
  uint32_t *ids = NULL;
  if (st_off < f->frames_start || st_off > size - BP__SIDX_TRAILER_SIZE) why = "string table offset out of range";
  else if (count * BP__SIDX_ENTRY_SIZE > size - BP__SIDX_TRAILER_SIZE - st_off) why = "entry count too large";
  if (why) goto reject;
  entries_at = size - BP__SIDX_TRAILER_SIZE - count * BP__SIDX_ENTRY_SIZE;
  /* Only the footer is read: the frames stay on disk (and out of memory). */
  if (!tail_open(f, st_off, &footer)) { why = "cannot read the footer"; goto reject; }
  d = footer.at;

  /* Nothing of a footer is believed before its seal is: names are interned
   * only once it matched. */
  uint32_t nstr = 0;
  switch (bp__sidx_seal_check(d + st_off, entries_at - st_off, d + entries_at, size - entries_at, &nstr)) {
  case 1: break;
  case 2: why = "its seal does not match: the footer is damaged"; goto reject;
  case 0:
    why = "it has no seal (written by the Rust crate, or before footers were sealed)";
    unsealed = true;
    goto reject;
  default: why = "string table is not an array of strings"; goto reject;
  }
  bp__mp_reader r;
  uint32_t all;
  bp__mp_reader_init(&r, d + st_off, entries_at - st_off);
  if (bp__mp_read_array(&r, &all) != BP_OK) { why = "string table is not a MessagePack array"; goto reject; }
  ids = malloc(sizeof *ids * (nstr ? nstr : 1));
  if (!ids) { why = "out of memory"; goto reject; }
  for (uint32_t i = 0; i < nstr; i++) {
    const char *str;
    uint32_t len;
    bp__name *nm;
    if (bp__mp_read_str(&r, &str, &len) != BP_OK) { why = "string table entry is not a string"; break; }
    if (bp__index_intern(&s->ix, str, len, &nm) != BP_OK) { why = "out of memory"; break; }
    ids[i] = nm->id;
  }

  /* Check every entry before adding any: frames must tile [frames_start, st_off)
   * exactly. The frames' own length fields are compared for the first, the
   * last and every 1024th entry: reading every frame would cost what the footer
   * is there to save (a full check is bp_verify's job; every read checks CRC). */
  uint64_t expect = f->frames_start;
  for (uint64_t i = 0; !why && i < count; i++) {
    const uint8_t *p = d + entries_at + i * BP__SIDX_ENTRY_SIZE;
    uint64_t off = bp__get_le64(p + 102);
    uint32_t len = bp__get_le32(p + 110);
    if (bp__get_le32(p + 16) >= nstr || bp__get_le32(p + 20) >= nstr) why = "string index out of range";
    else if (off != expect || len < BP__FRAME_PREFIX || off + len > st_off) why = "frame positions do not tile the segment";
    else if (i % 1024 == 0 || i + 1 == count) {
      uint8_t prefix[4];
      if (bp__os_read_all(f->fd, prefix, 4, off) != 0 || bp__get_be32(prefix) != len - BP__FRAME_PREFIX)
        why = "frame length disagrees with the frame";
    }
    expect = off + len;
  }
  if (!why && bp__index_reserve(&s->ix, count) != BP_OK) why = "out of memory";
  if (!why && expect != st_off) why = "frames do not end at the string table";
  if (why) goto reject;
  /* Events are placed by their order. A footer that numbers them from further
   * on is what a crash between a retention compaction and the rewrite of a
   * later footer leaves (retention has run: retired.keys holds its keys), and
   * is noted for rewriting. Otherwise the events it counts before its own are
   * gone: a segment before it is missing or was cut. */
  uint64_t first = s->ix.count;
  uint64_t numbered_from = count ? bp__get_le64(d + entries_at + 114) : first;
  if (numbered_from != first && !(numbered_from > first && s->retired.n > 0) && !s->cfg.salvage) {
    free(ids);
    tail_close(&footer);
    bp__fail(BP_ECORRUPT, "segment %06" PRIu64 ": its sealed footer numbers its first event %" PRIu64
             ", but the segments before it hold %" PRIu64 " events: a segment before it is missing or was cut "
             "(open with salvage to keep the rest)", f->id, numbered_from, first);
    return SIDX_GAP;
  }
  for (uint64_t i = 0; i < count; i++) {
    if (bp__get_le64(d + entries_at + i * BP__SIDX_ENTRY_SIZE + 114) == first + i) continue;
    bp__segment_note_fix(s, f->id, first, count, st_off, BP__FIX_STALE); /* out of memory: stays stale */
    break;
  }
  for (uint64_t i = 0; i < count; i++) {
    const uint8_t *p = d + entries_at + i * BP__SIDX_ENTRY_SIZE;
    if (i + 16 < count) {
      const uint8_t *ahead = p + 16 * BP__SIDX_ENTRY_SIZE;
      bp__index_prefetch_id(&s->ix, (bp_id){bp__get_le64(ahead + 8), bp__get_le64(ahead)});
    }
    bp__ientry e;
    memset(&e, 0, sizeof e);
    e.event_id = (bp_id){bp__get_le64(p + 8), bp__get_le64(p)};
    e.entity = ids[bp__get_le32(p + 16)];
    e.scope = ids[bp__get_le32(p + 20)];
    e.kind = bp__get_le16(p + 24);
    e.wall_ms = bp__get_le64(p + 26);
    e.clock = bp__get_le32(p + 34);
    memcpy(e.prev_hash, p + 38, 32);
    memcpy(e.event_hash, p + 70, 32);
    e.offset = bp__get_le64(p + 102);
    e.length = bp__get_le32(p + 110);
    e.correlation_id = (bp_id){bp__get_le64(p + 130), bp__get_le64(p + 122)};
    e.causation_id = (bp_id){bp__get_le64(p + 146), bp__get_le64(p + 138)};
    e.segment_id = (uint32_t)f->id;
    if (bp__recover_entry(s, &e) != BP_OK) {
      free(ids);
      tail_close(&footer);
      return SIDX_BAD; /* out of memory: the caller's scan will fail the same way */
    }
  }
  free(ids);
  tail_close(&footer);
  return SIDX_USED;

reject:
  free(ids);
  tail_close(&footer);
  bp__log(s, unsealed ? BP_LOG_INFO : BP_LOG_WARN, "segment %06" PRIu64 ": SIDX footer not used (%s); scanning frames",
          f->id, why);
  return unsealed ? SIDX_UNSEALED : SIDX_BAD;
}

/* The seal check of a sealed segment's footer (bp__sidx_seal_check), or -1
 * when the trailer or the footer cannot be read. */
static int footer_seal_state(const bp__segfile *f) {
  if (f->size < f->frames_start + BP__SIDX_TRAILER_SIZE) return -1;
  uint64_t st_off = bp__get_le64(f->trailer), count = bp__get_le32(f->trailer + 8);
  if (st_off < f->frames_start || st_off > f->size - BP__SIDX_TRAILER_SIZE ||
      count * BP__SIDX_ENTRY_SIZE > f->size - BP__SIDX_TRAILER_SIZE - st_off)
    return 2;
  tail_bytes t = {0};
  if (!tail_open(f, st_off, &t)) return -1;
  uint64_t entries_at = f->size - BP__SIDX_TRAILER_SIZE - count * BP__SIDX_ENTRY_SIZE;
  uint32_t names;
  int seal = bp__sidx_seal_check(t.at + st_off, entries_at - st_off, t.at + entries_at, f->size - entries_at, &names);
  tail_close(&t);
  return seal == -1 ? 2 : seal;
}

/* Fills an index entry from a decoded frame. */
void bp__entry_from_frame(bp__ientry *e, const bp__frame *fr, uint32_t entity, uint32_t scope, uint64_t seg,
                          uint64_t off, uint32_t len) {
  memset(e, 0, sizeof *e);
  e->event_id = fr->header.event_id;
  e->correlation_id = fr->header.correlation_id;
  e->causation_id = fr->header.causation_id;
  if (fr->has_chain) {
    memcpy(e->prev_hash, fr->chain.prev_hash, 32);
    memcpy(e->event_hash, fr->chain.event_hash, 32);
  } else {
    memcpy(e->event_hash, fr->header.content_hash, 32);
  }
  e->wall_ms = fr->header.position.wall_ms;
  e->clock = fr->header.position.sequence;
  e->kind = fr->header.kind;
  e->flags = fr->header.flags;
  e->entity = entity;
  e->scope = scope;
  e->segment_id = (uint32_t)seg;
  e->offset = off;
  e->length = len;
}


/* The smallest frame body there is (a frame's map with its keys and an
 * empty payload takes well over this): shorter lengths are not frames. */
#define MIN_FRAME_BODY 32u

/* Where the next valid frame (length, CRC and body all good) starts in
 * d[from, end), or SIZE_MAX: how salvage finds its way past damage. */
static size_t next_frame_at(const uint8_t *d, size_t from, size_t end) {
  for (size_t p = from; p < end && end - p >= BP__FRAME_PREFIX + MIN_FRAME_BODY; p++) {
    uint32_t len = bp__get_be32(d + p);
    if (len < MIN_FRAME_BODY || len > end - p - BP__FRAME_PREFIX) continue;
    if (bp__crc32(d + p + BP__FRAME_PREFIX, len) != bp__get_be32(d + p + 4)) continue;
    bp__frame fr;
    if (bp__frame_decode_body(d + p + BP__FRAME_PREFIX, len, NULL, &fr) == BP_OK) return p;
  }
  return SIZE_MAX;
}

/* What frame_at says of a frame whose length and CRC are both zero: space
 * a writer allocated ahead of its frames, where the data ends. */
static const char FRAME_ZEROS[] = "zeros";

/* Reads and checks the frame at off, none of it past *end (lowered to the
 * file's size should the file be found shorter as it is read): NULL, with
 * *fr decoded and *len its body's length, or what is wrong there. With
 * zeros_end, a zero length and CRC give FRAME_ZEROS instead of being read. */
static const char *frame_at(bp__segfile *f, size_t off, size_t *end, bool zeros_end, bp__frame *fr,
                            uint32_t *len) {
  if (*end - off < BP__FRAME_PREFIX || !have_range(f, off, off + BP__FRAME_PREFIX)) return "truncated frame header";
  if (*end > f->size) *end = f->size;
  uint32_t n = bp__get_be32(at(f, off)), crc = bp__get_be32(at(f, off) + 4);
  if (n == 0 && crc == 0 && zeros_end) return FRAME_ZEROS;
  if (n > *end - off - BP__FRAME_PREFIX || !have_range(f, off, off + BP__FRAME_PREFIX + n))
    return "frame runs past the end";
  const uint8_t *body = at(f, off) + BP__FRAME_PREFIX;
  if (bp__crc32(body, n) != crc) return "CRC mismatch";
  if (bp__frame_decode_body(body, n, NULL, fr) != BP_OK) return "undecodable frame";
  *len = n;
  return NULL;
}

/* Where the frames of a scanned segment that the index kept end: after the
 * last entry of segment id, else at its first frame. */
static uint64_t kept_end(const bp_store *s, const bp__segfile *f, uint64_t *first) {
  uint64_t n = s->ix.count;
  if (n == 0 || bp__index_at(&s->ix, n - 1)->segment_id != (uint32_t)f->id) {
    *first = n;
    return f->frames_start;
  }
  /* Where the segment's events begin: from the index state when it lists
   * the segment (its entries are mapped, and walking back over them would
   * touch, and check, every chunk of a segment of hundreds of thousands of
   * events), else by walking back over the entries this open just scanned. */
  uint64_t k = n;
  bool listed = false;
  for (uint32_t i = 0; i < s->ix_nsegs && !listed; i++)
    if (s->ix_segs[i].id == f->id && s->ix_segs[i].first < n) {
      /* Taken only where the entries agree (a rebuild may number otherwise). */
      k = s->ix_segs[i].first;
      listed = bp__index_at(&s->ix, k)->segment_id == (uint32_t)f->id &&
               (k == 0 || bp__index_at(&s->ix, k - 1)->segment_id != (uint32_t)f->id);
      if (!listed) k = n;
    }
  if (!listed)
    while (k > 0 && bp__index_at(&s->ix, k - 1)->segment_id == (uint32_t)f->id) k--;
  *first = k;
  const bp__ientry *last = bp__index_at(&s->ix, n - 1);
  return last->offset + last->length;
}

bp_status bp__segment_load(bp_store *s, bp__segfile *f, uint64_t from_offset, bool may_tear, bool *used_sidx) {
  *used_sidx = false;
  if (f->torn_header) {
    if (!may_tear && !s->cfg.salvage)
      return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 ": only %zu bytes, a header cut short, and later segments hold "
                      "events: a damaged segment, not a crash (open with salvage to go on without it)",
                      f->id, f->torn_header);
    bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": header incomplete (%zu bytes); treated as empty", f->id,
            f->torn_header);
    s->torn_bytes += f->torn_header;
  }
  if (f->fd < 0) {
    /* An empty file: the writer never leaves one (a segment is named only
     * once its header is durable), so only a crash inside another writer's
     * creation of the newest segment explains it. */
    if (!f->torn_header && !may_tear && !s->cfg.salvage)
      return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " is empty (0 bytes) and later segments hold events: "
                      "its events are lost (open with salvage to go on without it)", f->id);
    return BP_OK;
  }
  uint64_t count_before = s->ix.count;
  int sidx = -1; /* not read: the scan starts past the first frame */
  if (f->has_trailer && from_offset <= f->frames_start && (sidx = load_sidx(s, f)) == SIDX_USED) {
    *used_sidx = true;
    return BP_OK;
  }
  if (sidx == SIDX_GAP) return BP_ECORRUPT;
  /* A checkpoint's watermark inside a sealed segment: its footer is not
   * needed, but one of ours that a crash damaged (a seal cut short) is
   * noted, so that a read-write open writes it anew. */
  if (f->has_trailer && sidx == -1 && footer_seal_state(f) == 2) sidx = SIDX_BAD;
  if (s->ix.count != count_before) bp__index_rollback(&s->ix, count_before);
  bp_status mst = segfile_map(s, f, may_tear);
  if (mst) return mst;

  /* Where the trailer says the frames end. Not believed blindly: frames are
   * decoded for as long as they are valid, and the first place that is not
   * a frame must be that one. */
  bool claimed = false;
  size_t claimed_end = 0;
  if (f->has_trailer && f->size >= f->frames_start + BP__SIDX_TRAILER_SIZE) {
    uint64_t st_off = bp__get_le64(f->trailer);
    if (st_off >= f->frames_start && st_off <= f->size - BP__SIDX_TRAILER_SIZE) {
      claimed = true;
      claimed_end = (size_t)st_off;
    }
  }
  size_t end = f->size;
  size_t off = from_offset > f->frames_start ? from_offset : f->frames_start;
  /* A checkpoint's watermark at or past the end of the frames: nothing left. */
  bool nothing_left = claimed && off >= claimed_end;
  bool skipped = false;                /* salvage skipped damage */
  if (nothing_left) end = off;
  bp_status st = BP_OK;
  const char *damage = NULL;
  uint64_t last_closed = s->ix.count;  /* index count after the last frame outside a batch */
  size_t released = 0;                 /* pages of the mapping before this were released */
  /* Frames are decoded a batch at a time and their id-table slots prefetched
   * before the batch is indexed, so that the inserts' cache misses overlap. */
  enum { BATCH = 16 };
  bp__ientry batch[BATCH];
  bool closes[BATCH];
  while (off < end && !damage) {
    size_t got = 0;
    for (; got < BATCH && off < end; got++) {
      bp__frame fr;
      uint32_t len;
      const char *bad = frame_at(f, off, &end, !f->has_trailer, &fr, &len);
      if (bad == FRAME_ZEROS) {
        /* Space the writer allocated ahead of its frames: the data ends here,
         * provided nothing but zeros follows. */
        if (!may_tear && !tail_all_zero(f, off)) {
          damage = "zeros in the middle of the frames";
          break;
        }
        bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 ": frames end at %zu (%zu bytes allocated ahead)", f->id, off,
                f->size - off);
        end = off;
        break;
      }
      if (bad) {
        damage = bad;
        break;
      }
      bp__name *ent, *scp;
      if ((st = bp__index_intern(&s->ix, fr.entity, fr.entity_len, &ent)) ||
          (st = bp__index_intern(&s->ix, fr.scope, fr.scope_len, &scp)))
        return st;
      bp__entry_from_frame(&batch[got], &fr, ent->id, scp->id, f->id, off, len + BP__FRAME_PREFIX);
      closes[got] = !(fr.header.flags & BP_FLAG_BATCH_MEMBER);
      bp__index_prefetch_id(&s->ix, batch[got].event_id);
      off += BP__FRAME_PREFIX + (size_t)len;
    }
    for (size_t i = 0; i < got; i++) {
      if ((st = bp__recover_entry(s, &batch[i]))) return st;
      if (closes[i]) last_closed = s->ix.count;
    }
    if (damage && s->cfg.salvage) {
      /* Salvage keeps what it can: past the damage, the next valid frame
       * (the damaged one's successor when its length survived). */
      size_t limit = claimed && claimed_end > off ? claimed_end : f->size;
      size_t next = have_range(f, off, limit) ? next_frame_at(at(f, f->base), off + 1 - f->base, limit - f->base)
                                              : SIZE_MAX;
      if (next != SIZE_MAX) next += f->base;
      if (next != SIZE_MAX) {
        bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": %s at offset %zu; salvage skips %zu bytes to the frame at %zu",
                f->id, damage, off, next - off, next);
        s->torn_bytes += next - off;
        off = next;
        damage = NULL;
        skipped = true;
      }
    }
    if (f->mapped && off - released >= (8u << 20)) {
      /* Frames behind the scan are not needed again: let their pages go. */
      size_t upto = off / 4096 * 4096;
      madvise((void *)(f->data + released), upto - released, MADV_DONTNEED);
      released = upto;
    }
  }
  if (f->has_trailer) {
    /* The frames must end exactly where the footer begins. */
    if (nothing_left || (claimed && off == claimed_end && (damage || off == end))) damage = NULL;
    else if (!damage) damage = "the frames run into the SIDX footer";
  }

  if (damage && (f->has_trailer || !may_tear) && !s->cfg.salvage) {
    /* A sealed segment must be intact, and only the newest segment can have
     * been cut short by a crash: anywhere else, damage is corruption. (In
     * the newest, the index state's evidence decides: below.) */
    bp__index_rollback(&s->ix, count_before);
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " at offset %zu: %s in a %s segment "
                    "(open with salvage to keep the events before it)", f->id, off, damage,
                    f->has_trailer ? "sealed" : "crashed, not the newest,");
  }
  if (damage) {
    size_t dropped = (claimed && claimed_end >= off ? claimed_end : f->size) - off;
    s->torn_bytes += dropped;
    bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": %s at offset %zu; %zu bytes dropped", f->id, damage,
            off, dropped);
  }
  if (!f->has_trailer && last_closed < s->ix.count) {
    /* A batch the crash cut short: its frames have no closing frame. */
    uint64_t n = s->ix.count - last_closed;
    s->batch_frames_dropped += n;
    bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": %" PRIu64 " frames of an interrupted batch dropped",
            f->id, n);
    bp__index_rollback(&s->ix, last_closed);
    /* Chain heads were advanced by the dropped frames: each is learnt
     * again from its entity's stream, which the rollback cut, when used. */
    for (uint32_t i = 0; i < bp__index_name_count(&s->ix); i++) bp__index_name(&s->ix, i)->head_known = false;
  }
  if (!f->has_trailer && f->id == s->tail_evidence.segment && !s->cfg.salvage) {
    /* The index state saw durable frames up to tail_evidence.upto here: a
     * scan that keeps less found damage (a flipped byte, zeros written over
     * frames, a cut), which no crash explains. */
    uint64_t first, kept = kept_end(s, f, &first);
    if (kept < s->tail_evidence.upto) {
      bp__index_rollback(&s->ix, count_before);
      return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 ": its frames end at offset %" PRIu64 " (%s), yet the "
                      "index state (intact) lists frames up to offset %" PRIu64 ": damage, not a crash (open with "
                      "salvage to keep the events before it)", f->id, kept,
                      damage ? damage : "an interrupted batch or zeros", s->tail_evidence.upto);
    }
  }
  /* A read-write open seals what it had to scan: a crashed segment (cut to
   * its last kept frame), and a damaged footer of ours. A footer without a
   * seal (the crate's) is correct as far as anyone knows, and left alone. */
  bool crashed = !f->has_trailer && f->size > f->frames_start && !skipped && (!damage || may_tear);
  if (crashed || (f->has_trailer && sidx == SIDX_BAD && !damage && !skipped)) {
    uint64_t first;
    uint64_t frames_end = kept_end(s, f, &first);
    if (!bp__segment_note_fix(s, f->id, first, s->ix.count - first, frames_end,
                              crashed ? BP__FIX_CRASHED : BP__FIX_DAMAGED))
      return bp__fail(BP_ENOMEM, "out of memory noting segment %06" PRIu64 " to finish", f->id);
  }
  return BP_OK;
}

/* --------------------------------------------------- following a writer */

/* Makes segment id, whose frames this handle has indexed up to end, readable
 * there: registered (a segment the writer made after the open), mapped
 * with room to grow as the writer's own mapping is, and readable to end.
 * Without a mapping, reads use pread. */
static bp_status follow_register(bp_store *s, uint64_t id, int fd, uint64_t end) {
  pthread_mutex_lock(&s->seg_lock);
  bp__segment *g = find_locked(s, id);
  bool known = g != NULL, mapped = g && g->map;
  if (g && g->size < end) g->size = end;
  pthread_mutex_unlock(&s->seg_lock);
  if (!known) {
    /* "Sealed" here only says that this handle never writes it: a read maps
     * it lazily at the size known then, and reads past that use pread. */
    bp_status st = bp__segment_add(s, id, true, end);
    if (st) return st;
  }
  if (!mapped && fd >= 0) {
    uint64_t reserve = s->cfg.segment_max_bytes > end ? s->cfg.segment_max_bytes : end;
    bp__segment_map_active(s, id, fd, reserve + BP__MAP_SLACK);
  }
  bp__segment_readable(s, id, end);
  return BP_OK;
}

bp_status bp__segment_follow(bp_store *s, uint64_t id, uint64_t from, uint64_t upto, int64_t expect_created,
                             uint64_t *end, int64_t *created_ns) {
  bp__segfile f;
  bp_status st = bp__segfile_open(s, id, &f);
  if (st) return st;
  *end = from;
  *created_ns = f.created_ns;
  if (expect_created && f.fd >= 0 && f.created_ns != expect_created) {
    /* A compaction put another file under this name: the offsets this
     * handle has mean nothing in it. */
    bp__segfile_close(&f);
    return bp__fail(BP__ESTALE, "segment %06" PRIu64 " was replaced (compacted) since this handle read it", id);
  }
  bool exact = upto != UINT64_MAX;
  if (f.fd < 0) {
    /* Empty, or a header cut short: a writer that died creating it. */
    bp__segfile_close(&f);
    if (exact && upto > 0)
      return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " is empty, yet the writer's head says its frames reach "
                      "offset %" PRIu64, id, upto);
    return BP_OK;
  }
  size_t limit = f.size;
  bool sealed = false;
  if (exact) {
    if (upto > f.size) {
      bp__segfile_close(&f);
      return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " is %zu bytes, yet the writer's head says its frames "
                      "reach offset %" PRIu64, id, f.size, upto);
    }
    limit = (size_t)upto;
  } else if (f.has_trailer && f.size >= f.frames_start + BP__SIDX_TRAILER_SIZE) {
    uint64_t st_off = bp__get_le64(f.trailer);
    if (st_off >= f.frames_start && st_off <= f.size - BP__SIDX_TRAILER_SIZE) {
      limit = (size_t)st_off;
      sealed = true;
    }
  }
  /* Read as the scan goes, never past limit: the writer may be growing the
   * file, or shortening the space it allocated ahead. */
  f.incremental = true;
  f.size = limit;
  size_t off = from > f.frames_start ? (size_t)from : f.frames_start;
  uint64_t count0 = s->ix.count, last_closed = count0;
  size_t closed_end = off;
  const char *damage = NULL;
  while (off < limit && !damage) {
    bp__frame fr;
    uint32_t len;
    size_t upto_here = limit; /* the limit stays what the head or the footer said, for the message */
    if ((damage = frame_at(&f, off, &upto_here, true, &fr, &len))) break;
    bp__name *ent, *scp;
    bp__ientry e;
    if ((st = bp__index_intern(&s->ix, fr.entity, fr.entity_len, &ent)) ||
        (st = bp__index_intern(&s->ix, fr.scope, fr.scope_len, &scp)))
      break;
    bp__entry_from_frame(&e, &fr, ent->id, scp->id, id, off, len + BP__FRAME_PREFIX);
    if ((st = bp__recover_entry(s, &e))) break;
    off += BP__FRAME_PREFIX + (size_t)len;
    if (!(fr.header.flags & BP_FLAG_BATCH_MEMBER)) {
      last_closed = s->ix.count;
      closed_end = off;
    }
  }
  if (!st && damage && (exact || sealed))
    /* Before the head the writer published whole frames, and a sealed
     * segment's frames reach its footer: anything else is damage. */
    st = bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " at offset %zu: %s before %s at offset %zu", id, off, damage,
                  exact ? "the writer's published head" : "its SIDX footer", limit);
  if (!st && exact && last_closed < s->ix.count)
    st = bp__fail(BP_ECORRUPT, "segment %06" PRIu64 ": the writer's head at offset %zu falls inside a batch", id,
                  limit);
  if (st) {
    bp__forget_from(s, count0);
    bp__segfile_close(&f);
    return st;
  }
  /* A segment the writer left (a restart, or its crash) ends at its last
   * whole frame outside a batch, as the next writer's open will find it. */
  if (last_closed < s->ix.count) bp__forget_from(s, last_closed);
  if (s->ix.count > count0 || !exact) st = follow_register(s, id, f.fd, closed_end);
  bp__segfile_close(&f);
  if (st) {
    bp__forget_from(s, count0);
    return st;
  }
  *end = closed_end;
  return BP_OK;
}
