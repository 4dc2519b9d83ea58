/*
 * test_frames.c - frames as bytes: bp_get_frame, bp_frame_decode and
 * bp_append_frames, the three calls replication is built on. A copy made
 * frame by frame must hold the source's bytes; frames that do not continue
 * the copy must be refused with the copy left exactly as it was.
 */
#include "testutil.h"

#include <dirent.h>
#include <sys/stat.h>
#include <zlib.h>

typedef struct frames {
  void **data;
  size_t *len;
  size_t n, cap;
} frames;

static void frames_push(frames *f, void *data, size_t len) {
  if (f->n == f->cap) {
    f->cap = f->cap ? f->cap * 2 : 64;
    f->data = realloc(f->data, f->cap * sizeof *f->data);
    f->len = realloc(f->len, f->cap * sizeof *f->len);
    assert_non_null(f->data);
    assert_non_null(f->len);
  }
  f->data[f->n] = data;
  f->len[f->n++] = len;
}

static void frames_free(frames *f) {
  for (size_t i = 0; i < f->n; i++) bp_free(f->data[i]);
  free(f->data);
  free(f->len);
  memset(f, 0, sizeof *f);
}

/* Every frame of s in global order. */
static frames all_frames(bp_store *s) {
  frames f = {0};
  bp_region all = bp_region_all();
  bp_entries e;
  assert_ok(bp_query(s, &all, &e));
  for (size_t i = 0; i < e.len; i++) {
    void *data;
    size_t len;
    assert_ok(bp_get_frame(s, e.items[i].event_id, &data, &len));
    assert_int_equal(len, e.items[i].disk_pos.length);
    frames_push(&f, data, len);
  }
  bp_entries_free(&e);
  return f;
}

static bool is_batch_member(const void *data, size_t len) {
  bp_event *ev;
  assert_ok(bp_frame_decode(data, len, &ev));
  bool member = (ev->header.flags & BP_FLAG_BATCH_MEMBER) != 0;
  bp_event_free(ev);
  return member;
}

/* Appends f[from, to) to dst, a source batch at a time. */
static void copy_frames(bp_store *dst, const frames *f, size_t from, size_t to) {
  size_t start = from;
  for (size_t i = from; i < to; i++) {
    if (is_batch_member(f->data[i], f->len[i])) continue;
    bp_frame_in in[64];
    size_t n = i + 1 - start;
    assert_true(n <= 64);
    for (size_t k = 0; k < n; k++) in[k] = (bp_frame_in){.data = f->data[start + k], .len = f->len[start + k]};
    assert_ok(bp_append_frames(dst, in, n, NULL));
    start = i + 1;
  }
  assert_int_equal(start, to);
}

static bp_store *open_at(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  return s;
}

/* A source with several entities, a batch, a reaction, a JSON payload and
 * an empty payload. */
static void fill_source(bp_store *s) {
  bp_coord a = {"user:1", "users"}, b = {"order/7", "orders"}, c = {"caf\xc3\xa9 \xe2\x98\x95", "odd.scope>"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &a, 0x1001, "\x81\xa1k\x01", 4, &r));
  assert_ok(bp_append_json(s, &b, 0x1002, "{\"total\": 12.5, \"items\": [1, 2, 3]}", NULL));
  bp_event_in batch[3];
  memset(batch, 0, sizeof batch);
  for (int i = 0; i < 3; i++) {
    batch[i].coord = i == 1 ? b : a;
    batch[i].kind = 0x1003;
    batch[i].payload = "\x93\x01\x02\x03";
    batch[i].len = 4;
  }
  assert_ok(bp_append_batch(s, batch, 3, NULL));
  assert_ok(bp_append_reaction(s, &c, 0x2001, NULL, 0, r.event_id, r.event_id, NULL));
  for (int i = 0; i < 20; i++) assert_ok(bp_append(s, i % 2 ? &a : &c, 0x1004, "\xa3one", 4, NULL));
}

