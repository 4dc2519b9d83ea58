/*
 * test_index.c - the persistent index (docs/INDEX.md): runs written and
 * merged by the index thread while readers read, reopening by the index,
 * crashes, and damage inside the index's own files.
 */
#include "testutil.h"
#include "store/store_impl.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef tu_store_fixture fixture;

#define ENTITIES 16
#define KINDS 5

static const char *entity_of(uint64_t i, char *buf, size_t size) {
  snprintf(buf, size, "thing:%u", (unsigned)(i % ENTITIES));
  return buf;
}

static bp_kind kind_of(uint64_t i) { return (bp_kind)(0x1000 + (i % KINDS)); }

/* Appends n events numbered from first; ids[i] gets event first + i's id. */
static void append_n(bp_store *s, uint64_t first, uint64_t n, bp_id *ids) {
  for (uint64_t i = first; i < first + n; i++) {
    char ent[32], text[32];
    int len = snprintf(text, sizeof text, "event %llu", (unsigned long long)i);
    bp_coord c = {entity_of(i, ent, sizeof ent), i % 2 ? "scope:odd" : "scope:even"};
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, kind_of(i), text, (size_t)len, &r));
    assert_int_equal(r.sequence, i);
    if (ids) ids[i - first] = r.event_id;
  }
}

static size_t count_runs(const char *dir) {
  char p[4200];
  snprintf(p, sizeof p, "%s/index", dir);
  DIR *d = opendir(p);
  if (!d) return 0;
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));) n += strncmp(e->d_name, "run-", 4) == 0 && !strstr(e->d_name, ".tmp");
  closedir(d);
  return n;
}

/* Every event is where its number says, and every stream and query agrees
 * with the numbering (the events appended by append_n). */
static void check_all(bp_store *s, const bp_id *ids, uint64_t n, const char *what) {
  for (uint64_t i = 0; i < n; i += 97) {
    bp_entry e;
    bp_status st = bp_get_entry(s, ids[i], &e);
    if (st) fail_msg("%s: event %llu: %s", what, (unsigned long long)i, bp_last_error()->message);
    if (e.global_sequence != i) fail_msg("%s: event %llu at sequence %llu", what, (unsigned long long)i,
                                         (unsigned long long)e.global_sequence);
  }
  for (unsigned k = 0; k < ENTITIES; k++) {
    char ent[32];
    bp_entries got;
    assert_ok(bp_stream(s, entity_of(k, ent, sizeof ent), &got));
    uint64_t want = n / ENTITIES + (k < n % ENTITIES);
    if (got.len != want) fail_msg("%s: %s has %zu events, expected %llu", what, ent, got.len, (unsigned long long)want);
    for (size_t j = 0; j < got.len; j++)
      if (got.items[j].global_sequence != k + j * ENTITIES || got.items[j].clock != j)
        fail_msg("%s: %s item %zu is sequence %llu clock %u", what, ent, j,
                 (unsigned long long)got.items[j].global_sequence, got.items[j].clock);
    bp_entries_free(&got);
  }
  bp_region r = bp_region_with_kind(bp_region_scope("scope:odd"), kind_of(3));
  bp_entries got;
  assert_ok(bp_query(s, &r, &got));
  uint64_t want = 0;
  for (uint64_t i = 0; i < n; i++) want += i % 2 == 1 && i % KINDS == 3;
  if (got.len != want) fail_msg("%s: the scope and kind query gave %zu, expected %llu", what, got.len,
                                (unsigned long long)want);
  bp_entries_free(&got);
}

/* ------------------------------------------------------------ readers */

typedef struct reader_ctx {
  bp_store *s;
  const bp_id *ids;
  _Atomic uint64_t *published;
  _Atomic bool *stop;
  _Atomic int failures;
  char failure[256];
} reader_ctx;

