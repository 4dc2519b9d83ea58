/*
 * recover.c - reading a store's directory into an empty index: the segments
 * listed, an interrupted compaction finished (or, read-only, stepped
 * around), the persistent index mapped or the crate's index.ckpt restored
 * when usable, and the log after what they cover loaded from SIDX footers or
 * by frame scans, with the damage rules of segment.c. A read-only handle
 * reads the directory again until it finds it unchanged over the whole
 * read, and beside a live writer reads no further than its head. Used by
 * bp_open (store.c) and by a follower reopening a log a compaction replaced
 * (follow.c).
 */
#include "store/store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>


static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static bool is_store_file(const char *name) {
  static const char *const known[] = {".", "..", BP__LOCK_FILE, BP__CHECKPOINT_FILE, BP__CHECKPOINT_TMP,
                                      BP__COMPACT_INTENT, "cursors", "cache", BP__IX_DIR, BP__RETIRED_FILE, BP__HEAD_FILE,
                                      BP__RETIRED_FILE ".tmp"};
  for (size_t i = 0; i < sizeof known / sizeof *known; i++)
    if (strcmp(name, known[i]) == 0) return true;
  return bp__has_suffix(name, ".fbat" BP__COMPACT_SUFFIX) || bp__has_suffix(name, ".fbat" BP__SEGMENT_NEW_SUFFIX);
}

static bool listed(const uint64_t *ids, size_t n, uint64_t id) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] == id) return true;
  return false;
}

/* Lists segment ids, sorted, without those in hidden (replaced by a
 * compaction that a read-only open cannot finish). */
static bp_status list_segments(bp_store *s, const uint64_t *hidden, size_t nhidden, uint64_t **ids, size_t *n) {
  DIR *d = opendir(s->dir);
  if (!d) return bp__fail_errno(BP_EIO, errno, "open directory %s", s->dir);
  size_t cap = 16, len = 0;
  uint64_t *v = malloc(cap * sizeof *v);
  struct dirent *e;
  while (v && (e = readdir(d))) {
    uint64_t id;
    if (bp__segment_parse_name(e->d_name, &id)) {
      if (listed(hidden, nhidden, id)) continue;
      if (len == cap) {
        uint64_t *nv = realloc(v, (cap *= 2) * sizeof *v);
        if (!nv) { free(v); v = NULL; break; }
        v = nv;
      }
      v[len++] = id;
    } else if (!s->readonly && bp__has_suffix(e->d_name, ".fbat" BP__SEGMENT_NEW_SUFFIX)) {
      /* A segment whose creation a crash interrupted: it never held an event. */
      char path[4400];
      snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
      bp__os_table.unlink(path);
    } else if (!is_store_file(e->d_name)) {
      bp__log(s, BP_LOG_INFO, "ignoring %s/%s: not a store file", s->dir, e->d_name);
    }
  }
  closedir(d);
  if (!v) return bp__fail(BP_ENOMEM, "out of memory listing %s", s->dir);
  qsort(v, len, sizeof *v, cmp_u64);
  *ids = v;
  *n = len;
  return BP_OK;
}

static bp_status segment_size(bp_store *s, uint64_t id, uint64_t *size) {
  char path[4096];
  bp__segment_path(s, id, path, sizeof path);
  struct stat st;
  if (lstat(path, &st) != 0) return bp__fail_errno(BP_EIO, errno, "stat %s", path);
  if (!S_ISREG(st.st_mode))
    return bp__fail(BP_ECORRUPT, "%s is not a regular file (symbolic links are not followed)", path);
  *size = (uint64_t)st.st_size;
  return BP_OK;
}

/* What recovery needs to know of each listed segment before loading any,
 * from its header and trailer: read once per open (survey), for the id
 * table's size, the newest segment holding frames, the log epoch, and the
 * checks of a checkpoint against the segments. */
typedef struct seg_look {
  bool opened;              /* false: the load reports why */
  bool empty;               /* no bytes, or a header cut short */
  bool sealed;              /* ends in a SIDX trailer */
  bool frames;              /* holds anything after its header */
  uint64_t footer_count;    /* events its trailer announces, when they fit the file */
  uint64_t footer_at;       /* where its trailer says the frames end (sealed) */
  int64_t created_ns;
} seg_look;

