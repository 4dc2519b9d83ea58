/*
 * test_integrity.c - the store never returns a wrong event, never loses or
 * duplicates one, and never crashes, off its main path too: appends racing
 * close, reserved kinds and bad coordinates, damaged SIDX footers, crashed
 * segments in the middle of a store, missing sealed segments. One named test
 * per class; each failed on the code before its fix.
 */
#include "testutil.h"
#include "faultfs.h"
#include "store/os.h"
#include "store/store_impl.h"
#include "wire/msgpack.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef tu_store_fixture fixture;

/* Every test's teardown: a failed test must not leave its faults behind. */
static int teardown(void **state) {
  bp__os_table = bp__os_default;
  return tu_store_teardown(state);
}

/* ------------------------------------------------ every file of a directory */

/* Names and bytes of the regular files of a directory (subdirectories one
 * level down too: cursors/), sorted by name: what "left every file as it
 * was" is checked against. */
typedef struct dir_image {
  size_t n;
  char names[64][256];
  uint8_t *bytes[64];
  size_t lens[64];
} dir_image;

static int cmp_names(const void *a, const void *b) { return strcmp(a, b); }

static void image_add_dir(dir_image *im, const char *root, const char *sub) {
  char path[4400];
  snprintf(path, sizeof path, "%s%s%s", root, sub ? "/" : "", sub ? sub : "");
  DIR *d = opendir(path);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char rel[300], full[4800];
    snprintf(rel, sizeof rel, "%s%s%s", sub ? sub : "", sub ? "/" : "", e->d_name);
    snprintf(full, sizeof full, "%s/%s", root, rel);
    struct stat st;
    if (lstat(full, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      if (!sub) image_add_dir(im, root, e->d_name);
      continue;
    }
    assert_true(im->n < 64);
    snprintf(im->names[im->n], sizeof im->names[0], "%s", rel);
    im->n++;
  }
  closedir(d);
}

static void image_take(dir_image *im, const char *dir) {
  memset(im, 0, sizeof *im);
  image_add_dir(im, dir, NULL);
  qsort(im->names, im->n, sizeof im->names[0], cmp_names);
  for (size_t i = 0; i < im->n; i++) {
    char full[4400];
    snprintf(full, sizeof full, "%s/%s", dir, im->names[i]);
    im->bytes[i] = tu_read_file(full, &im->lens[i]);
    assert_non_null(im->bytes[i]);
  }
}

static void image_free(dir_image *im) {
  for (size_t i = 0; i < im->n; i++) free(im->bytes[i]);
}

/* Fails naming the first file that appeared, went or changed. */
static void assert_same_files(const char *dir, const dir_image *before, const char *what) {
  dir_image now;
  image_take(&now, dir);
  for (size_t i = 0, j = 0; i < before->n || j < now.n;) {
    int c = i == before->n ? 1 : j == now.n ? -1 : strcmp(before->names[i], now.names[j]);
    if (c < 0) fail_msg("%s: %s went away", what, before->names[i]);
    if (c > 0) fail_msg("%s: %s appeared", what, now.names[j]);
    if (before->lens[i] != now.lens[j] || memcmp(before->bytes[i], now.bytes[j], now.lens[j]) != 0)
      fail_msg("%s: %s changed (%zu bytes, was %zu)", what, now.names[j], now.lens[j], before->lens[i]);
    i++;
    j++;
  }
  image_free(&now);
}

static void no_log(int level, const char *msg, void *ctx) {
  (void)level;
  (void)msg;
  (void)ctx;
}

static bp_store *open_ok(const bp_config *cfg) {
  bp_store *s;
  assert_ok(bp_open(cfg, &s));
  return s;
}

/* ------------------------------------------------ appends racing bp_close */

enum { RACERS = 4, RACE_MAX = 20000 };

typedef struct racer {
  bp_store *s;
  int t;
  bp_id ids[RACE_MAX];
  size_t n;
  bp_status last;           /* the status that ended the loop */
  _Atomic size_t *total;
} racer;

static void *race_appends(void *p) {
  racer *r = p;
  char entity[32];
  snprintf(entity, sizeof entity, "racer:%d", r->t);
  bp_coord c = {entity, "race"};
  for (;;) {
    bp_append_receipt rc;
    char text[32];
    int len = snprintf(text, sizeof text, "%d/%zu", r->t, r->n);
    bp_status st = bp_append(r->s, &c, 0x1001, text, (size_t)len, &rc);
    if (st != BP_OK || r->n == RACE_MAX) {
      r->last = st;
      return NULL;
    }
    r->ids[r->n++] = rc.event_id;
    atomic_fetch_add(r->total, 1);
  }
}

/* Appenders loop until they are refused while the main thread closes the
 * store: every refusal is BP_ESHUTDOWN, nothing is touched after the free
 * (ASan, TSan), and exactly the acknowledged events are there on reopen. */
static void appends_racing_close_fail_eshutdown_and_lose_nothing(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 64;
  for (int round = 0; round < 3; round++) {
    bp_store *s = open_ok(&f->cfg);
    _Atomic size_t total = 0;
    racer *rs = calloc(RACERS, sizeof *rs);
    pthread_t th[RACERS];
    for (int t = 0; t < RACERS; t++) {
      rs[t].s = s;
      rs[t].t = t;
      rs[t].total = &total;
      pthread_create(&th[t], NULL, race_appends, &rs[t]);
    }
    while (atomic_load(&total) < 200u * (unsigned)(round + 1)) usleep(100);
    assert_ok(bp_close(s));
    bp_id *all = NULL;
    size_t n = 0;
    for (int t = 0; t < RACERS; t++) {
      pthread_join(th[t], NULL);
      if (rs[t].n < RACE_MAX && rs[t].last != BP_ESHUTDOWN)
        fail_msg("racer %d ended with %s, not BP_ESHUTDOWN", t, bp_status_name(rs[t].last));
      all = realloc(all, (n + rs[t].n) * sizeof *all);
      memcpy(all + n, rs[t].ids, rs[t].n * sizeof *all);
      n += rs[t].n;
    }
    /* A call on the closed handle is refused too, and so is a second close. */
    bp_coord c = {"late", "race"};
    assert_status(bp_append(s, &c, 0x1001, "x", 1, NULL), BP_ESHUTDOWN);
    assert_status(bp_close(s), BP_EINVAL);
    tu_assert_acknowledged(&f->cfg, all, n, NULL, NULL, "appends racing close");
    /* The next round appends after these. */
    bp_store *again = open_ok(&f->cfg);
    bp_store_stats st;
    bp_stats(again, &st);
    assert_int_equal(st.event_count, n);
    assert_ok(bp_close(again));
    tu_remove_tree(f->dir);
    free(all);
    free(rs);
  }
}

/* A batch of two events of kind 0x1001 to c, each with payload text; the
 * caller changes the second. */
static void batch_of_two(bp_event_in evs[2], bp_coord c, const char *text) {
  memset(evs, 0, 2 * sizeof *evs);
  evs[0].coord = c;
  evs[0].kind = 0x1001;
  evs[0].payload = text;
  evs[0].len = strlen(text);
  evs[1] = evs[0];
}

/* --------------------------------------------------- bad input is refused */

static const bp_kind RESERVED[] = {0x0000, BP_KIND_SYSTEM_INIT, BP_KIND_SYSTEM_CHECKPOINT, BP_KIND_POLICY_BYPASS,
                                   BP_KIND_TOMBSTONE, 0x0FFF, BP_KIND_EFFECT_ERROR, BP_KIND_EFFECT_CONFLICT, 0xDFFF};

/* Every public way to append refuses the reserved categories (system 0x0,
 * with the tombstone and bypass-audit kinds, and effect 0xD), naming the
 * kind, and writes nothing; a receipt survives a refused commit. */
