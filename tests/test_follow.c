/*
 * test_follow.c - read-only handles following a writer (follow.c, head.c):
 * in one process through bp_refresh, cursors and subscriptions, and across
 * real processes (this executable runs itself as writer and followers),
 * with the writer and followers killed and restarted.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef tu_store_fixture fixture;
#define setup tu_store_setup
#define teardown tu_store_teardown

static const char *self_exe;

/* ---------------------------------------------------------- the events */

/* Event i's shape: entity, scope, kind and payload follow from i alone, so
 * any process can say what event i must be. */
static void event_shape(uint64_t i, char *entity, char *scope, uint8_t *payload, size_t *len) {
  snprintf(entity, 32, "e:%llu", (unsigned long long)(i % 7));
  snprintf(scope, 32, "s%llu", (unsigned long long)(i % 3));
  size_t n = 1 + (size_t)((i * 37) % 300);
  payload[0] = 0xc4; /* MessagePack bin 8 */
  payload[1] = (uint8_t)n;
  for (size_t k = 0; k < n; k++) payload[2 + k] = (uint8_t)(i * 31 + k);
  *len = n + 2;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

/* Folds event seq, read back whole, into a digest of the log. */
static uint64_t digest_event(bp_store *s, const bp_entry *e, uint64_t h) {
  bp_event *ev;
  if (bp_get(s, e->event_id, &ev) != BP_OK) return 0;
  h = fnv(h, &e->global_sequence, sizeof e->global_sequence);
  h = fnv(h, &e->event_id, sizeof e->event_id);
  h = fnv(h, e->entity, strlen(e->entity));
  h = fnv(h, e->scope, strlen(e->scope));
  h = fnv(h, &e->kind, sizeof e->kind);
  h = fnv(h, &e->wall_ms, sizeof e->wall_ms);
  h = fnv(h, &e->clock, sizeof e->clock);
  h = fnv(h, &e->hash_chain, sizeof e->hash_chain);
  h = fnv(h, ev->payload, ev->payload_len);
  bp_event_free(ev);
  return h;
}

/* Whether entry e is the event its sequence says (entity, scope, payload). */
static bool event_is_right(bp_store *s, const bp_entry *e) {
  char entity[32], scope[32];
  uint8_t want[400];
  size_t len;
  event_shape(e->global_sequence, entity, scope, want, &len);
  bp_event *ev;
  if (bp_get(s, e->event_id, &ev) != BP_OK) return false;
  bool ok = strcmp(e->entity, entity) == 0 && strcmp(e->scope, scope) == 0 && ev->payload_len == len &&
            memcmp(ev->payload, want, len) == 0;
  bp_event_free(ev);
  return ok;
}

static bp_config config_for(const char *dir, uint64_t seg_bytes) {
  bp_config c;
  bp_config_init(&c, dir);
  if (seg_bytes) c.segment_max_bytes = seg_bytes;
  return c;
}

static uint64_t count_of(bp_store *s) {
  bp_store_stats st;
  bp_stats(s, &st);
  return st.event_count;
}

/* ------------------------------------------------------ the child roles */

/* writer DIR N SEGBYTES MODE: appends until the store holds N events
 * (single appends and batches of three), pausing now and then so that
 * followers follow a live log; MODE "compact" merges the sealed segments
 * once, half-way through what it appends (the numbering stays). */
static int role_writer(char **argv) {
  const char *dir = argv[0];
  uint64_t n = strtoull(argv[1], NULL, 10);
  bp_config c = config_for(dir, strtoull(argv[2], NULL, 10));
  bp_store *s = NULL;
  bp_status st;
  for (int tries = 0; (st = bp_open(&c, &s)) == BP_ELOCKED && tries < 500; tries++) usleep(10000);
  if (st) {
    fprintf(stderr, "writer: open: %s\n", bp_last_error()->message);
    return 3;
  }
  bp_store_stats stats;
  bp_stats(s, &stats);
  uint64_t i = stats.event_count, compact_at = strcmp(argv[3], "compact") == 0 ? i + (n - i) / 2 : UINT64_MAX;
  char ent[3][32], scp[3][32];
  uint8_t pay[3][400];
  while (i < n) {
    size_t k = (i % 10 == 4 && n - i >= 3) ? 3 : 1;
    bp_event_in in[3];
    memset(in, 0, sizeof in);
    for (size_t j = 0; j < k; j++) {
      size_t len;
      event_shape(i + j, ent[j], scp[j], pay[j], &len);
      in[j].coord = (bp_coord){ent[j], scp[j]};
      in[j].kind = 0x1001;
      in[j].payload = pay[j];
      in[j].len = len;
    }
    bp_append_receipt r[3];
    st = k == 1 ? bp_append(s, &in[0].coord, in[0].kind, in[0].payload, in[0].len, &r[0])
                : bp_append_batch(s, in, k, r);
    if (st) {
      fprintf(stderr, "writer: append %llu: %s\n", (unsigned long long)i, bp_last_error()->message);
      return 4;
    }
    i += k;
    if (i % 25 == 0) usleep(10000); /* 4000 events take at least 1.6 s */
    if (i >= compact_at) {
      compact_at = UINT64_MAX;
      bp_compaction_config cc = {.strategy = BP_COMPACT_MERGE};
      bp_compaction_result res;
      if (bp_compact(s, &cc, &res)) {
        fprintf(stderr, "writer: compact: %s\n", bp_last_error()->message);
        return 6;
      }
      if (res.segments_removed == 0) {
        fprintf(stderr, "writer: the compaction merged nothing\n");
        return 7;
      }
    }
  }
  return bp_close(s) ? 5 : 0;
}

/* follower DIR N OUT: a read-only handle opened before or beside the writer
 * follows with a cursor woken by a subscription's descriptor until it has
 * seen N events, checking each is the next in order and the right one; the
 * digest of what it saw goes to OUT. */
static int role_follower(char **argv) {
  const char *dir = argv[0];
  uint64_t n = strtoull(argv[1], NULL, 10);
  bp_config c = config_for(dir, 0);
  bp_store *s;
  if (bp_open_readonly(&c, &s)) {
    fprintf(stderr, "follower: open: %s\n", bp_last_error()->message);
    return 3;
  }
  bp_region all = bp_region_all();
  bp_subscription *sub = bp_subscribe(s, &all);
  bp_cursor *cur = bp_cursor_open(s, &all);
  if (!sub || !cur) return 3;
  int fd = bp_sub_fd(sub);
  uint64_t next = 0, h = 0xcbf29ce484222325ull, last_note = 0;
  time_t start = time(NULL);
  while (next < n) {
    if (time(NULL) - start > 120) {
      fprintf(stderr, "follower: stuck at %llu of %llu\n", (unsigned long long)next, (unsigned long long)n);
      return 6;
    }
    bp_entry e;
    bp_status st;
    while ((st = bp_cursor_poll(cur, &e)) == BP_OK) {
      if (e.global_sequence != next) {
        fprintf(stderr, "follower: got %llu, expected %llu\n", (unsigned long long)e.global_sequence,
                (unsigned long long)next);
        return 7;
      }
      if (!event_is_right(s, &e)) {
        fprintf(stderr, "follower: event %llu is not the one written\n", (unsigned long long)next);
        return 8;
      }
      h = digest_event(s, &e, h);
      next++;
    }
    if (st != BP_ENOTFOUND) {
      fprintf(stderr, "follower: poll: %s\n", bp_last_error()->message);
      return 9;
    }
    /* Notifications arrive in commit order, never past what the cursor
     * can read once it looks again. */
    bp_notification note;
    while (bp_sub_recv(sub, &note, 0) == BP_OK) {
      if (note.sequence < last_note && last_note) return 10;
      last_note = note.sequence;
    }
    if (next < n) {
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, 1000);
    }
  }
  bp_cursor_close(cur);
  bp_sub_close(sub);
  bp_close(s);
  FILE *o = fopen(argv[2], "w");
  if (!o) return 11;
  fprintf(o, "%llu %llx\n", (unsigned long long)next, (unsigned long long)h);
  fclose(o);
  return 0;
}

