/*
 * scale.c - batpak-bench --scale N[,N...]: what opening, closing and reading
 * a store cost as its history grows, with SQLite beside it in the same run.
 *
 * For each N: the load rate (batches of 1000 events over 64 entities; SQLite
 * rows in transactions of 10,000), then, each in a fresh process (the driver
 * executes itself again, so that no memory is inherited):
 *   open_first_get   open read-write + one bp_get of a random event, warm
 *                    page cache and cold (every file's pages dropped with
 *                    posix_fadvise DONTNEED first), and the heap (RssAnon)
 *                    after it
 *   append_1/1000    open, append 1 or 1000 events, close: the time of close
 *                    and the bytes the device took (from /proc/diskstats,
 *                    so the file system's journal is counted too)
 * then, in this process, reads once the store is open: random gets, one
 * entity's stream, a scope query (visited, not collected) and a cursor
 * drained a thousand at a time.
 */
#include <batpak.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>

/* SQLite is measured beside batpak up to this many events (see run_scale). */
#define SQLITE_MAX_N 10000000ull
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SCALE_ENTITIES 64
#define MAX_N 16

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "batpak-bench --scale: %s: %s\n", what, bp_last_error()->message);
  exit(1);
}

static void sq(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "batpak-bench --scale: sqlite: %s: %s\n", sql, err ? err : "?");
    exit(1);
  }
}

static long proc_kb(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t k = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, k) == 0) v = atol(line + k);
  fclose(f);
  return v;
}

/* Sectors written to the device holding path, from /proc/diskstats. */
static uint64_t device_sectors_written(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  unsigned maj = major(st.st_dev), min = minor(st.st_dev);
  FILE *f = fopen("/proc/diskstats", "r");
  if (!f) return 0;
  char line[512];
  uint64_t v = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned a, b;
    char name[64];
    unsigned long long f1, f2, f3, f4, f5, f6, sectors_written;
    if (sscanf(line, "%u %u %63s %llu %llu %llu %llu %llu %llu %llu", &a, &b, name, &f1, &f2, &f3, &f4, &f5, &f6,
               &sectors_written) == 10 &&
        a == maj && b == min)
      v = sectors_written;
  }
  fclose(f);
  return v;
}

static void drop_pages(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      drop_pages(p);
      continue;
    }
    int fd = open(p, O_RDONLY);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
  closedir(d);
}

static const char *entity_name(uint64_t i, char *buf) {
  snprintf(buf, 32, "device:%02u", (unsigned)(i % SCALE_ENTITIES));
  return buf;
}

/* ---------------------------------------------------------------- load */

static double load_batpak(const char *dir, uint64_t n, bp_id *ids) {
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) die("rm");
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  if (bp_open(&cfg, &s)) die("bp_open");
  bp_event_in evs[1000];
  bp_append_receipt outs[1000];
  char names[1000][32];
  uint8_t payloads[1000][16];
  double t0 = now_s();
  for (uint64_t done = 0; done < n;) {
    size_t k = n - done < 1000 ? (size_t)(n - done) : 1000;
    for (size_t i = 0; i < k; i++) {
      uint64_t x = done + i;
      memset(&evs[i], 0, sizeof evs[i]);
      evs[i].coord.entity = entity_name(x, names[i]);
      evs[i].coord.scope = x % 2 ? "scope:odd" : "scope:even";
      evs[i].kind = (bp_kind)(0x1000 + x % 8);
      int len = snprintf((char *)payloads[i], sizeof payloads[i], "%llu", (unsigned long long)x);
      evs[i].payload = payloads[i];
      evs[i].len = (size_t)len;
    }
    if (bp_append_batch(s, evs, k, outs)) die("bp_append_batch");
    for (size_t i = 0; i < k; i++) ids[done + i] = outs[i].event_id;
    done += k;
  }
  if (bp_close(s)) die("bp_close");
  return (double)n / (now_s() - t0);
}

