/*
 * test_interop.c - stores written by batpak 0.2.0 (the Rust crate) open here
 * with every event intact, and this library writes the crate's bytes.
 */
#include "testutil.h"
#include "store/store_impl.h"

#include <json-c/json.h>
#include <sys/stat.h>

static char *copy_fixture(const char *name) {
  char src[4096];
  snprintf(src, sizeof src, "%s/fixtures/%s", BATPAK_TEST_DATA_DIR, name);
  char *tmp = tu_make_temp_dir(name);
  char *dst = malloc(strlen(tmp) + 8);
  sprintf(dst, "%s/store", tmp);
  tu_copy_dir(src, dst);
  /* manifest.json is not part of the store: leave it, it is ignored as a foreign file */
  free(tmp);
  return dst;
}

static void remove_copy(char *dir) {
  char *parent = strdup(dir);
  *strrchr(parent, '/') = '\0';
  tu_remove_tree(parent);
  free(parent);
  free(dir);
}

static void check_event(bp_store *s, struct json_object *e) {
  bp_id id = tu_id(e, "event_id");
  bp_event *ev;
  assert_ok(bp_get(s, id, &ev));
  assert_true(bp_id_eq(ev->header.correlation_id, tu_id(e, "correlation_id")));
  assert_true(bp_id_eq(ev->header.causation_id, tu_id(e, "causation_id")));
  assert_int_equal(ev->header.kind, tu_u64(e, "kind"));
  assert_int_equal(ev->header.flags, tu_u64(e, "flags"));
  assert_int_equal(ev->header.timestamp_us, (int64_t)tu_u64(e, "timestamp_us"));
  assert_int_equal(ev->header.position.sequence, tu_u64(e, "clock"));
  assert_string_equal(ev->entity, tu_str(e, "entity"));
  assert_string_equal(ev->scope, tu_str(e, "scope"));
  size_t plen;
  uint8_t *payload = tu_from_hex(tu_str(e, "payload_msgpack_hex"), &plen);
  tu_assert_bytes_eq(ev->payload, ev->payload_len, payload, plen, "payload");
  uint8_t h[32];
  tu_hash(e, "event_hash", h);
  assert_memory_equal(ev->hash_chain.event_hash, h, 32);
  tu_hash(e, "prev_hash", h);
  assert_memory_equal(ev->hash_chain.prev_hash, h, 32);
  free(payload);
  bp_event_free(ev);

  bp_entry en;
  assert_ok(bp_get_entry(s, id, &en));
  assert_int_equal(en.global_sequence, tu_u64(e, "global_sequence"));
  assert_int_equal(en.clock, tu_u64(e, "clock"));
  assert_int_equal(en.wall_ms, tu_u64(e, "wall_ms"));
  struct json_object *pos = tu_field(e, "disk_pos");
  assert_int_equal(en.disk_pos.segment_id, tu_u64(pos, "segment_id"));
  assert_int_equal(en.disk_pos.offset, tu_u64(pos, "offset"));
  assert_int_equal(en.disk_pos.length, tu_u64(pos, "length"));
}

/* Every manifest event that should survive is there, and nothing else. */
static void check_store(bp_store *s, struct json_object *m, size_t expect_events) {
  struct json_object *events = tu_field(m, "events");
  struct json_object *trunc = NULL;
  bp_id torn = BP_ID_NIL;
  if (json_object_object_get_ex(m, "truncation", &trunc)) torn = tu_id(trunc, "torn_event_id");
  size_t found = 0;
  for (size_t i = 0; i < json_object_array_length(events); i++) {
    struct json_object *e = json_object_array_get_idx(events, i);
    if (bp_id_eq(tu_id(e, "event_id"), torn)) {
      bp_event *ev;
      assert_status(bp_get(s, torn, &ev), BP_ENOTFOUND);
      continue;
    }
    check_event(s, e);
    found++;
  }
  assert_int_equal(found, expect_events);
  bp_store_stats stats;
  bp_stats(s, &stats);
  assert_int_equal(stats.event_count, expect_events);
}

static bp_store *open_copy(const char *dir, bool checkpoint) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.enable_checkpoint = checkpoint;
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  return s;
}

