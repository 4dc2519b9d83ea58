/* test_verify.c - bp_verify finds each kind of damage, and names its place. */
#include "testutil.h"
#include "wire/records.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef tu_store_fixture fixture;
#define setup tu_store_setup
#define teardown tu_store_teardown

static bp_append_receipt receipts[12];

/* 12 events over 3 entities in segments of ~1 KiB, closed cleanly. */
static void make_store(fixture *f) {
  f->cfg.segment_max_bytes = 1024;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  const char *ents[3] = {"a", "b", "c"};
  for (int i = 0; i < 12; i++) {
    bp_coord c = {ents[i % 3], "scope"};
    char p[16];
    snprintf(p, sizeof p, "\xa5v%04d", i);
    assert_ok(bp_append(s, &c, 0x1001, p, 6, &receipts[i]));
  }
  assert_ok(bp_close(s));
}

static char *seg_path(fixture *f, uint64_t id) {
  static char p[4200];
  snprintf(p, sizeof p, "%s/%06llu.fbat", f->dir, (unsigned long long)id);
  return p;
}

static void patch(const char *path, long off, const void *bytes, size_t n) {
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  if (off < 0) off += lseek(fd, 0, SEEK_END);
  assert_int_equal(pwrite(fd, bytes, n, off), (ssize_t)n);
  close(fd);
}

static uint8_t *slurp(const char *path, size_t *n) {
  uint8_t *d = tu_read_file(path, n);
  assert_non_null(d);
  return d;
}

/* Rewrites a frame's CRC after its body was edited, so that only the deeper
 * check can notice. */
static void edit_frame(const char *path, const bp_disk_pos *pos, size_t body_off, uint8_t xor_with) {
  size_t n;
  uint8_t *d = slurp(path, &n);
  uint8_t *frame = d + pos->offset;
  frame[8 + body_off] ^= xor_with;
  bp__put_be32(frame + 4, bp__crc32(frame + 8, pos->length - 8));
  patch(path, (long)pos->offset, frame, pos->length);
  free(d);
}

static bool has_problem(const bp_verify_report *r, const char *where, const char *what) {
  for (size_t i = 0; i < r->problem_count; i++)
    if (strstr(r->problems[i].where, where) && strstr(r->problems[i].what, what)) return true;
  return false;
}

static void dump(const bp_verify_report *r) {
  for (size_t i = 0; i < r->problem_count; i++) print_message("  %s: %s\n", r->problems[i].where, r->problems[i].what);
}

static void intact_store_verifies(void **state) {
  fixture *f = *state;
  make_store(f);
  bp_verify_report r;
  bp_status st = bp_verify(f->dir, &r);
  if (st) dump(&r);
  assert_ok(st);
  assert_int_equal(r.frames, 12);
  assert_int_equal(r.entities, 3);
  assert_true(r.segments >= 3);
  bp_verify_report_free(&r);
}

static void fixture_stores_verify(void **state) {
  (void)state;
  const char *names[] = {"basic", "crashed", "torn"};
  for (int i = 0; i < 3; i++) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", BATPAK_TEST_DATA_DIR, names[i]);
    bp_verify_report r;
    bp_status st = bp_verify(dir, &r);
    if (st) dump(&r);
    assert_ok(st);
    assert_int_equal(r.frames, i == 2 ? 40 : 41);
    if (i == 2) assert_true(r.torn_bytes > 0);
    bp_verify_report_free(&r);
  }
}

static void flipped_byte_in_a_frame_is_a_crc_mismatch(void **state) {
  fixture *f = *state;
  make_store(f);
  const bp_disk_pos *p = &receipts[1].disk_pos;
  uint8_t b;
  size_t n;
  uint8_t *d = slurp(seg_path(f, p->segment_id), &n);
  b = d[p->offset + 30] ^ 0x20;
  free(d);
  patch(seg_path(f, p->segment_id), (long)(p->offset + 30), &b, 1);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  char where[64];
  snprintf(where, sizeof where, "segment %06llu offset %llu", (unsigned long long)p->segment_id,
           (unsigned long long)p->offset);
  if (!has_problem(&r, where, "CRC mismatch")) { dump(&r); fail_msg("no CRC problem at %s", where); }
  bp_verify_report_free(&r);
}

