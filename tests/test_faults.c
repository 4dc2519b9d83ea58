/*
 * test_faults.c - a failure injected at every file-system step of rotation,
 * close (seal and checkpoint), open and snapshot, plus short writes, refused mappings
 * and the budget of read descriptors. For each step k (until an operation
 * gets through without meeting the fault): the call fails with a clear error
 * or succeeds, nothing acknowledged is lost, the store reopens and bp_verify
 * finds it intact. (Compaction has the same sweep in test_compact.)
 */
#include "faultfs.h"
#include "testutil.h"
#include "store/os.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef tu_store_fixture fixture;
static int setup(void **state) { return tu_store_setup(state); }
static int teardown(void **state) {
  ff_disarm();
  return tu_store_teardown(state);
}

#define MAX_EVENTS 256

typedef struct acked {
  bp_id ids[MAX_EVENTS];
  char payloads[MAX_EVENTS][16];
  size_t n;
} acked;

static bp_status append_one(bp_store *s, acked *a, int i) {
  char p[16];
  snprintf(p, sizeof p, "\xa6" "ev%04d", i);
  bp_coord c = {i % 2 ? "odd" : "even", "faults"};
  bp_append_receipt r;
  bp_status st = bp_append(s, &c, 0x1001, p, 7, &r);
  if (st == BP_OK) {
    a->ids[a->n] = r.event_id;
    memcpy(a->payloads[a->n], p, 7);
    a->n++;
  }
  return st;
}

static void payload_is_acknowledged(const bp_event *ev, size_t i, void *ctx) {
  const acked *a = ctx;
  tu_assert_bytes_eq(ev->payload, ev->payload_len, a->payloads[i], 7, "payload");
}

/* Every acknowledged event is present once with its payload; sequences are
 * dense; the store verifies. */
static void assert_all_there(fixture *f, const acked *a, const char *what) {
  tu_assert_acknowledged(&f->cfg, a->ids, a->n, payload_is_acknowledged, (void *)a, what);
}

static bool message_names_io(void) {
  const char *m = bp_last_error()->message;
  return strstr(m, "segment") || strstr(m, "checkpoint") || strstr(m, "writer") || strstr(m, "fsync") || strstr(m, "index");
}

/* Appends across a segment boundary with the k-th file-system call failing. */
static void a_failure_at_every_step_of_rotation_loses_nothing(void **state) {
  fixture *f = *state;
  int k = 0;
  for (;; k++) {
    tu_remove_tree(f->dir);
    f->cfg.segment_max_bytes = 1024;
    f->cfg.sync_every_n_events = 1;
    bp_store *s;
    assert_ok(bp_open(&f->cfg, &s));
    acked a = {.n = 0};
    int i = 0;
    bp_store_diagnostics d;
    do { /* up to the last event that fits the first segment */
      assert_ok(append_one(s, &a, i++));
      bp_diagnostics(s, &d);
    } while (d.active_segment_bytes + 500 < 1024);
    ff_arm(k, false);
    bp_status st = BP_OK;
    for (int j = 0; j < 4; j++) {
      bp_status sj = append_one(s, &a, i++);
      if (sj && !st) st = sj;
      if (sj && sj != BP_EIO && sj != BP_EWRITER) fail_msg("step %d: append returned %s", k, bp_status_name(sj));
      if (sj && !message_names_io()) fail_msg("step %d: unclear message: %s", k, bp_last_error()->message);
    }
    bool hit = ff_hit();
    ff_disarm();
    /* The restart policy (once, by default) lets the writer go on after one failure. */
    if (hit) {
      bp_diagnostics(s, &d);
      if (!d.writer_failed) assert_ok(append_one(s, &a, i++));
    }
    bp_close(s);
    char what[48];
    snprintf(what, sizeof what, "rotation, failure at step %d", k);
    assert_all_there(f, &a, what);
    if (!hit) break;
  }
  print_message("rotation: a failure injected at each of %d file-system steps\n", k);
  assert_true(k >= 8);
}

/* bp_close (seal, fsync, checkpoint) with the k-th call failing. */
static void a_failure_at_every_step_of_close_loses_nothing(void **state) {
  fixture *f = *state;
  int k = 0;
  for (;; k++) {
    tu_remove_tree(f->dir);
    f->cfg.segment_max_bytes = 2048;
    f->cfg.sync_every_n_events = 1000; /* close makes them durable */
    bp_store *s;
    assert_ok(bp_open(&f->cfg, &s));
    acked a = {.n = 0};
    for (int i = 0; i < 9; i++) assert_ok(append_one(s, &a, i));
    ff_arm(k, false);
    bp_status st = bp_close(s);
    bool hit = ff_hit();
    ff_disarm();
    if (st && !message_names_io()) fail_msg("step %d: unclear message: %s", k, bp_last_error()->message);
    if (hit != (st != BP_OK) && !hit) fail_msg("step %d: close failed without a fault", k);
    char what[48];
    snprintf(what, sizeof what, "close, failure at step %d", k);
    assert_all_there(f, &a, what);
    if (!hit) break;
  }
  print_message("close: a failure injected at each of %d file-system steps\n", k);
  assert_true(k >= 6);
}

