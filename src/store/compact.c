/*
 * compact.c - compaction: the sealed segments merged into one.
 *
 * The result on disk is the Rust crate's: every segment below the active one
 * is rewritten into one segment that takes the lowest of their ids; the others
 * are deleted. Merge copies every frame as it is; retention copies the frames
 * keep() accepts and leaves the rest out; tombstone copies the accepted frames
 * and re-encodes the rejected ones with kind TOMBSTONE (0x0FFE), everything
 * else (hashes included) unchanged. The new segment is sealed with a SIDX
 * footer, the index is rebuilt around it and a checkpoint is written.
 *
 * The active segment is never touched, so appends continue while the new
 * segment is written. A segment the writer seals meanwhile keeps its place;
 * when retention renumbered events, its SIDX footer is rewritten in place
 * with the new global sequences (same length). They stop only for the commit, which adds the events
 * appended meanwhile to the new index and swaps it in.
 *
 * Steps, and what a crash after each leaves (open repairs it):
 *
 *   1. write NNNNNN.fbat.compact (NNNNNN = the lowest id), fsync
 *                                  -> a stray temporary file: deleted
 *   2. write compact.intent (the ids to delete), fsync, directory fsync
 *                                  -> the commit point: the compaction is
 *                                     finished at open (steps 3-5)
 *   3. delete index.ckpt (it describes the old segments)
 *   4. rename the temporary file over NNNNNN.fbat, directory fsync
 *   5. delete the other segments, directory fsync, delete compact.intent
 *
 * compact.intent (integers little-endian):
 *   "BPCI" | crc32 u32 of the rest | lowest id u64 | count u64 | count ids u64
 * An intent that fails its CRC was being written when the crash came: the
 * compaction is undone (temporary file and intent deleted).
 *
 * Readers hold the store's view lock while they use the index; the commit
 * holds it exclusively, so nobody sees the old index and the new segments, or
 * the reverse. Names survive the swap (their strings move to the new index),
 * so strings handed to callers stay valid until bp_close. Retention moves the
 * global sequences of later events down: cursors translate their positions
 * through the list of dropped sequences kept for each compaction.
 */
#include "store/cursor_file.h"
#include "store/store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define INTENT_MAGIC "BPCI"
#define INTENT_HEAD 24u           /* magic, crc, lowest id, count */
#define INTENT_MAX_IDS (1u << 20)
#define FLUSH_AT (4u << 20)       /* bytes buffered before a write */

static void intent_path(const bp_store *s, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", s->dir, BP__COMPACT_INTENT);
}

static void temp_path(const bp_store *s, uint64_t id, char *buf, size_t size) {
  snprintf(buf, size, "%s/%06" PRIu64 ".fbat%s", s->dir, id, BP__COMPACT_SUFFIX);
}

/* ---------------------------------------------------------------- intent */

static int write_intent(const bp_store *s, uint64_t first, const uint64_t *ids, size_t n) {
  size_t len = INTENT_HEAD + 8 * n;
  uint8_t *b = malloc(len);
  if (!b) return ENOMEM;
  memcpy(b, INTENT_MAGIC, 4);
  bp__put_le64(b + 8, first);
  bp__put_le64(b + 16, n);
  for (size_t i = 0; i < n; i++) bp__put_le64(b + INTENT_HEAD + 8 * i, ids[i]);
  bp__put_le32(b + 4, bp__crc32(b + 8, len - 8));
  char path[4200];
  intent_path(s, path, sizeof path);
  int rc = 0;
  int fd = bp__os_table.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) rc = errno ? errno : EIO;
  if (!rc) {
    struct iovec iov = {b, len};
    rc = bp__os_write_all(fd, &iov, 1, 0);
    if (!rc) rc = bp__os_sync(fd, 0);
    bp__os_table.close(fd);
    if (!rc) rc = bp__os_sync_dir(s->dir);
  }
  free(b);
  return rc;
}