static void basic_fixture_opens_from_its_checkpoint(void **state) {
  (void)state;
  char *dir = copy_fixture("basic");
  struct json_object *m = tu_manifest("basic");
  bp_store *s = open_copy(dir, true);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_CHECKPOINT);
  check_store(s, m, 41);
  assert_ok(bp_close(s));
  json_object_put(m);
  remove_copy(dir);
}

static void assert_files_equal_from(const char *a, const char *b, size_t from, const char *what) {
  size_t na, nb;
  uint8_t *da = tu_read_file(a, &na), *db = tu_read_file(b, &nb);
  assert_non_null(da);
  assert_non_null(db);
  assert_true(na > from && nb > from);
  tu_assert_bytes_eq(da + from, na - from, db + from, nb - from, what);
  free(da);
  free(db);
}

/* The crate's footers carry no seal, so nothing in them can be checked:
 * without a checkpoint every segment is scanned, and the footers are left as
 * the crate wrote them. */
static void basic_fixture_without_checkpoint_scans_the_crates_unsealed_footers(void **state) {
  (void)state;
  char *dir = copy_fixture("basic");
  struct json_object *m = tu_manifest("basic");
  bp_store *s = open_copy(dir, false);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_SCAN);
  assert_int_equal(d.segments_from_sidx, 0);
  assert_int_equal(d.segments_scanned, 10);
  check_store(s, m, 41);
  assert_ok(bp_close(s));
  for (int id = 1; id <= 10; id++) {
    char ours[4200], theirs[4096], file[32];
    snprintf(file, sizeof file, "%06d.fbat", id);
    snprintf(ours, sizeof ours, "%s/%s", dir, file);
    tu_fixture_path("basic", file, theirs, sizeof theirs);
    assert_files_equal_from(ours, theirs, 0, file);
  }
  json_object_put(m);
  remove_copy(dir);
}

static void crashed_fixture_opens_with_every_event(void **state) {
  (void)state;
  char *dir = copy_fixture("crashed");
  struct json_object *m = tu_manifest("crashed");
  bp_store *s = open_copy(dir, true);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.segments_from_sidx, 0);
  assert_int_equal(d.segments_scanned, 10);
  assert_int_equal(d.torn_bytes_dropped, 0);
  check_store(s, m, 41);
  assert_ok(bp_close(s));
  /* The read-write open took the crashed segment, the newest, as its
   * active one and appended nothing to it: it is left as the crate wrote
   * it, unsealed, and an open without the persistent index scans it again;
   * the open built the persistent index, which the next open uses. */
  char seg10[4200], theirs[4200];
  snprintf(seg10, sizeof seg10, "%s/000010.fbat", dir);
  tu_fixture_path("crashed", "000010.fbat", theirs, sizeof theirs);
  assert_files_equal_from(seg10, theirs, 0, "000010.fbat");
  s = open_copy(dir, false);
  bp_diagnostics(s, &d);
  assert_int_equal(d.segments_from_sidx, 0);
  assert_int_equal(d.segments_scanned, 10);
  check_store(s, m, 41);
  assert_ok(bp_close(s));
  s = open_copy(dir, true);
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_INDEX);
  check_store(s, m, 41);
  assert_ok(bp_close(s));
  json_object_put(m);
  remove_copy(dir);
}

static void torn_fixture_drops_only_the_torn_frame(void **state) {
  (void)state;
  char *dir = copy_fixture("torn");
  struct json_object *m = tu_manifest("torn");
  bp_store *s = open_copy(dir, true);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  struct json_object *t = tu_field(m, "truncation");
  assert_int_equal(d.torn_bytes_dropped, tu_u64(t, "truncated_to") - tu_u64(tu_field(t, "torn_frame"), "offset"));
  check_store(s, m, 40);
  /* The store goes on: a new event lands in the torn segment, cut to its
   * last whole frame, after the 40. */
  bp_coord c = {"order:42", "scope:beta"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &c, 0x1001, "\xc0", 1, &r));
  assert_int_equal(r.sequence, 40);
  assert_int_equal(r.disk_pos.segment_id, 10);
  assert_int_equal(r.disk_pos.offset, tu_u64(tu_field(t, "torn_frame"), "offset"));
  bp_entries st;
  assert_ok(bp_stream(s, "order:42", &st));
  assert_int_equal(st.items[st.len - 1].clock, st.items[st.len - 2].clock + 1);
  bp_entries_free(&st);
  assert_ok(bp_close(s));
  json_object_put(m);
  remove_copy(dir);
}