static void reserved_kinds_are_refused_on_every_append_path(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(&f->cfg);
  bp_coord c = {"forger:1", "audit"};
  for (size_t i = 0; i < sizeof RESERVED / sizeof *RESERVED; i++) {
    bp_kind k = RESERVED[i];
    char name[7];
    bp_kind_format(k, name);
    assert_status(bp_append(s, &c, k, "x", 1, NULL), BP_EINVAL);
    assert_non_null(strstr(bp_last_error()->message, name));
    assert_non_null(strstr(bp_last_error()->message, "reserved"));
    bp_append_options o;
    memset(&o, 0, sizeof o);
    o.idempotency_key = bp_id_v7();
    assert_status(bp_append_with(s, &c, k, "x", 1, &o, NULL), BP_EINVAL);
    assert_status(bp_append_json(s, &c, k, "{\"a\":1}", NULL), BP_EINVAL);
    assert_status(bp_append_reaction(s, &c, k, "x", 1, bp_id_v7(), bp_id_v7(), NULL), BP_EINVAL);
    bp_transition t = {k, "x", 1};
    assert_status(bp_apply_transition(s, &c, &t, NULL, NULL), BP_EINVAL);
    bp_event_in evs[2];
    batch_of_two(evs, c, "ok");
    evs[1].kind = k;
    assert_status(bp_append_batch(s, evs, 2, NULL), BP_EINVAL);
    assert_non_null(strstr(bp_last_error()->message, "batch event 1"));
    bp_receipt *r = bp_bypass("x", 1, "drill", "testing reserved kinds");
    assert_non_null(r);
    assert_status(bp_commit_bypass_append(s, &c, k, r, NULL), BP_EINVAL);
    /* Not spent by the refusal. */
    assert_ok(bp_commit_bypass_append(s, &c, 0x1001, r, NULL));
    bp_receipt_free(r);
  }
  bp_store_stats st;
  bp_stats(s, &st);
  assert_int_equal(st.event_count, 2 * (sizeof RESERVED / sizeof *RESERVED)); /* the bypasses and their audits */
  bp_entries fact;
  assert_ok(bp_by_fact(s, BP_KIND_POLICY_BYPASS, &fact));
  assert_int_equal(fact.len, sizeof RESERVED / sizeof *RESERVED);
  bp_entries_free(&fact);
  assert_ok(bp_by_fact(s, BP_KIND_TOMBSTONE, &fact));
  assert_int_equal(fact.len, 0);
  bp_entries_free(&fact);
  assert_ok(bp_close(s));
}

/* Entity and scope are MessagePack str: text that is not strict UTF-8 is
 * refused with BP_ECOORD before anything is written. */
static void coordinates_that_are_not_utf8_fail_ecoord(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(&f->cfg);
  static const char *const bad[] = {
      "\xff",                 /* never a UTF-8 byte */
      "user:\x80",            /* a lone continuation byte */
      "\xc0\x80",             /* overlong NUL */
      "\xe0\x80\xaf",         /* overlong '/' */
      "\xed\xa0\x80",         /* a UTF-16 surrogate, U+D800 */
      "\xf4\x90\x80\x80",     /* above U+10FFFF */
      "a\xe2\x82",            /* cut short */
      "\xf8\x88\x80\x80\x80", /* a five-byte form */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    bp_coord as_entity = {bad[i], "scope"}, as_scope = {"entity", bad[i]};
    assert_status(bp_append(s, &as_entity, 0x1001, "x", 1, NULL), BP_ECOORD);
    assert_non_null(strstr(bp_last_error()->message, "entity is not valid UTF-8"));
    assert_status(bp_append(s, &as_scope, 0x1001, "x", 1, NULL), BP_ECOORD);
    assert_non_null(strstr(bp_last_error()->message, "scope is not valid UTF-8"));
    assert_status(bp_coord_validate(&as_entity), BP_ECOORD);
  }
  bp_store_stats st;
  bp_stats(s, &st);
  assert_int_equal(st.event_count, 0);
  /* Every valid form still goes in: two, three and four bytes, U+10FFFF. */
  bp_coord good = {"caf\xc3\xa9:\xe2\x82\xac:\xf0\x9f\x98\x80:\xf4\x8f\xbf\xbf", "\xed\x9f\xbf"};
  assert_ok(bp_append(s, &good, 0x1001, "x", 1, NULL));
  assert_ok(bp_close(s));
}

/* A refused append (validation, compare-and-swap, reserved kind, idempotent
 * repeat), a read-only open and an open that appends nothing leave every
 * file of the store byte for byte as it was: no new segment, no rewritten
 * checkpoint. */
static void refused_appends_and_idle_opens_leave_every_file_as_it_was(void **state) {
  fixture *f = *state;
  f->cfg.log_fn = no_log;
  bp_store *s = open_ok(&f->cfg);
  bp_coord c = {"account:1", "bank"};
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  bp_append_receipt first;
  assert_ok(bp_append_with(s, &c, 0x1001, "a", 1, &o, &first));
  assert_ok(bp_append(s, &c, 0x1001, "b", 1, NULL));
  assert_ok(bp_close(s));
  dir_image before;
  image_take(&before, f->dir);

  s = open_ok(&f->cfg);
  bp_append_options cas;
  memset(&cas, 0, sizeof cas);
  cas.expect = BP_EXPECT_SEQUENCE;
  cas.expected_sequence = 7;
  assert_status(bp_append_with(s, &c, 0x1001, "c", 1, &cas, NULL), BP_ESEQUENCE);
  cas.expect = BP_EXPECT_EMPTY;
  assert_status(bp_append_with(s, &c, 0x1001, "c", 1, &cas, NULL), BP_ESEQUENCE);
  bp_coord fresh = {"account:new", "bank"};
  cas.expect = BP_EXPECT_SEQUENCE;
  cas.expected_sequence = 0;
  assert_status(bp_append_with(s, &fresh, 0x1001, "c", 1, &cas, NULL), BP_ESEQUENCE);
  bp_event_in evs[2];
  batch_of_two(evs, c, "d");
  evs[1].opts.expect = BP_EXPECT_EMPTY;
  assert_status(bp_append_batch(s, evs, 2, NULL), BP_ESEQUENCE);
  assert_status(bp_append(s, &c, BP_KIND_TOMBSTONE, "e", 1, NULL), BP_EINVAL);
  bp_coord empty = {"", "bank"};
  assert_status(bp_append(s, &empty, 0x1001, "f", 1, NULL), BP_ECOORD);
  bp_append_receipt again;
  assert_ok(bp_append_with(s, &c, 0x1001, "a", 1, &o, &again)); /* an idempotent repeat writes nothing */
  assert_memory_equal(&again.event_id, &first.event_id, sizeof first.event_id);
  assert_ok(bp_close(s));
  assert_same_files(f->dir, &before, "refused appends");

  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_entries all;
  bp_region r = bp_region_all();
  assert_ok(bp_query(s, &r, &all));
  assert_int_equal(all.len, 2);
  bp_entries_free(&all);
  assert_ok(bp_close(s));
  assert_same_files(f->dir, &before, "a read-only open");

  s = open_ok(&f->cfg);
  assert_ok(bp_close(s));
  assert_same_files(f->dir, &before, "an open that appended nothing");
  image_free(&before);
}

/* ------------------------------------------------------------ SIDX footers */

typedef struct log_capture {
  char text[8192];
} log_capture;

static void capture_log(int level, const char *msg, void *ctx) {
  log_capture *c = ctx;
  if (level > BP_LOG_INFO) return;
  size_t n = strlen(c->text);
  snprintf(c->text + n, sizeof c->text - n, "%s\n", msg);
}

static tu_image image_of(const bp_config *cfg, bool readonly) {
  bp_store *s;
  if (readonly) assert_ok(bp_open_readonly(cfg, &s));
  else assert_ok(bp_open(cfg, &s));
  tu_image im;
  tu_image_take(s, &im);
  assert_ok(bp_close(s));
  return im;
}