/* Reads compact.intent. Returns 0 (ids filled, malloc'd), ENOENT (none), EBADMSG
 * (damaged: it was being written) or another errno. */
static int read_intent(const bp_store *s, uint64_t *first, uint64_t **ids, size_t *n) {
  char path[4200];
  intent_path(s, path, sizeof path);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return errno ? errno : EIO;
  struct stat st;
  int rc = bp__os_table.fstat(fd, &st) != 0 ? (errno ? errno : EIO) : 0;
  uint8_t *b = NULL;
  size_t len = rc ? 0 : (size_t)st.st_size;
  if (!rc && (len < INTENT_HEAD || len > INTENT_HEAD + 8u * INTENT_MAX_IDS || (len - INTENT_HEAD) % 8))
    rc = EBADMSG;
  if (!rc && !(b = malloc(len))) rc = ENOMEM;
  if (!rc && (rc = bp__os_read_all(fd, b, len, 0)) == -1) rc = EBADMSG;
  bp__os_table.close(fd);
  if (!rc && (memcmp(b, INTENT_MAGIC, 4) != 0 || bp__crc32(b + 8, len - 8) != bp__get_le32(b + 4) ||
              bp__get_le64(b + 16) != (len - INTENT_HEAD) / 8))
    rc = EBADMSG;
  if (!rc) {
    *first = bp__get_le64(b + 8);
    *n = (len - INTENT_HEAD) / 8;
    *ids = malloc(sizeof **ids * (*n ? *n : 1));
    if (!*ids) rc = ENOMEM;
    for (size_t i = 0; !rc && i < *n; i++) (*ids)[i] = bp__get_le64(b + INTENT_HEAD + 8 * i);
  }
  free(b);
  return rc;
}

static bool file_exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static int unlink_missing_ok(const char *path) {
  return bp__os_table.unlink(path) == 0 || errno == ENOENT ? 0 : (errno ? errno : EIO);
}

/* Deletes temporary files of compactions that never reached their commit point. */
static int delete_stray_temps(const bp_store *s) {
  DIR *d = opendir(s->dir);
  if (!d) return errno ? errno : EIO;
  int rc = 0;
  struct dirent *e;
  while (!rc && (e = readdir(d))) {
    if (bp__has_suffix(e->d_name, ".fbat" BP__COMPACT_SUFFIX)) {
      char path[4200];
      snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
      rc = unlink_missing_ok(path);
    }
  }
  closedir(d);
  return rc;
}

/* Steps 3-5 for a committed compaction. Returns 0 or an errno. */
static int roll_forward(const bp_store *s, uint64_t first, const uint64_t *ids, size_t n) {
  char path[4200], tmp[4200];
  snprintf(path, sizeof path, "%s/%s", s->dir, BP__CHECKPOINT_FILE);
  int rc = unlink_missing_ok(path);
  temp_path(s, first, tmp, sizeof tmp);
  bp__segment_path(s, first, path, sizeof path);
  if (!rc && file_exists(tmp) && bp__os_table.rename(tmp, path) != 0) rc = errno ? errno : EIO;
  if (!rc) rc = bp__os_sync_dir(s->dir);
  for (size_t i = 0; i < n && !rc; i++) {
    bp__segment_path(s, ids[i], path, sizeof path);
    rc = unlink_missing_ok(path);
  }
  if (!rc) rc = bp__os_sync_dir(s->dir);
  intent_path(s, path, sizeof path);
  if (!rc) rc = unlink_missing_ok(path);
  if (!rc) rc = bp__os_sync_dir(s->dir);
  return rc;
}