static void get_frame_returns_the_bytes_in_the_segment(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_at(fx->dir);
  fill_source(s);
  frames f = all_frames(s);
  bp_region all = bp_region_all();
  bp_entries e;
  assert_ok(bp_query(s, &all, &e));
  assert_ok(bp_close(s));
  for (size_t i = 0; i < e.len; i++) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%06llu.fbat", fx->dir, (unsigned long long)e.items[i].disk_pos.segment_id);
    size_t flen;
    uint8_t *file = tu_read_file(path, &flen);
    assert_non_null(file);
    assert_true(e.items[i].disk_pos.offset + f.len[i] <= flen);
    tu_assert_bytes_eq(f.data[i], f.len[i], file + e.items[i].disk_pos.offset, f.len[i], "frame");
    free(file);
  }
  bp_entries_free(&e);
  frames_free(&f);
  void *data = (void *)1;
  size_t len = 1;
  s = open_at(fx->dir);
  assert_status(bp_get_frame(s, bp_id_v7(), &data, &len), BP_ENOTFOUND);
  assert_null(data);
  assert_int_equal(len, 0);
  assert_ok(bp_close(s));
}

static void a_copy_frame_by_frame_holds_the_same_bytes(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *src = open_at(fx->dir);
  fill_source(src);
  frames f = all_frames(src);
  char dst_dir[4200];
  snprintf(dst_dir, sizeof dst_dir, "%s/copy", fx->tmp);
  bp_store *dst = open_at(dst_dir);
  copy_frames(dst, &f, 0, f.n);
  /* Same events, same order, same bytes; then both go on independently. */
  frames g = all_frames(dst);
  assert_int_equal(g.n, f.n);
  for (size_t i = 0; i < f.n; i++) tu_assert_bytes_eq(g.data[i], g.len[i], f.data[i], f.len[i], "copied frame");
  frames_free(&g);
  bp_coord a = {"user:1", "users"};
  bp_append_receipt r;
  assert_ok(bp_append(dst, &a, 0x1001, NULL, 0, &r));
  bp_entry e;
  assert_ok(bp_get_entry(dst, r.event_id, &e));
  assert_int_equal(e.clock, 13); /* user:1's 14th event in the copy: its chain goes on */
  assert_ok(bp_close(dst));
  assert_ok(bp_close(src));
  tu_assert_verifies(dst_dir, "the copy");
  /* The copy reopens (from its index) with the same frames. */
  dst = open_at(dst_dir);
  g = all_frames(dst);
  assert_int_equal(g.n, f.n + 1);
  for (size_t i = 0; i < f.n; i++) tu_assert_bytes_eq(g.data[i], g.len[i], f.data[i], f.len[i], "reopened frame");
  frames_free(&g);
  assert_ok(bp_close(dst));
  frames_free(&f);
}

static void a_copy_of_a_crate_written_store_holds_its_bytes(void **state) {
  tu_store_fixture *fx = *state;
  char src_dir[4200];
  snprintf(src_dir, sizeof src_dir, "%s/crate", fx->tmp);
  tu_copy_dir(BATPAK_TEST_DATA_DIR "/fixtures/basic", src_dir);
  bp_store *src;
  bp_config cfg;
  bp_config_init(&cfg, src_dir);
  assert_ok(bp_open_readonly(&cfg, &src));
  frames f = all_frames(src);
  assert_true(f.n > 0);
  bp_store *dst = open_at(fx->dir);
  copy_frames(dst, &f, 0, f.n);
  frames g = all_frames(dst);
  assert_int_equal(g.n, f.n);
  for (size_t i = 0; i < f.n; i++) tu_assert_bytes_eq(g.data[i], g.len[i], f.data[i], f.len[i], "crate frame");
  frames_free(&g);
  frames_free(&f);
  assert_ok(bp_close(dst));
  assert_ok(bp_close(src));
  tu_assert_verifies(fx->dir, "the copy of a crate store");
}

/* Names and sizes of every file under dir, as one string (what "left
 * exactly as it was" compares). */
static void listing(const char *dir, char *out, size_t size) {
  out[0] = '\0';
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  size_t used = 0;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat st;
    if (stat(p, &st) != 0) continue;
    used += (size_t)snprintf(out + used, size - used, "%s:%lld ", de->d_name,
                             S_ISDIR(st.st_mode) ? -1LL : (long long)st.st_size);
    if (used >= size) break;
  }
  closedir(d);
}

