/*
 * bench.c - batpak-bench, the benchmark driver.
 *
 *   batpak-bench [--quick] [--json] [--runs N] [--events N] [--dir DIR] [--only a,b,...]
 *
 * Every workload runs a warm-up, then several measured runs, and reports the
 * median with the minimum and maximum. Where a baseline exists, the same work
 * is done in the same run by the baseline (a SQLite event table in WAL mode
 * with indexes on entity and scope, at the same durability setting, or a
 * bare write+fsync loop), and the ratio batpak / baseline is reported so that
 * a reader on any machine sees how the two compare there (for rates, above 1
 * means batpak is faster; for times, below 1 means batpak is faster).
 */
#include <batpak.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_RUNS 32

static struct {
  bool quick, json;
  int runs;
  uint64_t events;        /* events in the main data set */
  uint64_t durable_events;
  uint64_t compact_events;  /* events in the compaction data set */
  char dir[3000];
  const char *only;
} opt;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "batpak-bench: %s: %s (%s)\n", what, bp_status_name(bp_last_error()->code),
          bp_last_error()->message);
  exit(1);
}

static void check(bp_status st, const char *what) {
  if (st != BP_OK) die(what);
}

static void rm_rf(const char *path) {
  char cmd[3200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system(cmd) != 0) fprintf(stderr, "batpak-bench: could not remove %s\n", path);
}

static void path_in(char *buf, size_t size, const char *name) { snprintf(buf, size, "%s/%s", opt.dir, name); }

/* {"i": n} as MessagePack. */
static size_t payload_i(uint8_t *out, uint64_t n) {
  out[0] = 0x81;
  out[1] = 0xa1;
  out[2] = 'i';
  if (n < 128) { out[3] = (uint8_t)n; return 4; }
  if (n < 256) { out[3] = 0xcc; out[4] = (uint8_t)n; return 5; }
  if (n < 65536) { out[3] = 0xcd; out[4] = (uint8_t)(n >> 8); out[5] = (uint8_t)n; return 6; }
  out[3] = 0xce;
  for (int i = 0; i < 4; i++) out[4 + i] = (uint8_t)(n >> (24 - 8 * i));
  return 8;
}

static const char *ENTITIES[4] = {"entity:0", "entity:1", "entity:2", "entity:3"};

/* ----------------------------------------------------------------- results */

typedef struct result {
  const char *workload, *unit, *params;
  bool higher_better;
  double v[MAX_RUNS];
  int n;
  const char *baseline;
  double b[MAX_RUNS];
  int bn;
  double rss_bytes_per_event;
} result;

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  double s[MAX_RUNS];
  memcpy(s, v, sizeof(double) * (size_t)n);
  qsort(s, (size_t)n, sizeof(double), cmp_d);
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static double minv(const double *v, int n) {
  double m = v[0];
  for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}

static double maxv(const double *v, int n) {
  double m = v[0];
  for (int i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
  return m;
}

static void report(result *r) {
  double med = median(r->v, r->n);
  double bmed = r->bn ? median(r->b, r->bn) : 0;
  double ratio = r->bn && bmed > 0 ? med / bmed : 0;
  if (opt.json) {
    printf("{\"workload\": \"%s\", \"unit\": \"%s\", \"median\": %.6g, \"min\": %.6g, \"max\": %.6g, \"runs\": %d",
           r->workload, r->unit, med, minv(r->v, r->n), maxv(r->v, r->n), r->n);
    if (r->bn)
      printf(", \"baseline\": \"%s\", \"baseline_median\": %.6g, \"ratio\": %.4g", r->baseline, bmed, ratio);
    if (r->rss_bytes_per_event > 0) printf(", \"rss_bytes_per_event\": %.1f", r->rss_bytes_per_event);
    printf(", \"params\": \"");
    for (const char *c = r->params; *c; c++) printf(*c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
    printf("\"}\n");
  } else {
    printf("%-22s %12.4g %-9s [%10.4g .. %10.4g]", r->workload, med, r->unit, minv(r->v, r->n), maxv(r->v, r->n));
    if (r->bn) printf("  %-16s %12.4g  ratio %7.3g%s", r->baseline, bmed, ratio, r->higher_better ? "x" : "");
    if (r->rss_bytes_per_event > 0) printf("  (%.0f bytes/event)", r->rss_bytes_per_event);
    printf("\n    %s\n", r->params);
  }
  fflush(stdout);
}

static bool selected(const char *name) {
  if (!opt.only) return true;
  size_t n = strlen(name);
  for (const char *p = opt.only; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return true;
    if (!e) break;
    p = e + 1;
  }
  return false;
}

/* Runs fn once to warm up, then opt.runs times. */
typedef double (*measure_fn)(void *ctx);
static void measure(double *out, int *n, measure_fn fn, void *ctx) {
  fn(ctx);
  for (*n = 0; *n < opt.runs; (*n)++) out[*n] = fn(ctx);
}

/* ----------------------------------------------------------------- batpak */

static bp_store *open_store(const char *name, uint32_t sync_every, uint32_t group, bool fresh, bool checkpoint) {
  char dir[3100];
  path_in(dir, sizeof dir, name);
  if (fresh) rm_rf(dir);
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.sync_every_n_events = sync_every;
  cfg.group_commit_max_batch = group;
  cfg.enable_checkpoint = checkpoint;
  bp_store *s;
  check(bp_open(&cfg, &s), "bp_open");
  return s;
}

typedef struct append_ctx {
  uint64_t events;
  int threads;
  size_t payload_size;    /* 0: {"i": n} */
  uint32_t sync_every;
  uint32_t group;
  bool keys;
  size_t batch;
} append_ctx;

typedef struct thread_job {
  bp_store *s;
  const append_ctx *c;
  int t;
} thread_job;

static void *append_thread(void *p) {
  thread_job *j = p;
  const append_ctx *c = j->c;
  uint64_t per = c->events / (uint64_t)c->threads;
  uint8_t small[16];
  uint8_t *big = c->payload_size ? malloc(c->payload_size) : NULL;
  if (big) for (size_t i = 0; i < c->payload_size; i++) big[i] = (uint8_t)(i * 31 + 7);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  bp_event_in *batch = c->batch ? calloc(c->batch, sizeof *batch) : NULL;
  uint8_t (*bp)[16] = c->batch ? malloc(c->batch * 16) : NULL;
  for (uint64_t i = 0; i < per;) {
    uint64_t n = (uint64_t)j->t * per + i;
    if (c->batch) {
      size_t k = 0;
      for (; k < c->batch && i < per; k++, i++, n++) {
        batch[k].coord = (bp_coord){ENTITIES[n % 4], "scope:bench"};
        batch[k].kind = 0x1001;
        batch[k].len = payload_i(bp[k], n);
        batch[k].payload = bp[k];
      }
      check(bp_append_batch(j->s, batch, k, NULL), "bp_append_batch");
      continue;
    }
    bp_coord coord = {ENTITIES[n % 4], "scope:bench"};
    const void *payload = big ? (const void *)big : small;
    size_t len = big ? c->payload_size : payload_i(small, n);
    if (c->keys) o.idempotency_key = bp_id_v7();
    bp_append_receipt r;
    check(bp_append_with(j->s, &coord, 0x1001, payload, len, &o, &r), "bp_append");
    i++;
  }
  free(big);
  free(batch);
  free(bp);
  return NULL;
}

static double batpak_append(void *p) {
  append_ctx *c = p;
  bp_store *s = open_store("append", c->sync_every, c->group, true, true);
  pthread_t th[64];
  thread_job jobs[64];
  double t0 = now_s();
  for (int t = 0; t < c->threads; t++) {
    jobs[t] = (thread_job){s, c, t};
    pthread_create(&th[t], NULL, append_thread, &jobs[t]);
  }
  for (int t = 0; t < c->threads; t++) pthread_join(th[t], NULL);
  double el = now_s() - t0;
  check(bp_close(s), "bp_close");
  return (double)(c->events / (uint64_t)c->threads * (uint64_t)c->threads) / el;
}

/* ----------------------------------------------------------------- SQLite */

static void sq(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "batpak-bench: sqlite: %s: %s\n", sql, err);
    exit(1);
  }
}

