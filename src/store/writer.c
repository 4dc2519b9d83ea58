/*
 * writer.c - the commit path.
 *
 * Concurrency essay
 * -----------------
 * There is no writer thread. An append validates its input, hashes its
 * payload and picks its event id on the caller's thread, then joins the queue
 * (qlock). If no leader is committing, the caller becomes the leader: it
 * takes the queued appends (up to group_commit_max_batch, 0 = all) as a group
 * and commits them under wlock with one write (and at most one fsync), then
 * tells their callers, and repeats until the queue is empty, or until a
 * group with its own append was fsynced (then a waiting caller takes over:
 * lead). An uncontended append therefore never waits for another thread;
 * under contention, appends that arrive while a group is being written form
 * the next group (the write-group idea). With group_commit_max_batch 1 every
 * group is one append, but the leader still commits the others' appends: the
 * writer's state (chain heads, index tail, the segment's pages) stays in one
 * CPU's cache, where handing wlock from thread to thread moved it on every
 * append and made two threads slower than one. A waiting caller spins
 * briefly before it sleeps (wait_committed). The queue holds at most
 * writer_queue_capacity appends; further callers block.
 *
 * Committing a group (commit_group), under wlock:
 *   1. seal the active segment if it reached segment_max_bytes; start one if
 *      there is none (writer_ensure_segment);
 *   2. for each append in order (plan_request): idempotency (a known key
 *      returns the original receipt), CAS against the entity's chain head,
 *      event id, correlation, prev_hash, per-entity clock, HLC wall_ms, frame
 *      encoding into wbuf, and the entry pushed to the index (not yet visible);
 *      an append that fails here is rolled back alone;
 *   3. one positioned write of wbuf at the end of the segment, then fsync if
 *      sync_every_n_events appends have accumulated;
 *   4. publish: the index's visible count moves past the whole group at once.
 * Page hints the writes call for (mapping pages ahead, starting write-back)
 * are collected over a leadership and given once it ends (give_hints), and
 * frames are encoded from parts prepared before queueing (bp__frame_parts):
 * neither holds up the next commit.
 * If step 3 fails, every append of the group fails BP_EIO, the index and the
 * chain heads are rolled back, the segment is truncated back and abandoned,
 * and restart_policy decides whether the next group starts a fresh segment or
 * the writer has failed for good (BP_EWRITER until reopen).
 *
 * Acknowledgement: an append returns after step 3 (write returned, and fsync
 * when due); events it wrote are visible to readers from step 4 on.
 */
#include "store/store_impl.h"
#include "batpak/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Saved chain head of an entity, to undo a failed plan. */
typedef struct undo_rec {
  bp__name *name;
  uint32_t next_clock;
  uint64_t last_wall_ms;
  uint8_t last_hash[32];
} undo_rec;

typedef struct undo_log {
  undo_rec *items;
  size_t len, cap;
} undo_log;

static bool undo_push(undo_log *u, bp__name *nm) {
  if (u->len == u->cap) {
    size_t cap = u->cap ? u->cap * 2 : 16;
    undo_rec *n = realloc(u->items, cap * sizeof *n);
    if (!n) return false;
    u->items = n;
    u->cap = cap;
  }
  undo_rec *r = &u->items[u->len++];
  r->name = nm;
  r->next_clock = nm->next_clock;
  r->last_wall_ms = nm->last_wall_ms;
  memcpy(r->last_hash, nm->last_hash, 32);
  return true;
}

static void undo_to(undo_log *u, size_t mark) {
  while (u->len > mark) {
    undo_rec *r = &u->items[--u->len];
    r->name->next_clock = r->next_clock;
    r->name->last_wall_ms = r->last_wall_ms;
    memcpy(r->name->last_hash, r->last_hash, 32);
  }
}

static uint64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------- segments */

/*
 * The active segment is written through a shared writable mapping when the
 * platform allows it: copying a frame into the mapping puts it in the page
 * cache, which is what write() would do, without a system call per append.
 * The file is extended ahead of the writes with fallocate (so that running
 * out of disk space is an error from fallocate, never a SIGBUS from the
 * mapping), BP__GROW_STEP at a time; a crash can therefore leave zero bytes
 * after the last frame, which a scan recognises as unused space (a frame
 * length of 0 is never valid). Sealing truncates the file to its frames and
 * footer. Anything the mapping cannot take (a frame past the mapped window,
 * a file system without fallocate, a failed mmap) goes through write().
 *
 * Not when every event is fsynced (sync_every_n_events at most
 * BP__WRITE_SYNCS): each fsync write-protects the page being filled, so the
 * next frame's copy takes a page fault that costs more than a write() call,
 * and frames written with write() can land on zeros written ahead (see
 * zero_ahead), where the fsync has no metadata to write. With 1 thread and 8
 * in group commit, durable appends went 18% and 32% faster.
 */
#define BP__WRITE_SYNCS 1
#define BP__GROW_STEP (4u << 20)
#define BP__GROW_AHEAD (1u << 20)

/* Page hints. Making pages readable or writable ahead of the frames
 * (madvise) and starting write-back (sync_file_range) only save work later;
 * they cost tens to hundreds of microseconds per call (about 10 us a page on
 * ext4 here), and while the leader gives them every queued append waits. So
 * the commit only records them (a hints record, under wlock), the leader
 * merges the records of its groups, and gives them once another caller can
 * lead (give_hints). Meanwhile the segment may be sealed or abandoned: every
 * change of the mapping or descriptor happens under hint_lock and moves
 * wgen, and a hint recorded under another wgen is dropped. A frame written
 * before its pages' hint ran only takes the page faults the hint would have
 * saved. */
typedef struct hint_range {
  uint64_t from, to;                     /* empty when to <= from */
} hint_range;

typedef struct hints {
  uint64_t gen;
  hint_range readable;                   /* MADV_POPULATE_READ */
  hint_range writable;                   /* MADV_POPULATE_WRITE */
  hint_range flush;                      /* SYNC_FILE_RANGE_WRITE */
} hints;

static bool range_empty(hint_range r) { return r.to <= r.from; }

/* Widens r to cover [from, to) too: the ranges a leader's groups call for
 * only grow forward, so each kind stays one range. */
static void range_add(hint_range *r, uint64_t from, uint64_t to) {
  if (to <= from) return;
  if (range_empty(*r)) {
    *r = (hint_range){from, to};
    return;
  }
  if (from < r->from) r->from = from;
  if (to > r->to) r->to = to;
}

static bool any_hint(const hints *h) {
  return !range_empty(h->readable) || !range_empty(h->writable) || !range_empty(h->flush);
}

/* Adds h to the hints a leader collects over its groups. Hints for a segment
 * that has gone since (another gen) are dropped. */
static void merge_hints(hints *acc, const hints *h) {
  if (!any_hint(h)) return;
  if (acc->gen != h->gen) {
    *acc = *h;
    return;
  }
  range_add(&acc->readable, h->readable.from, h->readable.to);
  range_add(&acc->writable, h->writable.from, h->writable.to);
  range_add(&acc->flush, h->flush.from, h->flush.to);
}

/* Unmaps filled pages [from, to) of the active segment before their
 * write-back starts (hint_lock held). Their frames stay in the page cache,
 * dirty (readers use pread), and the writer never comes back to them. The
 * write-back of a page that is still mapped write-protects it, one page at a
 * time, and while appenders run on more than one CPU each of those sends the
 * other CPUs an interrupt to flush their TLBs; one madvise drops the whole
 * range with one flush. Two appending threads went 17% faster, one 10%. */
static void drop_filled(bp_store *s, uint64_t from, uint64_t to) {
  if (!s->wmap) return;
  if (to > s->wmap_len) to = s->wmap_len;
  if (from < to) madvise(s->wmap + from, (size_t)(to - from), MADV_DONTNEED);
}

static void give_hints(bp_store *s, const hints *h) {
  if (!any_hint(h)) return;
  pthread_mutex_lock(&s->hint_lock);
  if (s->wgen == h->gen && s->wmap) {
    if (!range_empty(h->readable))
      madvise(s->wmap + h->readable.from, (size_t)(h->readable.to - h->readable.from), BP__MADV_POPULATE_READ);
    if (!range_empty(h->writable))
      madvise(s->wmap + h->writable.from, (size_t)(h->writable.to - h->writable.from), BP__MADV_POPULATE_WRITE);
  }
#ifdef SYNC_FILE_RANGE_WRITE
  if (s->wgen == h->gen && s->wfd >= 0 && !range_empty(h->flush)) {
    drop_filled(s, h->flush.from, h->flush.to);
    sync_file_range(s->wfd, (off64_t)h->flush.from, (off64_t)(h->flush.to - h->flush.from), SYNC_FILE_RANGE_WRITE);
  }
#endif
  pthread_mutex_unlock(&s->hint_lock);
}

