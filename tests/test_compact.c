/* test_compact.c - bp_compact: the three strategies against expected event
 * sets, the crate's on-disk result, appends and cursors across a compaction,
 * and a failure or a crash injected at every file-system step. */
#include "testutil.h"
#include "faultfs.h"
#include "store/os.h"
#include "store/store_impl.h"
#include "wire/records.h"

#include <dirent.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef tu_store_fixture fixture;

static int setup(void **state) { return tu_store_setup(state); }
static int teardown(void **state) {
  ff_disarm();
  return tu_store_teardown(state);
}

#define KIND_A ((bp_kind)0x1001)
#define KIND_B ((bp_kind)0x1002)

/* What a test remembers of one event. */
typedef struct rec {
  bp_id id;
  char entity[16];
  bp_kind kind;
  uint8_t event_hash[32], prev_hash[32];
  char payload[16];
  size_t payload_len;
} rec;

typedef struct recs {
  rec *v;
  size_t n;
} recs;

/* Every event of the store, in global-sequence order; checks the sequences are dense. */
static recs snapshot_events(bp_store *s) {
  bp_entries all;
  bp_region r = bp_region_all();
  assert_ok(bp_query(s, &r, &all));
  recs out = {calloc(all.len + 1, sizeof(rec)), all.len};
  for (size_t i = 0; i < all.len; i++) {
    const bp_entry *e = &all.items[i];
    if (e->global_sequence != i) fail_msg("event %zu has global sequence %llu", i, (unsigned long long)e->global_sequence);
    rec *o = &out.v[i];
    o->id = e->event_id;
    snprintf(o->entity, sizeof o->entity, "%s", e->entity);
    o->kind = e->kind;
    memcpy(o->event_hash, e->hash_chain.event_hash, 32);
    memcpy(o->prev_hash, e->hash_chain.prev_hash, 32);
    bp_event *ev;
    assert_ok(bp_get(s, e->event_id, &ev));
    assert_true(ev->payload_len <= sizeof o->payload);
    memcpy(o->payload, ev->payload, ev->payload_len);
    o->payload_len = ev->payload_len;
    if (ev->header.kind != e->kind) fail_msg("event %zu: frame kind %#x, index kind %#x", i, ev->header.kind, e->kind);
    bp_event_free(ev);
  }
  bp_entries_free(&all);
  return out;
}

static void assert_same_event(const rec *got, const rec *want, size_t i) {
  if (!bp_id_eq(got->id, want->id)) fail_msg("event %zu: another id", i);
  if (strcmp(got->entity, want->entity)) fail_msg("event %zu: entity %s, expected %s", i, got->entity, want->entity);
  if (got->kind != want->kind) fail_msg("event %zu: kind %#x, expected %#x", i, got->kind, want->kind);
  if (memcmp(got->event_hash, want->event_hash, 32) || memcmp(got->prev_hash, want->prev_hash, 32))
    fail_msg("event %zu: hash chain changed", i);
  tu_assert_bytes_eq(got->payload, got->payload_len, want->payload, want->payload_len, "payload");
}

static void assert_events(const recs *got, const recs *want) {
  if (got->n != want->n) fail_msg("%zu events, expected %zu", got->n, want->n);
  for (size_t i = 0; i < got->n; i++) assert_same_event(&got->v[i], &want->v[i], i);
}

/* n events in segments of about 1 KiB: entities user:0..2 and tmp:0 in turn,
 * kinds A and B alternating. */
static void append_events(bp_store *s, int from, int n) {
  static const char *ents[4] = {"user:0", "user:1", "user:2", "tmp:0"};
  for (int i = from; i < from + n; i++) {
    bp_coord c = {ents[i % 4], "scope"};
    char p[8];
    snprintf(p, sizeof p, "\xa5v%04d", i);
    assert_ok(bp_append(s, &c, i % 2 ? KIND_B : KIND_A, p, 6, NULL));
  }
}

static bp_store *open_small(fixture *f) {
  f->cfg.segment_max_bytes = 1024;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  return s;
}

