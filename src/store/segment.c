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

void bp__segment_renumber_footers(bp_store *s) {
  for (size_t i = 0; i < s->nstale_footers; i++) {
    const struct bp__stale_footer *sf = &s->stale_footers[i];
    char path[4096];
    bp__segment_path(s, sf->id, path, sizeof path);
    uint64_t want = 0, len = 0;
    int rc = bp__sidx_length(&s->ix, sf->first, sf->first + sf->count, &want);
    int fd = rc ? -1 : bp__os_table.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    struct stat st;
    if (!rc && fd < 0) rc = errno ? errno : EIO;
    if (!rc && bp__os_table.fstat(fd, &st) != 0) rc = errno ? errno : EIO;
    /* Same events, same names: the footer keeps its length. */
    if (!rc && (uint64_t)st.st_size != sf->frames_end + want) rc = EINVAL;
    if (!rc) rc = bp__sidx_write(&s->ix, sf->first, sf->first + sf->count, sf->frames_end, fd, &len);
    if (!rc) rc = bp__os_sync(fd, 0);
    if (fd >= 0) bp__os_table.close(fd);
    if (rc) bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": SIDX footer not renumbered: %s", sf->id, strerror(rc));
    else bp__log(s, BP_LOG_INFO, "segment %06" PRIu64 ": SIDX footer renumbered", sf->id);
  }
  free(s->stale_footers);
  s->stale_footers = NULL;
  s->nstale_footers = 0;
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
  bp__mp_put_array(b, used);
  for (uint32_t i = 0; i < used; i++) {
    const bp__name *nm = bp__index_name(ix, order[i]);
    bp__mp_put_str(b, nm->str, nm->len);
  }
  free(order);
  return local;
}

/* The footer of entries [first, end) into b; with fd >= 0, b's bytes go to fd
 * at *at whenever they make a piece (the last piece stays in b). Returns 0,
 * ENOMEM, or an errno value of a write. */
static int sidx_emit(const bp__index *ix, uint64_t first, uint64_t end, uint64_t frames_end, bp__buf *b, int fd,
                     uint64_t *at) {
  uint32_t *local = sidx_names(ix, first, end, b);
  if (!local) return ENOMEM;
  uint64_t count = end - first;
  uint64_t per_piece = fd >= 0 ? SIDX_PIECE / BP__SIDX_ENTRY_SIZE : count;
  int rc = 0;
  for (uint64_t seq = first; seq < end && !rc && !b->oom;) {
    uint64_t k = end - seq < per_piece ? end - seq : per_piece;
    if (!bp__buf_reserve(b, k * BP__SIDX_ENTRY_SIZE + BP__SIDX_TRAILER_SIZE)) break;
    for (uint64_t stop = seq + k; seq < stop; seq++) {
      const bp__ientry *e = bp__index_at(ix, seq);
      uint8_t *p = b->data + b->len;
      bp__put_le64(p, e->event_id.lo);
      bp__put_le64(p + 8, e->event_id.hi);
      bp__put_le32(p + 16, local[e->entity]);
      bp__put_le32(p + 20, local[e->scope]);
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
      b->len += BP__SIDX_ENTRY_SIZE;
    }
    if (fd >= 0 && seq < end) rc = bp__os_write_buf(fd, b, at);
  }
  if (!rc && !b->oom && bp__buf_reserve(b, BP__SIDX_TRAILER_SIZE)) {
    uint8_t *t = b->data + b->len;
    bp__put_le64(t, frames_end);
    bp__put_le32(t + 8, (uint32_t)count);
    memcpy(t + 12, "SIDX", 4);
    b->len += BP__SIDX_TRAILER_SIZE;
  }
  free(local);
  return rc ? rc : b->oom ? ENOMEM : 0;
}