static void assert_same_image(const tu_image *got, const tu_image *want, const char *what) {
  const char *d = tu_image_diff(got, want, false, NULL);
  if (d) fail_msg("%s: %s", what, d);
}

/* Where entry k of the footer of a segment file starts. */
static size_t footer_entry_at(const uint8_t *d, size_t n, uint32_t k) {
  uint32_t count = bp__get_le32(d + n - 8);
  assert_true(k < count);
  return n - 16 - (size_t)(count - k) * BP__SIDX_ENTRY_SIZE;
}

static const struct {
  const char *field;
  size_t at;
} ENTRY_FIELDS[] = {{"event_id", 3},   {"entity", 16},     {"scope", 20},        {"kind", 25},
                    {"wall_ms", 27},   {"clock", 34},      {"prev_hash", 50},    {"event_hash", 80},
                    {"frame offset", 102}, {"frame length", 110}, {"global_sequence", 114},
                    {"correlation_id", 125}, {"causation_id", 140}};

/* A flipped byte in any field of an entry of a sealed footer of ours breaks
 * its seal: the segment is scanned (the reason logged), every event shows
 * as it was, and a read-write open writes the footer anew. */
static void damaged_footer_entry_is_never_believed_and_is_rewritten(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  f->cfg.segment_max_bytes = 1024;
  bp_store *s = open_ok(&f->cfg);
  for (int i = 0; i < 12; i++) {
    char e[16];
    snprintf(e, sizeof e, "thing:%d", i % 3);
    bp_coord c = {e, i % 2 ? "odd" : "even"};
    bp_append_options o;
    memset(&o, 0, sizeof o);
    o.causation_id = bp_id_v7();
    assert_ok(bp_append_with(s, &c, (bp_kind)(0x1001 + i % 3), "payload of some length", 22, &o, NULL));
  }
  assert_ok(bp_close(s));
  tu_image want = image_of(&f->cfg, true);
  char seg[4300];
  snprintf(seg, sizeof seg, "%s/000001.fbat", f->dir);
  size_t n;
  uint8_t *orig = tu_read_file(seg, &n);
  assert_non_null(orig);
  assert_memory_equal(orig + n - 4, "SIDX", 4);
  size_t entry = footer_entry_at(orig, n, 1);
  for (size_t i = 0; i < sizeof ENTRY_FIELDS / sizeof *ENTRY_FIELDS; i++) {
    tu_flip_byte(seg, (long)(entry + ENTRY_FIELDS[i].at), 0x01);
    log_capture cap = {{0}};
    bp_config cfg = f->cfg;
    cfg.log_fn = capture_log;
    cfg.log_ctx = &cap;
    tu_image got = image_of(&cfg, true);
    assert_same_image(&got, &want, ENTRY_FIELDS[i].field);
    tu_image_free(&got);
    if (!strstr(cap.text, "000001: SIDX footer not used (its seal does not match"))
      fail_msg("%s flipped: the log does not say the footer was not used:\n%s", ENTRY_FIELDS[i].field, cap.text);
    got = image_of(&cfg, false);
    assert_same_image(&got, &want, ENTRY_FIELDS[i].field);
    tu_image_free(&got);
    size_t m;
    uint8_t *now = tu_read_file(seg, &m);
    if (m != n || memcmp(now, orig, n) != 0) fail_msg("%s flipped: the footer was not rewritten", ENTRY_FIELDS[i].field);
    free(now);
  }
  free(orig);
  tu_image_free(&want);
}

/* The crate's footers have no seal: one flipped field in an entry would be
 * believed, so they are not read at all; the segment is scanned. */
static void crate_footer_with_a_flipped_field_is_not_believed(void **state) {
  fixture *f = *state;
  char src[4096];
  tu_fixture_path("basic", "", src, sizeof src);
  tu_copy_dir(src, f->dir);
  char p[4300];
  snprintf(p, sizeof p, "%s/index.ckpt", f->dir);
  assert_int_equal(unlink(p), 0);
  f->cfg.enable_checkpoint = false;
  tu_image want = image_of(&f->cfg, true);
  snprintf(p, sizeof p, "%s/000002.fbat", f->dir);
  size_t n;
  uint8_t *d = tu_read_file(p, &n);
  size_t entry = footer_entry_at(d, n, 0);
  free(d);
  for (size_t i = 0; i < sizeof ENTRY_FIELDS / sizeof *ENTRY_FIELDS; i++) {
    if (ENTRY_FIELDS[i].at >= 102 && ENTRY_FIELDS[i].at < 122) continue; /* positions: checked against the file */
    tu_flip_byte(p, (long)(entry + ENTRY_FIELDS[i].at), 0x01);
    tu_image got = image_of(&f->cfg, true);
    assert_same_image(&got, &want, ENTRY_FIELDS[i].field);
    tu_image_free(&got);
    tu_flip_byte(p, (long)(entry + ENTRY_FIELDS[i].at), 0x01);
  }
  tu_image_free(&want);
}

/* ------------------------------------------------------- crashed segments */

