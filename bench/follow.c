/*
 * follow.c - batpak-bench --follow: a writer process and a follower process
 * on one store (docs/FOLLOWERS.md), with the real library on both sides.
 *
 *   latency     the writer appends one event at a time, 0.75-2.25 ms apart
 *               (the follower asleep in between), each carrying the time
 *               just before its bp_append (CLOCK_MONOTONIC, shared by both
 *               processes); the follower waits on its subscription's
 *               descriptor with poll: the figure is from that time to poll's
 *               return (p50, p99, max), after which the cursor reads it;
 *   throughput  the writer appends N events as fast as one thread can
 *               (group commit off, fsync every 1000); the follower follows
 *               with a cursor woken by its subscription: its rate from the
 *               first event to the last against the writer's, and how far
 *               behind it is when the writer ends;
 *   idle        the follower's CPU time over 2 s with nothing appended;
 *   writer cost the writer's append rate with a follower asleep between
 *               commits against none, in the same run.
 * The parent forks and runs this executable again for each side (fork and
 * exec: no threads shared), with pipes for go and done.
 */
#include <batpak.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int run_follow(const char *exe, const char *root, uint64_t events, int runs, bool json);
int follow_child(int argc, char **argv);

static uint64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "batpak-bench --follow: %s: %s\n", what, bp_last_error()->message);
  exit(1);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static bp_config config(const char *dir) {
  bp_config c;
  bp_config_init(&c, dir);
  return c;
}

/* A payload: MessagePack bin 8 holding the append time. */
static void stamp(uint8_t out[10]) {
  uint64_t t = mono_ns();
  out[0] = 0xc4;
  out[1] = 8;
  memcpy(out + 2, &t, 8);
}

static uint64_t stamp_of(bp_store *s, bp_id id) {
  bp_event *ev;
  if (bp_get(s, id, &ev)) die("get");
  uint64_t t = 0;
  if (ev->payload_len == 10) memcpy(&t, ev->payload + 2, 8);
  bp_event_free(ev);
  return t;
}

static double cpu_seconds(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  unsigned long ut = 0, st = 0;
  /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ------------------------------------------------------------- children */

/* follower DIR N MODE OUT: follows until it has read N events; MODE
 * "latency" records each event's delay after its append, "rate" the time
 * of its first and last event. Writes a line to OUT; "ready" to stdout
 * once subscribed. */
static int child_follower(char **argv) {
  bp_config c = config(argv[0]);
  uint64_t n = strtoull(argv[1], NULL, 10);
  bool latency = strcmp(argv[2], "latency") == 0;
  bp_store *s;
  if (bp_open_readonly(&c, &s)) die("open read-only");
  bp_region all = bp_region_all();
  bp_subscription *sub = bp_subscribe(s, &all);
  bp_cursor *cur = bp_cursor_open(s, &all);
  if (!sub || !cur) die("subscribe");
  bp_store_stats st;
  bp_stats(s, &st);
  bp_cursor_seek(cur, st.event_count); /* only what comes from now on */
  int fd = bp_sub_fd(sub);
  uint64_t *delay = latency ? malloc(sizeof *delay * n) : NULL;
  uint64_t got = 0, first_ns = 0, last_ns = 0;
  printf("ready\n");
  fflush(stdout);
  while (got < n) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 10000) == 0) break;
    uint64_t woke = mono_ns();
    bp_notification note;
    while (bp_sub_recv(sub, &note, 0) == BP_OK) {}
    bp_entries b;
    while (bp_cursor_poll_batch(cur, 4096, &b) == BP_OK && b.len) {
      for (size_t i = 0; i < b.len && got < n; i++, got++) {
        if (latency) {
          uint64_t t = stamp_of(s, b.items[i].event_id);
          delay[got] = woke > t ? woke - t : 0;
        }
      }
      bp_entries_free(&b);
    }
    if (!first_ns) first_ns = woke;
    last_ns = mono_ns();
  }
  FILE *o = fopen(argv[3], "w");
  if (!o) return 1;
  if (latency) {
    qsort(delay, got, sizeof *delay, cmp_u64);
    fprintf(o, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", got, got ? delay[got / 2] : 0,
            got ? delay[got * 99 / 100] : 0, got ? delay[got - 1] : 0);
  } else {
    fprintf(o, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", got, first_ns, last_ns);
  }
  fclose(o);
  free(delay);
  bp_cursor_close(cur);
  bp_sub_close(sub);
  bp_close(s);
  return got == n ? 0 : 2;
}

int follow_child(int argc, char **argv) {
  if (argc == 7 && !strcmp(argv[2], "follower")) return child_follower(argv + 3);
  fprintf(stderr, "batpak-bench --follow-child: bad arguments\n");
  return 2;
}

/* --------------------------------------------------------------- parent */