int bp__sidx_length(const bp__index *ix, uint64_t first, uint64_t end, uint64_t *len) {
  bp__buf b;
  bp__buf_init(&b);
  uint32_t *local = sidx_names(ix, first, end, &b);
  int rc = local && !b.oom ? 0 : ENOMEM;
  *len = b.len + (end - first) * BP__SIDX_ENTRY_SIZE + BP__SIDX_TRAILER_SIZE;
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
  size_t size = (size_t)st.st_size;
  if (size == 0) {
    bp__os_table.close(fd);
    return BP_OK;
  }
  f->fd = fd;
  f->size = size;
  if (size >= BP__SIDX_TRAILER_SIZE &&
      bp__os_read_all(fd, f->trailer, BP__SIDX_TRAILER_SIZE, size - BP__SIDX_TRAILER_SIZE) == 0)
    f->has_trailer = memcmp(f->trailer + 12, "SIDX", 4) == 0;

  /* The header: magic, length, and the map (read with pread, a page at most). */
  uint8_t head[4096];
  size_t have = size < sizeof head ? size : sizeof head;
  int rc = bp__os_read_all(fd, head, have, 0);
  if (rc) {
    bp__segfile_close(f);
    return bp__fail_errno(BP_EIO, rc > 0 ? rc : EIO, "read %s", path);
  }
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
  return BP_OK;

bad:
  bp__segfile_close(f);
  return bp__fail_within(BP_ECORRUPT, "segment %06" PRIu64, id);
}

