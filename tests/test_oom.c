/*
 * test_oom.c - an allocation that fails at every point of opening, appending,
 * reading, following, projecting, compacting, copying, checking and closing
 * a store. The executable is linked with --wrap for
 * malloc, calloc, realloc and strdup, so every allocation the library makes
 * passes through here (those inside libc, json-c, zlib, LMDB and SQLite do
 * not). For each k, the k-th allocation from the start of the call fails, once;
 * the call must then either succeed or fail with BP_ENOMEM and a message,
 * leave the store usable (or, for open and close, reopenable), and lose
 * nothing acknowledged. The sweep for a call ends with the first k that the
 * call gets through without meeting the failure. Leaks are LeakSanitizer's
 * to find (make asan runs this too).
 */
#include "testutil.h"

#include <batpak/policy.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

/* Allocations left before the one that fails; negative: none fails. */
static atomic_long countdown = -1;
static atomic_bool hit;

static bool fail_now(void) {
  if (atomic_load_explicit(&countdown, memory_order_relaxed) < 0) return false;
  if (atomic_fetch_sub(&countdown, 1) != 0) return false;
  atomic_store(&hit, true);
  errno = ENOMEM;
  return true;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return fail_now() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { return fail_now() ? NULL : __real_strdup(s); }

static void arm(long k) {
  atomic_store(&hit, false);
  atomic_store(&countdown, k);
}

/* Disarms; whether the armed failure happened. */
static bool disarm(void) {
  atomic_store(&countdown, -1);
  return atomic_load(&hit);
}

/* The result of a call that met a failed allocation: success (what the call
 * returns without one), or BP_ENOMEM with a message. */
static void assert_ok_or_enomem(bp_status st, const char *what, long k) {
  if (st == BP_OK) return;
  if (st != BP_ENOMEM)
    fail_msg("%s, allocation %ld failing: %s (%s), expected BP_OK or BP_ENOMEM", what, k, bp_status_name(st),
             bp_last_error()->message);
  if (bp_last_error()->message[0] == '\0') fail_msg("%s, allocation %ld failing: BP_ENOMEM without a message", what, k);
}

enum { MAX_EVENTS = 4096 };

typedef struct acked {
  bp_id ids[MAX_EVENTS];
  size_t n;
} acked;

static bp_coord coord_of(size_t i) {
  static const char *entities[] = {"user:ann", "user:bo", "user:cy"};
  return (bp_coord){entities[i % 3], i % 2 ? "scope:odd" : "scope:even"};
}

static bp_status append_n(bp_store *s, acked *a, size_t n) {
  for (size_t i = 0; i < n; i++) {
    bp_coord c = coord_of(a->n);
    uint8_t p[2] = {0xcd, 0};
    bp_append_receipt r;
    bp_status st = bp_append(s, &c, 0x1001, p, 1, &r);
    if (st) return st;
    assert_true(a->n < MAX_EVENTS);
    a->ids[a->n++] = r.event_id;
  }
  return BP_OK;
}

/* Every acknowledged event is there, once, and the store verifies. */
static void assert_all_there(tu_store_fixture *f, const acked *a, const char *what) {
  tu_assert_acknowledged(&f->cfg, a->ids, a->n, NULL, NULL, what);
}

static int setup(void **state) {
  int rc = tu_store_setup(state);
  tu_store_fixture *f = *state;
  f->cfg.segment_max_bytes = 8 * 1024; /* a few segments, and rotations while appending */
  return rc;
}

static int teardown(void **state) {
  disarm();
  return tu_store_teardown(state);
}

/* What one sweep needs: the store and its acknowledged events, which call
 * (kind), and what the call left for its check. */
typedef struct sweep_ctx {
  tu_store_fixture *f;
  bp_store *s;
  acked *a;
  int kind;
  bp_store *opened;
  bp_entries entries;
  bp_events events;
  bp_event *event;
  bp_cursor *cursor;
  bp_subscription *sub;
  bp_cache *cache; /* the store's, when it has one */
  bp_store *closing;
  long count;
  char dest[4300];
  char pristine[4300]; /* a copy of the store to restore before each run, or "" */
  bp_store *src;        /* bp_append_frames: where the frames come from */
  void *frame;          /* the next frame to append (NULL: make one) */
  size_t frame_len;
} sweep_ctx;

typedef struct sweep_op {
  const char *what;
  bp_status (*run)(sweep_ctx *c);                   /* with the failure armed */
  void (*check)(sweep_ctx *c, bp_status st, long k); /* disarmed: checks and frees */
  bp_status expect;                                 /* what run returns without a failure */
  void (*prepare)(sweep_ctx *c);                    /* optional, disarmed, before each run */
} sweep_op;

/* Runs op with allocation k failing, for k = 0, 1, ... until it gets through
 * without meeting the failure. */
static void sweep(const sweep_op *op, sweep_ctx *c) {
  long k = 0;
  for (bool met = true; met; k++) {
    if (op->prepare) op->prepare(c);
    arm(k);
    bp_status st = op->run(c);
    met = disarm();
    assert_ok_or_enomem(st == op->expect ? BP_OK : st, op->what, k);
    if (!met && st != op->expect) fail_msg("%s: %s without a failed allocation", op->what, bp_status_name(st));
    op->check(c, st, k);
  }
  print_message("%s: %ld allocations swept\n", op->what, k);
}

/* The status of a call that returns a pointer (NULL on failure). */
static bp_status status_of(const void *p) { return p ? BP_OK : bp_last_error()->code; }

/* ---------------------------------------------------------------- open */

static bp_status run_open(sweep_ctx *c) {
  c->opened = NULL;
  return bp_open(&c->f->cfg, &c->opened);
}

/* A read-write open finishes the crashed segment it scanned: each run
 * starts again from the store as the crash left it. */
static void restore_crashed(sweep_ctx *c) {
  tu_remove_tree(c->f->dir);
  tu_copy_dir(c->pristine, c->f->dir);
}

static void check_open(sweep_ctx *c, bp_status st, long k) {
  if (st) {
    if (c->opened) fail_msg("%s, allocation %ld failing: bp_open failed but set *out", "bp_open", k);
    return;
  }
  bp_store_diagnostics d;
  bp_diagnostics(c->opened, &d);
  if (d.event_count != c->a->n)
    fail_msg("bp_open, allocation %ld failing: %" PRIu64 " events, want %zu", k, d.event_count, c->a->n);
  if (c->kind == 2 && d.segments_scanned == 0) fail_msg("bp_open by scan: no segment was scanned");
  assert_ok(bp_close(c->opened));
}

/* Opening by each path (checkpoint, SIDX footers, frame scan). */
static void open_meets_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  /* Shared with the child that appends without closing, below. */
  acked *a = mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(a != MAP_FAILED);
  a->n = 0;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  assert_ok(append_n(s, a, 60));
  assert_ok(bp_close(s));
  const sweep_op ops[] = {{"open by checkpoint", run_open, check_open},
                          {"open by SIDX footers", run_open, check_open},
                          {"open by frame scan", run_open, check_open, BP_OK, restore_crashed}};
  for (int path = 0; path < 3; path++) {
    f->cfg.enable_checkpoint = path == 0;
    if (path == 2) {
      /* A process that ends without closing leaves its segment unsealed:
       * that one is scanned. */
      pid_t pid = fork();
      if (pid == 0) {
        f->cfg.segment_max_bytes = 1u << 20;
        if (bp_open(&f->cfg, &s) || append_n(s, a, 20)) _exit(1);
        _exit(0);
      }
      int status;
      assert_int_equal(waitpid(pid, &status, 0), pid);
      assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    sweep_ctx c = {.f = f, .a = a, .kind = path};
    if (path == 2) {
      snprintf(c.pristine, sizeof c.pristine, "%s/crashed", f->tmp);
      tu_copy_dir(f->dir, c.pristine);
    }
    sweep(&ops[path], &c);
    assert_all_there(f, a, ops[path].what);
    if (path == 2) tu_remove_tree(c.pristine);
  }
  munmap(a, sizeof *a);
}

/* ------------------------------------------------------------- appends */

static bp_status run_append(sweep_ctx *c) {
  bp_append_receipt r[3];
  bp_status st;
  if (c->kind == 0) {
    bp_coord co = coord_of(c->a->n);
    st = bp_append(c->s, &co, 0x1001, "\xa1x", 2, &r[0]);
  } else if (c->kind == 1) {
    bp_event_in evs[3];
    memset(evs, 0, sizeof evs);
    for (int i = 0; i < 3; i++) {
      evs[i].coord = coord_of(c->a->n + (size_t)i);
      evs[i].kind = 0x1001;
      evs[i].payload = "\xa1y";
      evs[i].len = 2;
    }
    st = bp_append_batch(c->s, evs, 3, r);
  } else {
    bp_coord co = coord_of(c->a->n);
    st = bp_append_json(c->s, &co, 0x1001, "{\"a\": [1, 2, {\"b\": \"c\"}]}", &r[0]);
  }
  if (st == BP_OK)
    for (int i = 0; i < (c->kind == 1 ? 3 : 1); i++) c->a->ids[c->a->n++] = r[i].event_id;
  return st;
}

/* A frame of another store (an entity of its own, so that it continues
 * nothing here), made with allocations working. */
static void make_frame(sweep_ctx *c) {
  if (c->frame) return;
  char entity[32];
  snprintf(entity, sizeof entity, "replicated:%zu", c->a->n);
  bp_coord co = {entity, "s"};
  bp_append_receipt r;
  assert_ok(bp_append(c->src, &co, 0x1001, "\xa1z", 2, &r));
  assert_ok(bp_get_frame(c->src, r.event_id, &c->frame, &c->frame_len));
}

static bp_status run_append_frames(sweep_ctx *c) {
  bp_frame_in in = {.data = c->frame, .len = c->frame_len};
  bp_append_receipt r;
  bp_status st = bp_append_frames(c->s, &in, 1, &r);
  if (st == BP_OK) {
    c->a->ids[c->a->n++] = r.event_id;
    bp_free(c->frame);
    c->frame = NULL;
  }
  return st;
}

static void check_append(sweep_ctx *c, bp_status st, long k) {
  (void)st;
  /* The store goes on. */
  if (append_n(c->s, c->a, 1)) fail_msg("append kind %d, allocation %ld failing: the next append fails: %s", c->kind, k,
                                       bp_last_error()->message);
}

/* Appends (single, batch, JSON, frames), each followed by an append that must work. */
static void appends_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  sweep_ctx c = {.f = f, .a = &a};
  assert_ok(bp_open(&f->cfg, &c.s));
  assert_ok(append_n(c.s, &a, 5));
  const sweep_op ops[] = {{"bp_append", run_append, check_append},
                          {"bp_append_batch", run_append, check_append},
                          {"bp_append_json", run_append, check_append}};
  for (c.kind = 0; c.kind < 3; c.kind++) sweep(&ops[c.kind], &c);
  /* A replica's append, from frames of another store. */
  char src[4300];
  snprintf(src, sizeof src, "%s/frames-source", f->tmp);
  bp_config scfg;
  bp_config_init(&scfg, src);
  assert_ok(bp_open(&scfg, &c.src));
  const sweep_op frames = {"bp_append_frames", run_append_frames, check_append, BP_OK, make_frame};
  sweep(&frames, &c);
  bp_free(c.frame);
  assert_ok(bp_close(c.src));
  assert_ok(bp_close(c.s));
  assert_all_there(f, &a, "after the append sweeps");
}

