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

uint32_t bp_build_features(void) {
  return (BATPAK_WITH_LMDB ? BP_FEATURE_LMDB_CACHE : 0u) | (BATPAK_WITH_SQLITE ? BP_FEATURE_SQLITE_CACHE : 0u);
}

/* ---------------------------------------------------------------- open */

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
  if ((st = bp__recover(s))) goto fail;
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
  free(s->ix_wsegs);
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
  if (!(bp_build_features() & BP_FEATURE_LMDB_CACHE)) /* before anything is created */
    return bp__fail(BP_EUNSUPPORTED, "bp_open_with_lmdb_cache: this build of batpak has no LMDB cache");
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
    bp__writer_publish_head(s);
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
  free(s->ix_wsegs);
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
  memset(out, 0, sizeof *out);
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