static sqlite3 *sqlite_open(const char *name, bool fresh, const char *sync) {
  char path[3100];
  path_in(path, sizeof path, name);
  if (fresh) {
    unlink(path);
    char aux[3200];
    snprintf(aux, sizeof aux, "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", path);
    unlink(aux);
  }
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK) { fprintf(stderr, "sqlite open failed\n"); exit(1); }
  sqlite3_busy_timeout(db, 60000);
  sq(db, "PRAGMA journal_mode=WAL");
  char pragma[64];
  snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync);
  sq(db, pragma);
  if (fresh)
    sq(db, "CREATE TABLE IF NOT EXISTS events(seq INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE, "
           "correlation_id BLOB, causation_id BLOB, entity TEXT NOT NULL, scope TEXT NOT NULL, "
           "kind INTEGER NOT NULL, clock INTEGER NOT NULL, wall_ms INTEGER NOT NULL, prev_hash BLOB, "
           "event_hash BLOB, payload BLOB);"
           "CREATE INDEX IF NOT EXISTS events_entity ON events(entity, clock);"
           "CREATE INDEX IF NOT EXISTS events_scope ON events(scope);");
  return db;
}

typedef struct sqlite_job {
  const append_ctx *c;
  int t;
  const char *sync;
} sqlite_job;

/* One row per event with what batpak stores: ids, coordinate, kind, clock,
 * wall time, both hashes (BLAKE3 computed the same way) and the payload. */
static void *sqlite_thread(void *p) {
  sqlite_job *j = p;
  const append_ctx *c = j->c;
  sqlite3 *db = sqlite_open("baseline.db", false, j->sync);
  sqlite3_stmt *ins;
  sqlite3_prepare_v2(db,
                     "INSERT INTO events(event_id, correlation_id, causation_id, entity, scope, kind, clock, "
                     "wall_ms, prev_hash, event_hash, payload) VALUES(?,?,NULL,?,?,?,?,?,?,?,?)",
                     -1, &ins, NULL);
  uint64_t per = c->events / (uint64_t)c->threads;
  uint8_t small[16], prev[4][32] = {{0}};
  uint32_t clock[4] = {0};
  uint8_t *big = c->payload_size ? malloc(c->payload_size) : NULL;
  if (big) for (size_t i = 0; i < c->payload_size; i++) big[i] = (uint8_t)(i * 31 + 7);
  for (uint64_t i = 0; i < per; i++) {
    uint64_t n = (uint64_t)j->t * per + i;
    if (c->batch && i % c->batch == 0) sq(db, "BEGIN");
    const void *payload = big ? (const void *)big : small;
    size_t len = big ? c->payload_size : payload_i(small, n);
    uint8_t id[16], hash[32];
    bp_id_to_bytes(bp_id_v7(), id);
    bp_compute_hash(payload, len, hash);
    int e = (int)(n % 4);
    sqlite3_bind_blob(ins, 1, id, 16, SQLITE_STATIC);
    sqlite3_bind_blob(ins, 2, id, 16, SQLITE_STATIC);
    sqlite3_bind_text(ins, 3, ENTITIES[e], -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 4, "scope:bench", -1, SQLITE_STATIC);
    sqlite3_bind_int(ins, 5, 0x1001);
    sqlite3_bind_int(ins, 6, (int)clock[e]++);
    sqlite3_bind_int64(ins, 7, (int64_t)time(NULL) * 1000);
    sqlite3_bind_blob(ins, 8, prev[e], 32, SQLITE_STATIC);
    sqlite3_bind_blob(ins, 9, hash, 32, SQLITE_STATIC);
    sqlite3_bind_blob(ins, 10, payload, (int)len, SQLITE_STATIC);
    if (sqlite3_step(ins) != SQLITE_DONE) { fprintf(stderr, "sqlite insert: %s\n", sqlite3_errmsg(db)); exit(1); }
    sqlite3_reset(ins);
    memcpy(prev[e], hash, 32);
    if (c->batch && (i % c->batch == c->batch - 1 || i + 1 == per)) sq(db, "COMMIT");
  }
  free(big);
  sqlite3_finalize(ins);
  sqlite3_close(db);
  return NULL;
}

typedef struct sqlite_append_ctx {
  append_ctx *c;
  const char *sync;
} sqlite_append_ctx;