static void ids_of(struct json_object *list, bp_id **out, size_t *n) {
  *n = json_object_array_length(list);
  *out = calloc(*n ? *n : 1, sizeof **out);
  for (size_t i = 0; i < *n; i++) bp_id_from_hex(json_object_get_string(json_object_array_get_idx(list, i)), &(*out)[i]);
}

static void assert_entries_are(const bp_entries *got, struct json_object *want, const char *what) {
  bp_id *ids;
  size_t n;
  ids_of(want, &ids, &n);
  if (got->len != n) fail_msg("%s: %zu results, expected %zu", what, got->len, n);
  for (size_t i = 0; i < n; i++)
    if (!bp_id_eq(got->items[i].event_id, ids[i])) fail_msg("%s: result %zu differs", what, i);
  free(ids);
}

static void fixture_queries_match_the_crate(void **state) {
  (void)state;
  char *dir = copy_fixture("basic");
  struct json_object *m = tu_manifest("basic");
  struct json_object *q = tu_field(m, "expected_queries");
  bp_store *s = open_copy(dir, true);
  bp_entries r;

  bp_region all = bp_region_all();
  assert_ok(bp_query(s, &all, &r));
  assert_entries_are(&r, tu_field(q, "region_all"), "region all");
  bp_entries_free(&r);

  bp_region cat = bp_region_with_category(bp_region_all(), 0x1);
  assert_ok(bp_query(s, &cat, &r));
  assert_entries_are(&r, tu_field(q, "region_all_fact_category_0x1"), "category 0x1");
  bp_entries_free(&r);

  bp_region pre = bp_region_entity("user:1");
  assert_ok(bp_query(s, &pre, &r));
  assert_entries_are(&r, tu_field(q, "region_entity_prefix_user:1"), "prefix user:1");
  bp_entries_free(&r);

  json_object_object_foreach(tu_field(q, "stream"), entity, list) {
    assert_ok(bp_stream(s, entity, &r));
    assert_entries_are(&r, list, entity);
    bp_entries_free(&r);
  }
  json_object_object_foreach(tu_field(q, "by_scope"), scope, slist) {
    assert_ok(bp_by_scope(s, scope, &r));
    assert_entries_are(&r, slist, scope);
    bp_entries_free(&r);
  }
  json_object_object_foreach(tu_field(q, "by_fact_kind_u16"), kind, klist) {
    assert_ok(bp_by_fact(s, (bp_kind)atoi(kind), &r));
    assert_entries_are(&r, klist, kind);
    bp_entries_free(&r);
  }
  assert_ok(bp_close(s));
  json_object_put(m);
  remove_copy(dir);
}

/* ---- writing the crate's bytes ---- */

typedef struct fixture_clock {
  int64_t k;
} fixture_clock;

static int64_t fixture_clock_fn(void *ctx) {
  fixture_clock *c = ctx;
  return 1767225600000000ll + 1001ll * c->k++;
}


/* The crate's segment file with the seal this library adds to a footer:
 * one more string at the end of the table (docs/FORMAT.md). Everything else
 * (frames, names, entries, trailer) is the crate's bytes. */
static uint8_t *with_seal(const uint8_t *d, size_t n, size_t *out_len) {
  uint64_t st_off = bp__get_le64(d + n - 16);
  uint32_t count = bp__get_le32(d + n - 8);
  size_t entries_at = n - 16 - (size_t)count * 154;
  assert_true((d[st_off] & 0xf0) == 0x90 && (d[st_off] & 0x0f) < 15); /* a fixarray that stays one */
  size_t len = n + 1 + BP__SIDX_SEAL_LEN;
  uint8_t *o = malloc(len);
  memcpy(o, d, entries_at);
  o[st_off] = (uint8_t)(d[st_off] + 1);
  size_t at = entries_at;
  uint32_t crc = bp__crc32(o + st_off, at - st_off);
  crc = bp__crc32_update(crc, d + entries_at, n - entries_at);
  o[at++] = 0xa0 | BP__SIDX_SEAL_LEN;
  memcpy(o + at, BP__SIDX_SEAL_MAGIC, 8);
  snprintf((char *)o + at + 8, 9, "%08x", crc);
  at += BP__SIDX_SEAL_LEN;
  memcpy(o + at, d + entries_at, n - entries_at);
  *out_len = len;
  return o;
}