static size_t count_files(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0, k = strlen(suffix);
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (l >= k && strcmp(e->d_name + l - k, suffix) == 0) n++;
  }
  closedir(d);
  return n;
}

static bool exists(const fixture *f, const char *name) {
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", f->dir, name);
  struct stat st;
  return lstat(p, &st) == 0;
}

static void assert_verifies(const fixture *f) { tu_assert_verifies(f->dir, "after the compaction"); }

static void reopen(fixture *f, bp_store **s) {
  assert_ok(bp_close(*s));
  assert_ok(bp_open(&f->cfg, s));
}

static bool keep_users(const bp_event *ev, void *ctx) {
  (void)ctx;
  return strncmp(ev->entity, "tmp:", 4) != 0;
}

static bool keep_not_user0(const bp_event *ev, void *ctx) {
  (void)ctx;
  return strcmp(ev->entity, "user:0") != 0;
}

static recs tombstoned(const recs *all) {
  recs out = {calloc(all->n + 1, sizeof(rec)), all->n};
  memcpy(out.v, all->v, all->n * sizeof(rec));
  return out;
}

/* ----------------------------------------------------------------- merge */

/* The frames region of a sealed segment file: from after its header to the
 * start of its SIDX footer. */
static uint8_t *frames_of(const char *path, size_t *len) {
  size_t n;
  uint8_t *d = tu_read_file(path, &n);
  assert_non_null(d);
  bp__segment_header h;
  size_t start;
  assert_ok(bp__segment_header_decode(d, n, &h, &start));
  assert_memory_equal(d + n - 4, "SIDX", 4);
  size_t end = (size_t)bp__get_le64(d + n - 16);
  uint8_t *out = malloc(end - start + 1);
  memcpy(out, d + start, end - start);
  *len = end - start;
  free(d);
  return out;
}

static void merge_keeps_every_event_in_one_segment_with_the_lowest_id(void **state) {
  fixture *f = *state;
  bp_store *s = open_small(f);
  append_events(s, 0, 60);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  size_t segs = d.segment_count;
  assert_true(segs >= 5);
  recs before = snapshot_events(s);

  /* The frames of the sealed segments, in order: what the merged segment must hold. */
  bp__buf want;
  bp__buf_init(&want);
  for (uint64_t id = 1; id < d.active_segment_id; id++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%06llu.fbat", f->dir, (unsigned long long)id);
    size_t n;
    uint8_t *fr = frames_of(p, &n);
    bp__buf_append(&want, fr, n);
    free(fr);
  }

  bp_compaction_config cfg = {.strategy = BP_COMPACT_MERGE};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cfg, &res));
  assert_int_equal(res.segments_removed, segs - 2);
  assert_true(res.bytes_reclaimed > 0);
  assert_int_equal(count_files(f->dir, ".fbat"), 2);
  assert_true(exists(f, "000001.fbat"));
  assert_false(exists(f, "000002.fbat"));
  assert_false(exists(f, "compact.intent"));
  assert_int_equal(count_files(f->dir, ".compact"), 0);

  char p[4200];
  snprintf(p, sizeof p, "%s/000001.fbat", f->dir);
  size_t n;
  uint8_t *merged = frames_of(p, &n);
  tu_assert_bytes_eq(merged, n, want.data, want.len, "merged frames");
  free(merged);
  bp__buf_free(&want);

  recs after = snapshot_events(s);
  assert_events(&after, &before);
  free(after.v);

  /* Appends go on; reopen by the persistent index (the compaction dropped
   * the one of the old numbering, close wrote the new one), then by the
   * checkpoint the compaction wrote, then by SIDX footers. */
  append_events(s, 60, 10);
  recs later = snapshot_events(s);
  assert_false(exists(f, "index"));
  reopen(f, &s);
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_INDEX);
  after = snapshot_events(s);
  assert_events(&after, &later);
  free(after.v);
  assert_ok(bp_close(s));
  tu_drop_index(f->dir);
  assert_ok(bp_open(&f->cfg, &s));
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_CHECKPOINT);
  after = snapshot_events(s);
  assert_events(&after, &later);
  free(after.v);
  assert_ok(bp_close(s));
  snprintf(p, sizeof p, "%s/index.ckpt", f->dir);
  assert_int_equal(unlink(p), 0);
  tu_drop_index(f->dir);
  assert_ok(bp_open(&f->cfg, &s));
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_SIDX);
  after = snapshot_events(s);
  assert_events(&after, &later);
  assert_ok(bp_close(s));
  assert_verifies(f);
  free(after.v);
  free(later.v);
  free(before.v);
}