/* --------------------------------------------------------- the parent's */

static pid_t spawn(const char *role, const char *a, const char *b, const char *c, const char *d) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    execl(self_exe, self_exe, role, a, b, c, d, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static int reap(pid_t pid) {
  int ws;
  if (waitpid(pid, &ws, 0) != pid) return -1;
  if (WIFSIGNALED(ws)) return 128 + WTERMSIG(ws);
  return WEXITSTATUS(ws);
}

/* The digest of the whole log as a fresh read-only open reads it. */
static uint64_t digest_store(const char *dir, uint64_t *count) {
  bp_config c = config_for(dir, 0);
  bp_store *s;
  assert_ok(bp_open_readonly(&c, &s));
  bp_region all = bp_region_all();
  bp_entries es;
  assert_ok(bp_query(s, &all, &es));
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < es.len; i++) {
    assert_int_equal(es.items[i].global_sequence, i);
    assert_true(event_is_right(s, &es.items[i]));
    h = digest_event(s, &es.items[i], h);
  }
  *count = es.len;
  bp_entries_free(&es);
  assert_ok(bp_close(s));
  return h;
}

static void read_digest(const char *path, uint64_t *count, uint64_t *h) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  unsigned long long c, d;
  assert_int_equal(fscanf(f, "%llu %llx", &c, &d), 2);
  fclose(f);
  *count = c;
  *h = d;
}

