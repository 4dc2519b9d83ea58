/*
 * test_replication.c - the relay and the follower against a real three-node
 * JetStream cluster on loopback (scripts/nats-cluster.sh), started by this
 * program and stopped at its end. Where nats-server cannot be started the
 * program exits 77, which CTest reports as skipped (never as passed).
 *
 * The first test is the whole story across process boundaries: a writer
 * appends while `batpak relay` and `batpak follow` run as child processes;
 * the relay and the follower are killed (SIGKILL) and started again, a
 * broker is killed and brought back; in the end the replica must hold every
 * event exactly once, in order, byte for byte, and the stream every event
 * exactly once. The others are the bad inputs and faults, one each.
 */
#include "testutil.h"

#include <batpak/replication.h>
#include <nats/nats.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef BATPAK_CLI
#error "BATPAK_CLI must name the batpak tool"
#endif
#ifndef BATPAK_CLUSTER_SCRIPT
#error "BATPAK_CLUSTER_SCRIPT must name scripts/nats-cluster.sh"
#endif

static char *cluster_dir;
static char urls[512];

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static bool cluster_start(void) {
  cluster_dir = tu_make_temp_dir("nats-cluster");
  char owner[24];
  snprintf(owner, sizeof owner, "%d", (int)getpid());
  setenv("BATPAK_CLUSTER_OWNER", owner, 1); /* the nodes go when this process does */
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "bash %s start %s 2>&1", BATPAK_CLUSTER_SCRIPT, cluster_dir);
  FILE *p = popen(cmd, "r");
  if (!p) return false;
  char line[512] = "";
  while (fgets(line, sizeof line, p)) {
    if (strncmp(line, "nats://", 7) == 0) snprintf(urls, sizeof urls, "%s", line);
    else fputs(line, stderr);
  }
  int rc = pclose(p);
  urls[strcspn(urls, "\n")] = '\0';
  return rc == 0 && urls[0];
}

static void cluster_stop(void) {
  if (!cluster_dir) return;
  run("bash %s stop %s", BATPAK_CLUSTER_SCRIPT, cluster_dir);
  tu_remove_tree(cluster_dir);
  free(cluster_dir);
}

/* Streams may not share subjects: each test's stream has its own prefix,
 * its name. */
static void options(bp_nats_options *o, const char *stream) {
  bp_nats_options_init(o);
  o->urls = urls;
  o->stream = stream;
  o->subject_prefix = stream;
  o->replicas = 3;
}

/* A JetStream context of the test's own, for what a relay never does. */
typedef struct jsconn {
  natsConnection *nc;
  jsCtx *js;
} jsconn;

static jsconn js_open(void) {
  jsconn c = {0};
  natsOptions *no;
  assert_int_equal(natsOptions_Create(&no), NATS_OK);
  char *copy = strdup(urls), *save = NULL;
  const char *servers[3];
  int n = 0;
  for (char *t = strtok_r(copy, ",", &save); t && n < 3; t = strtok_r(NULL, ",", &save)) servers[n++] = t;
  assert_int_equal(natsOptions_SetServers(no, servers, n), NATS_OK);
  assert_int_equal(natsConnection_Connect(&c.nc, no), NATS_OK);
  natsOptions_Destroy(no);
  free(copy);
  assert_int_equal(natsConnection_JetStream(&c.js, c.nc, NULL), NATS_OK);
  return c;
}

static void js_close(jsconn *c) {
  jsCtx_Destroy(c->js);
  natsConnection_Destroy(c->nc);
}

static uint64_t stream_msgs(jsconn *c, const char *stream) {
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  assert_int_equal(js_GetStreamInfo(&si, c->js, stream, NULL, &jerr), NATS_OK);
  uint64_t n = si->State.Msgs;
  jsStreamInfo_Destroy(si);
  return n;
}

static bp_store *open_rw(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  return s;
}

static bp_store *open_ro(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  assert_ok(bp_open_readonly(&cfg, &s));
  return s;
}

static void append_n(bp_store *s, const char *entity, int n) {
  bp_coord c = {entity, "scope.with dots"};
  for (int i = 0; i < n; i++) {
    char payload[32];
    int len = snprintf(payload + 1, sizeof payload - 1, "%s-%d", entity, i);
    payload[0] = (char)(0xa0 | len);
    assert_ok(bp_append(s, &c, 0x1001, payload, (size_t)len + 1, NULL));
  }
}