static void too_few_sealed_segments_change_nothing(void **state) {
  fixture *f = *state;
  bp_store *s = open_small(f);
  bp_store_diagnostics d;
  int n = 0;
  do { /* until there are two segments: one sealed, one active */
    append_events(s, n++, 1);
    bp_diagnostics(s, &d);
  } while (d.segment_count < 2);
  bp_compaction_config cfg = {.strategy = BP_COMPACT_MERGE};
  bp_compaction_result res = {9, 9};
  assert_ok(bp_compact(s, &cfg, &res));
  assert_int_equal(res.segments_removed, 0);
  assert_int_equal(res.bytes_reclaimed, 0);
  assert_int_equal(count_files(f->dir, ".fbat"), 2);
  /* min_segments 1 rewrites even a single sealed segment. */
  cfg.min_segments = 1;
  cfg.strategy = BP_COMPACT_RETENTION;
  cfg.keep = keep_not_user0;
  recs before = snapshot_events(s);
  assert_ok(bp_compact(s, &cfg, &res));
  assert_int_equal(res.segments_removed, 0);
  recs after = snapshot_events(s);
  assert_true(after.n < before.n);
  free(before.v);
  free(after.v);
  assert_ok(bp_close(s));
}

static void bad_arguments_fail_einval_and_change_nothing(void **state) {
  fixture *f = *state;
  bp_store *s = open_small(f);
  append_events(s, 0, 40);
  bp_compaction_config cfg = {.strategy = BP_COMPACT_MERGE};
  bp_compaction_result res;
  assert_status(bp_compact(NULL, &cfg, &res), BP_EINVAL);
  assert_status(bp_compact(s, NULL, &res), BP_EINVAL);
  assert_status(bp_compact(s, &cfg, NULL), BP_EINVAL);
  cfg.strategy = 7;
  assert_status(bp_compact(s, &cfg, &res), BP_EINVAL);
  if (!strstr(bp_last_error()->message, "strategy 7")) fail_msg("message: %s", bp_last_error()->message);
  cfg.strategy = BP_COMPACT_RETENTION;
  assert_status(bp_compact(s, &cfg, &res), BP_EINVAL);
  cfg.strategy = BP_COMPACT_TOMBSTONE;
  assert_status(bp_compact(s, &cfg, &res), BP_EINVAL);
  size_t files = count_files(f->dir, ".fbat");
  assert_true(files > 2);
  assert_ok(bp_close(s));

  assert_ok(bp_open_readonly(&f->cfg, &s));
  cfg.strategy = BP_COMPACT_MERGE;
  assert_status(bp_compact(s, &cfg, &res), BP_EREADONLY);
  assert_ok(bp_close(s));
  assert_int_equal(count_files(f->dir, ".fbat"), files);
}

/* ------------------------------------------------------- retention, tombstone */