static void *reader(void *p) {
  reader_ctx *c = p;
  uint64_t x = 88172645463325252ull;
  while (!atomic_load(c->stop)) {
    uint64_t n = atomic_load(c->published);
    if (n == 0) continue;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint64_t i = x % n;
    bp_entry e;
    if (bp_get_entry(c->s, c->ids[i], &e) != BP_OK || e.global_sequence != i) {
      if (atomic_fetch_add(&c->failures, 1) == 0)
        snprintf(c->failure, sizeof c->failure, "get of event %llu: %s", (unsigned long long)i,
                 bp_last_error()->message);
      continue;
    }
    char ent[32];
    bp_entries got;
    if (bp_stream(c->s, entity_of(i, ent, sizeof ent), &got) != BP_OK) continue;
    /* A gap-free prefix: item j is the entity's j-th event. */
    for (size_t j = 0; j < got.len; j++)
      if (got.items[j].global_sequence != i % ENTITIES + j * ENTITIES) {
        if (atomic_fetch_add(&c->failures, 1) == 0)
          snprintf(c->failure, sizeof c->failure, "stream %s item %zu is sequence %llu", ent, j,
                   (unsigned long long)got.items[j].global_sequence);
        break;
      }
    bp_entries_free(&got);
  }
  return NULL;
}

/* Enough events for the index thread to write runs and merge eight of them
 * (32,768 events a run), while two threads read: every read sees the right
 * event, every stream a gap-free prefix. Then the store reopens by the
 * index, read-write and read-only, with the same answers, and verifies. */
static void runs_are_written_and_merged_while_readers_read(void **state) {
  fixture *f = *state;
  const uint64_t n = 9 * BP__GEN_EVENTS + 1234;
  bp_id *ids = calloc(n + 10, sizeof *ids);
  f->cfg.sync_every_n_events = 4096;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  _Atomic uint64_t published = 0;
  _Atomic bool stop = false;
  reader_ctx rc = {s, ids, &published, &stop, 0, ""};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, reader, &rc), 0);
  for (uint64_t i = 0; i < n; i += 1000) {
    uint64_t k = n - i < 1000 ? n - i : 1000;
    append_n(s, i, k, ids + i);
    atomic_store(&published, i + k);
  }
  atomic_store(&stop, true);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  if (atomic_load(&rc.failures)) fail_msg("%d reader failures; the first: %s", atomic_load(&rc.failures), rc.failure);
  check_all(s, ids, n, "live");
  assert_ok(bp_close(s));
  if (count_runs(f->dir) == 0) fail_msg("no run was written");

  assert_ok(bp_open(&f->cfg, &s));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_INDEX);
  check_all(s, ids, n, "reopened");
  append_n(s, n, 10, ids + n);
  assert_ok(bp_close(s));
  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_INDEX);
  assert_int_equal(d.event_count, n + 10);
  check_all(s, ids, n + 10, "read-only");
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after runs and merges");
  free(ids);
}

/* A process that dies without closing leaves the index as its last state
 * said (runs written meanwhile, entries past it): the next open takes the
 * index, indexes the log after it, and loses nothing acknowledged. */
static void a_crash_leaves_an_index_the_next_open_brings_up_to_date(void **state) {
  fixture *f = *state;
  const uint64_t n = 3 * BP__GEN_EVENTS + 500;
  bp_id *ids = mmap(NULL, sizeof *ids * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(ids != MAP_FAILED);
  f->cfg.sync_every_n_events = 1;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  append_n(s, 0, 2000, ids);
  assert_ok(bp_close(s));
  f->cfg.sync_every_n_events = 500;
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *c;
    if (bp_open(&f->cfg, &c)) _exit(2);
    append_n(c, 2000, n - 2000, ids + 2000);
    if (bp_sync(c)) _exit(3);
    _exit(0); /* no close */
  }
  int ws;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  assert_ok(bp_open(&f->cfg, &s));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_INDEX);
  assert_int_equal(d.event_count, n);
  check_all(s, ids, n, "after the crash");
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after the crash");
  munmap(ids, sizeof *ids * n);
}

/* ------------------------------------------------------------ damage */

typedef struct warnings {
  int n;
  char text[4096];
} warnings;

static void collect(int level, const char *msg, void *ctx) {
  warnings *w = ctx;
  if (level > BP_LOG_WARN) return;
  w->n++;
  size_t used = strlen(w->text);
  snprintf(w->text + used, sizeof w->text - used, "%s\n", msg);
}

/* A closed store of n events numbered by append_n; their ids (malloc'd). */
static bp_id *make_store(fixture *f, uint64_t n) {
  bp_id *ids = calloc(n, sizeof *ids);
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  append_n(s, 0, n, ids);
  assert_ok(bp_close(s));
  return ids;
}

