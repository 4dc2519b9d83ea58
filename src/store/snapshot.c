/*
 * snapshot.c - bp_snapshot: a consistent copy of a store while it runs.
 *
 * What to copy is decided in one moment: which segments, which of them are
 * sealed, and how many bytes of the others hold the events of the view
 * being copied. In the writer's process that is under the writer lock, and
 * the view lock (shared) keeps a compaction from replacing segments during
 * the copy; sealed segments never change, so linking or copying them later
 * is safe, and of the active segment only the recorded prefix is copied.
 * A read-only handle (a follower: another process writes) copies what it has
 * indexed: each segment is opened in that moment and checked to be the file
 * the handle read (the log epoch in the lowest one's header, sizes), and the
 * copy reads those descriptors, so a compaction in the writer's process
 * afterwards cannot change what is copied; one before makes the handle stale
 * (BP__ESTALE here: follow.c refreshes and tries again).
 * The copy has no index: its first open builds one. A snapshot that fails
 * removes what it made, so it can be tried again.
 */
#include "store/store_impl.h"
#include "store/os.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>

typedef struct snap_seg {
  uint64_t id;
  int fd;              /* the file as decided on, or -1 (opened later by name) */
  bool whole;          /* sealed: link or copy the whole file */
  uint64_t size;       /* else: copy this many bytes */
} snap_seg;

typedef struct snap_progress {
  bp_progress_fn fn;
  void *ctx;
  uint64_t done, total;
} snap_progress;

static int copy_fd(int in, const char *to, uint64_t size, bool whole, snap_progress *p) {
  int rc = 0;
  if (whole) {
    struct stat st;
    if (bp__os_table.fstat(in, &st) != 0) rc = errno ? errno : EIO;
    else size = (uint64_t)st.st_size;
  }
  int out = rc ? -1 : bp__os_table.open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (!rc && out < 0) rc = errno ? errno : EIO;
  enum { CHUNK = 1 << 20 };
  uint8_t *buf = rc ? NULL : malloc(CHUNK);
  if (!rc && !buf) rc = ENOMEM;
  for (uint64_t off = 0; off < size && !rc;) {
    size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
    rc = bp__os_read_all(in, buf, n, off);
    if (rc == -1) rc = EIO; /* shorter than recorded: cannot happen for acknowledged frames */
    struct iovec iov = {buf, n};
    if (!rc) rc = bp__os_write_all(out, &iov, 1, off);
    off += n;
    p->done += n;
    if (p->fn && !rc) p->fn(p->done, p->total, p->ctx);
  }
  if (!rc) rc = bp__os_sync(out, 0);
  free(buf);
  if (out >= 0) bp__os_table.close(out);
  return rc;
}

/* Whether the segment file open as fd ends in a SIDX trailer: sealed, so it
 * never grows again and a hard link to it stays a copy of this moment. The
 * newest segment of a store closed with the persistent index is not (its
 * next read-write open appends to it), though a read-only handle reads it as
 * immutable. */
static bool fd_ends_sealed(int fd, uint64_t *size) {
  struct stat st;
  uint8_t tail[4];
  bool sealed = bp__os_table.fstat(fd, &st) == 0 && st.st_size >= 4 &&
                bp__os_read_all(fd, tail, 4, (uint64_t)st.st_size - 4) == 0 && memcmp(tail, "SIDX", 4) == 0;
  *size = sealed ? (uint64_t)st.st_size : 0;
  return sealed;
}

