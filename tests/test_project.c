/*
 * test_project.c - caches (one table of operations, run against every
 * backend: a user-supplied cache, LMDB and SQLite, on real files) and
 * projections with each cache, freshness mode and incremental application.
 */
#include "testutil.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

typedef tu_store_fixture fixture;
#define setup tu_store_setup
#define teardown tu_store_teardown

/* ---- a user-supplied cache: a small in-memory table ---- */
typedef struct mem_entry {
  uint8_t *k, *v;
  size_t kl, vl;
} mem_entry;
typedef struct mem_cache {
  mem_entry e[64];
  int n;
  int destroyed;
} mem_cache;

static int mem_find(mem_cache *m, const void *k, size_t kl) {
  for (int i = 0; i < m->n; i++)
    if (m->e[i].kl == kl && memcmp(m->e[i].k, k, kl) == 0) return i;
  return -1;
}
static bp_status mem_get(void *ctx, const void *k, size_t kl, void **v, size_t *vl) {
  mem_cache *m = ctx;
  int i = mem_find(m, k, kl);
  if (i < 0) return BP_ENOTFOUND;
  *v = malloc(m->e[i].vl + 1);
  memcpy(*v, m->e[i].v, m->e[i].vl);
  *vl = m->e[i].vl;
  return BP_OK;
}
static bp_status mem_put(void *ctx, const void *k, size_t kl, const void *v, size_t vl) {
  mem_cache *m = ctx;
  int i = mem_find(m, k, kl);
  if (i < 0) {
    if (m->n == 64) return BP_ENOMEM;
    i = m->n++;
    m->e[i].k = malloc(kl);
    memcpy(m->e[i].k, k, kl);
    m->e[i].kl = kl;
  } else {
    free(m->e[i].v);
  }
  m->e[i].v = malloc(vl + 1);
  memcpy(m->e[i].v, v, vl);
  m->e[i].vl = vl;
  return BP_OK;
}
static bp_status mem_delete_prefix(void *ctx, const void *p, size_t pl) {
  mem_cache *m = ctx;
  for (int i = 0; i < m->n;) {
    if (m->e[i].kl >= pl && memcmp(m->e[i].k, p, pl) == 0) {
      free(m->e[i].k);
      free(m->e[i].v);
      m->e[i] = m->e[--m->n];
    } else {
      i++;
    }
  }
  return BP_OK;
}
static void mem_destroy(void *ctx) {
  mem_cache *m = ctx;
  for (int i = 0; i < m->n; i++) {
    free(m->e[i].k);
    free(m->e[i].v);
  }
  m->n = 0;
  m->destroyed++;
}
static const bp_cache_vtable MEM_VT = {BP_CACHE_VERSION, 0, mem_get, mem_put, mem_delete_prefix, NULL, NULL,
                                       mem_destroy};

enum { BACKEND_CUSTOM, BACKEND_LMDB, BACKEND_SQLITE, BACKENDS };
static const char *backend_names[] = {"custom", "lmdb", "sqlite"};
static mem_cache mem;

static bp_cache *open_backend(int b, const char *dir) {
  char path[4200];
  bp_cache *c = NULL;
  switch (b) {
    case BACKEND_CUSTOM: assert_ok(bp_cache_custom(&MEM_VT, &mem, &c)); break;
    case BACKEND_LMDB:
      tu_require_features(BP_FEATURE_LMDB_CACHE);
      snprintf(path, sizeof path, "%s/lmdb", dir);
      assert_ok(bp_cache_lmdb_open(path, 16u << 20, &c));
      break;
    default:
      tu_require_features(BP_FEATURE_SQLITE_CACHE);
      snprintf(path, sizeof path, "%s/cache.sqlite", dir);
      assert_ok(bp_cache_sqlite_open(path, &c));
      break;
  }
  return c;
}

static void expect_cached(bp_cache *c, const char *key, const char *want, const char *backend) {
  void *v;
  size_t vl;
  bp_status st = bp_cache_get(c, key, strlen(key), &v, &vl);
  if (!want) {
    if (st != BP_ENOTFOUND) fail_msg("%s: get(%s) gave %s, expected BP_ENOTFOUND", backend, key, bp_status_name(st));
    return;
  }
  if (st != BP_OK) fail_msg("%s: get(%s) gave %s", backend, key, bp_status_name(st));
  tu_assert_bytes_eq(v, vl, want, strlen(want), backend);
  free(v);
}

