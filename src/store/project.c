/*
 * project.c - projections: folding an entity's events into state, with the
 * cache and incremental application; and watched projections.
 *
 * Cache entry for (entity, projection):
 *   key   = entity bytes | 0x00 | u64 LE name hash (first 8 bytes of BLAKE3(name))
 *           | u64 LE schema_version
 *   value = encoded state | log epoch u64 LE | watermark u64 LE | cached_at_us i64 LE
 * The watermark is the global sequence of the last relevant event the state
 * includes. The log epoch names the log's history: it changes whenever a
 * compaction rewrites it (store_impl.h, log_epoch), in this process or in
 * another that opened the store without this cache (`batpak compact`), so a
 * state cached before that is never served after it: retention renumbers
 * events and tombstones rewrite them, and a watermark alone cannot tell.
 */
#include "store/store_impl.h"

#include <inttypes.h>
#include <time.h>

#define META_LEN 24

static bool relevant(const bp_projection *p, bp_kind kind) {
  if (p->kinds_len == 0) return true;
  for (size_t i = 0; i < p->kinds_len; i++)
    if (p->kinds[i] == kind) return true;
  return false;
}

static int64_t wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint8_t *cache_key(const char *entity, const bp_projection *p, size_t *len) {
  size_t el = strlen(entity);
  uint8_t *k = malloc(el + 1 + 16);
  if (!k) return NULL;
  memcpy(k, entity, el);
  k[el] = 0;
  uint8_t h[32];
  bp_compute_hash(p->name, strlen(p->name), h);
  memcpy(k + el + 1, h, 8);
  bp__put_le64(k + el + 9, p->schema_version);
  *len = el + 17;
  return k;
}

/* Applies the relevant events at positions [from, n) of the entity's stream,
 * reading and decoding each just before it is applied. */
static bp_status apply_serial(bp_store *s, const bp_projection *p, void *ctx, void *state, const uint32_t *v,
                              uint32_t from, uint32_t n) {
  bp__evread rd;
  bp__evread_init(&rd);
  bp_status st = BP_OK;
  for (uint32_t i = from; i < n && i < from + 2 * BP__READ_AHEAD; i++) bp__prefetch_entry(s, v[i]);
  for (uint32_t i = from; i < n && !st; i++) {
    if (i + 2 * BP__READ_AHEAD < n) bp__prefetch_entry(s, v[i + 2 * BP__READ_AHEAD]);
    if (i + BP__READ_AHEAD < n) bp__prefetch_frame(s, v[i + BP__READ_AHEAD], &rd);
    if (!relevant(p, bp__index_at(&s->ix, v[i])->kind)) continue;
    if (!(st = bp__read_event(s, v[i], &rd))) st = p->apply(state, &rd.ev, ctx);
  }
  bp__evread_free(&rd);
  return st;
}

/*
 * A long replay is read and decoded a window at a time, by the caller and the
 * store's helper threads at once (pool.h, chunks of REPLAY_CHUNK events), and
 * then applied in order on the caller's thread: reading a frame, checking its
 * CRC and decoding it are most of a replay, while apply is the caller's code
 * and runs where it always does. A window holds at most REPLAY_WINDOW events
 * and REPLAY_WINDOW_BYTES of frames. An event that failed to decode is read
 * again by the caller when its turn comes, so that its error is reported from
 * the caller's thread, after every event before it was applied, exactly as
 * the serial replay would.
 */
#define REPLAY_WINDOW 1024
#define REPLAY_CHUNK 64
#define REPLAY_WINDOW_BYTES (4u << 20)
#define REPLAY_SHARED_MIN (2 * REPLAY_WINDOW)
#define REPLAY_SLOT_KEEP (64u << 10) /* larger slot buffers are freed after each window */

typedef struct replay_slot {
  bp__evread rd;
  uint64_t seq;
  bool relevant;
  bool decoded;
} replay_slot;

typedef struct replay_window {
  bp_store *s;
  replay_slot *slots;
  uint32_t n;
} replay_window;

static void decode_chunk(void *ctx, uint64_t c) {
  replay_window *w = ctx;
  uint32_t from = (uint32_t)c * REPLAY_CHUNK, to = w->n - from < REPLAY_CHUNK ? w->n : from + REPLAY_CHUNK;
  bp__evread ahead;
  bp__evread_init(&ahead);
  for (uint32_t i = from; i < to && i < from + 2 * BP__READ_AHEAD; i++) bp__prefetch_entry(w->s, w->slots[i].seq);
  for (uint32_t i = from; i < to; i++) {
    if (i + 2 * BP__READ_AHEAD < to) bp__prefetch_entry(w->s, w->slots[i + 2 * BP__READ_AHEAD].seq);
    if (i + BP__READ_AHEAD < to) bp__prefetch_frame(w->s, w->slots[i + BP__READ_AHEAD].seq, &ahead);
    replay_slot *sl = &w->slots[i];
    sl->decoded = sl->relevant && bp__read_event(w->s, sl->seq, &sl->rd) == BP_OK;
  }
}

static void release_large(bp__buf *b) {
  if (b->cap > REPLAY_SLOT_KEEP) bp__buf_free(b);
}