static void retention_leaves_out_rejected_events_and_renumbers(void **state) {
  fixture *f = *state;
  bp_store *s = open_small(f);
  append_events(s, 0, 80);
  recs before = snapshot_events(s);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  /* Events of the active segment stay whatever keep() says. */
  bp_entries active;
  bp_region all = bp_region_all();
  assert_ok(bp_query(s, &all, &active));
  size_t in_active = 0;
  for (size_t i = 0; i < active.len; i++)
    if (active.items[i].disk_pos.segment_id == d.active_segment_id) in_active++;
  bp_entries_free(&active);

  bp_cursor *c = bp_cursor_open(s, &all);
  assert_non_null(c);
  bp_entry e;
  for (int i = 0; i < 10; i++) assert_ok(bp_cursor_poll(c, &e));
  bp_id tmp_id = before.v[3].id; /* tmp:0, in the first segment */

  bp_compaction_config cfg = {.strategy = BP_COMPACT_RETENTION, .keep = keep_users};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cfg, &res));
  assert_true(res.bytes_reclaimed > 0);
  bp_event *ev;
  assert_status(bp_get(s, tmp_id, &ev), BP_ENOTFOUND);

  /* Expected: every tmp event of the merged segments gone, the active
   * segment's kept. */
  recs after = snapshot_events(s);
  size_t dropped = before.n - after.n;
  size_t tmp_total = 0;
  for (size_t i = 0; i < before.n; i++) tmp_total += strncmp(before.v[i].entity, "tmp:", 4) == 0;
  assert_true(dropped > 0 && dropped <= tmp_total);
  size_t j = 0;
  for (size_t i = 0; i < before.n; i++) {
    bool is_tmp = strncmp(before.v[i].entity, "tmp:", 4) == 0;
    if (j < after.n && bp_id_eq(after.v[j].id, before.v[i].id)) {
      assert_same_event(&after.v[j], &before.v[i], j);
      j++;
    } else if (!is_tmp) {
      fail_msg("event %zu (%s) was dropped", i, before.v[i].entity);
    }
  }
  assert_int_equal(j, after.n);
  (void)in_active;

  /* The cursor goes on after its 10th event: no repeat, no skip. */
  size_t next = 0;
  while (next < after.n && !bp_id_eq(after.v[next].id, before.v[9].id)) next++;
  next++;
  size_t delivered = 0;
  while (bp_cursor_poll(c, &e) == BP_OK) {
    if (!bp_id_eq(e.event_id, after.v[next + delivered].id)) fail_msg("cursor event %zu differs", delivered);
    delivered++;
  }
  assert_int_equal(next + delivered, after.n);
  bp_cursor_close(c);

  /* Appends go on with the right chain heads; the store reopens the same. */
  append_events(s, 80, 8);
  recs later = snapshot_events(s);
  reopen(f, &s);
  recs again = snapshot_events(s);
  assert_events(&again, &later);
  assert_ok(bp_close(s));
  free(before.v);
  free(after.v);
  free(later.v);
  free(again.v);
}

static void tombstone_rewrites_rejected_events_keeping_their_hashes(void **state) {
  fixture *f = *state;
  bp_store *s = open_small(f);
  append_events(s, 0, 60);
  recs before = snapshot_events(s);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  bp_entries all;
  bp_region r = bp_region_all();
  assert_ok(bp_query(s, &r, &all));
  recs want = tombstoned(&before);
  for (size_t i = 0; i < all.len; i++)
    if (all.items[i].disk_pos.segment_id < d.active_segment_id && strncmp(want.v[i].entity, "tmp:", 4) == 0)
      want.v[i].kind = BP_KIND_TOMBSTONE;
  bp_entries_free(&all);

  bp_compaction_config cfg = {.strategy = BP_COMPACT_TOMBSTONE, .keep = keep_users};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cfg, &res));
  recs after = snapshot_events(s);
  assert_events(&after, &want);
  bp_entries ts;
  assert_ok(bp_by_fact(s, BP_KIND_TOMBSTONE, &ts));
  assert_true(ts.len > 0);
  for (size_t i = 0; i < ts.len; i++) assert_string_equal(ts.items[i].entity, "tmp:0");
  bp_entries_free(&ts);
  reopen(f, &s);
  free(after.v);
  after = snapshot_events(s);
  assert_events(&after, &want);
  assert_ok(bp_close(s));
  assert_verifies(f);
  free(before.v);
  free(after.v);
  free(want.v);
}

