/*
 * test_corruption.c - bit rot on closed stores, on every way of opening them.
 *
 * Stores (each closed, so that no torn tail is legitimate):
 *   ours           24 events over several sealed segments, and its
 *                  persistent index (index/)
 *   ours-noindex   the same without it
 *   ours-ckpt      the same with the crate's index.ckpt instead
 *   ours-crashed   ours, then durable appends by a process that died without
 *                  closing, then a read-write open that finished the crashed
 *                  segment (the checkpoint stays stale)
 *   ours-retained  ours after a retention compaction and more appends
 *   crate          the Rust crate's basic fixture (unsealed footers, its
 *                  checkpoint)
 *   crate-crashed  the crate's crashed fixture, finished by a read-write open
 * Open paths: read-only and read-write, each with enable_checkpoint on and
 * off. For every byte of every file (every Nth, see below) a copy of the
 * store gets that byte flipped and is opened on the path. Then one of:
 *   refused     the open fails BP_ECORRUPT (detected);
 *   read-fail   it lists every event identically, and a read of some event
 *               fails BP_ECRC or BP_ECORRUPT (detected);
 *   identical   every field of every entry and event equals the unflipped
 *               store's, opened the same way (survived);
 *   wrong       anything else: the test fails at once.
 * A read-write open is closed, and the store opened again read-only: what it
 * repaired must show the same events. On the read-only path with the
 * checkpoint on, bp_verify must also report every flip, but for a segment
 * header's created_ns value (no checksum covers it in the format, and any
 * timestamp is a plausible one; no event changes), and but for bytes of
 * index files past the events the index state lists and the slack after
 * each copy of index/state (they carry nothing any open reads).
 *
 * Then every file is cut short at every (5N+2)th length, on the read-only
 * paths: with a checkpoint that covers the file the cut is refused or
 * changes nothing; without one, a segment cut at a frame's end (or the newest
 * cut anywhere) can only be read as a crash (docs/FORMAT.md section 2): its
 * events after the cut are gone, and those shown must be unchanged.
 *
 * BATPAK_CORRUPTION_STRIDE=N tries every Nth byte on the read-only path with
 * the checkpoint (default 11) and every 5N+2th on the others; 1 tries every
 * byte everywhere (about 300k opens).
 */
#include "testutil.h"
#include "store/ixfile.h"
#include "store/os.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { EVENTS = 24 };

static void config_for(bp_config *cfg, const char *dir) {
  bp_config_init(cfg, dir);
  cfg->segment_max_bytes = 2048;
}

static void no_log(int level, const char *msg, void *ctx) {
  (void)level;
  (void)msg;
  (void)ctx;
}

static void append_some(bp_store *s, int from, int n) {
  for (int i = from; i < from + n; i++) {
    char entity[32];
    uint8_t payload[160];
    snprintf(entity, sizeof entity, "thing:%d", i % 4);
    size_t len = 20 + (size_t)(i * 37) % 120;
    payload[0] = 0xc4; /* MessagePack bin 8 */
    payload[1] = (uint8_t)(len - 2);
    for (size_t k = 2; k < len; k++) payload[k] = (uint8_t)(i * 31 + k);
    bp_coord c = {entity, i % 3 ? "north" : "south"};
    bp_append_options o;
    memset(&o, 0, sizeof o);
    if (i % 5 == 1) o.causation_id = bp_id_v7();
    assert_ok(bp_append_with(s, &c, (bp_kind)(0x1001 + i % 2), payload, len, &o, NULL));
  }
}

static void build_ours(const char *dir) {
  bp_config cfg;
  config_for(&cfg, dir);
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  append_some(s, 0, EVENTS);
  assert_ok(bp_close(s));
}

static void reopen_and_close(const char *dir) {
  bp_config cfg;
  config_for(&cfg, dir);
  cfg.log_fn = no_log;
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  assert_ok(bp_close(s));
}