static void flip(const char *dir, const char *file, long at) {
  char p[4300];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  tu_flip_byte(p, at, 0x5a);
}

/* A byte of a full chunk of index/entries flipped: the open takes the index
 * (its state and the chunk holding the last event are intact); the first
 * read of the damaged chunk finds its CRC wrong, reads those entries from
 * the log again, and says so; every answer is right. bp_verify names the
 * chunk. */
static void a_damaged_chunk_of_entries_is_read_again_from_the_log(void **state) {
  fixture *f = *state;
  const uint64_t n = 2 * BP__CHUNK_SIZE + 100;
  bp_id *ids = make_store(f, n);
  bp_store *s;
  /* Event 1000's clock field: entries start after a 4 KiB header. */
  flip(f->dir, "index/entries", 4096 + 1000 * (long)sizeof(bp__ientry) + offsetof(bp__ientry, clock));
  bp_verify_report rep;
  assert_status(bp_verify(f->dir, &rep), BP_ECORRUPT);
  bool named = false;
  for (size_t i = 0; i < rep.problem_count; i++) named |= strstr(rep.problems[i].where, "index/entries chunk 0") != NULL;
  if (!named) fail_msg("bp_verify does not name the chunk");
  bp_verify_report_free(&rep);
  for (int ro = 0; ro < 2; ro++) {
    warnings w = {0, ""};
    bp_config cfg = f->cfg;
    cfg.log_fn = collect;
    cfg.log_ctx = &w;
    assert_ok(ro ? bp_open_readonly(&cfg, &s) : bp_open(&cfg, &s));
    bp_store_diagnostics d;
    bp_diagnostics(s, &d);
    assert_int_equal(d.open_path, BP_OPEN_INDEX);
    check_all(s, ids, n, ro ? "read-only" : "read-write");
    bp_entry e;
    assert_ok(bp_get_entry(s, ids[1000], &e));
    assert_int_equal(e.clock, 1000 / ENTITIES);
    if (!strstr(w.text, "fail their CRC")) fail_msg("no warning of the damage: %s", w.text);
    assert_ok(bp_close(s));
  }
  free(ids);
}

/* A byte of a run's postings flipped: its body fails its CRC on first use,
 * the run is made again in memory from the entries, and every stream is
 * right. */
static void a_damaged_run_is_made_again_from_the_entries(void **state) {
  fixture *f = *state;
  const uint64_t n = 2 * BP__GEN_EVENTS + 10;
  bp_id *ids = make_store(f, n);
  bp_store *s;
  assert_true(count_runs(f->dir) >= 1);
  /* The first run's postings begin after its header and directories; a
   * byte 64 KiB in lies in them (a run of 8,192 events has 128 KiB of them). */
  flip(f->dir, "index/run-00000001", 65536);
  warnings w = {0, ""};
  bp_config cfg = f->cfg;
  cfg.log_fn = collect;
  cfg.log_ctx = &w;
  assert_ok(bp_open_readonly(&cfg, &s));
  check_all(s, ids, n, "damaged run");
  if (!strstr(w.text, "made again")) fail_msg("no warning of the damage: %s", w.text);
  assert_ok(bp_close(s));
  bp_verify_report rep;
  assert_status(bp_verify(f->dir, &rep), BP_ECORRUPT);
  bp_verify_report_free(&rep);
  free(ids);
}

/* A state that names a segment no longer there proves events were lost:
 * the open fails naming the segment, unless salvage is asked for. */
static void an_index_naming_a_missing_segment_fails_the_open(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 4096;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  append_n(s, 0, 200, NULL);
  assert_ok(bp_close(s));
  char p[4200];
  snprintf(p, sizeof p, "%s/000003.fbat", f->dir);
  assert_int_equal(unlink(p), 0);
  for (int ro = 0; ro < 2; ro++) {
    bp_status st = ro ? bp_open_readonly(&f->cfg, &s) : bp_open(&f->cfg, &s);
    assert_int_equal(st, BP_ECORRUPT);
    if (!strstr(bp_last_error()->message, "000003")) fail_msg("unclear: %s", bp_last_error()->message);
  }
  f->cfg.salvage = true;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_store_stats stats;
  bp_stats(s, &stats);
  assert_true(stats.event_count < 200);
  assert_ok(bp_close(s));
}