/* --------------------------------------------------------------- reads */

static bp_status run_read(sweep_ctx *c) {
  bp_region odd = bp_region_with_scope(bp_region_all(), "scope:odd"), all = bp_region_all();
  c->event = NULL;
  switch (c->kind) {
    case 0: return bp_get(c->s, c->a->ids[7], &c->event);
    case 1: return bp_stream(c->s, "user:bo", &c->entries);
    case 2: return bp_query(c->s, &odd, &c->entries);
    case 3: return bp_walk_ancestors(c->s, c->a->ids[c->a->n - 1], 50, &c->events);
    case 4:
      c->cursor = bp_cursor_open(c->s, &all);
      return c->cursor ? bp_cursor_poll_batch(c->cursor, 1000, &c->entries) : status_of(c->cursor);
    default: {
      /* A durable cursor resumes where its last commit left it. */
      c->cursor = bp_cursor_open_durable(c->s, "sweep", &all);
      bp_status st = c->cursor ? bp_cursor_poll_batch(c->cursor, 1000, &c->entries) : status_of(c->cursor);
      if (!st) {
        bp_cursor_seek(c->cursor, 0);
        st = bp_cursor_commit(c->cursor);
        if (st) bp_entries_free(&c->entries);
      }
      return st;
    }
  }
}