static void build_crashed(const char *dir) {
  build_ours(dir);
  pid_t pid = fork();
  if (pid == 0) {
    bp_config cfg;
    config_for(&cfg, dir);
    cfg.sync_every_n_events = 1;
    bp_store *s;
    if (bp_open(&cfg, &s)) _exit(1);
    append_some(s, EVENTS, 6);
    _exit(0); /* no close: the segment stays unsealed */
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  reopen_and_close(dir);
}

static bool keep_most(const bp_event *ev, void *ctx) {
  (void)ctx;
  return ev->payload_len % 3 != 0;
}

static void build_retained(const char *dir) {
  build_ours(dir);
  bp_config cfg;
  config_for(&cfg, dir);
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  /* A durable cursor part way, so that its file is swept too. */
  bp_region all = bp_region_all();
  bp_cursor *cur = bp_cursor_open_durable(s, "reader", &all);
  bp_entry e;
  for (int i = 0; i < 7; i++) assert_ok(bp_cursor_poll(cur, &e));
  assert_ok(bp_cursor_commit(cur));
  bp_cursor_close(cur);
  bp_compaction_config cc = {BP_COMPACT_RETENTION, keep_most, NULL, 0};
  bp_compaction_result res;
  assert_ok(bp_compact(s, &cc, &res));
  append_some(s, 100, 4);
  assert_ok(bp_close(s));
}

static void copy_fixture(const char *name, const char *dir) {
  char src[4096];
  tu_fixture_path(name, "", src, sizeof src);
  tu_copy_dir(src, dir);
  char m[4200];
  snprintf(m, sizeof m, "%s/manifest.json", dir);
  unlink(m);
  chmod(dir, 0700);
}

typedef struct path {
  const char *name;
  bool readonly, checkpoint;
} path;

static const path PATHS[] = {
    {"read-only", true, true},
    {"read-only, checkpoint off", true, false},
    {"read-write", false, true},
    {"read-write, checkpoint off", false, false},
};

typedef struct tally {
  uint64_t flips, refused, read_fail, identical;
} tally;

static bp_status open_on(const char *dir, const path *p, bp_store **s) {
  bp_config cfg;
  config_for(&cfg, dir);
  cfg.enable_checkpoint = p->checkpoint;
  cfg.log_fn = no_log;
  return p->readonly ? bp_open_readonly(&cfg, s) : bp_open(&cfg, s);
}

/* The store in dir as the path shows it; false when the open refused. */
static bool take(const char *dir, const path *p, tu_image *im, const char *what) {
  bp_store *s = NULL;
  bp_status st = open_on(dir, p, &s);
  if (st) {
    if (st != BP_ECORRUPT)
      fail_msg("%s: the open returned %s (%s), expected BP_OK or BP_ECORRUPT", what, bp_status_name(st),
               bp_last_error()->message);
    assert_null(s);
    return false;
  }
  tu_image_take(s, im);
  assert_ok(bp_close(s));
  return true;
}

static void classify(const char *dir, const path *p, const tu_image *want, tally *t, const char *what) {
  tu_image got;
  if (!take(dir, p, &got, what)) {
    t->refused++;
    return;
  }
  size_t read_fail = 0;
  const char *d = tu_image_diff(&got, want, true, &read_fail);
  if (d) fail_msg("%s: WRONG: %s", what, d);
  tu_image_free(&got);
  if (!p->readonly) {
    /* What the read-write open repaired (footers, crashed segments, the
     * checkpoint) must still show the same events. */
    static const path again = {"read-only again", true, true};
    tu_image after;
    if (take(dir, &again, &after, what)) {
      size_t rf = 0;
      d = tu_image_diff(&after, want, true, &rf);
      if (d) fail_msg("%s, reopened after the read-write open: WRONG: %s", what, d);
      tu_image_free(&after);
    }
  }
  if (read_fail) t->read_fail++;
  else t->identical++;
}

/* Where a segment header's created_ns value lies in the file, [*from, *to). */
static void created_ns_range(const char *file, const uint8_t *head, size_t len, size_t *from, size_t *to) {
  *from = *to = 0;
  const uint8_t *key = len > 64 && strstr(file, ".fbat") ? memmem(head, 64, "created_ns", 10) : NULL;
  if (key) {
    *from = (size_t)(key - head) + 10;
    *to = *from + 9; /* the value's type byte and up to 8 bytes */
  }
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A store's files: its own and those of cursors/ (tu_copy_dir takes index/). */
static void copy_store(const char *src, const char *dst) {
  tu_copy_dir(src, dst);
  char a[4300], b[4300];
  snprintf(a, sizeof a, "%s/cursors", src);
  snprintf(b, sizeof b, "%s/cursors", dst);
  struct stat st;
  if (stat(a, &st) == 0) tu_copy_dir(a, b);
}

static void list_files(const char *root, const char *sub, char **files, size_t *n) {
  char dirpath[4300];
  snprintf(dirpath, sizeof dirpath, "%s%s%s", root, sub ? "/" : "", sub ? sub : "");
  DIR *d = opendir(dirpath);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.' || strcmp(de->d_name, "batpak.lock") == 0 || *n == 64) continue;
    char rel[600];
    snprintf(rel, sizeof rel, "%s%s%s", sub ? sub : "", sub ? "/" : "", de->d_name);
    if (!sub && (strcmp(de->d_name, "cursors") == 0 || strcmp(de->d_name, "index") == 0))
      list_files(root, de->d_name, files, n);
    else files[(*n)++] = strdup(rel);
  }
  closedir(d);
}

/* The bytes of a file bp_verify must find a flip in: ranges [from, to). */
typedef struct checked {
  size_t from[2], to[2];
  int n;
} checked;

static bool is_checked(const checked *c, size_t at) {
  for (int i = 0; i < c->n; i++)
    if (at >= c->from[i] && at < c->to[i]) return true;
  return false;
}

static size_t state_copy_len(const uint8_t *copy) {
  return 112 + 32 * (size_t)(bp__get_le32(copy + 52) + bp__get_le32(copy + 80)) + 4;
}

/* Which bytes of a file bp_verify judges. In the index (docs/INDEX.md):
 * entries and scan fields past the events the state lists are its own torn
 * tail after a crash (or space allocated ahead), and the slack after each
 * copy of index/state is unused; every open ignores them. Everything for
 * other files. */
static checked checked_bytes(const char *clean, const char *file) {
  bool entries = strcmp(file, "index/entries") == 0, scan = strcmp(file, "index/scan") == 0;
  bool state = strcmp(file, "index/state") == 0;
  checked c = {{0, 0}, {SIZE_MAX, 0}, 1};
  /* The head file is a hint for followers, believed only while its writer
   * is live (none is here) and checked against the log even then: a flip
   * in it must leave every open reading the same events (classify), and
   * bp_verify has nothing to find. */
  if (strcmp(file, "batpak.head") == 0) return (checked){{0, 0}, {0, 0}, 0};
  if (!entries && !scan && !state) return c;
  char ixdir[4400];
  snprintf(ixdir, sizeof ixdir, "%s/index", clean);
  bp__ixstate st;
  assert_ok(bp__ixstate_read(ixdir, &st));
  if (state) {
    char p[4400];
    snprintf(p, sizeof p, "%s/state", ixdir);
    size_t flen;
    uint8_t *b = tu_read_file(p, &flen);
    assert_non_null(b);
    c.n = 0;
    for (size_t k = 0; k < 2; k++) {
      const uint8_t *copy = b + k * st.at.slot_bytes;
      if (memcmp(copy, "BPXSTAT1", 8) != 0) continue; /* never written */
      c.from[c.n] = k * st.at.slot_bytes;
      c.to[c.n++] = k * st.at.slot_bytes + state_copy_len(copy);
    }
    free(b);
  } else {
    /* A scan chunk is at least 14 bytes an event (any layout); its last
     * chunk filled in part is covered by its own CRC, checked all the same. */
    c.to[0] = entries ? 4096 + st.count * 152 : 4096 + (st.count >> 13) * (14u << 13);
  }
  bp__ixstate_free(&st);
  return c;
}

static void sweep_store(const char *label, const char *clean, const char *work, size_t stride_main) {
  size_t stride_other = 5 * stride_main + 2;
  char *files[64];
  size_t nfiles = 0;
  list_files(clean, NULL, files, &nfiles);
  qsort(files, nfiles, sizeof *files, cmp_str);

  for (size_t pi = 0; pi < sizeof PATHS / sizeof *PATHS; pi++) {
    const path *p = &PATHS[pi];
    bool main_path = p->readonly && p->checkpoint;
    size_t stride = main_path ? stride_main : stride_other;
    tu_remove_tree(work);
    copy_store(clean, work);
    tu_image want;
    char what[512];
    snprintf(what, sizeof what, "%s, %s, unflipped", label, p->name);
    if (!take(work, p, &want, what)) fail_msg("%s: refused (%s)", what, bp_last_error()->message);
    tally t = {0};
    for (size_t fi = 0; fi < nfiles; fi++) {
      char src[4400], dst[4400];
      snprintf(src, sizeof src, "%s/%s", clean, files[fi]);
      size_t len;
      uint8_t *bytes = tu_read_file(src, &len);
      assert_non_null(bytes);
      size_t ts_from, ts_to;
      created_ns_range(files[fi], bytes, len, &ts_from, &ts_to);
      free(bytes);
      checked covered = checked_bytes(clean, files[fi]);
      /* The index's large files are mostly entries and scan fields of a
       * few kinds of bytes: at most about 800 flips each, spread over the
       * whole file (every chunk, its CRC and the bytes past the events). */
      size_t step = stride;
      if (strncmp(files[fi], "index/", 6) == 0 && len / 800 > step) step = len / 800 | 1;
      for (size_t at = (fi * 7) % step; at < len; at += step) {
        if (!p->readonly) {
          /* A read-write open may write: each flip gets a fresh copy. */
          tu_remove_tree(work);
          copy_store(clean, work);
        }
        snprintf(dst, sizeof dst, "%s/%s", work, files[fi]);
        tu_flip_byte(dst, (long)at, 0x5a);
        snprintf(what, sizeof what, "%s, %s: %s byte %zu flipped", label, p->name, files[fi], at);
        if (main_path && !(at >= ts_from && at < ts_to) && is_checked(&covered, at)) {
          bp_verify_report rep;
          bp_status vst = bp_verify(work, &rep);
          if (vst != BP_ECORRUPT)
            fail_msg("%s: bp_verify returned %s with %zu problems", what, bp_status_name(vst), rep.problem_count);
          bp_verify_report_free(&rep);
        }
        classify(work, p, &want, &t, what);
        if (p->readonly) tu_flip_byte(dst, (long)at, 0x5a);
        t.flips++;
      }
    }
    tu_image_free(&want);
    print_message("%-14s %-27s flips %5" PRIu64 "  detected %5" PRIu64 " (refused %" PRIu64 ", read fails %" PRIu64
                  ")  survived identical %5" PRIu64 "  wrong 0\n",
                  label, p->name, t.flips, t.refused + t.read_fail, t.refused, t.read_fail, t.identical);
  }
  for (size_t i = 0; i < nfiles; i++) free(files[i]);
}

/* Every event of got is one of want's, with the same fields but for its
 * global sequence (events before it may be gone); NULL or what differs. */
static const char *subset_of(const tu_image *got, const tu_image *want) {
  static char why[160];
  size_t j = 0;
  for (size_t i = 0; i < got->n; i++) {
    while (j < want->n && !bp_id_eq(want->v[j].entry.event_id, got->v[i].entry.event_id)) j++;
    if (j == want->n) {
      snprintf(why, sizeof why, "event %zu is not one of the store's, or out of order", i);
      return why;
    }
    tu_image one = {&got->v[i], 1}, other = {&want->v[j], 1};
    tu_shown a = got->v[i];
    a.entry.global_sequence = want->v[j].entry.global_sequence;
    one.v = &a;
    const char *d = tu_image_diff(&one, &other, true, NULL);
    if (d) {
      snprintf(why, sizeof why, "event %zu: %s", i, d);
      return why;
    }
    j++;
  }
  return NULL;
}

/* A file of the store cut short at every Nth length. With the checkpoint the
 * cut is refused or changes nothing; without it (the format has no record of
 * a clean close) a segment cut at a frame's end, or the newest segment cut
 * anywhere, can only be read as a crash: the events after the cut are gone,
 * and every event still shown must be unchanged. */
static void truncation_sweep(const char *label, const char *clean, const char *work, size_t stride) {
  char *files[64];
  size_t nfiles = 0;
  list_files(clean, NULL, files, &nfiles);
  qsort(files, nfiles, sizeof *files, cmp_str);
  static const path paths[] = {{"read-only", true, true}, {"read-only, checkpoint off", true, false}};
  char ck[4400];
  snprintf(ck, sizeof ck, "%s/index.ckpt", clean);
  struct stat cst;
  bool store_has_checkpoint = stat(ck, &cst) == 0;
  for (size_t pi = 0; pi < 2; pi++) {
    const path *p = &paths[pi];
    bool checkpoint = p->checkpoint && store_has_checkpoint;
    tu_remove_tree(work);
    copy_store(clean, work);
    tu_image want;
    if (!take(work, p, &want, label)) fail_msg("%s: refused unflipped", label);
    uint64_t cuts = 0, refused = 0, identical = 0, lost = 0;
    for (size_t fi = 0; fi < nfiles; fi++) {
      char src[4400], dst[4400];
      snprintf(src, sizeof src, "%s/%s", clean, files[fi]);
      snprintf(dst, sizeof dst, "%s/%s", work, files[fi]);
      struct stat sb;
      assert_int_equal(stat(src, &sb), 0);
      size_t step = stride;
      if (strncmp(files[fi], "index/", 6) == 0 && (size_t)sb.st_size / 200 > step) step = (size_t)sb.st_size / 200 | 1;
      for (size_t len = (fi * 3) % step; len < (size_t)sb.st_size; len += step) {
        assert_int_equal(truncate(dst, (off_t)len), 0);
        char what[512];
        snprintf(what, sizeof what, "%s, %s: %s cut to %zu bytes", label, p->name, files[fi], len);
        tu_image got;
        cuts++;
        if (!take(work, p, &got, what)) {
          refused++;
        } else {
          size_t rf = 0;
          const char *d = tu_image_diff(&got, &want, true, &rf);
          if (!d) {
            identical++;
          } else {
            bool segment = strstr(files[fi], ".fbat") != NULL;
            const char *sd = subset_of(&got, &want);
            if (checkpoint || !segment || sd) fail_msg("%s: WRONG: %s", what, sd ? sd : d);
            lost++;
          }
          tu_image_free(&got);
        }
        /* Back to whole. */
        tu_remove_tree(work);
        copy_store(clean, work);
      }
    }
    tu_image_free(&want);
    print_message("%-14s %-27s cuts  %5" PRIu64 "  refused %5" PRIu64 "  survived identical %5" PRIu64
                  "  read as a crash %3" PRIu64 "  wrong 0\n",
                  label, p->name, cuts, refused, identical, lost);
  }
  for (size_t i = 0; i < nfiles; i++) free(files[i]);
}

/* Flushes that the sweep's thousands of read-write opens would wait for:
 * durability is not what is tested here. */
static int no_sync(int fd) {
  (void)fd;
  return 0;
}

static void every_flip_on_every_open_path_is_detected_or_survived_identically(void **state) {
  (void)state;
  const char *env = getenv("BATPAK_CORRUPTION_STRIDE");
  size_t stride = env && atoi(env) > 0 ? (size_t)atoi(env) : 11;
  bp__os_table.fsync = no_sync;
  bp__os_table.fdatasync = no_sync;
  char *tmp = tu_make_temp_dir("corrupt");
  struct {
    const char *label;
    void (*build)(const char *dir);
    const char *fixture;
    int variant; /* 1: without its persistent index; 2: with index.ckpt instead */
    bool finish;
  } stores[] = {
      {"ours", build_ours, NULL, 0, false},
      {"ours-noindex", build_ours, NULL, 1, false},
      {"ours-ckpt", build_ours, NULL, 2, false},
      {"ours-crashed", build_crashed, NULL, 0, false},
      {"ours-retained", build_retained, NULL, 0, false},
      {"crate", NULL, "basic", 0, false},
      {"crate-crashed", NULL, "crashed", 0, true},
  };
  for (size_t i = 0; i < sizeof stores / sizeof *stores; i++) {
    char clean[4200], work[4200];
    snprintf(clean, sizeof clean, "%s/%s", tmp, stores[i].label);
    snprintf(work, sizeof work, "%s/work", tmp);
    if (stores[i].build) stores[i].build(clean);
    else copy_fixture(stores[i].fixture, clean);
    if (stores[i].finish) reopen_and_close(clean);
    if (stores[i].variant == 1) tu_drop_index(clean);
    if (stores[i].variant == 2) assert_ok(tu_write_checkpoint(clean));
    sweep_store(stores[i].label, clean, work, stride);
    truncation_sweep(stores[i].label, clean, work, 5 * stride + 2);
    tu_remove_tree(clean);
  }
  bp__os_table = bp__os_default;
  tu_remove_tree(tmp);
  free(tmp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_flip_on_every_open_path_is_detected_or_survived_identically),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