/* ------------------------------------------------------------ concurrency */

typedef struct appender {
  bp_store *s;
  _Atomic bool stop;
  int done;
  bp_id ids[100000];
} appender;

static void *append_loop(void *arg) {
  appender *a = arg;
  while (!atomic_load(&a->stop) && a->done < 100000) {
    bp_coord c = {"live", "scope"};
    char p[8];
    snprintf(p, sizeof p, "\xa5w%04d", a->done % 10000);
    bp_append_receipt rc;
    if (bp_append(a->s, &c, KIND_A, p, 6, &rc) != BP_OK) fail_msg("append: %s", bp_last_error()->message);
    a->ids[a->done++] = rc.event_id;
  }
  return NULL;
}

static void appends_during_compaction_are_kept(void **state) {
  fixture *f = *state;
  bp_store *s = open_small(f);
  append_events(s, 0, 100);
  recs before = snapshot_events(s);
  appender *a = calloc(1, sizeof *a);
  a->s = s;
  pthread_t t;
  pthread_create(&t, NULL, append_loop, a);
  for (int round = 0; round < 5; round++) {
    bp_compaction_config cfg = {.strategy = BP_COMPACT_MERGE};
    bp_compaction_result res;
    assert_ok(bp_compact(s, &cfg, &res));
  }
  atomic_store(&a->stop, true);
  pthread_join(t, NULL);
  recs after = snapshot_events(s);
  assert_int_equal(after.n, before.n + (size_t)a->done);
  for (size_t i = 0; i < before.n; i++) assert_same_event(&after.v[i], &before.v[i], i);
  for (int i = 0; i < a->done; i++)
    if (!bp_id_eq(after.v[before.n + (size_t)i].id, a->ids[i])) fail_msg("append %d missing or out of order", i);
  reopen(f, &s);
  recs again = snapshot_events(s);
  assert_events(&again, &after);
  assert_ok(bp_close(s));
  assert_verifies(f);
  free(a);
  free(before.v);
  free(after.v);
  free(again.v);
}

/* ------------------------------------------------------- injected faults */

static const int strategies[3] = {BP_COMPACT_MERGE, BP_COMPACT_RETENTION, BP_COMPACT_TOMBSTONE};

/* The events expected after a compaction of the store built by build(). */
static recs expected_after(const recs *all, int strategy, uint64_t sealed_below_seq) {
  if (strategy == BP_COMPACT_MERGE) return tombstoned(all);
  recs out = {calloc(all->n + 1, sizeof(rec)), 0};
  for (size_t i = 0; i < all->n; i++) {
    bool tmp = strncmp(all->v[i].entity, "tmp:", 4) == 0 && i < sealed_below_seq;
    if (tmp && strategy == BP_COMPACT_RETENTION) continue;
    out.v[out.n] = all->v[i];
    if (tmp) out.v[out.n].kind = BP_KIND_TOMBSTONE;
    out.n++;
  }
  return out;
}

static uint64_t first_active_seq(bp_store *s) {
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  bp_entries all;
  bp_region r = bp_region_all();
  assert_ok(bp_query(s, &r, &all));
  uint64_t n = all.len;
  for (size_t i = 0; i < all.len; i++)
    if (all.items[i].disk_pos.segment_id >= d.active_segment_id) {
      n = i;
      break;
    }
  bp_entries_free(&all);
  return n;
}

/* The store holds exactly `old` or exactly `new`, opens clean and verifies. */
static void assert_old_or_new(fixture *f, const recs *old, const recs *new_, const char *what) {
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  recs got = snapshot_events(s);
  assert_ok(bp_close(s));
  bool is_new = got.n == new_->n;
  for (size_t i = 0; i < got.n && is_new; i++)
    is_new = bp_id_eq(got.v[i].id, new_->v[i].id) && got.v[i].kind == new_->v[i].kind;
  const recs *want = is_new ? new_ : old;
  if (got.n != want->n) fail_msg("%s: %zu events, expected %zu or %zu", what, got.n, old->n, new_->n);
  assert_events(&got, want);
  free(got.v);
  assert_false(exists(f, "compact.intent"));
  assert_int_equal(count_files(f->dir, ".compact"), 0);
  assert_verifies(f);
}