/* Replays the basic fixture's appends with its inputs: every frame comes out
 * byte-identical to the crate's, every SIDX footer too but for its seal, and
 * the checkpoint byte for byte. */
static void rewriting_the_fixture_gives_identical_bytes(void **state) {
  (void)state;
  struct json_object *m = tu_manifest("basic");
  struct json_object *events = tu_field(m, "events");
  char *tmp = tu_make_temp_dir("rewrite");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/store", tmp);
  fixture_clock clk = {0};
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.segment_max_bytes = 2048;
  cfg.sync_every_n_events = 1;
  cfg.clock = fixture_clock_fn;
  cfg.clock_ctx = &clk;
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));

  for (size_t i = 0; i < json_object_array_length(events); i++) {
    struct json_object *e = json_object_array_get_idx(events, i);
    assert_int_equal(clk.k, tu_u64(e, "clock_tick"));
    bp_coord c = {tu_str(e, "entity"), tu_str(e, "scope")};
    bp_append_options o;
    memset(&o, 0, sizeof o);
    o.idempotency_key = tu_id(e, "event_id");
    o.correlation_id = tu_id(e, "correlation_id");
    o.causation_id = tu_id(e, "causation_id");
    o.flags = (uint8_t)tu_u64(e, "flags");
    struct json_object *cas = tu_field(e, "cas_expected_sequence");
    if (!json_object_is_type(cas, json_type_null)) {
      o.expect = BP_EXPECT_SEQUENCE;
      o.expected_sequence = (uint32_t)json_object_get_uint64(cas);
    }
    size_t plen;
    uint8_t *payload = tu_from_hex(tu_str(e, "payload_msgpack_hex"), &plen);
    bp_append_receipt r;
    assert_ok(bp_append_with(s, &c, (bp_kind)tu_u64(e, "kind"), payload, plen, &o, &r));
    struct json_object *pos = tu_field(e, "disk_pos");
    assert_int_equal(r.sequence, tu_u64(e, "global_sequence"));
    assert_int_equal(r.disk_pos.segment_id, tu_u64(pos, "segment_id"));
    assert_int_equal(r.disk_pos.offset, tu_u64(pos, "offset"));
    assert_int_equal(r.disk_pos.length, tu_u64(pos, "length"));
    free(payload);
  }

  /* The crate's retry reused step 6's key with another payload and entity,
   * and the crate returned the original receipt. Here that is a conflict;
   * a true repeat of step 6 gets the original receipt. Neither writes. */
  struct json_object *retry = tu_field(m, "idempotent_retry");
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = tu_id(retry, "idempotency_key");
  bp_coord c = {"user:1", "scope:alpha"};
  bp_append_receipt r;
  assert_status(bp_append_with(s, &c, 0x1001, "\x01", 1, &o, &r), BP_EIDEMPOTENCY_CONFLICT);
  struct json_object *step6 = json_object_array_get_idx(events, 6);
  assert_true(bp_id_eq(tu_id(step6, "event_id"), o.idempotency_key));
  bp_coord c6 = {tu_str(step6, "entity"), tu_str(step6, "scope")};
  size_t plen6;
  uint8_t *payload6 = tu_from_hex(tu_str(step6, "payload_msgpack_hex"), &plen6);
  o.correlation_id = tu_id(step6, "correlation_id");
  o.causation_id = tu_id(step6, "causation_id");
  o.flags = (uint8_t)tu_u64(step6, "flags");
  assert_ok(bp_append_with(s, &c6, (bp_kind)tu_u64(step6, "kind"), payload6, plen6, &o, &r));
  free(payload6);
  assert_true(bp_id_eq(r.event_id, tu_id(retry, "returned_event_id")));
  assert_int_equal(r.sequence, tu_u64(retry, "returned_sequence"));
  assert_int_equal(r.disk_pos.offset, tu_u64(tu_field(retry, "returned_disk_pos"), "offset"));
  assert_true((uint64_t)clk.k >= tu_u64(retry, "clock_tick_consumed"));
  assert_ok(bp_close(s));

  /* Segments: identical after the header (whose created_ns is a wall-clock time). */
  for (int id = 1; id <= 10; id++) {
    char ours[4096], theirs[4096], file[32], what[64];
    snprintf(file, sizeof file, "%06d.fbat", id);
    snprintf(ours, sizeof ours, "%s/%s", dir, file);
    tu_fixture_path("basic", file, theirs, sizeof theirs);
    snprintf(what, sizeof what, "segment %d frames and footer", id);
    size_t na, nb, nw;
    uint8_t *da = tu_read_file(ours, &na), *db = tu_read_file(theirs, &nb);
    assert_non_null(da);
    assert_non_null(db);
    uint8_t *want = with_seal(db, nb, &nw);
    tu_assert_bytes_eq(da + 57, na - 57, want + 57, nw - 57, what);
    free(want);
    free(da);
    free(db);
  }
  char ours[4096], theirs[4096];
  snprintf(ours, sizeof ours, "%s/000011.fbat", dir);
  struct stat sb;
  assert_int_not_equal(stat(ours, &sb), 0); /* no empty segment left behind */
  /* This library no longer writes index.ckpt at close (docs/INDEX.md); the
   * checkpoint writer (compaction's) still writes the crate's bytes. */
  assert_ok(tu_write_checkpoint(dir));
  snprintf(ours, sizeof ours, "%s/index.ckpt", dir);
  tu_fixture_path("basic", "index.ckpt", theirs, sizeof theirs);
  /* The checkpoint's watermark is the size of the last segment, longer here
   * by its footer's seal: with the crate's value put in its place (and the
   * CRC made again) the file is the crate's, byte for byte. */
  size_t na, nb;
  uint8_t *da = tu_read_file(ours, &na), *db = tu_read_file(theirs, &nb);
  assert_non_null(da);
  assert_non_null(db);
  static const char key[] = "\xb0watermark_offset";
  uint8_t *ka = memmem(da, na, key, sizeof key - 1), *kb = memmem(db, nb, key, sizeof key - 1);
  assert_non_null(ka);
  assert_non_null(kb);
  ka += sizeof key - 1;
  kb += sizeof key - 1;
  assert_int_equal(ka[0], 0xcd);
  assert_int_equal(kb[0], 0xcd);
  snprintf(ours, sizeof ours, "%s/000010.fbat", dir);
  assert_int_equal(stat(ours, &sb), 0);
  assert_int_equal(bp__get_be16(ka + 1), sb.st_size);
  assert_int_equal(bp__get_be16(ka + 1), bp__get_be16(kb + 1) + 1 + BP__SIDX_SEAL_LEN);
  memcpy(ka + 1, kb + 1, 2);
  bp__put_le32(da + 8, bp__crc32(da + 12, na - 12));
  tu_assert_bytes_eq(da, na, db, nb, "checkpoint");
  free(da);
  free(db);

  json_object_put(m);
  tu_remove_tree(tmp);
  free(tmp);
}