static void unmap_segment(bp_store *s) {
  pthread_mutex_lock(&s->hint_lock);
  if (s->wmap) bp__os_table.munmap(s->wmap, s->wmap_len);
  s->wmap = NULL;
  s->wmap_len = 0;
  s->wgen++;
  pthread_mutex_unlock(&s->hint_lock);
}

static void close_segment(bp_store *s) {
  pthread_mutex_lock(&s->hint_lock);
  if (s->wfd >= 0) bp__os_table.close(s->wfd);
  s->wfd = -1;
  s->wgen++;
  pthread_mutex_unlock(&s->hint_lock);
}

static void map_segment(bp_store *s) {
  uint64_t len = s->cfg.segment_max_bytes + BP__MAP_SLACK;
  if (len > ((uint64_t)1 << 40) || len > SIZE_MAX / 2) return; /* an absurd segment size: write() it is */
  len = bp__os_page_ceil(len);
  void *m = bp__os_table.mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, s->wfd, 0);
  if (m == MAP_FAILED) {
    bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 ": not mapped (%s); appends use write()", s->wseg,
            strerror(errno));
    return;
  }
  pthread_mutex_lock(&s->hint_lock);
  s->wmap = m;
  s->wmap_len = (size_t)len;
  pthread_mutex_unlock(&s->hint_lock);
}

/* Makes the file at least end bytes long (allocated), growing by BP__GROW_STEP.
 * Returns 0, EOPNOTSUPP (no fallocate here: stop using the mapping) or an errno. */
static int reserve_space(bp_store *s, uint64_t end, hints *h) {
  if (end <= s->wcap) return 0;
  uint64_t cap = (end + BP__GROW_STEP - 1) / BP__GROW_STEP * BP__GROW_STEP;
  if (cap > s->wmap_len) cap = s->wmap_len;
  if (cap < end) return EOPNOTSUPP;
  if (bp__os_table.fallocate(s->wfd, 0, (off_t)s->wcap, (off_t)(cap - s->wcap)) != 0) {
    int err = errno;
    /* Without room for a whole step, room for this write is enough: an
     * append that fits must not fail for the space reserved ahead of it. */
    if ((err == ENOSPC || err == EDQUOT) && cap > end) {
      cap = end;
      if (bp__os_table.fallocate(s->wfd, 0, (off_t)s->wcap, (off_t)(cap - s->wcap)) == 0) err = 0;
      else err = errno;
    }
    if (err) return err == ENOSYS ? EOPNOTSUPP : (err ? err : EIO);
  }
  /* Map the new range now, in one call, rather than one page fault per page
   * as frames arrive. Readable only: a page mapped writable is dirty at once,
   * so every fsync would write the whole range ahead (zeros) and then
   * write-protect it again; map_writable makes pages writable a little ahead
   * of the frames. Only a hint (give_hints). */
  range_add(&h->readable, bp__os_page_floor(s->wcap), cap);
  s->wcap = cap;
  return 0;
}

#define BP__WRITABLE_STEP (64u << 10)

/* Makes the pages a write to [at, end) touches writable in the mapping before
 * the copy, a little ahead at a time: a store to a page mapped read-only is a
 * page fault, which on virtual machines costs microseconds, taken once per
 * page; the madvise call does the same work for many pages at once. Not far
 * ahead: a page made writable is dirty, so the next fsync writes it back
 * (zeros) and write-protects it again. The step is therefore at most what
 * sync_every_n_events frames of 256 bytes fill, and nothing at all when
 * fsyncs come every few events (the write faults are then cheaper than the
 * zeros). */
static void map_writable(bp_store *s, uint64_t at, uint64_t end, hints *h) {
  if (end <= s->wpop) return;
  uint64_t step = (uint64_t)s->cfg.sync_every_n_events * 256;
  if (step > BP__WRITABLE_STEP) step = BP__WRITABLE_STEP;
  step = bp__os_page_floor(step);
  if (step == 0) return;
  uint64_t from = bp__os_page_floor(at);
  if (s->wpop > from) from = s->wpop;
  uint64_t to = bp__os_page_ceil(end + step);
  if (to > s->wcap) to = s->wcap;
  range_add(&h->writable, from, to);
  s->wpop = to;
}

/* An fsync wrote back and write-protected every page: the page being filled
 * must be made writable again. */
static void synced(bp_store *s) {
  uint64_t filled = bp__os_page_floor(s->wsize);
  if (s->wpop > filled) s->wpop = filled;
  s->wflushed = filled;
}

#define BP__FLUSH_STEP (128u << 10)

/* Starts writing back the pages frames have filled since the last call, once
 * there are BP__FLUSH_STEP bytes of them, without waiting: by the time
 * sync_every_n_events asks for an fsync, most of its data is on its way and
 * the fsync waits for less. Pages not yet full are left alone (written back,
 * they would be write-protected and fault on the next frame). A hint only:
 * nothing is promised durable until the fsync. */
static void start_writeback(bp_store *s, hints *h) {
  uint64_t full = bp__os_page_floor(s->wsize);
  if (s->cfg.sync_every_n_events <= 1 || full < s->wflushed + BP__FLUSH_STEP) return;
  range_add(&h->flush, s->wflushed, full);
  s->wflushed = full;
}

/*
 * Frames that go through write() land on zeros written ahead of them, not at
 * the end of the file: an fsync after a write that extends the file (or fills
 * an fallocated, still unwritten range) must also write the file's metadata
 * (its size, its extents: on a journaling file system, a journal commit),
 * while one after overwriting written blocks only writes the data (ext4
 * without a journal here: the fsync of a group of seven frames, two pages,
 * took half the time; of a single frame a fifth less).
 * The zeros go BP__ZERO_STEP at a time, once the frames come within
 * BP__ZERO_AHEAD of them; failing to write them fails nothing (the frame's
 * own write reports a full disk). A crash may leave zeros after the last
 * frame, as fallocate does.
 */
#define BP__ZERO_STEP (128u << 10)
#define BP__ZERO_AHEAD (64u << 10)

static void zero_ahead(bp_store *s, uint64_t end) {
  static const uint8_t zeros[BP__ZERO_STEP];
  if (end + BP__ZERO_AHEAD <= s->wcap) return;
  uint64_t from = end > s->wcap ? end : s->wcap;
  struct iovec iov = {(void *)zeros, sizeof zeros};
  if (bp__os_write_all(s->wfd, &iov, 1, from) == 0) s->wcap = from + sizeof zeros;
}

/*
 * A segment a process starts (or goes on with) takes its first
 * BP__PLAIN_BYTES of frames through write() at the end of the file, with
 * nothing allocated ahead: a process that appends a few events and closes
 * then changes the file's size once, where allocating ahead, mapping and
 * giving the unused space back at close cost two more journal commits
 * (about 32 KiB written on ext4 here, twice what the frames cost). Past
 * that, the mapping and the space ahead pay for themselves.
 */
#define BP__PLAIN_BYTES (256u << 10)

static void plain_for_a_while(bp_store *s) { s->wplain_until = s->wsize + BP__PLAIN_BYTES; }

/* Hands len bytes at offset at of the active segment to the operating system. */
static int segment_write(bp_store *s, const uint8_t *data, size_t len, uint64_t at, hints *h) {
  if (s->wplain_until) {
    if (at + len <= s->wplain_until) {
      struct iovec iov = {(void *)data, len};
      int rc = bp__os_write_all(s->wfd, &iov, 1, at);
      if (!rc && at + len > s->wcap) s->wcap = at + len;
      return rc;
    }
    s->wplain_until = 0;
    if (s->cfg.sync_every_n_events > BP__WRITE_SYNCS) map_segment(s);
  }
  if (s->wmap && at + len <= s->wmap_len) {
    int rc = reserve_space(s, at + len, h);
    if (rc == 0 && at + len + BP__GROW_AHEAD > s->wcap) {
      /* The next range is allocated (and its pages mapped, a hint) while
       * BP__GROW_AHEAD bytes of this one are left, so that frames do not
       * arrive at pages the hint has not reached yet. Only wanted: failing
       * here fails nothing, the append that needs the space will. */
      uint64_t ahead = at + len + BP__GROW_AHEAD;
      (void)reserve_space(s, ahead < s->wmap_len ? ahead : s->wmap_len, h);
    }
    if (rc == 0) {
      map_writable(s, at, at + len, h);
      memcpy(s->wmap + at, data, len);
      return 0;
    }
    if (rc != EOPNOTSUPP) return rc;
    bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 ": no fallocate; appends use write()", s->wseg);
    unmap_segment(s);
  }
  zero_ahead(s, at + len);
  struct iovec iov = {(void *)data, len};
  int rc = bp__os_write_all(s->wfd, &iov, 1, at);
  if (!rc && at + len > s->wcap) s->wcap = at + len;
  return rc;
}

/* A new segment appears under its name only with its header durable: it is
 * written as NNNNNN.fbat.new, fsynced and renamed. A power loss may garble
 * what no fsync covered; a named segment without its header would not open. */