static void build(fixture *f, recs *all, uint64_t *sealed_end) {
  bp_store *s = open_small(f);
  append_events(s, 0, 50);
  *all = snapshot_events(s);
  (void)first_active_seq;
  /* After reopening, no segment is active: the compaction takes them all. */
  *sealed_end = all->n;
  assert_ok(bp_close(s));
}

/* A fresh store, its events, the events a compaction by strategy must leave,
 * and a saved copy of the directory (restored before each attempt). */
static void prepare_case(fixture *f, int strategy, recs *all, recs *want, char *save, size_t save_size) {
  tu_remove_tree(f->dir);
  uint64_t sealed_end;
  build(f, all, &sealed_end);
  snprintf(save, save_size, "%s/saved", f->tmp);
  tu_remove_tree(save);
  tu_copy_dir(f->dir, save);
  *want = expected_after(all, strategy, sealed_end);
}

/* Fails the k-th file-system call of a compaction with EIO, for every k until
 * one completes: each failing call leaves the store as it was, in memory and
 * after reopening; a failure after the commit point completes it. */
static void a_failure_at_every_step_loses_nothing(void **state) {
  fixture *f = *state;
  for (int si = 0; si < 3; si++) {
    recs all, want;
    char save[4200];
    prepare_case(f, strategies[si], &all, &want, save, sizeof save);
    int steps = 0;
    for (int k = 0;; k++) {
      tu_remove_tree(f->dir);
      tu_copy_dir(save, f->dir);
      bp_store *s;
      assert_ok(bp_open(&f->cfg, &s));
      bp_compaction_config cfg = {.strategy = strategies[si], .keep = keep_users};
      bp_compaction_result res;
      ff_arm(k, false);
      bp_status st = bp_compact(s, &cfg, &res);
      bool hit = ff_hit();
      ff_disarm();
      recs live = snapshot_events(s);
      char what[64];
      snprintf(what, sizeof what, "strategy %d, failure at call %d", strategies[si], k);
      if (st) {
        if (!strstr(bp_last_error()->message, "compaction")) fail_msg("%s: message %s", what, bp_last_error()->message);
        assert_events(&live, &all);
      } else {
        assert_events(&live, &want);
      }
      free(live.v);
      assert_ok(bp_close(s));
      assert_old_or_new(f, &all, &want, what);
      if (!hit) {
        assert_ok(st);
        steps = k;
        break;
      }
    }
    print_message("strategy %d: %d file-system calls, a failure injected at each\n", strategies[si], steps);
    assert_true(steps > 8);
    free(all.v);
    free(want.v);
  }
}

/* Kills the process (in a child) at the k-th file-system call of a
 * compaction, for every k until one completes: the store opens with the old
 * events or the compacted ones, whole, and no temporary file survives. */
static void a_crash_at_every_step_leaves_old_or_new(void **state) {
  fixture *f = *state;
  for (int si = 0; si < 3; si++) {
    recs all, want;
    char save[4200];
    prepare_case(f, strategies[si], &all, &want, save, sizeof save);
    int k = 0;
    for (;; k++) {
      tu_remove_tree(f->dir);
      tu_copy_dir(save, f->dir);
      fflush(NULL);
      pid_t pid = fork();
      assert_true(pid >= 0);
      if (pid == 0) {
        bp_store *s;
        if (bp_open(&f->cfg, &s)) _exit(3);
        bp_compaction_config cfg = {.strategy = strategies[si], .keep = keep_users};
        bp_compaction_result res;
        ff_arm(k, true);
        bp_status st = bp_compact(s, &cfg, &res);
        ff_disarm();
        _exit(st ? 4 : 0);
      }
      int ws;
      assert_int_equal(waitpid(pid, &ws, 0), pid);
      assert_true(WIFEXITED(ws));
      int code = WEXITSTATUS(ws);
      if (code != FF_CRASH_EXIT && code != 0) fail_msg("child exited %d at step %d", code, k);
      char what[64];
      snprintf(what, sizeof what, "strategy %d, crash at call %d", strategies[si], k);
      assert_old_or_new(f, &all, &want, what);
      if (code == 0) break;
    }
    print_message("strategy %d: crashed at each of %d file-system calls\n", strategies[si], k);
    assert_true(k > 8);
    free(all.v);
    free(want.v);
  }
}