/* Every frame of b equals a's, in the same order, and there are as many. */
static void assert_same_frames(bp_store *a, bp_store *b) {
  bp_region all = bp_region_all();
  bp_entries ea, eb;
  assert_ok(bp_query(a, &all, &ea));
  assert_ok(bp_query(b, &all, &eb));
  assert_int_equal(eb.len, ea.len);
  for (size_t i = 0; i < ea.len; i++) {
    void *fa, *fb;
    size_t la, lb;
    assert_ok(bp_get_frame(a, ea.items[i].event_id, &fa, &la));
    assert_ok(bp_get_frame(b, eb.items[i].event_id, &fb, &lb));
    tu_assert_bytes_eq(fb, lb, fa, la, "replica frame");
    bp_free(fa);
    bp_free(fb);
  }
  bp_entries_free(&ea);
  bp_entries_free(&eb);
}

static void relay_all(bp_store *s, const char *stream, uint64_t *published) {
  bp_nats_options o;
  options(&o, stream);
  bp_relay *r;
  assert_ok(bp_relay_open(s, NULL, &o, &r));
  uint64_t n, total = 0;
  do {
    assert_ok(bp_relay_pump(r, 0, &n));
    total += n;
  } while (n);
  bp_relay_close(r);
  if (published) *published = total;
}

static uint64_t follow_all(bp_store *replica, const char *stream, const char *durable) {
  bp_nats_options o;
  options(&o, stream);
  o.durable = durable;
  bp_follower *f;
  assert_ok(bp_follower_open(replica, &o, &f));
  uint64_t n, total = 0;
  bp_follower_stats fs;
  do {
    assert_ok(bp_follower_pump(f, 500, &n));
    total += n;
    bp_follower_get_stats(f, &fs);
  } while (n || fs.pending);
  bp_follower_close(f);
  return total;
}

/* ------------------------------------------------------------ processes */

static pid_t spawn(const char *const argv[]) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, STDOUT_FILENO);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static int reap(pid_t pid, int sig) {
  if (sig) kill(pid, sig);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static pid_t start_relay(const char *src, const char *stream) {
  const char *argv[] = {BATPAK_CLI, "relay", src, "--nats", urls, "--stream", stream, "--subject-prefix", stream,
                        "--replicas", "3", "--max-pending", "256", NULL};
  return spawn(argv);
}

static pid_t start_follower(const char *dest, const char *stream) {
  const char *argv[] = {BATPAK_CLI, "follow", dest, "--nats", urls, "--stream", stream, "--subject-prefix", stream, NULL};
  return spawn(argv);
}

static uint64_t count_of(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  if (bp_open_readonly(&cfg, &s) != BP_OK) return 0;
  bp_store_stats st;
  bp_stats(s, &st);
  bp_close(s);
  return st.event_count;
}

static void sleep_ms(int ms) {
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&t, NULL);
}

/* The whole story: crashes of the relay, the follower and a broker while
 * the writer appends (events and batches). */