/* The same table of operations against every backend. */
static void every_cache_backend_passes_the_same_operations(void **state) {
  fixture *f = *state;
  mkdir(f->dir, 0700);
  for (int b = 0; b < BACKENDS; b++) {
    const char *name = backend_names[b];
    bp_cache *c = open_backend(b, f->dir);
    expect_cached(c, "missing", NULL, name);
    assert_ok(bp_cache_put(c, "user:1\0a", 8, "one", 3));
    assert_ok(bp_cache_put(c, "user:10", 7, "ten", 3));
    assert_ok(bp_cache_put(c, "user:2", 6, "two", 3));
    assert_ok(bp_cache_put(c, "order:1", 7, "order", 5));
    expect_cached(c, "user:10", "ten", name);
    assert_ok(bp_cache_put(c, "user:10", 7, "TEN!", 4)); /* overwrite */
    expect_cached(c, "user:10", "TEN!", name);
    assert_ok(bp_cache_put(c, "empty", 5, "", 0));
    expect_cached(c, "empty", "", name);
    assert_ok(bp_cache_delete_prefix(c, "user:1", 6)); /* user:1\0a and user:10 */
    expect_cached(c, "user:10", NULL, name);
    expect_cached(c, "user:2", "two", name);
    expect_cached(c, "order:1", "order", name);
    assert_ok(bp_cache_sync(c));
    assert_ok(bp_cache_prefetch(c, "user:2", 6));
    bp_cache_free(c);
    if (b == BACKEND_CUSTOM) {
      assert_int_equal(mem.destroyed, 1);
      mem.destroyed = 0;
      continue;
    }
    /* Durable backends keep their data across a reopen. */
    c = open_backend(b, f->dir);
    assert_true(bp_cache_capabilities(c) & BP_CACHE_CAP_DURABLE);
    expect_cached(c, "user:2", "two", name);
    expect_cached(c, "user:10", NULL, name);
    assert_ok(bp_cache_delete_prefix(c, "", 0));
    expect_cached(c, "order:1", NULL, name);
    bp_cache_free(c);
  }
}

static void custom_cache_vtable_is_checked(void **state) {
  (void)state;
  bp_cache *c = (bp_cache *)1;
  bp_cache_vtable vt = MEM_VT;
  vt.version = 99;
  assert_status(bp_cache_custom(&vt, &mem, &c), BP_EINVAL);
  assert_null(c);
  vt = MEM_VT;
  vt.get = NULL;
  assert_status(bp_cache_custom(&vt, &mem, &c), BP_EINVAL);
  assert_ok(bp_cache_noop(&c));
  void *v;
  size_t vl;
  assert_ok(bp_cache_put(c, "k", 1, "v", 1));
  assert_status(bp_cache_get(c, "k", 1, &v, &vl), BP_ENOTFOUND);
  bp_cache_free(c);
  char bad[] = "/proc/definitely/not/here";
  uint32_t has = bp_build_features();
  assert_status(bp_cache_lmdb_open(bad, 0, &c), has & BP_FEATURE_LMDB_CACHE ? BP_EIO : BP_EUNSUPPORTED);
  assert_status(bp_cache_sqlite_open(bad, &c), has & BP_FEATURE_SQLITE_CACHE ? BP_EIO : BP_EUNSUPPORTED);
}

/* ---- a counter projection: sums {"amount": n} payloads ---- */
typedef struct counter {
  int64_t total;
  int events;
} counter;

typedef struct proj_ctx {
  int applied;      /* apply calls */
  bool bad_decode;  /* decode refuses everything */
  int destroyed;    /* destroy calls */
} proj_ctx;

static bp_status c_init(void *state, void *ctx) {
  (void)ctx;
  memset(state, 0, sizeof(counter));
  return BP_OK;
}

static bp_status c_apply(void *state, const bp_event *ev, void *ctx) {
  counter *c = state;
  ((proj_ctx *)ctx)->applied++;
  char *json = bp_event_payload_json(ev);
  const char *p = json ? strstr(json, "\"amount\":") : NULL;
  if (p) c->total += atoll(p + 9);
  c->events++;
  bp_free(json);
  return BP_OK;
}