/* Maps (or, failing that, reads) the whole file for a frame scan. */
static bp_status segfile_map(bp_store *s, bp__segfile *f) {
  (void)s;
  if (f->data || f->fd < 0) return BP_OK;
  void *m = bp__os_table.mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
  if (m != MAP_FAILED) {
    f->data = m;
    f->mapped = true;
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

bp_status bp__recover_entry(bp_store *s, bp__ientry *e) {
  bp_status st = bp__scan_set(&s->scan, s->ix.count, e->kind, e->clock, e->entity, e->scope);
  if (!st) st = bp__index_push(&s->ix, e);
  if (st) return st;
  bp__name *nm = bp__index_name(&s->ix, e->entity);
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

/* Reads the footer into entries; false (with a log line saying why) when it
 * is inconsistent with the file. */
static bool load_sidx(bp_store *s, const bp__segfile *f) {
  size_t size = f->size;
  if (size < f->frames_start + BP__SIDX_TRAILER_SIZE) return false;
  const uint8_t *t = f->trailer;
  uint64_t st_off = bp__get_le64(t);
  uint64_t count = bp__get_le32(t + 8);
  const char *why = NULL;
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

  bp__mp_reader r;
  bp__mp_reader_init(&r, d + st_off, entries_at - st_off);
  uint32_t nstr;
  if (bp__mp_read_array(&r, &nstr) != BP_OK || nstr > bp__mp_remaining(&r)) {
    why = "string table is not a MessagePack array";
    goto reject;
  }
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
  if (!why && bp__mp_remaining(&r) != 0) why = "string table does not end where the entries begin";

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
  /* Events are placed by their order; a footer that numbers them otherwise is
   * noted for rewriting. */
  uint64_t first = s->ix.count;
  for (uint64_t i = 0; i < count; i++) {
    if (bp__get_le64(d + entries_at + i * BP__SIDX_ENTRY_SIZE + 114) == first + i) continue;
    struct bp__stale_footer *v = realloc(s->stale_footers, (s->nstale_footers + 1) * sizeof *v);
    if (v) {
      s->stale_footers = v;
      v[s->nstale_footers++] = (struct bp__stale_footer){f->id, first, count, st_off};
    }
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
      return false; /* out of memory: the caller's scan will fail the same way */
    }
  }
  free(ids);
  tail_close(&footer);
  return true;

reject:
  free(ids);
  tail_close(&footer);
  bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": SIDX footer ignored (%s); scanning frames", f->id, why);
  return false;
}

/* Fills an index entry from a decoded frame. */
static void entry_from_frame(bp__ientry *e, const bp__frame *fr, uint32_t entity, uint32_t scope,
                             uint64_t seg, uint64_t off, uint32_t len) {
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

bp_status bp__segment_load(bp_store *s, bp__segfile *f, uint64_t from_offset, bool *used_sidx) {
  *used_sidx = false;
  if (f->torn_header) {
    bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 ": header incomplete (%zu bytes); treated as empty", f->id,
            f->torn_header);
    s->torn_bytes += f->torn_header;
  }
  if (f->fd < 0) return BP_OK;
  uint64_t count_before = s->ix.count;
  if (f->has_trailer && from_offset <= f->frames_start && load_sidx(s, f)) {
    *used_sidx = true;
    return BP_OK;
  }
  if (s->ix.count != count_before) bp__index_rollback(&s->ix, count_before);
  bp_status mst = segfile_map(s, f);
  if (mst) return mst;

  /* Where the frames end, if the (ignored) footer still says so plausibly. */
  size_t end = f->size, known_end = 0;
  if (f->has_trailer && f->size >= f->frames_start + BP__SIDX_TRAILER_SIZE) {
    uint64_t st_off = bp__get_le64(f->trailer);
    if (st_off >= f->frames_start && st_off <= f->size - BP__SIDX_TRAILER_SIZE) known_end = end = st_off;
  }
  size_t off = from_offset > f->frames_start ? from_offset : f->frames_start;
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
      if (end - off < BP__FRAME_PREFIX) { damage = "truncated frame header"; break; }
      uint32_t len = bp__get_be32(f->data + off);
      uint32_t crc = bp__get_be32(f->data + off + 4);
      if (len == 0 && crc == 0 && !f->has_trailer) {
        /* Space the writer allocated ahead of its frames: the data ends here. */
        bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 ": frames end at %zu (%zu bytes allocated ahead)", f->id, off,
                f->size - off);
        end = off;
        break;
      }
      if (len > end - off - BP__FRAME_PREFIX) { damage = "frame runs past the end"; break; }
      const uint8_t *body = f->data + off + BP__FRAME_PREFIX;
      if (bp__crc32(body, len) != crc) { damage = "CRC mismatch"; break; }
      bp__frame fr;
      if (bp__frame_decode_body(body, len, NULL, &fr) != BP_OK) { damage = "undecodable frame"; break; }
      bp__name *ent, *scp;
      if ((st = bp__index_intern(&s->ix, fr.entity, fr.entity_len, &ent)) ||
          (st = bp__index_intern(&s->ix, fr.scope, fr.scope_len, &scp)))
        return st;
      entry_from_frame(&batch[got], &fr, ent->id, scp->id, f->id, off, len + BP__FRAME_PREFIX);
      closes[got] = !(fr.header.flags & BP_FLAG_BATCH_MEMBER);
      bp__index_prefetch_id(&s->ix, batch[got].event_id);
      off += BP__FRAME_PREFIX + (size_t)len;
    }
    for (size_t i = 0; i < got; i++) {
      if ((st = bp__recover_entry(s, &batch[i]))) return st;
      if (closes[i]) last_closed = s->ix.count;
    }
    if (f->mapped && off - released >= (8u << 20)) {
      /* Frames behind the scan are not needed again: let their pages go. */
      size_t upto = off / 4096 * 4096;
      madvise((void *)(f->data + released), upto - released, MADV_DONTNEED);
      released = upto;
    }
  }

  if (damage && f->has_trailer && !s->cfg.salvage) {
    /* A sealed segment must be intact. */
    bp__index_rollback(&s->ix, count_before);
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " at offset %zu: %s in a sealed segment "
                    "(open with salvage to keep the events before it)", f->id, off, damage);
  }
  if (damage) {
    size_t dropped = (known_end ? known_end : f->size) - off;
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
    /* Chain heads were advanced by the dropped frames: rebuild them. */
    for (uint32_t i = 0; i < bp__index_name_count(&s->ix); i++) bp__index_name(&s->ix, i)->next_clock = 0;
    for (uint64_t seq = 0; seq < s->ix.count; seq++) {
      const bp__ientry *e = bp__index_at(&s->ix, seq);
      bp__name *nm = bp__index_name(&s->ix, e->entity);
      nm->next_clock = e->clock + 1;
      if (e->wall_ms > nm->last_wall_ms) nm->last_wall_ms = e->wall_ms;
      memcpy(nm->last_hash, e->event_hash, 32);
    }
  }
  return BP_OK;
}