static double sqlite_append(void *p) {
  sqlite_append_ctx *sc = p;
  sqlite3 *db = sqlite_open("baseline.db", true, sc->sync);
  sqlite3_close(db);
  pthread_t th[64];
  sqlite_job jobs[64];
  double t0 = now_s();
  for (int t = 0; t < sc->c->threads; t++) {
    jobs[t] = (sqlite_job){sc->c, t, sc->sync};
    pthread_create(&th[t], NULL, sqlite_thread, &jobs[t]);
  }
  for (int t = 0; t < sc->c->threads; t++) pthread_join(th[t], NULL);
  double el = now_s() - t0;
  return (double)(sc->c->events / (uint64_t)sc->c->threads * (uint64_t)sc->c->threads) / el;
}

/* A bare loop of write + fsync of frame-sized records: the floor for durable appends. */
static double write_fsync_loop(void *p) {
  append_ctx *c = p;
  char path[3100];
  path_in(path, sizeof path, "bare.log");
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) { perror("open"); exit(1); }
  uint8_t rec[470];
  memset(rec, 0x5a, sizeof rec);
  double t0 = now_s();
  for (uint64_t i = 0; i < c->events; i++) {
    if (write(fd, rec, sizeof rec) != (ssize_t)sizeof rec || fsync(fd) != 0) { perror("write"); exit(1); }
  }
  double el = now_s() - t0;
  close(fd);
  unlink(path);
  return (double)c->events / el;
}

/* ----------------------------------------------------------- read workloads */

static void build_dataset(void) {
  /* The main data set: opt.events events of {"i": n} over 4 entities. */
  append_ctx c = {opt.events, 1, 0, 1000, 1, false, 0};
  bp_store *s = open_store("dataset", 1000, 1, true, true);
  thread_job j = {s, &c, 0};
  append_thread(&j);
  check(bp_close(s), "bp_close");
  sqlite_append_ctx sc = {&c, "NORMAL"};
  sqlite_append(&sc);
}

typedef struct reopen_ctx {
  const char *name;
  bool checkpoint;
} reopen_ctx;

static double batpak_reopen(void *p) {
  reopen_ctx *r = p;
  char dir[3100];
  path_in(dir, sizeof dir, r->name);
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.enable_checkpoint = r->checkpoint;
  double t0 = now_s();
  bp_store *s;
  check(bp_open_readonly(&cfg, &s), "bp_open_readonly");
  double el = now_s() - t0;
  bp_store_stats st;
  bp_stats(s, &st);
  if (st.event_count != opt.events) { fprintf(stderr, "reopen found %" PRIu64 " events\n", st.event_count); exit(1); }
  bp_close(s);
  return el * 1000;
}

static double sqlite_reopen(void *p) {
  (void)p;
  double t0 = now_s();
  sqlite3 *db = sqlite_open("baseline.db", false, "NORMAL");
  sqlite3_stmt *q;
  sqlite3_prepare_v2(db, "SELECT count(*) FROM events", -1, &q, NULL);
  sqlite3_step(q);
  sqlite3_finalize(q);
  double el = now_s() - t0;
  sqlite3_close(db);
  return el * 1000;
}

/* Copies the data set without SIDX footers or checkpoint: the frame-scan path. */
static void make_unsealed_copy(void) {
  char src[3100], dst[3100], cmd[9400];
  path_in(src, sizeof src, "dataset");
  path_in(dst, sizeof dst, "unsealed");
  rm_rf(dst);
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && rm -f '%s/index.ckpt'", src, dst, dst);
  if (system(cmd) != 0) { fprintf(stderr, "copy failed\n"); exit(1); }
  for (int id = 1; id < 100000; id++) {
    char seg[3200];
    snprintf(seg, sizeof seg, "%s/%06d.fbat", dst, id);
    int fd = open(seg, O_RDWR);
    if (fd < 0) break;
    off_t size = lseek(fd, 0, SEEK_END);
    uint8_t t[16];
    if (size > 16 && pread(fd, t, 16, size - 16) == 16 && memcmp(t + 12, "SIDX", 4) == 0) {
      uint64_t st_off = 0;
      for (int i = 7; i >= 0; i--) st_off = st_off << 8 | t[i];
      if (ftruncate(fd, (off_t)st_off) != 0) perror("ftruncate");
    }
    close(fd);
  }
}

typedef struct read_ctx {
  bp_store *s;
  sqlite3 *db;
  bp_id *ids;
  uint64_t nids;
  int which;
} read_ctx;

/* Every event id of c->s, in log order, for the random reads. */
static void load_ids(read_ctx *c) {
  bp_region all = bp_region_all();
  bp_entries everything;
  check(bp_query(c->s, &all, &everything), "bp_query");
  c->nids = everything.len;
  c->ids = malloc(sizeof *c->ids * c->nids);
  if (!c->ids) { fprintf(stderr, "out of memory for %" PRIu64 " ids\n", c->nids); exit(1); }
  for (size_t i = 0; i < everything.len; i++) c->ids[i] = everything.items[i].event_id;
  bp_entries_free(&everything);
}

static double batpak_get_random(void *p) {
  read_ctx *c = p;
  uint64_t n = opt.quick ? 20000 : 100000;
  uint64_t x = 88172645463325252ull;
  double t0 = now_s();
  for (uint64_t i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    bp_event *ev;
    check(bp_get(c->s, c->ids[x % c->nids], &ev), "bp_get");
    bp_event_free(ev);
  }
  return (now_s() - t0) / (double)n * 1e6;
}

static double sqlite_get_random(void *p) {
  read_ctx *c = p;
  uint64_t n = opt.quick ? 20000 : 100000;
  uint64_t x = 88172645463325252ull;
  sqlite3_stmt *q;
  sqlite3_prepare_v2(c->db, "SELECT * FROM events WHERE event_id = ?", -1, &q, NULL);
  /* Ids of the baseline table, read once. */
  static uint8_t (*ids)[16];
  static uint64_t nids;
  if (!ids) {
    sqlite3_stmt *all;
    ids = malloc(16 * opt.events);
    sqlite3_prepare_v2(c->db, "SELECT event_id FROM events", -1, &all, NULL);
    while (sqlite3_step(all) == SQLITE_ROW && nids < opt.events) memcpy(ids[nids++], sqlite3_column_blob(all, 0), 16);
    sqlite3_finalize(all);
  }
  double t0 = now_s();
  for (uint64_t i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    sqlite3_bind_blob(q, 1, ids[x % nids], 16, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_ROW) { fprintf(stderr, "sqlite get failed\n"); exit(1); }
    (void)sqlite3_column_blob(q, 11);
    sqlite3_reset(q);
  }
  sqlite3_finalize(q);
  return (now_s() - t0) / (double)n * 1e6;
}