static void check_read(sweep_ctx *c, bp_status st, long k) {
  static const char *names[] = {"bp_get", "bp_stream", "bp_query", "bp_walk_ancestors", "bp_cursor_poll_batch",
                                "durable cursor"};
  size_t n = c->a->n, want[] = {1, n / 3, n / 2, 50, n, n}, got = 0;
  if (st == BP_OK) {
    if (c->kind == 0) got = c->event != NULL, bp_event_free(c->event);
    else if (c->kind == 3) got = c->events.len, bp_events_free(&c->events);
    else got = c->entries.len, bp_entries_free(&c->entries);
    if (got != want[c->kind]) fail_msg("%s, allocation %ld failing: %zu results, want %zu", names[c->kind], k, got,
                                       want[c->kind]);
  }
  if (c->cursor) bp_cursor_close(c->cursor);
  c->cursor = NULL;
}

/* Reads: get, stream, query, a walk of ancestors, a cursor's poll, and a
 * durable cursor's poll and commit. */
static void reads_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  sweep_ctx c = {.f = f, .a = &a};
  assert_ok(bp_open(&f->cfg, &c.s));
  assert_ok(append_n(c.s, &a, 300));
  const sweep_op ops[] = {{"bp_get", run_read, check_read},
                          {"bp_stream", run_read, check_read},
                          {"bp_query", run_read, check_read},
                          {"bp_walk_ancestors", run_read, check_read},
                          {"bp_cursor_open and poll", run_read, check_read},
                          {"bp_cursor_open_durable, poll and commit", run_read, check_read}};
  for (c.kind = 0; c.kind < 6; c.kind++) sweep(&ops[c.kind], &c);
  assert_ok(bp_close(c.s));
  assert_all_there(f, &a, "after the read sweeps");
}