static bp_status writer_open_segment(bp_store *s) {
  uint64_t id = s->next_segment_id;
  char path[4096], tmp[4200];
  bp__segment_path(s, id, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s%s", path, BP__SEGMENT_NEW_SUFFIX);
  struct stat sb;
  if (lstat(path, &sb) == 0) return bp__fail(BP_EIO, "create segment %s: a file of that name exists", path);
  bp__os_table.unlink(tmp); /* left by a crash */
  int fd = bp__os_table.open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "create segment %s", tmp);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  bp__segment_header h = {BP__SEGMENT_VERSION, 0, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec, id};
  bp__buf b;
  bp__buf_init(&b);
  bp__segment_header_encode(&b, &h);
  struct iovec iov = {b.data, b.len};
  int rc = b.oom ? ENOMEM : bp__os_write_all(fd, &iov, 1, 0);
  uint64_t size = b.len;
  bp__buf_free(&b);
  if (!rc) rc = bp__os_sync(fd, (int)s->cfg.sync_mode);
  if (!rc && bp__os_table.rename(tmp, path) != 0) rc = errno ? errno : EIO;
  if (!rc) rc = bp__os_sync_dir(s->dir);
  bp_status st = rc ? bp__fail_errno(BP_EIO, rc, "write header of segment %s", path) : BP_OK;
  if (!st) st = bp__segment_add(s, id, false, size);
  if (!st) bp__segment_map_active(s, id, fd, s->cfg.segment_max_bytes + BP__MAP_SLACK);
  if (st) {
    bp__os_table.close(fd);
    bp__os_table.unlink(tmp);
    bp__os_table.unlink(path);
    return st;
  }
  s->next_segment_id = id + 1;
  if (atomic_load(&s->log_epoch) == 0) atomic_store(&s->log_epoch, h.created_ns); /* the store's first segment */
  pthread_mutex_lock(&s->hint_lock);
  s->wfd = fd;
  pthread_mutex_unlock(&s->hint_lock);
  s->wseg = id;
  s->wsize = size;
  s->wcap = size;
  s->wpop = 0;
  s->wflushed = 0;
  s->wseg_first = s->ix.count;
  plain_for_a_while(s);
  bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 " started", id);
  return BP_OK;
}

/* Counts a writer failure against restart_policy; true if the writer may go on. */
static bool allow_restart(bp_store *s) {
  const bp_restart_policy *p = &s->cfg.restart_policy;
  if (p->kind == BP_RESTART_ONCE) {
    if (s->restarts >= 1) return false;
    s->restarts++;
    return true;
  }
  uint64_t now = mono_ms();
  if (!s->restart_times) {
    s->restart_times = calloc(p->max_restarts ? p->max_restarts : 1, sizeof *s->restart_times);
    if (!s->restart_times) return false;
  }
  uint32_t recent = 0;
  for (uint32_t i = 0; i < p->max_restarts; i++)
    if (s->restart_times[i] && now - s->restart_times[i] < p->within_ms) recent++;
  if (recent >= p->max_restarts) return false;
  for (uint32_t i = 0; i < p->max_restarts; i++)
    if (!s->restart_times[i] || now - s->restart_times[i] >= p->within_ms) {
      s->restart_times[i] = now ? now : 1;
      break;
    }
  s->restarts++;
  return true;
}

/* The active segment is unusable: abandon it (a later open scans it) and
 * decide, by policy, whether the writer goes on. keep_from is the size to
 * truncate back to (the bytes after it were never acknowledged). */
static void writer_failed(bp_store *s, uint64_t keep_from, const char *what) {
  unmap_segment(s);
  if (s->wfd >= 0) bp__os_table.ftruncate(s->wfd, (off_t)keep_from);
  close_segment(s);
  bool go_on = allow_restart(s);
  if (!go_on) s->failed = true;
  bp__log(s, go_on ? BP_LOG_WARN : BP_LOG_ERROR, "writer: %s; %s", what,
          go_on ? "restarting on a fresh segment" : "restart budget spent, the writer has failed");
}

bp_status bp__writer_seal(bp_store *s) {
  /* The frames are made durable before the footer is written: a power cut
   * may keep a later write and lose an earlier one, and a footer that
   * outlived the frames it describes would make a sealed segment of a
   * crashed one, whose lost frames then read as corruption instead of a torn
   * tail. Then the footer after the last frame, the space allocated ahead
   * dropped, and the whole made durable. */
  unmap_segment(s);
  uint64_t len = 0;
  int rc = s->unsynced ? bp__os_sync(s->wfd, s->cfg.sync_mode) : 0;
  bool frames_durable = rc == 0;
  if (!rc) rc = bp__sidx_write(&s->ix, s->wseg_first, s->ix.count, s->wsize, s->wfd, &len);
  if (!rc && s->wcap > s->wsize + len && bp__os_table.ftruncate(s->wfd, (off_t)(s->wsize + len)) != 0)
    rc = errno ? errno : EIO;
  if (!rc) rc = bp__os_sync(s->wfd, s->cfg.sync_mode);
  if (rc && frames_durable && (rc == ENOSPC || rc == EDQUOT)) {
    /* No room for the footer. The frames are durable and nothing is lost:
     * the segment stays the active one (written without its mapping now),
     * and the next append, or bp_close, seals it again. */
    s->unsynced = 0;
    atomic_store(&s->durable, s->ix.count);
    return bp__fail_errno(BP_EIO, rc, "seal segment %06" PRIu64 ": no space for its footer; it stays open and "
                          "is sealed once space is freed", s->wseg);
  }
  if (rc) {
    bp_status st = rc == ENOMEM ? bp__fail(BP_ENOMEM, "seal segment %06" PRIu64 ": out of memory for its SIDX footer", s->wseg)
                                : bp__fail_errno(BP_EIO, rc, "seal segment %06" PRIu64, s->wseg);
    /* The frames were written (and acknowledged): keep them, drop the partial footer. */
    writer_failed(s, s->wsize, bp_last_error()->message);
    return st;
  }
  close_segment(s);
  bp__segment_sealed(s, s->wseg, s->wsize + len);
  atomic_store(&s->durable, s->ix.count);
  s->unsynced = 0;
  bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 " sealed with %" PRIu64 " events", s->wseg,
          s->ix.count - s->wseg_first);
  return BP_OK;
}

bp_status bp__writer_finish(bp_store *s) {
  if (s->wsize >= s->cfg.segment_max_bytes) return bp__writer_seal(s); /* its rotation is due */
  unmap_segment(s);
  int rc = 0;
  bool cut = s->wcap > s->wsize;
  if (cut && bp__os_table.ftruncate(s->wfd, (off_t)s->wsize) != 0) rc = errno ? errno : EIO;
  if (!rc && (s->unsynced || cut)) rc = bp__os_sync(s->wfd, s->cfg.sync_mode);
  if (rc) {
    /* What the frames need is on disk or in the page cache either way: the
     * next open finds them (and any space left ahead) as a crash leaves them. */
    bp_status st = bp__fail_errno(BP_EIO, rc, "close: sync segment %06" PRIu64, s->wseg);
    close_segment(s);
    return st;
  }
  close_segment(s);
  atomic_store(&s->durable, s->ix.count);
  s->unsynced = 0;
  return BP_OK;
}

bp_status bp__writer_adopt(bp_store *s, uint64_t id, uint64_t first, uint64_t frames_end) {
  char path[4096];
  bp__segment_path(s, id, path, sizeof path);
  int fd = bp__os_table.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "open %s for appends", path);
  struct stat sb;
  int rc = bp__os_table.fstat(fd, &sb) != 0 ? (errno ? errno : EIO) : 0;
  if (!rc && (uint64_t)sb.st_size > frames_end) {
    /* A torn frame, an interrupted batch or space allocated ahead: none of
     * it was kept, and new frames must not end up in front of it. */
    if (bp__os_table.ftruncate(fd, (off_t)frames_end) != 0) rc = errno ? errno : EIO;
    if (!rc) rc = bp__os_sync(fd, 0);
  }
  if (rc) {
    bp__os_table.close(fd);
    return bp__fail_errno(BP_EIO, rc, "segment %06" PRIu64 ": cutting it to its last kept frame", id);
  }
  bp__segment_unseal(s, id, frames_end);
  bp__segment_map_active(s, id, fd, s->cfg.segment_max_bytes + BP__MAP_SLACK);
  bp__segment_readable(s, id, frames_end);
  pthread_mutex_lock(&s->hint_lock);
  s->wfd = fd;
  s->wgen++;
  pthread_mutex_unlock(&s->hint_lock);
  s->wseg = id;
  s->wsize = s->wcap = frames_end;
  s->wpop = 0;
  s->wflushed = bp__os_page_floor(frames_end);
  s->wseg_first = first;
  s->wadopted = true;
  plain_for_a_while(s);
  bp__log(s, BP_LOG_DEBUG, "segment %06" PRIu64 ": appends go on after its %" PRIu64 " events", id,
          s->ix.count - first);
  return BP_OK;
}