static double load_sqlite(const char *path, uint64_t n) {
  unlink(path);
  char wal[4400];
  snprintf(wal, sizeof wal, "%s-wal", path);
  unlink(wal);
  snprintf(wal, sizeof wal, "%s-shm", path);
  unlink(wal);
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK) die("sqlite3_open");
  sq(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
  sq(db, "CREATE TABLE events(seq INTEGER PRIMARY KEY, id BLOB, entity TEXT, scope TEXT, kind INTEGER, "
         "clock INTEGER, payload BLOB)");
  sq(db, "CREATE INDEX by_id ON events(id); CREATE INDEX by_entity ON events(entity, clock); "
         "CREATE INDEX by_scope ON events(scope)");
  sqlite3_stmt *ins;
  sqlite3_prepare_v2(db, "INSERT INTO events VALUES(?,?,?,?,?,?,?)", -1, &ins, NULL);
  double t0 = now_s();
  sq(db, "BEGIN");
  for (uint64_t x = 0; x < n; x++) {
    char ent[32], pay[24];
    uint8_t id[16];
    for (int i = 0; i < 16; i++) id[i] = (uint8_t)((x * 0x9E3779B97F4A7C15ull) >> (i * 4));
    int len = snprintf(pay, sizeof pay, "%llu", (unsigned long long)x);
    sqlite3_bind_int64(ins, 1, (sqlite3_int64)x);
    sqlite3_bind_blob(ins, 2, id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 3, entity_name(x, ent), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 4, x % 2 ? "scope:odd" : "scope:even", -1, SQLITE_STATIC);
    sqlite3_bind_int(ins, 5, (int)(0x1000 + x % 8));
    sqlite3_bind_int64(ins, 6, (sqlite3_int64)(x / SCALE_ENTITIES));
    sqlite3_bind_blob(ins, 7, pay, len, SQLITE_TRANSIENT);
    sqlite3_step(ins);
    sqlite3_reset(ins);
    if (x % 10000 == 9999) sq(db, "COMMIT; BEGIN");
  }
  sq(db, "COMMIT");
  sqlite3_finalize(ins);
  sqlite3_close(db);
  return (double)n / (now_s() - t0);
}

/* ------------------------------------------------------- fresh processes */

/* The child's side: argv = [exe, "--scale-child", what, dir-or-db, id-hex, k]. */
int scale_child(int argc, char **argv);
int scale_child(int argc, char **argv) {
  if (argc < 6) return 2;
  const char *what = argv[2], *where = argv[3];
  uint64_t k = strtoull(argv[5], NULL, 10);
  double t0 = now_s();
  if (strcmp(what, "open") == 0 || strcmp(what, "append") == 0) {
    bp_config cfg;
    bp_config_init(&cfg, where);
    bp_store *s;
    if (bp_open(&cfg, &s)) die("bp_open");
    bp_id id;
    if (bp_id_from_hex(argv[4], &id) != BP_OK) return 3;
    bp_event *ev;
    if (bp_get(s, id, &ev)) die("bp_get");
    bp_event_free(ev);
    double t1 = now_s();
    long heap = proc_kb("RssAnon:");
    for (uint64_t i = 0; i < k; i++) {
      bp_coord c = {"device:new", "scope:odd"};
      if (bp_append(s, &c, 0x1001, "x", 1, NULL)) die("bp_append");
    }
    double t2 = now_s();
    if (bp_close(s)) die("bp_close");
    double t3 = now_s();
    printf("%.6f %ld %.6f\n", (t1 - t0) * 1e3, heap, (t3 - t2) * 1e3);
    return 0;
  }
  sqlite3 *db;
  if (sqlite3_open(where, &db) != SQLITE_OK) return 4;
  sqlite3_stmt *q;
  sqlite3_prepare_v2(db, "SELECT * FROM events WHERE seq = ?", -1, &q, NULL);
  sqlite3_bind_int64(q, 1, (sqlite3_int64)strtoull(argv[4], NULL, 16));
  if (sqlite3_step(q) != SQLITE_ROW) return 5;
  sqlite3_finalize(q);
  double t1 = now_s();
  long heap = proc_kb("RssAnon:");
  if (k) {
    sq(db, "BEGIN");
    for (uint64_t i = 0; i < k; i++) sq(db, "INSERT INTO events(id, entity, scope, kind, clock, payload) "
                                            "VALUES(x'00', 'device:new', 'scope:odd', 4097, 0, x'78')");
    sq(db, "COMMIT");
  }
  double t2 = now_s();
  sqlite3_close(db);
  double t3 = now_s();
  printf("%.6f %ld %.6f\n", (t1 - t0) * 1e3, heap, (t3 - t2) * 1e3);
  return 0;
}

typedef struct child_out {
  double open_ms, close_ms;
  long heap_kb;
  uint64_t written;
} child_out;

