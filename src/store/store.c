/*
 * store.c - configuration, opening (with recovery), closing, statistics.
 *
 * Opening a store, in order:
 *   1. validate the configuration (nothing is created before this passes);
 *   2. create the directory (0700) and take the lock file (flock, exclusive);
 *   3. list the NNNNNN.fbat segments; anything else is left alone (logged);
 *   4. map the persistent index (index/) when it is enabled and usable, or
 *      restore the crate's index.ckpt, then load the segments after what it
 *      covers; otherwise load every segment (its SIDX footer when present
 *      and consistent, else a frame scan);
 *   5. with the persistent index, the writer goes on with the newest segment
 *      when it is unsealed; otherwise it starts a new one, id = highest + 1,
 *      at the first append.
 */
#include "store/store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

void bp_config_init(bp_config *cfg, const char *data_dir) {
  memset(cfg, 0, sizeof *cfg);
  cfg->data_dir = data_dir;
  cfg->segment_max_bytes = 256ull << 20;
  cfg->sync_every_n_events = 1000;
  cfg->fd_budget = 64;
  cfg->writer_queue_capacity = 4096;
  cfg->broadcast_capacity = 8192;
  cfg->cache_map_size_bytes = 1ull << 30;
  cfg->restart_policy.kind = BP_RESTART_ONCE;
  cfg->restart_policy.max_restarts = 1;
  cfg->shutdown_drain_limit = 1024;
  cfg->writer_stack_size = 1u << 20;
  cfg->query_threads = 2;
  cfg->sync_mode = BP_SYNC_ALL;
  cfg->group_commit_max_batch = 1;
  cfg->index_layout = BP_INDEX_AOS;
  cfg->enable_checkpoint = true;
  cfg->max_payload_bytes = 64ull << 20;
}

static bp_status validate(const bp_config *c) {
  if (!c) return bp__fail(BP_ECONFIG, "config: NULL");
  if (!c->data_dir || !*c->data_dir) return bp__fail(BP_ECONFIG, "config: data_dir is empty");
  if (strlen(c->data_dir) > 3800) return bp__fail(BP_ECONFIG, "config: data_dir is too long");
  if (c->segment_max_bytes == 0) return bp__fail(BP_ECONFIG, "config: segment_max_bytes must be above 0");
  if (c->sync_every_n_events == 0) return bp__fail(BP_ECONFIG, "config: sync_every_n_events must be above 0");
  if (c->writer_queue_capacity == 0) return bp__fail(BP_ECONFIG, "config: writer_queue_capacity must be above 0");
  if (c->fd_budget == 0) return bp__fail(BP_ECONFIG, "config: fd_budget must be above 0");
  if (c->broadcast_capacity == 0) return bp__fail(BP_ECONFIG, "config: broadcast_capacity must be above 0");
  if (c->query_threads == 0) return bp__fail(BP_ECONFIG, "config: query_threads must be above 0 (1: the caller alone)");
  if (c->max_payload_bytes == 0 || c->max_payload_bytes > UINT32_MAX - 1024)
    return bp__fail(BP_ECONFIG, "config: max_payload_bytes must be between 1 and the u32 frame limit");
  if (c->sync_mode != BP_SYNC_ALL && c->sync_mode != BP_SYNC_DATA)
    return bp__fail(BP_ECONFIG, "config: sync_mode is not BP_SYNC_ALL or BP_SYNC_DATA");
  if ((unsigned)c->index_layout > BP_INDEX_SOAOS) return bp__fail(BP_ECONFIG, "config: unknown index_layout");
  if (c->restart_policy.kind != BP_RESTART_ONCE && c->restart_policy.kind != BP_RESTART_BOUNDED)
    return bp__fail(BP_ECONFIG, "config: unknown restart_policy kind");
  if (c->restart_policy.kind == BP_RESTART_BOUNDED && c->restart_policy.within_ms == 0)
    return bp__fail(BP_ECONFIG, "config: restart_policy.within_ms must be above 0 for BP_RESTART_BOUNDED");
  return BP_OK;
}