/* ------------------------------------------------- the segment left open */

static size_t count_segments(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));) n += bp__has_suffix(e->d_name, ".fbat");
  closedir(d);
  return n;
}

/* Short sessions (open, append one event, close) go on in one segment: each
 * event lands where the previous session's frames ended, the segment ends
 * at its last frame (unsealed) after each close, and every session's events
 * are there. A session that dies without closing leaves space allocated
 * ahead; the next one cuts it and goes on after the last frame. */
static void short_sessions_go_on_in_the_newest_segment(void **state) {
  fixture *f = *state;
  bp_id ids[8];
  uint64_t end = 0;
  for (uint64_t i = 0; i < 6; i++) {
    bp_store *s;
    assert_ok(bp_open(&f->cfg, &s));
    char ent[32];
    bp_coord c = {entity_of(i, ent, sizeof ent), "scope:short"};
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, kind_of(i), "\xa1x", 2, &r));
    assert_int_equal(r.sequence, i);
    assert_int_equal(r.disk_pos.segment_id, 1);
    if (i > 0) assert_int_equal(r.disk_pos.offset, end);
    end = r.disk_pos.offset + r.disk_pos.length;
    ids[i] = r.event_id;
    assert_ok(bp_close(s));
    char p[4200];
    snprintf(p, sizeof p, "%s/000001.fbat", f->dir);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal((uint64_t)sb.st_size, end);
  }
  assert_int_equal(count_segments(f->dir), 1);
  /* A session that dies after a durable append, with space allocated ahead
   * (past the first 256 KiB written plainly). */
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *c;
    if (bp_open(&f->cfg, &c)) _exit(2);
    static char big[40000];
    big[0] = (char)0xda;
    big[1] = (char)(39997 >> 8);
    big[2] = (char)(39997 & 0xff);
    memset(big + 3, 'b', sizeof big - 3);
    bp_coord c0 = {"thing:big", "scope:short"};
    for (int k = 0; k < 8; k++)
      if (bp_append(c, &c0, 0x1001, big, sizeof big, NULL)) _exit(3);
    if (bp_sync(c)) _exit(4);
    _exit(0);
  }
  int ws;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.event_count, 14);
  assert_int_equal(d.torn_bytes_dropped, 0);
  bp_coord c = {"thing:after", "scope:short"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &c, 0x1001, "\xa1y", 2, &r));
  assert_int_equal(r.disk_pos.segment_id, 1);
  assert_int_equal(r.sequence, 14);
  assert_ok(bp_close(s));
  assert_int_equal(count_segments(f->dir), 1);
  assert_ok(bp_open_readonly(&f->cfg, &s));
  for (int i = 0; i < 6; i++) {
    bp_entry e;
    assert_ok(bp_get_entry(s, ids[i], &e));
    assert_int_equal(e.global_sequence, (uint64_t)i);
  }
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after short sessions and a crash");
}

/* The newest segment, left unsealed by its close, has no trailer to say
 * where its frames end; the index state does. Damage in one of its frames
 * (here with index/entries gone, so that the open scans the segment) is
 * corruption, not a torn tail: the open fails naming the segment, where
 * without the state's evidence the events after it would silently go.
 * Zeros over its last frames too. salvage opens what is left. */
