/*
 * replication.c - batpak-bench --replication URLS: the relay and the
 * follower against a JetStream cluster (scripts/nats-cluster.sh start DIR
 * prints URLS), each run on streams of `replicas` copies on files:
 *
 *   baseline    a bare nats.c loop of asynchronous publishes, window 4096,
 *               of N messages of the source's frame sizes, each with its own
 *               Nats-Msg-Id: the most a relay could do through this client;
 *   relay       bp_relay_pump over a store of N events, from the first
 *               publish to the last acknowledgement: events/s, and the ratio
 *               to the baseline of the same run;
 *   follower    bp_follower_pump of the relayed stream into an empty
 *               replica (each fetch appended, fsynced and acknowledged):
 *               events/s;
 *   lag         a writer appends 2,000 events 1-3 ms apart while a relay
 *               thread and a follower thread pump; the time from just before
 *               each bp_append to the moment the follower's replica holds it
 *               (its subscription's notification): p50, p99, max.
 * Streams are deleted before and after. Numbers move with what else runs on
 * the machine (the brokers share its CPUs): quote them with the load.
 */
#include <batpak.h>
#include <batpak/replication.h>
#include <nats/nats.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int run_replication(const char *urls, const char *root, uint64_t events, int runs, int replicas, bool json);

static uint64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "batpak-bench --replication: %s: %s\n", what, bp_last_error()->message);
  exit(1);
}