/* One writer appending across segment rotations, killed and restarted
 * mid-way, the second merging the sealed segments as it goes, while four
 * follower processes (one opened before the store had
 * any segment, one killed and restarted) follow: each sees every event
 * exactly once, in order, the same bytes a fresh open reads afterwards. */
static void four_followers_see_every_event_once_in_order(void **state) {
  fixture *f = *state;
  const uint64_t n = 4000;
  char ns[32], out[4][4200];
  snprintf(ns, sizeof ns, "%llu", (unsigned long long)n);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  pid_t fl[4];
  for (int i = 0; i < 4; i++) {
    snprintf(out[i], sizeof out[i], "%s/follower%d.out", f->tmp, i);
    if (i < 3) fl[i] = spawn("follower", f->dir, ns, out[i], "-"); /* before any segment exists */
  }
  usleep(100000);
  pid_t w = spawn("writer", f->dir, ns, "65536", "plain");
  usleep(150000);
  fl[3] = spawn("follower", f->dir, ns, out[3], "-"); /* beside the live writer */
  usleep(100000);
  /* A follower killed mid-way and started again. */
  kill(fl[1], SIGKILL);
  assert_int_equal(reap(fl[1]), 128 + SIGKILL);
  fl[1] = spawn("follower", f->dir, ns, out[1], "-");
  /* The writer killed mid-way (or finished already) and started again. */
  kill(w, SIGKILL);
  int wcode = reap(w);
  assert_true(wcode == 128 + SIGKILL || wcode == 0);
  w = spawn("writer", f->dir, ns, "65536", "compact");
  assert_int_equal(reap(w), 0);
  for (int i = 0; i < 4; i++) assert_int_equal(reap(fl[i]), 0);
  uint64_t count, want = digest_store(f->dir, &count);
  assert_int_equal(count, n);
  for (int i = 0; i < 4; i++) {
    uint64_t c, h;
    read_digest(out[i], &c, &h);
    assert_int_equal(c, n);
    if (h != want) fail_msg("follower %d saw other events than the log holds", i);
  }
  tu_assert_verifies(f->dir, "after following");
}

/* ------------------------------------------------------- the tool */

/* Runs the batpak tool with stdout to out (NULL: /dev/null); its pid. */
static pid_t spawn_cli(const char *out, char *const args[]) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || dup2(fd, 1) < 0) _exit(126);
    execv(BATPAK_CLI, args);
    _exit(127);
  }
  return pid;
}

static size_t count_lines(const char *path) {
  size_t len, n = 0;
  uint8_t *b = tu_read_file(path, &len);
  for (size_t i = 0; b && i < len; i++) n += b[i] == '\n';
  free(b);
  return n;
}