bp_status bp__compact_recover(bp_store *s, uint64_t **hidden, size_t *nhidden, bool *skip_checkpoint) {
  *hidden = NULL;
  *nhidden = 0;
  *skip_checkpoint = false;
  uint64_t first = 0, *ids = NULL;
  size_t n = 0;
  int rc = read_intent(s, &first, &ids, &n);
  char path[4200];
  if (rc == ENOENT) {
    /* Nothing committed: a temporary file is what a compaction left before
     * its commit point. */
    if (s->readonly || !(rc = delete_stray_temps(s))) return BP_OK;
    return bp__fail_errno(BP_EIO, rc, "delete the temporary files of a compaction in %s", s->dir);
  }
  if (rc == EBADMSG) {
    /* Written only in part: the compaction never committed. Undo it. */
    if (s->readonly) return BP_OK;
    bp__log(s, BP_LOG_WARN, "%s: an interrupted compaction is undone", s->dir);
    intent_path(s, path, sizeof path);
    if (!(rc = delete_stray_temps(s)) && !(rc = unlink_missing_ok(path))) rc = bp__os_sync_dir(s->dir);
    return rc ? bp__fail_errno(BP_EIO, rc, "undo the interrupted compaction in %s", s->dir) : BP_OK;
  }
  if (rc) return bp__fail_errno(BP_EIO, rc, "read the compaction intent %s/%s", s->dir, BP__COMPACT_INTENT);

  bp_status st = BP_OK;
  char tmp[4200];
  temp_path(s, first, tmp, sizeof tmp);
  if (s->readonly) {
    /* Leave the files alone. Until the rename, the old segments are all
     * there; after it, the listed ones are already merged into `first`. */
    if (!file_exists(tmp)) {
      *hidden = ids;
      *nhidden = n;
      *skip_checkpoint = true;
      ids = NULL;
    }
  } else {
    bp__log(s, BP_LOG_WARN, "%s: finishing an interrupted compaction into segment %06" PRIu64, s->dir, first);
    if ((rc = roll_forward(s, first, ids, n)))
      st = bp__fail_errno(BP_EIO, rc, "finish the interrupted compaction in %s", s->dir);
    if (!rc && (rc = delete_stray_temps(s)))
      st = bp__fail_errno(BP_EIO, rc, "delete the temporary files of a compaction in %s", s->dir);
  }
  free(ids);
  return st;
}

/* ---------------------------------------------------------- compaction */

typedef struct compaction {
  bp_store *s;
  const bp_compaction_config *cfg;
  uint64_t *ids;            /* the segments merged, increasing; ids[0] is kept */
  size_t n;
  uint64_t old_bytes;
  uint64_t highest;         /* the segment left alone (and everything above) */
  uint64_t end;             /* global sequences below end live in ids[] */
  bp__index ix;             /* the new index */
  bp__scan scan;
  bool ix_ready, scan_ready;
  uint32_t names;           /* names of the store's index copied so far */
  uint32_t *dropped;        /* old global sequences retention left out */
  size_t ndropped, dropcap;
  bool rewritten;           /* some event was tombstoned */
  int64_t created_ns;       /* the new segment's header: the log's next epoch */
  bp__retired_keys retired; /* the retired keys with the ones this compaction drops */
  bool retired_ready;
  int fd;
  char tmp[4200];
  uint64_t size;            /* bytes written to the temporary file */
  bp__buf out;
} compaction;

static bp_status flush(compaction *c) {
  if (c->out.oom) return bp__fail(BP_ENOMEM, "compaction: out of memory");
  if (c->out.len == 0) return BP_OK;
  struct iovec iov = {c->out.data, c->out.len};
  int rc = bp__os_write_all(c->fd, &iov, 1, c->size);
  if (rc) return bp__fail_errno(BP_EIO, rc, "compaction: write %s", c->tmp);
  c->size += c->out.len;
  c->out.len = 0;
  return BP_OK;
}

/* Interns the store's names from c->names on, so that name ids agree. */
static bp_status copy_names(compaction *c) {
  bp__index *from = &c->s->ix;
  uint32_t count = bp__index_name_count(from);
  for (; c->names < count; c->names++) {
    const bp__name *nm = bp__index_name(from, c->names);
    bp__name *out;
    bp_status st = bp__index_intern(&c->ix, nm->str, nm->len, &out);
    if (st) return st;
    if (out->id != nm->id) return bp__fail(BP_ECORRUPT, "compaction: name %s changed its id", nm->str);
  }
  return BP_OK;
}