static bp_status survey(bp_store *s, const uint64_t *ids, size_t n, seg_look **out) {
  seg_look *v = calloc(n ? n : 1, sizeof *v);
  if (!v) return bp__fail(BP_ENOMEM, "out of memory surveying the segments of %s", s->dir);
  for (size_t i = 0; i < n; i++) {
    bp__segfile f;
    if (bp__segfile_open(s, ids[i], &f) != BP_OK) continue;
    uint64_t count = f.has_trailer ? bp__get_le32(f.trailer + 8) : 0;
    v[i] = (seg_look){true, f.size == 0, f.has_trailer, f.fd >= 0 && f.size > f.frames_start,
                      /* a count whose entries cannot fit the file is not believed */
                      count * BP__SIDX_ENTRY_SIZE <= f.size ? count : 0,
                      f.has_trailer ? bp__get_le64(f.trailer) : 0, f.created_ns};
    bp__segfile_close(&f);
  }
  *out = v;
  return BP_OK;
}

/* The place of the newest segment that holds frames, or 0 when none does:
 * the only one a crash may have left with a torn tail. Later ones can only
 * be empty or header-only, as another writer leaves a segment it created
 * before crashing. (One that did not open counts as holding frames: its
 * load reports it.) */
static size_t newest_with_frames(const seg_look *look, size_t n) {
  for (size_t i = n; i-- > 0;)
    if (!look[i].opened || look[i].frames) return i;
  return 0;
}

/* Where the head of a live writer of this log stands: what a read-only
 * open may read. */
static bool head_cap(bp_store *s, uint64_t *seg, uint64_t *end) {
  bp__head_rec r;
  if (!bp__head_attach_reader(s) || !bp__head_read(&s->head, &r) || !r.live) return false;
  *seg = r.segment;
  *end = r.frames_end;
  return true;
}

/* Where the frames a read-only open indexed end: a follower goes on there. */
static void follow_from_here(bp_store *s, const uint64_t *ids, const seg_look *look, size_t nids) {
  uint64_t n = s->ix.count;
  s->fpos.segment = s->fpos.end = 0;
  s->fpos.created = 0;
  if (n == 0) return;
  const bp__ientry *e = bp__index_at(&s->ix, n - 1);
  s->fpos.segment = e->segment_id;
  s->fpos.end = e->offset + e->length;
  /* The header's time tells this file from one a compaction puts in its
   * place: a follower checks it before reading on (follow.c). */
  for (size_t i = 0; i < nids; i++)
    if (ids[i] == e->segment_id) s->fpos.created = look[i].created_ns;
}

/* Loads segments[from..] (the first from watermark offset wm_off). A
 * read-only open beside a live writer reads no further than its head
 * (s->fpos here): what lies past it is not published yet. */
static bp_status load_segments(bp_store *s, const uint64_t *ids, const seg_look *look, size_t n, size_t from,
                               uint64_t wm_off) {
  if (s->head_capped) {
    while (n > from && ids[n - 1] > s->fpos.segment) n--;
    if (s->fpos.segment == 0) n = from;
  }
  if (n - from > 1) {
    /* The id table is sized once for the events the footers announce,
     * rather than doubling segment after segment. */
    uint64_t total = 0;
    for (size_t i = from; i < n; i++) total += look[i].footer_count;
    bp_status st = bp__index_reserve(&s->ix, total);
    if (st) return st;
  }
  size_t newest = newest_with_frames(look, n);
  for (size_t i = from; i < n; i++) {
    bp__segfile f;
    bp_status st = bp__segfile_open(s, ids[i], &f);
    if (st) return st;
    if (s->head_capped && ids[i] == s->fpos.segment && f.size > s->fpos.end && f.fd >= 0) {
      /* Frames after the head may be a group still being written. */
      f.size = (size_t)s->fpos.end;
      f.has_trailer = false;
    }
    bool sidx;
    st = bp__segment_load(s, &f, i == from ? wm_off : 0, i >= newest, &sidx);
    bp__segfile_close(&f);
    if (st) return st;
    if (sidx) s->from_sidx++;
    else s->scanned++;
    /* A persistent index being built writes runs as it goes: memory stays
     * bounded by a segment's events. */
    if (s->ixon && (st = bp__ixstore_drain(s))) return st;
    if (s->ixon && n - from > 1)
      bp__log(s, BP_LOG_INFO, "indexing %s: segment %zu of %zu, %" PRIu64 " events", s->dir, i + 1, n,
              s->ix.count);
  }
  return BP_OK;
}

/* Whether a checkpoint just loaded ends one of its unsealed segments inside
 * an atomic batch: frames flagged BATCH_MEMBER with no closing frame after
 * them, the mark of a batch a crash cut short. This library never writes
 * such a checkpoint (recovery drops the frames), but the crate, which does
 * not know the flag, lists them once it has opened the store. Only the last
 * frame of each unsealed segment the checkpoint covers is read. */