/* A child appends n durable events to the store and dies without closing. */
static void crash_after_appending(const bp_config *base, int n) {
  pid_t pid = fork();
  if (pid == 0) {
    bp_config cfg = *base;
    cfg.sync_every_n_events = 1;
    bp_store *s;
    if (bp_open(&cfg, &s)) _exit(1);
    for (int i = 0; i < n; i++) {
      char text[32];
      int len = snprintf(text, sizeof text, "crash payload %d", i);
      bp_coord c = {"crashed:1", "crash"};
      if (bp_append(s, &c, 0x1001, text, (size_t)len, NULL)) _exit(2);
    }
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static uint8_t *read_segment(const char *dir, int id, size_t *n) {
  char p[4300];
  snprintf(p, sizeof p, "%s/%06d.fbat", dir, id);
  uint8_t *d = tu_read_file(p, n);
  assert_non_null(d);
  return d;
}

/* A read-write open after a crash seals the crashed segment (its zero tail
 * cut, its footer written and fsynced), so that damage found in it later is
 * corruption: the events after the damage are not dropped as a torn tail. */
static void crashed_segment_is_finished_and_later_damage_is_not_a_torn_tail(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  f->cfg.log_fn = no_log;
  crash_after_appending(&f->cfg, 10);
  size_t n;
  uint8_t *d = read_segment(f->dir, 1, &n);
  assert_memory_not_equal(d + n - 4, "SIDX", 4);
  free(d);
  bp_store *s = open_ok(&f->cfg);
  bp_coord c = {"after:1", "crash"};
  assert_ok(bp_append(s, &c, 0x1001, "later", 5, NULL));
  tu_image want;
  tu_image_take(s, &want);
  assert_ok(bp_close(s));
  assert_int_equal(want.n, 11);
  d = read_segment(f->dir, 1, &n);
  assert_memory_equal(d + n - 4, "SIDX", 4);
  uint64_t st_off = bp__get_le64(d + n - 16);
  assert_int_equal(st_off, want.v[9].entry.disk_pos.offset + want.v[9].entry.disk_pos.length);
  free(d);
  tu_assert_verifies(f->dir, "after the crashed segment was finished");
  /* Damage in the fifth event's frame: a read error, never lost events. */
  char p[4300];
  snprintf(p, sizeof p, "%s/000001.fbat", f->dir);
  tu_flip_byte(p, (long)(want.v[4].entry.disk_pos.offset + 12), 0x20);
  for (int cp = 0; cp < 2; cp++) {
    f->cfg.enable_checkpoint = cp;
    bp_store *r;
    bp_status st = bp_open_readonly(&f->cfg, &r);
    if (st == BP_ECORRUPT) continue;
    assert_ok(st);
    tu_image got;
    tu_image_take(r, &got);
    assert_ok(bp_close(r));
    size_t read_fail = 0;
    const char *diff = tu_image_diff(&got, &want, true, &read_fail);
    if (diff) fail_msg("checkpoint %d: %s", cp, diff);
    assert_int_equal(read_fail, 1);
    tu_image_free(&got);
  }
  tu_image_free(&want);
}

/* An unsealed segment that is not the newest (left by a crash under an
 * earlier version, which never finished it) may not lose its tail: damage
 * in it fails the open, naming the segment. */
static void damage_in_an_unsealed_segment_before_the_newest_is_corruption(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  f->cfg.log_fn = no_log;
  crash_after_appending(&f->cfg, 10);
  size_t n;
  uint8_t *crashed = read_segment(f->dir, 1, &n);
  bp_store *s = open_ok(&f->cfg);
  tu_image want;
  bp_coord c = {"after:1", "crash"};
  assert_ok(bp_append(s, &c, 0x1001, "later", 5, NULL));
  tu_image_take(s, &want);
  assert_ok(bp_close(s));
  /* Put the crashed segment back as the crash left it. */
  char p[4300];
  snprintf(p, sizeof p, "%s/000001.fbat", f->dir);
  FILE *fp = fopen(p, "wb");
  assert_int_equal(fwrite(crashed, 1, n, fp), n);
  fclose(fp);
  free(crashed);
  tu_image got = image_of(&f->cfg, true);
  assert_same_image(&got, &want, "unsealed segment before the newest, intact");
  tu_image_free(&got);
  tu_flip_byte(p, (long)(want.v[4].entry.disk_pos.offset + 12), 0x20);
  bp_store *r = NULL;
  assert_status(bp_open_readonly(&f->cfg, &r), BP_ECORRUPT);
  assert_non_null(strstr(bp_last_error()->message, "segment 000001"));
  assert_status(bp_open(&f->cfg, &r), BP_ECORRUPT);
  f->cfg.salvage = true;
  assert_ok(bp_open_readonly(&f->cfg, &r));
  bp_store_stats st;
  bp_stats(r, &st);
  assert_int_equal(st.event_count, 10); /* salvage skips the damaged frame and keeps the rest */
  assert_ok(bp_close(r));
  tu_image_free(&want);
}

/* ------------------------------------------------ missing sealed segments */

/* A sealed segment in the middle of the store that is deleted, emptied or
 * cut short, while a checkpoint whose CRC holds lists events in it: the
 * open fails BP_ECORRUPT naming it, on every path; salvage opens what is
 * left. */
static void missing_emptied_or_cut_sealed_segment_fails_naming_it(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  f->cfg.log_fn = no_log;
  bp_store *s = open_ok(&f->cfg);
  bp_append_receipt last_in_2 = {0};
  for (int i = 0; i < 30; i++) {
    char text[64];
    int len = snprintf(text, sizeof text, "event number %d with some bytes", i);
    bp_coord c = {"thing:1", "scope"};
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, 0x1001, text, (size_t)len, &r));
    if (r.disk_pos.segment_id == 2) last_in_2 = r;
  }
  assert_ok(bp_close(s));
  assert_int_equal(last_in_2.disk_pos.segment_id, 2);
  char *copy = tu_make_temp_dir("intact");
  tu_copy_dir(f->dir, copy);
  char p[4300];
  snprintf(p, sizeof p, "%s/000002.fbat", f->dir);
  const struct {
    const char *damage;
    long size; /* -1: deleted */
  } cases[] = {{"deleted", -1},
               {"emptied", 0},
               {"cut in a frame", (long)last_in_2.disk_pos.offset + 9},
               {"cut at a frame's start", (long)last_in_2.disk_pos.offset}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    tu_remove_tree(f->dir);
    tu_copy_dir(copy, f->dir);
    if (cases[i].size < 0) assert_int_equal(unlink(p), 0);
    else assert_int_equal(truncate(p, cases[i].size), 0);
    for (int ro = 0; ro < 2; ro++) {
      f->cfg.salvage = false;
      bp_store *r = NULL;
      bp_status st = ro ? bp_open_readonly(&f->cfg, &r) : bp_open(&f->cfg, &r);
      if (st != BP_ECORRUPT)
        fail_msg("segment 2 %s, %s open: %s, expected BP_ECORRUPT", cases[i].damage, ro ? "read-only" : "read-write",
                 bp_status_name(st));
      if (!strstr(bp_last_error()->message, "000002"))
        fail_msg("segment 2 %s: the message does not name it: %s", cases[i].damage, bp_last_error()->message);
    }
    f->cfg.salvage = true;
    bp_store *r;
    assert_ok(bp_open_readonly(&f->cfg, &r));
    bp_store_stats st;
    bp_stats(r, &st);
    assert_true(st.event_count < 30);
    assert_ok(bp_close(r));
    f->cfg.salvage = false;
  }
  tu_remove_tree(copy);
  free(copy);
}

/* ---------------------------------------------------------------- snapshots */

static char synced_dirs[8][4096];
static size_t nsynced;
static char dir_of_fd[64][4096];

static int record_open(const char *path, int flags, mode_t mode) {
  int fd = bp__os_default.open(path, flags, mode);
  if (fd >= 0 && fd < 64) snprintf(dir_of_fd[fd], sizeof dir_of_fd[fd], "%s", (flags & O_DIRECTORY) ? path : "");
  return fd;
}

static int record_fsync(int fd) {
  if (fd >= 0 && fd < 64 && dir_of_fd[fd][0] && nsynced < 8) {
    char real[4096];
    snprintf(synced_dirs[nsynced++], sizeof synced_dirs[0], "%s", realpath(dir_of_fd[fd], real) ? real : dir_of_fd[fd]);
  }
  return bp__os_default.fsync(fd);
}

/* The directory a snapshot creates is made durable in its parent too. */
static void snapshot_fsyncs_the_parent_of_the_directory_it_creates(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(&f->cfg);
  bp_coord c = {"a", "b"};
  assert_ok(bp_append(s, &c, 0x1001, "x", 1, NULL));
  char parent[4300], dest[4400];
  snprintf(parent, sizeof parent, "%s/backups", f->tmp);
  assert_int_equal(mkdir(parent, 0700), 0);
  snprintf(dest, sizeof dest, "%s/snap", parent);
  nsynced = 0;
  memset(dir_of_fd, 0, sizeof dir_of_fd);
  bp__os_table.open = record_open;
  bp__os_table.fsync = record_fsync;
  bp_status st = bp_snapshot(s, dest);
  bp__os_table = bp__os_default;
  assert_ok(st);
  char real_parent[4096], real_dest[4096];
  assert_non_null(realpath(parent, real_parent));
  assert_non_null(realpath(dest, real_dest));
  bool dest_synced = false, parent_synced = false;
  for (size_t i = 0; i < nsynced; i++) {
    dest_synced |= strcmp(synced_dirs[i], real_dest) == 0;
    parent_synced |= strcmp(synced_dirs[i], real_parent) == 0;
  }
  assert_true(dest_synced);
  if (!parent_synced) fail_msg("bp_snapshot created %s but never fsynced %s", dest, parent);
  assert_ok(bp_close(s));
}

/* ------------------------------------------- durable cursors and retention */

static bool keep_not_dropped(const bp_event *ev, void *ctx) {
  (void)ctx;
  return strncmp(ev->entity, "drop:", 5) != 0;
}

/* 40 events, every other one of an entity "drop:N"; their ids in order. */
static void forty_events(const bp_config *cfg, bp_id ids[40]) {
  bp_store *s = open_ok(cfg);
  for (int i = 0; i < 40; i++) {
    char e[16];
    snprintf(e, sizeof e, "%s:%d", i % 2 ? "drop" : "keep", i);
    bp_coord c = {e, "cursor"};
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, 0x1001, "some payload bytes", 18, &r));
    ids[i] = r.event_id;
  }
  assert_ok(bp_close(s));
}