/* ------------------------------------------- following and projecting */

static bp_status run_follow(sweep_ctx *c) {
  bp_region all = bp_region_all();
  c->sub = bp_subscribe(c->s, &all);
  bp_status st = status_of(c->sub);
  if (!st) st = append_n(c->s, c->a, 1);
  if (!st) {
    bp_notification nt;
    st = bp_sub_recv(c->sub, &nt, 1000);
    if (!st && !bp_id_eq(nt.event_id, c->a->ids[c->a->n - 1])) fail_msg("the subscriber got another event");
  }
  return st;
}

static void check_follow(sweep_ctx *c, bp_status st, long k) {
  (void)st, (void)k;
  bp_sub_close(c->sub);
  c->sub = NULL;
}

static bool is_ann(const bp_notification *n, void *ctx) {
  (void)ctx;
  return strcmp(n->entity, "user:ann") == 0;
}

/* A filtered, limited subscription: appends until one for user:ann is seen. */
static bp_status run_follow_chain(sweep_ctx *c) {
  bp_region all = bp_region_all();
  c->sub = bp_subscribe(c->s, &all);
  if (c->sub) c->sub = bp_sub_take(bp_sub_filter(c->sub, is_ann, NULL), 1);
  bp_status st = status_of(c->sub);
  if (!st) st = append_n(c->s, c->a, 3); /* one of every three is user:ann's */
  bp_notification nt;
  if (!st && !(st = bp_sub_recv(c->sub, &nt, 1000)) && strcmp(nt.entity, "user:ann") != 0)
    fail_msg("the filter let %s through", nt.entity);
  return st;
}

