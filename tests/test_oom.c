/*
 * test_oom.c - an allocation that fails at every point of opening, appending,
 * reading and closing a store. The executable is linked with --wrap for
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

/* The result of a call that met a failed allocation: success, or BP_ENOMEM
 * with a message. */
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
  bp_store *s;
  bp_status st = bp_open(&f->cfg, &s);
  if (st) fail_msg("%s: reopen: %s: %s", what, bp_status_name(st), bp_last_error()->message);
  for (size_t i = 0; i < a->n; i++) {
    bp_event *ev;
    st = bp_get(s, a->ids[i], &ev);
    if (st) fail_msg("%s: acknowledged event %zu lost: %s", what, i, bp_last_error()->message);
    bp_event_free(ev);
  }
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  if (d.event_count != a->n) fail_msg("%s: %" PRIu64 " events, %zu acknowledged", what, d.event_count, a->n);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, what);
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
  const char *paths[] = {"checkpoint", "SIDX footers", "frame scan"};
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
    long k = 0;
    for (;; k++) {
      arm(k);
      s = NULL;
      bp_status st = bp_open(&f->cfg, &s);
      bool met = disarm();
      assert_ok_or_enomem(st, paths[path], k);
      if (st == BP_OK) {
        bp_store_diagnostics d;
        bp_diagnostics(s, &d);
        if (d.event_count != a->n)
          fail_msg("%s, allocation %ld failing: opened with %" PRIu64 " events, want %zu", paths[path], k,
                   d.event_count, a->n);
        if (path == 2 && d.segments_scanned == 0) fail_msg("frame scan: no segment was scanned");
        assert_ok(bp_close(s));
      } else if (s != NULL) {
        fail_msg("%s, allocation %ld failing: bp_open failed but set *out", paths[path], k);
      }
      if (!met) break;
    }
    print_message("open by %s: %ld allocations swept\n", paths[path], k);
    assert_all_there(f, a, paths[path]);
  }
  munmap(a, sizeof *a);
}

/* Appends (single, batch, JSON), each followed by an append that must work. */
static void appends_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  assert_ok(append_n(s, &a, 5));
  const char *kinds[] = {"bp_append", "bp_append_batch", "bp_append_json"};
  for (int kind = 0; kind < 3; kind++) {
    long k = 0;
    for (;; k++) {
      bp_status st;
      bp_append_receipt r[3];
      arm(k);
      if (kind == 0) {
        bp_coord c = coord_of(a.n);
        st = bp_append(s, &c, 0x1001, "\xa1x", 2, &r[0]);
      } else if (kind == 1) {
        bp_event_in evs[3];
        memset(evs, 0, sizeof evs);
        for (int i = 0; i < 3; i++) {
          evs[i].coord = coord_of(a.n + (size_t)i);
          evs[i].kind = 0x1001;
          evs[i].payload = "\xa1y";
          evs[i].len = 2;
        }
        st = bp_append_batch(s, evs, 3, r);
      } else {
        bp_coord c = coord_of(a.n);
        st = bp_append_json(s, &c, 0x1001, "{\"a\": [1, 2, {\"b\": \"c\"}]}", &r[0]);
      }
      bool met = disarm();
      assert_ok_or_enomem(st, kinds[kind], k);
      if (st == BP_OK)
        for (int i = 0; i < (kind == 1 ? 3 : 1); i++) a.ids[a.n++] = r[i].event_id;
      /* The store goes on. */
      st = append_n(s, &a, 1);
      if (st) fail_msg("%s, allocation %ld failing: the next append fails: %s", kinds[kind], k, bp_last_error()->message);
      if (!met) break;
    }
    print_message("%s: %ld allocations swept\n", kinds[kind], k);
  }
  assert_ok(bp_close(s));
  assert_all_there(f, &a, "after the append sweeps");
}

/* Reads: get, stream, query and a cursor's poll. */
static void reads_meet_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  assert_ok(append_n(s, &a, 300));
  const char *kinds[] = {"bp_get", "bp_stream", "bp_query", "bp_cursor_poll_batch"};
  for (int kind = 0; kind < 4; kind++) {
    long k = 0;
    for (;; k++) {
      bp_status st;
      size_t got = 0, want = 0;
      bp_entries e;
      bp_cursor *cur = NULL;
      if (kind == 3) {
        bp_region all = bp_region_all();
        cur = bp_cursor_open(s, &all);
        assert_non_null(cur);
      }
      arm(k);
      if (kind == 0) {
        bp_event *ev = NULL;
        st = bp_get(s, a.ids[7], &ev);
        got = st ? 0 : 1, want = 1;
        bp_event_free(ev);
      } else if (kind == 1) {
        st = bp_stream(s, "user:bo", &e);
        want = a.n / 3;
      } else if (kind == 2) {
        bp_region odd = bp_region_with_scope(bp_region_all(), "scope:odd");
        st = bp_query(s, &odd, &e);
        want = a.n / 2;
      } else {
        st = bp_cursor_poll_batch(cur, 1000, &e);
        want = a.n;
      }
      bool met = disarm();
      assert_ok_or_enomem(st, kinds[kind], k);
      if (kind > 0 && st == BP_OK) {
        got = e.len;
        bp_entries_free(&e);
      }
      if (cur) bp_cursor_close(cur);
      if (st == BP_OK && got != want)
        fail_msg("%s, allocation %ld failing: %zu results, want %zu", kinds[kind], k, got, want);
      if (!met) break;
    }
    print_message("%s: %ld allocations swept\n", kinds[kind], k);
  }
  assert_ok(bp_close(s));
  assert_all_there(f, &a, "after the read sweeps");
}

/* Closing (seal, footer, checkpoint): the store is freed in every case and
 * reopens with every event, rebuilding the index if the checkpoint was not
 * written. */
static void close_meets_a_failed_allocation_at_every_point(void **state) {
  tu_store_fixture *f = *state;
  static acked a;
  a.n = 0;
  long k = 0;
  for (;; k++) {
    bp_store *s;
    assert_ok(bp_open(&f->cfg, &s));
    assert_ok(append_n(s, &a, 3));
    arm(k);
    bp_status st = bp_close(s);
    bool met = disarm();
    assert_ok_or_enomem(st, "bp_close", k);
    if (!met) break;
  }
  print_message("bp_close: %ld allocations swept\n", k);
  assert_all_there(f, &a, "after the close sweep");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(open_meets_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(appends_meet_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(reads_meet_a_failed_allocation_at_every_point, setup, teardown),
      cmocka_unit_test_setup_teardown(close_meets_a_failed_allocation_at_every_point, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