/* batpak tail -f follows a writer through its crash and restart: every
 * event printed once, in order, and SIGINT ends it cleanly. */
static void tail_f_follows_a_writer_through_its_restart(void **state) {
  fixture *f = *state;
  const uint64_t n = 1500;
  char ns[32], out[4200];
  snprintf(ns, sizeof ns, "%llu", (unsigned long long)n);
  snprintf(out, sizeof out, "%s/tail.out", f->tmp);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  char *args[] = {"batpak", "tail", f->dir, "-f", "-n", "all", "--json", NULL};
  pid_t w = spawn("writer", f->dir, ns, "32768", "plain");
  /* The tool refuses a directory that is not a store yet: start it once the
   * writer has made one. */
  char lock[4300];
  snprintf(lock, sizeof lock, "%s/batpak.lock", f->dir);
  for (int i = 0; i < 500 && access(lock, F_OK) != 0; i++) usleep(2000);
  pid_t t = spawn_cli(out, args);
  usleep(200000);
  kill(w, SIGKILL);
  int wcode = reap(w);
  assert_true(wcode == 128 + SIGKILL || wcode == 0);
  w = spawn("writer", f->dir, ns, "32768", "plain");
  assert_int_equal(reap(w), 0);
  for (int i = 0; i < 500 && count_lines(out) < n; i++) usleep(20000);
  kill(t, SIGINT);
  assert_int_equal(reap(t), 0);
  size_t len;
  char *text = (char *)tu_read_file(out, &len);
  assert_non_null(text);
  uint64_t want = 0;
  for (char *line = text; line < text + len;) {
    char *nl = memchr(line, '\n', (size_t)(text + len - line));
    assert_non_null(nl);
    *nl = 0;
    char *g = strstr(line, "\"global_sequence\":");
    assert_non_null(g);
    assert_int_equal(strtoull(g + strlen("\"global_sequence\":"), NULL, 10), want);
    want++;
    line = nl + 1;
  }
  free(text);
  assert_int_equal(want, n);
}

/* batpak snapshot copies a store another process is writing (and
 * compacting): the copy opens, verifies, holds every event that was there
 * before the call, and is a prefix of the log the writer ends with. */
static void snapshot_of_a_store_another_process_writes(void **state) {
  fixture *f = *state;
  const uint64_t n = 3000;
  char ns[32], dest[4200];
  snprintf(ns, sizeof ns, "%llu", (unsigned long long)n);
  snprintf(dest, sizeof dest, "%s/copy", f->tmp);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  pid_t w = spawn("writer", f->dir, ns, "32768", "compact");
  bp_store *r = NULL;
  for (int i = 0; i < 500; i++) {
    usleep(10000);
    if (bp_open_readonly(&f->cfg, &r) == BP_OK && count_of(r) > 300) break;
    if (r) bp_close(r);
    r = NULL;
  }
  assert_non_null(r);
  uint64_t before = count_of(r);
  assert_ok(bp_close(r));
  char *args[] = {"batpak", "snapshot", f->dir, dest, NULL};
  assert_int_equal(reap(spawn_cli(NULL, args)), 0);
  assert_int_equal(reap(w), 0);
  tu_assert_verifies(dest, "the snapshot");
  bp_config dc = config_for(dest, 0);
  bp_store *d;
  assert_ok(bp_open_readonly(&dc, &d));
  bp_region all = bp_region_all();
  bp_entries got, fin;
  assert_ok(bp_query(d, &all, &got));
  assert_ok(bp_open_readonly(&f->cfg, &r));
  assert_ok(bp_query(r, &all, &fin));
  assert_true(got.len >= before);
  assert_true(got.len <= fin.len);
  for (size_t i = 0; i < got.len; i++) {
    assert_true(bp_id_eq(got.items[i].event_id, fin.items[i].event_id));
    assert_true(event_is_right(d, &got.items[i]));
  }
  print_message("snapshot: %zu events (%llu before the call, %zu in the end)\n", got.len,
                (unsigned long long)before, fin.len);
  bp_entries_free(&got);
  bp_entries_free(&fin);
  assert_ok(bp_close(r));
  assert_ok(bp_close(d));
}