static bp_status push_entry(compaction *c, const bp__ientry *e) {
  bp_status st = bp__scan_set(&c->scan, c->ix.count, e->kind, e->clock, e->entity, e->scope);
  return st ? st : bp__index_push(&c->ix, e);
}

static bp_status note_dropped(compaction *c, uint64_t seq) {
  if (c->ndropped == c->dropcap) {
    size_t cap = c->dropcap ? c->dropcap * 2 : 1024;
    uint32_t *d = realloc(c->dropped, cap * sizeof *d);
    if (!d) return bp__fail(BP_ENOMEM, "compaction: out of memory");
    c->dropped = d;
    c->dropcap = cap;
  }
  c->dropped[c->ndropped++] = (uint32_t)seq;
  return BP_OK;
}

/* Copies (or rewrites, or leaves out) one event of the merged segments. */
static bp_status copy_event(compaction *c, uint64_t seq, bp__evread *rd) {
  bool merge = c->cfg->strategy == BP_COMPACT_MERGE;
  /* Merge needs the frame only; the others decode it for keep(). */
  bp_status st = merge ? bp__read_frame(c->s, seq, rd) : bp__read_event(c->s, seq, rd);
  if (st) return st;
  bool keep = merge || c->cfg->keep(&rd->ev, c->cfg->ctx);
  if (!keep && c->cfg->strategy == BP_COMPACT_RETENTION) return note_dropped(c, seq);
  bp__ientry e = *bp__index_at(&c->s->ix, seq);
  e.segment_id = (uint32_t)c->ids[0];
  e.offset = c->size + c->out.len;
  if (keep) {
    bp__buf_append(&c->out, rd->raw, e.length);
  } else {
    bp__frame f = {.header = rd->ev.header,
                   .entity = rd->ev.entity,
                   .entity_len = strlen(rd->ev.entity),
                   .scope = rd->ev.scope,
                   .scope_len = strlen(rd->ev.scope),
                   .payload = rd->ev.payload,
                   .payload_len = rd->ev.payload_len,
                   .has_chain = rd->ev.has_hash_chain,
                   .chain = rd->ev.hash_chain};
    f.header.kind = BP_KIND_TOMBSTONE;
    size_t before = c->out.len;
    if ((st = bp__frame_encode(&c->out, &f))) return st;
    e.kind = BP_KIND_TOMBSTONE;
    e.length = (uint32_t)(c->out.len - before);
    c->rewritten = true;
  }
  st = push_entry(c, &e);
  if (!st && c->out.len >= FLUSH_AT) st = flush(c);
  return st;
}