static void frames_that_do_not_continue_the_store_are_refused(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *src = open_at(fx->dir);
  fill_source(src);
  frames f = all_frames(src);
  assert_ok(bp_close(src));
  char dst_dir[4200];
  snprintf(dst_dir, sizeof dst_dir, "%s/copy", fx->tmp);
  bp_store *dst = open_at(dst_dir);
  char before[2048], after[2048];
  listing(dst_dir, before, sizeof before);
  bp_frame_in in;

  /* An entity's second event before its first: a gap in its clock
   * (frame 6 is the second event of the entity the reaction, frame 5, began). */
  in = (bp_frame_in){.data = f.data[6], .len = f.len[6]};
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "clock"));
  listing(dst_dir, after, sizeof after);
  assert_string_equal(before, after); /* a refused first append creates no segment */

  copy_frames(dst, &f, 0, 6);
  bp_store_stats st0, st1;
  bp_stats(dst, &st0);
  /* The same event again. */
  in = (bp_frame_in){.data = f.data[0], .len = f.len[0]};
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "already holds"));

  /* Damaged bytes: a flipped bit, a cut frame, a wrong length. */
  uint8_t *bad = malloc(f.len[6]);
  memcpy(bad, f.data[6], f.len[6]);
  bad[f.len[6] - 1] ^= 0x01;
  in = (bp_frame_in){.data = bad, .len = f.len[6]};
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_ECRC);
  memcpy(bad, f.data[6], f.len[6]);
  in = (bp_frame_in){.data = bad, .len = f.len[6] - 1};
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_EINVAL);
  in = (bp_frame_in){.data = bad, .len = 7};
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_EINVAL);
  free(bad);

  /* A frame of another store's entity history: same entity and clock, other chain. */
  char other_dir[4200];
  snprintf(other_dir, sizeof other_dir, "%s/other", fx->tmp);
  bp_store *other = open_at(other_dir);
  bp_coord a = {"user:1", "users"};
  bp_append_receipt r;
  for (int i = 0; i < 3; i++) assert_ok(bp_append(other, &a, 0x1001, "\xa1x", 2, &r));
  assert_ok(bp_append(other, &a, 0x1001, "\xa1y", 2, &r));
  void *odata;
  size_t olen;
  assert_ok(bp_get_frame(other, r.event_id, &odata, &olen));
  assert_ok(bp_close(other));
  in = (bp_frame_in){.data = odata, .len = olen};
  bp_stats(dst, &st1);
  assert_int_equal(st1.event_count, st0.event_count);
  /* user:1 has clocks 0..2 here; the other store's clock-3 frame has the
   * right clock and the wrong chain. */
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_EDIVERGED);
  assert_non_null(strstr(bp_last_error()->message, "prev_hash"));
  bp_free(odata);

  /* All or nothing: a good frame followed by a repeated one writes neither. */
  bp_frame_in two[2] = {{.data = f.data[6], .len = f.len[6]}, {.data = f.data[1], .len = f.len[1]}};
  assert_status(bp_append_frames(dst, two, 2, NULL), BP_EDIVERGED);
  bp_stats(dst, &st1);
  assert_int_equal(st1.event_count, st0.event_count);
  copy_frames(dst, &f, 6, f.n);
  assert_ok(bp_close(dst));
  tu_assert_verifies(dst_dir, "the copy after refusals");
  frames_free(&f);
}