/* A second writer is refused from another process while the first lives,
 * and not blocked by it once it was killed. */
static void a_second_writer_is_refused_until_the_first_dies(void **state) {
  fixture *f = *state;
  assert_int_equal(mkdir(f->dir, 0700), 0);
  pid_t w = spawn("writer", f->dir, "100000", "1048576", "plain");
  bp_store *r = NULL;
  for (int i = 0; i < 500; i++) {
    usleep(10000);
    if (bp_open_readonly(&f->cfg, &r) == BP_OK && count_of(r) > 10) break;
    if (r) bp_close(r);
    r = NULL;
  }
  assert_non_null(r);
  assert_ok(bp_close(r));
  bp_store *s;
  assert_status(bp_open(&f->cfg, &s), BP_ELOCKED);
  kill(w, SIGKILL);
  assert_int_equal(reap(w), 128 + SIGKILL);
  assert_ok(bp_open(&f->cfg, &s));
  assert_true(count_of(s) > 10);
  assert_ok(bp_close(s));
}

/* ------------------------------------------------------- one process */

static void append_n(bp_store *s, uint64_t from, uint64_t n) {
  for (uint64_t i = from; i < from + n; i++) {
    char ent[32], scp[32];
    uint8_t pay[400];
    size_t len;
    event_shape(i, ent, scp, pay, &len);
    bp_coord c = {ent, scp};
    assert_ok(bp_append(s, &c, 0x1001, pay, len, NULL));
  }
}

/* bp_refresh brings a read-only handle up to what the writer published,
 * across segment rotations, and no further. */
static void refresh_brings_a_reader_up_to_the_writer(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 16384;
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 5);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  assert_int_equal(count_of(r), 5);
  append_n(w, 5, 200); /* several rotations */
  assert_int_equal(count_of(r), 5);
  uint64_t added;
  assert_ok(bp_refresh(r, &added));
  assert_int_equal(added, 200);
  assert_ok(bp_refresh(r, &added));
  assert_int_equal(added, 0);
  bp_region all = bp_region_all();
  bp_entries es;
  assert_ok(bp_query(r, &all, &es));
  assert_int_equal(es.len, 205);
  for (size_t i = 0; i < es.len; i++) assert_true(event_is_right(r, &es.items[i]));
  bp_entries_free(&es);
  /* Streams and scopes see the new events too. */
  assert_ok(bp_stream(r, "e:3", &es));
  assert_int_equal(es.len, 29);
  bp_entries_free(&es);
  assert_ok(bp_close(w));
  /* The writer gone: the reader reads what is there, which is what it has. */
  assert_ok(bp_refresh(r, &added));
  assert_int_equal(added, 0);
  assert_ok(bp_close(r));
  assert_status(bp_refresh(NULL, NULL), BP_EINVAL);
}

/* Bytes after the writer's head (here a copy of a valid frame, as a group
 * being written would leave) are not read by a read-only open or refresh
 * beside that live writer: only what it published. */
static void a_reader_beside_a_live_writer_reads_no_further_than_its_head(void **state) {
  fixture *f = *state;
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 3);
  bp_entry first;
  bp_region all = bp_region_all();
  bp_entries es;
  assert_ok(bp_query(w, &all, &es));
  first = es.items[0];
  bp_entries_free(&es);
  char seg[4200];
  snprintf(seg, sizeof seg, "%s/%06llu.fbat", f->dir, (unsigned long long)first.disk_pos.segment_id);
  int fd = open(seg, O_RDWR);
  assert_true(fd >= 0);
  struct stat sb;
  assert_int_equal(fstat(fd, &sb), 0);
  uint8_t frame[1024];
  assert_true(first.disk_pos.length <= sizeof frame);
  assert_int_equal(pread(fd, frame, first.disk_pos.length, (off_t)first.disk_pos.offset), first.disk_pos.length);
  assert_int_equal(pwrite(fd, frame, first.disk_pos.length, sb.st_size), first.disk_pos.length);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  assert_int_equal(count_of(r), 3);
  uint64_t added;
  assert_ok(bp_refresh(r, &added));
  assert_int_equal(added, 0);
  assert_ok(bp_close(r));
  /* Gone again before the writer goes on: it would write over it anyway. */
  assert_int_equal(ftruncate(fd, sb.st_size), 0);
  close(fd);
  append_n(w, 3, 2);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  assert_int_equal(count_of(r), 5);
  assert_ok(bp_close(r));
  assert_ok(bp_close(w));
}