static bool checkpoint_ends_inside_a_batch(bp_store *s, const uint64_t *ids, const seg_look *look, size_t n) {
  uint64_t count = s->ix.count;
  bool inside = false;
  for (size_t i = 0; i < n && !inside; i++) {
    if (!look[i].opened || look[i].empty || look[i].sealed) continue;
    /* The segment's last entry: entries are in segment order. */
    uint64_t lo = 0, hi = count;
    while (lo < hi) {
      uint64_t mid = lo + (hi - lo) / 2;
      if (bp__index_at(&s->ix, mid)->segment_id <= ids[i]) lo = mid + 1;
      else hi = mid;
    }
    if (lo == 0 || bp__index_at(&s->ix, lo - 1)->segment_id != ids[i]) continue;
    const bp__ientry *e = bp__index_at(&s->ix, lo - 1);
    uint8_t *frame = malloc(e->length ? e->length : 1);
    bp__frame fr;
    if (frame && bp__segment_read(s, ids[i], e->offset, frame, e->length) == BP_OK && e->length > BP__FRAME_PREFIX &&
        bp__frame_decode_body(frame + BP__FRAME_PREFIX, e->length - BP__FRAME_PREFIX, NULL, &fr) == BP_OK)
      inside = (fr.header.flags & BP_FLAG_BATCH_MEMBER) != 0;
    free(frame);
  }
  return inside;
}

/* A checkpoint whose CRC holds named a segment that is missing, or events
 * past a segment's end. Either the checkpoint lies, or the segment lost
 * events: it is the segment that tells. One that ends in a SIDX trailer was
 * not cut short (the checkpoint lies: rebuilt from the segments). Otherwise
 * the events are gone, the newest segment's too: a checkpoint only ever
 * describes frames that were fsynced before it was written (bp_close seals
 * first, a compaction syncs the writer first), which no power cut takes.
 * BP_ECORRUPT naming the segment, or with salvage a warning and a rebuild
 * from what is there. */
static bp_status check_evidence(bp_store *s, const uint64_t *ids, const seg_look *look, size_t n) {
  uint64_t id = s->ckpt_evidence.segment, upto = s->ckpt_evidence.upto;
  size_t i = 0;
  while (i < n && ids[i] != id) i++;
  if (i < n && !look[i].opened) {
    /* It did not open: that error is the one to report. */
    bp__segfile f;
    bp_status st = bp__segfile_open(s, id, &f);
    bp__segfile_close(&f);
    if (st) return st;
  }
  const char *what = i == n ? "is missing"
                     : look[i].sealed ? NULL
                     : look[i].empty ? "is empty"
                                     : "has lost its end";
  if (!what) return BP_OK;
  if (s->cfg.salvage) {
    bp__log(s, BP_LOG_WARN, "segment %06" PRIu64 " %s: index.ckpt lists events in it up to offset %" PRIu64
            "; salvage goes on with what the segments hold", id, what, upto);
    return BP_OK;
  }
  return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " %s, yet index.ckpt (its CRC intact) lists events in it up to "
                  "offset %" PRIu64 ": events were lost (open with salvage to keep the rest)", id, what, upto);
}

/* An empty index and scan index again (a persistent index found unusable,
 * or a checkpoint that failed halfway); their files are detached. */
static bp_status index_reset(bp_store *s) {
  bp__index_free(&s->ix);
  bp__scan_free(&s->scan);
  bp_status st = bp__index_init(&s->ix);
  if (!st) st = bp__scan_init(&s->scan, s->cfg.index_layout);
  return st;
}

/* Fresh index files for a read-write store about to index its log. Where
 * they cannot be made (no space, no shared writable mapping), the index is
 * kept in memory, as it is without enable_checkpoint, and the log says why. */
static bp_status start_index_files(bp_store *s) {
  bp_status st = bp__ixstore_create(s);
  s->ixon = st == BP_OK;
  if (st && st != BP_ENOMEM) {
    bp__log(s, BP_LOG_WARN, "%s: the index is kept in memory: %s", s->dir, bp_last_error()->message);
    st = index_reset(s);
  }
  s->ix.freeze = s->ixon;
  return st;
}

