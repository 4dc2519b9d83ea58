/*
 * cursor.c - pull cursors and durable named cursors.
 *
 * A cursor remembers the global sequence where its next poll starts. A poll
 * picks the narrowest index stream that can serve the region (scope, exact
 * kind or category), finds the position in it by binary search, and examines
 * items from there; without such a stream it examines the log from the
 * position. Every event in [position, visible) that is not in the chosen
 * stream cannot match, so after a poll that found nothing the position moves
 * to `visible`: no event is ever skipped, none is delivered twice.
 *
 * A durable cursor keeps its position in cursors/NAME (cursor_file.c),
 * anchored on the last event it examined, so that it resumes right after
 * that event however compactions renumber the log.
 */
#include "store/cursor_file.h"
#include "store/store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>

#define CURSOR_DIR "cursors"

struct bp_cursor {
  bp_store *store;
  bp_region region;
  char *prefix, *scope;       /* owned copies of the region's strings */
  uint64_t position;
  char *path;                 /* durable: the cursor file */
  uint64_t generation;        /* the store's compaction generation `position` belongs to */
};

static char *dup_or_null(const char *s, bool *oom) {
  if (!s) return NULL;
  char *d = strdup(s);
  if (!d) *oom = true;
  return d;
}

static bp_cursor *cursor_new(bp_store *s, const bp_region *r) {
  if (!s || !r) {
    bp__fail(BP_EINVAL, "bp_cursor_open: NULL argument");
    return NULL;
  }
  bp_cursor *c = calloc(1, sizeof *c);
  bool oom = !c;
  if (c) {
    c->store = s;
    c->generation = atomic_load(&s->generation);
    c->region = *r;
    c->prefix = dup_or_null(r->entity_prefix, &oom);
    c->scope = dup_or_null(r->scope, &oom);
    c->region.entity_prefix = c->prefix;
    c->region.scope = c->scope;
  }
  if (oom) {
    bp_cursor_close(c);
    bp__fail(BP_ENOMEM, "out of memory for a cursor");
    return NULL;
  }
  return c;
}

bp_cursor *bp_cursor_open(bp_store *s, const bp_region *r) { return cursor_new(s, r); }

void bp_cursor_close(bp_cursor *c) {
  if (!c) return;
  free(c->prefix);
  free(c->scope);
  free(c->path);
  free(c);
}

uint64_t bp_cursor_position(const bp_cursor *c) {
  bp__view_enter(c->store);
  uint64_t pos = bp__compact_translate(c->store, c->generation, c->position);
  bp__view_leave(c->store);
  return pos;
}

void bp_cursor_seek(bp_cursor *c, uint64_t position) {
  c->position = position;
  c->generation = atomic_load(&c->store->generation);
}

/* Brings the position into the numbering of the latest compaction (view lock held). */
static void catch_up(bp_cursor *c) {
  uint64_t gen = atomic_load(&c->store->generation);
  if (c->generation == gen) return;
  c->position = bp__compact_translate(c->store, c->generation, c->position);
  c->generation = gen;
}

static uint64_t behind_locked(const bp_cursor *c) {
  uint64_t v = bp__index_visible(&c->store->ix);
  uint64_t pos = bp__compact_translate(c->store, c->generation, c->position);
  return v > pos ? v - pos : 0;
}

uint64_t bp_cursor_behind(const bp_cursor *c) {
  bp__view_enter(c->store);
  uint64_t n = behind_locked(c);
  bp__view_leave(c->store);
  return n;
}

/* The stream that serves the region into *out (false: examine the log
 * itself). An unknown scope or kind yields an empty stream (*empty). */
static bool source(const bp_cursor *c, uint64_t limit, bp__stream *out, bool *empty) {
  const bp__index *ix = &c->store->ix;
  const bp_region *r = &c->region;
  bool have = false;
  *empty = false;
  if (r->scope) {
    const bp__name *nm = bp__index_find_name(ix, r->scope, strlen(r->scope));
    if (!nm) { *empty = true; return false; }
    bp__index_stream(ix, BP__STREAM_SCOPE, nm->id, limit, out);
    have = true;
  }
  if (r->fact == BP_FACT_EXACT || r->fact == BP_FACT_CATEGORY) {
    if (r->fact == BP_FACT_CATEGORY && r->category >= 16) { *empty = true; return false; }
    bp__stream k;
    bp__index_stream(ix, r->fact == BP_FACT_EXACT ? BP__STREAM_KIND : BP__STREAM_CATEGORY,
                     r->fact == BP_FACT_EXACT ? r->kind : r->category, limit, &k);
    if (!have || k.total < out->total) *out = k;
    have = true;
  }
  return have;
}