static bp_status writer_ensure_segment(bp_store *s) {
  if (s->failed) return bp__fail(BP_EWRITER, "the writer has failed; reopen the store");
  s->wadopted = false;
  if (s->wfd >= 0 && s->wsize >= s->cfg.segment_max_bytes) {
    bp_status st = bp__writer_seal(s);
    if (st) return st;
  }
  if (s->wfd < 0) {
    bp_status st = writer_open_segment(s);
    if (st) {
      /* A full disk left nothing behind (the new file is removed): the next
       * append tries again, and it does not count against the policy. */
      int err = bp_last_error()->sys_errno;
      if (err == ENOSPC || err == EDQUOT) return st;
      bool go_on = allow_restart(s);
      if (!go_on) s->failed = true;
      return st;
    }
  }
  return BP_OK;
}

void bp__writer_head_record(bp_store *s, bp__head_rec *r) {
  uint64_t n = s->ix.count;
  r->epoch = atomic_load(&s->log_epoch);
  r->count = n;
  r->durable = atomic_load(&s->durable);
  r->live = true;
  if (s->wfd >= 0) {
    r->segment = s->wseg;
    r->frames_end = s->wsize;
  } else if (n > 0) {
    const bp__ientry *e = bp__index_at(&s->ix, n - 1);
    r->segment = e->segment_id;
    r->frames_end = e->offset + e->length;
  } else {
    r->segment = r->frames_end = 0;
  }
}

void bp__writer_publish_head(bp_store *s) {
  if (!s->head.writer) return;
  bp__head_rec hr;
  bp__writer_head_record(s, &hr);
  bp__head_publish(&s->head, &hr);
}

void bp__writer_free(bp_store *s) {
  unmap_segment(s);
  close_segment(s);
  bp__buf_free(&s->wbuf);
  free(s->restart_times);
  s->restart_times = NULL;
}

/* ------------------------------------------------------------- planning */

static bool key_seen_before(const bp_event_in *ev, size_t i) {
  for (size_t j = 0; j < i; j++)
    if (bp_id_eq(ev[j].opts.idempotency_key, ev[i].opts.idempotency_key)) return true;
  return false;
}

/* Whether event i of a request repeats an idempotency key: one of an event
 * in the log, of an earlier event of the same request, or of an event
 * retention dropped (retired.c). A repeat writes nothing. */
static bool key_repeats(const bp_store *s, const bp_event_in *evs, size_t i) {
  bp_id key = evs[i].opts.idempotency_key;
  uint64_t seq, digest;
  return !bp_id_is_nil(key) && (bp__index_find_id(&s->ix, key, s->ix.count, &seq) || key_seen_before(evs, i) ||
                                bp__retired_find(&s->retired, key, &digest));
}

/* A repeat of an idempotency key must repeat its event: the same payload
 * (compared by its BLAKE3), entity, scope and kind. Anything else is a
 * caller's bug that a silent "already done" would hide. */
static bp_status same_event(const bp_store *s, const bp__ientry *e, uint64_t seq, const bp_event_in *ev,
                            const uint8_t hash[32]) {
  const bp__name *ent = bp__index_name(&s->ix, e->entity), *scp = bp__index_name(&s->ix, e->scope);
  const char *what = memcmp(e->event_hash, hash, 32) != 0 ? "payload"
                     : strcmp(ent->str, ev->coord.entity) != 0 ? "entity"
                     : strcmp(scp->str, ev->coord.scope) != 0 ? "scope"
                     : e->kind != ev->kind ? "kind"
                                           : NULL;
  if (!what) return BP_OK;
  char key[33];
  bp_id_to_hex(e->event_id, key);
  return bp__fail(BP_EIDEMPOTENCY_CONFLICT, "append: idempotency key %s already names event %" PRIu64
                  " with another %s (entity %s)", key, seq, what, ent->str);
}

/* The same within one batch: event i repeats the key of an earlier one. */
static bp_status same_as_earlier(const bp_event_in *evs, const bp__prep *prep, size_t i) {
  for (size_t j = 0; j < i; j++) {
    if (!bp_id_eq(evs[j].opts.idempotency_key, evs[i].opts.idempotency_key)) continue;
    const char *what = memcmp(prep[j].hash, prep[i].hash, 32) != 0 ? "payload"
                       : strcmp(evs[j].coord.entity, evs[i].coord.entity) != 0 ? "entity"
                       : strcmp(evs[j].coord.scope, evs[i].coord.scope) != 0 ? "scope"
                       : evs[j].kind != evs[i].kind ? "kind"
                                                    : NULL;
    if (!what) return BP_OK;
    return bp__fail(BP_EIDEMPOTENCY_CONFLICT, "append: batch events %zu and %zu share an idempotency key with "
                    "another %s", j, i, what);
  }
  return BP_OK;
}

/* A receipt for the event at seq, every byte of it written (padding too), so
 * that callers may copy, hash or compare receipts as bytes. */
static void set_receipt(bp_append_receipt *r, const bp__ientry *e, uint64_t seq) {
  memset(r, 0, sizeof *r);
  r->event_id = e->event_id;
  r->sequence = seq;
  r->disk_pos.segment_id = e->segment_id;
  r->disk_pos.offset = e->offset;
  r->disk_pos.length = e->length;
}

/* Plans every event of one append call into wbuf and the index. */
static bp_status plan_request(bp_store *s, bp__req *req, undo_log *undo) {
  int64_t ts = bp__now_us(s);
  uint64_t ts_ms = ts < 0 ? 0 : (uint64_t)ts / 1000;
  size_t n = req->n;

  /* Which events are repeats of a known idempotency key. */
  bool stack_dup[1];
  bool *dup = n == 1 ? stack_dup : calloc(n, sizeof *dup);
  if (!dup) return bp__fail(BP_ENOMEM, "out of memory planning a batch");
  size_t last_new = SIZE_MAX;
  for (size_t i = 0; i < n; i++) {
    dup[i] = key_repeats(s, req->events, i);
    if (!dup[i]) last_new = i;
  }

  bp_status st = BP_OK;
  for (size_t i = 0; i < n && !st; i++) {
    const bp_event_in *ev = &req->events[i];
    const bp_append_options *o = &ev->opts;
    bp_append_receipt *rcpt = req->outs ? &req->outs[i] : NULL;
    if (dup[i]) {
      uint64_t seq;
      uint64_t digest;
      if (bp__index_find_id(&s->ix, o->idempotency_key, s->ix.count, &seq)) {
        const bp__ientry *e = bp__index_at(&s->ix, seq);
        if ((st = same_event(s, e, seq, ev, req->prep[i].hash))) break;
        if (rcpt) set_receipt(rcpt, e, seq);
      } else if (key_seen_before(req->events, i)) {
        if ((st = same_as_earlier(req->events, req->prep, i))) break;
      } else if (bp__retired_find(&s->retired, o->idempotency_key, &digest)) {
        /* Its event was appended, then dropped by retention: a repeat
         * still, with nothing to point at. */
        if (digest != bp__retired_digest(req->prep[i].hash, ev->coord.entity, ev->coord.scope, ev->kind)) {
          char key[33];
          bp_id_to_hex(o->idempotency_key, key);
          st = bp__fail(BP_EIDEMPOTENCY_CONFLICT, "append: idempotency key %s named another event, since "
                        "dropped by retention", key);
          break;
        }
        if (rcpt) {
          memset(rcpt, 0, sizeof *rcpt);
          rcpt->event_id = o->idempotency_key;
          rcpt->sequence = BP_SEQUENCE_RETIRED;
        }
      }
      continue;
    }
    bp__name *ent, *scp;
    if ((st = bp__index_intern(&s->ix, ev->coord.entity, strlen(ev->coord.entity), &ent)) ||
        (st = bp__index_intern(&s->ix, ev->coord.scope, strlen(ev->coord.scope), &scp)))
      break;
    bp__index_entity_head(&s->ix, ent);
    if (o->expect == BP_EXPECT_EMPTY && ent->next_clock != 0) {
      st = bp__fail(BP_ESEQUENCE, "entity %s: expected no events, found %" PRIu32 " (latest clock %" PRIu32 ")",
                    ent->str, ent->next_clock, ent->next_clock - 1);
      break;
    }
    if (o->expect == BP_EXPECT_SEQUENCE && (ent->next_clock == 0 || ent->next_clock - 1 != o->expected_sequence)) {
      if (ent->next_clock == 0)
        st = bp__fail(BP_ESEQUENCE, "entity %s: expected sequence %" PRIu32 ", actual: no events", ent->str,
                      o->expected_sequence);
      else
        st = bp__fail(BP_ESEQUENCE, "entity %s: expected sequence %" PRIu32 ", actual %" PRIu32, ent->str,
                      o->expected_sequence, ent->next_clock - 1);
      break;
    }
    if (ent->next_clock == UINT32_MAX) {
      st = bp__fail(BP_ELIMIT, "entity %s: per-entity clock exhausted", ent->str);
      break;
    }

    const uint8_t *event_hash = req->prep[i].hash; /* BLAKE3 of the payload: content and event hash */
    bp_header hdr;
    memset(&hdr, 0, sizeof hdr);
    bp_header *h = &hdr;
    h->event_id = req->prep[i].id;
    h->correlation_id = req->prep[i].correlation;
    h->causation_id = o->causation_id;
    h->timestamp_us = ts;
    uint64_t wall = ts_ms > ent->last_wall_ms ? ts_ms : ent->last_wall_ms;
    h->position = bp_position_child_at(ent->next_clock, wall, 0);
    h->payload_size = (uint32_t)ev->len;
    h->kind = ev->kind;
    h->flags = o->flags;
    if (req->is_batch && i != last_new) h->flags |= BP_FLAG_TRANSACTIONAL | BP_FLAG_BATCH_MEMBER;
    memcpy(h->content_hash, event_hash, 32);
    /* The rest of the frame (coordinate, payload, event hash) is in the
     * prepared parts; prev_hash is the entity's last event's (zeros for its
     * first). */
    uint8_t prev_hash[32] = {0};
    if (ent->next_clock > 0) memcpy(prev_hash, ent->last_hash, 32);

    size_t frame_at = s->wbuf.len;
    if ((st = bp__frame_encode_parts(&s->wbuf, &req->prep[i].parts, h, prev_hash))) break;
    bp__ientry e;
    memset(&e, 0, sizeof e);
    e.event_id = h->event_id;
    e.correlation_id = h->correlation_id;
    e.causation_id = h->causation_id;
    memcpy(e.prev_hash, prev_hash, 32);
    memcpy(e.event_hash, event_hash, 32);
    e.wall_ms = wall;
    e.offset = s->wsize + frame_at;
    e.length = (uint32_t)(s->wbuf.len - frame_at);
    e.segment_id = (uint32_t)s->wseg;
    e.entity = ent->id;
    e.scope = scp->id;
    e.clock = ent->next_clock;
    e.kind = ev->kind;
    e.flags = h->flags;
    uint64_t seq = s->ix.count;
    if (!undo_push(undo, ent)) {
      st = bp__fail(BP_ENOMEM, "out of memory planning an append");
      break;
    }
    if ((st = bp__scan_set(&s->scan, seq, e.kind, e.clock, e.entity, e.scope)) ||
        (st = bp__index_push(&s->ix, &e)))
      break;
    ent->next_clock++;
    ent->last_wall_ms = wall;
    memcpy(ent->last_hash, event_hash, 32);
    if (rcpt) set_receipt(rcpt, &e, seq);
  }
  if (dup != stack_dup) free(dup);
  return st;
}