static pid_t spawn_follower(const char *exe, const char *dir, uint64_t n, const char *mode, const char *out) {
  int pipefd[2];
  if (pipe(pipefd)) die("pipe");
  char ns[32];
  snprintf(ns, sizeof ns, "%" PRIu64, n);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], 1);
    close(pipefd[0]);
    execl(exe, exe, "--follow-child", "follower", dir, ns, mode, out, (char *)NULL);
    _exit(127);
  }
  close(pipefd[1]);
  char buf[8] = {0};
  if (read(pipefd[0], buf, 6) != 6) die("follower did not start");
  close(pipefd[0]);
  return pid;
}

static int reap(pid_t pid) {
  int ws;
  if (waitpid(pid, &ws, 0) != pid) return -1;
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static void sleep_us(uint64_t us) {
  struct timespec t = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
  nanosleep(&t, NULL);
}

/* Appends n stamped events, one at a time; pause_us > 0: a pause of
 * pause_us/2 .. pause_us*3/2 after each. Returns events per second. */
static double append_stamped(bp_store *s, uint64_t n, uint64_t pause_us) {
  bp_coord c = {"bench:follow", "bench"};
  uint8_t p[10];
  uint64_t rng = 0x9e3779b97f4a7c15ull, t0 = mono_ns();
  for (uint64_t i = 0; i < n; i++) {
    stamp(p);
    if (bp_append(s, &c, 0x1001, p, sizeof p, NULL)) die("append");
    if (pause_us) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      sleep_us(pause_us / 2 + rng % (pause_us + 1));
    }
  }
  return (double)n / ((double)(mono_ns() - t0) / 1e9);
}

static void emit(bool json, const char *metric, const char *unit, double v, const char *note) {
  if (json)
    printf("{\"set\": \"follow\", \"metric\": \"%s\", \"unit\": \"%s\", \"value\": %.6g, \"note\": \"%s\"}\n",
           metric, unit, v, note);
  else
    printf("%-34s %12.4g %-9s %s\n", metric, v, unit, note);
  fflush(stdout);
}

static void read_line(const char *path, uint64_t v[4]) {
  FILE *f = fopen(path, "r");
  if (!f || fscanf(f, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &v[0], &v[1], &v[2], &v[3]) < 3) die(path);
  fclose(f);
}

int run_follow(const char *exe, const char *root, uint64_t events, int runs, bool json) {
  char dir[4200], out[4300], cmd[8700];
  snprintf(dir, sizeof dir, "%s/follow", root);
  snprintf(out, sizeof out, "%s/follow.out", root);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) die("rm");
  bp_config c = config(dir);
  bp_store *w;
  if (bp_open(&c, &w)) die("open");

  /* Latency: the follower asleep before each publish. */
  uint64_t lat_n = events < 3000 ? events : 3000, v[4];
  for (int r = 0; r < runs; r++) {
    pid_t f = spawn_follower(exe, dir, lat_n, "latency", out);
    append_stamped(w, lat_n, 1500);
    if (reap(f) != 0) die("follower (latency) failed");
    read_line(out, v);
    char note[128];
    snprintf(note, sizeof note, "run %d of %d, %" PRIu64 " events 0.75-2.25 ms apart", r + 1, runs, v[0]);
    emit(json, "append_to_wake_p50", "us", (double)v[1] / 1e3, note);
    emit(json, "append_to_wake_p99", "us", (double)v[2] / 1e3, note);
    emit(json, "append_to_wake_max", "us", (double)v[3] / 1e3, note);
  }

  /* Idle: a follower with nothing to follow. */
  pid_t f = spawn_follower(exe, dir, 1, "rate", out);
  sleep_us(200000);
  double cpu0 = cpu_seconds(f);
  sleep_us(2000000);
  double cpu1 = cpu_seconds(f);
  emit(json, "idle_follower_cpu", "ms/s", (cpu1 - cpu0) * 1000 / 2, "CPU time over 2 s with nothing appended");
  append_stamped(w, 1, 0);
  if (reap(f) != 0) die("follower (idle) failed");

  /* Throughput, and the writer's cost of a follower. */
  for (int r = 0; r < runs; r++) {
    double alone = append_stamped(w, events, 0);
    f = spawn_follower(exe, dir, events, "rate", out);
    uint64_t t0 = mono_ns();
    double with = append_stamped(w, events, 0);
    uint64_t t1 = mono_ns();
    if (reap(f) != 0) die("follower (rate) failed");
    read_line(out, v);
    double follower_rate = (double)events / ((double)(v[2] - t0) / 1e9);
    char note[160];
    snprintf(note, sizeof note, "run %d of %d, %" PRIu64 " events", r + 1, runs, events);
    emit(json, "writer_rate_alone", "events/s", alone, note);
    emit(json, "writer_rate_followed", "events/s", with, note);
    emit(json, "follower_rate", "events/s", follower_rate, note);
    emit(json, "follower_done_after_writer", "ms", v[2] > t1 ? (double)(v[2] - t1) / 1e6 : 0, note);
  }
  bp_close(w);
  if (system(cmd) != 0) die("rm");
  return 0;
}