/* A cursor of a read-only handle that reached the end finds the writer's
 * new events by itself. */
static void a_readers_cursor_moves_on_by_itself(void **state) {
  fixture *f = *state;
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 2);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  bp_region all = bp_region_all();
  bp_cursor *c = bp_cursor_open(r, &all);
  bp_entry e;
  assert_ok(bp_cursor_poll(c, &e));
  assert_ok(bp_cursor_poll(c, &e));
  assert_status(bp_cursor_poll(c, &e), BP_ENOTFOUND);
  append_n(w, 2, 1);
  assert_ok(bp_cursor_poll(c, &e));
  assert_int_equal(e.global_sequence, 2);
  assert_true(event_is_right(r, &e));
  bp_cursor_close(c);
  assert_ok(bp_close(r));
  assert_ok(bp_close(w));
}

/* A subscription of a read-only handle is woken by the writer's publish,
 * through its descriptor too, without any call on the reader's side. */
static void a_readers_subscription_is_woken_by_the_writer(void **state) {
  fixture *f = *state;
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 1);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  bp_region all = bp_region_all();
  bp_subscription *sub = bp_subscribe(r, &all);
  assert_non_null(sub);
  int fd = bp_sub_fd(sub);
  assert_true(fd >= 0);
  struct pollfd p = {fd, POLLIN, 0};
  assert_int_equal(poll(&p, 1, 50), 0);
  append_n(w, 1, 1);
  assert_int_equal(poll(&p, 1, 5000), 1);
  bp_notification n;
  assert_ok(bp_sub_recv(sub, &n, 0));
  assert_int_equal(n.sequence, 1);
  assert_string_equal(n.entity, "e:1");
  append_n(w, 2, 3);
  for (uint64_t i = 3; i < 6; i++) {
    assert_ok(bp_sub_recv(sub, &n, 5000));
    assert_int_equal(n.sequence, i - 1);
  }
  bp_sub_close(sub);
  assert_ok(bp_close(r));
  assert_ok(bp_close(w));
}

static bool keep_not_e0(const bp_event *ev, void *ctx) {
  (void)ctx;
  return strcmp(ev->entity, "e:0") != 0;
}

/* A reader whose writer compacts away some events reopens the new log by
 * itself: its cursor goes on after the last event it had, each surviving
 * event once, in the writer's order, and the strings it handed out before
 * stay valid. */
static void a_reader_follows_the_writer_through_a_retention_compaction(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 8192;
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 100);
  assert_ok(bp_open_readonly(&f->cfg, &r));
  bp_region all = bp_region_all();
  bp_cursor *c = bp_cursor_open(r, &all);
  bp_id seen[400];
  size_t nseen = 0;
  bp_entry e, first;
  for (int i = 0; i < 60; i++) {
    assert_ok(bp_cursor_poll(c, &e));
    if (i == 0) first = e;
    seen[nseen++] = e.event_id;
  }
  append_n(w, 100, 20);
  bp_compaction_config cc = {.strategy = BP_COMPACT_RETENTION, .keep = keep_not_e0};
  bp_compaction_result res;
  assert_ok(bp_compact(w, &cc, &res));
  assert_true(res.segments_removed > 0);
  append_n(w, 120, 20);
  bp_status st;
  while ((st = bp_cursor_poll(c, &e)) == BP_OK) {
    assert_true(nseen < 400);
    seen[nseen++] = e.event_id;
  }
  assert_int_equal(st, BP_ENOTFOUND);
  assert_string_equal(first.entity, "e:0"); /* the old index's string, still there */
  bp_entries fin;
  assert_ok(bp_query(w, &all, &fin));
  /* Every event of the final log once, in its order; the others seen were
   * dropped by the compaction after the reader had them. */
  size_t k = 0;
  for (size_t i = 0; i < nseen; i++) {
    for (size_t j = 0; j < i; j++) assert_false(bp_id_eq(seen[i], seen[j]));
    if (k < fin.len && bp_id_eq(seen[i], fin.items[k].event_id)) k++;
  }
  assert_int_equal(k, fin.len);
  assert_true(fin.len < 140); /* e:0 left the merged segments */
  /* The reader's own view agrees with the writer's. */
  bp_entries mine;
  assert_ok(bp_query(r, &all, &mine));
  assert_int_equal(mine.len, fin.len);
  for (size_t i = 0; i < fin.len; i++) assert_true(bp_id_eq(mine.items[i].event_id, fin.items[i].event_id));
  bp_entries_free(&mine);
  bp_entries_free(&fin);
  bp_cursor_close(c);
  assert_ok(bp_close(r));
  assert_ok(bp_close(w));
}