/* A crash after the commit point leaves an intent and maybe the new segment: a
 * read-only open shows the compacted events without changing a file, and the
 * next read-write open finishes the job. */
static void read_only_open_after_the_commit_point_sees_the_new_events(void **state) {
  fixture *f = *state;
  recs all;
  uint64_t sealed_end;
  build(f, &all, &sealed_end);
  recs want = expected_after(&all, BP_COMPACT_RETENTION, sealed_end);
  /* Crash right after the rename (found by counting calls in a dry run). */
  int rename_at = -1;
  for (int k = 0; rename_at < 0; k++) {
    char save[4200];
    snprintf(save, sizeof save, "%s/saved", f->tmp);
    if (k == 0) tu_copy_dir(f->dir, save);
    tu_remove_tree(f->dir);
    tu_copy_dir(save, f->dir);
    pid_t pid = fork();
    if (pid == 0) {
      bp_store *s;
      if (bp_open(&f->cfg, &s)) _exit(3);
      bp_compaction_config cfg = {.strategy = BP_COMPACT_RETENTION, .keep = keep_users};
      bp_compaction_result res;
      ff_arm(k, true);
      bp_compact(s, &cfg, &res);
      _exit(0);
    }
    int ws;
    waitpid(pid, &ws, 0);
    assert_true(WIFEXITED(ws));
    if (WEXITSTATUS(ws) == 0) fail_msg("no crash left an intent without the temporary file");
    /* After the rename: the intent is there, the temporary file is not. */
    if (exists(f, "compact.intent") && count_files(f->dir, ".compact") == 0) rename_at = k;
  }
  bp_store *s;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  recs got = snapshot_events(s);
  assert_ok(bp_close(s));
  assert_events(&got, &want);
  free(got.v);
  assert_true(exists(f, "compact.intent"));
  assert_ok(bp_open(&f->cfg, &s));
  got = snapshot_events(s);
  assert_ok(bp_close(s));
  assert_events(&got, &want);
  assert_false(exists(f, "compact.intent"));
  free(got.v);
  free(all.v);
  free(want.v);
}

static void a_torn_intent_undoes_the_compaction(void **state) {
  fixture *f = *state;
  recs all;
  uint64_t sealed_end;
  build(f, &all, &sealed_end);
  size_t files = count_files(f->dir, ".fbat");
  char p[4200];
  snprintf(p, sizeof p, "%s/000001.fbat.compact", f->dir);
  FILE *fp = fopen(p, "w");
  fputs("partial", fp);
  fclose(fp);
  snprintf(p, sizeof p, "%s/compact.intent", f->dir);
  fp = fopen(p, "w");
  fputs("BPCI\x01\x02", fp); /* cut short */
  fclose(fp);
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  recs got = snapshot_events(s);
  assert_ok(bp_close(s));
  assert_events(&got, &all);
  assert_false(exists(f, "compact.intent"));
  assert_int_equal(count_files(f->dir, ".compact"), 0);
  assert_int_equal(count_files(f->dir, ".fbat"), files);
  free(got.v);
  free(all.v);
}

/* A crash between a retention's commit and the rewrite of a later segment's
 * footer leaves footer sequences in the old numbering: a read-write open
 * renumbers them; a read-only open changes nothing. */