enum { Q_STREAM, Q_SCOPE, Q_KIND, Q_CATEGORY };

static double batpak_query(void *p) {
  read_ctx *c = p;
  bp_entries r;
  double t0 = now_s();
  bp_region reg;
  switch (c->which) {
    case Q_STREAM: check(bp_stream(c->s, "entity:1", &r), "bp_stream"); break;
    case Q_SCOPE: check(bp_by_scope(c->s, "scope:bench", &r), "bp_by_scope"); break;
    case Q_KIND: check(bp_by_fact(c->s, 0x1001, &r), "bp_by_fact"); break;
    default:
      reg = bp_region_with_category(bp_region_all(), 0x1);
      check(bp_query(c->s, &reg, &r), "bp_query");
      break;
  }
  double el = now_s() - t0;
  uint64_t want = c->which == Q_STREAM ? opt.events / 4 : opt.events;
  if (r.len != want) { fprintf(stderr, "query returned %zu, expected %" PRIu64 "\n", r.len, want); exit(1); }
  bp_entries_free(&r);
  return el * 1000;
}

static double sqlite_query(void *p) {
  read_ctx *c = p;
  static const char *sql[] = {
      "SELECT * FROM events WHERE entity = 'entity:1' ORDER BY clock",
      "SELECT * FROM events WHERE scope = 'scope:bench' ORDER BY seq",
      "SELECT * FROM events WHERE kind = 4097 ORDER BY seq",
      "SELECT * FROM events WHERE (kind >> 12) = 1 ORDER BY seq"};
  sqlite3_stmt *q;
  double t0 = now_s();
  sqlite3_prepare_v2(c->db, sql[c->which], -1, &q, NULL);
  uint64_t rows = 0;
  while (sqlite3_step(q) == SQLITE_ROW) {
    (void)sqlite3_column_blob(q, 1);
    (void)sqlite3_column_text(q, 4);
    rows++;
  }
  sqlite3_finalize(q);
  return (now_s() - t0) * 1000;
}

static double batpak_drain(void *p) {
  read_ctx *c = p;
  bp_region all = bp_region_all();
  double t0 = now_s();
  bp_cursor *cur = bp_cursor_open(c->s, &all);
  uint64_t n = 0;
  for (;;) {
    bp_entries b;
    check(bp_cursor_poll_batch(cur, 1000, &b), "bp_cursor_poll_batch");
    if (b.len == 0) break;
    n += b.len;
    bp_entries_free(&b);
  }
  bp_cursor_close(cur);
  double el = now_s() - t0;
  if (n != opt.events) { fprintf(stderr, "cursor drained %" PRIu64 "\n", n); exit(1); }
  return el * 1000;
}

static double sqlite_drain(void *p) {
  read_ctx *c = p;
  sqlite3_stmt *q;
  double t0 = now_s();
  sqlite3_prepare_v2(c->db, "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT 1000", -1, &q, NULL);
  int64_t last = 0;
  uint64_t n = 0;
  for (;;) {
    sqlite3_bind_int64(q, 1, last);
    uint64_t page = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
      last = sqlite3_column_int64(q, 0);
      page++;
    }
    sqlite3_reset(q);
    n += page;
    if (page == 0) break;
  }
  sqlite3_finalize(q);
  return (now_s() - t0) * 1000;
}

/* The newest event of entity:1 (a quarter of the data set), then 10k links back. */
static double batpak_walk(void *p) {
  read_ctx *c = p;
  bp_entries st;
  check(bp_stream(c->s, "entity:1", &st), "bp_stream");
  bp_id last = st.items[st.len - 1].event_id;
  size_t want = st.len < 10000 ? st.len : 10000;
  bp_entries_free(&st);
  double t0 = now_s();
  bp_events ev;
  check(bp_walk_ancestors(c->s, last, 10000, &ev), "bp_walk_ancestors");
  double el = now_s() - t0;
  if (ev.len != want) { fprintf(stderr, "walk returned %zu\n", ev.len); exit(1); }
  bp_events_free(&ev);
  return el * 1000;
}

/* The same walk in SQL: the entity's rows by clock, newest first, 10k of them. */
static double sqlite_walk(void *p) {
  read_ctx *c = p;
  sqlite3_stmt *q;
  double t0 = now_s();
  sqlite3_prepare_v2(c->db, "SELECT * FROM events WHERE entity = 'entity:1' ORDER BY clock DESC LIMIT 10000", -1, &q,
                     NULL);
  while (sqlite3_step(q) == SQLITE_ROW) (void)sqlite3_column_blob(q, 11);
  sqlite3_finalize(q);
  return (now_s() - t0) * 1000;
}

/* ------------------------------------------------------------- live work */

typedef struct fan_ctx {
  int subs;
  bool drain;
} fan_ctx;

typedef struct drainer {
  bp_subscription **subs;
  int n;
  _Atomic bool stop;
} drainer;

/* A consumer of many subscriptions: drains each, and when a pass found
 * nothing, waits on the first for up to a millisecond instead of spinning. */
static void *drain_subs(void *p) {
  drainer *d = p;
  bp_notification note;
  while (!atomic_load(&d->stop)) {
    bool any = false;
    for (int i = 0; i < d->n; i++)
      while (bp_sub_recv(d->subs[i], &note, 0) == BP_OK) any = true;
    if (!any && bp_sub_recv(d->subs[0], &note, 1) == BP_OK) continue;
  }
  return NULL;
}

/* Append rate (1 thread, sync every 1000) with n subscribers matching every
 * event, drained by one thread. */