static bp_status c_encode(const void *state, void **bytes, size_t *len, void *ctx) {
  (void)ctx;
  *bytes = malloc(sizeof(counter));
  memcpy(*bytes, state, sizeof(counter));
  *len = sizeof(counter);
  return BP_OK;
}

static bp_status c_decode(void *state, const void *bytes, size_t len, void *ctx) {
  if (((proj_ctx *)ctx)->bad_decode || len != sizeof(counter)) return BP_ESERIAL;
  memcpy(state, bytes, len);
  return BP_OK;
}

static void c_destroy(void *state, void *ctx) {
  (void)state;
  ((proj_ctx *)ctx)->destroyed++;
}

static const bp_kind COUNTED[] = {0x1001};
static const bp_projection COUNTER = {BP_PROJECTION_VERSION, "counter", 1, COUNTED, 1, true,
                                      c_init, c_apply, c_encode, c_decode, c_destroy};

static void deposit(bp_store *s, const char *entity, int amount, bp_kind kind) {
  char json[64];
  snprintf(json, sizeof json, "{\"amount\": %d}", amount);
  bp_coord c = {entity, "bank"};
  bp_append_receipt r;
  assert_ok(bp_append_json(s, &c, kind, json, &r));
}

static void projection_replays_relevant_events_without_a_cache(void **state) {
  fixture *f = *state;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  deposit(s, "acct:1", 100, 0x1001);
  deposit(s, "acct:1", 7, 0x1002); /* not a relevant kind */
  deposit(s, "acct:10", 1000, 0x1001);
  deposit(s, "acct:1", -30, 0x1001);
  counter c;
  proj_ctx pc = {0};
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, fresh, &c));
  assert_int_equal(c.total, 70);
  assert_int_equal(c.events, 2);
  assert_status(bp_project(s, "acct:404", &COUNTER, &pc, fresh, &c), BP_ENOTFOUND);
  bp_projection bad = COUNTER;
  bad.version = 7;
  assert_status(bp_project(s, "acct:1", &bad, &pc, fresh, &c), BP_EINVAL);
  assert_ok(bp_close(s));
}

static void run_cached_projection(fixture *f, int backend, bool incremental) {
  char sub[4300];
  snprintf(sub, sizeof sub, "%s-%s-%d", f->dir, backend_names[backend], incremental);
  mkdir(sub, 0700);
  bp_config cfg = f->cfg;
  cfg.data_dir = sub;
  cfg.incremental_projection = incremental;
  bp_store *s;
  assert_ok(bp_open_with_cache(&cfg, open_backend(backend, sub), &s));
  for (int i = 1; i <= 10; i++) deposit(s, "acct:1", i, 0x1001);
  counter c;
  proj_ctx pc = {0};
  bp_freshness consistent = {BP_FRESH_CONSISTENT, 0};
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, consistent, &c));
  assert_int_equal(c.total, 55);
  assert_int_equal(pc.applied, 10);
  /* Nothing new: served from the cache. */
  pc.applied = 0;
  memset(&c, 0xee, sizeof c);
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, consistent, &c));
  assert_int_equal(c.total, 55);
  assert_int_equal(pc.applied, 0);
  /* Irrelevant kinds do not make the cached state stale. */
  deposit(s, "acct:1", 999, 0x1002);
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, consistent, &c));
  assert_int_equal(pc.applied, 0);
  /* A new relevant event: best effort may serve the stale state... */
  deposit(s, "acct:1", 45, 0x1001);
  bp_freshness best = {BP_FRESH_BEST_EFFORT, 60000};
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, best, &c));
  assert_int_equal(c.total, 55);
  assert_int_equal(pc.applied, 0);
  /* ...consistent may not: only the new event (incremental) or all again. */
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, consistent, &c));
  assert_int_equal(c.total, 100);
  assert_int_equal(pc.applied, incremental ? 1 : 11);
  /* A cached state that does not decode is replaced by a replay (the cache is
   * current here, so it would have been served). */
  pc.applied = 0;
  pc.bad_decode = true;
  assert_ok(bp_project(s, "acct:1", &COUNTER, &pc, consistent, &c));
  assert_int_equal(c.total, 100);
  assert_int_equal(pc.applied, 11);
  assert_int_equal(pc.destroyed, 1); /* the undecodable state was handed back first */
  assert_ok(bp_close(s));
}