static void payload_changed_behind_a_valid_crc_breaks_the_hashes(void **state) {
  fixture *f = *state;
  make_store(f);
  const bp_disk_pos *p = &receipts[4].disk_pos;
  /* The payload is the last array before hash_chain; its last byte sits
   * just before "hash_chain"'s key, found by searching the body. */
  size_t n;
  uint8_t *d = slurp(seg_path(f, p->segment_id), &n);
  uint8_t *body = d + p->offset + 8;
  uint8_t *hc = memmem(body, p->length - 8, "\xaahash_chain", 11);
  assert_non_null(hc);
  size_t at = (size_t)(hc - body) - 1;
  free(d);
  edit_frame(seg_path(f, p->segment_id), p, at, 0x01);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  if (!has_problem(&r, "offset", "content_hash is not the BLAKE3")) { dump(&r); fail_msg("no content hash problem"); }
  bp_verify_report_free(&r);
}

static void broken_prev_hash_link_is_named_by_entity_and_clock(void **state) {
  fixture *f = *state;
  make_store(f);
  const bp_disk_pos *p = &receipts[7].disk_pos; /* entity b, clock 2 */
  size_t n;
  uint8_t *d = slurp(seg_path(f, p->segment_id), &n);
  uint8_t *body = d + p->offset + 8;
  uint8_t *ph = memmem(body, p->length - 8, "\xa9prev_hash", 10);
  assert_non_null(ph);
  size_t at = (size_t)(ph - body) + 10 + 3 + 5; /* into the 32 integers, past dc 00 20 */
  free(d);
  edit_frame(seg_path(f, p->segment_id), p, at, 0x01);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  if (!has_problem(&r, "entity b clock 2", "prev_hash")) { dump(&r); fail_msg("no chain problem for b/2"); }
  bp_verify_report_free(&r);
}

static void lying_sidx_entry_is_reported(void **state) {
  fixture *f = *state;
  make_store(f);
  /* Segment 1's footer: the kind of its first entry (u16 LE at +24). */
  size_t n;
  uint8_t *d = slurp(seg_path(f, 1), &n);
  uint32_t count = bp__get_le32(d + n - 8);
  long entries_at = (long)(n - 16 - (size_t)count * 154);
  free(d);
  uint8_t k[2] = {0x02, 0x10};
  patch(seg_path(f, 1), entries_at + 24, k, 2);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  if (!has_problem(&r, "segment 000001", "entry 0: kind differs")) { dump(&r); fail_msg("no footer problem"); }
  bp_verify_report_free(&r);
}

static void expect_problem(fixture *f, const char *where, const char *what) {
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  if (!has_problem(&r, where, what)) {
    dump(&r);
    fail_msg("no problem \"%s\" at \"%s\"", what, where);
  }
  bp_verify_report_free(&r);
}

static void wrong_global_sequence_in_a_footer_is_reported(void **state) {
  fixture *f = *state;
  make_store(f);
  /* Segment 2's footer: the global sequence of its first entry (u64 LE at +114). */
  size_t n;
  uint8_t *d = slurp(seg_path(f, 2), &n);
  uint32_t count = bp__get_le32(d + n - 8);
  long entries_at = (long)(n - 16 - (size_t)count * 154);
  free(d);
  uint8_t seq[8] = {0x63};
  patch(seg_path(f, 2), entries_at + 114, seq, 8);
  expect_problem(f, "segment 000002", "entry 0: global_sequence differs");
}

static void footer_with_a_damaged_magic_is_reported(void **state) {
  fixture *f = *state;
  make_store(f);
  patch(seg_path(f, 1), -4, "SIDY", 4);
  expect_problem(f, "segment 000001", "magic is damaged");
}