static void a_batch_cut_short_is_refused(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *src = open_at(fx->dir);
  bp_coord a = {"a", "s"}, b = {"b", "s"};
  bp_event_in batch[2];
  memset(batch, 0, sizeof batch);
  batch[0].coord = a;
  batch[0].kind = 0x1001;
  batch[1].coord = b;
  batch[1].kind = 0x1001;
  assert_ok(bp_append_batch(src, batch, 2, NULL));
  frames f = all_frames(src);
  assert_ok(bp_close(src));
  assert_int_equal(f.n, 2);
  assert_true(is_batch_member(f.data[0], f.len[0]));
  char dst_dir[4200];
  snprintf(dst_dir, sizeof dst_dir, "%s/copy", fx->tmp);
  bp_store *dst = open_at(dst_dir);
  bp_frame_in in = {.data = f.data[0], .len = f.len[0]};
  assert_status(bp_append_frames(dst, &in, 1, NULL), BP_EINVAL);
  assert_non_null(strstr(bp_last_error()->message, "batch"));
  bp_frame_in both[2] = {{.data = f.data[0], .len = f.len[0]}, {.data = f.data[1], .len = f.len[1]}};
  bp_append_receipt outs[2];
  assert_ok(bp_append_frames(dst, both, 2, outs));
  assert_int_equal(outs[1].sequence, 1);
  assert_ok(bp_close(dst));
  frames_free(&f);
}

static void frame_decode_checks_the_hashes(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_at(fx->dir);
  bp_coord a = {"a", "s"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &a, 0x1001, "\xa5hello", 6, &r));
  void *data;
  size_t len;
  assert_ok(bp_get_frame(s, r.event_id, &data, &len));
  assert_ok(bp_close(s));
  bp_event *ev;
  assert_ok(bp_frame_decode(data, len, &ev));
  assert_true(bp_id_eq(ev->header.event_id, r.event_id));
  assert_string_equal(ev->entity, "a");
  assert_int_equal(ev->payload_len, 6);
  assert_memory_equal(ev->payload, "\xa5hello", 6);
  bp_event_free(ev);
  /* Change a payload byte and mend the CRC: the content hash gives it away. */
  uint8_t *p = data;
  uint8_t *hit = memmem(p, len, "hello", 5);
  assert_non_null(hit);
  hit[0] = 'j';
  uint32_t crc = (uint32_t)crc32(0, p + 8, (uInt)(len - 8)); /* frames carry zlib's CRC-32 */
  p[4] = (uint8_t)(crc >> 24);
  p[5] = (uint8_t)(crc >> 16);
  p[6] = (uint8_t)(crc >> 8);
  p[7] = (uint8_t)crc;
  assert_status(bp_frame_decode(data, len, &ev), BP_ESERIAL);
  assert_null(ev);
  assert_non_null(strstr(bp_last_error()->message, "hash"));
  s = open_at(fx->dir);
  bp_frame_in in = {.data = data, .len = len};
  char other[4200];
  snprintf(other, sizeof other, "%s/o", fx->tmp);
  bp_close(s);
  s = open_at(other);
  assert_status(bp_append_frames(s, &in, 1, NULL), BP_ESERIAL);
  assert_ok(bp_close(s));
  bp_free(data);
}

static void a_read_only_store_takes_no_frames(void **state) {
  tu_store_fixture *fx = *state;
  bp_store *s = open_at(fx->dir);
  bp_coord a = {"a", "s"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &a, 0x1001, NULL, 0, &r));
  void *data;
  size_t len;
  assert_ok(bp_get_frame(s, r.event_id, &data, &len));
  assert_ok(bp_close(s));
  char other[4200];
  snprintf(other, sizeof other, "%s/o", fx->tmp);
  s = open_at(other);
  assert_ok(bp_close(s));
  bp_config cfg;
  bp_config_init(&cfg, other);
  assert_ok(bp_open_readonly(&cfg, &s));
  bp_frame_in in = {.data = data, .len = len};
  assert_status(bp_append_frames(s, &in, 1, NULL), BP_EREADONLY);
  assert_status(bp_append_frames(s, NULL, 1, NULL), BP_EINVAL);
  assert_ok(bp_close(s));
  bp_free(data);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(get_frame_returns_the_bytes_in_the_segment, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_copy_frame_by_frame_holds_the_same_bytes, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_copy_of_a_crate_written_store_holds_its_bytes, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(frames_that_do_not_continue_the_store_are_refused, tu_store_setup,
                                      tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_batch_cut_short_is_refused, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(frame_decode_checks_the_hashes, tu_store_setup, tu_store_teardown),
      cmocka_unit_test_setup_teardown(a_read_only_store_takes_no_frames, tu_store_setup, tu_store_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
