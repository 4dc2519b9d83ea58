/*
 * follow.c - read-only handles that follow a writer in another process
 * (docs/FOLLOWERS.md).
 *
 * A follower reads what the writer published, and nothing more: the head
 * file (head.c) says where the last published frame ends, and bp_refresh
 * indexes the frames from where this handle stopped up to there, segment
 * after segment, checking each (length, CRC, decoding) as an open does,
 * then publishes them to this handle's readers and subscriptions in one
 * step, so that readers see a gap-free prefix of the log in commit order.
 * With no live writer (none, or one that does not keep the head, like the
 * Rust crate) it reads as far as whole frames go, as an open would.
 *
 * Refreshes are serialized by wlock, which a read-only handle uses for
 * nothing else; readers are not held up (the index publishes new entries by
 * a release store, as the writer's commit does). A subscription on a
 * read-only handle starts a thread that sleeps on the head's futex word and
 * refreshes after each publish, so that bp_sub_recv and bp_sub_fd work as
 * they do in the writer's process.
 */
#include "store/store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

/* The lowest segment id above id in the directory, or 0. */
static uint64_t next_segment(const bp_store *s, uint64_t id) {
  char path[4400];
  struct stat sb;
  bp__segment_path(s, id + 1, path, sizeof path);
  if (id > 0 && stat(path, &sb) == 0) return id + 1; /* the usual case: the writer's next */
  DIR *d = opendir(s->dir);
  if (!d) return 0;
  uint64_t best = 0, v;
  struct dirent *e;
  while ((e = readdir(d)))
    if (bp__segment_parse_name(e->d_name, &v) && v > id && (best == 0 || v < best)) best = v;
  closedir(d);
  return best;
}

/* Indexes frames up to the head (seg, end), or with seg UINT64_MAX to the
 * end of the log. When the segments are not where the head says (a
 * compaction replaced them) *moved says so, with or without an error. */
static bp_status follow_to(bp_store *s, uint64_t hseg, uint64_t hend, bool *moved) {
  bool live = hseg != UINT64_MAX;
  uint64_t seg = s->fpos.segment, end = s->fpos.end;
  int64_t expect = s->fpos.created;
  *moved = false;
  for (;;) {
    if (seg == 0) {
      if (live && hseg == 0) return BP_OK; /* a writer with nothing published */
      if ((seg = next_segment(s, 0)) == 0) {
        *moved = live;
        return BP_OK;
      }
      end = 0;
    }
    if (live && seg > hseg) {
      *moved = true;
      return BP_OK;
    }
    uint64_t upto = live && seg == hseg ? hend : UINT64_MAX, got;
    int64_t created;
    bp_status st = bp__segment_follow(s, seg, end, upto, expect, &got, &created);
    if (st) {
      /* A segment gone or replaced under the follower is the mark of a
       * compaction, which the caller checks against the head. */
      *moved = live || st == BP__ESTALE;
      return st;
    }
    if (atomic_load(&s->log_epoch) == 0) atomic_store(&s->log_epoch, created);
    s->fpos.segment = seg;
    s->fpos.end = got;
    s->fpos.created = created;
    expect = 0; /* segments after it are new to this handle */
    if (upto != UINT64_MAX) return BP_OK;
    uint64_t next = next_segment(s, seg);
    if (next == 0) {
      *moved = live; /* the head names a segment that is not there */
      return BP_OK;
    }
    seg = next;
    end = 0;
  }
}

/* ------------------------------------------------------------ reopening */

/* What recovery fills in: swapped out before a reopen, so that the
 * recovery starts from nothing, and back in should it fail. */
typedef struct handle_state {
  bp__index ix;
  bp__scan scan;
  bp__segment *segs;
  size_t nsegs, segcap;
  uint32_t open_rfds;
  bp__ixseg *ix_segs;
  uint32_t ix_nsegs;
  int64_t log_epoch;
  uint64_t durable, next_segment_id;
  __typeof__(((bp_store *)0)->fpos) fpos;
  bool head_capped;
} handle_state;

#define SWAP(a, b)           \
  do {                       \
    __typeof__(a) t_ = (a);  \
    (a) = (b);               \
    (b) = t_;                \
  } while (0)

/* Exchanges the handle's recovered state with h's (an empty h: the handle
 * is left empty, ready for bp__recover). */