static double fanout_append(void *p) {
  fan_ctx *f = p;
  bp_store *s = open_store("fanout", 1000, 1, true, true);
  bp_subscription *subs[64];
  bp_region all = bp_region_all();
  for (int i = 0; i < f->subs; i++) subs[i] = bp_subscribe(s, &all);
  drainer d = {subs, f->subs, false};
  pthread_t t;
  if (f->subs) pthread_create(&t, NULL, drain_subs, &d);
  uint64_t n = opt.events / 2;
  uint8_t pl[16];
  double t0 = now_s();
  for (uint64_t i = 0; i < n; i++) {
    bp_coord c = {ENTITIES[i % 4], "scope:bench"};
    bp_append_receipt r;
    check(bp_append(s, &c, 0x1001, pl, payload_i(pl, i), &r), "bp_append");
  }
  double el = now_s() - t0;
  if (f->subs) {
    atomic_store(&d.stop, true);
    pthread_join(t, NULL);
  }
  for (int i = 0; i < f->subs; i++) bp_sub_close(subs[i]);
  check(bp_close(s), "bp_close");
  return (double)n / el;
}

typedef struct lat_ctx {
  bp_subscription *sub;
  _Atomic int got;
} lat_ctx;

static void *lat_receiver(void *p) {
  lat_ctx *l = p;
  bp_notification note;
  while (bp_sub_recv(l->sub, &note, -1) == BP_OK) atomic_fetch_add(&l->got, 1);
  return NULL;
}

/* Median time from the start of an append to its notification's receipt. */
static double notify_latency(void *p) {
  (void)p;
  bp_store *s = open_store("latency", 1000, 1, true, true);
  bp_region all = bp_region_all();
  lat_ctx l = {bp_subscribe(s, &all), 0};
  pthread_t t;
  pthread_create(&t, NULL, lat_receiver, &l);
  int n = opt.quick ? 200 : 2000;
  double *lat = malloc(sizeof *lat * (size_t)n);
  uint8_t pl[16];
  for (int i = 0; i < n; i++) {
    bp_coord c = {"entity:0", "scope:bench"};
    bp_append_receipt r;
    double t0 = now_s();
    check(bp_append(s, &c, 0x1001, pl, payload_i(pl, (uint64_t)i), &r), "bp_append");
    while (atomic_load(&l.got) <= i) {
    }
    lat[i] = (now_s() - t0) * 1e6;
  }
  check(bp_close(s), "bp_close");
  pthread_join(t, NULL);
  bp_sub_close(l.sub);
  qsort(lat, (size_t)n, sizeof *lat, cmp_d);
  double med = lat[n / 2];
  free(lat);
  return med;
}

typedef struct proj_bench {
  bp_store *s;
  int mode;            /* 0 replay (no cache), 1 cache hit, 2 incremental */
  uint64_t applied;
} proj_bench;

static bp_status pb_init(void *state, void *ctx) {
  (void)ctx;
  *(int64_t *)state = 0;
  return BP_OK;
}
static bp_status pb_apply(void *state, const bp_event *ev, void *ctx) {
  ((proj_bench *)ctx)->applied++;
  *(int64_t *)state += (int64_t)ev->payload_len;
  return BP_OK;
}
static bp_status pb_encode(const void *state, void **bytes, size_t *len, void *ctx) {
  (void)ctx;
  *bytes = malloc(8);
  memcpy(*bytes, state, 8);
  *len = 8;
  return BP_OK;
}
static bp_status pb_decode(void *state, const void *bytes, size_t len, void *ctx) {
  (void)ctx;
  if (len != 8) return BP_ESERIAL;
  memcpy(state, bytes, 8);
  return BP_OK;
}
static const bp_projection PB = {BP_PROJECTION_VERSION, "bench", 1, NULL, 0, true, pb_init, pb_apply, pb_encode,
                                 pb_decode, NULL};

static double project_25k(void *p) {
  proj_bench *b = p;
  bp_freshness consistent = {BP_FRESH_CONSISTENT, 0};
  int64_t state;
  if (b->mode == 2) {
    /* One new event since the cached state. */
    bp_coord c = {"entity:1", "scope:bench"};
    bp_append_receipt r;
    uint8_t pl[16];
    check(bp_append(b->s, &c, 0x1001, pl, payload_i(pl, 1), &r), "bp_append");
  }
  double t0 = now_s();
  check(bp_project(b->s, "entity:1", &PB, b, consistent, &state), "bp_project");
  return (now_s() - t0) * 1000;
}

/* Peak resident memory of a fresh process (this program, executed again with
 * --rss-child) that only opens the data set: a forked child would count the
 * parent's pages too. */
static double rss_reopen(const char *argv0, const char *name, double *peak_mb) {
  int fds[2];
  if (pipe(fds) != 0) return 0;
  char dir[3100];
  path_in(dir, sizeof dir, name);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    execl("/proc/self/exe", argv0, "--rss-child", dir, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[64] = {0};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  waitpid(pid, NULL, 0);
  close(fds[0]);
  long hwm = n > 0 ? atol(buf) : 0;
  *peak_mb = (double)hwm / 1024.0;
  return (double)hwm * 1024.0 / (double)opt.events;
}

static int rss_child(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  check(bp_open_readonly(&cfg, &s), "bp_open_readonly");
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long hwm = 0;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) hwm = atol(line + 6);
  if (f) fclose(f);
  printf("%ld\n", hwm);
  bp_close(s);
  return 0;
}

/* ----------------------------------------------------------------- main */

/* --------------------------------------------------------------- compaction */

#define COMPACT_SEGMENT (4u << 20)

static void copy_tree(const char *from, const char *to) {
  char src[3100], dst[3100], cmd[6400];
  path_in(src, sizeof src, from);
  path_in(dst, sizeof dst, to);
  rm_rf(dst);
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", src, dst);
  if (system(cmd) != 0) { fprintf(stderr, "batpak-bench: copy %s failed\n", src); exit(1); }
}

/* The compaction data set: events over 4 entities in 4 MiB segments, and the
 * same rows in SQLite (one transaction). */