static bp_status recover_once(bp_store *s) {
  uint64_t *ids = NULL, *hidden = NULL;
  size_t n = 0, nhidden = 0;
  bool stale_checkpoint = false;
  bp_status st = bp__compact_recover(s, &hidden, &nhidden, &stale_checkpoint);
  if (!st) st = list_segments(s, hidden, nhidden, &ids, &n);
  free(hidden);
  if (st) return st;
  for (size_t i = 0; i < n && !st; i++) {
    uint64_t size = 0;
    if (!(st = segment_size(s, ids[i], &size))) st = bp__segment_add(s, ids[i], true, size);
  }
  if (!st) s->next_segment_id = n ? ids[n - 1] + 1 : 1;
  seg_look *look = NULL;
  if (!st) st = survey(s, ids, n, &look);
  if (!st && n > 0 && look[0].opened) atomic_store(&s->log_epoch, look[0].created_ns);
  /* Beside a live writer of this log, what it published is the log. */
  s->head_capped = false;
  if (!st && s->readonly && head_cap(s, &s->fpos.segment, &s->fpos.end)) {
    bp__head_rec r;
    s->head_capped = bp__head_read(&s->head, &r) && r.live && (n == 0 || r.epoch == atomic_load(&s->log_epoch));
  }
  if (!st && n > 0) bp__ixstore_evidence(s);

  bool restored = false;
  if (!st && s->ixdir && n > 0) {
    /* The persistent index, then the log after what it covers. */
    uint64_t wm_seg = 0, wm_off = 0;
    bp_status ix = bp__ixstore_load(s, &wm_seg, &wm_off);
    if (ix == BP_OK) {
      size_t from = 0;
      while (from < n && ids[from] < wm_seg) from++;
      /* A sealed segment the index covers to its footer has nothing left
       * to load (reading its footer would cost what the index saves). */
      if (from < n && ids[from] == wm_seg && look[from].sealed && look[from].footer_at == wm_off) {
        from++;
        wm_off = 0;
      }
      s->ixon = !s->readonly;
      s->ix.freeze = s->ixon;
      st = load_segments(s, ids, look, n, from, wm_off);
      restored = (st == BP_OK);
      if (restored) s->open_path = BP_OPEN_INDEX;
    } else if (ix == BP_ENOTFOUND) {
      st = index_reset(s);
    } else {
      st = ix;
    }
  }
  if (!st && !restored && s->ixdir && !s->readonly) st = start_index_files(s);
  if (!st && !restored && s->cfg.enable_checkpoint && n > 0 && !stale_checkpoint) {
    uint64_t wm_seg = 0, wm_off = 0;
    bp_status ck = bp__checkpoint_load(s, &wm_seg, &wm_off);
    bool torn_batch = ck == BP_OK && checkpoint_ends_inside_a_batch(s, ids, look, n);
    if (torn_batch) {
      /* Rebuilt from the segments, which drop the interrupted batch: a batch
       * is all or nothing, whoever wrote the checkpoint. Not damage: the
       * crate writes such a checkpoint, not knowing the batch flag. */
      bp__log(s, BP_LOG_INFO, "checkpoint not used: it lists the frames of a batch that a crash cut short (as the "
              "Rust crate writes it); rebuilding the index from the segments");
      s->ckpt_unusable = true;
      ck = BP_ECORRUPT;
    }
    if (ck == BP_OK) {
      size_t from = 0;
      while (from < n && ids[from] < wm_seg) from++;
      st = load_segments(s, ids, look, n, from, wm_off);
      restored = (st == BP_OK);
      if (restored) s->open_path = BP_OPEN_CHECKPOINT;
    } else if (ck == BP_ENOMEM) {
      st = ck; /* a rebuild would need the same memory again */
    } else if (torn_batch) {
      /* logged above */
    } else if (s->ckpt_evidence.segment && (st = check_evidence(s, ids, look, n))) {
      /* events the checkpoint proves were written are gone */
    } else if (ck != BP_ENOTFOUND || bp_last_error()->sys_errno != ENOENT) {
      bp__log(s, BP_LOG_WARN, "checkpoint ignored, rebuilding the index: %s", bp_last_error()->message);
      s->ckpt_unusable = true;
    }
    if (!restored && st == BP_OK) {
      /* Start over from an empty index. */
      st = index_reset(s);
      if (!st && s->ixon) st = start_index_files(s);
      s->from_sidx = s->scanned = 0;
      s->torn_bytes = s->batch_frames_dropped = 0;
      free(s->footer_fixes);
      s->footer_fixes = NULL;
      s->nfooter_fixes = 0;
    }
  }
  if (!st && !restored) {
    st = load_segments(s, ids, look, n, 0, 0);
    s->open_path = s->from_sidx ? BP_OPEN_SIDX : (s->scanned ? BP_OPEN_SCAN : BP_OPEN_EMPTY);
    if (s->ix.count == 0) s->open_path = BP_OPEN_EMPTY;
  }
  if (!st) {
    bp__index_publish(&s->ix);
    atomic_store(&s->durable, s->ix.count);
    if (s->readonly) follow_from_here(s, ids, look, n);
    bp__log(s, BP_LOG_INFO, "opened %s: %" PRIu64 " events in %zu segments", s->dir, s->ix.count, n);
  }
  free(look);
  free(ids);
  return st;
}