static void state_swap(bp_store *s, handle_state *h) {
  SWAP(s->ix, h->ix);
  SWAP(s->scan, h->scan);
  SWAP(s->segs, h->segs);
  SWAP(s->nsegs, h->nsegs);
  SWAP(s->segcap, h->segcap);
  SWAP(s->open_rfds, h->open_rfds);
  SWAP(s->ix_segs, h->ix_segs);
  SWAP(s->ix_nsegs, h->ix_nsegs);
  SWAP(s->next_segment_id, h->next_segment_id);
  SWAP(s->fpos, h->fpos);
  SWAP(s->head_capped, h->head_capped);
  h->log_epoch = atomic_exchange(&s->log_epoch, h->log_epoch);
  h->durable = atomic_exchange(&s->durable, h->durable);
}

/* Frees what the handle holds after recovery but its index (kept or freed
 * by the caller). */
static void free_but_index(bp_store *s) {
  bp__segments_free(s);
  bp__scan_free(&s->scan);
  free(s->ix_segs);
  s->ix_segs = NULL;
}

/* The positions of the old numbering whose events the new log lacks
 * (increasing): a compaction keeps the order of what it keeps, so a
 * position's new value is the old one less the dropped before it. */
static bp_status dropped_positions(const bp__index *old, const bp__index *now, uint32_t **out, size_t *n) {
  size_t cap = 0, len = 0;
  uint32_t *v = NULL;
  for (uint64_t i = 0; i < old->count; i++) {
    uint64_t seq;
    if (bp__index_find_id(now, bp__index_at(old, i)->event_id, now->count, &seq)) continue;
    if (len == cap) {
      uint32_t *nv = realloc(v, (cap = cap ? cap * 2 : 256) * sizeof *v);
      if (!nv) {
        free(v);
        return bp__fail(BP_ENOMEM, "out of memory carrying positions over a compaction");
      }
      v = nv;
    }
    v[len++] = (uint32_t)i;
  }
  *out = v;
  *n = len;
  return BP_OK;
}

/* When the old index's names are the first names of the new one (a rebase
 * of the same log: the writer's names file numbers them as they came),
 * their strings move to the new index, so that those handed out stay valid
 * and the old index can go whole. */
static bool names_carry_over(bp__index *old, bp__index *now) {
  uint32_t no = bp__index_name_count(old), nn = bp__index_name_count(now);
  if (no > nn) return false;
  for (uint32_t i = 0; i < no; i++) {
    const bp__name *a = bp__index_name(old, i), *b = bp__index_name(now, i);
    if (a->len != b->len || memcmp(a->str, b->str, a->len) != 0) return false;
  }
  for (uint32_t i = 0; i < no; i++) {
    bp__name *a = bp__index_name(old, i), *b = bp__index_name(now, i);
    char *str = a->str;
    a->str = b->str;
    b->str = str;
  }
  return true;
}

/* Reads the directory anew into the handle: the writer compacted the store
 * (the head's epoch moved) or its log went back (it lost events its head had
 * published). Readers wait meanwhile (the view lock, as for a compaction in
 * the writer's process); cursors carry their positions over by the events
 * that stayed (a remap, as a compaction in-process leaves); the strings the
 * handle gave out stay valid (the old index is kept until bp_close). *from:
 * the first position in the new numbering this handle had not seen. On
 * failure the handle is as it was. view_lock (exclusive) and wlock held. */
static bp_status reopen_locked(bp_store *s, bool same_log, uint64_t *from) {
  handle_state old;
  memset(&old, 0, sizeof old);
  state_swap(s, &old);
  bp_status st = bp__index_init(&s->ix);
  if (!st && (st = bp__scan_init(&s->scan, s->cfg.index_layout))) bp__index_free(&s->ix);
  if (st) {
    state_swap(s, &old);
    return st;
  }
  st = bp__recover(s);
  uint64_t old_count = old.ix.count;
  uint32_t *dropped = NULL;
  size_t ndropped = 0;
  bp__grave *g = NULL;
  if (!st && !same_log) st = dropped_positions(&old.ix, &s->ix, &dropped, &ndropped);
  if (!st && same_log && s->ix.count < old_count)
    st = bp__fail(BP_ECORRUPT, "%s: the log holds %" PRIu64 " events, fewer than the %" PRIu64 " this handle read",
                  s->dir, s->ix.count, old_count);
  bp__remap *r = NULL;
  if (!st && !(g = malloc(sizeof *g))) st = bp__fail(BP_ENOMEM, "out of memory reopening %s", s->dir);
  if (!st && ndropped && !(r = realloc(s->remaps, (s->nremaps + 1) * sizeof *r)))
    st = bp__fail(BP_ENOMEM, "out of memory reopening %s", s->dir);
  if (st) {
    free(dropped);
    free(g);
    free_but_index(s);
    bp__index_free(&s->ix);
    state_swap(s, &old);
    return st;
  }
  if (!same_log) {
    uint64_t gen = atomic_load(&s->generation) + 1;
    if (ndropped) {
      s->remaps = r;
      r[s->nremaps++] = (bp__remap){gen, dropped, ndropped};
    } else {
      free(dropped);
    }
    atomic_store(&s->generation, gen);
  }
  /* The old state's files and tables go; its index stays (a grave) unless
   * its names could move to the new one. */
  state_swap(s, &old);
  free_but_index(s);
  state_swap(s, &old);
  if (same_log && names_carry_over(&old.ix, &s->ix)) {
    free(g);
    bp__index_free(&old.ix);
  } else {
    g->ix = old.ix;
    g->next = s->graves;
    s->graves = g;
  }
  uint64_t seen = old_count - ndropped;
  *from = seen < s->ix.count ? seen : s->ix.count;
  bp__log(s, BP_LOG_INFO, "%s: %s: %" PRIu64 " events (%zu gone)", s->dir,
          same_log ? "the writer's index mapped again" : "reopened after the writer replaced its log", s->ix.count,
          ndropped);
  return BP_OK;
}