static void stale_footer_sequences_are_renumbered_at_open(void **state) {
  fixture *f = *state;
  recs all;
  uint64_t sealed_end;
  build(f, &all, &sealed_end);
  free(all.v);
  /* A retention compaction ran (retired.keys holds its keys: a footer
   * numbered from further on can be stale), then more segments were sealed. */
  bp_store *w = open_small(f);
  bp_compaction_config rc = {BP_COMPACT_RETENTION, keep_users, NULL, 0};
  bp_compaction_result rres;
  assert_ok(bp_compact(w, &rc, &rres));
  append_events(w, 100, 40);
  assert_ok(bp_close(w));
  assert_ok(bp_open_readonly(&f->cfg, &w));
  all = snapshot_events(w);
  assert_ok(bp_close(w));
  uint64_t last = 0;
  DIR *dd = opendir(f->dir);
  struct dirent *de;
  while ((de = readdir(dd))) {
    unsigned long long id;
    if (sscanf(de->d_name, "%6llu.fbat", &id) == 1 && id > last) last = id;
  }
  closedir(dd);
  char p[4200];
  snprintf(p, sizeof p, "%s/%06" PRIu64 ".fbat", f->dir, last - 1); /* a sealed one after the merged segment */
  size_t n;
  uint8_t *d = tu_read_file(p, &n);
  assert_non_null(d);
  uint32_t count = bp__get_le32(d + n - 8);
  assert_true(count > 0);
  uint8_t *entries = d + n - 16 - (size_t)count * 154;
  for (uint32_t i = 0; i < count; i++) bp__put_le64(entries + i * 154 + 114, bp__get_le64(entries + i * 154 + 114) + 7);
  /* Sealed again, as the footer of a crash between the compaction and its
   * renumbering would be: the seal (the table's last 17 bytes) holds. */
  uint8_t *table = d + bp__get_le64(d + n - 16);
  uint8_t *seal = entries - BP__SIDX_SEAL_LEN;
  assert_memory_equal(seal, BP__SIDX_SEAL_MAGIC, 8);
  uint32_t crc = bp__crc32_update(bp__crc32(table, (size_t)(seal - 1 - table)), entries, (size_t)(d + n - entries));
  char hex[9];
  snprintf(hex, sizeof hex, "%08x", crc);
  memcpy(seal + 8, hex, 8);
  FILE *fp = fopen(p, "wb");
  assert_int_equal(fwrite(d, 1, n, fp), n);
  fclose(fp);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  bp_verify_report_free(&r);
  char ck[4200];
  snprintf(ck, sizeof ck, "%s/index.ckpt", f->dir);
  unlink(ck); /* so that the footers are read */
  tu_drop_index(f->dir);

  bp_store *s;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  recs got = snapshot_events(s);
  assert_events(&got, &all);
  free(got.v);
  assert_ok(bp_close(s));
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  bp_verify_report_free(&r);

  assert_ok(bp_open(&f->cfg, &s));
  got = snapshot_events(s);
  assert_events(&got, &all);
  assert_ok(bp_close(s));
  assert_verifies(f);
  free(got.v);
  free(all.v);
  free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(merge_keeps_every_event_in_one_segment_with_the_lowest_id, setup, teardown),
      cmocka_unit_test_setup_teardown(too_few_sealed_segments_change_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_arguments_fail_einval_and_change_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(retention_leaves_out_rejected_events_and_renumbers, setup, teardown),
      cmocka_unit_test_setup_teardown(tombstone_rewrites_rejected_events_keeping_their_hashes, setup, teardown),
      cmocka_unit_test_setup_teardown(appends_during_compaction_are_kept, setup, teardown),
      cmocka_unit_test_setup_teardown(a_failure_at_every_step_loses_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(a_crash_at_every_step_leaves_old_or_new, setup, teardown),
      cmocka_unit_test_setup_teardown(read_only_open_after_the_commit_point_sees_the_new_events, setup, teardown),
      cmocka_unit_test_setup_teardown(a_torn_intent_undoes_the_compaction, setup, teardown),
      cmocka_unit_test_setup_teardown(stale_footer_sequences_are_renumbered_at_open, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