static bp_status count_init(void *state, void *ctx) {
  (void)ctx;
  *(long *)state = 0;
  return BP_OK;
}

static bp_status count_apply(void *state, const bp_event *ev, void *ctx) {
  (void)ev, (void)ctx;
  ++*(long *)state;
  return BP_OK;
}

static bp_status count_encode(const void *state, void **bytes, size_t *len, void *ctx) {
  (void)ctx;
  if (!(*bytes = malloc(sizeof(long)))) return BP_ENOMEM;
  memcpy(*bytes, state, sizeof(long));
  *len = sizeof(long);
  return BP_OK;
}

static bp_status count_decode(void *state, const void *bytes, size_t len, void *ctx) {
  (void)ctx;
  if (len != sizeof(long)) return BP_ECORRUPT;
  memcpy(state, bytes, sizeof(long));
  return BP_OK;
}

/* kind 0: no cache; kind 1: a replay written to the store's cache (emptied
 * first); kind 2: a state read from the cache. */
static bp_status run_project(sweep_ctx *c) {
  static const bp_projection counter = {BP_PROJECTION_VERSION, "counter", 1, NULL, 0, false,
                                        count_init, count_apply, count_encode, count_decode, NULL};
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  c->count = -1;
  return bp_project(c->s, "user:ann", &counter, NULL, fresh, &c->count);
}

static void empty_cache(sweep_ctx *c) { assert_ok(bp_cache_delete_prefix(c->cache, "", 0)); }

static bp_status run_watch(sweep_ctx *c) {
  static const bp_projection counter = {BP_PROJECTION_VERSION, "counter", 1, NULL, 0, false,
                                        count_init, count_apply, NULL, NULL, NULL};
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  bp_watcher *w = bp_watch_projection(c->s, "user:ann", &counter, NULL, fresh);
  bp_status st = status_of(w);
  c->count = -1;
  if (!st) st = append_n(c->s, c->a, 3);
  if (!st) st = bp_watcher_recv(w, &c->count, 1000);
  bp_watcher_close(w);
  return st;
}

static void check_project(sweep_ctx *c, bp_status st, long k) {
  long want = (long)((c->a->n + 2) / 3);
  if (st == BP_OK && c->count != want) fail_msg("bp_project, allocation %ld failing: %ld events, want %ld", k, c->count, want);
}

/* Subscriptions (plain, and filtered and limited), a projection and a
 * projection watcher. */
static void following_and_projecting_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  sweep_ctx c = {.f = f, .a = &a};
  assert_ok(bp_open(&f->cfg, &c.s));
  assert_ok(append_n(c.s, &a, 30));
  const sweep_op follow = {"bp_subscribe and bp_sub_recv", run_follow, check_follow};
  const sweep_op chain = {"bp_sub_filter and bp_sub_take", run_follow_chain, check_follow};
  const sweep_op project = {"bp_project", run_project, check_project};
  const sweep_op watch = {"bp_watch_projection and bp_watcher_recv", run_watch, check_project};
  sweep(&follow, &c);
  sweep(&chain, &c);
  sweep(&project, &c);
  sweep(&watch, &c);
  assert_ok(bp_close(c.s));
  assert_all_there(f, &a, "after the subscription and projection sweeps");
}

static bp_status run_cache_open(sweep_ctx *c) {
  char path[4300];
  snprintf(path, sizeof path, "%s/cache-%d", c->f->tmp, c->kind);
  bp_status st = c->kind == 0 ? bp_cache_sqlite_open(path, &c->cache) : bp_cache_lmdb_open(path, 1u << 24, &c->cache);
  if (st) c->cache = NULL;
  return st;
}

static void check_cache_open(sweep_ctx *c, bp_status st, long k) {
  (void)st, (void)k;
  bp_cache_free(c->cache);
  c->cache = NULL;
}