static void cached_projection_with_custom_cache(void **state) { run_cached_projection(*state, BACKEND_CUSTOM, false); }
static void cached_projection_with_lmdb(void **state) { run_cached_projection(*state, BACKEND_LMDB, false); }
static void cached_projection_with_sqlite(void **state) { run_cached_projection(*state, BACKEND_SQLITE, false); }
static void incremental_projection_with_lmdb(void **state) { run_cached_projection(*state, BACKEND_LMDB, true); }
static void incremental_projection_with_sqlite(void **state) { run_cached_projection(*state, BACKEND_SQLITE, true); }

/* A build without a cache backend says so, and creates nothing: not the
 * cache's directory or file, not the store's directory. */
static void caches_left_out_of_the_build_say_so(void **state) {
  fixture *f = *state;
  uint32_t has = bp_build_features();
  if ((has & (BP_FEATURE_LMDB_CACHE | BP_FEATURE_SQLITE_CACHE)) == (BP_FEATURE_LMDB_CACHE | BP_FEATURE_SQLITE_CACHE))
    skip(); /* both built in: covered by the tests above */
  char path[4200];
  bp_cache *c = (bp_cache *)&c;
  struct stat sb;
  if (!(has & BP_FEATURE_LMDB_CACHE)) {
    snprintf(path, sizeof path, "%s/lmdb", f->tmp);
    assert_status(bp_cache_lmdb_open(path, 0, &c), BP_EUNSUPPORTED);
    assert_null(c);
    assert_int_not_equal(stat(path, &sb), 0);
    bp_store *s = (bp_store *)&s;
    assert_status(bp_open_with_lmdb_cache(&f->cfg, &s), BP_EUNSUPPORTED);
    assert_null(s);
    assert_int_not_equal(stat(f->dir, &sb), 0);
  }
  if (!(has & BP_FEATURE_SQLITE_CACHE)) {
    snprintf(path, sizeof path, "%s/cache.sqlite", f->tmp);
    c = (bp_cache *)&c;
    assert_status(bp_cache_sqlite_open(path, &c), BP_EUNSUPPORTED);
    assert_null(c);
    assert_int_not_equal(stat(path, &sb), 0);
  }
}

static void lmdb_cache_in_the_store_survives_a_reopen(void **state) {
  fixture *f = *state;
  tu_require_features(BP_FEATURE_LMDB_CACHE);
  bp_store *s;
  assert_ok(bp_open_with_lmdb_cache(&f->cfg, &s));
  for (int i = 0; i < 5; i++) deposit(s, "acct:9", 10, 0x1001);
  counter c;
  proj_ctx pc = {0};
  bp_freshness consistent = {BP_FRESH_CONSISTENT, 0};
  assert_ok(bp_project(s, "acct:9", &COUNTER, &pc, consistent, &c));
  assert_ok(bp_close(s));
  assert_ok(bp_open_with_lmdb_cache(&f->cfg, &s));
  pc.applied = 0;
  assert_ok(bp_project(s, "acct:9", &COUNTER, &pc, consistent, &c));
  assert_int_equal(c.total, 50);
  assert_int_equal(pc.applied, 0);
  assert_ok(bp_close(s));
}

typedef struct watch_arg {
  bp_store *s;
} watch_arg;

static void *deposit_later(void *p) {
  watch_arg *a = p;
  usleep(30000);
  deposit(a->s, "acct:w", 5, 0x1001);
  return NULL;
}

static void watcher_yields_the_state_after_each_change(void **state) {
  fixture *f = *state;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  deposit(s, "acct:w", 10, 0x1001);
  proj_ctx pc = {0};
  bp_freshness consistent = {BP_FRESH_CONSISTENT, 0};
  bp_watcher *w = bp_watch_projection(s, "acct:w", &COUNTER, &pc, consistent);
  assert_non_null(w);
  counter c;
  assert_status(bp_watcher_recv(w, &c, 10), BP_ETIMEOUT);
  deposit(s, "acct:w2", 1, 0x1001);  /* another entity with the prefix */
  deposit(s, "acct:w", 1, 0x1002);   /* an irrelevant kind */
  assert_status(bp_watcher_recv(w, &c, 10), BP_ETIMEOUT);
  watch_arg a = {s};
  pthread_t t;
  pthread_create(&t, NULL, deposit_later, &a);
  assert_ok(bp_watcher_recv(w, &c, 5000));
  pthread_join(t, NULL);
  assert_int_equal(c.total, 15);
  bp_watcher_close(w);
  assert_ok(bp_close(s));
}

