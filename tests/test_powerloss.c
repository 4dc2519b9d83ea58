/*
 * test_powerloss.c - power-loss simulation (the SQLite crash-test idea).
 *
 * For each seed a child process appends singles and three-event batches,
 * with rotations, bp_sync, merge compactions and close/reopen cycles, while
 * faultfs follows what each fsync made durable. At a seeded file-system call
 * the power goes: the child records that state and exits, and the parent does
 * to every file what a power failure may do to data no fsync covered (drop it,
 * garble it sector by sector, or keep it). Seeds with sync_every_n_events
 * above 1 write frames through the writable mapping (the default path), and
 * the model covers those writes too: every sector that differs from what the
 * last fsync saw is in play. Then it checks:
 *   - the store opens, and opens for writing;
 *   - every append acknowledged and covered by an fsync before the cut is
 *     present with its payload (the store's durable_sequence at each
 *     acknowledgement says which are);
 *   - every event present is one the child appended, once; no batch is
 *     partial; global sequences are dense;
 *   - after one more append and a clean close, bp_verify finds nothing wrong.
 *
 * BATPAK_POWERLOSS_SEEDS overrides the number of seeds (default 40), and
 * BATPAK_POWERLOSS_FIRST the first seed.
 */
#include "faultfs.h"
#include "testutil.h"

#include <inttypes.h>
#include <sys/wait.h>
#include <unistd.h>

enum { BATCH = 3, MAX_APPENDS = 1500 };

typedef struct report {
  uint32_t n;           /* the append's number; batches have 3 events */
  uint32_t batch;
  uint64_t seq;         /* global sequence of its first event */
  uint64_t durable;     /* the store's durable_sequence right after it */
  bp_id ids[BATCH];
} report;

static void seed_config(bp_config *cfg, const char *dir, unsigned seed) {
  bp_config_init(cfg, dir);
  cfg->segment_max_bytes = 4096u << (seed % 3);
  static const uint32_t every[4] = {1, 3, 50, 1000};
  cfg->sync_every_n_events = every[seed % 4];
  cfg->sync_mode = seed % 2 ? BP_SYNC_DATA : BP_SYNC_ALL;
}

static size_t payload(char *buf, uint32_t n, int i) {
  int len = snprintf(buf + 1, 30, "p:%u:%d", n, i);
  buf[0] = (char)(0xa0 | len);
  return (size_t)len + 1;
}

static void send(int fd, const report *r) {
  if (write(fd, r, sizeof *r) != (ssize_t)sizeof *r) _exit(3);
}

static void run_child(const char *dir, const char *record, unsigned seed, int fd) {
  bp_config cfg;
  seed_config(&cfg, dir, seed);
  srand(seed * 7919u);
  ff_power_track();
  ff_power_cut_after(40 + rand() % 900, record);
  bp_store *s;
  if (bp_open(&cfg, &s)) _exit(2);
  for (uint32_t n = 0; n < MAX_APPENDS; n++) {
    report r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.batch = n % 4 == 3;
    char ent[16], p[BATCH][32];
    snprintf(ent, sizeof ent, "e:%u", n % 5);
    bp_append_receipt rc[BATCH];
    if (r.batch) {
      bp_event_in in[BATCH];
      memset(in, 0, sizeof in);
      for (int i = 0; i < BATCH; i++) {
        in[i].coord = (bp_coord){ent, "power"};
        in[i].kind = 0x1002;
        in[i].payload = p[i];
        in[i].len = payload(p[i], n, i);
      }
      if (bp_append_batch(s, in, BATCH, rc)) _exit(4);
    } else {
      bp_coord c = {ent, "power"};
      if (bp_append(s, &c, 0x1001, p[0], payload(p[0], n, 0), &rc[0])) _exit(5);
    }
    r.seq = rc[0].sequence;
    for (int i = 0; i < (r.batch ? BATCH : 1); i++) r.ids[i] = rc[i].event_id;
    bp_store_diagnostics d;
    bp_diagnostics(s, &d);
    r.durable = d.durable_sequence;
    send(fd, &r);
    if (n % 25 == 24 && bp_sync(s)) _exit(6);
    if (n % 40 == 39) {
      bp_compaction_config cc = {BP_COMPACT_MERGE, NULL, NULL, 2};
      bp_compaction_result res;
      if (bp_compact(s, &cc, &res)) _exit(8);
    }
    if (n % 150 == 149) {
      if (bp_close(s)) _exit(9);
      if (bp_open(&cfg, &s)) _exit(10);
    }
  }
  ff_power_cut(record);
}