/* Step 1: the new segment, in the temporary file, and its part of the index. */
static bp_status write_segment(compaction *c) {
  bp_store *s = c->s;
  temp_path(s, c->ids[0], c->tmp, sizeof c->tmp);
  bp__os_table.unlink(c->tmp);
  c->fd = bp__os_table.open(c->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (c->fd < 0) return bp__fail_errno(BP_EIO, errno, "compaction: create %s", c->tmp);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  bp__segment_header h = {BP__SEGMENT_VERSION, 0, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec, c->ids[0]};
  c->created_ns = h.created_ns;
  bp__segment_header_encode(&c->out, &h);

  uint64_t visible = bp__index_visible(&s->ix);
  bp_status st = bp__index_reserve(&c->ix, visible);
  if (!st) st = copy_names(c);
  bp__evread rd;
  bp__evread_init(&rd);
  uint64_t seq = 0;
  uint32_t reading = 0; /* the segment the last event came from */
  for (; seq < visible && !st; seq++) {
    uint32_t from = bp__index_at(&s->ix, seq)->segment_id;
    if (from >= c->highest) break;
    /* Events come segment after segment: the pages of one that has been
     * copied are not needed again (a million events are 468 MB of them). */
    if (from != reading && reading) bp__segment_release(s, reading);
    reading = from;
    st = copy_event(c, seq, &rd);
  }
  if (reading) bp__segment_release(s, reading);
  bp__evread_free(&rd);
  c->end = seq;
  if (!st) st = copy_names(c);
  if (!st) st = flush(c);
  if (!st) {
    /* The footer goes to the file in pieces (a million events make 154 MB). */
    uint64_t len = 0;
    int rc = bp__sidx_write(&c->ix, 0, c->ix.count, c->size, c->fd, &len);
    if (rc == ENOMEM) st = bp__fail(BP_ENOMEM, "compaction: out of memory for the SIDX footer");
    else if (rc) st = bp__fail_errno(BP_EIO, rc, "compaction: write %s", c->tmp);
    c->size += len;
  }
  if (!st) {
    int rc = bp__os_sync(c->fd, 0);
    if (rc) st = bp__fail_errno(BP_EIO, rc, "compaction: fsync %s", c->tmp);
  }
  return st;
}

/* Adds the events appended since write_segment to the new index (wlock held). */
static bp_status add_tail(compaction *c) {
  bp__index *from = &c->s->ix;
  bp_status st = copy_names(c);
  for (uint64_t seq = c->end; seq < from->count && !st; seq++) st = push_entry(c, bp__index_at(from, seq));
  if (st) return st;
  /* The writer's per-entity state carries over as it is. */
  for (uint32_t i = 1; i < c->names; i++) {
    bp__name *a = bp__index_name(from, i);
    bp__name *b = bp__index_name(&c->ix, i);
    bp__index_entity_head(from, a);
    b->head_known = a->head_known;
    b->next_clock = a->next_clock;
    b->last_wall_ms = a->last_wall_ms;
    memcpy(b->last_hash, a->last_hash, 32);
  }
  bp__index_publish(&c->ix);
  return BP_OK;
}

/* Replaces the merged segments in the segment table by the new one. */
static void swap_segments(compaction *c) {
  bp_store *s = c->s;
  pthread_mutex_lock(&s->seg_lock);
  size_t w = 0;
  for (size_t i = 0; i < s->nsegs; i++) {
    bp__segment *g = &s->segs[i];
    if (g->id < c->highest) {
      if (g->map) bp__os_table.munmap(g->map, g->map_size);
      if (g->rfd >= 0) {
        bp__os_table.close(g->rfd);
        s->open_rfds--;
      }
      if (g->id != c->ids[0]) continue;
      memset(g, 0, sizeof *g);
      g->id = c->ids[0];
      g->sealed = true;
      g->size = c->size;
      g->rfd = -1;
    }
    s->segs[w++] = *g;
  }
  s->nsegs = w;
  pthread_mutex_unlock(&s->seg_lock);
}

/* Rewrites the SIDX footers of segments sealed while the compaction ran, whose
 * global sequences retention changed (new index installed, wlock held). A
 * failure leaves a footer that loading ignores (it places events by order). */
static void reseal_later_segments(compaction *c) {
  bp_store *s = c->s;
  uint64_t seq, count = s->ix.count;
  for (seq = 0; seq < count && bp__index_at(&s->ix, seq)->segment_id < c->highest; seq++) {}
  while (seq < count) {
    const bp__ientry *e = bp__index_at(&s->ix, seq);
    uint32_t id = e->segment_id;
    uint64_t end = seq;
    while (end < count && bp__index_at(&s->ix, end)->segment_id == id) end++;
    const bp__ientry *last = bp__index_at(&s->ix, end - 1);
    if (s->wfd < 0 || id != s->wseg) {
      char path[4200];
      bp__segment_path(s, id, path, sizeof path);
      int fd = bp__os_table.open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0);
      int rc = fd < 0 ? (errno ? errno : EIO) : 0;
      uint64_t len;
      if (!rc) rc = bp__sidx_write(&s->ix, seq, end, last->offset + last->length, fd, &len);
      if (!rc) rc = bp__os_sync(fd, 0);
      if (fd >= 0) bp__os_table.close(fd);
      if (rc) bp__log(s, BP_LOG_WARN, "compaction: SIDX footer of %s not renumbered: %s", path, strerror(rc));
    }
    seq = end;
  }
}