static void every_event_arrives_once_through_crashes_of_relay_follower_and_broker(void **state) {
  tu_store_fixture *fx = *state;
  char rep[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  bp_store *w = open_rw(fx->dir);
  append_n(w, "first", 1); /* the relay's read-only open needs a store */
  pid_t relay = start_relay(fx->dir, "MAIN");
  pid_t follower = start_follower(rep, "MAIN");
  enum { N = 4000 };
  bp_coord bc[3] = {{"order:1", "orders"}, {"order:2", "orders"}, {"stock", "inventory"}};
  for (int i = 0; i < N; i++) {
    char entity[32];
    snprintf(entity, sizeof entity, "user:%d", i % 17);
    append_n(w, entity, 1);
    if (i % 97 == 0) { /* a batch: its frames must arrive whole */
      bp_event_in batch[3];
      memset(batch, 0, sizeof batch);
      for (int k = 0; k < 3; k++) {
        batch[k].coord = bc[k];
        batch[k].kind = 0x1002;
        batch[k].payload = "\xc0";
        batch[k].len = 1;
      }
      assert_ok(bp_append_batch(w, batch, 3, NULL));
    }
    if (i == N / 5) {
      reap(relay, SIGKILL);
      relay = start_relay(fx->dir, "MAIN");
    }
    if (i == 2 * N / 5) assert_int_equal(run("bash %s kill %s 0", BATPAK_CLUSTER_SCRIPT, cluster_dir), 0);
    if (i == 3 * N / 5) {
      reap(follower, SIGKILL);
      follower = start_follower(rep, "MAIN");
    }
    if (i == 4 * N / 5) assert_int_equal(run("bash %s restart %s 0", BATPAK_CLUSTER_SCRIPT, cluster_dir), 0);
    if (i % 10 == 0) sleep_ms(1);
  }
  assert_ok(bp_sync(w));
  bp_store_stats st;
  bp_stats(w, &st);
  /* The running follower catches up by itself. */
  for (int t = 0; t < 1200 && count_of(rep) < st.event_count; t++) sleep_ms(100);
  assert_int_equal(count_of(rep), st.event_count);
  assert_int_equal(reap(relay, SIGTERM), 0);
  assert_int_equal(reap(follower, SIGTERM), 0);
  jsconn c = js_open();
  assert_int_equal(stream_msgs(&c, "MAIN"), st.event_count); /* exactly once in the stream */
  js_close(&c);
  bp_store *r = open_ro(rep);
  assert_same_frames(w, r);
  bp_close(r);
  assert_ok(bp_close(w));
  tu_assert_verifies(rep, "the replica");
}

/* ------------------------------------------------------------ bad input */

/* Publishes body with the headers of a relayed message of event e (or
 * none), on subject. */
static void publish_raw(jsconn *c, const char *subject, const void *body, size_t len, const char *const *headers) {
  natsMsg *m;
  assert_int_equal(natsMsg_Create(&m, subject, NULL, body, (int)len), NATS_OK);
  for (int i = 0; headers && headers[i]; i += 2) assert_int_equal(natsMsgHeader_Set(m, headers[i], headers[i + 1]), NATS_OK);
  jsPubAck *pa = NULL;
  jsErrCode jerr = 0;
  assert_int_equal(js_PublishMsg(&pa, c->js, m, NULL, &jerr), NATS_OK);
  jsPubAck_Destroy(pa);
  natsMsg_Destroy(m);
}

/* A follower of stream that applies what it can and returns the status of
 * the pump that stopped (or BP_OK once nothing is pending). */
static bp_status follow_until_stopped(bp_store *replica, const char *stream, const char *durable,
                                      uint64_t *applied) {
  bp_nats_options o;
  options(&o, stream);
  o.durable = durable;
  bp_follower *f;
  assert_ok(bp_follower_open(replica, &o, &f));
  uint64_t n;
  *applied = 0;
  bp_status st;
  bp_follower_stats fs;
  do {
    st = bp_follower_pump(f, 500, &n);
    *applied += n;
    bp_follower_get_stats(f, &fs);
  } while (!st && (n || fs.pending));
  bp_error err = *bp_last_error();
  bp_follower_close(f);
  bp_set_error(err.code, "%s", err.message);
  return st;
}

static void a_stream_holding_foreign_messages_stops_the_follower(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_rw(fx->dir);
  append_n(s, "a", 3);
  relay_all(s, "FOREIGN", NULL);
  jsconn c = js_open();
  publish_raw(&c, "FOREIGN.somebody.else", "hello", 5, NULL);
  js_close(&c);
  append_n(s, "a", 2);
  char rep[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  bp_store *r = open_rw(rep);
  uint64_t applied;
  assert_status(follow_until_stopped(r, "FOREIGN", NULL, &applied), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "not a batpak event"));
  assert_non_null(strstr(bp_last_error()->message, "message 4"));
  assert_int_equal(applied, 3); /* what came before it, and nothing after */
  bp_store_stats st;
  bp_stats(r, &st);
  assert_int_equal(st.event_count, 3);
  /* The relay, for its part, will not carry on after a message not its own. */
  bp_nats_options o;
  options(&o, "FOREIGN");
  bp_relay *relay;
  assert_status(bp_relay_open(s, NULL, &o, &relay), BP_EFENCED);
  assert_ok(bp_close(r));
  assert_ok(bp_close(s));
}

/* Frames and headers of two events of another store, for crafting messages. */
typedef struct crafted {
  void *frame[3];
  size_t len[3];
  bp_entry e[3];
} crafted;

static void craft(const char *dir, crafted *k) {
  bp_store *s = open_rw(dir);
  append_n(s, "x", 2);
  append_n(s, "y", 1);
  bp_region all = bp_region_all();
  bp_entries es;
  assert_ok(bp_query(s, &all, &es));
  for (int i = 0; i < 3; i++) {
    k->e[i] = es.items[i];
    k->e[i].entity = k->e[i].scope = NULL; /* interned in s */
    assert_ok(bp_get_frame(s, es.items[i].event_id, &k->frame[i], &k->len[i]));
  }
  bp_entries_free(&es);
  assert_ok(bp_close(s));
}

/* The headers a relay would write for crafted event i, following prev (NULL: none). */
static void headers_of(const crafted *k, int i, const bp_id *prev, const char *entity, char buf[8][80],
                       const char *h[17]) {
  bp_id_to_hex(k->e[i].event_id, buf[0]);
  if (prev) bp_id_to_hex(*prev, buf[1]);
  else strcpy(buf[1], "none");
  snprintf(buf[2], 80, "%04x", (unsigned)k->e[i].kind);
  for (int j = 0; j < 32; j++) {
    sprintf(buf[3] + 2 * j, "%02x", k->e[i].hash_chain.prev_hash[j]);
    sprintf(buf[4] + 2 * j, "%02x", k->e[i].hash_chain.event_hash[j]);
  }
  const char *list[] = {"Nats-Msg-Id", buf[0], "Batpak-Prev-Id", buf[1], "Batpak-Entity", entity,
                        "Batpak-Scope", "scope~2Ewith~20dots", "Batpak-Kind", buf[2], "Batpak-Prev-Hash", buf[3],
                        "Batpak-Event-Hash", buf[4], "Batpak-Sequence", "0", NULL};
  memcpy(h, list, sizeof list);
}

/* The stream CRAFT made anew: empty, and with no ids in its de-duplication
 * window (crafted messages reuse ids). */
static void craft_stream(jsconn *c) {
  jsErrCode jerr = 0;
  js_DeleteStream(c->js, "CRAFT", NULL, &jerr);
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  const char *subjects[] = {"CRAFT.>"};
  sc.Name = "CRAFT";
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  jsStreamInfo *si = NULL;
  assert_int_equal(js_AddStream(&si, c->js, &sc, NULL, &jerr), NATS_OK);
  jsStreamInfo_Destroy(si);
}

static void a_message_whose_frame_does_not_match_its_headers_stops_the_follower(void **state) {
  tu_store_fixture *fx = *state;
  crafted k;
  craft(fx->dir, &k);
  jsconn c = js_open();
  jsErrCode jerr = 0;
  craft_stream(&c);
  char buf[8][80];
  const char *h[17];
  /* Message 1: x's first event, as a relay writes it. */
  headers_of(&k, 0, NULL, "x", buf, h);
  publish_raw(&c, "CRAFT.scope~2Ewith~20dots.x", k.frame[0], k.len[0], h);
  /* Message 2: x's second event's headers around y's frame. */
  headers_of(&k, 1, &k.e[0].event_id, "x", buf, h);
  publish_raw(&c, "CRAFT.scope~2Ewith~20dots.x", k.frame[2], k.len[2], h);
  char rep[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  bp_store *r = open_rw(rep);
  uint64_t applied;
  assert_status(follow_until_stopped(r, "CRAFT", "c1", &applied), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "message 2"));
  assert_non_null(strstr(bp_last_error()->message, "its frame holds event"));
  assert_int_equal(applied, 1);
  craft_stream(&c);
  assert_ok(bp_close(r));

  /* A damaged frame: its CRC gives it away. */
  tu_remove_tree(rep);
  r = open_rw(rep);
  uint8_t *bad = malloc(k.len[0]);
  memcpy(bad, k.frame[0], k.len[0]);
  bad[k.len[0] - 2] ^= 0x40;
  headers_of(&k, 0, NULL, "x", buf, h);
  publish_raw(&c, "CRAFT.scope~2Ewith~20dots.x", bad, k.len[0], h);
  free(bad);
  assert_status(follow_until_stopped(r, "CRAFT", "c2", &applied), BP_ECRC);
  assert_int_equal(applied, 0);
  craft_stream(&c);

  /* A gap: x's second event after nothing. */
  headers_of(&k, 1, &k.e[0].event_id, "x", buf, h);
  publish_raw(&c, "CRAFT.scope~2Ewith~20dots.x", k.frame[1], k.len[1], h);
  assert_status(follow_until_stopped(r, "CRAFT", "c3", &applied), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "gap"));
  craft_stream(&c);

  /* The right frame on the wrong subject. */
  headers_of(&k, 0, NULL, "x", buf, h);
  publish_raw(&c, "CRAFT.scope~2Ewith~20dots.z", k.frame[0], k.len[0], h);
  assert_status(follow_until_stopped(r, "CRAFT", "c4", &applied), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "subject"));
  bp_store_stats st;
  bp_stats(r, &st);
  assert_int_equal(st.event_count, 0);
  assert_ok(bp_close(r));
  js_DeleteStream(c.js, "CRAFT", NULL, &jerr);
  js_close(&c);
  for (int i = 0; i < 3; i++) bp_free(k.frame[i]);
}