static bool matches(const bp_cursor *c, uint64_t seq) {
  const bp__index *ix = &c->store->ix;
  const bp__ientry *e = bp__index_at(ix, seq);
  return bp_region_matches(&c->region, bp__index_name(ix, e->entity)->str, bp__index_name(ix, e->scope)->str,
                           e->kind, e->clock);
}

/* Finds up to max matching sequences from the cursor's position; advances it. */
static size_t poll_seqs(bp_cursor *c, uint64_t *out, size_t max) {
  uint64_t limit = bp__index_visible(&c->store->ix);
  size_t got = 0;
  if (c->position >= limit) return 0;
  bool empty;
  bp__stream st;
  bool streamed = source(c, limit, &st, &empty);
  if (empty) {
    c->position = limit;
    return 0;
  }
  if (streamed) {
    /* From the first item at or past the position, piece by piece. */
    uint64_t skip = bp__stream_lower_bound(&st, c->position);
    for (uint32_t k = 0; k < st.n && got < max; k++) {
      const uint32_t *v = st.p[k].v;
      uint32_t n = st.p[k].n;
      if (skip >= n) {
        skip -= n;
        continue;
      }
      for (uint32_t i = (uint32_t)skip; i < n && got < max; i++) {
        if (matches(c, v[i])) out[got++] = v[i];
        c->position = (uint64_t)v[i] + 1;
      }
      skip = 0;
    }
    if (got < max) c->position = limit;
  } else {
    /* Filter the scan index on kind, clock and scope; test the entity prefix
     * on what passes. */
    const bp__index *ix = &c->store->ix;
    const bp_region *r = &c->region;
    bp__scan_pred q = bp__scan_pred_of(r); /* a scope would have given a stream */
    size_t plen = r->entity_prefix ? strlen(r->entity_prefix) : 0;
    uint32_t batch[256];
    while (c->position < limit && got < max) {
      uint64_t next;
      size_t want = max - got < 256 ? max - got : 256;
      size_t n2 = bp__scan_filter(&c->store->scan, c->position, limit, &q, batch, want, &next);
      c->position = next;
      for (size_t i = 0; i < n2; i++) {
        const bp__name *nm = bp__index_name(ix, bp__index_at(ix, batch[i])->entity);
        if (plen && (nm->len < plen || memcmp(nm->str, r->entity_prefix, plen) != 0)) continue;
        out[got++] = batch[i];
      }
    }
  }
  return got;
}

static bool poll_one(bp_cursor *c, bp_entry *out) {
  uint64_t seq;
  bp__view_enter(c->store);
  catch_up(c);
  bool got = poll_seqs(c, &seq, 1) == 1;
  if (got) bp__entry_from_index(c->store, seq, out);
  bp__view_leave(c->store);
  return got;
}

/* A read-only handle's cursor that found nothing new asks the writer's head
 * for more (follow.c) and looks again: a follower's cursors move on by
 * themselves. True when it is worth looking again. */
static bool followed(bp_cursor *c, bp_status *st) {
  *st = BP_OK;
  if (!c->store->readonly) return false;
  uint64_t added;
  *st = bp_refresh(c->store, &added);
  return *st == BP_OK && added > 0;
}

bp_status bp_cursor_poll(bp_cursor *c, bp_entry *out) {
  if (!c || !out) return bp__fail(BP_EINVAL, "bp_cursor_poll: NULL argument");
  bp_status fst = BP_OK;
  bool got = poll_one(c, out) || (followed(c, &fst) && poll_one(c, out));
  if (!got && fst) return fst;
  return got ? BP_OK : bp__fail(BP_ENOTFOUND, "cursor: nothing new");
}

static bp_status poll_batch_locked(bp_cursor *c, size_t max, bp_entries *out) {
  catch_up(c);
  uint64_t behind = behind_locked(c);
  size_t cap = max < behind ? max : (size_t)behind;
  if (cap == 0) return BP_OK;
  uint64_t *seqs = malloc(cap * sizeof *seqs);
  bp_entry *items = malloc(cap * sizeof *items);
  if (!seqs || !items) {
    free(seqs);
    free(items);
    return bp__fail(BP_ENOMEM, "cursor: out of memory for %zu entries", cap);
  }
  size_t got = poll_seqs(c, seqs, cap);
  for (size_t i = 0; i < got; i++) bp__entry_from_index(c->store, seqs[i], &items[i]);
  free(seqs);
  if (got == 0) {
    free(items);
    return BP_OK;
  }
  out->items = items;
  out->len = got;
  return BP_OK;
}