/* Installs the new index (view lock held exclusively, wlock held). */
static void swap_index(compaction *c) {
  bp_store *s = c->s;
  /* The strings handed out so far belong to the old names: move them over. */
  for (uint32_t i = 0; i < c->names; i++) {
    bp__name *a = bp__index_name(&s->ix, i), *b = bp__index_name(&c->ix, i);
    char *t = a->str;
    a->str = b->str;
    b->str = t;
  }
  /* The persistent index numbers the old log: it goes (the next open builds
   * it again), and the new index lives in memory until then. */
  bp__ixstore_detach(s);
  bp__index_free(&s->ix);
  memcpy(&s->ix, &c->ix, sizeof s->ix);
  c->ix_ready = false;
  bp__scan_free(&s->scan);
  memcpy(&s->scan, &c->scan, sizeof s->scan);
  c->scan_ready = false;

  uint64_t drop = c->ndropped;
  if (s->wfd >= 0 && s->wseg_first >= drop) s->wseg_first -= drop;
  uint64_t durable = atomic_load(&s->durable);
  atomic_store(&s->durable, durable > drop ? durable - drop : 0);
  uint64_t gen = atomic_load(&s->generation) + 1;
  if (drop) {
    bp__remap *r = realloc(s->remaps, (s->nremaps + 1) * sizeof *r);
    if (r) {
      s->remaps = r;
      r[s->nremaps++] = (bp__remap){gen, c->dropped, c->ndropped};
      c->dropped = NULL;
    } else {
      bp__log(s, BP_LOG_WARN, "compaction: out of memory; cursor positions are not translated");
    }
  }
  atomic_store(&s->generation, gen);
  atomic_store(&s->log_epoch, c->created_ns);
  if (c->retired_ready) {
    bp__retired_free(&s->retired);
    s->retired = c->retired;
    c->retired_ready = false;
  }
}

/* The idempotency keys of the events this compaction drops join the retired
 * ones (retired.c), on disk before the compaction commits. */
static bp_status retire_keys(compaction *c) {
  if (c->ndropped == 0) return BP_OK;
  bp_store *s = c->s;
  bp_id *ids = malloc(sizeof *ids * c->ndropped);
  uint64_t *dig = malloc(sizeof *dig * c->ndropped);
  if (!ids || !dig) {
    free(ids);
    free(dig);
    return bp__fail(BP_ENOMEM, "compaction: out of memory");
  }
  for (size_t i = 0; i < c->ndropped; i++) {
    const bp__ientry *e = bp__index_at(&s->ix, c->dropped[i]);
    ids[i] = e->event_id;
    dig[i] = bp__retired_digest(e->event_hash, bp__index_name(&s->ix, e->entity)->str,
                                bp__index_name(&s->ix, e->scope)->str, e->kind);
  }
  bp_status st = bp__retired_add(s->dir, &s->retired, ids, dig, c->ndropped, &c->retired);
  c->retired_ready = st == BP_OK;
  if (st) bp__fail_context("compaction: remembering the keys of the events it drops");
  free(ids);
  free(dig);
  return st;
}