/* A follower keeps what it followed in memory; past this many events
 * there, it maps the writer's index again when that covers at least half
 * of them, so that its heap stays bounded however long it follows. */
#define REBASE_EVENTS (1u << 18)

static bool rebase_due(bp_store *s) {
  uint64_t mapped = bp__index_runs(&s->ix)->end;
  if (!s->ixdir || s->ix.count - mapped < REBASE_EVENTS) return false;
  bp__ixstate st;
  if (bp__ixstate_read(s->ixdir, &st) != BP_OK) return false;
  uint64_t end = st.nruns ? st.runs[st.nruns - 1].end : 0;
  bool due = st.epoch == atomic_load(&s->log_epoch) && end >= mapped + REBASE_EVENTS / 2 && end <= s->ix.count;
  bp__ixstate_free(&st);
  return due;
}

static bp_status refresh_locked(bp_store *s, uint64_t *added, bool *reopen, bool *rebase) {
  uint64_t count0 = s->ix.count;
  bp__head_attach_reader(s);
  bp__head_rec r;
  bool live = bp__head_read(&s->head, &r) && r.live;
  int64_t epoch = atomic_load(&s->log_epoch);
  bp_status st = BP_OK;
  bool moved = false;
  if (live && ((epoch && r.epoch && r.epoch != epoch) || r.count < count0)) {
    moved = true;
  } else if (live && r.count == count0) {
    return BP_OK;
  } else {
    uint64_t seg0 = s->fpos.segment, end0 = s->fpos.end;
    int64_t created0 = s->fpos.created;
    st = follow_to(s, live ? r.segment : UINT64_MAX, live ? r.frames_end : UINT64_MAX, &moved);
    if (!st && live && s->ix.count != r.count && !moved)
      st = bp__fail(BP_ECORRUPT, "%s: the writer's head counts %" PRIu64 " events up to segment %06" PRIu64
                    " offset %" PRIu64 ", the log holds %" PRIu64 " there", s->dir, r.count, r.segment,
                    r.frames_end, s->ix.count);
    if (st || moved) {
      /* Nothing of a refresh that failed is kept or shown: the handle is
       * as it was (a reopen, if due, reads everything again). */
      bp__forget_from(s, count0);
      s->fpos.segment = seg0;
      s->fpos.end = end0;
      s->fpos.created = created0;
    }
  }
  if (moved) {
    /* The log is no longer the one this handle numbered (a compaction, or
     * a writer that lost events its head had published): reopen it. An
     * error met on the way stands when the head shows no such change. */
    bp__head_rec again;
    if (st && st != BP__ESTALE && bp__head_read(&s->head, &again) && again.live && again.epoch == epoch &&
        again.count >= count0) {
      /* No sign of a new log in the head. During a compaction's renames,
       * before the writer publishes the new epoch, a segment may be
       * missing: not an error, the next refresh sees the new epoch. */
      char intent[4400];
      snprintf(intent, sizeof intent, "%s/%s", s->dir, BP__COMPACT_INTENT);
      struct stat sb;
      return stat(intent, &sb) == 0 ? BP_OK : st;
    }
    *reopen = true;
    return BP_OK;
  }
  if (s->ix.count > count0) {
    bp__index_publish(&s->ix);
    atomic_store(&s->durable, live && r.durable < s->ix.count ? r.durable : s->ix.count);
    bp__notify(s, count0, s->ix.count);
    *added = s->ix.count - count0;
    if (!st && live && rebase_due(s)) *rebase = true;
  }
  return st;
}