static void a_duplicate_with_other_bytes_stops_the_follower(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_rw(fx->dir);
  append_n(s, "a", 2);
  /* A stream whose de-duplication window is short, so that a repeat of an
   * id gets in once it has passed. */
  bp_nats_options o;
  options(&o, "DUP");
  o.duplicate_window_ms = 100;
  bp_relay *relay;
  assert_ok(bp_relay_open(s, NULL, &o, &relay));
  uint64_t n;
  assert_ok(bp_relay_pump(relay, 0, &n));
  assert_int_equal(n, 2);
  bp_relay_close(relay);
  /* Another store's event under the id of the source's first. */
  bp_region all = bp_region_all();
  bp_entries es;
  assert_ok(bp_query(s, &all, &es));
  char odir[4200];
  snprintf(odir, sizeof odir, "%s/other", fx->tmp);
  bp_store *other = open_rw(odir);
  bp_coord c = {"a", "scope.with dots"};
  bp_append_options ao = {.idempotency_key = es.items[0].event_id};
  bp_append_receipt rc;
  assert_ok(bp_append_with(other, &c, 0x1001, "\xa5other", 6, &ao, &rc));
  crafted k = {0};
  assert_ok(bp_get_frame(other, rc.event_id, &k.frame[0], &k.len[0]));
  assert_ok(bp_get_entry(other, rc.event_id, &k.e[0]));
  char buf[8][80];
  const char *h[17];
  headers_of(&k, 0, NULL, "a", buf, h);
  sleep_ms(300);
  jsconn jc = js_open();
  publish_raw(&jc, "DUP.scope~2Ewith~20dots.a", k.frame[0], k.len[0], h);
  assert_int_equal(stream_msgs(&jc, "DUP"), 3);
  js_close(&jc);
  char rep[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  bp_store *r = open_rw(rep);
  options(&o, "DUP");
  bp_follower *f;
  assert_ok(bp_follower_open(r, &o, &f));
  bp_status st = BP_OK;
  uint64_t applied = 0;
  for (int t = 0; t < 10 && !st; t++) {
    st = bp_follower_pump(f, 300, &n);
    applied += n;
  }
  assert_int_equal(st, BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "other bytes"));
  assert_non_null(strstr(bp_last_error()->message, "message 3"));
  assert_int_equal(applied, 2);
  bp_follower_close(f);
  assert_same_frames(s, r);
  bp_free(k.frame[0]);
  bp_entries_free(&es);
  assert_ok(bp_close(r));
  assert_ok(bp_close(other));
  assert_ok(bp_close(s));
}