/* bp_open of a store with sealed segments, an unsealed one and a checkpoint,
 * with the k-th call failing: open fails cleanly or succeeds; either way the
 * next open sees every event. */
static void a_failure_at_every_step_of_open_changes_nothing(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  /* Built by a child that ends without closing, as a crashed process. */
  acked *a = mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(a != MAP_FAILED);
  a->n = 0;
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *s;
    if (bp_open(&f->cfg, &s)) _exit(2);
    for (int i = 0; i < 12; i++)
      if (append_one(s, a, i)) _exit(3);
    if (bp_close(s) || bp_open(&f->cfg, &s)) _exit(4);
    for (int i = 12; i < 15; i++)
      if (append_one(s, a, i)) _exit(5);
    _exit(bp_sync(s) ? 6 : 0);
  }
  int ws;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  /* Each step starts from the store as the crash left it: a read-write open
   * finishes the crashed segment (its footer written, the file cut, fsynced),
   * and those steps are among the ones that fail, or crash. */
  char pristine[4300];
  snprintf(pristine, sizeof pristine, "%s/crashed", f->tmp);
  tu_copy_dir(f->dir, pristine);
  int k = 0;
  for (;; k++) {
    tu_remove_tree(f->dir);
    tu_copy_dir(pristine, f->dir);
    bp_store *s;
    ff_arm(k, false);
    bp_status st = bp_open(&f->cfg, &s);
    bool hit = ff_hit();
    ff_disarm();
    if (st == BP_OK) assert_ok(bp_close(s));
    else if (st != BP_EIO && st != BP_ECORRUPT) fail_msg("step %d: open returned %s", k, bp_status_name(st));
    char what[48];
    snprintf(what, sizeof what, "open, failure at step %d", k);
    assert_all_there(f, a, what);
    /* The same step as a crash: the process dies there. */
    tu_remove_tree(f->dir);
    tu_copy_dir(pristine, f->dir);
    pid = fork();
    if (pid == 0) {
      ff_arm(k, true);
      bp_store *c;
      if (bp_open(&f->cfg, &c) == BP_OK) bp_close(c);
      _exit(0);
    }
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && (WEXITSTATUS(ws) == 0 || WEXITSTATUS(ws) == FF_CRASH_EXIT));
    snprintf(what, sizeof what, "open, crash at step %d", k);
    assert_all_there(f, a, what);
    if (!hit) break;
  }
  tu_remove_tree(pristine);
  munmap(a, sizeof *a);
  print_message("open: a failure and a crash injected at each of %d file-system steps\n", k);
  assert_true(k >= 3);
}

/* bp_snapshot with the k-th call failing: it fails with BP_EIO and leaves
 * no directory behind (so it can be tried again), or the copy opens with
 * every acknowledged event. Sealed segments are linked, the active one
 * copied. */
static void a_failure_at_every_step_of_snapshot_leaves_nothing(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  acked a = {.n = 0};
  for (int i = 0; i < 9; i++) assert_ok(append_one(s, &a, i));
  char dest[4300];
  snprintf(dest, sizeof dest, "%s/snapshot", f->tmp);
  int k = 0;
  for (;; k++) {
    ff_arm(k, false);
    bp_status st = bp_snapshot(s, dest);
    bool hit = ff_hit();
    ff_disarm();
    struct stat sb;
    if (st) {
      if (st != BP_EIO) fail_msg("step %d: bp_snapshot returned %s", k, bp_status_name(st));
      if (!strstr(bp_last_error()->message, "snapshot")) fail_msg("step %d: unclear message: %s", k, bp_last_error()->message);
      if (stat(dest, &sb) == 0) fail_msg("step %d: a failed snapshot left %s behind", k, dest);
    } else {
      bp_config copy = f->cfg;
      copy.data_dir = dest;
      char what[48];
      snprintf(what, sizeof what, "snapshot, failure at step %d", k);
      tu_assert_acknowledged(&copy, a.ids, a.n, payload_is_acknowledged, &a, what);
      tu_remove_tree(dest);
    }
    if (!hit) break;
  }
  print_message("snapshot: a failure injected at each of %d file-system steps\n", k);
  assert_true(k >= 5);
  assert_ok(bp_close(s));
}

/* ------------------------------------------------- short writes, mappings */

static ssize_t short_pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
  (void)cnt;
  size_t n = iov[0].iov_len < 7 ? iov[0].iov_len : 7; /* at most 7 bytes a call */
  return pwrite(fd, iov[0].iov_base, n, off);
}

static void *no_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  (void)addr, (void)len, (void)prot, (void)flags, (void)fd, (void)off;
  errno = ENOMEM;
  return MAP_FAILED;
}