static void nats_check(natsStatus s, const char *what) {
  if (s == NATS_OK) return;
  fprintf(stderr, "batpak-bench --replication: %s: %s\n", what, natsStatus_GetText(s));
  exit(1);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct conn {
  natsConnection *nc;
  jsCtx *js;
} conn;

static conn connect_to(const char *urls) {
  conn c;
  natsOptions *o;
  nats_check(natsOptions_Create(&o), "options");
  char *copy = strdup(urls), *save = NULL;
  const char *servers[8];
  int n = 0;
  for (char *t = strtok_r(copy, ",", &save); t && n < 8; t = strtok_r(NULL, ",", &save)) servers[n++] = t;
  nats_check(natsOptions_SetServers(o, servers, n), "servers");
  nats_check(natsConnection_Connect(&c.nc, o), "connect");
  natsOptions_Destroy(o);
  free(copy);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = 4096;
  nats_check(natsConnection_JetStream(&c.js, c.nc, &jo), "jetstream");
  return c;
}

static void disconnect(conn *c) {
  jsCtx_Destroy(c->js);
  natsConnection_Destroy(c->nc);
}

static void delete_stream(conn *c, const char *name) {
  jsErrCode jerr = 0;
  js_DeleteStream(c->js, name, NULL, &jerr);
}

static bp_store *open_dir(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  if (bp_open(&cfg, &s)) die("open");
  return s;
}

/* A source of n events over 64 entities, payloads of about 200 bytes
 * (frames of about 400), as the main benchmark's. Returns the frames' mean size. */
static size_t fill(bp_store *s, uint64_t n) {
  char payload[256];
  for (uint64_t i = 0; i < n; i++) {
    char entity[32];
    snprintf(entity, sizeof entity, "account:%" PRIu64, i % 64);
    bp_coord c = {entity, "bench"};
    int len = snprintf(payload + 2, sizeof payload - 2, "{\"i\": %" PRIu64 ", \"note\": \"%0180d\"}", i, 0);
    payload[0] = (char)0xd9; /* str8 */
    payload[1] = (char)len;
    if (bp_append(s, &c, 0x1001, payload, (size_t)len + 2, NULL)) die("append");
  }
  bp_sync(s);
  bp_region all = bp_region_all();
  bp_entries es;
  if (bp_query(s, &all, &es)) die("query");
  uint64_t bytes = 0;
  for (size_t i = 0; i < es.len; i++) bytes += es.items[i].disk_pos.length;
  size_t mean = es.len ? (size_t)(bytes / es.len) : 0;
  bp_entries_free(&es);
  return mean;
}

static void stream_for(conn *c, const char *name, const char *prefix, int replicas) {
  char subject[64];
  snprintf(subject, sizeof subject, "%s.>", prefix);
  const char *subjects[] = {subject};
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  sc.Name = name;
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  sc.Replicas = replicas;
  sc.Duplicates = (int64_t)120 * 1000000000;
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  natsStatus s = NATS_ERR;
  for (int tries = 0; tries < 50 && s != NATS_OK; tries++) {
    s = js_AddStream(&si, c->js, &sc, NULL, &jerr);
    if (s != NATS_OK) nats_Sleep(100);
  }
  nats_check(s, "add stream");
  jsStreamInfo_Destroy(si);
}

/* The bare loop: n messages of size bytes, ids of their own. */
static double baseline(conn *c, uint64_t n, size_t size, int replicas) {
  delete_stream(c, "BENCHBASE");
  stream_for(c, "BENCHBASE", "benchbase", replicas);
  char *data = malloc(size);
  memset(data, 0x5a, size);
  uint64_t t0 = mono_ns();
  for (uint64_t i = 0; i < n; i++) {
    natsMsg *m;
    char id[40], subject[64];
    snprintf(id, sizeof id, "base-%016" PRIx64, i);
    snprintf(subject, sizeof subject, "benchbase.bench.account~3A%" PRIu64, i % 64);
    nats_check(natsMsg_Create(&m, subject, NULL, data, (int)size), "message");
    nats_check(natsMsgHeader_Set(m, "Nats-Msg-Id", id), "header");
    nats_check(js_PublishMsgAsync(c->js, &m, NULL), "publish");
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 60000;
  nats_check(js_PublishAsyncComplete(c->js, &po), "publish complete");
  double rate = n / ((double)(mono_ns() - t0) / 1e9);
  free(data);
  delete_stream(c, "BENCHBASE");
  return rate;
}

static void options(bp_nats_options *o, const char *urls, const char *stream, int replicas) {
  bp_nats_options_init(o);
  o->urls = urls;
  o->stream = stream;
  o->subject_prefix = stream;
  o->replicas = (uint32_t)replicas;
}

static double relay_rate(bp_store *s, const char *urls, uint64_t n, int replicas) {
  bp_nats_options o;
  options(&o, urls, "BENCHRELAY", replicas);
  o.durable = "bench-relay";
  bp_relay *r;
  if (bp_relay_open(s, NULL, &o, &r)) die("relay open");
  uint64_t t0 = mono_ns(), total = 0, k;
  while (total < n) {
    if (bp_relay_pump(r, 1000, &k)) die("relay pump");
    total += k;
  }
  double rate = n / ((double)(mono_ns() - t0) / 1e9);
  bp_relay_close(r);
  return rate;
}

static double follower_rate(const char *dir, const char *urls, uint64_t n, int replicas) {
  bp_store *rep = open_dir(dir);
  bp_nats_options o;
  options(&o, urls, "BENCHRELAY", replicas);
  bp_follower *f;
  if (bp_follower_open(rep, &o, &f)) die("follower open");
  uint64_t t0 = mono_ns(), total = 0, k;
  while (total < n) {
    if (bp_follower_pump(f, 1000, &k)) die("follower pump");
    total += k;
  }
  double rate = n / ((double)(mono_ns() - t0) / 1e9);
  bp_follower_close(f);
  bp_close(rep);
  return rate;
}

/* ------------------------------------------------------------ lag */

typedef struct lag_ctx {
  bp_store *src, *rep;
  const char *urls;
  int replicas;
  atomic_bool stop;
} lag_ctx;

static void *relay_thread(void *arg) {
  lag_ctx *c = arg;
  bp_nats_options o;
  options(&o, c->urls, "BENCHLAG", c->replicas);
  o.durable = "bench-lag";
  bp_relay *r;
  if (bp_relay_open(c->src, NULL, &o, &r)) die("lag relay open");
  uint64_t k;
  while (!atomic_load(&c->stop))
    if (bp_relay_pump(r, 50, &k)) die("lag relay pump");
  bp_relay_close(r);
  return NULL;
}

static void *follower_thread(void *arg) {
  lag_ctx *c = arg;
  bp_nats_options o;
  options(&o, c->urls, "BENCHLAG", c->replicas);
  bp_follower *f;
  bp_status st;
  /* Until the relay has made the stream (and the cluster answers). */
  while ((st = bp_follower_open(c->rep, &o, &f)) == BP_ENOTFOUND || st == BP_EBROKER) nats_Sleep(20);
  if (st) die("lag follower open");
  uint64_t k;
  while (!atomic_load(&c->stop))
    if (bp_follower_pump(f, 50, &k)) die("lag follower pump");
  bp_follower_close(f);
  return NULL;
}

/* Appends `count` events 1-3 ms apart, each stamped with the time just
 * before its append; the replica's subscription gives when each arrived. */
static void lag(const char *root, const char *urls, int replicas, uint64_t out[3]) {
  char sdir[4400], rdir[4400];
  snprintf(sdir, sizeof sdir, "%.4200s/lag-src", root);
  snprintf(rdir, sizeof rdir, "%.4200s/lag-rep", root);
  lag_ctx c = {open_dir(sdir), open_dir(rdir), urls, replicas, false};
  bp_region all = bp_region_all();
  bp_subscription *sub = bp_subscribe(c.rep, &all);
  if (!sub) die("subscribe");
  pthread_t rt, ft;
  pthread_create(&rt, NULL, relay_thread, &c);
  pthread_create(&ft, NULL, follower_thread, &c);
  enum { COUNT = 2000 };
  static uint64_t lat[COUNT];
  size_t got = 0;
  bp_coord coord = {"lag", "bench"};
  /* Measured once both sides run: a first event through the whole path
   * (the stream made, the consumer bound) is not counted. */
  bp_coord warm = {"warm-up", "bench"};
  if (bp_append(c.src, &warm, 0x1001, NULL, 0, NULL)) die("lag append");
  bp_notification first;
  if (bp_sub_recv(sub, &first, 30000) != BP_OK) die("lag warm-up");
  for (int i = 0; i < COUNT; i++) {
    uint8_t payload[10] = {0xc4, 8};
    uint64_t t = mono_ns();
    memcpy(payload + 2, &t, 8);
    if (bp_append(c.src, &coord, 0x1001, payload, sizeof payload, NULL)) die("lag append");
    nats_Sleep(1 + i % 3);
    bp_notification note;
    while (bp_sub_recv(sub, &note, 0) == BP_OK && got < COUNT) {
      uint64_t now = mono_ns();
      bp_event *ev;
      if (bp_get(c.rep, note.event_id, &ev)) die("lag get");
      uint64_t sent;
      memcpy(&sent, ev->payload + 2, 8);
      lat[got++] = now - sent;
      bp_event_free(ev);
    }
  }
  while (got < COUNT) {
    bp_notification note;
    if (bp_sub_recv(sub, &note, 10000) != BP_OK) break;
    uint64_t now = mono_ns();
    bp_event *ev;
    if (bp_get(c.rep, note.event_id, &ev)) die("lag get");
    uint64_t sent;
    memcpy(&sent, ev->payload + 2, 8);
    lat[got++] = now - sent;
    bp_event_free(ev);
  }
  atomic_store(&c.stop, true);
  pthread_join(rt, NULL);
  pthread_join(ft, NULL);
  bp_sub_close(sub);
  bp_close(c.src);
  bp_close(c.rep);
  qsort(lat, got, sizeof *lat, cmp_u64);
  out[0] = got ? lat[got / 2] : 0;
  out[1] = got ? lat[got * 99 / 100] : 0;
  out[2] = got ? lat[got - 1] : 0;
}

static void rm_rf(const char *dir) {
  char cmd[4300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "batpak-bench: could not remove %s\n", dir);
}

int run_replication(const char *urls, const char *root, uint64_t events, int runs, int replicas, bool json) {
  double base[16] = {0}, relay[16] = {0}, ratio[16] = {0}, follow[16] = {0};
  uint64_t lags[16][3] = {{0}};
  if (runs > 16) runs = 16;
  double load[3] = {0};
  if (getloadavg(load, 3) < 0) load[0] = -1;
  size_t frame = 0;
  for (int run = 0; run < runs; run++) {
    char sdir[4200], rdir[4200];
    snprintf(sdir, sizeof sdir, "%s/src", root);
    snprintf(rdir, sizeof rdir, "%s/rep", root);
    rm_rf(sdir);
    rm_rf(rdir);
    conn c = connect_to(urls);
    delete_stream(&c, "BENCHRELAY");
    delete_stream(&c, "BENCHLAG");
    bp_store *s = open_dir(sdir);
    frame = fill(s, events);
    /* Alternate which goes first, so that neither always meets a warmer broker. */
    if (run % 2 == 0) {
      base[run] = baseline(&c, events, frame, replicas);
      relay[run] = relay_rate(s, urls, events, replicas);
    } else {
      relay[run] = relay_rate(s, urls, events, replicas);
      base[run] = baseline(&c, events, frame, replicas);
    }
    ratio[run] = relay[run] / base[run];
    bp_close(s);
    follow[run] = follower_rate(rdir, urls, events, replicas);
    char lroot[4200];
    snprintf(lroot, sizeof lroot, "%s/lag", root);
    rm_rf(lroot);
    mkdir(lroot, 0700);
    lag(lroot, urls, replicas, lags[run]);
    delete_stream(&c, "BENCHRELAY");
    delete_stream(&c, "BENCHLAG");
    disconnect(&c);
    rm_rf(sdir);
    rm_rf(rdir);
    rm_rf(lroot);
    if (!json)
      printf("run %d: baseline %.0f msgs/s, relay %.0f events/s (%.2fx), follower %.0f events/s, "
             "lag p50 %.2f ms p99 %.2f ms max %.2f ms\n", run + 1, base[run], relay[run], ratio[run], follow[run],
             lags[run][0] / 1e6, lags[run][1] / 1e6, lags[run][2] / 1e6);
  }
  double sb[16], sr[16], sx[16], sf[16];
  memcpy(sb, base, sizeof sb);
  memcpy(sr, relay, sizeof sr);
  memcpy(sx, ratio, sizeof sx);
  memcpy(sf, follow, sizeof sf);
  qsort(sb, (size_t)runs, sizeof *sb, cmp_double);
  qsort(sr, (size_t)runs, sizeof *sr, cmp_double);
  qsort(sx, (size_t)runs, sizeof *sx, cmp_double);
  qsort(sf, (size_t)runs, sizeof *sf, cmp_double);
  uint64_t p50[16], p99[16];
  for (int i = 0; i < runs; i++) p50[i] = lags[i][0], p99[i] = lags[i][1];
  qsort(p50, (size_t)runs, sizeof *p50, cmp_u64);
  qsort(p99, (size_t)runs, sizeof *p99, cmp_u64);
  int m = runs / 2;
  if (json) {
    printf("{\"workload\": \"replication\", \"events\": %" PRIu64 ", \"frame_bytes\": %zu, \"replicas\": %d, "
           "\"runs\": %d, \"load\": %.2f, \"baseline_msgs_per_s\": %.0f, \"relay_events_per_s\": %.0f, "
           "\"relay_ratio\": %.3f, \"relay_ratio_min\": %.3f, \"relay_ratio_max\": %.3f, "
           "\"follower_events_per_s\": %.0f, \"lag_p50_ms\": %.3f, \"lag_p99_ms\": %.3f}\n",
           events, frame, replicas, runs, load[0], sb[m], sr[m], sx[m], sx[0], sx[runs - 1], sf[m], p50[m] / 1e6,
           p99[m] / 1e6);
  } else {
    printf("replication, %" PRIu64 " events of %zu-byte frames, %d replicas, %d runs, load %.2f at the start:\n",
           events, frame, replicas, runs, load[0]);
    printf("  baseline (bare async publish)  median %.0f msgs/s [%.0f .. %.0f]\n", sb[m], sb[0], sb[runs - 1]);
    printf("  relay                          median %.0f events/s [%.0f .. %.0f]\n", sr[m], sr[0], sr[runs - 1]);
    printf("  relay / baseline               median %.2fx [%.2f .. %.2f]\n", sx[m], sx[0], sx[runs - 1]);
    printf("  follower                       median %.0f events/s [%.0f .. %.0f]\n", sf[m], sf[0], sf[runs - 1]);
    printf("  append -> replica lag          p50 median %.2f ms, p99 median %.2f ms\n", p50[m] / 1e6, p99[m] / 1e6);
  }
  nats_Close();
  return 0;
}