static child_out run_child(const char *exe, const char *what, const char *where, const char *id, uint64_t k,
                           bool cold, const char *dir_for_cold) {
  if (cold) drop_pages(dir_for_cold);
  sync();
  uint64_t before = device_sectors_written(where);
  int p[2];
  if (pipe(p)) die("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    close(p[0]);
    char ks[32];
    snprintf(ks, sizeof ks, "%llu", (unsigned long long)k);
    execl(exe, exe, "--scale-child", what, where, id, ks, (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  char buf[256] = "";
  ssize_t got = read(p[0], buf, sizeof buf - 1);
  close(p[0]);
  int ws;
  waitpid(pid, &ws, 0);
  child_out o = {0, 0, 0, 0};
  if (got <= 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
    fprintf(stderr, "batpak-bench --scale: child %s failed\n", what);
    exit(1);
  }
  buf[got] = '\0';
  sscanf(buf, "%lf %ld %lf", &o.open_ms, &o.heap_kb, &o.close_ms);
  sync();
  o.written = (device_sectors_written(where) - before) * 512;
  return o;
}

/* ---------------------------------------------------------------- reads */

static bool count_visit(const bp_entry *e, void *ctx) {
  (void)e;
  (*(uint64_t *)ctx)++;
  return true;
}

typedef struct reads {
  double get_us, stream_ms, scope_ms, cursor_ms;
} reads;

static reads read_batpak(const char *dir, const bp_id *ids, uint64_t n) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  if (bp_open_readonly(&cfg, &s)) die("bp_open_readonly");
  reads r;
  uint64_t x = 2463534242u;
  const int gets = 100000;
  double t0 = now_s();
  for (int i = 0; i < gets; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    bp_event *ev;
    if (bp_get(s, ids[x % n], &ev)) die("bp_get");
    bp_event_free(ev);
  }
  r.get_us = (now_s() - t0) / gets * 1e6;
  t0 = now_s();
  bp_entries e;
  if (bp_stream(s, "device:07", &e)) die("bp_stream");
  bp_entries_free(&e);
  r.stream_ms = (now_s() - t0) * 1e3;
  t0 = now_s();
  uint64_t seen = 0;
  bp_region reg = bp_region_scope("scope:odd");
  if (bp_query_each(s, &reg, count_visit, &seen)) die("bp_query_each");
  r.scope_ms = (now_s() - t0) * 1e3;
  t0 = now_s();
  bp_region all = bp_region_all();
  bp_cursor *c = bp_cursor_open(s, &all);
  for (;;) {
    bp_entries b;
    bp_status st = bp_cursor_poll_batch(c, 1000, &b);
    if (st == BP_ENOTFOUND) break;
    if (st) die("poll_batch");
    size_t len = b.len;
    bp_entries_free(&b);
    if (len == 0) break;
  }
  bp_cursor_close(c);
  r.cursor_ms = (now_s() - t0) * 1e3;
  bp_close(s);
  return r;
}

static reads read_sqlite(const char *path, uint64_t n) {
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK) die("sqlite3_open");
  reads r;
  sqlite3_stmt *q;
  sqlite3_prepare_v2(db, "SELECT * FROM events WHERE seq = ?", -1, &q, NULL);
  uint64_t x = 2463534242u;
  const int gets = 100000;
  double t0 = now_s();
  for (int i = 0; i < gets; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    sqlite3_bind_int64(q, 1, (sqlite3_int64)(x % n));
    sqlite3_step(q);
    sqlite3_reset(q);
  }
  sqlite3_finalize(q);
  r.get_us = (now_s() - t0) / gets * 1e6;
  const char *sqls[3] = {"SELECT * FROM events WHERE entity = 'device:07' ORDER BY clock",
                         "SELECT * FROM events WHERE scope = 'scope:odd' ORDER BY seq",
                         "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT 1000"};
  double *outs[2] = {&r.stream_ms, &r.scope_ms};
  for (int k = 0; k < 2; k++) {
    t0 = now_s();
    sqlite3_prepare_v2(db, sqls[k], -1, &q, NULL);
    while (sqlite3_step(q) == SQLITE_ROW) {}
    sqlite3_finalize(q);
    *outs[k] = (now_s() - t0) * 1e3;
  }
  t0 = now_s();
  sqlite3_prepare_v2(db, sqls[2], -1, &q, NULL);
  sqlite3_int64 last = -1;
  for (;;) {
    sqlite3_bind_int64(q, 1, last);
    int rows = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
      last = sqlite3_column_int64(q, 0);
      rows++;
    }
    sqlite3_reset(q);
    if (rows == 0) break;
  }
  sqlite3_finalize(q);
  r.cursor_ms = (now_s() - t0) * 1e3;
  sqlite3_close(db);
  (void)n;
  return r;
}

/* ---------------------------------------------------------------- driver */

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void emit(bool json, uint64_t n, const char *metric, const char *unit, double *v, int runs, double base) {
  qsort(v, (size_t)runs, sizeof *v, cmp_d);
  double med = runs % 2 ? v[runs / 2] : (v[runs / 2 - 1] + v[runs / 2]) / 2;
  if (json)
    printf("{\"set\": \"scale\", \"events\": %llu, \"metric\": \"%s\", \"unit\": \"%s\", \"median\": %.6g, "
           "\"min\": %.6g, \"max\": %.6g, \"runs\": %d, \"sqlite\": %.6g}\n",
           (unsigned long long)n, metric, unit, med, v[0], v[runs - 1], runs, base);
  else
    printf("%10llu  %-24s %12.4g %-8s [%10.4g .. %10.4g]  sqlite %10.4g\n", (unsigned long long)n, metric, med, unit,
           v[0], v[runs - 1], base);
  fflush(stdout);
}