static void short_writes_and_refused_mappings_lose_nothing(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  bp__os_table.pwritev = short_pwritev;
  bp__os_table.mmap = no_mmap;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  acked a = {.n = 0};
  for (int i = 0; i < 20; i++) assert_ok(append_one(s, &a, i));
  /* Reads of sealed segments fall back to pread. */
  for (size_t i = 0; i < a.n; i++) {
    bp_event *ev;
    assert_ok(bp_get(s, a.ids[i], &ev));
    bp_event_free(ev);
  }
  bp_compaction_config cc = {BP_COMPACT_MERGE, NULL, NULL, 2};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  assert_true(res.segments_removed > 0);
  assert_ok(bp_close(s));
  assert_all_there(f, &a, "short writes, no mmap");
  bp__os_table = bp__os_default;
  assert_all_there(f, &a, "short writes, then mmap again");
}

/* Descriptors this process holds open on segment files of dir; only on
 * segment `only` when it is not 0. */
static int open_segment_fds_of(const char *dir, uint64_t only) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char link[64], target[4300];
    snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) continue;
    target[len] = '\0';
    size_t dl = strlen(dir);
    if (strncmp(target, dir, dl) != 0 || target[dl] != '/' || !strstr(target + dl, ".fbat")) continue;
    if (only == 0 || strtoull(target + dl + 1, NULL, 10) == only) n++;
  }
  closedir(d);
  return n;
}

static int open_segment_fds(const char *dir) { return open_segment_fds_of(dir, 0); }

static uint64_t segment_of(bp_store *s, bp_id id) {
  bp_entry e;
  assert_ok(bp_get_entry(s, id, &e));
  return e.disk_pos.segment_id;
}

/* Sealed segments that cannot be mapped are read with pread through a cache
 * of descriptors that keeps at most fd_budget open, closing the least
 * recently used first. */
static void reads_keep_within_the_fd_budget_when_segments_cannot_be_mapped(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  f->cfg.fd_budget = 2;
  bp__os_table.mmap = no_mmap;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  acked a = {.n = 0};
  for (int i = 0; i < 24; i++) assert_ok(append_one(s, &a, i));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  if (d.segment_count < 8) fail_msg("only %" PRIu64 " segments; the test needs more than the budget", d.segment_count);
  if (open_segment_fds(f->dir) < 0) skip();
  /* Forwards, backwards and striding, so that every segment is reopened
   * after others pushed it out. The writer holds the active segment open
   * besides the budget. */
  int most = 0;
  for (int pass = 0; pass < 3; pass++)
    for (size_t k = 0; k < a.n; k++) {
      size_t i = pass == 0 ? k : pass == 1 ? a.n - 1 - k : (k * 7) % a.n;
      bp_event *ev;
      assert_ok(bp_get(s, a.ids[i], &ev));
      tu_assert_bytes_eq(ev->payload, ev->payload_len, a.payloads[i], 7, "payload");
      bp_event_free(ev);
      int open_now = open_segment_fds(f->dir);
      if (open_now > most) most = open_now;
    }
  if (most > 3) fail_msg("%d segment descriptors were open at once; the budget is 2 (+1 for the writer)", most);
  if (most < 2) fail_msg("%d segment descriptors open at most: reads did not go through the descriptor cache", most);
  /* The least recently used goes first: after reading from segments A, B,
   * A and then C, A stays open and B was closed. Events 0, 6 and 12 are in
   * three different sealed segments. */
  uint64_t seg[3];
  for (int k = 0; k < 3; k++) seg[k] = segment_of(s, a.ids[k * 6]);
  if (seg[0] == seg[1] || seg[1] == seg[2] || seg[0] == seg[2])
    fail_msg("events 0, 6 and 12 share a segment (%" PRIu64 ", %" PRIu64 ", %" PRIu64 ")", seg[0], seg[1], seg[2]);
  size_t order[] = {0, 6, 0, 12};
  for (size_t k = 0; k < 4; k++) {
    bp_event *ev;
    assert_ok(bp_get(s, a.ids[order[k]], &ev));
    bp_event_free(ev);
  }
  int a_open = open_segment_fds_of(f->dir, seg[0]), b_open = open_segment_fds_of(f->dir, seg[1]);
  if (a_open != 1 || b_open != 0)
    fail_msg("after reading segments A, B, A, C: A has %d descriptors open (want 1), B %d (want 0)", a_open, b_open);
  assert_ok(bp_close(s));
  bp__os_table = bp__os_default;
  assert_all_there(f, &a, "fd budget of 2");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(a_failure_at_every_step_of_rotation_loses_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(a_failure_at_every_step_of_close_loses_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(a_failure_at_every_step_of_open_changes_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(a_failure_at_every_step_of_snapshot_leaves_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(short_writes_and_refused_mappings_lose_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(reads_keep_within_the_fd_budget_when_segments_cannot_be_mapped, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