static void damage_in_the_newest_segment_is_not_taken_for_a_torn_tail(void **state) {
  fixture *f = *state;
  const uint64_t n = 40;
  bp_id *ids = make_store(f, n);
  bp_store *s;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_entry e;
  assert_ok(bp_get_entry(s, ids[20], &e));
  bp_entry last;
  assert_ok(bp_get_entry(s, ids[n - 1], &last));
  assert_ok(bp_close(s));
  char seg[4200], save[4200];
  snprintf(seg, sizeof seg, "%s/000001.fbat", f->dir);
  snprintf(save, sizeof save, "%s.save", f->tmp);
  tu_copy_dir(f->dir, save);
  for (int how = 0; how < 2; how++) {
    tu_remove_tree(f->dir);
    tu_copy_dir(save, f->dir);
    if (how == 0) {
      tu_flip_byte(seg, (long)(e.disk_pos.offset + 12), 0x20);
    } else {
      FILE *fp = fopen(seg, "r+b");
      assert_non_null(fp);
      static const uint8_t zeros[1 << 16];
      fseek(fp, (long)e.disk_pos.offset, SEEK_SET);
      size_t len = (size_t)(last.disk_pos.offset + last.disk_pos.length - e.disk_pos.offset);
      assert_true(len <= sizeof zeros);
      assert_int_equal(fwrite(zeros, 1, len, fp), len);
      fclose(fp);
    }
    char ent[4300];
    snprintf(ent, sizeof ent, "%s/index/entries", f->dir);
    assert_int_equal(unlink(ent), 0);
    for (int path = 0; path < 3; path++) {
      bp_config cfg = f->cfg;
      cfg.enable_checkpoint = path != 2;
      bp_status st = path == 0 ? bp_open_readonly(&cfg, &s) : bp_open(&cfg, &s);
      if (st != BP_ECORRUPT)
        fail_msg("%s, path %d: the open gave %s, not BP_ECORRUPT", how ? "zeros" : "a flipped byte", path,
                 bp_status_name(st));
      if (!strstr(bp_last_error()->message, "000001")) fail_msg("unclear: %s", bp_last_error()->message);
    }
    f->cfg.salvage = true;
    assert_ok(bp_open_readonly(&f->cfg, &s));
    bp_store_stats stats;
    bp_stats(s, &stats);
    assert_true(stats.event_count >= 20 && stats.event_count < n);
    assert_ok(bp_close(s));
    f->cfg.salvage = false;
  }
  tu_remove_tree(save);
  free(ids);
}

/* index/state holds two copies, written in turn. The newer one damaged (a
 * torn write, a flipped byte): the open takes the older one, which its
 * files still back, and loads the log after it; every event is right. */
static void a_damaged_newer_state_copy_falls_back_to_the_older(void **state) {
  fixture *f = *state;
  const uint64_t n = 300;
  bp_id *ids = calloc(n, sizeof *ids);
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  append_n(s, 0, 200, ids);
  assert_ok(bp_close(s));
  assert_ok(bp_open(&f->cfg, &s));
  append_n(s, 200, 100, ids + 200);
  assert_ok(bp_close(s));
  bp__ixstate st;
  char ixdir[4300];
  snprintf(ixdir, sizeof ixdir, "%s/index", f->dir);
  assert_ok(bp__ixstate_read(ixdir, &st));
  assert_int_equal(st.count, n);
  size_t newer_at = (size_t)st.at.slot * st.at.slot_bytes;
  bp__ixstate_free(&st);
  flip(f->dir, "index/state", (long)newer_at + 20);
  assert_ok(bp__ixstate_read(ixdir, &st));
  assert_int_equal(st.count, 200);
  bp__ixstate_free(&st);
  for (int ro = 0; ro < 2; ro++) {
    assert_ok(ro ? bp_open_readonly(&f->cfg, &s) : bp_open(&f->cfg, &s));
    bp_store_diagnostics d;
    bp_diagnostics(s, &d);
    assert_int_equal(d.open_path, BP_OPEN_INDEX);
    check_all(s, ids, n, ro ? "read-only, older state" : "read-write, older state");
    assert_ok(bp_close(s));
  }
  tu_assert_verifies(f->dir, "after the older state copy was used");
  free(ids);
}

/* A read-only handle's snapshot of a closed store: the newest segment is
 * unsealed (the next read-write open appends to it), so the snapshot copies
 * it; a hard link would let that writer's appends change the snapshot. */
static void snapshot_from_a_reader_keeps_the_segment_the_writer_goes_on_with(void **state) {
  fixture *f = *state;
  bp_id *ids = make_store(f, 50);
  char dest[4200];
  snprintf(dest, sizeof dest, "%s/snap", f->tmp);
  bp_store *s;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  assert_ok(bp_snapshot(s, dest));
  assert_ok(bp_close(s));
  assert_ok(bp_open(&f->cfg, &s));
  append_n(s, 50, 5, NULL);
  assert_ok(bp_close(s));
  bp_config cfg;
  bp_config_init(&cfg, dest);
  assert_ok(bp_open_readonly(&cfg, &s));
  bp_store_stats st;
  bp_stats(s, &st);
  assert_int_equal(st.event_count, 50);
  check_all(s, ids, 50, "snapshot");
  assert_ok(bp_close(s));
  tu_assert_verifies(dest, "snapshot taken by a reader");
  free(ids);
}