/* Opening each cache, then projections that write it and read it. */
static void projection_caches_meet_a_failed_allocation_at_every_point(void **state) {
  tu_require_features(BP_FEATURE_LMDB_CACHE | BP_FEATURE_SQLITE_CACHE);
  tu_store_fixture *f = *state;
  static acked a;
  static const char *names[][3] = {{"SQLite cache open", "bp_project into SQLite", "bp_project from SQLite"},
                                   {"LMDB cache open", "bp_project into LMDB", "bp_project from LMDB"}};
  for (int which = 0; which < 2; which++) {
    a.n = 0;
    sweep_ctx c = {.f = f, .a = &a, .kind = which};
    const sweep_op open_op = {names[which][0], run_cache_open, check_cache_open};
    sweep(&open_op, &c);
    c.kind = which;
    assert_ok(run_cache_open(&c));
    assert_ok(bp_open_with_cache(&f->cfg, c.cache, &c.s));
    assert_ok(append_n(c.s, &a, 30));
    const sweep_op into = {names[which][1], run_project, check_project, BP_OK, empty_cache};
    const sweep_op from = {names[which][2], run_project, check_project};
    c.kind = 1;
    sweep(&into, &c);
    c.kind = 2;
    sweep(&from, &c);
    assert_ok(bp_close(c.s));
    assert_all_there(f, &a, names[which][2]);
    tu_remove_tree(f->dir);
  }
}

/* ------------------------------------- compaction, snapshots, checking */

static bp_status run_compact(sweep_ctx *c) {
  bp_compaction_config cc = {BP_COMPACT_MERGE, NULL, NULL, 2};
  bp_compaction_result res;
  return bp_compact(c->s, &cc, &res);
}

static void check_store_goes_on(sweep_ctx *c, bp_status st, long k) {
  (void)st;
  if (append_n(c->s, c->a, 1)) fail_msg("allocation %ld failing: the next append fails: %s", k, bp_last_error()->message);
}

static bp_status run_snapshot(sweep_ctx *c) {
  tu_remove_tree(c->dest);
  return bp_snapshot(c->s, c->dest);
}

static void check_snapshot(sweep_ctx *c, bp_status st, long k) {
  if (st) return;
  bp_config cfg;
  bp_config_init(&cfg, c->dest);
  bp_store *copy;
  assert_ok(bp_open(&cfg, &copy));
  bp_store_diagnostics d;
  bp_diagnostics(copy, &d);
  if (d.event_count != c->a->n)
    fail_msg("bp_snapshot, allocation %ld failing: the copy has %" PRIu64 " events, want %zu", k, d.event_count,
             c->a->n);
  assert_ok(bp_close(copy));
}

static bp_status run_verify(sweep_ctx *c) {
  bp_verify_report rep;
  bp_status st = bp_verify(c->f->dir, &rep);
  if (st == BP_ENOMEM && rep.problem_count) fail_msg("bp_verify ran out of memory and still listed problems");
  bp_verify_report_free(&rep);
  return st;
}

static void check_nothing(sweep_ctx *c, bp_status st, long k) { (void)c, (void)st, (void)k; }

/* Compaction (merge), a snapshot, and bp_verify of the closed store. */
static void compaction_snapshot_and_verify_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  sweep_ctx c = {.f = f, .a = &a};
  snprintf(c.dest, sizeof c.dest, "%s/snapshot", f->tmp);
  assert_ok(bp_open(&f->cfg, &c.s));
  const sweep_op compact = {"bp_compact", run_compact, check_store_goes_on};
  const sweep_op snapshot = {"bp_snapshot", run_snapshot, check_snapshot};
  const sweep_op verify = {"bp_verify", run_verify, check_nothing};
  assert_ok(append_n(c.s, &a, 200));
  sweep(&compact, &c);
  sweep(&snapshot, &c);
  assert_ok(bp_close(c.s));
  tu_remove_tree(c.dest);
  sweep(&verify, &c);
  assert_all_there(f, &a, "after the compaction, snapshot and verify sweeps");
}

/* -------------------------------------------------------------- policy */