/* Steps 2-5 and the swap. */
static bp_status commit(compaction *c) {
  bp_store *s = c->s;
  /* Durable cursors anchored on an event this compaction drops move to the
   * last event it keeps before that one, before anything is committed; no
   * cursor commit comes in between until the swap is done. */
  pthread_mutex_lock(&s->cursor_files_lock);
  bp_status cst = bp__cursor_files_reanchor(s, c->dropped, c->ndropped);
  if (!cst) cst = retire_keys(c);
  if (cst) {
    pthread_mutex_unlock(&s->cursor_files_lock);
    return cst;
  }
  int rc = write_intent(s, c->ids[0], c->ids + 1, c->n - 1);
  if (rc) {
    pthread_mutex_unlock(&s->cursor_files_lock);
    char path[4200];
    intent_path(s, path, sizeof path);
    bp__os_table.unlink(path);
    return bp__fail_errno(BP_EIO, rc, "compaction: write %s", path);
  }

  pthread_rwlock_wrlock(&s->view_lock);
  pthread_mutex_lock(&s->wlock);
  bp_status st = add_tail(c);
  if (!st) {
    rc = roll_forward(s, c->ids[0], c->ids + 1, c->n - 1);
    if (rc && file_exists(c->tmp)) {
      /* Nothing replaced yet: undo. Should deleting the intent fail too,
       * the next open finishes the compaction, which holds the same events. */
      char path[4200];
      intent_path(s, path, sizeof path);
      if (unlink_missing_ok(path) == 0) bp__os_table.unlink(c->tmp);
      st = bp__fail_errno(BP_EIO, rc, "compaction: replace the segments of %s", s->dir);
    } else {
      /* Replaced: what is left (old files, the intent) the next open deletes. */
      if (rc) bp__log(s, BP_LOG_WARN, "compaction: cleaning up: %s; the next open finishes it", strerror(rc));
      swap_segments(c);
      bool renumbered = c->ndropped > 0;
      swap_index(c);
      if (renumbered) reseal_later_segments(c);
      if (s->cache && (c->ndropped || c->rewritten) && bp_cache_delete_prefix(s->cache, "", 0) != BP_OK)
        bp__log(s, BP_LOG_WARN, "compaction: projection cache not cleared: %s", bp_last_error()->message);
      /* Followers learn of the new log (its epoch) and reopen it. */
      bp__writer_publish_head(s);
    }
  }
  pthread_rwlock_unlock(&s->view_lock);
  pthread_mutex_unlock(&s->cursor_files_lock);
  uint64_t n = 0, wm_seg = 0, wm_off = 0;
  bool checkpoint = !st && s->cfg.enable_checkpoint;
  /* A checkpoint must not describe frames a power loss could still take. */
  bp_status ck = checkpoint ? bp__writer_sync(s) : BP_OK;
  if (checkpoint && !ck) ck = bp__checkpoint_watermark(s, &n, &wm_seg, &wm_off);
  pthread_mutex_unlock(&s->wlock);
  /* Appends go on while the checkpoint of the events so far is written. */
  if (checkpoint && !ck) ck = bp__checkpoint_write_at(s, n, wm_seg, wm_off);
  if (ck) bp__log(s, BP_LOG_WARN, "compaction: checkpoint not written: %s", bp_last_error()->message);
  return st;
}

/* The segments to merge: every one below the active segment, or all of them
 * before the first append since open: the segment the open went on with is
 * sealed first (the next append starts a new one). */
static bp_status choose(compaction *c) {
  bp_store *s = c->s;
  pthread_mutex_lock(&s->wlock);
  if (s->wfd >= 0 && s->wadopted) {
    bp_status st = bp__writer_seal(s);
    if (st) {
      pthread_mutex_unlock(&s->wlock);
      char why[sizeof bp_last_error()->message];
      snprintf(why, sizeof why, "%s", bp_last_error()->message);
      return bp__fail(st, "compaction: %s", why);
    }
  }
  pthread_mutex_lock(&s->seg_lock);
  size_t n = s->nsegs;
  c->highest = s->wfd >= 0 ? s->wseg : s->next_segment_id;
  c->ids = malloc(sizeof *c->ids * (n ? n : 1));
  for (size_t i = 0; c->ids && i < n; i++)
    if (s->segs[i].id < c->highest) {
      c->ids[c->n++] = s->segs[i].id;
      c->old_bytes += s->segs[i].size;
    }
  pthread_mutex_unlock(&s->seg_lock);
  pthread_mutex_unlock(&s->wlock);
  return c->ids ? BP_OK : bp__fail(BP_ENOMEM, "compaction: out of memory");
}