/* Sessions that each freeze a gen and close before the index thread
 * merges anything leave a run each. Past the most a state lists, the
 * newest events stay indexed in memory instead of failing the open (which
 * once took "out of memory replacing runs" for an answer), and the first
 * session whose index thread runs merges the crowd. */
static void many_short_sessions_never_fill_the_run_table(void **state) {
  tu_store_fixture *f = *state;
  enum { SESSIONS = BP__IX_MAX_RUNS + 6 };
  uint64_t per = BP__GEN_EVENTS + 1, n = 0;
  bp_id *ids = malloc(sizeof *ids * per * (SESSIONS + 1));
  size_t most = 0;
  for (int k = 0; k < SESSIONS; k++) {
    bp_store *s;
    assert_ok(bp_open(&f->cfg, &s));
    bp__ixstore_pause(s); /* no merge in this session */
    append_n(s, n, per, ids + n);
    n += per;
    assert_ok(bp_close(s));
    size_t runs = count_runs(f->dir);
    if (runs > most) most = runs;
    assert_true(runs <= BP__IX_MAX_RUNS);
  }
  assert_int_equal(most, BP__IX_MAX_RUNS);
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  check_all(s, ids, n, "at the most runs");
  /* A session with its index thread: it merges until there is room. */
  append_n(s, n, per, ids + n);
  n += per;
  for (int i = 0; i < 2000 && count_runs(f->dir) > BP__IX_MAX_RUNS - 8; i++) usleep(5000);
  assert_ok(bp_close(s));
  print_message("runs: at most %zu, %zu after a merging session\n", most, count_runs(f->dir));
  /* Room again (the close may spill the gens frozen meanwhile). */
  assert_true(count_runs(f->dir) < BP__IX_MAX_RUNS);
  assert_ok(bp_open_readonly(&f->cfg, &s));
  check_all(s, ids, n, "after the merges");
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after many short sessions");
  free(ids);
}

/* A follower that follows many events maps the writer's index again
 * instead of keeping them all in its memory; strings it gave out before
 * stay valid, and its view stays exact. */
static void a_long_follower_maps_the_writers_index_again(void **state) {
  tu_store_fixture *f = *state;
  enum { EVENTS = 360000, STEP = 8192 };
  bp_id *ids = malloc(sizeof *ids * EVENTS);
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 10, ids);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  bp_entry first;
  assert_ok(bp_get_entry(r, ids[0], &first));
  uint64_t most_in_memory = 0;
  for (uint64_t n = 10; n < EVENTS;) {
    uint64_t k = EVENTS - n < STEP ? EVENTS - n : STEP;
    append_n(w, n, k, ids + n);
    n += k;
    uint64_t added;
    assert_ok(bp_refresh(r, &added));
    uint64_t in_memory = r->ix.count - bp__index_runs(&r->ix)->end;
    if (in_memory > most_in_memory) most_in_memory = in_memory;
  }
  print_message("follower: at most %llu events indexed in memory, %llu mapped in the end\n",
                (unsigned long long)most_in_memory, (unsigned long long)bp__index_runs(&r->ix)->end);
  assert_true(bp__index_runs(&r->ix)->end > 0);
  assert_true(most_in_memory < (1u << 18) + 64 * 1024);
  assert_string_equal(first.entity, entity_of(0, (char[32]){0}, 32));
  check_all(r, ids, EVENTS, "follower");
  assert_ok(bp_close(r));
  assert_ok(bp_close(w));
  free(ids);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(runs_are_written_and_merged_while_readers_read, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_crash_leaves_an_index_the_next_open_brings_up_to_date, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_damaged_chunk_of_entries_is_read_again_from_the_log, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_damaged_run_is_made_again_from_the_entries, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(an_index_naming_a_missing_segment_fails_the_open, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(short_sessions_go_on_in_the_newest_segment, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(damage_in_the_newest_segment_is_not_taken_for_a_torn_tail, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_damaged_newer_state_copy_falls_back_to_the_older, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(snapshot_from_a_reader_keeps_the_segment_the_writer_goes_on_with,
                                      tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(many_short_sessions_never_fill_the_run_table, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_long_follower_maps_the_writers_index_again, tu_store_setup,
                                      tu_store_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