/* ---------------------------------------------------------------- open */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static bool is_store_file(const char *name) {
  static const char *const known[] = {".", "..", BP__LOCK_FILE, BP__CHECKPOINT_FILE, BP__CHECKPOINT_TMP,
                                      BP__COMPACT_INTENT, "cursors", "cache", BP__IX_DIR, BP__RETIRED_FILE,
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
  if (!st && s->readonly && bp__follow_cap(s, &s->fpos.segment, &s->fpos.end)) {
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
    if (s->readonly) bp__follow_opened(s);
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

static bp_status recover(bp_store *s) {
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

static bp_status open_store(const bp_config *cfg, bp_cache *cache, bool readonly, bool no_index, bp_store **out) {
  if (out) *out = NULL;
  bp_status st = validate(cfg);
  if (st) return st;
  if (!out) return bp__fail(BP_EINVAL, "bp_open: out is NULL");
  bp_store *s = calloc(1, sizeof *s);
  if (!s) return bp__fail(BP_ENOMEM, "out of memory for the store");
  s->cfg = *cfg;
  s->dir = strdup(cfg->data_dir);
  s->readonly = readonly;
  s->lock_fd = -1;
  s->wfd = -1;
  s->head.fd = -1;
  s->cache = cache;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  s->spin_slots = cpus > 1 && cfg->sync_every_n_events != 1 ? (uint32_t)(cpus - 1) : 0;
  pthread_mutex_init(&s->seg_lock, NULL);
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(&s->qlock, &ma);
  pthread_mutex_init(&s->wlock, &ma);
  pthread_mutexattr_destroy(&ma);
  pthread_mutex_init(&s->hint_lock, NULL);
  pthread_mutex_init(&s->sub_lock, NULL);
  pthread_mutex_init(&s->compact_lock, NULL);
  pthread_mutex_init(&s->cursor_files_lock, NULL);
  pthread_mutex_init(&s->ixlock, NULL);
  pthread_cond_init(&s->ixcond, NULL);
  pthread_rwlock_init(&s->view_lock, NULL);
  pthread_cond_init(&s->qspace, NULL);
  pthread_cond_init(&s->qidle, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->qarrive, &ca);
  pthread_condattr_destroy(&ca);
  bp__buf_init(&s->wbuf);
  if (!s->dir) { st = bp__fail(BP_ENOMEM, "out of memory"); goto fail; }
  if (cfg->enable_checkpoint && !no_index) {
    size_t len = strlen(s->dir) + sizeof "/" BP__IX_DIR;
    if (!(s->ixdir = malloc(len))) { st = bp__fail(BP_ENOMEM, "out of memory"); goto fail; }
    snprintf(s->ixdir, len, "%s/%s", s->dir, BP__IX_DIR);
  }
  if ((st = bp__index_init(&s->ix))) goto fail;
  if ((st = bp__scan_init(&s->scan, cfg->index_layout))) goto fail;

  if (!readonly) {
    if (bp__os_table.mkdir(s->dir, 0700) != 0 && errno != EEXIST) {
      st = bp__fail_errno(BP_EIO, errno, "create directory %s", s->dir);
      goto fail;
    }
    char lock[4096];
    snprintf(lock, sizeof lock, "%s/%s", s->dir, BP__LOCK_FILE);
    s->lock_fd = bp__os_table.open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s->lock_fd < 0) {
      st = bp__fail_errno(BP_EIO, errno, "open lock file %s", lock);
      goto fail;
    }
    if (bp__os_table.flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      st = err == EWOULDBLOCK ? bp__fail(BP_ELOCKED, "%s is locked by another open store", s->dir)
                              : bp__fail_errno(BP_EIO, err, "lock %s", lock);
      goto fail;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/%s", s->dir, BP__CHECKPOINT_TMP);
    bp__os_table.unlink(tmp); /* a checkpoint write that a crash interrupted */
  } else {
    struct stat sb;
    if (stat(s->dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
      st = bp__fail_errno(BP_EIO, errno ? errno : ENOTDIR, "open %s read-only", s->dir);
      goto fail;
    }
  }
  /* Before recovery, which asks whether retention ever ran. */
  st = bp__retired_load(s->dir, &s->retired);
  if (st == BP_ECORRUPT) {
    /* It only spares repeats: without it, a repeat of a retired key writes
     * its event again, as it would past the window. */
    bp__log(s, BP_LOG_WARN, "%s; the keys of events retention dropped are forgotten", bp_last_error()->message);
    st = BP_OK;
  }
  if (st) goto fail;
  if ((st = recover(s))) goto fail;
  if (!readonly) {
    /* With the persistent index, the newest segment, left unsealed by a
     * close or a crash, takes the next appends: a process that appends a
     * few events and closes writes those and the index's changes, not a new
     * segment, a footer and a directory entry each time (nor leaves a file
     * behind per run). The index state records where its frames end, which
     * keeps damage in it from passing for a torn tail (segment.c); without
     * the index, the segment is sealed as before. */
    uint64_t id, first, frames_end;
    if (s->ixon && bp__segment_take_newest_fix(s, &id, &first, &frames_end) &&
        (st = bp__writer_adopt(s, id, first, frames_end)))
      goto fail;
    if ((st = bp__segment_fix_footers(s))) goto fail;
  }
  /* A first build is kept at once: a crash would otherwise waste it. An
   * index.ckpt (the crate's) stays as it is: appends only make it old, and
   * both the crate and this library read the log after its watermark. */
  if (s->ixon && s->open_path != BP_OPEN_INDEX && (st = bp__ixstore_persist(s))) goto fail;
  if (s->ixon && s->ckpt_unusable) {
    /* A checkpoint that was not believed (damaged, lying, or cut inside a
     * batch) would only be read and refused again, by this library and the
     * crate: the persistent index replaces it. */
    char ck[4096];
    snprintf(ck, sizeof ck, "%s/%s", s->dir, BP__CHECKPOINT_FILE);
    if (bp__os_table.unlink(ck) == 0) bp__os_sync_dir(s->dir);
  }
  if (!readonly) {
    bp__head_rec hr;
    bp__writer_head_record(s, &hr);
    bp__head_attach_writer(s, &hr);
  }
  if ((st = bp__ixstore_start(s))) goto fail;
  /* Helpers for large reads: one thread fewer than asked (the caller is
   * one), at most one per CPU; without memory for them, callers work alone. */
  uint32_t threads = cpus > 0 && (long)cfg->query_threads > cpus ? (uint32_t)cpus : cfg->query_threads;
  s->helpers = malloc(sizeof *s->helpers);
  if (s->helpers) bp__pool_init(s->helpers, threads - 1, cfg->writer_stack_size);
  bp__results_store_opened();
  *out = s;
  return BP_OK;

fail:;
  bp_error saved = *bp_last_error();
  s->cache = NULL; /* bp_open_with_cache frees it */
  bp__ixstore_detach_quietly(s);
  if (s->head.writer) bp__head_detach(&s->head);
  bp__head_free(&s->head);
  bp__segments_free(s);
  if (s->ix.chunks) bp__index_free(&s->ix);
  bp__scan_free(&s->scan);
  if (s->lock_fd >= 0) bp__os_table.close(s->lock_fd);
  if (s->wfd >= 0) bp__os_table.close(s->wfd); /* a segment adopted for appends */
  bp__buf_free(&s->wbuf);
  pthread_mutex_destroy(&s->compact_lock);
  pthread_mutex_destroy(&s->cursor_files_lock);
  pthread_mutex_destroy(&s->ixlock);
  pthread_cond_destroy(&s->ixcond);
  pthread_rwlock_destroy(&s->view_lock);
  free(s->footer_fixes);
  free(s->ix_segs);
  bp__retired_free(&s->retired);
  free(s->ixdir);
  free(s->dir);
  free(s);
  bp__set_error(&saved);
  return st;
}

bp_status bp_open(const bp_config *cfg, bp_store **out) { return open_store(cfg, NULL, false, false, out); }

bp_status bp_open_with_cache(const bp_config *cfg, bp_cache *cache, bp_store **out) {
  bp_status st = open_store(cfg, cache, false, false, out);
  if (st) bp_cache_free(cache);
  return st;
}

bp_status bp_open_with_lmdb_cache(const bp_config *cfg, bp_store **out) {
  if (out) *out = NULL;
  bp_status st = validate(cfg);
  if (st) return st;
  if (bp__os_table.mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST)
    return bp__fail_errno(BP_EIO, errno, "create directory %s", cfg->data_dir);
  char path[4096];
  snprintf(path, sizeof path, "%s/cache", cfg->data_dir);
  bp_cache *cache;
  if ((st = bp_cache_lmdb_open(path, (size_t)cfg->cache_map_size_bytes, &cache))) return st;
  return bp_open_with_cache(cfg, cache, out);
}

bp_status bp_open_readonly(const bp_config *cfg, bp_store **out) {
  return open_store(cfg, NULL, true, false, out);
}

bp_status bp__open_readonly_unindexed(const bp_config *cfg, bp_store **out) {
  return open_store(cfg, NULL, true, true, out);
}


/* ---------------------------------------------------------------- close */

/* Closed handles.
 *
 * docs/API.md promises that an append arriving once bp_close has begun fails
 * BP_ESHUTDOWN. A thread cannot know whether its call arrives before or
 * after bp_close returns, so the handle's own memory must outlive the close:
 * bp_close frees everything the store holds but the bp_store record itself,
 * which stays here, its shut flag set, until CLOSED_KEPT later closes have
 * pushed it out (or the process exits). A call on a handle closed longer ago
 * than that is a use after free, as it is in any C library. */
#define CLOSED_KEPT 1024

static pthread_mutex_t closed_lock = PTHREAD_MUTEX_INITIALIZER;
static bp_store *closed_ring[CLOSED_KEPT];
static size_t closed_next;

static void keep_closed(bp_store *s) {
  pthread_mutex_lock(&closed_lock);
  bp_store *old = closed_ring[closed_next];
  closed_ring[closed_next] = s;
  closed_next = (closed_next + 1) % CLOSED_KEPT;
  pthread_mutex_unlock(&closed_lock);
  free(old);
}

__attribute__((destructor)) static void free_closed(void) {
  pthread_mutex_lock(&closed_lock);
  for (size_t i = 0; i < CLOSED_KEPT; i++) {
    free(closed_ring[i]);
    closed_ring[i] = NULL;
  }
  pthread_mutex_unlock(&closed_lock);
}

bp_status bp_close(bp_store *s) {
  if (!s) return BP_OK;
  if (atomic_exchange_explicit(&s->shut, true, memory_order_seq_cst))
    return bp__fail(BP_EINVAL, "bp_close: the store was already closed");
  bp_status st = BP_OK;
  if (!s->readonly) {
    pthread_mutex_lock(&s->qlock);
    s->closing = true;
    pthread_cond_broadcast(&s->qspace);
    while (s->leader || s->qhead) pthread_cond_wait(&s->qidle, &s->qlock);
    pthread_mutex_unlock(&s->qlock);
  }
  /* Callers whose appends were just committed or refused are still on their
   * way out (writer.c, submit); later ones stop at shut. */
  while (atomic_load_explicit(&s->appending, memory_order_acquire) != 0) usleep(50);
  if (!s->readonly) {
    pthread_mutex_lock(&s->wlock);
    /* Left unsealed only where the index state will say where it ends. */
    if (s->wfd >= 0) st = s->ixon ? bp__writer_finish(s) : bp__writer_seal(s);
    pthread_mutex_unlock(&s->wlock);
    /* Once the segment's frames are durable, the index's state may claim
     * every event. Nothing changed, nothing is written. */
    bp_status ix = st ? BP_OK : bp__ixstore_close(s);
    if (!st) st = ix;
  }
  bp__ixstore_detach_quietly(s);
  if (s->readonly) {
    bp__follow_stop(s);
  } else {
    /* The final record (what close made durable), then the lock goes. */
    if (s->head.writer) {
      bp__head_rec hr;
      bp__writer_head_record(s, &hr);
      bp__head_publish(&s->head, &hr);
    }
    bp__head_detach(&s->head);
  }
  bp_error saved = *bp_last_error();
  if (s->helpers) {
    bp__pool_stop(s->helpers);
    free(s->helpers);
    s->helpers = NULL;
  }
  bp__subs_close(s);
  bp__writer_free(s);
  bp__segments_free(s);
  bp__index_free(&s->ix);
  bp__scan_free(&s->scan);
  bp__retired_free(&s->retired);
  if (s->cache) {
    bp_cache_sync(s->cache);
    bp_cache_free(s->cache);
    s->cache = NULL;
  }
  if (s->lock_fd >= 0) bp__os_table.close(s->lock_fd);
  s->lock_fd = -1;
  pthread_mutex_destroy(&s->seg_lock);
  pthread_mutex_destroy(&s->qlock);
  pthread_mutex_destroy(&s->wlock);
  pthread_mutex_destroy(&s->hint_lock);
  pthread_mutex_destroy(&s->sub_lock);
  pthread_mutex_destroy(&s->compact_lock);
  pthread_mutex_destroy(&s->cursor_files_lock);
  pthread_mutex_destroy(&s->ixlock);
  pthread_cond_destroy(&s->ixcond);
  pthread_rwlock_destroy(&s->view_lock);
  for (size_t i = 0; i < s->nremaps; i++) free(s->remaps[i].dropped);
  free(s->remaps);
  s->remaps = NULL;
  s->nremaps = 0;
  pthread_cond_destroy(&s->qspace);
  pthread_cond_destroy(&s->qidle);
  pthread_cond_destroy(&s->qarrive);
  free(s->ixdir);
  s->ixdir = NULL;
  free(s->ix_segs);
  s->ix_segs = NULL;
  free(s->dir);
  s->dir = NULL;
  keep_closed(s);
  bp__results_store_closed();
  if (st) bp__set_error(&saved);
  return st;
}

/* ---------------------------------------------------------------- stats */

void bp_stats(bp_store *s, bp_store_stats *out) {
  bp__view_enter(s);
  uint64_t n = bp__index_visible(&s->ix);
  bp__view_leave(s);
  out->event_count = n;
  out->global_sequence = n;
}

void bp_diagnostics(bp_store *s, bp_store_diagnostics *out) {
  memset(out, 0, sizeof *out);
  bp__view_enter(s);
  uint64_t n = bp__index_visible(&s->ix);
  out->event_count = n;
  out->global_head = n;
  out->durable_sequence = atomic_load(&s->durable);
  pthread_mutex_lock(&s->seg_lock);
  out->segment_count = s->nsegs;
  pthread_mutex_unlock(&s->seg_lock);
  pthread_mutex_lock(&s->qlock);
  out->queued_appends = s->qlen;
  pthread_mutex_unlock(&s->qlock);
  pthread_mutex_lock(&s->wlock);
  out->active_segment_id = s->wfd >= 0 ? s->wseg : 0;
  out->active_segment_bytes = s->wfd >= 0 ? s->wsize : 0;
  out->writer_restarts = s->restarts;
  out->write_groups = s->write_groups;
  out->fsyncs = s->fsyncs;
  out->writer_failed = s->failed;
  pthread_mutex_unlock(&s->wlock);
  out->torn_bytes_dropped = s->torn_bytes;
  out->batch_frames_dropped = s->batch_frames_dropped;
  out->open_path = s->open_path;
  out->segments_from_sidx = s->from_sidx;
  out->segments_scanned = s->scanned;
  out->read_only = s->readonly;
  out->index_layout = s->cfg.index_layout;
  out->index_tiles = bp__scan_tiles(&s->scan, n);
  if (s->helpers) {
    out->query_helpers = s->helpers->helpers;
    out->helper_chunks = atomic_load_explicit(&s->helpers->helped, memory_order_relaxed);
  }
  uint32_t names = bp__index_name_count(&s->ix);
  for (uint32_t i = 1; i < names; i++) {
    out->entity_count += bp__index_stream_any(&s->ix, BP__STREAM_ENTITY, i, n);
    out->scope_count += bp__index_stream_any(&s->ix, BP__STREAM_SCOPE, i, n);
  }
  bp__view_leave(s);
}