/* ------------------------------------------------------------- frames */

/* Batches up to this size are worked out exactly; a larger one whose
 * expectations name an entity it appends to earlier counts as writing
 * (planning decides), to keep this check linear. */
#define EXACT_BATCH 64

static bp_status diverged(size_t i, const bp__frame *fr, const char *fmt, ...) BP__PRINTF(3, 4);
static bp_status diverged(size_t i, const bp__frame *fr, const char *fmt, ...) {
  char why[160], id[33];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  bp_id_to_hex(fr->header.event_id, id);
  return bp__fail(BP_EDIVERGED, "append frames: frame %zu (event %s, entity %.*s): %s", i, id,
                  (int)(fr->entity_len > 64 ? 64 : fr->entity_len), fr->entity, why);
}

/* Plans the frames of a bp_append_frames call: each is copied as it is,
 * once its place is shown to be the one it had in its source: an id not
 * here yet, its entity's next clock, and a chain continuing its entity's. */
static bp_status plan_frames(bp_store *s, bp__req *req, undo_log *undo) {
  bp_status st = BP_OK;
  for (size_t i = 0; i < req->n && !st; i++) {
    const bp__verbatim *v = &req->frames[i];
    const bp__frame *fr = &v->fr;
    uint64_t seq;
    if (bp__index_find_id(&s->ix, fr->header.event_id, s->ix.count, &seq)) {
      st = diverged(i, fr, "the store already holds this event (global sequence %" PRIu64 ")", seq);
      break;
    }
    bp__name *ent, *scp;
    if ((st = bp__index_intern(&s->ix, fr->entity, fr->entity_len, &ent)) ||
        (st = bp__index_intern(&s->ix, fr->scope, fr->scope_len, &scp)))
      break;
    bp__index_entity_head(&s->ix, ent);
    uint32_t clock = fr->header.position.sequence;
    if (clock != ent->next_clock) {
      st = diverged(i, fr, "its clock is %" PRIu32 ", the entity's next here is %" PRIu32, clock, ent->next_clock);
      break;
    }
    static const uint8_t zeros[32];
    if (fr->has_chain && memcmp(fr->chain.prev_hash, ent->next_clock ? ent->last_hash : zeros, 32) != 0) {
      st = diverged(i, fr, "its prev_hash is not the event hash of the entity's last event here");
      break;
    }
    size_t frame_at = s->wbuf.len;
    bp__buf_append(&s->wbuf, v->bytes, v->len);
    if (s->wbuf.oom) {
      st = bp__fail(BP_ENOMEM, "out of memory planning frames");
      break;
    }
    bp__ientry e;
    bp__entry_from_frame(&e, fr, ent->id, scp->id, s->wseg, s->wsize + frame_at, v->len);
    seq = s->ix.count;
    if (!undo_push(undo, ent)) {
      st = bp__fail(BP_ENOMEM, "out of memory planning frames");
      break;
    }
    if ((st = bp__scan_set(&s->scan, seq, e.kind, e.clock, e.entity, e.scope)) ||
        (st = bp__index_push(&s->ix, &e)))
      break;
    ent->next_clock++;
    if (e.wall_ms > ent->last_wall_ms) ent->last_wall_ms = e.wall_ms;
    memcpy(ent->last_hash, e.event_hash, 32);
    if (req->outs) set_receipt(&req->outs[i], &e, seq);
  }
  return st;
}

/* Whether planning would write a bp_append_frames request: not when a frame
 * repeats an id here, or when the first frame of an entity does not take its
 * next clock (a refused request then creates no segment). */
static bool frames_would_write(bp_store *s, const bp__req *r) {
  if (r->n > EXACT_BATCH) return true;
  for (size_t j = 0; j < r->n; j++) {
    const bp__frame *fr = &r->frames[j].fr;
    uint64_t seq;
    if (bp__index_find_id(&s->ix, fr->header.event_id, s->ix.count, &seq)) return false;
    bool first = true;
    for (size_t k = 0; k < j && first; k++)
      first = r->frames[k].fr.entity_len != fr->entity_len ||
              memcmp(r->frames[k].fr.entity, fr->entity, fr->entity_len) != 0;
    if (!first) continue;
    bp__name *ent = bp__index_find_name(&s->ix, fr->entity, fr->entity_len);
    if (ent) bp__index_entity_head(&s->ix, ent);
    if (fr->header.position.sequence != (ent ? ent->next_clock : 0)) return false;
  }
  return true;
}

static void finish(bp__req *r, bp_status st) {
  r->status = st;
  if (st) r->err = *bp_last_error();
}

/* Whether an event's compare-and-swap expectation holds against the index as
 * it is, after `earlier` events of its own batch to the same entity (the
 * entity's name is looked up, never interned). */
static bool expectation_holds(bp_store *s, const bp_event_in *ev, uint32_t earlier) {
  const bp_append_options *o = &ev->opts;
  if (o->expect == BP_EXPECT_ANY) return true;
  bp__name *ent = bp__index_find_name(&s->ix, ev->coord.entity, strlen(ev->coord.entity));
  if (ent) bp__index_entity_head(&s->ix, ent);
  uint64_t next = (uint64_t)(ent ? ent->next_clock : 0) + earlier;
  if (o->expect == BP_EXPECT_EMPTY) return next == 0;
  return next != 0 && next - 1 == o->expected_sequence;
}


/* Whether a request would write an event if it were planned against the
 * index as it is. A request is all or nothing: one failed expectation and
 * it writes nothing. */
static bool request_writes(bp_store *s, const bp__req *r) {
  if (r->frames) return frames_would_write(s, r);
  bool any_new = false;
  for (size_t j = 0; j < r->n; j++) {
    const bp_event_in *ev = &r->events[j];
    if (key_repeats(s, r->events, j)) continue;
    uint32_t earlier = 0;
    if (ev->opts.expect != BP_EXPECT_ANY)
      for (size_t k = 0; k < j; k++) {
        const bp_event_in *e = &r->events[k];
        if (strcmp(e->coord.entity, ev->coord.entity) != 0) continue;
        if (r->n > EXACT_BATCH) return true;
        if (!key_repeats(s, r->events, k)) earlier++;
      }
    if (!expectation_holds(s, ev, earlier)) return false;
    any_new = true;
  }
  return any_new;
}