static void retain(const bp_config *cfg) {
  bp_store *s = open_ok(cfg);
  bp_compaction_config cc = {BP_COMPACT_RETENTION, keep_not_dropped, NULL, 0};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  assert_true(res.segments_removed > 0);
  assert_ok(bp_close(s));
}

/* The forty-event store (small segments, no log), opened. */
static bp_store *forty_event_store(fixture *f, bp_id ids[40]) {
  f->cfg.segment_max_bytes = 1024;
  f->cfg.log_fn = no_log;
  forty_events(&f->cfg, ids);
  return open_ok(&f->cfg);
}

/* The durable cursor "reader" over every event, after `polled` polls (the
 * last of them delivered event polled - 1). */
static bp_cursor *reader_after(bp_store *s, const bp_id ids[40], int polled) {
  bp_region all = bp_region_all();
  bp_cursor *cur = bp_cursor_open_durable(s, "reader", &all);
  assert_non_null(cur);
  bp_entry e;
  for (int i = 0; i < polled; i++) assert_ok(bp_cursor_poll(cur, &e));
  assert_true(bp_id_eq(e.event_id, ids[polled - 1]));
  return cur;
}

/* After a restart the cursor delivers exactly the surviving events after
 * the last one it had delivered (from index `from` of ids). */
static void assert_resumes_at(const bp_config *cfg, const bp_id ids[40], int from, const char *what) {
  bp_store *s = open_ok(cfg);
  bp_region all = bp_region_all();
  bp_cursor *cur = bp_cursor_open_durable(s, "reader", &all);
  assert_non_null(cur);
  int want = from;
  bp_entry e;
  while (bp_cursor_poll(cur, &e) == BP_OK) {
    while (want < 40 && want % 2 == 1) want++; /* the drop: events are gone */
    if (want >= 40 || !bp_id_eq(e.event_id, ids[want]))
      fail_msg("%s: delivered %s, expected event %d", what, e.entity, want);
    want++;
  }
  while (want < 40 && want % 2 == 1) want++;
  if (want != 40) fail_msg("%s: stopped before event %d", what, want);
  bp_cursor_close(cur);
  assert_ok(bp_close(s));
}

/* A durable cursor whose last delivered event is dropped by a retention
 * compaction resumes, after a restart, at the first surviving event after
 * it: nothing skipped, nothing twice. */
static void durable_cursor_resumes_after_retention_dropped_its_last_event(void **state) {
  fixture *f = *state;
  bp_id ids[40];
  bp_store *s = forty_event_store(f, ids);
  bp_cursor *cur = reader_after(s, ids, 26); /* the last delivered, drop:25, is dropped */
  assert_ok(bp_cursor_commit(cur));
  bp_cursor_close(cur);
  assert_ok(bp_close(s));
  retain(&f->cfg);
  assert_resumes_at(&f->cfg, ids, 26, "after a retention compaction by another open");
}

/* A cursor that commits after a compaction on its own handle saves a
 * position of today's numbering. */
static void cursor_commit_after_a_compaction_saves_todays_numbering(void **state) {
  fixture *f = *state;
  bp_id ids[40];
  bp_store *s = forty_event_store(f, ids);
  bp_cursor *cur = reader_after(s, ids, 32); /* drop:31, which the compaction drops */
  bp_compaction_config cc = {BP_COMPACT_RETENTION, keep_not_dropped, NULL, 0};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  assert_ok(bp_cursor_commit(cur));
  bp_cursor_close(cur);
  assert_ok(bp_close(s));
  assert_resumes_at(&f->cfg, ids, 32, "committed after a compaction on its handle");
}

/* ------------------------------------------------ read-only beside a writer */

/* A process appends and compacts (merging) over and over while this one
 * opens the store read-only again and again: every open succeeds and lists
 * a prefix of the final log, no event twice, none missing in between. */
static void readonly_opens_beside_a_compacting_writer_see_one_set_of_segments(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  f->cfg.log_fn = no_log;
  f->cfg.sync_every_n_events = 1;
  bp_store *s = open_ok(&f->cfg);
  bp_coord c = {"seed", "live"};
  assert_ok(bp_append(s, &c, 0x1001, "seed", 4, NULL));
  assert_ok(bp_close(s));
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *w;
    if (bp_open(&f->cfg, &w)) _exit(1);
    for (int round = 0; round < 120; round++) {
      for (int i = 0; i < 4; i++) {
        char e[32];
        snprintf(e, sizeof e, "writer:%d", i);
        bp_coord wc = {e, "live"};
        if (bp_append(w, &wc, 0x1001, "payload of the writer", 21, NULL)) _exit(2);
      }
      bp_compaction_config cc = {BP_COMPACT_MERGE, NULL, NULL, 2};
      bp_compaction_result res;
      if (bp_compact(w, &cc, &res)) _exit(3);
      usleep(300); /* a writer that does something else between compactions */
    }
    _exit(bp_close(w) ? 4 : 0);
  }
  size_t cap = 64, nseen = 0;
  bp_entries *seen = calloc(cap, sizeof *seen);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    bp_store *r;
    bp_status st = bp_open_readonly(&f->cfg, &r);
    if (st) fail_msg("read-only open beside the writer: %s: %s", bp_status_name(st), bp_last_error()->message);
    bp_region all = bp_region_all();
    if (nseen == cap) seen = realloc(seen, (cap *= 2) * sizeof *seen);
    assert_ok(bp_query(r, &all, &seen[nseen]));
    /* The entries' strings live in the store: keep only what is compared. */
    for (size_t i = 0; i < seen[nseen].len; i++) seen[nseen].items[i].entity = seen[nseen].items[i].scope = NULL;
    nseen++;
    assert_ok(bp_close(r));
  }
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_entries final;
  bp_region all = bp_region_all();
  assert_ok(bp_query(s, &all, &final));
  assert_int_equal(final.len, 1 + 120 * 4);
  for (size_t k = 0; k < nseen; k++) {
    if (seen[k].len > final.len) fail_msg("open %zu listed %zu events, more than were ever written", k, seen[k].len);
    for (size_t i = 0; i < seen[k].len; i++)
      if (!bp_id_eq(seen[k].items[i].event_id, final.items[i].event_id) || seen[k].items[i].global_sequence != i)
        fail_msg("open %zu (of %zu events): event %zu is not the log's event %zu", k, seen[k].len, i, i);
    bp_entries_free(&seen[k]);
  }
  print_message("%zu read-only opens beside the writer, each a prefix of the log\n", nseen);
  free(seen);
  bp_entries_free(&final);
  assert_ok(bp_close(s));
}

/* ------------------------------------------------ projection caches */

static const bp_kind COUNTED[] = {0x1001};

static bp_status count_init(void *state, void *ctx) {
  (void)ctx;
  *(uint64_t *)state = 0;
  return BP_OK;
}
static bp_status count_apply(void *state, const bp_event *ev, void *ctx) {
  (void)ev;
  (void)ctx;
  (*(uint64_t *)state)++;
  return BP_OK;
}
static bp_status count_encode(const void *state, void **bytes, size_t *len, void *ctx) {
  (void)ctx;
  *bytes = malloc(8);
  if (!*bytes) return BP_ENOMEM;
  memcpy(*bytes, state, 8);
  *len = 8;
  return BP_OK;
}
static bp_status count_decode(void *state, const void *bytes, size_t len, void *ctx) {
  (void)ctx;
  if (len != 8) return BP_ESERIAL;
  memcpy(state, bytes, 8);
  return BP_OK;
}
static const bp_projection COUNTER = {BP_PROJECTION_VERSION, "counter", 1, COUNTED, 1, false, count_init,
                                      count_apply, count_encode, count_decode, NULL};

static bool keep_all_but_second(const bp_event *ev, void *ctx) {
  (void)ctx;
  return !(ev->payload_len == 6 && memcmp(ev->payload, "second", 6) == 0);
}