static void build_compact_set(uint64_t events) {
  char dir[3100];
  path_in(dir, sizeof dir, "compact_src");
  rm_rf(dir);
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.sync_every_n_events = 1000;
  cfg.segment_max_bytes = COMPACT_SEGMENT;
  bp_store *s;
  check(bp_open(&cfg, &s), "bp_open");
  append_ctx c = {events, 1, 0, 1000, 1, false, 0};
  thread_job j = {s, &c, 0};
  append_thread(&j);
  check(bp_close(s), "bp_close");
  append_ctx sc_c = {events, 1, 0, 1000, 1, false, events};
  sqlite_append_ctx sc = {&sc_c, "NORMAL"};
  sqlite_append(&sc);
  sqlite3 *db = sqlite_open("baseline.db", false, "NORMAL");
  sq(db, "PRAGMA wal_checkpoint(TRUNCATE)");
  sqlite3_close(db);
}

static bool drop_entity3(const bp_event *ev, void *ctx) {
  (void)ctx;
  return strcmp(ev->entity, "entity:3") != 0;
}

static double batpak_compact(void *p) {
  int strategy = *(int *)p;
  copy_tree("compact_src", "compact_run");
  char dir[3100];
  path_in(dir, sizeof dir, "compact_run");
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.segment_max_bytes = COMPACT_SEGMENT;
  bp_store *s;
  check(bp_open(&cfg, &s), "bp_open");
  bp_compaction_config cc = {strategy, drop_entity3, NULL, 2};
  bp_compaction_result res;
  double t0 = now_s();
  check(bp_compact(s, &cc, &res), "bp_compact");
  double el = now_s() - t0;
  check(bp_close(s), "bp_close");
  return el * 1000;
}

static double sqlite_compact(void *p) {
  int strategy = *(int *)p;
  char from[3100], to[3100], cmd[6400];
  path_in(from, sizeof from, "baseline.db");
  path_in(to, sizeof to, "compact_run.db");
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  if (system(cmd) != 0) { fprintf(stderr, "batpak-bench: copy %s failed\n", from); exit(1); }
  sqlite3 *db = sqlite_open("compact_run.db", false, "NORMAL");
  double t0 = now_s();
  if (strategy == BP_COMPACT_RETENTION) sq(db, "DELETE FROM events WHERE entity = 'entity:3'");
  if (strategy == BP_COMPACT_TOMBSTONE) sq(db, "UPDATE events SET kind = 4094 WHERE entity = 'entity:3'");
  sq(db, "VACUUM");
  double el = now_s() - t0;
  sqlite3_close(db);
  return el * 1000;
}

int run_scale(const char *exe, const char *root, const char *list, int runs, bool json);
int scale_child(int argc, char **argv);
int run_follow(const char *exe, const char *root, uint64_t events, int runs, bool json);
int follow_child(int argc, char **argv);
#if BATPAK_HAVE_NATS
int run_replication(const char *urls, const char *root, uint64_t events, int runs, int replicas, bool json);
#endif

static void usage(void) {
  puts("usage: batpak-bench [--quick] [--json] [--runs N] [--events N] [--dir DIR] [--only a,b,...]\n"
       "       batpak-bench --scale N[,N...] [--json] [--runs N] [--dir DIR]\n"
       "       batpak-bench --follow [--json] [--runs N] [--events N] [--dir DIR]\n"
       "       batpak-bench --replication URLS [--replicas N] [--json] [--runs N] [--events N] [--dir DIR]\n"
       "  --quick    small data set and 3 runs (well under a minute)\n"
       "  --json     one JSON object per workload and line\n"
       "  --runs N   measured runs per figure (after one warm-up)\n"
       "  --events N events in the main data set (default 100000)\n"
       "  --compact-events N  events compacted (default 1000000)\n"
       "  --dir DIR  where to put the stores (default ./bench-data, removed afterwards)\n"
       "  --only L   run only the listed workloads\n"
       "  --scale L  the scale set at each listed number of events (bench/scale.c): load, open + first get\n"
       "             warm and cold, heap after open, bytes written by an open that appends 1 or 1000 events,\n"
       "             and reads, with SQLite beside it");
}

