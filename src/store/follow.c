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

bool bp__follow_cap(bp_store *s, uint64_t *seg, uint64_t *end) {
  bp__head_rec r;
  if (!bp__head_attach_reader(s) || !bp__head_read(&s->head, &r) || !r.live) return false;
  *seg = r.segment;
  *end = r.frames_end;
  return true;
}

void bp__follow_opened(bp_store *s) {
  uint64_t n = s->ix.count;
  if (n == 0) {
    s->fpos.segment = s->fpos.end = 0;
    return;
  }
  const bp__ientry *e = bp__index_at(&s->ix, n - 1);
  s->fpos.segment = e->segment_id;
  s->fpos.end = e->offset + e->length;
}

/* Indexes frames up to the head (seg, end), or with seg UINT64_MAX to the
 * end of the log. BP_EAGAIN-like cases (the segments are not where the head
 * says: a compaction replaced them) come back as *moved. */
static bp_status follow_to(bp_store *s, uint64_t hseg, uint64_t hend, bool *moved) {
  bool live = hseg != UINT64_MAX;
  uint64_t seg = s->fpos.segment, end = s->fpos.end;
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
    bp_status st = bp__segment_follow(s, seg, end, upto, &got, &created);
    if (st) {
      /* A segment gone or replaced under the follower is the mark of a
       * compaction, which the caller checks against the head. */
      *moved = live;
      return st;
    }
    if (atomic_load(&s->log_epoch) == 0) atomic_store(&s->log_epoch, created);
    s->fpos.segment = seg;
    s->fpos.end = got;
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

static bp_status refresh_locked(bp_store *s, uint64_t *added) {
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
    st = follow_to(s, live ? r.segment : UINT64_MAX, live ? r.frames_end : UINT64_MAX, &moved);
    if (!st && live && s->ix.count != r.count && !moved)
      st = bp__fail(BP_ECORRUPT, "%s: the writer's head counts %" PRIu64 " events up to segment %06" PRIu64
                    " offset %" PRIu64 ", the log holds %" PRIu64 " there", s->dir, r.count, r.segment,
                    r.frames_end, s->ix.count);
  }
  if (moved) {
    /* The log is no longer the one this handle numbered (a compaction, or
     * a writer that lost events its head had published): reopen it. */
    bp__head_rec again;
    if (bp__head_read(&s->head, &again) && again.live && again.epoch == epoch && again.count >= count0 && st)
      return st; /* not moved after all: the error stands */
    return bp__fail(BP_ECORRUPT, "%s: the writer compacted the store (or its log went back) since this handle "
                    "opened it: open it again", s->dir);
  }
  if (s->ix.count > count0) {
    bp__index_publish(&s->ix);
    atomic_store(&s->durable, live && r.durable < s->ix.count ? r.durable : s->ix.count);
    bp__notify(s, count0, s->ix.count);
    *added = s->ix.count - count0;
  }
  return st;
}

bp_status bp_refresh(bp_store *s, uint64_t *added) {
  if (added) *added = 0;
  if (!s) return bp__fail(BP_EINVAL, "bp_refresh: store is NULL");
  if (!s->readonly) return BP_OK; /* the writer's own handle is always current */
  uint64_t n = 0;
  pthread_mutex_lock(&s->wlock);
  bp_status st = refresh_locked(s, &n);
  pthread_mutex_unlock(&s->wlock);
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
}

bp_subscription *bp_subscribe(bp_store *s, const bp_region *r) {
  bp_subscription *sub = bp__subscribe(s, r);
  if (sub && s->readonly) bp__follow_start(s);
  return sub;
}