int run_scale(const char *exe, const char *root, const char *list, int runs, bool json);
int run_scale(const char *exe, const char *root, const char *list, int runs, bool json) {
  uint64_t ns[MAX_N];
  int nn = 0;
  for (const char *p = list; *p && nn < MAX_N;) {
    char *end;
    ns[nn++] = strtoull(p, &end, 10);
    p = *end == ',' ? end + 1 : end;
    if (end == p && *end) break;
  }
  if (runs < 1) runs = 3;
  if (runs > 15) runs = 15;
  mkdir(root, 0700);
  for (int ni = 0; ni < nn; ni++) {
    uint64_t n = ns[ni];
    char dir[4200], db[4200];
    snprintf(dir, sizeof dir, "%s/scale-%llu", root, (unsigned long long)n);
    snprintf(db, sizeof db, "%s/scale-%llu.sqlite", root, (unsigned long long)n);
    bp_id *ids = malloc(sizeof *ids * n);
    if (!ids) die("out of memory for the ids");
    /* SQLite's load slows as its B-trees outgrow the cache (26k rows/s at
     * 10M here): past SQLITE_MAX_N it would take hours, and is left out. */
    bool sqlite = n <= SQLITE_MAX_N;
    double load = load_batpak(dir, n, ids), sload = sqlite ? load_sqlite(db, n) : 0;
    emit(json, n, "load", "events/s", &load, 1, sload);
    char hex[33];
    uint64_t pick = n / 3;
    bp_id_to_hex(ids[pick], hex);
    char seqhex[32];
    snprintf(seqhex, sizeof seqhex, "%llx", (unsigned long long)pick);
    /* Reads first, on a warm page cache (the cold opens below drop it). */
    reads b = read_batpak(dir, ids, n), s = {0, 0, 0, 0};
    if (sqlite) s = read_sqlite(db, n);
    emit(json, n, "get_random", "us/op", &b.get_us, 1, s.get_us);
    emit(json, n, "stream_one_of_64", "ms", &b.stream_ms, 1, s.stream_ms);
    emit(json, n, "scope_query_half", "ms", &b.scope_ms, 1, s.scope_ms);
    emit(json, n, "cursor_drain", "ms", &b.cursor_ms, 1, s.cursor_ms);
    for (int cold = 0; cold < 2; cold++) {
      double t[15], h[15], st[15], sh[15];
      for (int r = 0; r < runs; r++) {
        child_out o = run_child(exe, "open", dir, hex, 0, cold, dir);
        child_out so = sqlite ? run_child(exe, "sqlite", db, seqhex, 0, cold, root) : (child_out){0, 0, 0, 0};
        t[r] = o.open_ms, h[r] = (double)o.heap_kb / 1024, st[r] = so.open_ms, sh[r] = (double)so.heap_kb / 1024;
      }
      qsort(st, (size_t)runs, sizeof *st, cmp_d);
      qsort(sh, (size_t)runs, sizeof *sh, cmp_d);
      emit(json, n, cold ? "open_first_get_cold" : "open_first_get_warm", "ms", t, runs, st[runs / 2]);
      if (!cold) emit(json, n, "heap_after_open", "MiB", h, runs, sh[runs / 2]);
    }
    for (int kk = 0; kk < 2; kk++) {
      uint64_t k = kk ? 1000 : 1;
      double bytes[15], close_ms[15], sbytes[15];
      for (int r = 0; r < runs; r++) {
        child_out o = run_child(exe, "append", dir, hex, k, false, dir);
        child_out so = sqlite ? run_child(exe, "sqlite", db, seqhex, k, false, root) : (child_out){0, 0, 0, 0};
        bytes[r] = (double)o.written / 1024, close_ms[r] = o.close_ms, sbytes[r] = (double)so.written / 1024;
      }
      qsort(sbytes, (size_t)runs, sizeof *sbytes, cmp_d);
      emit(json, n, kk ? "append_1000_close_written" : "append_1_close_written", "KiB", bytes, runs,
           sbytes[runs / 2]);
      emit(json, n, kk ? "append_1000_close_time" : "append_1_close_time", "ms", close_ms, runs, 0);
    }
    free(ids);
    /* Each N's files go before the next N's: 100M events take about 70 GB. */
    char cmd[4 * 4200 + 64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' '%s-wal' '%s-shm'", dir, db, db, db);
    if (system(cmd) != 0) fprintf(stderr, "batpak-bench --scale: could not remove %s\n", dir);
  }
  return 0;
}