bp_status bp_cursor_poll_batch(bp_cursor *c, size_t max, bp_entries *out) {
  if (!c || !out) return bp__fail(BP_EINVAL, "bp_cursor_poll_batch: NULL argument");
  out->items = NULL;
  out->len = 0;
  if (max == 0) return BP_OK;
  bp__view_enter(c->store);
  bp_status st = poll_batch_locked(c, max, out);
  bp__view_leave(c->store);
  bp_status fst = BP_OK;
  if (!st && out->len == 0 && followed(c, &fst)) {
    bp__view_enter(c->store);
    st = poll_batch_locked(c, max, out);
    bp__view_leave(c->store);
  } else if (!st && out->len == 0) {
    st = fst;
  }
  return st;
}

/* ---------------------------------------------------------------- durable */

static bool valid_name(const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 128 || name[0] == '.') return false;
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

bp_cursor *bp_cursor_open_durable(bp_store *s, const char *name, const bp_region *r) {
  if (!valid_name(name)) {
    bp__fail(BP_EINVAL, "cursor name \"%s\" must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
             name ? name : "(null)");
    return NULL;
  }
  bp_cursor *c = cursor_new(s, r);
  if (!c) return NULL;
  size_t plen = strlen(s->dir) + strlen(CURSOR_DIR) + strlen(name) + 3;
  c->path = malloc(plen);
  if (!c->path) {
    bp_cursor_close(c);
    bp__fail(BP_ENOMEM, "out of memory for a cursor");
    return NULL;
  }
  snprintf(c->path, plen, "%s/%s/%s", s->dir, CURSOR_DIR, name);

  bp__cursor_file f;
  bp_status st = bp__cursor_file_read(c->path, &f);
  if (st == BP_ENOTFOUND) return c; /* never committed: start at 0 */
  if (st) {
    bp_cursor_close(c);
    return NULL;
  }
  c->position = f.position;
  if (f.has_anchor) {
    /* Resume right after the anchor, wherever compactions have moved it. An
     * anchor that is gone (a file of the first format, whose anchor was the
     * last event delivered, dropped by retention) leaves no place known to
     * be safe: the cursor starts over rather than skip an event. */
    uint64_t seq;
    bp__view_enter(s);
    if (bp__index_find_id(&s->ix, f.anchor, bp__index_visible(&s->ix), &seq)) {
      c->position = seq + 1;
    } else {
      c->position = 0;
      bp__log(s, BP_LOG_WARN, "cursor %s: the event it was anchored on is gone; it starts over (at-least-once)",
              name);
    }
    bp__view_leave(s);
  }
  return c;
}

bp_status bp_cursor_commit(bp_cursor *c) {
  if (!c) return bp__fail(BP_EINVAL, "bp_cursor_commit: NULL cursor");
  if (!c->path) return bp__fail(BP_EINVAL, "bp_cursor_commit: the cursor is not durable");
  bp_store *s = c->store;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/%s", s->dir, CURSOR_DIR);
  if (bp__os_table.mkdir(dir, 0700) != 0 && errno != EEXIST)
    return bp__fail_errno(BP_EIO, errno, "create %s", dir);
  /* The position in today's numbering, anchored on the event before it: a
   * retention compaction (which re-anchors files under the same lock) cannot
   * come between the two. */
  pthread_mutex_lock(&s->cursor_files_lock);
  bp__cursor_file f = {0};
  bp__view_enter(s);
  catch_up(c);
  f.position = c->position;
  f.has_anchor = c->position > 0 && c->position <= bp__index_visible(&s->ix);
  if (f.has_anchor) f.anchor = bp__index_at(&s->ix, c->position - 1)->event_id;
  bp__view_leave(s);
  int rc = bp__cursor_file_write(c->path, &f);
  pthread_mutex_unlock(&s->cursor_files_lock);
  if (rc) return bp__fail_errno(BP_EIO, rc, "commit cursor %s", c->path);
  rc = bp__os_sync_dir(dir);
  if (rc) return bp__fail_errno(BP_EIO, rc, "commit cursor %s: fsync %s", c->path, dir);
  return BP_OK;
}