/* A handle without the cache (as `batpak compact` opens a store) tombstones
 * an event: the projection cached before must not be served after it, since
 * a replay now counts one event fewer. */
static void projection_cache_notices_a_compaction_by_another_handle(void **state) {
  fixture *f = *state;
  tu_require_features(BP_FEATURE_LMDB_CACHE);
  f->cfg.log_fn = no_log;
  bp_store *s;
  assert_ok(bp_open_with_lmdb_cache(&f->cfg, &s));
  bp_coord c = {"counted:1", "proj"};
  static const char *const texts[] = {"first", "second", "third", "fourth"};
  for (int i = 0; i < 4; i++) assert_ok(bp_append(s, &c, 0x1001, texts[i], strlen(texts[i]), NULL));
  uint64_t n = 0;
  bp_freshness consistent = {BP_FRESH_CONSISTENT, 0};
  assert_ok(bp_project(s, "counted:1", &COUNTER, NULL, consistent, &n));
  assert_int_equal(n, 4);
  assert_ok(bp_close(s));

  s = open_ok(&f->cfg); /* no cache */
  bp_compaction_config cc = {BP_COMPACT_TOMBSTONE, keep_all_but_second, NULL, 1};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  assert_ok(bp_close(s));

  assert_ok(bp_open_with_lmdb_cache(&f->cfg, &s));
  n = 0;
  assert_ok(bp_project(s, "counted:1", &COUNTER, NULL, consistent, &n));
  if (n != 3) fail_msg("the projection counted %" PRIu64 " events after a tombstone; a replay counts 3", n);
  assert_ok(bp_close(s));
}

/* --------------------------------------------------------- a full disk */

/* A disk with free_bytes left: allocations and writes that grow a file
 * past it fail ENOSPC. */
static int64_t free_bytes;

static int64_t growth(int fd, uint64_t end) {
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  return end > (uint64_t)st.st_size ? (int64_t)(end - (uint64_t)st.st_size) : 0;
}

static int small_fallocate(int fd, int mode, off_t off, off_t len) {
  int64_t g = growth(fd, (uint64_t)(off + len));
  if (g > free_bytes) {
    errno = ENOSPC;
    return -1;
  }
  free_bytes -= g;
  return bp__os_default.fallocate(fd, mode, off, len);
}

static ssize_t small_pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
  size_t n = 0;
  for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
  int64_t g = growth(fd, (uint64_t)off + n);
  if (g > free_bytes) {
    errno = ENOSPC;
    return -1;
  }
  free_bytes -= g;
  return bp__os_default.pwritev(fd, iov, cnt, off);
}

/* With 3 MiB free an append of a few bytes succeeds (space used to be
 * reserved 4 MiB at a time), and a real ENOSPC fails the appends without
 * killing the writer: once space is freed, appends go on. Both write paths:
 * the mapping (sync every 1000) and write() (sync every event). */
static void appends_fit_in_the_space_left_and_a_full_disk_is_not_fatal(void **state) {
  fixture *f = *state;
  f->cfg.log_fn = no_log;
  for (int path = 0; path < 2; path++) {
    f->cfg.sync_every_n_events = path == 0 ? 1000 : 1;
    bp_store *s = open_ok(&f->cfg);
    bp_coord c = {"disk", "full"};
    static bp_id ids[1024];
    size_t n = 0;
    bp_append_receipt r;
    bp__os_table.fallocate = small_fallocate;
    bp__os_table.pwritev = small_pwritev;
    free_bytes = 3 << 20;
    bp_status st = bp_append(s, &c, 0x1001, "ab", 2, &r);
    if (st) fail_msg("path %d: a 2-byte append with 3 MiB free: %s", path, bp_last_error()->message);
    ids[n++] = r.event_id;
    /* Nothing left: appends go on into space reserved already, then fail
     * ENOSPC, again and again, without the writer failing for good. */
    free_bytes = 0;
    char text[4096];
    memset(text, 'x', sizeof text);
    int refused = 0;
    for (int i = 0; i < 2000 && refused < 5; i++) {
      st = bp_append(s, &c, 0x1001, text, sizeof text, &r);
      if (st == BP_OK) {
        assert_int_equal(refused, 0);
        if (n < 1000) ids[n++] = r.event_id; /* at most 3 MiB of 4 KiB frames */
        else fail_msg("path %d: more space was used than there was", path);
        continue;
      }
      if (st != BP_EIO || bp_last_error()->sys_errno != ENOSPC)
        fail_msg("path %d: a full disk gave %s (%s)", path, bp_status_name(st), bp_last_error()->message);
      refused++;
    }
    assert_int_equal(refused, 5);
    free_bytes = 64 << 20;
    for (int i = 0; i < 3; i++) {
      memset(text, 'y', sizeof text);
      st = bp_append(s, &c, 0x1001, text, sizeof text, &r);
      if (st) fail_msg("path %d: space freed, yet the append failed: %s", path, bp_last_error()->message);
      ids[n++] = r.event_id;
    }
    bp_store_diagnostics d;
    bp_diagnostics(s, &d);
    assert_false(d.writer_failed);
    assert_int_equal(d.writer_restarts, 0);
    assert_ok(bp_close(s));
    bp__os_table = bp__os_default;
    tu_assert_acknowledged(&f->cfg, ids, n, NULL, NULL, "after a full disk");
    tu_remove_tree(f->dir);
  }
}

static bool keep_not_second_kind(const bp_event *ev, void *ctx) {
  (void)ctx;
  return ev->header.kind != 0x1002;
}

/* bp_verify accepts what retention leaves: entities whose clocks jump and
 * whose chains link to dropped events, in the merged (lowest) segment,
 * followed by new appends to the same entities. */
static void verify_accepts_retention_gaps(void **state) {
  fixture *f = *state;
  bp_id ids[40];
  /* Entities keep:N and drop:N are one event each: give keep:0 a chain
   * whose middle retention drops. */
  bp_store *s = forty_event_store(f, ids);
  for (int i = 0; i < 6; i++) {
    bp_coord c = {"keep:0", "cursor"};
    assert_ok(bp_append(s, &c, i % 2 ? 0x1002 : 0x1001, "chain link payload", 18, NULL));
  }
  assert_ok(bp_close(s));
  s = open_ok(&f->cfg);
  bp_compaction_config cc = {BP_COMPACT_RETENTION, keep_not_second_kind, NULL, 0};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  bp_coord c = {"keep:0", "cursor"};
  assert_ok(bp_append(s, &c, 0x1001, "after the retention", 19, NULL));
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after retention and new appends");
}

/* ------------------------------------- the crate's view of a torn batch */

/* Writes index.ckpt as the crate would after opening a store whose last
 * segment ends inside a batch: every entry listed, the batch's frames too
 * (it does not know the batch flag), the watermark at the segment's end. */