bp_status bp_refresh(bp_store *s, uint64_t *added) {
  if (added) *added = 0;
  if (!s) return bp__fail(BP_EINVAL, "bp_refresh: store is NULL");
  if (!s->readonly) return BP_OK; /* the writer's own handle is always current */
  uint64_t n = 0;
  bool reopen = false, rebase = false;
  pthread_mutex_lock(&s->wlock);
  bp_status st = refresh_locked(s, &n, &reopen, &rebase);
  pthread_mutex_unlock(&s->wlock);
  if (reopen || rebase) {
    /* In the lock order (view before wlock); readers wait meanwhile. */
    pthread_rwlock_wrlock(&s->view_lock);
    pthread_mutex_lock(&s->wlock);
    uint64_t before = s->ix.count, from;
    bp_status rst = reopen_locked(s, !reopen, &from);
    if (reopen) st = rst;
    else if (rst) bp__log(s, BP_LOG_WARN, "%s: index not mapped again: %s", s->dir, bp_last_error()->message);
    /* A rebase may find events published since: they are news too. */
    if (!rst && !reopen) from = before;
    if (!rst && s->ix.count > from) {
      bp__notify(s, from, s->ix.count);
      n += s->ix.count - from;
    }
    pthread_mutex_unlock(&s->wlock);
    pthread_rwlock_unlock(&s->view_lock);
  }
  if (added) *added = n;
  return st;
}

/* ------------------------------------------------------------ the thread */

static void *follow_main(void *arg) {
  bp_store *s = arg;
  bp_status last = BP_OK;
  while (!atomic_load(&s->fstop)) {
    pthread_mutex_lock(&s->wlock);
    bp__head_attach_reader(s);
    bp__head h = s->head; /* mapped until the thread is joined */
    pthread_mutex_unlock(&s->wlock);
    uint32_t seen = bp__head_wake_seen(&h);
    bp_status st = bp_refresh(s, NULL);
    if (st && st != last)
      bp__log(s, BP_LOG_WARN, "following %s: %s", s->dir, bp_last_error()->message);
    last = st;
    if (atomic_load(&s->fstop)) break;
    bp__head_wait(&h, seen, h.page ? -1 : BP__HEAD_POLL_MS);
  }
  return NULL;
}

void bp__follow_start(bp_store *s) {
  pthread_mutex_lock(&s->wlock);
  bool start = !s->fthread_started;
  if (start) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    if (s->cfg.writer_stack_size) pthread_attr_setstacksize(&a, s->cfg.writer_stack_size);
    s->fthread_started = pthread_create(&s->fthread, &a, follow_main, s) == 0;
    pthread_attr_destroy(&a);
    if (!s->fthread_started)
      bp__log(s, BP_LOG_WARN, "%s: no thread to follow the writer: subscriptions see new events only after "
              "bp_refresh", s->dir);
  }
  pthread_mutex_unlock(&s->wlock);
}

void bp__follow_stop(bp_store *s) {
  atomic_store(&s->fstop, true);
  pthread_mutex_lock(&s->wlock);
  bool started = s->fthread_started;
  if (started) bp__head_nudge(&s->head);
  pthread_mutex_unlock(&s->wlock);
  if (started) pthread_join(s->fthread, NULL);
  s->fthread_started = false;
  bp__head_free(&s->head);
  while (s->graves) {
    bp__grave *g = s->graves;
    s->graves = g->next;
    bp__index_free(&g->ix);
    free(g);
  }
}

bp_subscription *bp_subscribe(bp_store *s, const bp_region *r) {
  bp_subscription *sub = bp__subscribe(s, r);
  if (sub && s->readonly) bp__follow_start(s);
  return sub;
}

/* ----------------------------------------------------------- live backup */

#define SNAPSHOT_ATTEMPTS 8

bp_status bp_snapshot_with_progress(bp_store *s, const char *dest, bp_progress_fn fn, void *ctx) {
  if (!s || !dest || !*dest) return bp__fail(BP_EINVAL, "bp_snapshot: NULL argument");
  if (!s->readonly) return bp__snapshot(s, dest, fn, ctx);
  /* A follower copies what it has after catching up: everything the writer
   * acknowledged before the call. */
  for (int attempt = 0; attempt < SNAPSHOT_ATTEMPTS; attempt++) {
    bp_status st = bp_refresh(s, NULL);
    if (!st) st = bp__snapshot(s, dest, fn, ctx);
    if (st != BP__ESTALE) return st;
    bp__log(s, BP_LOG_INFO, "%s", bp_last_error()->message);
    usleep(1000u << attempt);
  }
  return bp__fail(BP_EIO, "bp_snapshot: %s was compacted under each of %d attempts to copy it", s->dir,
                  SNAPSHOT_ATTEMPTS);
}

bp_status bp_snapshot(bp_store *s, const char *dest) { return bp_snapshot_with_progress(s, dest, NULL, NULL); }