/* Whether any event of the group will be written: not when every request is
 * an idempotent repeat or refused by its expectation, so that a refused
 * append creates no segment. Requests are planned in order and a refused one
 * changes nothing, so until one writes, each sees the index as it is now. */
static bool group_writes(bp_store *s, bp__req **group, size_t ng) {
  for (size_t i = 0; i < ng; i++)
    if (request_writes(s, group[i])) return true;
  return false;
}

/* Returns whether the group was fsynced. */
static bool commit_group(bp_store *s, bp__req **group, size_t ng, hints *h) {
  /* A group of pure idempotent repeats touches no segment (no rotation, no new file). */
  bp_status st = group_writes(s, group, ng) ? writer_ensure_segment(s)
                 : s->failed ? bp__fail(BP_EWRITER, "the writer has failed; reopen the store") : BP_OK;
  if (st) {
    for (size_t i = 0; i < ng; i++) finish(group[i], st);
    return false;
  }
  /* Planning reads the id table slot of each event (a known key) or writes
   * it (a new event), late: start loading the first few now, so that the
   * misses overlap with encoding. */
  for (size_t i = 0, k = 0; i < ng && k < 16; i++)
    for (size_t j = 0; j < group[i]->n && k < 16; j++, k++) bp__index_prefetch_id(&s->ix, group[i]->prep[j].id);
  uint64_t count0 = s->ix.count;
  uint32_t new_events = 0;
  undo_log undo = {0};
  s->wbuf.len = 0;
  s->wbuf.oom = false;
  for (size_t i = 0; i < ng; i++) {
    bp__req *r = group[i];
    size_t undo_mark = undo.len, buf_mark = s->wbuf.len;
    uint64_t ix_mark = s->ix.count;
    st = r->frames ? plan_frames(s, r, &undo) : plan_request(s, r, &undo);
    if (st) {
      bp__forget_from(s, ix_mark);
      undo_to(&undo, undo_mark);
      s->wbuf.len = buf_mark;
      s->wbuf.oom = false;
    }
    finish(r, st);
  }
  new_events = (uint32_t)(s->ix.count - count0);

  bool fsynced = false;
  if (s->wbuf.len > 0) {
    uint64_t at = s->wsize;
    h->gen = s->wgen;
    int rc = segment_write(s, s->wbuf.data, s->wbuf.len, at, h);
    const char *what = "write";
    bool sync_now = !rc && s->unsynced + new_events >= s->cfg.sync_every_n_events;
    if (sync_now) {
      uint64_t t0 = mono_us();
      rc = bp__os_sync(s->wfd, s->cfg.sync_mode);
      s->last_sync_us = mono_us() - t0;
      what = s->cfg.sync_mode == BP_SYNC_DATA ? "fdatasync" : "fsync";
    }
    if (rc) {
      /* A full disk refused the frames before any became visible, and left
       * the segment as it was: the appends fail, the writer goes on (once
       * space is freed, the next append succeeds). Anything else, or any
       * failed flush, leaves the segment in doubt: the writer restarts. */
      bool full = !sync_now && (rc == ENOSPC || rc == EDQUOT);
      if (full) what = "write (no space left; nothing was written, the store goes on)";
      st = bp__fail_errno(BP_EIO, rc, "%s to segment %06" PRIu64 " at offset %" PRIu64 " failed", what,
                          s->wseg, at);
      bp_error err = *bp_last_error();
      bp__forget_from(s, count0);
      undo_to(&undo, 0);
      if (!full) writer_failed(s, at, err.message);
      for (size_t i = 0; i < ng; i++)
        if (group[i]->status == BP_OK) {
          group[i]->status = BP_EIO;
          group[i]->err = err;
        }
    } else {
      s->write_groups++;
      s->fsyncs += sync_now;
      s->wsize += s->wbuf.len;
      if (sync_now) synced(s);
      else start_writeback(s, h);
      s->unsynced = sync_now ? 0 : s->unsynced + new_events;
      bp__segment_readable(s, s->wseg, s->wsize);
      bp__index_publish(&s->ix);
      if (sync_now) atomic_store(&s->durable, s->ix.count);
      bp__writer_publish_head(s);
      bp__notify(s, count0, s->ix.count);
      fsynced = sync_now;
    }
  }
  free(undo.items);
  return fsynced;
}

/* ------------------------------------------------------------- the queue */

/*
 * Gathering a durable group. When every group pays an fsync, appenders fall
 * into cohorts: those woken by one group's completion are still preparing
 * their next append when the next leader takes the queue, so each group holds
 * about half of the active appenders. Before taking a group that will be
 * fsynced, the leader therefore waits until as many appends are queued as
 * the last group held (gather_until), while they keep arriving: in slices of
 * GATHER_SLICE_US, stopping at the first slice in which none arrived, and
 * after half the last fsync's duration (at most 1 ms) in any case. Arrivals
 * wake it only when the count is reached: each wake is a switch of threads,
 * and in a virtual machine often the wake of an idle processor. A lone
 * appender (the last group held one append and nothing else waits) never
 * waits. Called with qlock held.
 */
#define GATHER_SLICE_US 25

static void deadline_in(struct timespec *t, uint64_t us) {
  clock_gettime(CLOCK_MONOTONIC, t);
  t->tv_nsec += (long)(us * 1000);
  t->tv_sec += t->tv_nsec / 1000000000;
  t->tv_nsec %= 1000000000;
}

static void gather(bp_store *s, size_t max) {
  if (s->cfg.sync_every_n_events != 1 || s->closing || s->last_sync_us == 0) return;
  if (s->qlen >= max || (s->last_group <= 1 && s->qlen <= 1)) return;
  uint64_t budget = s->last_sync_us / 2 < 1000 ? s->last_sync_us / 2 : 1000;
  /* Everyone of the last group is back: nobody else is likely to come. */
  size_t cohort = s->last_group < max ? s->last_group : max;
  s->gather_until = cohort;
  for (uint64_t waited = 0; waited < budget && !s->closing && s->qlen < cohort; waited += GATHER_SLICE_US) {
    size_t before = s->qlen;
    struct timespec until;
    deadline_in(&until, GATHER_SLICE_US);
    while (s->qlen < cohort && !s->closing)
      if (pthread_cond_timedwait(&s->qarrive, &s->qlock, &until) != 0) break;
    if (s->qlen == before) break; /* a quiet slice: everyone active has arrived */
  }
  s->gather_until = 0;
}

/*
 * Leading and waiting. The caller that finds no leader leads (lead): it
 * takes groups off the queue and commits them until the queue is empty, or,
 * once its own append is in, until a group was fsynced. Next to an fsync,
 * what the writer's state in one CPU's cache saves is nothing; and a leader
 * that stayed on would leave its own next append out of every group: with
 * eight durable appenders, groups of at most seven, and the leader's thread
 * falling behind the others, to append its last events alone after they
 * had finished. So it hands over: a caller still waiting in the queue takes
 * the lead.
 *
 * A waiting caller (wait_committed) first spins for up to BP__SPIN_NS, when
 * a CPU is free for it (spin_slots): a leader commits an append in a few
 * microseconds, while sleeping and being woken costs about as much again on
 * each side, more in a virtual machine. Then it parks on s->committed, which
 * moves on after every group and whenever a leader leaves, with one wake for
 * every parked caller (wake_waiters): a group's callers neither queue for a
 * lock nor wait for a wake each on their way out. A caller woken while its
 * append is still queued parks again, or leads if nobody does.
 */
#define BP__SPIN_NS 50000

static void lead(bp_store *s, bp__req *own);

static void wake_waiters(bp_store *s) {
  atomic_fetch_add(&s->committed, 1);
  if (atomic_load(&s->sleepers)) {
    unsigned woken = bp__park_wake_all(&s->committed);
    if (woken) atomic_fetch_sub(&s->sleepers, woken);
  }
}

static void wait_committed(bp_store *s, bp__req *r) {
  if (atomic_fetch_add_explicit(&s->spinners, 1, memory_order_relaxed) < s->spin_slots) {
    uint64_t start = 0;
    /* Only the caller's own record is read at every turn: the store's
     * lines are the leader's to write. */
    for (unsigned i = 1; !atomic_load_explicit(&r->done, memory_order_acquire); i++) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if (i % 64 == 0) {
        if (!atomic_load_explicit(&s->leader, memory_order_relaxed)) break;
        uint64_t t = mono_ns();
        if (!start) start = t;
        else if (t - start > BP__SPIN_NS) break;
      }
    }
  }
  atomic_fetch_sub_explicit(&s->spinners, 1, memory_order_relaxed);
  if (atomic_load_explicit(&r->done, memory_order_acquire)) return;
  /* Counted as a sleeper before the word is read: a leader that found no
   * sleepers had moved the word on before it looked, so the read sees the
   * new value, and done or the leader's leaving with it. */
  for (;;) {
    atomic_fetch_add(&s->sleepers, 1);
    uint32_t seen = atomic_load(&s->committed);
    bool done = atomic_load_explicit(&r->done, memory_order_acquire), led = atomic_load(&s->leader);
    /* A caller counted by the wake was taken off the count by its waker:
     * a thread woken but not yet running does not make the next leader
     * wake again for nothing. */
    if (done || !led || !bp__park_wait(&s->committed, seen)) atomic_fetch_sub(&s->sleepers, 1);
    if (done) return;
    if (!led) {
      pthread_mutex_lock(&s->qlock);
      if (!s->leader && !atomic_load_explicit(&r->done, memory_order_acquire)) lead(s, r);
      pthread_mutex_unlock(&s->qlock);
    }
  }
}