static void undefined_segment_header_flags_are_reported(void **state) {
  fixture *f = *state;
  make_store(f);
  /* The header map's "flags" value follows its key. */
  size_t n;
  uint8_t *d = slurp(seg_path(f, 1), &n);
  const uint8_t *key = memmem(d, 64, "flags", 5);
  assert_non_null(key);
  long at = (long)(key - d) + 5;
  free(d);
  uint8_t v = 0x04;
  patch(seg_path(f, 1), at, &v, 1);
  expect_problem(f, "segment 000001", "header flags 0x4");
}

static void damaged_checkpoint_is_reported(void **state) {
  fixture *f = *state;
  make_store(f);
  assert_ok(tu_write_checkpoint(f->dir));
  char ck[4200];
  snprintf(ck, sizeof ck, "%s/index.ckpt", f->dir);
  uint8_t junk = 0x00;
  patch(ck, 40, &junk, 1);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  if (!has_problem(&r, "index.ckpt", "checkpoint")) { dump(&r); fail_msg("no checkpoint problem"); }
  bp_verify_report_free(&r);
}

static void checkpoint_that_disagrees_with_the_segments_is_reported(void **state) {
  fixture *f = *state;
  make_store(f);
  assert_ok(tu_write_checkpoint(f->dir));
  char ck[4200];
  snprintf(ck, sizeof ck, "%s/index.ckpt", f->dir);
  size_t n;
  uint8_t *d = slurp(ck, &n);
  /* Change the first entry's clock field value (a fixint after "clock"), and
   * fix the CRC so that the checkpoint itself looks valid. */
  uint8_t *c = memmem(d, n, "\xa5" "clock", 6);
  assert_non_null(c);
  c[6] = 0x05;
  bp__put_le32(d + 8, bp__crc32(d + 12, n - 12));
  patch(ck, 0, d, n);
  free(d);
  bp_verify_report r;
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  if (!has_problem(&r, "index.ckpt entry 0", "differs")) { dump(&r); fail_msg("no checkpoint mismatch"); }
  bp_verify_report_free(&r);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

/* Waits for a child that must exit 0 and returns the disk position it wrote
 * to the pipe p, which is closed. */
static bp_disk_pos child_disk_pos(pid_t pid, int p[2]) {
  int ws;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  bp_disk_pos pos;
  assert_int_equal(read(p[0], &pos, sizeof pos), (ssize_t)sizeof pos);
  close(p[0]);
  close(p[1]);
  return pos;
}

/* A process that dies without closing leaves its active segment unsealed, with
 * space allocated ahead of the frames (three frames of 100 KB: a segment's
 * first 256 KiB are written without space ahead). Returns the last frame's
 * position. */
static bp_disk_pos crash_with_an_active_segment(fixture *f) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *s;
    if (bp_open(&f->cfg, &s)) _exit(2);
    bp_append_receipt r;
    enum { LEN = 100000 };
    uint8_t *payload = calloc(1, LEN + 5);
    if (!payload) _exit(5);
    payload[0] = 0xdb; /* str 32 */
    payload[3] = LEN >> 8 & 0xff;
    payload[4] = LEN & 0xff;
    payload[2] = LEN >> 16 & 0xff;
    memset(payload + 5, 'h', LEN);
    for (int i = 0; i < 3; i++) {
      bp_coord c = {"a", "scope"};
      if (bp_append(s, &c, 0x1001, payload, LEN + 5, &r)) _exit(3);
    }
    if (write(p[1], &r.disk_pos, sizeof r.disk_pos) != (ssize_t)sizeof r.disk_pos) _exit(4);
    _exit(0);
  }
  bp_disk_pos pos = child_disk_pos(pid, p);
  struct stat st;
  assert_int_equal(stat(seg_path(f, pos.segment_id), &st), 0);
  assert_true((uint64_t)st.st_size > pos.offset + pos.length); /* space allocated ahead */
  return pos;
}