static void write_crate_like_checkpoint(const char *dir, const bp_entry *e, size_t n, uint64_t wm_off) {
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_map(&b, 5);
  bp__mp_put_lit(&b, "global_sequence");
  bp__mp_put_uint(&b, n);
  bp__mp_put_lit(&b, "watermark_segment_id");
  bp__mp_put_uint(&b, 1);
  bp__mp_put_lit(&b, "watermark_offset");
  bp__mp_put_uint(&b, wm_off);
  /* Names: "" then each entity and scope once. */
  const char *names[16] = {""};
  uint32_t nn = 1;
  uint32_t ids[16][2];
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 2; k++) {
      const char *x = k ? e[i].scope : e[i].entity;
      uint32_t j = 1;
      while (j < nn && strcmp(names[j], x) != 0) j++;
      if (j == nn) names[nn++] = x;
      ids[i][k] = j;
    }
  bp__mp_put_lit(&b, "interner_strings");
  bp__mp_put_array(&b, nn);
  for (uint32_t j = 0; j < nn; j++) bp__mp_put_str(&b, names[j], strlen(names[j]));
  bp__mp_put_lit(&b, "entries");
  bp__mp_put_array(&b, (uint32_t)n);
  for (size_t i = 0; i < n; i++) {
    bp__ientry x;
    memset(&x, 0, sizeof x);
    x.event_id = e[i].event_id;
    x.correlation_id = e[i].correlation_id;
    x.causation_id = e[i].causation_id;
    memcpy(x.prev_hash, e[i].hash_chain.prev_hash, 32);
    memcpy(x.event_hash, e[i].hash_chain.event_hash, 32);
    x.wall_ms = e[i].wall_ms;
    x.offset = e[i].disk_pos.offset;
    x.length = e[i].disk_pos.length;
    x.segment_id = (uint32_t)e[i].disk_pos.segment_id;
    x.entity = ids[i][0];
    x.scope = ids[i][1];
    x.clock = e[i].clock;
    x.kind = e[i].kind;
    bp__checkpoint_put_entry(&b, &x, i);
  }
  assert_false(b.oom);
  uint8_t head[12] = {'F', 'B', 'A', 'T', 'C', 'K', 2, 0};
  bp__put_le32(head + 8, bp__crc32(b.data, b.len));
  char p[4300];
  snprintf(p, sizeof p, "%s/index.ckpt", dir);
  FILE *fp = fopen(p, "wb");
  assert_int_equal(fwrite(head, 1, 12, fp), 12);
  assert_int_equal(fwrite(b.data, 1, b.len, fp), b.len);
  fclose(fp);
  bp__buf_free(&b);
}

/* A batch cut short by a crash, then the crate opened the store and wrote
 * a checkpoint listing the batch's frames. This library shows the store
 * without the batch (all or nothing) on every path, rebuilds rather than
 * believe that checkpoint, and verifies the store once it has finished it. */
