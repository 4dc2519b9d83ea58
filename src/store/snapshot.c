/*
 * snapshot.c - bp_snapshot: a consistent copy of a store while it runs.
 *
 * Under the writer lock (briefly) it records which segments exist, which are
 * sealed, and where the active segment's acknowledged frames end. Sealed
 * segments never change, so linking or copying them later is safe; of the
 * active segment only the recorded prefix is copied (later frames, and the
 * footer a later seal writes, lie beyond it). The copy has no checkpoint: the
 * first open rebuilds the index from footers and a scan of the last segment.
 * A snapshot that fails removes what it made, so it can be tried again.
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
  bool whole;          /* sealed: link or copy the whole file */
  uint64_t size;       /* else: copy this many bytes */
} snap_seg;

static int copy_prefix(const char *from, const char *to, uint64_t size, bool whole) {
  int in = bp__os_table.open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (in < 0) return errno ? errno : EIO;
  int rc = 0;
  if (whole) {
    struct stat st;
    if (bp__os_table.fstat(in, &st) != 0) rc = errno ? errno : EIO;
    else size = (uint64_t)st.st_size;
  }
  int out = rc ? -1 : bp__os_table.open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (!rc && out < 0) rc = errno ? errno : EIO;
  enum { CHUNK = 1 << 16 };
  uint8_t *buf = rc ? NULL : malloc(CHUNK);
  if (!rc && !buf) rc = ENOMEM;
  for (uint64_t off = 0; off < size && !rc;) {
    size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
    rc = bp__os_read_all(in, buf, n, off);
    if (rc == -1) rc = EIO; /* shorter than recorded: cannot happen for acknowledged frames */
    struct iovec iov = {buf, n};
    if (!rc) rc = bp__os_write_all(out, &iov, 1, off);
    off += n;
  }
  if (!rc) rc = bp__os_sync(out, 0);
  free(buf);
  bp__os_table.close(in);
  if (out >= 0) bp__os_table.close(out);
  return rc;
}

/* Whether the segment file at path ends in a SIDX trailer: sealed, so it
 * never grows again and a hard link to it stays a copy of this moment. The
 * newest segment of a store closed with the persistent index is not (its
 * next read-write open appends to it), though a read-only handle reads it as
 * immutable. */
static bool ends_sealed(const char *path) {
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return false;
  struct stat st;
  uint8_t tail[4];
  bool sealed = bp__os_table.fstat(fd, &st) == 0 && st.st_size >= 4 &&
                bp__os_read_all(fd, tail, 4, (uint64_t)st.st_size - 4) == 0 && memcmp(tail, "SIDX", 4) == 0;
  bp__os_table.close(fd);
  return sealed;
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

static bp_status snapshot_locked(bp_store *s, const char *dest);

bp_status bp_snapshot(bp_store *s, const char *dest) {
  if (!s || !dest || !*dest) return bp__fail(BP_EINVAL, "bp_snapshot: NULL argument");
  /* Shared: a compaction does not replace segments while they are copied. */
  bp__view_enter(s);
  bp_status st = snapshot_locked(s, dest);
  bp__view_leave(s);
  return st;
}

static bp_status snapshot_locked(bp_store *s, const char *dest) {
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
  pthread_mutex_lock(&s->wlock);
  pthread_mutex_lock(&s->seg_lock);
  size_t n = s->nsegs;
  snap_seg *segs = malloc(sizeof *segs * (n ? n : 1));
  for (size_t i = 0; segs && i < n; i++) {
    const bp__segment *g = &s->segs[i];
    bool active = s->wfd >= 0 && g->id == s->wseg;
    segs[i] = (snap_seg){g->id, g->sealed && !active, active ? s->wsize : 0};
  }
  pthread_mutex_unlock(&s->seg_lock);
  pthread_mutex_unlock(&s->wlock);
  if (!segs) {
    remove_partial(dest, NULL, 0, created);
    return bp__fail(BP_ENOMEM, "bp_snapshot: out of memory");
  }

  bp_status st = BP_OK;
  size_t tried = 0;
  for (size_t i = 0; i < n && !st; i++, tried++) {
    char from[4200], to[4200];
    bp__segment_path(s, segs[i].id, from, sizeof from);
    snprintf(to, sizeof to, "%s/%06" PRIu64 ".fbat", dest, segs[i].id);
    bool active = !segs[i].whole && segs[i].size > 0;
    int rc = 0;
    if (segs[i].whole && ends_sealed(from)) {
      if (bp__os_table.link(from, to) != 0) rc = copy_prefix(from, to, 0, true);
    } else if (segs[i].whole) {
      /* Unsealed, yet not this handle's to append to: copied as it is. */
      rc = copy_prefix(from, to, 0, true);
    } else {
      /* An unsealed segment: the active one up to its acknowledged frames, an
       * abandoned one (after a writer restart) as it is. */
      rc = copy_prefix(from, to, segs[i].size, !active);
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
  free(segs);
  return st;
}