static void frame_cut_short_before_allocated_space_is_a_torn_tail(void **state) {
  fixture *f = *state;
  bp_disk_pos pos = crash_with_an_active_segment(f);
  /* The copy of the last frame stopped half way: the rest of it is zeros. */
  static const uint8_t zeros[64];
  patch(seg_path(f, pos.segment_id), (long)(pos.offset + pos.length - 20), zeros, 20);
  bp_verify_report r;
  bp_status st = bp_verify(f->dir, &r);
  if (st) dump(&r);
  assert_ok(st);
  assert_true(r.torn_bytes > 0);
  assert_int_equal(r.frames, 2);
  bp_verify_report_free(&r);
  /* Junk after it (a power loss garbles sectors) is part of the tear too. */
  patch(seg_path(f, pos.segment_id), (long)(pos.offset + pos.length + 100), "junk", 4);
  assert_ok(bp_verify(f->dir, &r));
  bp_verify_report_free(&r);
  /* But a damaged frame followed by an intact one is damage, not a tear. */
  bp_disk_pos second = {pos.segment_id, 0, 0};
  size_t n;
  uint8_t *d = slurp(seg_path(f, pos.segment_id), &n);
  bp__segment_header h;
  size_t first;
  assert_ok(bp__segment_header_decode(d, n, &h, &first));
  free(d);
  second.offset = first;
  patch(seg_path(f, pos.segment_id), (long)second.offset + 20, "X", 1);
  assert_status(bp_verify(f->dir, &r), BP_ECORRUPT);
  assert_true(has_problem(&r, "offset", "CRC mismatch"));
  bp_verify_report_free(&r);
}

/* A crash in the middle of a batch leaves its first frames without the
 * closing one; opening drops them. Once later segments exist, verify must
 * number events and follow chains as opening did. */
static void interrupted_batch_in_an_earlier_segment_is_not_counted(void **state) {
  fixture *f = *state;
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *s;
    if (bp_open(&f->cfg, &s)) _exit(2);
    bp_coord c = {"a", "scope"};
    if (bp_append(s, &c, 0x1001, "\xa5" "first", 6, NULL)) _exit(3);
    bp_event_in in[3];
    memset(in, 0, sizeof in);
    for (int i = 0; i < 3; i++) in[i] = (bp_event_in){.coord = c, .kind = 0x1002, .payload = "\xa5" "batch", .len = 6};
    bp_append_receipt r[3];
    if (bp_append_batch(s, in, 3, r)) _exit(4);
    if (write(p[1], &r[2].disk_pos, sizeof r[2].disk_pos) != (ssize_t)sizeof r[2].disk_pos) _exit(5);
    _exit(0); /* no close: the segment stays unsealed */
  }
  bp_disk_pos last = child_disk_pos(pid, p);
  /* The crash took the closing frame. */
  assert_int_equal(truncate(seg_path(f, last.segment_id), (off_t)last.offset), 0);

  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.batch_frames_dropped, 2);
  assert_int_equal(d.event_count, 1);
  bp_coord c = {"a", "scope"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &c, 0x1001, "\xa5" "after", 6, &r));
  assert_int_equal(r.sequence, 1);
  assert_ok(bp_close(s));
  bp_verify_report rep;
  bp_status st = bp_verify(f->dir, &rep);
  if (st) dump(&rep);
  assert_ok(st);
  assert_int_equal(rep.frames, 2);
  bp_verify_report_free(&rep);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      T(intact_store_verifies),
      cmocka_unit_test(fixture_stores_verify),
      T(flipped_byte_in_a_frame_is_a_crc_mismatch),
      T(payload_changed_behind_a_valid_crc_breaks_the_hashes),
      T(broken_prev_hash_link_is_named_by_entity_and_clock),
      T(lying_sidx_entry_is_reported),
      T(wrong_global_sequence_in_a_footer_is_reported),
      T(footer_with_a_damaged_magic_is_reported),
      T(undefined_segment_header_flags_are_reported),
      T(damaged_checkpoint_is_reported),
      T(checkpoint_that_disagrees_with_the_segments_is_reported),
      T(frame_cut_short_before_allocated_space_is_a_torn_tail),
      T(interrupted_batch_in_an_earlier_segment_is_not_counted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