static void crate_checkpoint_listing_a_torn_batch_shows_no_part_of_it(void **state) {
  fixture *f = *state;
  f->cfg.log_fn = no_log;
  pid_t pid = fork();
  if (pid == 0) {
    bp_config cfg = f->cfg;
    cfg.sync_every_n_events = 1;
    bp_store *s;
    if (bp_open(&cfg, &s)) _exit(1);
    bp_coord c = {"order:1", "shop"};
    if (bp_append(s, &c, 0x1001, "placed", 6, NULL) || bp_append(s, &c, 0x1001, "paid", 4, NULL)) _exit(2);
    bp_event_in evs[3];
    memset(evs, 0, sizeof evs);
    static const char *const t[] = {"line 1", "line 2", "shipped"};
    for (int i = 0; i < 3; i++) {
      evs[i].coord = c;
      evs[i].kind = 0x1002;
      evs[i].payload = t[i];
      evs[i].len = strlen(t[i]);
    }
    if (bp_append_batch(s, evs, 3, NULL)) _exit(3);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  /* All five are there; then the crash is made to cut the batch's last frame. */
  bp_store *s;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_entries all;
  bp_region r = bp_region_all();
  assert_ok(bp_query(s, &r, &all));
  assert_int_equal(all.len, 5);
  bp_entry e[5];
  memcpy(e, all.items, sizeof e);
  char names[5][2][32];
  for (int i = 0; i < 5; i++) {
    snprintf(names[i][0], 32, "%s", e[i].entity);
    snprintf(names[i][1], 32, "%s", e[i].scope);
    e[i].entity = names[i][0];
    e[i].scope = names[i][1];
  }
  bp_entries_free(&all);
  assert_ok(bp_close(s));
  char seg[4300];
  snprintf(seg, sizeof seg, "%s/000001.fbat", f->dir);
  assert_int_equal(truncate(seg, (off_t)e[4].disk_pos.offset), 0);
  write_crate_like_checkpoint(f->dir, e, 4, e[4].disk_pos.offset);
  tu_assert_verifies(f->dir, "the crate's view of a torn batch");

  for (int path = 0; path < 3; path++) {
    bp_config cfg = f->cfg;
    cfg.enable_checkpoint = path != 1;
    bp_store *o;
    if (path == 2) assert_ok(bp_open(&cfg, &o));
    else assert_ok(bp_open_readonly(&cfg, &o));
    bp_store_stats st;
    bp_stats(o, &st);
    if (st.event_count != 2) fail_msg("path %d: %" PRIu64 " events; the batch was cut short, 2 stand", path, st.event_count);
    assert_ok(bp_close(o));
  }
  tu_assert_verifies(f->dir, "after a read-write open finished the store");
  bp_store *o;
  assert_ok(bp_open(&f->cfg, &o));
  bp_store_diagnostics d;
  bp_diagnostics(o, &d);
  assert_int_equal(d.event_count, 2);
  assert_ok(bp_close(o));
}

/* A retention compaction that fails, or crashes, at any file-system step
 * (the cursor files it re-anchors among them) never makes a durable cursor
 * skip an event: after the restart it delivers a suffix of the log that
 * holds every event after the one it had delivered (a compaction that did
 * not commit may make it deliver a few again: at-least-once). */
static void retention_failing_at_every_step_never_makes_a_cursor_skip(void **state) {
  fixture *f = *state;
  bp_id ids[40];
  bp_store *s = forty_event_store(f, ids);
  bp_region all = bp_region_all();
  bp_entry e;
  bp_cursor *cur = reader_after(s, ids, 26);
  assert_ok(bp_cursor_commit(cur));
  bp_cursor_close(cur);
  assert_ok(bp_close(s));
  char pristine[4300], from[4400], to[4400];
  snprintf(pristine, sizeof pristine, "%s/pristine", f->tmp);
  tu_copy_dir(f->dir, pristine);
  snprintf(from, sizeof from, "%s/cursors", f->dir);
  snprintf(to, sizeof to, "%s/cursors", pristine);
  tu_copy_dir(from, to);
  int k = 0;
  for (;; k++) {
    bool hit = false;
    for (int crash = 0; crash < 2; crash++) {
      tu_remove_tree(f->dir);
      tu_copy_dir(pristine, f->dir);
      snprintf(from, sizeof from, "%s/cursors", pristine);
      snprintf(to, sizeof to, "%s/cursors", f->dir);
      tu_copy_dir(from, to);
      pid_t pid = fork();
      if (pid == 0) {
        bp_store *w;
        if (bp_open(&f->cfg, &w)) _exit(1);
        ff_arm(k, crash);
        bp_compaction_config cc = {BP_COMPACT_RETENTION, keep_not_dropped, NULL, 0};
        bp_compaction_result res;
        bp_status st = bp_compact(w, &cc, &res);
        bool h = ff_hit();
        ff_disarm();
        bp_close(w);
        _exit(h ? (st ? 10 : 11) : 12);
      }
      int ws;
      assert_int_equal(waitpid(pid, &ws, 0), pid);
      assert_true(WIFEXITED(ws));
      int code = WEXITSTATUS(ws);
      if (code == FF_CRASH_EXIT || code == 10 || code == 11) hit = true;
      else if (code != 12) fail_msg("step %d: the child ended with %d", k, code);
      /* The log now, and what the cursor delivers. */
      s = open_ok(&f->cfg);
      bp_entries log;
      assert_ok(bp_query(s, &all, &log));
      cur = bp_cursor_open_durable(s, "reader", &all);
      assert_non_null(cur);
      size_t nd = 0;
      bp_id got[40];
      while (bp_cursor_poll(cur, &e) == BP_OK) {
        assert_true(nd < 40);
        got[nd++] = e.event_id;
      }
      bp_cursor_close(cur);
      if (nd > log.len) fail_msg("step %d: delivered more than the log holds", k);
      for (size_t i = 0; i < nd; i++)
        if (!bp_id_eq(got[i], log.items[log.len - nd + i].event_id))
          fail_msg("step %d%s: the cursor skipped an event (delivered %zu of %zu)", k, crash ? " (crash)" : "", nd,
                   log.len);
      for (int i = 26; i < 40; i++) {
        bool in_log = false, delivered = false;
        for (size_t j = 0; j < log.len; j++) in_log |= bp_id_eq(log.items[j].event_id, ids[i]);
        for (size_t j = 0; j < nd; j++) delivered |= bp_id_eq(got[j], ids[i]);
        if (in_log && !delivered) fail_msg("step %d%s: event %d was skipped", k, crash ? " (crash)" : "", i);
      }
      bp_entries_free(&log);
      assert_ok(bp_close(s));
    }
    if (!hit) break;
  }
  print_message("retention: a failure and a crash at each of %d steps, cursors exact or at-least-once\n", k);
  assert_true(k > 5);
  tu_remove_tree(pristine);
}

/* An idempotency key keeps working after retention drops its event: a
 * repeat writes nothing (its receipt says the event was retired), a
 * different event under the key is a conflict; across reopens too. */
static void idempotency_keys_survive_retention_of_their_event(void **state) {
  fixture *f = *state;
  bp_id ids[40];
  bp_store *s = forty_event_store(f, ids);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  bp_coord doomed = {"drop:keyed", "cursor"};
  assert_ok(bp_append_with(s, &doomed, 0x1001, "keyed payload", 13, &o, NULL));
  assert_ok(bp_close(s));
  s = open_ok(&f->cfg);
  bp_compaction_config cc = {BP_COMPACT_RETENTION, keep_not_dropped, NULL, 1};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  bp_store_stats st;
  bp_stats(s, &st);
  uint64_t count = st.event_count;
  assert_int_equal(count, 20);
  for (int round = 0; round < 2; round++) {
    bp_append_receipt r;
    assert_ok(bp_append_with(s, &doomed, 0x1001, "keyed payload", 13, &o, &r));
    assert_true(bp_id_eq(r.event_id, o.idempotency_key));
    assert_true(r.sequence == BP_SEQUENCE_RETIRED);
    assert_status(bp_append_with(s, &doomed, 0x1001, "other payload", 13, &o, &r), BP_EIDEMPOTENCY_CONFLICT);
    bp_stats(s, &st);
    assert_int_equal(st.event_count, count);
    assert_ok(bp_close(s));
    s = open_ok(&f->cfg); /* and after a reopen, from retired.keys */
  }
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after retired keys");
}

/* Without a checkpoint, the sealed footers of later segments still number
 * their events: a segment deleted from the middle leaves the next footer
 * numbering from further on than the segments before it hold, which no
 * retention explains (none ran): BP_ECORRUPT, never a store quietly short. */
static void deleted_segment_without_checkpoint_is_found_by_the_next_footer(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  f->cfg.enable_checkpoint = false;
  f->cfg.log_fn = no_log;
  bp_store *s = open_ok(&f->cfg);
  for (int i = 0; i < 30; i++) {
    bp_coord c = {"thing:1", "scope"};
    assert_ok(bp_append(s, &c, 0x1001, "a payload of some bytes", 23, NULL));
  }
  assert_ok(bp_close(s));
  char p[4300];
  snprintf(p, sizeof p, "%s/000002.fbat", f->dir);
  assert_int_equal(unlink(p), 0);
  bp_store *r = NULL;
  assert_status(bp_open_readonly(&f->cfg, &r), BP_ECORRUPT);
  assert_non_null(strstr(bp_last_error()->message, "segment 000003"));
  assert_status(bp_open(&f->cfg, &r), BP_ECORRUPT);
  f->cfg.salvage = true;
  assert_ok(bp_open_readonly(&f->cfg, &r));
  assert_ok(bp_close(r));
}

/* A full disk while segments rotate: sealing a full segment or starting the
 * next one fails the appends with ENOSPC, never the writer; once space is
 * freed the store goes on, and every acknowledged event is there. */
static void a_full_disk_across_rotations_is_not_fatal(void **state) {
  fixture *f = *state;
  f->cfg.log_fn = no_log;
  f->cfg.segment_max_bytes = 8192;
  for (int path = 0; path < 2; path++) {
    f->cfg.sync_every_n_events = path == 0 ? 1000 : 1;
    bp_store *s = open_ok(&f->cfg);
    bp_coord c = {"disk", "rotation"};
    static bp_id ids[256];
    size_t n = 0;
    char text[700];
    memset(text, 'r', sizeof text);
    bp__os_table.fallocate = small_fallocate;
    bp__os_table.pwritev = small_pwritev;
    for (int rotation = 0; rotation < 3; rotation++) {
      /* Fill the active segment to its limit with room to spare... */
      free_bytes = 64 << 20;
      bp_store_diagnostics d;
      do {
        bp_append_receipt r;
        assert_ok(bp_append(s, &c, 0x1001, text, sizeof text, &r));
        assert_true(n < 256);
        ids[n++] = r.event_id;
        bp_diagnostics(s, &d);
      } while (d.active_segment_bytes < f->cfg.segment_max_bytes);
      /* ...then the disk is full when the next append must seal it and
       * start the next segment: refused, again and again, not fatal. */
      free_bytes = 0;
      for (int i = 0; i < 4; i++) {
        bp_status st = bp_append(s, &c, 0x1001, text, sizeof text, NULL);
        if (st != BP_EIO || bp_last_error()->sys_errno != ENOSPC)
          fail_msg("path %d rotation %d: a full disk gave %s (%s)", path, rotation, bp_status_name(st),
                   bp_last_error()->message);
      }
      bp_diagnostics(s, &d);
      assert_false(d.writer_failed);
    }
    free_bytes = 64 << 20;
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, 0x1001, text, sizeof text, &r));
    ids[n++] = r.event_id;
    assert_ok(bp_close(s));
    bp__os_table = bp__os_default;
    tu_assert_acknowledged(&f->cfg, ids, n, NULL, NULL, "after a full disk across rotations");
    tu_remove_tree(f->dir);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(a_full_disk_across_rotations_is_not_fatal, tu_store_setup, teardown),
      cmocka_unit_test_setup_teardown(deleted_segment_without_checkpoint_is_found_by_the_next_footer, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(idempotency_keys_survive_retention_of_their_event, tu_store_setup, teardown),
      cmocka_unit_test_setup_teardown(retention_failing_at_every_step_never_makes_a_cursor_skip, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(crate_checkpoint_listing_a_torn_batch_shows_no_part_of_it, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(verify_accepts_retention_gaps, tu_store_setup, teardown),
      cmocka_unit_test_setup_teardown(appends_fit_in_the_space_left_and_a_full_disk_is_not_fatal, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(projection_cache_notices_a_compaction_by_another_handle, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(readonly_opens_beside_a_compacting_writer_see_one_set_of_segments,
                                      tu_store_setup, teardown),
      cmocka_unit_test_setup_teardown(durable_cursor_resumes_after_retention_dropped_its_last_event, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(cursor_commit_after_a_compaction_saves_todays_numbering, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(snapshot_fsyncs_the_parent_of_the_directory_it_creates, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(damaged_footer_entry_is_never_believed_and_is_rewritten, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(crate_footer_with_a_flipped_field_is_not_believed, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(crashed_segment_is_finished_and_later_damage_is_not_a_torn_tail, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(damage_in_an_unsealed_segment_before_the_newest_is_corruption, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(missing_emptied_or_cut_sealed_segment_fails_naming_it, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(reserved_kinds_are_refused_on_every_append_path, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(coordinates_that_are_not_utf8_fail_ecoord, tu_store_setup, teardown),
      cmocka_unit_test_setup_teardown(refused_appends_and_idle_opens_leave_every_file_as_it_was, tu_store_setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(appends_racing_close_fail_eshutdown_and_lose_nothing, tu_store_setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