static void a_stream_deleted_or_reset_under_the_follower_stops_it(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_rw(fx->dir);
  append_n(s, "a", 5);
  relay_all(s, "GONE", NULL);
  char rep[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  bp_store *r = open_rw(rep);
  bp_nats_options o;
  options(&o, "GONE");
  bp_follower *f;
  assert_ok(bp_follower_open(r, &o, &f));
  uint64_t n;
  assert_ok(bp_follower_pump(f, 2000, &n));
  assert_int_equal(n, 5);
  jsconn c = js_open();
  jsErrCode jerr = 0;
  assert_int_equal(js_DeleteStream(c.js, "GONE", NULL, &jerr), NATS_OK);
  assert_status(bp_follower_pump(f, 500, &n), BP_ENOTFOUND);
  assert_non_null(strstr(bp_last_error()->message, "GONE"));
  assert_status(bp_follower_pump(f, 0, &n), BP_ENOTFOUND); /* it stays stopped */
  bp_follower_close(f);
  /* Reset: the relay creates the stream again and publishes from the start;
   * a new follower skips what the replica holds and goes on. */
  append_n(s, "a", 3);
  uint64_t published;
  relay_all(s, "GONE", &published);
  assert_int_equal(published, 8);
  assert_int_equal(follow_all(r, "GONE", NULL), 3);
  assert_same_frames(s, r);
  js_close(&c);
  assert_ok(bp_close(r));
  assert_ok(bp_close(s));
}

/* ------------------------------------------------------------ brokers */

static void an_unreachable_broker_is_named_and_retried(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_rw(fx->dir);
  append_n(s, "a", 1);
  bp_nats_options o;
  options(&o, "NOWHERE");
  o.urls = "nats://127.0.0.1:1";
  o.connect_wait_ms = 700;
  bp_relay *r;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EBROKER);
  const char *msg = bp_last_error()->message;
  assert_non_null(strstr(msg, "nats://127.0.0.1:1"));
  int attempts = 0;
  assert_int_equal(sscanf(strstr(msg, "after ") + 6, "%d", &attempts), 1);
  assert_true(attempts >= 3); /* 100, 200, 400 ms apart */
  bp_follower *f;
  assert_status(bp_follower_open(s, &o, &f), BP_EBROKER);
  assert_ok(bp_close(s));
}