/* ---------------------------------------- long replays decoded with helpers */

/* A replay of 2,048 events or more is read and decoded a window at a time by
 * the caller and the store's helper thread, then applied in order on the
 * caller's thread. The fold below is order-sensitive (a skipped, repeated or
 * reordered event changes it), so a shared replay must fold to exactly what
 * the caller alone folds, and stop at a damaged frame exactly where it does. */
enum { LONG_N = 6000, BIG_PAYLOAD = 70 * 1024 };

typedef struct fold {
  uint64_t events, bytes, mix;
} fold;

typedef struct fold_ctx {
  uint64_t applied;
} fold_ctx;

static bp_status f_init(void *state, void *ctx) {
  (void)ctx;
  memset(state, 0, sizeof(fold));
  return BP_OK;
}

static bp_status f_apply(void *state, const bp_event *ev, void *ctx) {
  fold *f = state;
  ((fold_ctx *)ctx)->applied++;
  uint64_t h = f->mix ^ 0xcbf29ce484222325ull;
  for (size_t i = 0; i < ev->payload_len; i++) h = (h ^ ev->payload[i]) * 0x100000001b3ull;
  h = (h ^ ev->header.event_id.hi) * 0x100000001b3ull;
  h = (h ^ ev->header.event_id.lo) * 0x100000001b3ull;
  f->mix = h;
  f->events++;
  f->bytes += ev->payload_len;
  return BP_OK;
}

static const bp_kind FOLDED[] = {0x1001};
static const bp_projection FOLD = {BP_PROJECTION_VERSION, "fold", 1, FOLDED, 1, false,
                                   f_init, f_apply, NULL, NULL, NULL};

/* LONG_N events of "long:1" (every third of a kind the fold skips, every
 * tenth BIG_PAYLOAD bytes, so that windows are cut by bytes and slot buffers
 * grow past what is kept), with events of "long:2" between them. Returns the
 * receipt of event `keep` of "long:1". */
static bp_append_receipt append_long(bp_store *s, int keep) {
  uint8_t *buf = malloc(BIG_PAYLOAD);
  assert_non_null(buf);
  bp_append_receipt kept = {0};
  for (int i = 0; i < LONG_N; i++) {
    size_t len = i % 10 == 0 ? BIG_PAYLOAD : 1 + (size_t)(i * 37 % 300);
    for (size_t j = 0; j < len; j++) buf[j] = (uint8_t)(i * 31 + j * 7);
    bp_coord c = {"long:1", "scope"};
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, i % 3 == 2 ? 0x1002 : 0x1001, buf, len, &r));
    if (i == keep) kept = r;
    bp_coord other = {"long:2", "scope"};
    if (i % 4 == 0) assert_ok(bp_append(s, &other, 0x1001, buf, 5, &r));
  }
  free(buf);
  return kept;
}

/* Opens the store in f->dir twice: `lone` with query_threads 1 (read-write),
 * `shared` read-only with query_threads 2; both stay open, so their results
 * can be compared side by side. */
static void open_lone_and_shared(fixture *f, bp_store **lone, bp_store **shared) {
  f->cfg.query_threads = 1;
  assert_ok(bp_open(&f->cfg, lone));
  f->cfg.query_threads = 2;
  assert_ok(bp_open_readonly(&f->cfg, shared));
  bp_store_diagnostics d;
  bp_diagnostics(*shared, &d);
  assert_int_equal(d.query_helpers, 1);
}