static bp_status compact_locked(compaction *c, bp_compaction_result *res) {
  bp_store *s = c->s;
  uint64_t *hidden = NULL;
  size_t nh = 0;
  bool skip_ck;
  /* A compaction whose clean-up failed earlier is finished first. */
  bp_status st = bp__compact_recover(s, &hidden, &nh, &skip_ck);
  free(hidden);
  if (!st) st = choose(c);
  size_t min = c->cfg->min_segments ? c->cfg->min_segments : 2;
  if (st || c->n < min) return st;
  if ((st = bp__index_init(&c->ix))) return st;
  c->ix_ready = true;
  if ((st = bp__scan_init(&c->scan, s->cfg.index_layout))) return st;
  c->scan_ready = true;
  if (!(st = write_segment(c)) && !(st = commit(c))) {
    res->segments_removed = c->n - 1;
    res->bytes_reclaimed = c->old_bytes > c->size ? c->old_bytes - c->size : 0;
    bp__log(s, BP_LOG_INFO,
            "compacted %zu segments into %06" PRIu64 ": %zu events left out, %" PRIu64 " bytes reclaimed", c->n,
            c->ids[0], c->ndropped, res->bytes_reclaimed);
  } else if (c->fd >= 0 && file_exists(c->tmp)) {
    char path[4200];
    intent_path(s, path, sizeof path);
    if (!file_exists(path)) bp__os_table.unlink(c->tmp);
  }
  return st;
}

bp_status bp_compact(bp_store *s, const bp_compaction_config *cfg, bp_compaction_result *res) {
  if (res) memset(res, 0, sizeof *res);
  if (!s || !cfg || !res) return bp__fail(BP_EINVAL, "bp_compact: NULL argument");
  if (cfg->strategy != BP_COMPACT_MERGE && cfg->strategy != BP_COMPACT_RETENTION &&
      cfg->strategy != BP_COMPACT_TOMBSTONE)
    return bp__fail(BP_EINVAL, "bp_compact: unknown strategy %d", cfg->strategy);
  if (cfg->strategy != BP_COMPACT_MERGE && !cfg->keep)
    return bp__fail(BP_EINVAL, "bp_compact: retention and tombstone need a keep() predicate");
  if (s->readonly) return bp__fail(BP_EREADONLY, "bp_compact: %s was opened read-only", s->dir);

  compaction c;
  memset(&c, 0, sizeof c);
  c.s = s;
  c.cfg = cfg;
  c.fd = -1;
  bp__buf_init(&c.out);
  pthread_mutex_lock(&s->compact_lock);
  /* The index thread stops first: it takes the locks the commit holds. */
  bp__ixstore_pause(s);
  bp_status st = compact_locked(&c, res);
  bp_error saved = *bp_last_error();
  if (bp__ixstore_start(s) != BP_OK) bp__log(s, BP_LOG_WARN, "%s", bp_last_error()->message);
  pthread_mutex_unlock(&s->compact_lock);
  if (c.fd >= 0) bp__os_table.close(c.fd);
  if (c.ix_ready) bp__index_free(&c.ix);
  if (c.scan_ready) bp__scan_free(&c.scan);
  bp__buf_free(&c.out);
  free(c.dropped);
  free(c.ids);
  if (c.retired_ready) bp__retired_free(&c.retired);
  if (st) bp__set_error(&saved);
  return st;
}

uint64_t bp__compact_translate(bp_store *s, uint64_t generation, uint64_t position) {
  for (size_t i = 0; i < s->nremaps; i++) {
    const bp__remap *r = &s->remaps[i];
    if (r->generation <= generation) continue;
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (r->dropped[mid] < position) lo = mid + 1;
      else hi = mid;
    }
    position -= lo;
  }
  return position;
}