/* The server of the credentials test, stopped by its teardown whatever happens. */
static pid_t tls_server;

static int stop_tls_server(void **state) {
  if (tls_server > 0) {
    kill(tls_server, SIGTERM);
    waitpid(tls_server, NULL, 0);
    tls_server = 0;
  }
  return tu_store_teardown(state);
}

static void credentials_and_tls_options_reach_nats(void **state) {
  tu_store_fixture *fx = *state;
  /* A single server that wants a password and mutual TLS, with a CA, a
   * server certificate and a client certificate made here. */
  char *d = fx->tmp;
  int rc = run("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=batpak-test-ca "
               "-keyout ca.key -out ca.pem >/dev/null 2>&1 && "
               "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr "
               ">/dev/null 2>&1 && printf 'subjectAltName=IP:127.0.0.1\\n' > ext && "
               "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
               "-extfile ext -out server.pem >/dev/null 2>&1 && "
               "openssl req -newkey rsa:2048 -nodes -subj /CN=relay -keyout client.key -out client.csr "
               ">/dev/null 2>&1 && printf 'extendedKeyUsage=clientAuth\\n' > cext && "
               "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
               "-extfile cext -out client.pem >/dev/null 2>&1", d);
  if (rc != 0) skip();
  int port = 0;
  FILE *p = popen("python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\",0)); "
                  "print(s.getsockname()[1])'", "r");
  assert_non_null(p);
  assert_int_equal(fscanf(p, "%d", &port), 1);
  pclose(p);
  char conf[4300];
  snprintf(conf, sizeof conf, "%s/auth.conf", d);
  FILE *cf = fopen(conf, "w");
  fprintf(cf, "listen: 127.0.0.1:%d\njetstream { store_dir: \"%s/js\" }\n"
              "authorization { user: relay, password: s3cret }\n"
              "tls { cert_file: \"%s/server.pem\", key_file: \"%s/server.key\", ca_file: \"%s/ca.pem\", "
              "verify: true }\n", port, d, d, d, d);
  fclose(cf);
  tls_server = fork();
  if (tls_server == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, STDERR_FILENO);
    execlp("nats-server", "nats-server", "-c", conf, (char *)NULL);
    execl("/usr/sbin/nats-server", "nats-server", "-c", conf, (char *)NULL);
    _exit(127);
  }
  char url[64];
  snprintf(url, sizeof url, "tls://127.0.0.1:%d", port);
  bp_store *s = open_rw(fx->dir);
  append_n(s, "a", 2);
  bp_nats_options o;
  options(&o, "SECURE");
  o.urls = url;
  o.replicas = 1;
  char ca[4300], cert[4300], key[4300], path[4300];
  snprintf(ca, sizeof ca, "%s/ca.pem", d);
  snprintf(cert, sizeof cert, "%s/client.pem", d);
  snprintf(key, sizeof key, "%s/client.key", d);
  /* A credentials file that is not there: named, nothing connected. */
  snprintf(path, sizeof path, "%s/missing.creds", d);
  o.creds_file = path;
  bp_relay *r;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  assert_non_null(strstr(bp_last_error()->message, "missing.creds"));
  o.creds_file = NULL;
  /* A client certificate without its key: refused before connecting. */
  o.tls_cert_file = cert;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  o.tls_key_file = key;
  /* TLS without the CA: the server's certificate is not trusted. */
  o.user = "relay";
  o.password = "s3cret";
  o.connect_wait_ms = 300;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EBROKER);
  /* The CA but no client certificate: the server wants one. */
  o.tls_ca_file = ca;
  o.tls_cert_file = o.tls_key_file = NULL;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EBROKER);
  /* Certificates right, a wrong password: refused by the server. */
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  o.password = "wrong";
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EBROKER);
  assert_non_null(strstr(bp_last_error()->message, "uthorization"));
  /* Everything right. */
  o.password = "s3cret";
  o.connect_wait_ms = 5000;
  assert_ok(bp_relay_open(s, NULL, &o, &r));
  uint64_t n;
  assert_ok(bp_relay_pump(r, 0, &n));
  assert_int_equal(n, 2);
  bp_relay_close(r);
  assert_ok(bp_close(s));
}