static void long_replays_decoded_with_helpers_fold_like_the_callers_own(void **state) {
  fixture *f = *state;
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) skip(); /* no CPU for a helper: nothing to compare */
  bp_store *s;
  f->cfg.query_threads = 1;
  assert_ok(bp_open(&f->cfg, &s));
  append_long(s, -1);
  assert_ok(bp_close(s));

  bp_store *lone, *shared;
  open_lone_and_shared(f, &lone, &shared);
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  fold a, b;
  fold_ctx ca = {0}, cb = {0};
  assert_ok(bp_project(lone, "long:1", &FOLD, &ca, fresh, &a));
  assert_ok(bp_project(shared, "long:1", &FOLD, &cb, fresh, &b));
  uint64_t want_events = LONG_N - LONG_N / 3;
  if (a.events != want_events) fail_msg("alone: %llu events folded, expected %llu", (unsigned long long)a.events,
                                        (unsigned long long)want_events);
  if (b.events != a.events || b.bytes != a.bytes || b.mix != a.mix)
    fail_msg("with a helper: %llu events, %llu bytes, mix %016llx; alone: %llu, %llu, %016llx",
             (unsigned long long)b.events, (unsigned long long)b.bytes, (unsigned long long)b.mix,
             (unsigned long long)a.events, (unsigned long long)a.bytes, (unsigned long long)a.mix);
  assert_int_equal(cb.applied, ca.applied);
  /* The helper does take part: an idle one wakes within a few replays. */
  bp_store_diagnostics d;
  bp_diagnostics(shared, &d);
  for (int i = 0; i < 200 && d.helper_chunks == 0; i++) {
    assert_ok(bp_project(shared, "long:1", &FOLD, &cb, fresh, &b));
    if (b.mix != a.mix) fail_msg("replay %d with a helper folds to %016llx, alone %016llx", i,
                                 (unsigned long long)b.mix, (unsigned long long)a.mix);
    bp_diagnostics(shared, &d);
  }
  if (d.helper_chunks == 0) fail_msg("the helper decoded no chunk in 200 replays");
  assert_ok(bp_close(shared));
  assert_ok(bp_close(lone));
}

static void a_damaged_frame_stops_a_shared_replay_where_a_lone_one_stops(void **state) {
  fixture *f = *state;
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) skip();
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  bp_append_receipt r = append_long(s, 4000);
  assert_ok(bp_close(s));
  /* One byte of event 4000's frame (a folded kind), near its end. */
  char path[4200];
  snprintf(path, sizeof path, "%s/%06llu.fbat", f->dir, (unsigned long long)r.disk_pos.segment_id);
  tu_flip_byte(path, (long)(r.disk_pos.offset + r.disk_pos.length - 3), 0x40);

  bp_store *lone, *shared;
  open_lone_and_shared(f, &lone, &shared);
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  fold a, b;
  fold_ctx ca = {0}, cb = {0};
  assert_status(bp_project(lone, "long:1", &FOLD, &ca, fresh, &a), BP_ECRC);
  char lone_msg[sizeof bp_last_error()->message];
  snprintf(lone_msg, sizeof lone_msg, "%s", bp_last_error()->message);
  assert_status(bp_project(shared, "long:1", &FOLD, &cb, fresh, &b), BP_ECRC);
  assert_string_equal(bp_last_error()->message, lone_msg);
  /* Every folded event before event 4000, and nothing after it. */
  uint64_t before = 4000 - 4000 / 3;
  if (ca.applied != before || cb.applied != before)
    fail_msg("applied before the damage: %llu alone, %llu with a helper, expected %llu",
             (unsigned long long)ca.applied, (unsigned long long)cb.applied, (unsigned long long)before);
  if (b.mix != a.mix) fail_msg("fold up to the damage: %016llx with a helper, %016llx alone",
                               (unsigned long long)b.mix, (unsigned long long)a.mix);
  assert_ok(bp_close(shared));
  assert_ok(bp_close(lone));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(every_cache_backend_passes_the_same_operations),
      cmocka_unit_test(custom_cache_vtable_is_checked),
      T(projection_replays_relevant_events_without_a_cache),
      T(cached_projection_with_custom_cache),
      T(cached_projection_with_lmdb),
      T(cached_projection_with_sqlite),
      T(incremental_projection_with_lmdb),
      T(incremental_projection_with_sqlite),
      T(caches_left_out_of_the_build_say_so),
      T(lmdb_cache_in_the_store_survives_a_reopen),
      T(watcher_yields_the_state_after_each_change),
      T(long_replays_decoded_with_helpers_fold_like_the_callers_own),
      T(a_damaged_frame_stops_a_shared_replay_where_a_lone_one_stops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