static bp_status apply_shared(bp_store *s, const bp_projection *p, void *ctx, void *state, const uint32_t *v,
                              uint32_t from, uint32_t n) {
  replay_slot *slots = calloc(REPLAY_WINDOW, sizeof *slots);
  if (!slots) return apply_serial(s, p, ctx, state, v, from, n);
  bp_status st = BP_OK;
  for (uint32_t i = from; i < n && !st;) {
    /* The next window: which events, and which the projection wants. */
    uint32_t k = 0;
    uint64_t bytes = 0;
    for (; i < n && k < REPLAY_WINDOW && bytes < REPLAY_WINDOW_BYTES; i++, k++) {
      if (i + 2 * BP__READ_AHEAD < n) bp__prefetch_entry(s, v[i + 2 * BP__READ_AHEAD]);
      const bp__ientry *e = bp__index_at(&s->ix, v[i]);
      slots[k].seq = v[i];
      slots[k].relevant = relevant(p, e->kind);
      if (slots[k].relevant) bytes += e->length;
    }
    replay_window w = {s, slots, k};
    bp__pool_run(s->helpers, decode_chunk, &w, (k + REPLAY_CHUNK - 1) / REPLAY_CHUNK);
    for (uint32_t j = 0; j < k && !st; j++) {
      replay_slot *sl = &slots[j];
      if (!sl->relevant) continue;
      if (sl->decoded || !(st = bp__read_event(s, sl->seq, &sl->rd))) st = p->apply(state, &sl->rd.ev, ctx);
    }
    for (uint32_t j = 0; j < k; j++) {
      release_large(&slots[j].rd.frame);
      release_large(&slots[j].rd.scratch);
    }
  }
  for (uint32_t j = 0; j < REPLAY_WINDOW; j++) bp__evread_free(&slots[j].rd);
  free(slots);
  return st;
}

/* Applies the relevant events at positions [from, n) of the entity's stream. */
static bp_status apply_range(bp_store *s, const bp_projection *p, void *ctx, void *state, const uint32_t *v,
                             uint32_t from, uint32_t n) {
  if (n - from >= REPLAY_SHARED_MIN && bp__pool_shares(s->helpers))
    return apply_shared(s, p, ctx, state, v, from, n);
  return apply_serial(s, p, ctx, state, v, from, n);
}

static void cache_store(bp_store *s, const bp_projection *p, void *ctx, const void *state, const uint8_t *key,
                        size_t klen, uint64_t watermark) {
  void *bytes = NULL;
  size_t len = 0;
  if (p->encode(state, &bytes, &len, ctx) != BP_OK) {
    bp__log(s, BP_LOG_WARN, "projection %s: encode failed; state not cached", p->name);
    free(bytes);
    return;
  }
  uint8_t *val = malloc(len + META_LEN);
  if (val) {
    if (len) memcpy(val, bytes, len);
    bp__put_le64(val + len, (uint64_t)atomic_load(&s->log_epoch));
    bp__put_le64(val + len + 8, watermark);
    bp__put_le64(val + len + 16, (uint64_t)wall_us());
    if (bp_cache_put(s->cache, key, klen, val, len + META_LEN) != BP_OK)
      bp__log(s, BP_LOG_WARN, "projection %s: cache put failed: %s", p->name, bp_last_error()->message);
  }
  free(val);
  free(bytes);
}

/* The stream's items as one array for replay (helpers take slices of it):
 * its only piece, or a copy of its pieces into *owned. NULL when out of
 * memory. */
static const uint32_t *stream_array(const bp__stream *st, uint32_t **owned) {
  *owned = NULL;
  if (st->n == 1) return st->p[0].v;
  if (!(*owned = malloc(sizeof **owned * (st->total ? st->total : 1)))) return NULL;
  bp__stream_copy(st, 0, st->total, *owned);
  return *owned;
}