/* ------------------------------------------------------------ fencing */

static void a_stale_primary_is_fenced_and_a_promoted_replica_relays_onward(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *a = open_rw(fx->dir);
  append_n(a, "acct", 10);
  relay_all(a, "FENCE", NULL);
  char rep[4200], rep2[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  snprintf(rep2, sizeof rep2, "%s/replica2", fx->tmp);
  bp_store *b = open_rw(rep);
  assert_int_equal(follow_all(b, "FENCE", NULL), 10);
  /* The old primary is still running its relay when the replica is
   * promoted: B appends and relays into the same stream. */
  bp_nats_options o;
  options(&o, "FENCE");
  bp_relay *ra;
  assert_ok(bp_relay_open(a, NULL, &o, &ra));
  append_n(b, "acct", 3);
  uint64_t n;
  relay_all(b, "FENCE", &n);
  assert_int_equal(n, 3);
  append_n(a, "acct", 1);
  assert_status(bp_relay_pump(ra, 2000, &n), BP_EFENCED);
  assert_non_null(strstr(bp_last_error()->message, "another primary"));
  assert_int_equal(n, 0);
  assert_status(bp_relay_pump(ra, 0, &n), BP_EFENCED);
  bp_relay_close(ra);
  /* Nothing of A's late event reached the stream. */
  jsconn c = js_open();
  assert_int_equal(stream_msgs(&c, "FENCE"), 13);
  js_close(&c);
  /* The promoted replica relays onward to a second stream, whose follower
   * holds what B holds. */
  relay_all(b, "ONWARD", &n);
  assert_int_equal(n, 13);
  bp_store *b2 = open_rw(rep2);
  assert_int_equal(follow_all(b2, "ONWARD", NULL), 13);
  assert_same_frames(b, b2);
  assert_ok(bp_close(b2));
  assert_ok(bp_close(b));
  assert_ok(bp_close(a));
  tu_assert_verifies(rep2, "the replica of the replica");
}

/* ------------------------------------------------------------ regions, lag */

static void a_region_of_whole_entities_replicates_and_lag_is_counted(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_rw(fx->dir);
  append_n(s, "keep:1", 4);
  append_n(s, "skip:1", 4);
  append_n(s, "keep:2", 2);
  bp_nats_options o;
  options(&o, "REGION");
  bp_region region = bp_region_entity("keep:");
  bp_relay *r;
  assert_ok(bp_relay_open(s, &region, &o, &r));
  bp_relay_stats rs;
  bp_relay_get_stats(r, &rs);
  assert_int_equal(rs.behind_events, 10);
  uint64_t n;
  assert_ok(bp_relay_pump(r, 0, &n));
  assert_int_equal(n, 6);
  bp_relay_get_stats(r, &rs);
  assert_int_equal(rs.published, 6);
  assert_int_equal(rs.stream_sequence, 6);
  assert_int_equal(rs.behind_events, 0);
  assert_int_equal(rs.behind_ms, 0);
  append_n(s, "keep:1", 1);
  bp_relay_get_stats(r, &rs);
  assert_int_equal(rs.behind_events, 1);
  bp_relay_close(r);
  char rep[4200];
  snprintf(rep, sizeof rep, "%s/replica", fx->tmp);
  bp_store *rep_s = open_rw(rep);
  assert_int_equal(follow_all(rep_s, "REGION", NULL), 6);
  bp_entries es;
  assert_ok(bp_stream(rep_s, "skip:1", &es));
  assert_int_equal(es.len, 0);
  bp_entries_free(&es);
  assert_ok(bp_stream(rep_s, "keep:1", &es));
  assert_int_equal(es.len, 4);
  bp_entries_free(&es);
  assert_ok(bp_close(rep_s));
  assert_ok(bp_close(s));
  tu_assert_verifies(rep, "a region's replica");
}

static void tokens_escape_reversibly(void **state) {
  (void)state;
  const char *cases[] = {"user:1", "a.b*c>d e", "~tilde~", "caf\xc3\xa9", "plain_-09AZaz", "\t\n", "x"};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char tok[128], back[128];
    size_t n = bp_nats_token_escape(cases[i], strlen(cases[i]), tok, sizeof tok);
    assert_int_equal(n, strlen(tok));
    assert_null(strpbrk(tok, ".*> \t\n"));
    assert_int_equal(bp_nats_token_unescape(tok, n, back, sizeof back), strlen(cases[i]));
    assert_string_equal(back, cases[i]);
  }
  char out[8];
  assert_int_equal(bp_nats_token_unescape("~41", 3, out, sizeof out), SIZE_MAX); /* 'A' is never escaped */
  assert_int_equal(bp_nats_token_unescape("~4", 2, out, sizeof out), SIZE_MAX);
  assert_int_equal(bp_nats_token_unescape("~2e", 3, out, sizeof out), SIZE_MAX); /* lower case never written */
  assert_int_equal(bp_nats_token_unescape("a.b", 3, out, sizeof out), SIZE_MAX);
  assert_int_equal(bp_nats_token_escape("a.b", 3, NULL, 0), 5);
}