/* Opening and closing a copy of the crate's store, with nothing appended,
 * leaves every file as the crate wrote it: its checkpoint is not rewritten,
 * its unsealed footers are not touched. */
static void reopened_fixture_is_left_byte_identical(void **state) {
  (void)state;
  char *dir = copy_fixture("basic");
  bp_store *s = open_copy(dir, true);
  assert_ok(bp_close(s));
  static const char *const files[] = {"index.ckpt", "000001.fbat", "000005.fbat", "000010.fbat"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char ours[4200], theirs[4096];
    snprintf(ours, sizeof ours, "%s/%s", dir, files[i]);
    tu_fixture_path("basic", files[i], theirs, sizeof theirs);
    assert_files_equal_from(ours, theirs, 0, files[i]);
  }
  remove_copy(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(basic_fixture_opens_from_its_checkpoint),
      cmocka_unit_test(basic_fixture_without_checkpoint_scans_the_crates_unsealed_footers),
      cmocka_unit_test(crashed_fixture_opens_with_every_event),
      cmocka_unit_test(torn_fixture_drops_only_the_torn_frame),
      cmocka_unit_test(fixture_queries_match_the_crate),
      cmocka_unit_test(rewriting_the_fixture_gives_identical_bytes),
      cmocka_unit_test(reopened_fixture_is_left_byte_identical),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