static bool gate_pass(const void *ctx, void *data, bp_denial *denial) {
  (void)ctx, (void)data, (void)denial;
  return true;
}

static bool gate_deny(const void *ctx, void *data, bp_denial *denial) {
  (void)ctx, (void)data;
  bp_denial_set(denial, "E_LIMIT", "over the limit");
  bp_denial_add_context(denial, "limit", "10");
  return false;
}

/* kind 0: three gates pass and the receipt is appended; kind 1: the third
 * gate denies (every gate evaluated); kind 2: a bypass appended with its
 * audit event. */
static bp_status run_policy(sweep_ctx *c) {
  bp_gateset *set = bp_gateset_new();
  if (!set) return BP_ENOMEM;
  bp_gate gates[] = {{"first", "passes", gate_pass, NULL},
                     {"second", NULL, gate_pass, NULL},
                     {"third", "denies in kind 1", c->kind == 1 ? gate_deny : gate_pass, NULL}};
  bp_status st = BP_OK;
  for (int i = 0; i < 3 && !st; i++) st = bp_gateset_push(set, &gates[i]);
  bp_receipt *receipt = NULL;
  bp_coord co = coord_of(c->a->n);
  bp_append_receipt r;
  if (!st && c->kind == 2) {
    receipt = bp_bypass("\xa1z", 2, "incident 7", "the limit service is down");
    st = receipt ? bp_commit_bypass_append(c->s, &co, 0x1001, receipt, &r) : bp_last_error()->code;
  } else if (!st && c->kind == 1) {
    bp_denial **denials = NULL;
    size_t n = 0;
    st = bp_gateset_evaluate_all(set, NULL, "\xa1z", 2, &receipt, &denials, &n);
    if (st == BP_EDENIED && (n != 1 || strcmp(bp_denial_gate(denials[0]), "third") != 0))
      fail_msg("denied by %zu gates, the first %s", n, n ? bp_denial_gate(denials[0]) : "-");
    bp_denials_free(denials, n);
  } else if (!st) {
    bp_denial *denial = NULL;
    st = bp_gateset_evaluate(set, NULL, "\xa1z", 2, &receipt, &denial);
    bp_denial_free(denial);
    if (!st) st = bp_commit_append(c->s, &co, 0x1001, receipt, &r);
  }
  if (st == BP_OK) {
    c->a->ids[c->a->n++] = r.event_id;
    if (c->kind == 2) c->count++; /* its audit event */
  }
  bp_receipt_free(receipt);
  bp_gateset_free(set);
  return st;
}

/* Gate sets, evaluation (passing and denied), receipts committed by append,
 * and a bypass with its audit event. */
static void policy_meets_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  sweep_ctx c = {.f = f, .a = &a};
  assert_ok(bp_open(&f->cfg, &c.s));
  const sweep_op ops[] = {{"gates passed and committed", run_policy, check_store_goes_on, BP_OK},
                          {"gates denying", run_policy, check_store_goes_on, BP_EDENIED},
                          {"bypass committed", run_policy, check_store_goes_on, BP_OK}};
  for (c.kind = 0; c.kind < 3; c.kind++) sweep(&ops[c.kind], &c);
  assert_ok(bp_close(c.s));
  /* Every committed payload is there, and an audit event for each bypass. */
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  for (size_t i = 0; i < a.n; i++) {
    bp_entry e;
    if (bp_get_entry(s, a.ids[i], &e)) fail_msg("committed event %zu lost: %s", i, bp_last_error()->message);
  }
  bp_entries audits;
  assert_ok(bp_by_fact(s, BP_KIND_POLICY_BYPASS, &audits));
  if (audits.len != (size_t)c.count) fail_msg("%zu bypass audit events, %ld bypasses committed", audits.len, c.count);
  bp_entries_free(&audits);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.event_count, a.n + (size_t)c.count);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after the policy sweeps");
}

/* ----------------------------------------------------- codecs, outcomes */

static const char DOC[] = "{\"name\": \"ann\", \"tags\": [\"a\", \"b\", {\"deep\": [1, 2.5, null, true]}], \"n\": -7}";