/* With no writer alive there is no head to tell of a compaction: a reader
 * whose segment another process compacted in the meantime (a new file under
 * the same name) notices by the segment header's time, reads the log anew,
 * and shows exactly the compacted log, never frames of the new file taken
 * at the old file's offsets. */
static void a_reader_notices_its_segment_replaced_while_no_writer_lived(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 2048;
  bp_store *w, *r;
  assert_ok(bp_open(&f->cfg, &w));
  append_n(w, 0, 3); /* all in segment 1 */
  assert_ok(bp_open_readonly(&f->cfg, &r));
  assert_int_equal(count_of(r), 3);
  append_n(w, 3, 60);
  assert_ok(bp_close(w));
  assert_ok(bp_open(&f->cfg, &w));
  bp_compaction_config cc = {.strategy = BP_COMPACT_RETENTION, .keep = keep_not_e0};
  bp_compaction_result res;
  assert_ok(bp_compact(w, &cc, &res));
  assert_true(res.segments_removed > 0);
  assert_ok(bp_close(w));
  uint64_t added;
  assert_ok(bp_refresh(r, &added));
  bp_region all = bp_region_all();
  bp_entries mine, fin;
  assert_ok(bp_query(r, &all, &mine));
  assert_ok(bp_open_readonly(&f->cfg, &w));
  assert_ok(bp_query(w, &all, &fin));
  assert_int_equal(mine.len, fin.len);
  for (size_t i = 0; i < fin.len; i++) {
    assert_true(bp_id_eq(mine.items[i].event_id, fin.items[i].event_id));
    assert_string_not_equal(mine.items[i].entity, "e:0");
  }
  bp_entries_free(&mine);
  bp_entries_free(&fin);
  assert_ok(bp_close(w));
  assert_ok(bp_close(r));
}

int main(int argc, char **argv) {
  self_exe = argv[0];
  if (argc >= 2 && strcmp(argv[1], "writer") == 0 && argc == 6) return role_writer(argv + 2);
  if (argc >= 2 && strcmp(argv[1], "follower") == 0 && argc == 6) return role_follower(argv + 2);
  char exe[4096];
  ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (k > 0) {
    exe[k] = 0;
    self_exe = exe;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(refresh_brings_a_reader_up_to_the_writer, setup, teardown),
      cmocka_unit_test_setup_teardown(a_reader_beside_a_live_writer_reads_no_further_than_its_head, setup, teardown),
      cmocka_unit_test_setup_teardown(a_readers_cursor_moves_on_by_itself, setup, teardown),
      cmocka_unit_test_setup_teardown(a_readers_subscription_is_woken_by_the_writer, setup, teardown),
      cmocka_unit_test_setup_teardown(a_reader_follows_the_writer_through_a_retention_compaction, setup, teardown),
      cmocka_unit_test_setup_teardown(a_reader_notices_its_segment_replaced_while_no_writer_lived, setup, teardown),
      cmocka_unit_test_setup_teardown(four_followers_see_every_event_once_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(tail_f_follows_a_writer_through_its_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(snapshot_of_a_store_another_process_writes, setup, teardown),
      cmocka_unit_test_setup_teardown(a_second_writer_is_refused_until_the_first_dies, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