/* Commits the queue, which holds own, with qlock held on entry and on
 * return (see above). */
static void lead(bp_store *s, bp__req *own) {
  atomic_store(&s->leader, true);
  hints pending = {0};
  size_t max = s->cfg.group_commit_max_batch ? s->cfg.group_commit_max_batch : SIZE_MAX;
  bp__req *stack_group[16];
  bp__req **group = stack_group;
  size_t group_cap = 16;
  bool more = true;
  while (more) {
    gather(s, max);
    size_t ng = 0;
    while (s->qhead && ng < max) {
      if (ng == group_cap) {
        size_t cap = group_cap * 2;
        bp__req **ngp = group == stack_group ? malloc(cap * sizeof *ngp) : realloc(group, cap * sizeof *ngp);
        if (!ngp) break;
        if (group == stack_group) memcpy(ngp, stack_group, sizeof stack_group);
        group = ngp;
        group_cap = cap;
      }
      bp__req *r = s->qhead;
      s->qhead = r->next;
      if (!s->qhead) s->qtail = NULL;
      s->qlen--;
      group[ng++] = r;
    }
    s->last_group = ng;
    /* Appends drained by bp_close beyond its limit are refused. */
    size_t refused_from = ng;
    if (s->closing) {
      uint32_t left = s->cfg.shutdown_drain_limit > s->drained ? s->cfg.shutdown_drain_limit - s->drained : 0;
      if (ng > left) refused_from = left;
      s->drained += (uint32_t)(refused_from);
    }
    pthread_cond_broadcast(&s->qspace);
    pthread_mutex_unlock(&s->qlock);

    for (size_t i = refused_from; i < ng; i++) {
      bp__fail(BP_ESHUTDOWN, "append: the store closed before this append was written");
      finish(group[i], BP_ESHUTDOWN);
    }
    pthread_mutex_lock(&s->wlock);
    hints h = {0};
    bool fsynced = commit_group(s, group, refused_from, &h);
    pthread_mutex_unlock(&s->wlock);
    merge_hints(&pending, &h);

    /* Once done is set its caller may return at once: a record is not
     * touched after that. */
    for (size_t i = 0; i < ng; i++) atomic_store_explicit(&group[i]->done, true, memory_order_release);
    pthread_mutex_lock(&s->qlock);
    more = s->qhead && !(fsynced && atomic_load_explicit(&own->done, memory_order_relaxed));
    if (!more) {
      atomic_store(&s->leader, false);
      pthread_cond_broadcast(&s->qidle);
    }
    /* The woken take qlock to append again: not while the wake holds it. */
    pthread_mutex_unlock(&s->qlock);
    wake_waiters(s);
    if (more) pthread_mutex_lock(&s->qlock);
  }
  if (group != stack_group) free(group);
  /* Another caller may commit now while this one gives the hints its groups
   * called for. */
  give_hints(s, &pending);
  pthread_mutex_lock(&s->qlock);
}

/* Works out what an event's append needs that no lock protects: its content
 * hash, its id and correlation (its own id when none is given), and the parts
 * of its frame (all but the timestamp, position, flags and prev_hash, which
 * the commit decides). */
static bp_status prepare(const bp_event_in *ev, bp__prep *p) {
  bp_compute_hash(ev->payload, ev->len, p->hash);
  const bp_append_options *o = &ev->opts;
  p->id = bp_id_is_nil(o->idempotency_key) ? bp_id_v7() : o->idempotency_key;
  p->correlation = bp_id_is_nil(o->correlation_id) ? p->id : o->correlation_id;
  bp__frame f;
  memset(&f, 0, sizeof f);
  f.header.event_id = p->id;
  f.header.correlation_id = p->correlation;
  f.header.causation_id = o->causation_id;
  memcpy(f.header.content_hash, p->hash, 32);
  f.payload = ev->payload;
  f.payload_len = ev->len;
  f.entity = ev->coord.entity;
  f.entity_len = strlen(ev->coord.entity);
  f.scope = ev->coord.scope;
  f.scope_len = strlen(ev->coord.scope);
  f.has_chain = true;
  memcpy(f.chain.event_hash, p->hash, 32);
  return bp__frame_parts_encode(&p->parts, &f);
}

static void free_prep(bp__prep *prep, size_t n, bp__prep *inline_prep) {
  for (size_t i = 0; i < n; i++) bp__frame_parts_free(&prep[i].parts);
  if (prep != inline_prep) free(prep);
}

/* Queues req and waits until a leader (this thread, or another) committed
 * or refused it. */
static bp_status queue_and_wait(bp_store *s, bp__req *req) {
  pthread_mutex_lock(&s->qlock);
  while (!s->closing && s->qlen >= s->cfg.writer_queue_capacity) pthread_cond_wait(&s->qspace, &s->qlock);
  if (s->closing) {
    pthread_mutex_unlock(&s->qlock);
    return bp__fail(BP_ESHUTDOWN, "append: the store is closing");
  }
  if (s->qtail) s->qtail->next = req;
  else s->qhead = req;
  s->qtail = req;
  s->qlen++;
  if (s->gather_until && s->qlen >= s->gather_until) pthread_cond_signal(&s->qarrive);

  if (s->leader) {
    pthread_mutex_unlock(&s->qlock);
    wait_committed(s, req);
  } else {
    lead(s, req);
    pthread_mutex_unlock(&s->qlock);
  }
  if (req->status) bp__set_error(&req->err);
  return req->status;
}

static bp_status submit_counted(bp_store *s, const bp_event_in *events, size_t n, bool is_batch,
                                bool library, bp_append_receipt *outs) {
  if (s->readonly) return bp__fail(BP_EREADONLY, "the store was opened read-only");
  if (n == 0) return BP_OK;
  for (size_t i = 0; i < n; i++) {
    const bp_event_in *ev = &events[i];
    bp_status st = bp_coord_validate(&ev->coord);
    if (st) return is_batch ? bp__fail_context("batch event %zu", i) : st;
    if (!ev->payload && ev->len > 0) return bp__fail(BP_EINVAL, "append: payload is NULL but len is %zu", ev->len);
    if (!library && (st = bp__kind_check_appendable(ev->kind, "append")))
      return is_batch ? bp__fail_context("batch event %zu", i) : st;
    if (ev->len > s->cfg.max_payload_bytes)
      return bp__fail(BP_ELIMIT, "append: payload of %zu bytes exceeds max_payload_bytes (%" PRIu64 ")%s",
                      ev->len, s->cfg.max_payload_bytes, is_batch ? " in a batch" : "");
    if (ev->opts.expect > BP_EXPECT_SEQUENCE)
      return bp__fail(BP_EINVAL, "append: unknown expect mode %u", ev->opts.expect);
    if (ev->opts.flags & BP_FLAG_BATCH_MEMBER)
      return bp__fail(BP_EINVAL, "append: flag 0x10 (BP_FLAG_BATCH_MEMBER) is reserved for batches");
    if (s->cfg.group_commit_max_batch != 1 && bp_id_is_nil(ev->opts.idempotency_key))
      return bp__fail(BP_EIDEMPOTENCY_REQUIRED,
                      "append: group_commit_max_batch is %u, so every append needs an idempotency key",
                      s->cfg.group_commit_max_batch);
  }
  bp__prep one_prep[1];
  bp__prep *prep = n == 1 ? one_prep : malloc(n * sizeof *prep);
  if (!prep) return bp__fail(BP_ENOMEM, "out of memory preparing a batch");
  for (size_t i = 0; i < n; i++) {
    bp_status st = prepare(&events[i], &prep[i]);
    if (st) {
      free_prep(prep, i, one_prep);
      return st;
    }
  }

  bp__req req;
  memset(&req, 0, sizeof req);
  req.events = events;
  req.n = n;
  req.prep = prep;
  req.outs = outs;
  req.is_batch = is_batch;
  bp_status st = queue_and_wait(s, &req);
  free_prep(prep, n, one_prep);
  return st;
}