static void bad_options_are_refused_by_name(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_rw(fx->dir);
  bp_nats_options o;
  bp_relay *r;
  options(&o, "bad.name");
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  assert_non_null(strstr(bp_last_error()->message, "stream name"));
  options(&o, "OK");
  o.subject_prefix = "a..b";
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  options(&o, "OK");
  o.replicas = 9;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  options(&o, "OK");
  o.urls = NULL;
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  options(&o, "OK");
  o.tls_cert_file = "/nonexistent";
  assert_status(bp_relay_open(s, NULL, &o, &r), BP_EINVAL);
  assert_ok(bp_close(s));
  bp_config cfg;
  bp_config_init(&cfg, fx->dir);
  assert_ok(bp_open_readonly(&cfg, &s));
  bp_follower *f;
  options(&o, "OK");
  assert_status(bp_follower_open(s, &o, &f), BP_EREADONLY);
  assert_ok(bp_close(s));
}

int main(void) {
  if (!cluster_start()) {
    fprintf(stderr, "test_replication: SKIPPED: a three-node nats-server cluster could not be started "
                    "(apt-get install nats-server)\n");
    cluster_stop();
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tokens_escape_reversibly),
      cmocka_unit_test_setup_teardown(bad_options_are_refused_by_name, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_region_of_whole_entities_replicates_and_lag_is_counted, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_stream_holding_foreign_messages_stops_the_follower, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_message_whose_frame_does_not_match_its_headers_stops_the_follower,
                                      tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_duplicate_with_other_bytes_stops_the_follower, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_stream_deleted_or_reset_under_the_follower_stops_it, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(an_unreachable_broker_is_named_and_retried, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(credentials_and_tls_options_reach_nats, tu_store_setup, stop_tls_server),
      cmocka_unit_test_setup_teardown(a_stale_primary_is_fenced_and_a_promoted_replica_relays_onward, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(every_event_arrives_once_through_crashes_of_relay_follower_and_broker,
                                      tu_store_setup, tu_store_teardown),
  };
  /* BATPAK_TEST_FILTER=pattern runs the matching tests only (while working on one). */
  if (getenv("BATPAK_TEST_FILTER")) cmocka_set_test_filter(getenv("BATPAK_TEST_FILTER"));
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  cluster_stop();
  nats_Close();
  return failed;
}