static report *read_reports(int fd, size_t *count) {
  size_t cap = 256, n = 0;
  report *v = malloc(cap * sizeof *v);
  while (v) {
    if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
    ssize_t got = read(fd, &v[n], sizeof *v);
    if (got <= 0) break;
    assert_int_equal(got, sizeof *v);
    n++;
  }
  *count = n;
  return v;
}

/* Checks the store after the power came back; returns the events found. */
static uint64_t check_store(const char *dir, const report *reps, size_t nreps, unsigned seed) {
  bp_config cfg;
  seed_config(&cfg, dir, seed);
  bp_store *s;
  bp_status st = bp_open(&cfg, &s);
  if (st) fail_msg("seed %u: open after the power loss: %s: %s", seed, bp_status_name(st), bp_last_error()->message);

  uint64_t durable = 0;
  for (size_t k = 0; k < nreps; k++)
    if (reps[k].durable > durable) durable = reps[k].durable;
  for (size_t k = 0; k < nreps; k++) {
    const report *r = &reps[k];
    if (r->seq >= durable) continue; /* not covered by an fsync: may be gone */
    for (int i = 0; i < (r->batch ? BATCH : 1); i++) {
      bp_event *ev;
      st = bp_get(s, r->ids[i], &ev);
      if (st) fail_msg("seed %u: durable append %u (sequence %" PRIu64 " < %" PRIu64 ") lost: %s", seed, r->n,
                       r->seq, durable, bp_last_error()->message);
      char want[32];
      size_t len = payload(want, r->n, i);
      tu_assert_bytes_eq(ev->payload, ev->payload_len, want, len, "payload");
      bp_event_free(ev);
    }
  }

  bp_region all = bp_region_all();
  bp_entries e;
  assert_ok(bp_query(s, &all, &e));
  uint8_t *members = calloc(MAX_APPENDS, 1);
  for (size_t i = 0; i < e.len; i++) {
    if (e.items[i].global_sequence != i) fail_msg("seed %u: sequence %" PRIu64 " at %zu", seed, e.items[i].global_sequence, i);
    bp_event *ev;
    assert_ok(bp_get(s, e.items[i].event_id, &ev));
    unsigned n = 0;
    int member = -1;
    char text[32];
    tu_fixstr_text(ev, text, sizeof text);
    if (sscanf(text, "p:%u:%d", &n, &member) != 2 || n >= MAX_APPENDS)
      fail_msg("seed %u: an event the child never wrote: \"%s\"", seed, text);
    members[n]++;
    bp_event_free(ev);
  }
  for (uint32_t n = 0; n < MAX_APPENDS; n++) {
    unsigned want = n % 4 == 3 ? BATCH : 1;
    if (members[n] != 0 && members[n] != want)
      fail_msg("seed %u: append %u has %u of its %u events", seed, n, members[n], want);
  }
  free(members);
  uint64_t count = e.len;
  bp_entries_free(&e);

  char what[48];
  snprintf(what, sizeof what, "seed %u, after the power loss", seed);
  tu_finish_after_crash(s, count, dir, what);
  return count;
}

static void fsynced_appends_survive_power_loss(void **state) {
  (void)state;
  const char *env = getenv("BATPAK_POWERLOSS_SEEDS");
  unsigned seeds = env ? (unsigned)atoi(env) : 40;
  const char *first_env = getenv("BATPAK_POWERLOSS_FIRST"); /* rerun from a failing seed */
  unsigned first = first_env ? (unsigned)atoi(first_env) : 1;
  uint64_t acked = 0, durable_checked = 0, events = 0;
  int damaged_files = 0;
  for (unsigned seed = first; seed < first + seeds; seed++) {
    char *tmp = tu_make_temp_dir("power");
    char dir[4200], record[4200];
    snprintf(dir, sizeof dir, "%s/data", tmp);
    snprintf(record, sizeof record, "%s/record", tmp);
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(p[0]);
      run_child(dir, record, seed, p[1]);
    }
    close(p[1]);
    size_t nreps;
    report *reps = read_reports(p[0], &nreps);
    close(p[0]);
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) fail_msg("seed %u: the child failed (status %d)", seed, ws);
    int damaged = ff_power_apply(record, seed);
    assert_true(damaged >= 0);
    damaged_files += damaged;
    events += check_store(dir, reps, nreps, seed);
    acked += nreps;
    for (size_t k = 0; k < nreps; k++) durable_checked += reps[k].seq < reps[nreps - 1].durable;
    free(reps);
    tu_remove_tree(tmp);
    free(tmp);
  }
  print_message("power loss: %u cuts, %" PRIu64 " acknowledged appends (%" PRIu64 " durable, checked), %d files "
                "dropped or garbled, %" PRIu64 " events reopened\n",
                seeds, acked, durable_checked, damaged_files, events);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fsynced_appends_survive_power_loss),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