/* bp_project with the view lock held. */
static bp_status project_locked(bp_store *s, const char *entity, const bp_projection *p, void *ctx,
                                bp_freshness fresh, void *state) {
  uint64_t limit = bp__index_visible(&s->ix);
  const bp__name *nm = bp__index_find_name(&s->ix, entity, strlen(entity));
  bp__stream stream = {0};
  if (nm) bp__index_stream(&s->ix, BP__STREAM_ENTITY, nm->id, limit, &stream);
  uint32_t n = (uint32_t)stream.total;
  /* The latest relevant event decides what a cached state must include;
   * found from the end, piece by piece, so that a cache hit copies nothing. */
  int64_t last = -1;
  for (uint32_t i = n; i-- > 0;)
    if (relevant(p, bp__index_at(&s->ix, bp__stream_item(&stream, i))->kind)) {
      last = (int64_t)i;
      break;
    }
  if (last < 0) return bp__fail(BP_ENOTFOUND, "entity %s has no events for projection %s", entity, p->name);
  uint64_t watermark = bp__stream_item(&stream, (uint64_t)last);
  const uint32_t *v = NULL;
  uint32_t *owned = NULL;

  bool cacheable = s->cache && p->encode && p->decode;
  uint8_t *key = NULL;
  size_t klen = 0;
  if (cacheable && !(key = cache_key(entity, p, &klen))) return bp__fail(BP_ENOMEM, "bp_project: out of memory");

  if (cacheable) {
    void *val = NULL;
    size_t vlen = 0;
    if (bp_cache_get(s->cache, key, klen, &val, &vlen) == BP_OK && vlen >= META_LEN &&
        bp__get_le64((uint8_t *)val + vlen - META_LEN) == (uint64_t)atomic_load(&s->log_epoch)) {
      uint64_t cached_wm = bp__get_le64((uint8_t *)val + vlen - 16);
      int64_t cached_at = (int64_t)bp__get_le64((uint8_t *)val + vlen - 8);
      bool serve = fresh.mode == BP_FRESH_BEST_EFFORT
                       ? cached_wm <= watermark && (uint64_t)(wall_us() - cached_at) <= fresh.max_stale_ms * 1000
                       : cached_wm == watermark;
      bool extend = !serve && s->cfg.incremental_projection && p->incremental && cached_wm < watermark;
      if ((serve || extend) && p->init(state, ctx) == BP_OK && p->decode(state, val, vlen - META_LEN, ctx) == BP_OK) {
        bp_status st = BP_OK;
        if (extend) {
          /* Only the events after the cached watermark. */
          uint32_t lo = (uint32_t)bp__stream_lower_bound(&stream, cached_wm + 1);
          if (!(v = stream_array(&stream, &owned))) st = bp__fail(BP_ENOMEM, "bp_project: out of memory");
          if (!st) st = apply_range(s, p, ctx, state, v, lo, (uint32_t)last + 1);
          if (!st) cache_store(s, p, ctx, state, key, klen, watermark);
        }
        free(owned);
        free(val);
        free(key);
        return st;
      }
      if (serve || extend) {
        bp__log(s, BP_LOG_WARN, "projection %s: cached state of %s did not decode; replaying", p->name, entity);
        if (p->destroy) p->destroy(state, ctx);
      }
    }
    free(val);
  }

  if (!(v = stream_array(&stream, &owned))) {
    free(key);
    return bp__fail(BP_ENOMEM, "bp_project: out of memory");
  }
  bp_status st = p->init(state, ctx);
  if (!st) st = apply_range(s, p, ctx, state, v, 0, (uint32_t)last + 1);
  if (!st && cacheable) cache_store(s, p, ctx, state, key, klen, watermark);
  free(owned);
  free(key);
  return st;
}

bp_status bp_project(bp_store *s, const char *entity, const bp_projection *p, void *ctx, bp_freshness fresh,
                     void *state) {
  if (!s || !entity || !p || !state) return bp__fail(BP_EINVAL, "bp_project: NULL argument");
  if (p->version != BP_PROJECTION_VERSION || !p->name || !p->init || !p->apply)
    return bp__fail(BP_EINVAL, "bp_project: the projection needs version %u, a name, init and apply",
                    BP_PROJECTION_VERSION);
  bp__view_enter(s);
  bp_status st = project_locked(s, entity, p, ctx, fresh, state);
  bp__view_leave(s);
  return st;
}

/* ------------------------------------------------------------------ watchers */

struct bp_watcher {
  bp_store *store;
  const char *entity;
  const bp_projection *proj;
  void *ctx;
  bp_freshness fresh;
  bp_subscription *sub;
};

static bool exact_entity(const bp_notification *n, void *ctx) {
  bp_watcher *w = ctx;
  return strcmp(n->entity, w->entity) == 0 && relevant(w->proj, n->kind);
}

bp_watcher *bp_watch_projection(bp_store *s, const char *entity, const bp_projection *p, void *ctx,
                                bp_freshness fresh) {
  if (!s || !entity || !p) {
    bp__fail(BP_EINVAL, "bp_watch_projection: NULL argument");
    return NULL;
  }
  bp_watcher *w = calloc(1, sizeof *w);
  if (!w) {
    bp__fail(BP_ENOMEM, "out of memory for a watcher");
    return NULL;
  }
  *w = (bp_watcher){s, entity, p, ctx, fresh, NULL};
  bp_region r = bp_region_entity(entity);
  w->sub = bp_subscribe(s, &r);
  if (!w->sub) {
    free(w);
    return NULL;
  }
  bp_sub_filter(w->sub, exact_entity, w);
  return w;
}

bp_status bp_watcher_recv(bp_watcher *w, void *state, int timeout_ms) {
  if (!w || !state) return bp__fail(BP_EINVAL, "bp_watcher_recv: NULL argument");
  bp_notification n;
  bp_status st = bp_sub_recv(w->sub, &n, timeout_ms);
  if (st) return st;
  /* Several changes may be waiting: one projection covers them all. */
  while (bp_sub_recv(w->sub, &n, 0) == BP_OK) {
  }
  return bp_project(w->store, w->entity, w->proj, w->ctx, w->fresh, state);
}

void bp_watcher_close(bp_watcher *w) {
  if (!w) return;
  bp_sub_close(w->sub);
  free(w);
}