/* kind 0: JSON to MessagePack and back; kind 1: a committed record encoded
 * and decoded; kind 2: outcomes built, batched, zipped, joined, encoded and
 * decoded. Each checks its own result when nothing failed. */
static bp_status run_codec(sweep_ctx *c) {
  bp_status st = BP_OK;
  if (c->kind == 0) {
    uint8_t *mp = NULL;
    size_t len = 0;
    char *json = NULL;
    st = bp_json_to_msgpack(DOC, strlen(DOC), &mp, &len);
    if (!st) st = bp_msgpack_to_json(mp, len, &json);
    if (!st && !strstr(json, "\"deep\":[1,2.5,null,true]")) fail_msg("JSON round trip gave %s", json);
    bp_free(mp);
    bp_free(json);
  } else if (c->kind == 1) {
    uint8_t payload[3] = {0x92, 0x01, 0x02};
    bp_committed in = {payload, sizeof payload, bp_id_v7(), 42, {7}}, out;
    uint8_t *bytes = NULL;
    size_t len = 0;
    st = bp_committed_encode(&in, &bytes, &len);
    if (!st) st = bp_committed_decode(bytes, len, &out);
    if (!st) {
      if (out.sequence != 42 || out.payload_len != 3 || memcmp(out.payload, payload, 3) != 0)
        fail_msg("committed record did not round-trip");
      bp_committed_free(&out);
    }
    bp_free(bytes);
  } else {
    bp_outcome *items[2] = {bp_outcome_ok("\x01", 1), bp_outcome_ok("\x02", 1)};
    bp_outcome *batch = bp_outcome_batch(items, 2);
    bp_outcome *zipped = bp_outcome_zip(batch, bp_outcome_ok("\x03", 1));
    bp_outcome *all[2] = {zipped, bp_outcome_retry(10, 1, 3, "busy")};
    bp_outcome *joined = bp_outcome_join_all(all, 2);
    if (!joined) return bp_last_error()->code;
    uint8_t *bytes = NULL;
    size_t len = 0;
    bp_outcome *back = NULL;
    st = bp_outcome_encode(joined, &bytes, &len);
    if (!st) st = bp_outcome_decode(bytes, len, &back);
    if (!st && !bp_outcome_equal(joined, back)) fail_msg("outcome did not round-trip");
    bp_outcome_free(back);
    bp_outcome_free(joined);
    bp_free(bytes);
  }
  return st;
}

/* Codecs and outcome combinators, which take ownership of what they combine
 * (LeakSanitizer finds what a failure drops). */
static void codecs_and_outcomes_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  sweep_ctx c = {.f = f};
  const sweep_op ops[] = {{"JSON and MessagePack", run_codec, check_nothing},
                          {"committed records", run_codec, check_nothing},
                          {"outcomes", run_codec, check_nothing}};
  for (c.kind = 0; c.kind < 3; c.kind++) sweep(&ops[c.kind], &c);
}

/* --------------------------------------------------------------- close */

static void open_and_append(sweep_ctx *c) {
  assert_ok(bp_open(&c->f->cfg, &c->closing));
  assert_ok(append_n(c->closing, c->a, 3));
}

static bp_status run_close(sweep_ctx *c) { return bp_close(c->closing); }

/* Closing (seal, footer, checkpoint): the store is freed in every case and
 * reopens with every event, rebuilding the index if the checkpoint was not
 * written. */
static void close_meets_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  sweep_ctx c = {.f = f, .a = &a};
  const sweep_op close_op = {"bp_close", run_close, check_nothing, BP_OK, open_and_append};
  sweep(&close_op, &c);
  assert_all_there(f, &a, "after the close sweep");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(open_meets_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(appends_meet_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(reads_meet_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(following_and_projecting_meet_a_failed_allocation_at_every_point, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(projection_caches_meet_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(compaction_snapshot_and_verify_meet_a_failed_allocation_at_every_point, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(policy_meets_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(codecs_and_outcomes_meet_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(close_meets_a_failed_allocation_at_every_point, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
