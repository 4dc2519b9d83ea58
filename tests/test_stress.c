/*
 * test_stress.c - eight writer threads and eight reader threads on one store
 * for a fixed number of operations (docs/ARCHITECTURE.md, threads). Writers append to
 * their own entity and to a shared one, some in batches, across frequent
 * segment rotations. Readers query, stream, get and poll cursors the whole
 * time and check what must hold at every moment:
 *   - a query sees a gap-free prefix of the global sequence;
 *   - an entity's stream has clocks 0, 1, 2, ... in order;
 *   - every listed event can be read, and is the event listed;
 *   - a cursor never skips or repeats.
 * At the end: every acknowledged append is present once, counts add up, and
 * bp_verify finds nothing wrong after close. Also run under TSan (make tsan).
 *
 * BATPAK_STRESS_OPS overrides the appends per writer (default 400).
 *
 * Then one writer brings a new entity with every append while readers look
 * up the names already there, across every growth of the name tables.
 */
#include "testutil.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

enum { WRITERS = 8, READERS = 8 };

typedef struct shared {
  bp_store *s;
  int ops;
  atomic_int writers_left;
  atomic_int failures;
  char failure[256];
  pthread_mutex_t lock;
} shared;

typedef struct writer_arg {
  shared *sh;
  int t;
  bp_id *ids; /* ops acknowledged ids (batches contribute two) */
  int nids;
} writer_arg;

__attribute__((format(printf, 2, 3))) static void record_failure(shared *sh, const char *fmt, ...) {
  pthread_mutex_lock(&sh->lock);
  if (atomic_fetch_add(&sh->failures, 1) == 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->failure, sizeof sh->failure, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&sh->lock);
}

static void *writer(void *p) {
  writer_arg *a = p;
  shared *sh = a->sh;
  char own[32];
  snprintf(own, sizeof own, "writer:%d", a->t);
  for (int i = 0; i < sh->ops && !atomic_load(&sh->failures); i++) {
    uint8_t payload[3] = {0x92, (uint8_t)(a->t & 0x7f), (uint8_t)(i & 0x7f)}; /* [t, i] */
    bp_append_receipt r[2];
    bp_status st;
    if (i % 10 == 9) {
      bp_event_in in[2];
      memset(in, 0, sizeof in);
      in[0] = (bp_event_in){{own, "stress"}, 0x1002, payload, 3, {0}};
      in[1] = (bp_event_in){{"shared:all", "stress"}, 0x1002, payload, 3, {0}};
      st = bp_append_batch(sh->s, in, 2, r);
      if (!st) {
        a->ids[a->nids++] = r[0].event_id;
        a->ids[a->nids++] = r[1].event_id;
      }
    } else {
      bp_coord c = {i % 4 == 0 ? "shared:all" : own, "stress"};
      st = bp_append(sh->s, &c, 0x1001, payload, 3, &r[0]);
      if (!st) a->ids[a->nids++] = r[0].event_id;
    }
    if (st) record_failure(sh, "writer %d append %d: %s: %s", a->t, i, bp_status_name(st), bp_last_error()->message);
  }
  atomic_fetch_sub(&sh->writers_left, 1);
  return NULL;
}

/* One pass of a reader's checks. */
static void reader_pass(shared *sh, int t, bp_cursor *cur, uint64_t *cursor_next) {
  bp_store *s = sh->s;
  bp_region all = bp_region_all();
  bp_entries e;
  if (bp_query(s, &all, &e)) {
    record_failure(sh, "reader %d: query failed: %s", t, bp_last_error()->message);
    return;
  }
  for (size_t i = 0; i < e.len; i++)
    if (e.items[i].global_sequence != i) {
      record_failure(sh, "reader %d: query position %zu holds sequence %" PRIu64, t, i, e.items[i].global_sequence);
      break;
    }
  if (e.len) {
    /* Read one listed event back (a different one each pass). */
    const bp_entry *pick = &e.items[(size_t)t * 7919 % e.len];
    bp_event *ev;
    if (bp_get(s, pick->event_id, &ev)) {
      record_failure(sh, "reader %d: get of a listed event failed: %s", t, bp_last_error()->message);
    } else {
      if (!bp_id_eq(ev->header.event_id, pick->event_id) || strcmp(ev->entity, pick->entity) != 0)
        record_failure(sh, "reader %d: get returned another event", t);
      bp_event_free(ev);
    }
  }
  bp_entries_free(&e);

  char entity[32];
  if (t % 2) snprintf(entity, sizeof entity, "shared:all");
  else snprintf(entity, sizeof entity, "writer:%d", t);
  bp_entries st;
  if (bp_stream(s, entity, &st)) {
    record_failure(sh, "reader %d: stream failed: %s", t, bp_last_error()->message);
    return;
  }
  for (size_t i = 0; i < st.len; i++)
    if (st.items[i].clock != i) {
      record_failure(sh, "reader %d: %s has clock %u at position %zu", t, entity, st.items[i].clock, i);
      break;
    }
  bp_entries_free(&st);

  bp_entries b;
  while (bp_cursor_poll_batch(cur, 256, &b) == BP_OK && b.len) {
    for (size_t i = 0; i < b.len; i++) {
      if (b.items[i].global_sequence != *cursor_next)
        record_failure(sh, "reader %d: cursor delivered %" PRIu64 ", expected %" PRIu64, t, b.items[i].global_sequence,
                       *cursor_next);
      *cursor_next = b.items[i].global_sequence + 1;
    }
    bp_entries_free(&b);
  }
}