/* Whether path names the file open as fd (a link by name links that file). */
static bool same_file(const char *path, int fd) {
  struct stat a, b;
  return stat(path, &a) == 0 && bp__os_table.fstat(fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Undoes a snapshot that failed: removes the segment files it may have made
 * (the first n of segs) and dest itself when this call created it. */
static void remove_partial(const char *dest, const snap_seg *segs, size_t n, bool created) {
  for (size_t i = 0; i < n; i++) {
    char to[4200];
    snprintf(to, sizeof to, "%s/%06" PRIu64 ".fbat", dest, segs[i].id);
    (void)bp__os_table.unlink(to);
  }
  if (created) (void)bp__os_table.rmdir(dest);
}

static void segs_close(snap_seg *segs, size_t n) {
  for (size_t i = 0; segs && i < n; i++)
    if (segs[i].fd >= 0) bp__os_table.close(segs[i].fd);
  free(segs);
}

/* The writer's handle: every segment, the active one up to its acknowledged
 * frames (wlock held). */
static snap_seg *plan_writer(bp_store *s, size_t *n) {
  pthread_mutex_lock(&s->seg_lock);
  *n = s->nsegs;
  snap_seg *segs = malloc(sizeof *segs * (*n ? *n : 1));
  for (size_t i = 0; segs && i < *n; i++) {
    const bp__segment *g = &s->segs[i];
    bool active = s->wfd >= 0 && g->id == s->wseg;
    segs[i] = (snap_seg){g->id, -1, g->sealed && !active, active ? s->wsize : 0};
  }
  pthread_mutex_unlock(&s->seg_lock);
  return segs;
}

/* Where the frames of segment id that the index holds end (0: none). */
static uint64_t indexed_end(const bp_store *s, uint64_t id) {
  uint64_t lo = 0, hi = s->ix.count;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (bp__index_at(&s->ix, mid)->segment_id <= id) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0 || bp__index_at(&s->ix, lo - 1)->segment_id != id) return 0;
  const bp__ientry *e = bp__index_at(&s->ix, lo - 1);
  return e->offset + e->length;
}

/* A read-only handle: the segments holding the events it indexed, each
 * opened now and checked to be what it read (wlock held: no refresh meanwhile).
 * BP__ESTALE: the files are no longer those (a compaction since). */
static bp_status plan_reader(bp_store *s, snap_seg **out, size_t *n) {
  pthread_mutex_lock(&s->seg_lock);
  size_t k = s->nsegs;
  uint64_t *ids = malloc(sizeof *ids * (k ? k : 1));
  for (size_t i = 0; ids && i < k; i++) ids[i] = s->segs[i].id;
  pthread_mutex_unlock(&s->seg_lock);
  snap_seg *segs = malloc(sizeof *segs * (k ? k : 1));
  if (!ids || !segs) {
    free(ids);
    free(segs);
    return bp__fail(BP_ENOMEM, "bp_snapshot: out of memory");
  }
  bp_status st = BP_OK;
  size_t m = 0;
  bool first = true;
  for (size_t i = 0; i < k && !st; i++) {
    uint64_t end = indexed_end(s, ids[i]);
    if (end == 0) continue; /* holds none of the events: not needed */
    bp__segfile f;
    if ((st = bp__segfile_open(s, ids[i], &f))) {
      if (bp_last_error()->sys_errno == ENOENT) st = bp__fail(BP__ESTALE, "bp_snapshot: segment %06" PRIu64
                                                               " is gone (compacted since)", ids[i]);
      break;
    }
    bool stale = f.fd < 0 || f.size < end || (first && f.created_ns != atomic_load(&s->log_epoch));
    first = false;
    /* Sealed, with the frames the handle read: the file whole (its trailer,
     * read by the open above, says where the frames end). */
    bool whole = !stale && f.has_trailer && bp__get_le64(f.trailer) == end;
    segs[m++] = (snap_seg){ids[i], f.fd, whole, whole ? f.size : end};
    f.fd = -1; /* kept open in segs */
    bp__segfile_close(&f);
    if (stale) st = bp__fail(BP__ESTALE, "bp_snapshot: segment %06" PRIu64 " is not the file this handle read "
                             "(compacted since)", ids[i]);
  }
  free(ids);
  if (st) {
    segs_close(segs, m);
    return st;
  }
  *out = segs;
  *n = m;
  return BP_OK;
}

static bp_status snapshot_locked(bp_store *s, const char *dest, bp_progress_fn fn, void *ctx);

bp_status bp__snapshot(bp_store *s, const char *dest, bp_progress_fn fn, void *ctx) {
  if (!s || !dest || !*dest) return bp__fail(BP_EINVAL, "bp_snapshot: NULL argument");
  /* Shared: a compaction does not replace segments while they are copied. */
  bp__view_enter(s);
  bp_status st = snapshot_locked(s, dest, fn, ctx);
  bp__view_leave(s);
  return st;
}

static bp_status snapshot_locked(bp_store *s, const char *dest, bp_progress_fn fn, void *ctx) {
  char src_real[PATH_MAX], dest_parent[PATH_MAX];
  if (!realpath(s->dir, src_real)) return bp__fail_errno(BP_EIO, errno, "bp_snapshot: %s", s->dir);
  /* The destination (or, if it does not exist yet, its parent) must lie outside the store. */
  char probe[PATH_MAX];
  snprintf(probe, sizeof probe, "%s", dest);
  char *slash = strrchr(probe, '/');
  const char *parent = slash ? (slash == probe ? "/" : (*slash = 0, probe)) : ".";
  if (!realpath(parent, dest_parent)) return bp__fail_errno(BP_EINVAL, errno, "bp_snapshot: %s", dest);
  size_t sl = strlen(src_real);
  if (strncmp(dest_parent, src_real, sl) == 0 && (dest_parent[sl] == 0 || dest_parent[sl] == '/'))
    return bp__fail(BP_EINVAL, "bp_snapshot: %s is inside the store", dest);
  char dest_real[PATH_MAX];
  if (realpath(dest, dest_real) && strcmp(dest_real, src_real) == 0)
    return bp__fail(BP_EINVAL, "bp_snapshot: %s is the store itself", dest);
  bool created = bp__os_table.mkdir(dest, 0700) == 0;
  if (!created) {
    if (errno != EEXIST) return bp__fail_errno(BP_EIO, errno, "bp_snapshot: create %s", dest);
    DIR *d = opendir(dest);
    if (!d) return bp__fail_errno(BP_EIO, errno, "bp_snapshot: open %s", dest);
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
    closedir(d);
    if (!empty) return bp__fail(BP_EINVAL, "bp_snapshot: %s is not empty", dest);
  }

  /* What to copy, decided in one moment. */
  snap_seg *segs = NULL;
  size_t n = 0;
  bp_status st = BP_OK;
  pthread_mutex_lock(&s->wlock);
  if (s->readonly) st = plan_reader(s, &segs, &n);
  else if (!(segs = plan_writer(s, &n))) st = bp__fail(BP_ENOMEM, "bp_snapshot: out of memory");
  pthread_mutex_unlock(&s->wlock);
  if (st) {
    remove_partial(dest, NULL, 0, created);
    return st;
  }

  snap_progress prog = {fn, ctx, 0, 0};
  for (size_t i = 0; i < n && !st; i++) {
    if (segs[i].fd < 0) {
      char from[4200];
      bp__segment_path(s, segs[i].id, from, sizeof from);
      segs[i].fd = bp__os_table.open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
      if (segs[i].fd < 0) st = bp__fail_errno(BP_EIO, errno, "bp_snapshot: open %s", from);
    }
    uint64_t sealed_size;
    if (!st && segs[i].whole && !fd_ends_sealed(segs[i].fd, &sealed_size)) {
      /* Unsealed, yet not this handle's to append to: copied as it is. */
      segs[i].whole = false;
      struct stat sb;
      segs[i].size = bp__os_table.fstat(segs[i].fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    } else if (!st && segs[i].whole) {
      segs[i].size = sealed_size;
    }
    prog.total += segs[i].size;
  }
  size_t tried = 0;
  for (size_t i = 0; i < n && !st; i++, tried++) {
    char from[4200], to[4200];
    bp__segment_path(s, segs[i].id, from, sizeof from);
    snprintf(to, sizeof to, "%s/%06" PRIu64 ".fbat", dest, segs[i].id);
    int rc = 0;
    if (segs[i].whole && same_file(from, segs[i].fd) && bp__os_table.link(from, to) == 0) {
      prog.done += segs[i].size;
      if (fn) fn(prog.done, prog.total, ctx);
    } else {
      /* A sealed segment where links do not work, or an unsealed one: the
       * active segment up to its acknowledged frames, an abandoned one
       * (after a writer restart) as it is. */
      rc = copy_fd(segs[i].fd, to, segs[i].size, segs[i].whole, &prog);
    }
    if (rc) st = bp__fail_errno(BP_EIO, rc, "bp_snapshot: segment %06" PRIu64, segs[i].id);
  }
  int rc = st ? 0 : bp__os_sync_dir(dest);
  if (rc) st = bp__fail_errno(BP_EIO, rc, "bp_snapshot: fsync of directory %s", dest);
  /* A directory this call made is an entry of its parent: until the parent
   * is flushed, a power cut may lose the whole snapshot. */
  if (!st && created && (rc = bp__os_sync_dir(dest_parent)))
    st = bp__fail_errno(BP_EIO, rc, "bp_snapshot: fsync of directory %s", dest_parent);
  /* Nothing half made is left behind: a failed snapshot can be retried. */
  if (st) remove_partial(dest, segs, tried, created);
  segs_close(segs, n);
  return st;
}