/* ------------------------------------------------- read-only, beside a writer */

/* What a directory's files were when a read-only open looked: each segment's
 * id, inode and size (the newest one's size aside: appends grow it), and the
 * compaction intent's and the checkpoint's inode and size. */
typedef struct dir_state {
  uint64_t *v; /* triples: id, inode, size */
  size_t n;
  uint64_t intent[2], ckpt[2];
} dir_state;

static void file_id(const char *dir, const char *name, uint64_t out[2]) {
  char path[4400];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  struct stat st;
  if (stat(path, &st) != 0) out[0] = out[1] = 0;
  else {
    out[0] = (uint64_t)st.st_ino;
    out[1] = (uint64_t)st.st_size;
  }
}

static bp_status dir_state_take(bp_store *s, dir_state *d) {
  memset(d, 0, sizeof *d);
  uint64_t *ids;
  size_t n;
  bp_status st = list_segments(s, NULL, 0, &ids, &n);
  if (st) return st;
  d->v = malloc(sizeof *d->v * 3 * (n ? n : 1));
  if (!d->v) {
    free(ids);
    return bp__fail(BP_ENOMEM, "out of memory listing %s", s->dir);
  }
  for (size_t i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, "%06" PRIu64 ".fbat", ids[i]);
    d->v[3 * i] = ids[i];
    file_id(s->dir, name, &d->v[3 * i + 1]);
    if (i + 1 == n) d->v[3 * i + 2] = 0;
  }
  d->n = n;
  free(ids);
  file_id(s->dir, BP__COMPACT_INTENT, d->intent);
  file_id(s->dir, BP__CHECKPOINT_FILE, d->ckpt);
  return BP_OK;
}

static bool dir_state_same(const dir_state *a, const dir_state *b) {
  return a->n == b->n && memcmp(a->v, b->v, sizeof *a->v * 3 * a->n) == 0 &&
         memcmp(a->intent, b->intent, sizeof a->intent) == 0 && memcmp(a->ckpt, b->ckpt, sizeof a->ckpt) == 0;
}

/* Back to the state before recovery, for another attempt. */
static bp_status recovery_reset(bp_store *s) {
  bp__segments_free(s);
  s->from_sidx = s->scanned = 0;
  s->torn_bytes = s->batch_frames_dropped = 0;
  s->ckpt_unusable = false;
  s->ckpt_evidence.segment = s->ckpt_evidence.upto = 0;
  s->tail_evidence.segment = s->tail_evidence.upto = 0;
  return index_reset(s);
}

/* A read-only open beside a writer may meet a compaction halfway: segments
 * replaced or deleted between the listing and the reading, and so events
 * read twice (old segments and the merged one) or a segment gone. The open
 * therefore compares the directory before and after it read it, and reads
 * again until the two agree: the events are then exactly those of one
 * moment's set of segments. */
#define READONLY_ATTEMPTS 64

bp_status bp__recover(bp_store *s) {
  if (!s->readonly) return recover_once(s);
  for (int attempt = 0;; attempt++) {
    dir_state before, after;
    bp_status st = dir_state_take(s, &before);
    if (st) return st;
    st = recover_once(s);
    bp_error err = *bp_last_error();
    bp_status st2 = dir_state_take(s, &after);
    bool same = !st2 && dir_state_same(&before, &after);
    free(before.v);
    free(after.v);
    if (st2 && !st) return st2;
    if (same) {
      if (st) bp__set_error(&err);
      return st;
    }
    if (attempt + 1 == READONLY_ATTEMPTS)
      return bp__fail(BP_EIO, "%s changed under each of %d attempts to read it (a writer compacting?)", s->dir,
                      READONLY_ATTEMPTS);
    bp__log(s, BP_LOG_INFO, "%s changed while it was read (a compaction?); reading it again", s->dir);
    if ((st = recovery_reset(s))) return st;
    /* A little later each time, up to 10 ms: the changes come in bursts (a
     * compaction renames and deletes a few files), and waiting for one to end
     * costs less than reading the store again under it. */
    usleep((useconds_t)(attempt < 20 ? 500 * (attempt + 1) : 10000));
  }
}