/* bp_coord_validate's rules for a coordinate inside a frame (not NUL-terminated). */
static bp_status frame_coord_check(const char *p, size_t n, const char *what) {
  if (n == 0) return bp__fail(BP_ECOORD, "coordinate: %s is empty", what);
  if (n > BP_MAX_COORD_LEN) return bp__fail(BP_ECOORD, "coordinate: %s is longer than %u bytes", what, BP_MAX_COORD_LEN);
  size_t bad = bp__utf8_invalid_at((const uint8_t *)p, n);
  if (bad != SIZE_MAX) return bp__fail(BP_ECOORD, "coordinate: %s is not valid UTF-8 (offset %zu)", what, bad);
  return BP_OK;
}

/* Checks and decodes the frames of bp_append_frames on the caller's thread,
 * then commits them as one request. */
static bp_status submit_frames_counted(bp_store *s, const bp_frame_in *frames, size_t n, bp_append_receipt *outs) {
  if (s->readonly) return bp__fail(BP_EREADONLY, "the store was opened read-only");
  if (n == 0) return BP_OK;
  bp__verbatim *v = calloc(n, sizeof *v);
  bp__prep *prep = calloc(n, sizeof *prep);
  bp_status st = v && prep ? BP_OK : bp__fail(BP_ENOMEM, "out of memory for %zu frames", n);
  for (size_t i = 0; i < n && !st; i++) {
    bp__buf scratch;
    bp__buf_init(&scratch);
    bp__frame *fr = &v[i].fr;
    if (!frames[i].data) st = bp__fail(BP_EINVAL, "append frames: frame %zu is NULL", i);
    else st = bp__frame_check_whole(frames[i].data, frames[i].len, &scratch, fr);
    bp__buf_free(&scratch);
    if (st) {
      st = bp__fail_context("append frames: frame %zu", i);
      break;
    }
    fr->payload = NULL; /* it may have lived in scratch */
    v[i].bytes = frames[i].data;
    v[i].len = (uint32_t)frames[i].len;
    prep[i].id = fr->header.event_id;
    if ((st = frame_coord_check(fr->entity, fr->entity_len, "entity")) ||
        (st = frame_coord_check(fr->scope, fr->scope_len, "scope")))
      st = bp__fail_context("append frames: frame %zu", i);
    else if (fr->payload_len > s->cfg.max_payload_bytes)
      st = bp__fail(BP_ELIMIT, "append frames: frame %zu: payload of %zu bytes exceeds max_payload_bytes (%" PRIu64
                    ")", i, fr->payload_len, s->cfg.max_payload_bytes);
  }
  if (!st && (v[n - 1].fr.header.flags & BP_FLAG_BATCH_MEMBER))
    st = bp__fail(BP_EINVAL, "append frames: the last frame is a member of a batch that continues after it "
                  "(BP_FLAG_BATCH_MEMBER): give the batch whole");
  if (!st) {
    bp__req req;
    memset(&req, 0, sizeof req);
    req.frames = v;
    req.n = n;
    req.prep = prep;
    req.outs = outs;
    req.is_batch = n > 1;
    st = queue_and_wait(s, &req);
  }
  free(v);
  free(prep);
  return st;
}

/* Every append call is counted while it runs (appending), so that bp_close
 * frees the store only after the last caller, committed or refused, has let
 * go of it: a caller still leaves qlock after its append was committed. A
 * call that starts once bp_close has begun is refused at the door. */
static bool enter_append(bp_store *s) {
  atomic_fetch_add_explicit(&s->appending, 1, memory_order_seq_cst);
  /* Paired with bp_close, which sets shut and then waits for appending to
   * reach 0: either close sees this call counted and waits for it, or this
   * call sees shut and leaves without touching the store's resources. */
  if (atomic_load_explicit(&s->shut, memory_order_seq_cst)) {
    atomic_fetch_sub_explicit(&s->appending, 1, memory_order_release);
    bp__fail(BP_ESHUTDOWN, "append: the store is closing or closed");
    return false;
  }
  return true;
}

static void leave_append(bp_store *s) { atomic_fetch_sub_explicit(&s->appending, 1, memory_order_release); }

static bp_status submit(bp_store *s, const bp_event_in *events, size_t n, bool is_batch, bool library,
                        bp_append_receipt *outs) {
  if (!enter_append(s)) return BP_ESHUTDOWN;
  bp_status st = submit_counted(s, events, n, is_batch, library, outs);
  leave_append(s);
  return st;
}

bp_status bp_append_frames(bp_store *s, const bp_frame_in *frames, size_t n, bp_append_receipt *outs) {
  if (!s || (!frames && n)) return bp__fail(BP_EINVAL, "append frames: NULL argument");
  if (!enter_append(s)) return BP_ESHUTDOWN;
  bp_status st = submit_frames_counted(s, frames, n, outs);
  leave_append(s);
  return st;
}

/* ------------------------------------------------------------- the API */

bp_status bp_append_with(bp_store *s, const bp_coord *coord, bp_kind kind, const void *payload,
                         size_t len, const bp_append_options *opts, bp_append_receipt *out) {
  if (!s || !coord) return bp__fail(BP_EINVAL, "append: NULL store or coordinate");
  bp_event_in ev;
  memset(&ev, 0, sizeof ev);
  ev.coord = *coord;
  ev.kind = kind;
  ev.payload = payload;
  ev.len = len;
  if (opts) ev.opts = *opts;
  return submit(s, &ev, 1, false, false, out);
}

bp_status bp_append(bp_store *s, const bp_coord *coord, bp_kind kind, const void *payload, size_t len,
                    bp_append_receipt *out) {
  return bp_append_with(s, coord, kind, payload, len, NULL, out);
}

static bp_status append_caused(bp_store *s, const bp_coord *coord, bp_kind kind, const void *payload, size_t len,
                               bp_id correlation_id, bp_id causation_id, bp_id key, bp_append_receipt *out) {
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.correlation_id = correlation_id;
  o.causation_id = causation_id;
  o.idempotency_key = key;
  return bp_append_with(s, coord, kind, payload, len, &o, out);
}

bp_status bp_append_reaction(bp_store *s, const bp_coord *coord, bp_kind kind, const void *payload,
                             size_t len, bp_id correlation_id, bp_id causation_id, bp_append_receipt *out) {
  return append_caused(s, coord, kind, payload, len, correlation_id, causation_id, BP_ID_NIL, out);
}

bp_status bp__append_own(bp_store *s, const bp_coord *coord, bp_kind kind, const void *payload, size_t len,
                         bp_id correlation_id, bp_id causation_id, bp_append_receipt *out) {
  return append_caused(s, coord, kind, payload, len, correlation_id, causation_id, bp_id_v7(), out);
}

bp_status bp_append_json(bp_store *s, const bp_coord *coord, bp_kind kind, const char *json,
                         bp_append_receipt *out) {
  if (!json) return bp__fail(BP_EINVAL, "append: JSON text is NULL");
  uint8_t *mp;
  size_t len;
  bp_status st = bp_json_to_msgpack(json, strlen(json), &mp, &len);
  if (st) return st;
  st = bp_append(s, coord, kind, mp, len, out);
  bp_free(mp);
  return st;
}

bp_status bp_apply_transition(bp_store *s, const bp_coord *coord, const bp_transition *t,
                              const bp_append_options *opts, bp_append_receipt *out) {
  if (!t) return bp__fail(BP_EINVAL, "bp_apply_transition: transition is NULL");
  return bp_append_with(s, coord, t->kind, t->payload, t->len, opts, out);
}

bp_status bp_append_batch(bp_store *s, const bp_event_in *events, size_t n, bp_append_receipt *outs) {
  if (!s || (!events && n)) return bp__fail(BP_EINVAL, "append batch: NULL argument");
  return submit(s, events, n, true, false, outs);
}

bp_status bp__append_batch_library(bp_store *s, const bp_event_in *events, size_t n, bp_append_receipt *outs) {
  return submit(s, events, n, true, true, outs);
}

bp_status bp__writer_sync(bp_store *s) {
  if (s->failed) return bp__fail(BP_EWRITER, "the writer has failed; reopen the store");
  if (s->wfd < 0) return BP_OK;
  int rc = bp__os_sync(s->wfd, s->cfg.sync_mode);
  synced(s);
  if (rc) {
    bp_status st = bp__fail_errno(BP_EIO, rc, "fsync of segment %06" PRIu64 " failed", s->wseg);
    /* Acknowledged frames stay; the segment is abandoned for a fresh one. */
    writer_failed(s, s->wsize, bp_last_error()->message);
    return st;
  }
  s->unsynced = 0;
  atomic_store(&s->durable, s->ix.count);
  return BP_OK;
}

bp_status bp_sync(bp_store *s) {
  if (!s) return bp__fail(BP_EINVAL, "bp_sync: NULL store");
  if (s->readonly) return bp__fail(BP_EREADONLY, "the store was opened read-only");
  pthread_mutex_lock(&s->wlock);
  bp_status st = bp__writer_sync(s);
  pthread_mutex_unlock(&s->wlock);
  return st;
}