int main(int argc, char **argv) {
  opt.runs = 5;
  opt.events = 100000;
  opt.durable_events = 2000;
  opt.compact_events = 1000000;
  snprintf(opt.dir, sizeof opt.dir, "./bench-data");
  if (argc == 3 && !strcmp(argv[1], "--rss-child")) return rss_child(argv[2]);
  if (argc >= 2 && !strcmp(argv[1], "--scale-child")) return scale_child(argc, argv);
  if (argc >= 2 && !strcmp(argv[1], "--follow-child")) return follow_child(argc, argv);
  const char *scale = NULL, *replication = NULL;
  int replicas = 3;
  bool follow = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) { opt.quick = true; opt.runs = 3; opt.events = 20000; opt.durable_events = 300;
      opt.compact_events = 20000; }
    else if (!strcmp(argv[i], "--json")) opt.json = true;
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) opt.runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--events") && i + 1 < argc) opt.events = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--compact-events") && i + 1 < argc) opt.compact_events = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc) snprintf(opt.dir, sizeof opt.dir, "%s", argv[++i]);
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) opt.only = argv[++i];
    else if (!strcmp(argv[i], "--scale") && i + 1 < argc) scale = argv[++i];
    else if (!strcmp(argv[i], "--follow")) follow = true;
    else if (!strcmp(argv[i], "--replication") && i + 1 < argc) replication = argv[++i];
    else if (!strcmp(argv[i], "--replicas") && i + 1 < argc) replicas = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--") ) continue;
    else { usage(); return strcmp(argv[i], "--help") && strcmp(argv[i], "-h") ? 2 : 0; }
  }
  if (opt.runs < 1) opt.runs = 1;
  if (opt.runs > MAX_RUNS) opt.runs = MAX_RUNS;
  if (opt.events < 1000) opt.events = 1000;
  opt.events -= opt.events % 8;
  mkdir(opt.dir, 0700);
  if (replication) {
#if BATPAK_HAVE_NATS
    int rc = run_replication(replication, opt.dir, opt.events, opt.runs, replicas, opt.json);
    rm_rf(opt.dir);
    return rc;
#else
    fputs("batpak-bench: built without libbatpak-nats (nats.c)\n", stderr);
    return 2;
#endif
  }
  if (scale || follow) {
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) die("readlink /proc/self/exe");
    exe[len] = '\0';
    int rc = scale ? run_scale(exe, opt.dir, scale, opt.runs, opt.json)
                   : run_follow(exe, opt.dir, opt.events, opt.runs, opt.json);
    rm_rf(opt.dir);
    return rc;
  }
  if (!opt.json) {
    printf("batpak-bench %s: %" PRIu64 " events, %d runs per figure after a warm-up, data in %s\n", bp_version(),
           opt.events, opt.runs, opt.dir);
    printf("%-22s %12s %-9s [%10s .. %10s]  %-16s %12s\n", "workload", "median", "unit", "min", "max", "baseline",
           "median");
  }

  char params[256];
  result r;
  /* -- appends -- */
  struct { const char *name; int threads; size_t size; size_t batch; } appends[] = {
      {"append_1t", 1, 0, 0}, {"append_2t", 2, 0, 0}, {"append_4t", 4, 0, 0}, {"append_1kib_1t", 1, 1024, 0}, {"batch_append_100", 1, 0, 100}};
  for (size_t k = 0; k < sizeof appends / sizeof appends[0]; k++) {
    if (!selected(appends[k].name)) continue;
    append_ctx c = {opt.events, appends[k].threads, appends[k].size, 1000, 1, false, appends[k].batch};
    if (appends[k].size) c.events = opt.events / 4;
    snprintf(params, sizeof params, "%" PRIu64 " events, %d thread(s), payload %s, sync every 1000%s%s",
             c.events, c.threads, c.payload_size ? "1 KiB" : "{\"i\": n}", c.batch ? ", batches of 100" : "",
             ", SQLite WAL synchronous=NORMAL, one row per event");
    memset(&r, 0, sizeof r);
    r = (result){appends[k].name, "events/s", params, true, {0}, 0, "sqlite", {0}, 0, 0};
    sqlite_append_ctx sc = {&c, "NORMAL"};
    measure(r.b, &r.bn, sqlite_append, &sc);
    measure(r.v, &r.n, batpak_append, &c);
    report(&r);
  }
  /* -- durable appends -- */
  if (selected("durable_1t")) {
    append_ctx c = {opt.durable_events, 1, 0, 1, 1, false, 0};
    snprintf(params, sizeof params, "%" PRIu64 " events, sync every event (fsync), baseline a bare write(470 B)+fsync loop",
             c.events);
    r = (result){"durable_1t", "events/s", params, true, {0}, 0, "write_fsync_loop", {0}, 0, 0};
    measure(r.b, &r.bn, write_fsync_loop, &c);
    measure(r.v, &r.n, batpak_append, &c);
    report(&r);
    if (selected("durable_1t_sqlite")) {
      sqlite_append_ctx sc = {&c, "FULL"};
      r = (result){"durable_1t_sqlite", "events/s", "the same, SQLite WAL synchronous=FULL", true, {0}, 0, "", {0}, 0, 0};
      measure(r.v, &r.n, sqlite_append, &sc);
      report(&r);
    }
  }
  if (selected("durable_8t_group")) {
    append_ctx one = {opt.durable_events, 1, 0, 1, 1, false, 0};
    append_ctx c = {opt.durable_events * 4, 8, 0, 1, 0, true, 0};
    snprintf(params, sizeof params,
             "%" PRIu64 " events, 8 threads, sync every event, group commit (max batch 0 = all, idempotency keys); "
             "baseline batpak durable_1t", c.events);
    r = (result){"durable_8t_group", "events/s", params, true, {0}, 0, "batpak_durable_1t", {0}, 0, 0};
    measure(r.b, &r.bn, batpak_append, &one);
    measure(r.v, &r.n, batpak_append, &c);
    report(&r);
  }

  /* -- live: subscriptions and projections -- */
  if (selected("notify_latency")) {
    r = (result){"notify_latency", "us", "median time from the start of bp_append to bp_sub_recv returning its "
                 "notification on another thread (spinning waiter)", false, {0}, 0, NULL, {0}, 0, 0};
    measure(r.v, &r.n, notify_latency, NULL);
    report(&r);
  }
  int fans[3] = {1, 8, 64};
  for (int k = 0; k < 3; k++) {
    char name[32];
    snprintf(name, sizeof name, "fanout_%d", fans[k]);
    if (!selected(name)) continue;
    fan_ctx none = {0, false}, some = {fans[k], true};
    snprintf(params, sizeof params, "%" PRIu64 " appends (1 thread, sync every 1000) with %d subscriber(s) on every "
             "event, drained by one thread; baseline the same with none", opt.events / 2, fans[k]);
    r = (result){strdup(name), "events/s", params, true, {0}, 0, "no_subscribers", {0}, 0, 0};
    measure(r.b, &r.bn, fanout_append, &none);
    measure(r.v, &r.n, fanout_append, &some);
    report(&r);
  }
  if (selected("project_25k")) {
    /* One entity of 25k events, projected with no cache, from a cache hit,
     * and incrementally after one new event. */
    append_ctx c = {100000, 1, 0, 1000, 1, false, 0};
    bp_store *s = open_store("project", 1000, 1, true, true);
    thread_job j = {s, &c, 0};
    append_thread(&j);
    check(bp_close(s), "bp_close");
    const char *modes[3] = {"project_25k_replay", "project_25k_cache_hit", "project_25k_incremental"};
    for (int m = 0; m < 3; m++) {
      char dir[3100], cache_dir[3200];
      path_in(dir, sizeof dir, "project");
      snprintf(cache_dir, sizeof cache_dir, "%s/cache", dir);
      bp_config cfg;
      bp_config_init(&cfg, dir);
      cfg.incremental_projection = m == 2;
      proj_bench b = {NULL, m, 0};
      if (m == 0) check(bp_open(&cfg, &b.s), "bp_open");
      else check(bp_open_with_lmdb_cache(&cfg, &b.s), "bp_open_with_lmdb_cache");
      snprintf(params, sizeof params, "bp_project of one entity with 25000 events (a fold of payload sizes)%s",
               m == 0 ? ", no cache" : m == 1 ? ", LMDB cache hit" : ", LMDB cache, one new event applied");
      r = (result){modes[m], "ms", params, false, {0}, 0, NULL, {0}, 0, 0};
      measure(r.v, &r.n, project_25k, &b);
      report(&r);
      bp_close(b.s);
    }
    /* The replay again on a store that appended the events in this process
     * and was not reopened: they are in its active segment. */
    proj_bench live = {open_store("project_live", 1000, 1, true, false), 0, 0};
    thread_job lj = {live.s, &c, 0};
    append_thread(&lj);
    r = (result){"project_25k_replay_live", "ms",
                 "bp_project of one entity with 25000 events just appended, without reopening (the active "
                 "segment), no cache",
                 false, {0}, 0, NULL, {0}, 0, 0};
    measure(r.v, &r.n, project_25k, &live);
    report(&r);
    check(bp_close(live.s), "bp_close");
  }

  /* -- reads: one data set, read many ways -- */
  const char *reads[] = {"reopen_checkpoint", "reopen_sidx", "reopen_scan", "get_random", "get_random_live", "stream_25k",
                         "scope_query", "kind_query", "category_query", "cursor_drain", "ancestor_walk_10k",
                         "rss_reopen"};
  bool any_read = false;
  for (size_t k = 0; k < sizeof reads / sizeof reads[0]; k++) any_read |= selected(reads[k]);
  if (any_read) {
    build_dataset();
    reopen_ctx rc[3] = {{"dataset", true}, {"dataset", false}, {"unsealed", false}};
    if (selected("reopen_scan")) make_unsealed_copy();
    for (int k = 0; k < 3; k++) {
      if (!selected(reads[k])) continue;
      snprintf(params, sizeof params, "open of %" PRIu64 " events (%s), read-only; baseline SQLite open + count(*)",
               opt.events, k == 0 ? "checkpoint" : k == 1 ? "SIDX footers" : "frame scan");
      r = (result){reads[k], "ms", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_reopen, NULL);
      measure(r.v, &r.n, batpak_reopen, &rc[k]);
      report(&r);
    }
    read_ctx c;
    memset(&c, 0, sizeof c);
    bp_config cfg;
    char dir[3100];
    path_in(dir, sizeof dir, "dataset");
    bp_config_init(&cfg, dir);
    check(bp_open_readonly(&cfg, &c.s), "bp_open_readonly");
    c.db = sqlite_open("baseline.db", false, "NORMAL");
    load_ids(&c);
    if (selected("get_random")) {
      snprintf(params, sizeof params, "bp_get of random ids among %" PRIu64 " (frame read, CRC, decode)", opt.events);
      r = (result){"get_random", "us/op", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_get_random, &c);
      measure(r.v, &r.n, batpak_get_random, &c);
      report(&r);
    }
    if (selected("get_random_live")) {
      /* The same reads from a store that appended its events in this process
       * and was not reopened: they are in its active segment. */
      read_ctx live = c;
      live.s = open_store("live", 1000, 1, true, false);
      append_ctx ac = {opt.events, 1, 0, 1000, 1, false, 0};
      thread_job j = {live.s, &ac, 0};
      append_thread(&j);
      load_ids(&live);
      snprintf(params, sizeof params,
               "bp_get of random ids among %" PRIu64 " just appended, without reopening (the active segment)",
               opt.events);
      r = (result){"get_random_live", "us/op", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_get_random, &c);
      measure(r.v, &r.n, batpak_get_random, &live);
      report(&r);
      free(live.ids);
      check(bp_close(live.s), "bp_close");
    }
    const char *qn[] = {"stream_25k", "scope_query", "kind_query", "category_query"};
    const char *qd[] = {"bp_stream of one entity (1/4 of the events)", "bp_by_scope, every event",
                        "bp_by_fact, every event", "bp_query category 0x1, every event"};
    for (int k = 0; k < 4; k++) {
      if (!selected(qn[k])) continue;
      c.which = k;
      snprintf(params, sizeof params, "%s of %" PRIu64 "; baseline the indexed SELECT", qd[k], opt.events);
      r = (result){qn[k], "ms", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_query, &c);
      measure(r.v, &r.n, batpak_query, &c);
      report(&r);
    }
    if (selected("cursor_drain")) {
      snprintf(params, sizeof params,
               "a cursor over every event drained with poll_batch(1000) from 0 to %" PRIu64 "; baseline SQLite "
               "keyset paging (WHERE seq > ? ORDER BY seq LIMIT 1000)", opt.events);
      r = (result){"cursor_drain", "ms", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_drain, &c);
      measure(r.v, &r.n, batpak_drain, &c);
      report(&r);
    }
    if (selected("ancestor_walk_10k")) {
      snprintf(params, sizeof params, "bp_walk_ancestors of 10000 events of one entity (reads and checks each link)");
      r = (result){"ancestor_walk_10k", "ms", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_walk, &c);
      measure(r.v, &r.n, batpak_walk, &c);
      report(&r);
    }
    free(c.ids);
    bp_close(c.s);
    sqlite3_close(c.db);
    if (selected("rss_reopen")) {
      double peak = 0;
      double per = rss_reopen(argv[0], "dataset", &peak);
      snprintf(params, sizeof params, "peak resident memory of a process that opens %" PRIu64 " events (checkpoint)",
               opt.events);
      r = (result){"rss_reopen", "MB", params, false, {peak}, 1, NULL, {0}, 0, per};
      report(&r);
    }
  }
  /* -- compaction -- */
  const char *compacts[] = {"compact_merge", "compact_retention", "compact_tombstone"};
  const int strategies[] = {BP_COMPACT_MERGE, BP_COMPACT_RETENTION, BP_COMPACT_TOMBSTONE};
  if (selected(compacts[0]) || selected(compacts[1]) || selected(compacts[2])) {
    build_compact_set(opt.compact_events);
    for (int k = 0; k < 3; k++) {
      if (!selected(compacts[k])) continue;
      snprintf(params, sizeof params,
               "bp_compact of %" PRIu64 " events in 4 MiB segments, %s; baseline SQLite %sVACUUM", opt.compact_events,
               k == 0 ? "keeping all" : k == 1 ? "dropping 1 entity of 4" : "tombstoning 1 entity of 4",
               k == 0 ? "" : k == 1 ? "DELETE of those rows + " : "UPDATE of their kind + ");
      r = (result){compacts[k], "ms", params, false, {0}, 0, "sqlite", {0}, 0, 0};
      measure(r.b, &r.bn, sqlite_compact, (void *)&strategies[k]);
      measure(r.v, &r.n, batpak_compact, (void *)&strategies[k]);
      report(&r);
    }
  }
  rm_rf(opt.dir);
  return 0;
}