typedef struct reader_arg {
  shared *sh;
  int t;
  uint64_t passes, cursor_seen;
} reader_arg;

static void *reader(void *p) {
  reader_arg *a = p;
  bp_region all = bp_region_all();
  bp_cursor *cur = bp_cursor_open(a->sh->s, &all);
  uint64_t next = 0;
  while (!atomic_load(&a->sh->failures)) {
    bool last = atomic_load(&a->sh->writers_left) == 0;
    reader_pass(a->sh, a->t, cur, &next);
    a->passes++;
    if (last) break; /* one full pass after the writers finished */
  }
  a->cursor_seen = next;
  bp_cursor_close(cur);
  return NULL;
}

static int id_cmp(const void *x, const void *y) {
  return bp_id_cmp(*(const bp_id *)x, *(const bp_id *)y);
}

static void eight_writers_and_eight_readers_keep_every_invariant(void **state) {
  tu_store_fixture *f = *state;
  const char *env = getenv("BATPAK_STRESS_OPS");
  shared sh;
  memset(&sh, 0, sizeof sh);
  sh.ops = env && atoi(env) > 0 ? atoi(env) : 400;
  pthread_mutex_init(&sh.lock, NULL);
  atomic_init(&sh.writers_left, WRITERS);
  atomic_init(&sh.failures, 0);
  f->cfg.segment_max_bytes = 16 * 1024;
  assert_ok(bp_open(&f->cfg, &sh.s));

  writer_arg w[WRITERS];
  reader_arg r[READERS];
  pthread_t wt[WRITERS], rt[READERS];
  for (int i = 0; i < READERS; i++) {
    r[i] = (reader_arg){&sh, i, 0, 0};
    assert_int_equal(pthread_create(&rt[i], NULL, reader, &r[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer_arg){&sh, i, calloc((size_t)sh.ops * 2, sizeof(bp_id)), 0};
    assert_non_null(w[i].ids);
    assert_int_equal(pthread_create(&wt[i], NULL, writer, &w[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++) pthread_join(wt[i], NULL);
  for (int i = 0; i < READERS; i++) pthread_join(rt[i], NULL);
  if (atomic_load(&sh.failures)) fail_msg("%d failures; the first: %s", atomic_load(&sh.failures), sh.failure);

  /* Every acknowledged id present exactly once. */
  size_t total = 0;
  for (int i = 0; i < WRITERS; i++) total += (size_t)w[i].nids;
  bp_id *all_ids = malloc(total * sizeof *all_ids);
  assert_non_null(all_ids);
  size_t k = 0;
  for (int i = 0; i < WRITERS; i++) {
    memcpy(all_ids + k, w[i].ids, (size_t)w[i].nids * sizeof(bp_id));
    k += (size_t)w[i].nids;
    free(w[i].ids);
  }
  bp_region everything = bp_region_all();
  bp_entries e;
  assert_ok(bp_query(sh.s, &everything, &e));
  assert_int_equal(e.len, total);
  bp_id *stored = malloc(e.len * sizeof *stored);
  assert_non_null(stored);
  for (size_t i = 0; i < e.len; i++) stored[i] = e.items[i].event_id;
  qsort(all_ids, total, sizeof *all_ids, id_cmp);
  qsort(stored, e.len, sizeof *stored, id_cmp);
  for (size_t i = 0; i < total; i++)
    if (!bp_id_eq(all_ids[i], stored[i])) fail_msg("acknowledged and stored ids differ at sorted position %zu", i);
  bp_entries_free(&e);
  free(all_ids);
  free(stored);
  uint64_t passes = 0;
  for (int i = 0; i < READERS; i++) {
    passes += r[i].passes;
    assert_int_equal(r[i].cursor_seen, total);
  }
  assert_ok(bp_close(sh.s));
  pthread_mutex_destroy(&sh.lock);

  bp_verify_report rep;
  bp_status vst = bp_verify(f->dir, &rep);
  if (vst) {
    for (size_t i = 0; i < rep.problem_count; i++)
      print_message("  %s: %s\n", rep.problems[i].where, rep.problems[i].what);
    fail_msg("bp_verify after the stress: %s", bp_status_name(vst));
  }
  print_message("stress: %zu events from %d writers, %" PRIu64 " reader passes, %" PRIu64 " segments\n", total,
                WRITERS, passes, rep.segments);
  bp_verify_report_free(&rep);
}

/* ----------------------------------------------- names that keep coming */

enum { NAMES = 3000, NAME_SCOPES = 97, NAME_READERS = 2 };

typedef struct names_shared {
  bp_store *s;
  atomic_int published; /* entities 0 .. published-1 have their event */
  atomic_int failures;
  char failure[256];
} names_shared;

static void *name_reader(void *p) {
  names_shared *sh = p;
  uint64_t x = 0x9e3779b97f4a7c15ull ^ (uintptr_t)&x;
  while (atomic_load(&sh->published) < NAMES && !atomic_load(&sh->failures)) {
    int n = atomic_load(&sh->published);
    if (n == 0) continue;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    int i = (int)(x % (uint64_t)n);
    char ent[32];
    snprintf(ent, sizeof ent, "name:%d", i);
    bp_entries e;
    bp_status st = bp_stream(sh->s, ent, &e);
    if (st || e.len != 1 || strcmp(e.items[0].entity, ent) != 0) {
      if (atomic_fetch_add(&sh->failures, 1) == 0)
        snprintf(sh->failure, sizeof sh->failure, "stream of %s: %s, %zu entries, first %s", ent,
                 bp_status_name(st), st ? 0 : e.len, !st && e.len ? e.items[0].entity : "-");
    }
    if (!st) bp_entries_free(&e);
  }
  return NULL;
}

/* One writer brings a new entity with every append (and scopes now and
 * then), so that the index's name tables grow many times, while readers
 * look up names already there: each must be found, with its one event. */
static void names_grow_while_readers_look_them_up(void **state) {
  tu_store_fixture *f = *state;
  names_shared sh;
  memset(&sh, 0, sizeof sh);
  assert_ok(bp_open(&f->cfg, &sh.s));
  pthread_t rt[NAME_READERS];
  for (int i = 0; i < NAME_READERS; i++) assert_int_equal(pthread_create(&rt[i], NULL, name_reader, &sh), 0);
  for (int i = 0; i < NAMES && !atomic_load(&sh.failures); i++) {
    char ent[32], scope[32];
    snprintf(ent, sizeof ent, "name:%d", i);
    snprintf(scope, sizeof scope, "scope:%d", i % NAME_SCOPES);
    bp_coord c = {ent, scope};
    bp_append_receipt r;
    bp_status st = bp_append(sh.s, &c, 0x1001, "\xc0", 1, &r);
    if (st) fail_msg("append %d: %s: %s", i, bp_status_name(st), bp_last_error()->message);
    atomic_store(&sh.published, i + 1);
  }
  for (int i = 0; i < NAME_READERS; i++) pthread_join(rt[i], NULL);
  if (atomic_load(&sh.failures)) fail_msg("%d failures; the first: %s", atomic_load(&sh.failures), sh.failure);
  assert_ok(bp_close(sh.s));

  /* Reopened by the persistent index, and by the footers: every name and
   * scope is found. */
  for (int path = 0; path < 2; path++) {
    if (path == 1) tu_drop_index(f->dir);
    bp_store *s;
    assert_ok(bp_open(&f->cfg, &s));
    for (int i = 0; i < NAMES; i++) {
      char ent[32];
      snprintf(ent, sizeof ent, "name:%d", i);
      bp_entries e;
      assert_ok(bp_stream(s, ent, &e));
      if (e.len != 1) fail_msg("open path %d: %s has %zu events, want 1", path, ent, e.len);
      bp_entries_free(&e);
    }
    for (int k = 0; k < NAME_SCOPES; k++) {
      char scope[32];
      snprintf(scope, sizeof scope, "scope:%d", k);
      bp_entries e;
      assert_ok(bp_by_scope(s, scope, &e));
      size_t want = (size_t)(NAMES / NAME_SCOPES + (k < NAMES % NAME_SCOPES));
      if (e.len != want) fail_msg("open path %d: %s has %zu events, want %zu", path, scope, e.len, want);
      bp_entries_free(&e);
    }
    assert_ok(bp_close(s));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(eight_writers_and_eight_readers_keep_every_invariant, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(names_grow_while_readers_look_them_up, tu_store_setup, tu_store_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
