/*
 * test_store.c - the store's lifecycle, appends, reads and reopen, and one
 * named test per kind of bad input: each says what it proves and checks that
 * the store is left as it was.
 */
#include "testutil.h"
#include "store/os.h"
#include "store/store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

typedef tu_store_fixture fixture;

static int setup(void **state) { return tu_store_setup(state); }

static int teardown(void **state) {
  bp__os_table = bp__os_default; /* a failed test must not leave faults behind */
  return tu_store_teardown(state);
}

static bp_store *open_ok(fixture *f) {
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  return s;
}

static const bp_coord ALICE = {"user:alice", "scope:test"};

static bp_append_receipt append_text(bp_store *s, const bp_coord *c, const char *text) {
  bp_append_receipt r;
  assert_ok(bp_append(s, c, 0x1001, text, strlen(text), &r));
  return r;
}

static uint64_t count_of(bp_store *s) {
  bp_store_stats st;
  bp_stats(s, &st);
  return st.event_count;
}

/* Bytes of frames in the active segment: what "nothing was written" is measured by
 * (the file itself may be longer: space is allocated ahead of the frames). */
static uint64_t frames_end(bp_store *s) {
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  return d.active_segment_bytes;
}

static off_t file_size(const char *dir, const char *name) {
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat sb;
  return stat(p, &sb) == 0 ? sb.st_size : -1;
}

/* ------------------------------------------------------------ lifecycle */

static void config_defaults_are_documented_values(void **state) {
  (void)state;
  bp_config c;
  bp_config_init(&c, "x");
  assert_int_equal(c.segment_max_bytes, 256u << 20);
  assert_int_equal(c.sync_every_n_events, 1000);
  assert_int_equal(c.max_payload_bytes, 64u << 20);
  assert_int_equal(c.group_commit_max_batch, 1);
  assert_true(c.enable_checkpoint);
  assert_int_equal(c.index_layout, BP_INDEX_AOS);
  assert_int_equal(c.sync_mode, BP_SYNC_ALL);
}

static void config_zero_fields_fail_naming_the_field_and_create_nothing(void **state) {
  fixture *f = *state;
  struct { size_t off; size_t size; const char *name; } fields[] = {
      {offsetof(bp_config, segment_max_bytes), 8, "segment_max_bytes"},
      {offsetof(bp_config, writer_queue_capacity), 4, "writer_queue_capacity"},
      {offsetof(bp_config, fd_budget), 4, "fd_budget"},
      {offsetof(bp_config, broadcast_capacity), 4, "broadcast_capacity"},
      {offsetof(bp_config, sync_every_n_events), 4, "sync_every_n_events"},
  };
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    bp_config c = f->cfg;
    memset((char *)&c + fields[i].off, 0, fields[i].size);
    bp_store *s = (bp_store *)1;
    assert_status(bp_open(&c, &s), BP_ECONFIG);
    assert_null(s);
    if (!strstr(bp_last_error()->message, fields[i].name))
      fail_msg("message \"%s\" does not name %s", bp_last_error()->message, fields[i].name);
    struct stat sb;
    assert_int_not_equal(stat(f->dir, &sb), 0);
  }
}

/* Fields that are not zero but out of their range: refused the same way. */
static void config_out_of_range_fields_fail_naming_the_field_and_create_nothing(void **state) {
  fixture *f = *state;
  struct { const char *name; bp_config c; } cases[6];
  for (size_t i = 0; i < 6; i++) cases[i].c = f->cfg;
  cases[0].name = "max_payload_bytes";
  cases[0].c.max_payload_bytes = 0;
  cases[1].name = "max_payload_bytes";
  cases[1].c.max_payload_bytes = UINT32_MAX; /* no room left for the frame around it */
  cases[2].name = "sync_mode";
  cases[2].c.sync_mode = (bp_sync_mode)7;
  cases[3].name = "index_layout";
  cases[3].c.index_layout = (bp_index_layout)99;
  cases[4].name = "restart_policy";
  cases[4].c.restart_policy.kind = (bp_restart_kind)9;
  cases[5].name = "within_ms";
  cases[5].c.restart_policy = (bp_restart_policy){BP_RESTART_BOUNDED, 3, 0};
  for (size_t i = 0; i < 6; i++) {
    bp_store *s = (bp_store *)1;
    bp_status st = bp_open(&cases[i].c, &s);
    if (st != BP_ECONFIG)
      fail_msg("case %zu (%s): bp_open returned %s, expected BP_ECONFIG", i, cases[i].name, bp_status_name(st));
    assert_null(s);
    if (!strstr(bp_last_error()->message, cases[i].name))
      fail_msg("case %zu: message \"%s\" does not name %s", i, bp_last_error()->message, cases[i].name);
    struct stat sb;
    assert_int_not_equal(stat(f->dir, &sb), 0);
  }
  /* The largest payload limit that fits a frame is accepted. */
  bp_config c = f->cfg;
  c.max_payload_bytes = UINT32_MAX - 1024;
  bp_store *s = NULL;
  assert_ok(bp_open(&c, &s));
  assert_ok(bp_close(s));
}

static void empty_store_opens_and_closes_without_files(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  assert_int_equal(count_of(s), 0);
  assert_ok(bp_close(s));
  /* No segment is created until the first append. */
  assert_int_equal(file_size(f->dir, "000001.fbat"), -1);
  struct stat sb;
  assert_int_equal(stat(f->dir, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0700);
}

static void store_files_are_private_to_the_owner(void **state) {
  fixture *f = *state;
  umask(0022);
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "x");
  assert_ok(bp_close(s));
  const char *names[] = {"000001.fbat", "index", "index/state", "index/entries", "index/names", "batpak.lock"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", f->dir, names[i]);
    struct stat sb;
    if (stat(p, &sb) != 0) fail_msg("%s: %s", names[i], strerror(errno));
    if (sb.st_mode & 0077) fail_msg("%s has mode %o, expected no group or other access", names[i], sb.st_mode & 0777);
  }
}

/* A symlink planted in the data directory under a segment's name is never
 * followed: the open fails naming it, and its target is untouched. */
static void planted_segment_symlink_is_not_followed(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "x");
  assert_ok(bp_close(s));
  char target[4200], link_path[4200];
  snprintf(target, sizeof target, "%s/elsewhere", f->tmp);
  FILE *t = fopen(target, "w");
  assert_non_null(t);
  fputs("not a segment", t);
  fclose(t);
  snprintf(link_path, sizeof link_path, "%s/000002.fbat", f->dir);
  assert_int_equal(symlink(target, link_path), 0);
  bp_store *u = NULL;
  assert_status(bp_open(&f->cfg, &u), BP_ECORRUPT);
  assert_null(u);
  assert_non_null(strstr(bp_last_error()->message, "000002.fbat is not a regular file"));
  size_t len;
  uint8_t *data = tu_read_file(target, &len);
  tu_assert_bytes_eq(data, len, "not a segment", 13, "the symlink's target");
  free(data);
}

static void second_open_in_the_same_process_is_locked(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f), *t = NULL;
  assert_status(bp_open(&f->cfg, &t), BP_ELOCKED);
  assert_null(t);
  assert_ok(bp_close(s));
  t = open_ok(f);
  assert_ok(bp_close(t));
}

static void open_from_another_process_is_locked(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *t;
    _exit(bp_open(&f->cfg, &t) == BP_ELOCKED ? 0 : 1);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_ok(bp_close(s));
}

static void append_then_get_returns_every_field(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r1 = append_text(s, &ALICE, "first");
  bp_append_receipt r2 = append_text(s, &ALICE, "second");
  assert_int_equal(r1.sequence, 0);
  assert_int_equal(r2.sequence, 1);
  assert_int_equal(bp_id_version(r1.event_id), 7);
  bp_event *ev;
  assert_ok(bp_get(s, r2.event_id, &ev));
  assert_string_equal(ev->entity, "user:alice");
  assert_string_equal(ev->scope, "scope:test");
  assert_int_equal(ev->header.kind, 0x1001);
  assert_int_equal(ev->header.position.sequence, 1);
  assert_int_equal(ev->payload_len, 6);
  assert_memory_equal(ev->payload, "second", 6);
  assert_true(bp_id_eq(ev->header.correlation_id, r2.event_id));
  assert_true(bp_id_is_nil(ev->header.causation_id));
  /* The chain links to the first event. */
  bp_event *first;
  assert_ok(bp_get(s, r1.event_id, &first));
  assert_memory_equal(ev->hash_chain.prev_hash, first->hash_chain.event_hash, 32);
  assert_true(bp_verify_chain(ev->payload, ev->payload_len, &ev->hash_chain, first->hash_chain.event_hash));
  bp_event_free(first);
  bp_event_free(ev);
  bp_id missing = bp_id_v7();
  assert_status(bp_get(s, missing, &ev), BP_ENOTFOUND);
  assert_null(ev);
  assert_ok(bp_close(s));
}

/* The id table's slot of event seq (the test's own search of the table). */
static bp__idslot *id_slot_of(bp_store *s, uint64_t seq) {
  bp__idtable *tb = atomic_load(&s->ix.cur->id_table);
  bp__idslot *t = tb->slots;
  for (uint64_t i = 0; i <= tb->mask; i++)
    if ((uint32_t)atomic_load(&t[i].key) == seq + 1) return &t[i];
  fail_msg("event %llu has no slot in the id table", (unsigned long long)seq);
  return NULL;
}

static void expect_text(bp_store *s, bp_id id, const char *entity, const char *text, const char *why) {
  bp_event *ev;
  bp_status st = bp_get(s, id, &ev);
  if (st) fail_msg("%s: bp_get failed with %d: %s", why, st, bp_last_error()->message);
  if (strcmp(ev->entity, entity) || ev->payload_len != strlen(text) || memcmp(ev->payload, text, ev->payload_len))
    fail_msg("%s: got %s \"%.*s\", expected %s \"%s\"", why, ev->entity, (int)ev->payload_len,
             (const char *)ev->payload, entity, text);
  assert_true(bp_id_eq(ev->header.event_id, id));
  bp_event_free(ev);
}

/* bp_get reads a mapped frame straight from the id table's hint, without the
 * index entry, only when that frame holds the id asked for: a hint pointing
 * at another event, into the middle of a frame, past the mapping or at a
 * segment that does not exist still finds the right event (by the entry). */
static void get_trusts_a_hinted_frame_only_if_it_holds_the_id(void **state) {
  fixture *f = *state;
  static const bp_coord BOB = {"user:bob", "scope:test"};
  bp_store *s = open_ok(f);
  bp_append_receipt a = append_text(s, &ALICE, "alice's event");
  bp_append_receipt b = append_text(s, &BOB, "bob's event");
  assert_ok(bp_close(s));
  s = open_ok(f);
  expect_text(s, a.event_id, "user:alice", "alice's event", "first read");
  bp__idslot *sa = id_slot_of(s, a.sequence), *sb = id_slot_of(s, b.sequence);
  uint64_t where = sa->where, seg = where >> BP__WHERE_OFFSET_BITS;
  size_t map_len;
  if (!where || !bp__segment_map(s, seg, &map_len)) {
    print_message("segment not mapped here: the hinted path is not taken\n");
  } else {
    sa->where = sb->where;
    expect_text(s, a.event_id, "user:alice", "alice's event", "hint at another event's frame");
    sa->where = where + 1;
    expect_text(s, a.event_id, "user:alice", "alice's event", "hint into the middle of a frame");
    sa->where = (seg << BP__WHERE_OFFSET_BITS) | (map_len - 4);
    expect_text(s, a.event_id, "user:alice", "alice's event", "hint at the mapping's last bytes");
    sa->where = (seg + 7) << BP__WHERE_OFFSET_BITS | (where & ((1ull << BP__WHERE_OFFSET_BITS) - 1));
    expect_text(s, a.event_id, "user:alice", "alice's event", "hint at a segment that does not exist");
    sa->where = where;
  }
  expect_text(s, a.event_id, "user:alice", "alice's event", "right hint");
  expect_text(s, b.event_id, "user:bob", "bob's event", "the other event");
  assert_ok(bp_close(s));
}

/* bp_get decodes small payloads into a buffer on its stack and larger ones
 * on the heap: payloads of every size around that limit come back whole,
 * from the active segment and after a reopen. */
static void get_returns_payloads_of_every_size_around_its_stack_buffer(void **state) {
  fixture *f = *state;
  static const size_t sizes[] = {0, 1, 200, 255, 256, 257, 300, 4096, 70000};
  enum { N = sizeof sizes / sizeof sizes[0] };
  uint8_t *payload = malloc(70000);
  assert_non_null(payload);
  for (size_t i = 0; i < 70000; i++) payload[i] = (uint8_t)(i * 31 + 7);
  bp_append_receipt r[N];
  bp_store *s = open_ok(f);
  for (size_t k = 0; k < N; k++) assert_ok(bp_append(s, &ALICE, 0x1001, payload, sizes[k], &r[k]));
  for (int round = 0; round < 2; round++) {
    for (size_t k = 0; k < N; k++) {
      bp_event *ev;
      assert_ok(bp_get(s, r[k].event_id, &ev));
      char what[64];
      snprintf(what, sizeof what, "%s payload of %zu bytes", round ? "reopened" : "active", sizes[k]);
      tu_assert_bytes_eq(ev->payload, ev->payload_len, payload, sizes[k], what);
      bp_event_free(ev);
    }
    assert_ok(bp_close(s));
    if (round == 0) s = open_ok(f);
  }
  free(payload);
}

static void append_json_stores_msgpack_and_reads_back_json(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r;
  assert_ok(bp_append_json(s, &ALICE, 0x1002, "{\"amount\": 18446744073709551615, \"memo\": \"caf\\u00e9\"}", &r));
  bp_event *ev;
  assert_ok(bp_get(s, r.event_id, &ev));
  char *json = bp_event_payload_json(ev);
  assert_string_equal(json, "{\"amount\":18446744073709551615,\"memo\":\"café\"}");
  bp_free(json);
  bp_event_free(ev);
  uint64_t before = count_of(s);
  assert_status(bp_append_json(s, &ALICE, 0x1002, "{\"amount\": }", &r), BP_EJSON);
  assert_int_equal(count_of(s), before);
  assert_ok(bp_close(s));
}

static void reaction_carries_correlation_and_causation(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt cause = append_text(s, &ALICE, "order placed");
  bp_coord mail = {"mailer:1", "scope:test"};
  bp_append_receipt r;
  assert_ok(bp_append_reaction(s, &mail, 0x1003, "x", 1, cause.event_id, cause.event_id, &r));
  bp_entry a, b;
  assert_ok(bp_get_entry(s, cause.event_id, &a));
  assert_ok(bp_get_entry(s, r.event_id, &b));
  assert_true(bp_entry_is_correlated(&a, &b));
  assert_true(bp_entry_is_caused_by(&b, &a));
  assert_true(bp_entry_is_root_cause(&a));
  assert_false(bp_entry_is_root_cause(&b));
  assert_ok(bp_close(s));
}

/* Reopen by each path gives the same events, clocks and chain heads. */
static void reopen_by_checkpoint_sidx_and_scan_gives_the_same_store(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 600;
  bp_store *s = open_ok(f);
  bp_coord bob = {"user:bob", "scope:other"};
  bp_id ids[30];
  for (int i = 0; i < 30; i++) {
    char text[32];
    snprintf(text, sizeof text, "event %d", i);
    ids[i] = append_text(s, i % 3 ? &ALICE : &bob, text).event_id;
  }
  assert_ok(bp_close(s));
  bp_open_path paths[] = {BP_OPEN_INDEX, BP_OPEN_CHECKPOINT, BP_OPEN_SIDX};
  for (int round = 0; round < 3; round++) {
    f->cfg.enable_checkpoint = round < 2;
    if (round == 1) assert_ok(tu_write_checkpoint(f->dir));
    s = open_ok(f);
    bp_store_diagnostics d;
    bp_diagnostics(s, &d);
    assert_int_equal(d.open_path, paths[round]);
    assert_true(d.segment_count > 3);
    assert_int_equal(count_of(s), 30 + round);
    for (int i = 0; i < 30; i++) {
      bp_entry e;
      assert_ok(bp_get_entry(s, ids[i], &e));
      assert_int_equal(e.global_sequence, i);
    }
    /* Appends continue the chains. */
    bp_append_receipt r = append_text(s, &ALICE, "after reopen");
    bp_entries st;
    assert_ok(bp_stream(s, "user:alice", &st));
    assert_int_equal(st.len, 21 + round);
    assert_int_equal(st.items[st.len - 1].clock, st.len - 1);
    assert_true(bp_id_eq(st.items[st.len - 1].event_id, r.event_id));
    assert_memory_equal(st.items[st.len - 1].hash_chain.prev_hash, st.items[st.len - 2].hash_chain.event_hash, 32);
    bp_entries_free(&st);
    assert_ok(bp_close(s));
  }
}

/* A process that dies without bp_close leaves an unsealed segment: the next
 * open scans it and keeps every acknowledged append. */
static void process_exit_without_close_loses_nothing(void **state) {
  fixture *f = *state;
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *s;
    if (bp_open(&f->cfg, &s)) _exit(2);
    for (int i = 0; i < 100; i++) {
      bp_append_receipt r;
      if (bp_append(s, &ALICE, 0x1001, "x", 1, &r)) _exit(3);
    }
    _exit(0); /* no close: no footer, no checkpoint */
  }
  int status;
  waitpid(pid, &status, 0);
  assert_int_equal(WEXITSTATUS(status), 0);
  bp_store *s = open_ok(f);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_SCAN);
  assert_int_equal(count_of(s), 100);
  assert_ok(bp_close(s));
}

static void rotation_seals_segments_at_the_size_limit(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 1024;
  bp_store *s = open_ok(f);
  for (int i = 0; i < 20; i++) append_text(s, &ALICE, "payload payload payload");
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_true(d.segment_count >= 4);
  bp_entries all;
  assert_ok(bp_stream(s, ALICE.entity, &all));
  bp_disk_pos last = all.items[all.len - 1].disk_pos;
  bp_entries_free(&all);
  assert_ok(bp_close(s));
  /* Every segment the writer moved on from ends with a SIDX trailer; the
   * last one, below the limit, is left unsealed at close, cut where its
   * last frame ends, for the next open to go on with. */
  for (uint64_t id = 1; id <= d.segment_count; id++) {
    char name[32], path[4200];
    snprintf(name, sizeof name, "%06llu.fbat", (unsigned long long)id);
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    size_t n;
    uint8_t *data = tu_read_file(path, &n);
    assert_non_null(data);
    if (id < d.segment_count) {
      assert_memory_equal(data + n - 4, "SIDX", 4);
    } else {
      assert_int_equal(last.segment_id, id);
      assert_int_equal(n, last.offset + last.length);
    }
    free(data);
  }
  s = open_ok(f);
  bp_append_receipt r;
  assert_ok(bp_append(s, &ALICE, 0x1001, "\xa1x", 2, &r));
  assert_int_equal(r.disk_pos.segment_id, d.segment_count);
  assert_int_equal(r.disk_pos.offset, last.offset + last.length);
  assert_int_equal(count_of(s), 21);
  assert_ok(bp_close(s));
}

/* ------------------------------------------------------------ bad input */

static void oversized_payload_fails_elimit_and_writes_nothing(void **state) {
  fixture *f = *state;
  f->cfg.max_payload_bytes = 100;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "ok");
  uint64_t size = frames_end(s);
  char big[101];
  memset(big, 'x', sizeof big);
  bp_append_receipt r;
  assert_status(bp_append(s, &ALICE, 0x1001, big, 101, &r), BP_ELIMIT);
  assert_non_null(strstr(bp_last_error()->message, "max_payload_bytes"));
  assert_ok(bp_append(s, &ALICE, 0x1001, big, 100, &r)); /* exactly the limit is fine */
  assert_int_equal(count_of(s), 2);
  assert_true(frames_end(s) > size);
  assert_ok(bp_close(s));
}

static void empty_or_oversized_coordinates_fail_ecoord(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r;
  bp_coord no_entity = {"", "s"}, no_scope = {"e", ""}, null_entity = {NULL, "s"};
  assert_status(bp_append(s, &no_entity, 0x1001, "x", 1, &r), BP_ECOORD);
  assert_status(bp_append(s, &no_scope, 0x1001, "x", 1, &r), BP_ECOORD);
  assert_status(bp_append(s, &null_entity, 0x1001, "x", 1, &r), BP_ECOORD);
  char *big = malloc(BP_MAX_COORD_LEN + 2);
  memset(big, 'e', BP_MAX_COORD_LEN + 1);
  big[BP_MAX_COORD_LEN + 1] = '\0';
  bp_coord long_entity = {big, "s"};
  assert_status(bp_append(s, &long_entity, 0x1001, "x", 1, &r), BP_ECOORD);
  free(big);
  assert_int_equal(count_of(s), 0);
  assert_int_equal(file_size(f->dir, "000001.fbat"), -1);
  assert_ok(bp_close(s));
}

static void null_payload_with_length_fails_einval(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r;
  assert_status(bp_append(s, &ALICE, 0x1001, NULL, 5, &r), BP_EINVAL);
  assert_ok(bp_append(s, &ALICE, 0x1001, NULL, 0, &r)); /* an empty payload is fine */
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.flags = BP_FLAG_BATCH_MEMBER;
  assert_status(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r), BP_EINVAL);
  o.flags = 0;
  o.expect = 7;
  assert_status(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r), BP_EINVAL);
  assert_int_equal(count_of(s), 1);
  assert_ok(bp_close(s));
}

static void cas_modes_check_the_entity_sequence(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  bp_append_receipt r;
  o.expect = BP_EXPECT_SEQUENCE;
  o.expected_sequence = 0;
  assert_status(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r), BP_ESEQUENCE); /* empty never matches */
  assert_non_null(strstr(bp_last_error()->message, "no events"));
  o.expect = BP_EXPECT_EMPTY;
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r));
  assert_status(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r), BP_ESEQUENCE);
  o.expect = BP_EXPECT_SEQUENCE;
  o.expected_sequence = 0;
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r));
  assert_status(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r), BP_ESEQUENCE);
  const char *msg = bp_last_error()->message;
  if (!strstr(msg, "expected sequence 0") || !strstr(msg, "actual 1")) fail_msg("message: %s", msg);
  o.expected_sequence = 1;
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r));
  o.expect = BP_EXPECT_ANY;
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r));
  assert_int_equal(count_of(s), 4);
  assert_ok(bp_close(s));
}

static void idempotency_key_returns_the_original_receipt_and_writes_nothing(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  bp_append_receipt a, b;
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "one", 3, &o, &a));
  assert_true(bp_id_eq(a.event_id, o.idempotency_key));
  uint64_t size = frames_end(s);
  /* The same key for another event is a conflict, not a repeat. */
  assert_status(bp_append_with(s, &ALICE, 0x1001, "different", 9, &o, &b), BP_EIDEMPOTENCY_CONFLICT);
  assert_non_null(strstr(bp_last_error()->message, "another payload"));
  bp_coord bob = {"user:bob", "scope:test"};
  assert_status(bp_append_with(s, &bob, 0x1001, "one", 3, &o, &b), BP_EIDEMPOTENCY_CONFLICT);
  assert_non_null(strstr(bp_last_error()->message, "another entity"));
  assert_status(bp_append_with(s, &ALICE, 0x1002, "one", 3, &o, &b), BP_EIDEMPOTENCY_CONFLICT);
  assert_non_null(strstr(bp_last_error()->message, "another kind"));
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "one", 3, &o, &b));
  assert_true(bp_id_eq(a.event_id, b.event_id));
  assert_int_equal(a.sequence, b.sequence);
  assert_int_equal(a.disk_pos.offset, b.disk_pos.offset);
  assert_int_equal(frames_end(s), size);
  assert_int_equal(count_of(s), 1);
  assert_ok(bp_close(s));
  /* Also after reopen. */
  s = open_ok(f);
  assert_status(bp_append_with(s, &ALICE, 0x1001, "again", 5, &o, &b), BP_EIDEMPOTENCY_CONFLICT);
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "one", 3, &o, &b));
  assert_int_equal(b.sequence, 0);
  assert_int_equal(count_of(s), 1);
  assert_ok(bp_close(s));
}

/* A receipt with only its fields set, every other byte zero. */
static bp_append_receipt receipt_of(const bp_append_receipt *r) {
  bp_append_receipt want;
  memset(&want, 0, sizeof want);
  want.event_id = r->event_id;
  want.sequence = r->sequence;
  want.disk_pos.segment_id = r->disk_pos.segment_id;
  want.disk_pos.offset = r->disk_pos.offset;
  want.disk_pos.length = r->disk_pos.length;
  return want;
}

/* Receipts are written whole, padding included (also for an idempotent
 * repeat), so that they can be copied through a pipe, hashed or compared with
 * memcmp without reading undefined bytes. */
static void receipts_are_written_in_every_byte(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  bp_append_receipt r[2];
  memset(r, 0xa5, sizeof r);
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "one", 3, &o, &r[0]));
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "one", 3, &o, &r[1]));
  for (int i = 0; i < 2; i++) {
    bp_append_receipt want = receipt_of(&r[i]);
    assert_memory_equal(&r[i], &want, sizeof want);
  }
  assert_memory_equal(&r[0], &r[1], sizeof r[0]);
  assert_ok(bp_close(s));
}

static void group_commit_requires_idempotency_keys(void **state) {
  fixture *f = *state;
  f->cfg.group_commit_max_batch = 8;
  bp_store *s = open_ok(f);
  bp_append_receipt r;
  assert_status(bp_append(s, &ALICE, 0x1001, "x", 1, &r), BP_EIDEMPOTENCY_REQUIRED);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  assert_ok(bp_append_with(s, &ALICE, 0x1001, "x", 1, &o, &r));
  assert_int_equal(count_of(s), 1);
  assert_ok(bp_close(s));
}

static void batch_is_all_or_nothing_on_a_failed_check(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "existing");
  bp_coord bob = {"user:bob", "scope:test"};
  bp_event_in evs[3];
  memset(evs, 0, sizeof evs);
  for (int i = 0; i < 3; i++) {
    evs[i].coord = i == 1 ? bob : ALICE;
    evs[i].kind = 0x1001;
    evs[i].payload = "b";
    evs[i].len = 1;
  }
  /* The third event expects alice at clock 1: the first event of the batch
   * makes it so, which the batch's own CAS must see. */
  evs[2].opts.expect = BP_EXPECT_SEQUENCE;
  evs[2].opts.expected_sequence = 1;
  bp_append_receipt outs[3];
  assert_ok(bp_append_batch(s, evs, 3, outs));
  assert_int_equal(outs[0].sequence, 1);
  assert_int_equal(outs[2].sequence, 3);
  /* Now a batch whose last check fails: none of it is written. */
  uint64_t size = frames_end(s);
  evs[2].opts.expected_sequence = 99;
  assert_status(bp_append_batch(s, evs, 3, outs), BP_ESEQUENCE);
  assert_int_equal(count_of(s), 4);
  assert_int_equal(frames_end(s), size);
  bp_entries st;
  assert_ok(bp_stream(s, "user:bob", &st));
  assert_int_equal(st.len, 1);
  bp_entries_free(&st);
  /* A batch with one oversized payload is refused before anything is written. */
  evs[2].opts.expect = BP_EXPECT_ANY;
  evs[1].len = f->cfg.max_payload_bytes + 1;
  assert_status(bp_append_batch(s, evs, 3, outs), BP_ELIMIT);
  assert_int_equal(count_of(s), 4);
  assert_ok(bp_close(s));
}

static void batch_frames_carry_member_flags_except_the_last(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_event_in evs[3];
  memset(evs, 0, sizeof evs);
  for (int i = 0; i < 3; i++) {
    evs[i].coord = ALICE;
    evs[i].kind = 0x1001;
    evs[i].payload = "b";
    evs[i].len = 1;
    evs[i].opts.flags = BP_FLAG_REQUIRES_ACK;
  }
  bp_append_receipt outs[3];
  assert_ok(bp_append_batch(s, evs, 3, outs));
  for (int i = 0; i < 3; i++) {
    bp_event *ev;
    assert_ok(bp_get(s, outs[i].event_id, &ev));
    uint8_t want = BP_FLAG_REQUIRES_ACK | (i < 2 ? BP_FLAG_TRANSACTIONAL | BP_FLAG_BATCH_MEMBER : 0);
    assert_int_equal(ev->header.flags, want);
    bp_event_free(ev);
  }
  assert_ok(bp_close(s));
}

/* A crash in the middle of writing a batch: after reopen the batch is absent,
 * the events before it are present. */
static void interrupted_batch_is_wholly_absent_after_reopen(void **state) {
  fixture *f = *state;
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *s;
    if (bp_open(&f->cfg, &s)) _exit(2);
    bp_append_receipt r;
    if (bp_append(s, &ALICE, 0x1001, "before", 6, &r)) _exit(3);
    bp_event_in evs[4];
    memset(evs, 0, sizeof evs);
    for (int i = 0; i < 4; i++) {
      evs[i].coord = ALICE;
      evs[i].kind = 0x1002;
      evs[i].payload = "batch";
      evs[i].len = 5;
    }
    bp_append_receipt outs[4];
    if (bp_append_batch(s, evs, 4, outs)) _exit(4);
    /* Cut the segment inside the batch's last frame, as a crash mid-write would. */
    char path[4200];
    snprintf(path, sizeof path, "%s/000001.fbat", f->dir);
    if (truncate(path, (off_t)(outs[3].disk_pos.offset + 10))) _exit(5);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_int_equal(WEXITSTATUS(status), 0);
  bp_store *s = open_ok(f);
  assert_int_equal(count_of(s), 1);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.batch_frames_dropped, 3);
  assert_true(d.torn_bytes_dropped > 0);
  /* The chain continues from the surviving event. */
  bp_append_receipt r = append_text(s, &ALICE, "after");
  bp_entry e;
  assert_ok(bp_get_entry(s, r.event_id, &e));
  assert_int_equal(e.clock, 1);
  assert_ok(bp_close(s));
}

static void foreign_file_in_the_directory_is_ignored(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "x");
  assert_ok(bp_close(s));
  char p[4200];
  snprintf(p, sizeof p, "%s/notes.txt", f->dir);
  FILE *fp = fopen(p, "w");
  fputs("hello", fp);
  fclose(fp);
  snprintf(p, sizeof p, "%s/12.fbat", f->dir); /* too few digits: not a segment */
  fp = fopen(p, "w");
  fputs("junk", fp);
  fclose(fp);
  s = open_ok(f);
  assert_int_equal(count_of(s), 1);
  assert_ok(bp_close(s));
}

static void write_file_byte(const char *dir, const char *name, long off, uint8_t value) {
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  int fd = open(p, O_WRONLY);
  assert_true(fd >= 0);
  if (off < 0) off += lseek(fd, 0, SEEK_END);
  assert_int_equal(pwrite(fd, &value, 1, off), 1);
  close(fd);
}

static uint8_t read_file_byte(const char *dir, const char *name, long off) {
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  int fd = open(p, O_RDONLY);
  if (off < 0) off += lseek(fd, 0, SEEK_END);
  uint8_t v = 0;
  assert_int_equal(pread(fd, &v, 1, off), 1);
  close(fd);
  return v;
}

static void make_store(fixture *f, int events) {
  bp_store *s = open_ok(f);
  for (int i = 0; i < events; i++) append_text(s, &ALICE, "some payload");
  assert_ok(bp_close(s));
}

static void segment_with_bad_magic_fails_ecorrupt(void **state) {
  fixture *f = *state;
  make_store(f, 3);
  write_file_byte(f->dir, "000001.fbat", 0, 'X');
  bp_store *s = NULL;
  assert_status(bp_open(&f->cfg, &s), BP_ECORRUPT);
  assert_non_null(strstr(bp_last_error()->message, "000001"));
  assert_non_null(strstr(bp_last_error()->message, "magic"));
  assert_null(s);
}

static void segment_with_unknown_version_fails_ecorrupt(void **state) {
  fixture *f = *state;
  make_store(f, 3);
  /* The header map starts at offset 8: 84 a7 "version" 01 -> version 2. */
  assert_int_equal(read_file_byte(f->dir, "000001.fbat", 17), 1);
  write_file_byte(f->dir, "000001.fbat", 17, 2);
  bp_store *s = NULL;
  assert_status(bp_open(&f->cfg, &s), BP_ECORRUPT);
  assert_non_null(strstr(bp_last_error()->message, "version 2"));
}

/* A directory where a segment's name belongs is not skipped like a foreign
 * file: the store could not create that segment later, and what it held
 * cannot be told. */
static void directory_named_like_a_segment_fails_ecorrupt_and_changes_nothing(void **state) {
  fixture *f = *state;
  make_store(f, 3);
  char p[4200];
  snprintf(p, sizeof p, "%s/000002.fbat", f->dir);
  assert_int_equal(mkdir(p, 0700), 0);
  long ckpt = file_size(f->dir, "index.ckpt"), seg = file_size(f->dir, "000001.fbat");
  bp_store *s = (bp_store *)1;
  assert_status(bp_open(&f->cfg, &s), BP_ECORRUPT);
  assert_null(s);
  const char *m = bp_last_error()->message;
  if (!strstr(m, "000002") || !strstr(m, "not a regular file"))
    fail_msg("message \"%s\" should name segment 000002 and say it is not a regular file", m);
  assert_int_equal(file_size(f->dir, "index.ckpt"), ckpt);
  assert_int_equal(file_size(f->dir, "000001.fbat"), seg);
  assert_int_equal(rmdir(p), 0);
  s = open_ok(f);
  assert_int_equal(count_of(s), 3);
  assert_ok(bp_close(s));
}

/* A crash while a segment's header was being written (the crate creates a
 * segment in place) leaves a file shorter than its header: no events, and
 * every earlier event opens; its bytes count as a torn tail. */
static void segment_cut_inside_its_header_opens_as_empty(void **state) {
  fixture *f = *state;
  make_store(f, 3);
  char p[4200];
  snprintf(p, sizeof p, "%s/000001.fbat", f->dir);
  size_t len;
  uint8_t *first = tu_read_file(p, &len);
  snprintf(p, sizeof p, "%s/000002.fbat", f->dir);
  FILE *fp = fopen(p, "wb");
  assert_int_equal(fwrite(first, 1, 11, fp), 11); /* magic, length, 3 bytes of the map */
  fclose(fp);
  free(first);
  bp_store *s = open_ok(f);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(count_of(s), 3);
  assert_int_equal(d.torn_bytes_dropped, 11);
  bp_append_receipt r;
  assert_ok(bp_append(s, &ALICE, 0x1001, "\xa1y", 2, &r));
  assert_ok(bp_close(s));
  s = open_ok(f);
  assert_int_equal(count_of(s), 4);
  bp_event *ev;
  assert_ok(bp_get(s, r.event_id, &ev));
  tu_assert_bytes_eq(ev->payload, ev->payload_len, "\xa1y", 2, "payload");
  bp_event_free(ev);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after a segment cut inside its header");
}

static void corrupt_checkpoint_is_rebuilt_not_fatal(void **state) {
  fixture *f = *state;
  make_store(f, 5);
  tu_seal_newest(f->dir);
  assert_ok(tu_write_checkpoint(f->dir));
  write_file_byte(f->dir, "index.ckpt", 40, read_file_byte(f->dir, "index.ckpt", 40) ^ 0xff);
  bp_store *s = open_ok(f);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_SIDX);
  assert_int_equal(count_of(s), 5);
  assert_ok(bp_close(s));
  /* The open built the persistent index, and the next open takes it. */
  s = open_ok(f);
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_INDEX);
  assert_ok(bp_close(s));
}

static void truncated_checkpoint_is_rebuilt(void **state) {
  fixture *f = *state;
  make_store(f, 5);
  assert_ok(tu_write_checkpoint(f->dir));
  char p[4200];
  snprintf(p, sizeof p, "%s/index.ckpt", f->dir);
  assert_int_equal(truncate(p, 30), 0);
  bp_store *s = open_ok(f);
  assert_int_equal(count_of(s), 5);
  assert_ok(bp_close(s));
}

typedef struct log_capture {
  int warnings;
  char first_warning[512];
  char last[512];
} log_capture;

static void capture_log(int level, const char *msg, void *ctx) {
  log_capture *c = ctx;
  if (level <= BP_LOG_WARN && c->warnings++ == 0) snprintf(c->first_warning, sizeof c->first_warning, "%s", msg);
  snprintf(c->last, sizeof c->last, "%s", msg);
}

/* Where the value of the first MessagePack key `key` (a fixstr) starts in d,
 * or -1. */
static long value_of_key(const uint8_t *d, size_t len, const char *key) {
  size_t kl = strlen(key);
  for (size_t i = 0; i + 1 + kl < len; i++)
    if (d[i] == (0xa0 | kl) && memcmp(d + i + 1, key, kl) == 0) return (long)(i + 1 + kl);
  return -1;
}

/* A checkpoint whose CRC is right but whose contents contradict the store
 * is not believed: the index is rebuilt from the segments, and the warning
 * says what was wrong. */
static void checkpoint_that_lies_under_a_valid_crc_is_rebuilt(void **state) {
  fixture *f = *state;
  make_store(f, 3);
  /* Sealed: its trailer proves where its frames end, and a checkpoint that
   * says otherwise is the liar. (An unsealed segment has no such proof: a
   * checkpoint listing frames past its end is believed, events were lost.) */
  tu_seal_newest(f->dir);
  assert_ok(tu_write_checkpoint(f->dir));
  char p[4200];
  snprintf(p, sizeof p, "%s/index.ckpt", f->dir);
  size_t len;
  uint8_t *good = tu_read_file(p, &len);
  /* Each lie: the key whose value changes (NULL: the header's version at
   * offset 6), the encoding the value must have (its first byte), the
   * bytes written over the value, and what the warning must say. */
  struct {
    const char *key;
    uint8_t form;
    uint8_t bytes[3];
    size_t nbytes;
    const char *reason;
  } lies[] = {
      {NULL, 2, {3}, 1, "unsupported version 3"},
      {"global_sequence", 3, {4}, 1, "global_sequence 4 but 3 entries"},
      {"watermark_offset", 0xcd, {0xcd, 0xff, 0xff}, 3, "past the end of segment 1"},
      {"length", 0xcd, {0xcd, 0xff, 0xff}, 3, "entry 0 points outside segment 1"},
      {"entity_id", 1, {0x7f}, 1, "entry 0: bad string id"},
  };
  for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
    uint8_t *d = malloc(len);
    memcpy(d, good, len);
    long at = lies[i].key ? value_of_key(d + 12, len - 12, lies[i].key) + 12 : 6;
    if (at < 12 && lies[i].key) fail_msg("lie %zu: key %s not in the checkpoint", i, lies[i].key);
    if (d[at] != lies[i].form)
      fail_msg("lie %zu: %s is encoded 0x%02x, the test expects 0x%02x", i, lies[i].key ? lies[i].key : "version",
               d[at], lies[i].form);
    memcpy(d + at, lies[i].bytes, lies[i].nbytes);
    bp__put_le32(d + 8, bp__crc32(d + 12, len - 12));
    FILE *fp = fopen(p, "wb");
    assert_int_equal(fwrite(d, 1, len, fp), len);
    fclose(fp);
    free(d);
    tu_drop_index(f->dir); /* the open before built one */

    log_capture cap = {0};
    bp_config cfg = f->cfg;
    cfg.log_fn = capture_log;
    cfg.log_ctx = &cap;
    bp_store *s = NULL;
    assert_ok(bp_open(&cfg, &s));
    bp_store_diagnostics diag;
    bp_diagnostics(s, &diag);
    if (diag.open_path == BP_OPEN_CHECKPOINT) fail_msg("lie %zu (%s): the checkpoint was believed", i, lies[i].reason);
    if (!strstr(cap.first_warning, "checkpoint") || !strstr(cap.first_warning, lies[i].reason))
      fail_msg("lie %zu: warning \"%s\" does not say \"%s\"", i, cap.first_warning, lies[i].reason);
    assert_int_equal(count_of(s), 3);
    assert_ok(bp_close(s));
    tu_assert_verifies(f->dir, lies[i].reason);
  }
  free(good);
}

/* A value of a random bit length (so that every integer width occurs), at most max. */
static uint64_t any_width(uint64_t *x, uint64_t max) {
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  unsigned bits = (unsigned)(*x % 65);
  uint64_t v = bits == 64 ? *x : *x & ((1ull << bits) - 1);
  return v > max ? max : v;
}

/* Checkpoint entries in the writers' layout read the same by the one-pass
 * reader and the general one, field for field, over every integer width and
 * both forms of causation; entries in other valid layouts (keys in another
 * order, wide integers, bin hashes) fall back to the general reader and read
 * the same too. */
static void checkpoint_entries_read_alike_on_both_paths(void **state) {
  (void)state;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 2000; i++) {
    bp__ientry e;
    memset(&e, 0, sizeof e);
    e.event_id = bp_id_v7();
    e.correlation_id = i % 3 ? bp_id_v7() : e.event_id;
    if (i % 2) e.causation_id = bp_id_v7();
    e.entity = (uint32_t)any_width(&x, UINT32_MAX);
    e.scope = (uint32_t)any_width(&x, UINT32_MAX);
    e.kind = (bp_kind)any_width(&x, UINT16_MAX);
    e.wall_ms = any_width(&x, UINT64_MAX);
    e.clock = (uint32_t)any_width(&x, UINT32_MAX);
    for (int k = 0; k < 32; k++) {
      e.prev_hash[k] = (uint8_t)any_width(&x, 255);
      e.event_hash[k] = (uint8_t)any_width(&x, 255);
    }
    e.segment_id = (uint32_t)any_width(&x, UINT32_MAX);
    e.offset = any_width(&x, UINT64_MAX);
    e.length = (uint32_t)any_width(&x, UINT32_MAX);
    uint64_t seq = any_width(&x, UINT64_MAX);
    bp__buf b;
    bp__buf_init(&b);
    bp__checkpoint_put_entry(&b, &e, seq);
    assert_false(b.oom);
    bp__mp_reader fast, general;
    bp__mp_reader_init(&fast, b.data, b.len);
    bp__mp_reader_init(&general, b.data, b.len);
    bp__ientry ef, eg;
    uint64_t sf, sg;
    assert_ok(bp__checkpoint_read_entry(&fast, &ef, &sf));
    assert_ok(bp__checkpoint_read_entry_general(&general, &eg, &sg));
    if (memcmp(&ef, &e, sizeof e) != 0 || sf != seq) fail_msg("entry %d: the one-pass reader differs", i);
    if (memcmp(&eg, &e, sizeof e) != 0 || sg != seq) fail_msg("entry %d: the general reader differs", i);
    assert_ptr_equal(fast.p, fast.end);
    bp__buf_free(&b);
  }

  /* Other valid layouts of one entry: entity_id and scope_id swapped; the
   * clock as a uint64; prev_hash as bin8. */
  bp__ientry e;
  memset(&e, 0, sizeof e);
  e.event_id = bp_id_v7();
  e.correlation_id = e.event_id;
  e.entity = 1;
  e.scope = 2;
  e.kind = 0x1001;
  e.wall_ms = 1764150000000ull;
  e.clock = 7;
  memset(e.prev_hash, 0xab, 32);
  memset(e.event_hash, 0xcd, 32);
  e.segment_id = 1;
  e.offset = 70000;
  e.length = 468;
  bp__buf b;
  bp__buf_init(&b);
  bp__checkpoint_put_entry(&b, &e, 9);
  const struct {
    const char *what, *from;
    size_t from_len;
    const char *to;
    size_t to_len;
  } edits[] = {
      {"keys swapped", "\xa9" "entity_id" "\x01" "\xa8" "scope_id" "\x02", 21,
       "\xa8" "scope_id" "\x02" "\xa9" "entity_id" "\x01", 21},
      {"wide clock", "\xa5" "clock" "\x07", 7, "\xa5" "clock" "\xcf\0\0\0\0\0\0\0\x07", 15},
      {"bin hash", "\xa9" "prev_hash" "\xdc\x00\x20", 13, "\xa9" "prev_hash" "\xc4\x20", 12},
  };
  for (size_t k = 0; k < sizeof edits / sizeof edits[0]; k++) {
    uint8_t *at = memmem(b.data, b.len, edits[k].from, edits[k].from_len);
    assert_non_null(at);
    size_t before = (size_t)(at - b.data);
    size_t tail_from = before + edits[k].from_len;
    size_t rest = b.len - tail_from;
    if (k == 2) rest -= 32 * 2; /* the 32 integers 0xcc 0xab */
    uint8_t v[512];
    size_t n = 0;
    memcpy(v, b.data, before);
    n = before;
    memcpy(v + n, edits[k].to, edits[k].to_len);
    n += edits[k].to_len;
    if (k == 2) {
      memset(v + n, 0xab, 32);
      n += 32;
      memcpy(v + n, b.data + tail_from + 64, rest);
    } else {
      memcpy(v + n, b.data + tail_from, rest);
    }
    n += rest;
    bp__mp_reader r;
    bp__mp_reader_init(&r, v, n);
    bp__ientry got;
    uint64_t seq;
    bp_status st = bp__checkpoint_read_entry(&r, &got, &seq);
    if (st) fail_msg("%s: %s", edits[k].what, bp_last_error()->message);
    if (memcmp(&got, &e, sizeof e) != 0 || seq != 9) fail_msg("%s: the entry reads differently", edits[k].what);
    assert_ptr_equal(r.p, r.end);
  }
  bp__buf_free(&b);
}

static void lying_sidx_footer_is_ignored_for_a_scan(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  make_store(f, 5);
  tu_seal_newest(f->dir);
  /* The trailer's entry count (at size-8) claims one event more. */
  uint8_t n = read_file_byte(f->dir, "000001.fbat", -8);
  assert_int_equal(n, 5);
  write_file_byte(f->dir, "000001.fbat", -8, 6);
  bp_store *s = open_ok(f);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.segments_scanned, 1);
  assert_int_equal(count_of(s), 5);
  assert_ok(bp_close(s));
}

/* A footer whose trailer claims four billion events, in a store of several
 * segments (whose footers size the index before any is loaded): the claim is
 * not believed, memory is not reserved for it, the segment is scanned. */
static void footer_claiming_billions_of_events_is_scanned(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  f->cfg.segment_max_bytes = 2048;
  make_store(f, 12);
  tu_seal_newest(f->dir);
  assert_true(file_size(f->dir, "000002.fbat") > 0);
  for (int i = -8; i < -4; i++) write_file_byte(f->dir, "000001.fbat", i, 0xff);
  bp_store *s = open_ok(f);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.segments_scanned, 1);
  assert_int_equal(count_of(s), 12);
  assert_ok(bp_close(s));
}

static void truncated_sidx_footer_is_ignored_for_a_scan(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  make_store(f, 5);
  tu_seal_newest(f->dir);
  char p[4200];
  snprintf(p, sizeof p, "%s/000001.fbat", f->dir);
  struct stat sb;
  stat(p, &sb);
  assert_int_equal(truncate(p, sb.st_size - 20), 0); /* trailer gone: an unsealed segment */
  bp_store *s = open_ok(f);
  assert_int_equal(count_of(s), 5);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.segments_scanned, 1);
  assert_ok(bp_close(s));
}

static void bad_frame_in_a_sealed_segment_fails_unless_salvaged(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  bp_store *s = open_ok(f);
  bp_append_receipt r[5];
  for (int i = 0; i < 5; i++) r[i] = append_text(s, &ALICE, "some payload");
  assert_ok(bp_close(s));
  tu_seal_newest(f->dir);
  /* Damage the third frame's body, and the footer's string table so that the
   * footer cannot be used and the frames are scanned. */
  long off = (long)r[2].disk_pos.offset + 20;
  write_file_byte(f->dir, "000001.fbat", off, read_file_byte(f->dir, "000001.fbat", off) ^ 0x40);
  long st_off = (long)r[4].disk_pos.offset + (long)r[4].disk_pos.length;
  write_file_byte(f->dir, "000001.fbat", st_off, 0xc1);
  s = NULL;
  assert_status(bp_open(&f->cfg, &s), BP_ECORRUPT);
  char want[64];
  snprintf(want, sizeof want, "offset %llu", (unsigned long long)r[2].disk_pos.offset);
  if (!strstr(bp_last_error()->message, "000001") || !strstr(bp_last_error()->message, want))
    fail_msg("message \"%s\" does not name segment 000001 and %s", bp_last_error()->message, want);
  /* Salvage keeps every readable frame: past the damaged one it goes on at
   * the next valid frame. */
  f->cfg.salvage = true;
  s = open_ok(f);
  assert_int_equal(count_of(s), 4);
  bp_event *ev;
  for (int i = 0; i < 5; i++) {
    assert_status(bp_get(s, r[i].event_id, &ev), i == 2 ? BP_ENOTFOUND : BP_OK);
    if (i != 2) bp_event_free(ev);
  }
  assert_ok(bp_close(s));
}

static void crc_mismatch_on_read_fails_ecrc(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r = append_text(s, &ALICE, "to be damaged");
  long off = (long)r.disk_pos.offset + (long)r.disk_pos.length - 3;
  write_file_byte(f->dir, "000001.fbat", off, read_file_byte(f->dir, "000001.fbat", off) ^ 1);
  bp_event *ev;
  assert_status(bp_get(s, r.event_id, &ev), BP_ECRC);
  assert_non_null(strstr(bp_last_error()->message, "000001"));
  assert_ok(bp_close(s));
}

/* A frame whose CRC is right but whose body is not an event (its map made an
 * array, the CRC fixed up): reading it fails BP_ECORRUPT, and the message
 * names the segment, the offset and what the decoder found. */
static void undecodable_frame_names_its_place_and_the_reason(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r = append_text(s, &ALICE, "to be damaged");
  assert_ok(bp_close(s));
  tu_seal_newest(f->dir); /* its footer indexes it again when the index is refused */
  long off = (long)r.disk_pos.offset;
  uint32_t body_len = r.disk_pos.length - BP__FRAME_PREFIX;
  uint8_t *body = malloc(body_len);
  assert_non_null(body);
  for (uint32_t i = 0; i < body_len; i++) body[i] = read_file_byte(f->dir, "000001.fbat", off + BP__FRAME_PREFIX + (long)i);
  assert_int_equal(body[0], 0x83); /* a map of three: event, entity, scope */
  body[0] = 0x93;
  uint32_t crc = bp__crc32(body, body_len);
  write_file_byte(f->dir, "000001.fbat", off + BP__FRAME_PREFIX, 0x93);
  for (int i = 0; i < 4; i++) write_file_byte(f->dir, "000001.fbat", off + 4 + i, (uint8_t)(crc >> (24 - 8 * i)));
  free(body);
  s = open_ok(f); /* by the checkpoint: the frame is not read on the way */
  bp_event *ev;
  assert_status(bp_get(s, r.event_id, &ev), BP_ECORRUPT);
  const char *m = bp_last_error()->message;
  char want[64];
  snprintf(want, sizeof want, "000001 offset %llu", (unsigned long long)r.disk_pos.offset);
  if (!strstr(m, want) || !strstr(m, "does not decode") || !strstr(m, "msgpack"))
    fail_msg("message \"%s\" should name %s and say why the frame does not decode", m, want);
  assert_ok(bp_close(s));
}

/* ------------------------------------------------------------ faults */

static int fail_writes;     /* writes to fail, then succeed */
static int fail_errno = EIO;
static size_t fail_from_len; /* only writes whose first part has at least this many bytes */

static ssize_t failing_pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
  if (fail_writes > 0 && iov[0].iov_len >= fail_from_len) {
    fail_writes--;
    errno = fail_errno;
    return -1;
  }
  return pwritev(fd, iov, cnt, off);
}

/* Fails writes at or past 1 MiB into the checkpoint's temporary file only. */
static ssize_t failing_checkpoint_piece(int fd, const struct iovec *iov, int cnt, off_t off) {
  char link[64], target[4200];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  target[n > 0 ? n : 0] = 0;
  if (off >= (off_t)1 << 20 && strstr(target, "index.ckpt.tmp")) {
    fail_writes++;
    errno = EIO;
    return -1;
  }
  return pwritev(fd, iov, cnt, off);
}

/* A SIDX footer of several 1 MiB pieces, written straight to the segment at
 * sealing, is byte for byte the footer encoded in memory, and the store
 * reopens by it. */
static void sidx_footer_in_pieces_is_the_encoded_footer(void **state) {
  fixture *f = *state;
  f->cfg.enable_checkpoint = false;
  bp_store *s = open_ok(f);
  static const bp_coord bob = {"user:bob", "scope:other"};
  for (int i = 0; i < 8000; i++) append_text(s, i % 3 ? &ALICE : &bob, "footer piece");
  uint64_t frames = frames_end(s);
  assert_ok(bp_close(s));
  tu_seal_newest(f->dir);
  char path[4200];
  snprintf(path, sizeof path, "%s/000001.fbat", f->dir);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  size_t footer = (size_t)sb.st_size - (size_t)frames;
  if (footer <= 1 << 20) fail_msg("footer of %zu bytes: one piece only", footer);
  uint8_t *disk = malloc(footer);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  assert_int_equal(pread(fd, disk, footer, (off_t)frames), (ssize_t)footer);
  close(fd);
  assert_ok(bp_open_readonly(&f->cfg, &s));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_SIDX);
  assert_int_equal(count_of(s), 8000);
  bp__buf b;
  bp__buf_init(&b);
  assert_ok(bp__sidx_encode(&s->ix, 0, 8000, frames, &b));
  tu_assert_bytes_eq(disk, footer, b.data, b.len, "SIDX footer");
  bp__buf_free(&b);
  free(disk);
  assert_ok(bp_close(s));
}

/* A checkpoint of several 1 MiB pieces is the same file as ever (the store
 * reopens by it); a failed piece fails the write with BP_EIO, leaves no
 * temporary file, and loses nothing: the older checkpoint and the segments
 * still hold every event. */
static void checkpoint_of_many_pieces_and_a_failed_piece(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  for (int i = 0; i < 4000; i++) append_text(s, &ALICE, "piece by piece");
  assert_ok(bp_close(s));
  assert_ok(tu_write_checkpoint(f->dir));
  char ckpt[4200], tmp[4200];
  snprintf(ckpt, sizeof ckpt, "%s/index.ckpt", f->dir);
  snprintf(tmp, sizeof tmp, "%s/index.ckpt.tmp", f->dir);
  struct stat sb;
  assert_int_equal(stat(ckpt, &sb), 0);
  if (sb.st_size <= 1 << 20) fail_msg("checkpoint of %lld bytes: one piece only", (long long)sb.st_size);
  f->cfg.enable_checkpoint = false; /* keeps index.ckpt: no persistent index replaces it */
  s = open_ok(f);
  bp_append_receipt last = append_text(s, &ALICE, "after");
  assert_ok(bp_close(s));
  fail_writes = 0;
  bp__os_table.pwritev = failing_checkpoint_piece;
  bp_status st = tu_write_checkpoint(f->dir);
  bp__os_table = bp__os_default;
  assert_int_equal(fail_writes, 1);
  assert_int_equal(st, BP_EIO);
  if (!strstr(bp_last_error()->message, "checkpoint")) fail_msg("unclear message: %s", bp_last_error()->message);
  if (stat(tmp, &sb) == 0) fail_msg("%s left behind", tmp);
  f->cfg.enable_checkpoint = true;
  s = open_ok(f);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.open_path, BP_OPEN_CHECKPOINT); /* the older one, then the segment after it */
  assert_int_equal(count_of(s), 4001);
  bp_event *ev;
  assert_ok(bp_get(s, last.event_id, &ev));
  bp_event_free(ev);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "checkpoint pieces");
}

static int fail_syncs;
static int failing_fsync(int fd) {
  if (fail_syncs > 0) {
    fail_syncs--;
    errno = EIO;
    return -1;
  }
  return fsync(fd);
}

/* Refuses writable mappings, so that appends take the write() path. */
static void *no_write_mapping(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  if (prot & PROT_WRITE) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  return mmap(addr, len, prot, flags, fd, off);
}

static int fail_fallocates;
static int failing_fallocate(int fd, int mode, off_t off, off_t len) {
  if (fail_fallocates > 0) {
    fail_fallocates--;
    errno = ENOSPC;
    return -1;
  }
  return fallocate(fd, mode, off, len);
}

static void failed_write_fails_eio_then_restarts_once(void **state) {
  fixture *f = *state;
  bp__os_table.mmap = no_write_mapping;
  bp_store *s = open_ok(f);
  bp_append_receipt ok1 = append_text(s, &ALICE, "acknowledged");
  bp__os_table.pwritev = failing_pwritev;
  fail_writes = 1;
  fail_errno = EIO; /* (a full disk is not fatal: appends_fit_in_the_space_left_... in test_integrity) */
  bp_append_receipt r;
  assert_status(bp_append(s, &ALICE, 0x1001, "lost", 4, &r), BP_EIO);
  assert_int_equal(bp_last_error()->sys_errno, EIO);
  assert_int_equal(count_of(s), 1);
  /* The policy (once) restarts on a fresh segment. */
  bp_append_receipt ok2 = append_text(s, &ALICE, "after restart");
  assert_int_equal(ok2.disk_pos.segment_id, 2);
  assert_int_equal(ok2.sequence, 1);
  /* A second failure spends the budget: the writer has failed for good. */
  fail_writes = 1;
  fail_errno = EIO;
  assert_status(bp_append(s, &ALICE, 0x1001, "lost", 4, &r), BP_EIO);
  assert_status(bp_append(s, &ALICE, 0x1001, "refused", 7, &r), BP_EWRITER);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_true(d.writer_failed);
  bp_close(s);
  bp__os_table = bp__os_default;
  /* Nothing acknowledged was lost, nothing refused was kept. */
  s = open_ok(f);
  assert_int_equal(count_of(s), 2);
  bp_entry e;
  assert_ok(bp_get_entry(s, ok1.event_id, &e));
  assert_ok(bp_get_entry(s, ok2.event_id, &e));
  assert_int_equal(e.clock, 1);
  assert_ok(bp_close(s));
}

static void bounded_restart_policy_allows_n_restarts(void **state) {
  fixture *f = *state;
  f->cfg.restart_policy = (bp_restart_policy){BP_RESTART_BOUNDED, 3, 60000};
  bp__os_table.mmap = no_write_mapping;
  bp_store *s = open_ok(f);
  bp__os_table.pwritev = failing_pwritev;
  fail_errno = EIO;
  bp_append_receipt r;
  for (int i = 0; i < 3; i++) {
    fail_writes = 1;
    assert_status(bp_append(s, &ALICE, 0x1001, "x", 1, &r), BP_EIO);
    append_text(s, &ALICE, "fine");
  }
  fail_writes = 1;
  assert_status(bp_append(s, &ALICE, 0x1001, "x", 1, &r), BP_EIO);
  assert_status(bp_append(s, &ALICE, 0x1001, "x", 1, &r), BP_EWRITER);
  bp_close(s);
  bp__os_table = bp__os_default;
  s = open_ok(f);
  assert_int_equal(count_of(s), 3);
  assert_ok(bp_close(s));
}

static void failed_fsync_fails_the_append_and_keeps_earlier_events(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 1;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "durable");
  bp__os_table.fsync = failing_fsync;
  fail_syncs = 1;
  bp_append_receipt r;
  assert_status(bp_append(s, &ALICE, 0x1001, "not durable", 11, &r), BP_EIO);
  assert_non_null(strstr(bp_last_error()->message, "fsync"));
  assert_int_equal(count_of(s), 1);
  append_text(s, &ALICE, "on a fresh segment");
  assert_ok(bp_close(s));
  bp__os_table = bp__os_default;
  s = open_ok(f);
  assert_int_equal(count_of(s), 2);
  assert_ok(bp_close(s));
}

/* A segment's first 256 KiB of frames in a process are written without
 * space allocated ahead (writer.c); the tests below are about the frames
 * after them. Appends events of 30 KB (each write below 64 KiB) until the
 * segment is past that: PLAIN_EVENTS of them, or fewer when one fails (its
 * status returned; *done counts those that did not). */
enum { PLAIN_LEN = 30000, PLAIN_EVENTS = 10 };
static bp_status try_past_plain_writes(bp_store *s, int *done) {
  static uint8_t p[PLAIN_LEN + 3];
  p[0] = 0xda; /* str 16 */
  p[1] = PLAIN_LEN >> 8 & 0xff;
  p[2] = PLAIN_LEN & 0xff;
  memset(p + 3, 'p', PLAIN_LEN);
  bp_append_receipt r;
  for (*done = 0; *done < PLAIN_EVENTS; ++*done) {
    bp_status st = bp_append(s, &ALICE, 0x1001, p, sizeof p, &r);
    if (st) return st;
  }
  return BP_OK;
}

static void past_plain_writes(bp_store *s) {
  int done;
  assert_ok(try_past_plain_writes(s, &done));
}

/* The mapped write path: running out of space is an error from the space
 * reservation (fallocate), never a crash. A step that does not fit falls back
 * to what the append needs; when that fails too the append fails, and the
 * writer goes on in the same segment (a full disk damages nothing). */
static void failed_space_reservation_fails_eio_and_the_writer_goes_on(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp__os_table.fallocate = failing_fallocate;
  fail_fallocates = 2;
  int done;
  assert_status(try_past_plain_writes(s, &done), BP_EIO);
  assert_int_equal(bp_last_error()->sys_errno, ENOSPC);
  assert_true(done > 0);
  bp_append_receipt ok = append_text(s, &ALICE, "space again");
  assert_int_equal(ok.sequence, (uint64_t)done);
  assert_int_equal(ok.disk_pos.segment_id, 1);
  assert_ok(bp_close(s));
  bp__os_table = bp__os_default;
  s = open_ok(f);
  assert_int_equal(count_of(s), (uint64_t)done + 1);
  assert_ok(bp_close(s));
}

/* A crash leaves the space allocated ahead as zeros after the last frame: a
 * reopen reads it as the end of the frames, not as damage. Both ways of
 * allocating it: fallocate for the mapped segment (sync every 1000) and
 * zeros written ahead when every event is fsynced. */
static void space_allocated_ahead_is_not_a_torn_tail(void **state) {
  fixture *f = *state;
  const uint32_t sync_every[2] = {1000, 1};
  for (int m = 0; m < 2; m++) {
    tu_remove_tree(f->dir);
    f->cfg.sync_every_n_events = sync_every[m];
    pid_t pid = fork();
    if (pid == 0) {
      bp_store *s;
      if (bp_open(&f->cfg, &s)) _exit(2);
      past_plain_writes(s);
      bp_append_receipt r;
      for (int i = 0; i < 10; i++)
        if (bp_append(s, &ALICE, 0x1001, "x", 1, &r)) _exit(3);
      _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_int_equal(WEXITSTATUS(status), 0);
    if (file_size(f->dir, "000001.fbat") < PLAIN_LEN * PLAIN_EVENTS + 64 * 1024)
      fail_msg("sync every %u: the segment is %lld bytes, no space allocated ahead", sync_every[m],
               (long long)file_size(f->dir, "000001.fbat"));
    bp_store *s = open_ok(f);
    bp_store_diagnostics d;
    bp_diagnostics(s, &d);
    assert_int_equal(count_of(s), PLAIN_EVENTS + 10);
    assert_int_equal(d.torn_bytes_dropped, 0);
    assert_ok(bp_close(s));
  }
}

/* Whether any extent of fd's first len bytes is allocated but unwritten
 * (fallocate), by FIEMAP: 1, 0, or -1 where the file system cannot tell. */
static int has_unwritten_extent(int fd, off_t len) {
  enum { N = 64 };
  union {
    struct fiemap map;
    char room[sizeof(struct fiemap) + N * sizeof(struct fiemap_extent)];
  } u;
  memset(&u, 0, sizeof u);
  u.map.fm_length = (uint64_t)len;
  u.map.fm_flags = FIEMAP_FLAG_SYNC;
  u.map.fm_extent_count = N;
  if (ioctl(fd, FS_IOC_FIEMAP, &u.map) != 0) return -1;
  for (uint32_t i = 0; i < u.map.fm_mapped_extents; i++)
    if (u.map.fm_extents[i].fe_flags & FIEMAP_EXTENT_UNWRITTEN) return 1;
  return 0;
}

/* With every event fsynced, frames are written over zeros written ahead of
 * them: the file reaches past the frames, the bytes after them are zero, and
 * no part of it is an unwritten extent that an fsync would have to convert.
 * The mapped segment of sync every 1000, for contrast, is fallocated ahead. */
static void durable_appends_land_on_zeros_written_ahead(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 1;
  bp_store *s = open_ok(f);
  past_plain_writes(s);
  for (int i = 0; i < 20; i++) append_text(s, &ALICE, "durable");
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  char path[4200];
  snprintf(path, sizeof path, "%s/000001.fbat", f->dir);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  struct stat sb;
  assert_int_equal(fstat(fd, &sb), 0);
  if ((uint64_t)sb.st_size < d.active_segment_bytes + 64 * 1024)
    fail_msg("segment of %lld bytes for %llu bytes of frames: no zeros ahead", (long long)sb.st_size,
             (unsigned long long)d.active_segment_bytes);
  size_t tail = (size_t)sb.st_size - (size_t)d.active_segment_bytes;
  uint8_t *buf = malloc(tail);
  assert_int_equal(pread(fd, buf, tail, (off_t)d.active_segment_bytes), (ssize_t)tail);
  for (size_t i = 0; i < tail; i++)
    if (buf[i]) fail_msg("byte %zu after the frames is 0x%02x, not zero", i, buf[i]);
  free(buf);
  int unwritten = has_unwritten_extent(fd, sb.st_size);
  close(fd);
  assert_ok(bp_close(s));
  if (unwritten < 0) {
    print_message("FIEMAP not supported here: extents not checked\n");
    return;
  }
  assert_int_equal(unwritten, 0);

  /* The contrast: a mapped segment's space ahead is fallocated. */
  tu_remove_tree(f->dir);
  f->cfg.sync_every_n_events = 1000;
  s = open_ok(f);
  past_plain_writes(s);
  append_text(s, &ALICE, "mapped");
  fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  assert_int_equal(fstat(fd, &sb), 0);
  unwritten = has_unwritten_extent(fd, sb.st_size);
  close(fd);
  assert_ok(bp_close(s));
  assert_int_equal(unwritten, 1);
}

/* Whether the page at p is mapped in this process (/proc/self/pagemap):
 * 1, 0, or -1 where that cannot be read. */
static int page_present(const void *p) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return -1;
  uint64_t word = 0;
  off_t at = (off_t)((uintptr_t)p / (uintptr_t)sysconf(_SC_PAGESIZE) * sizeof word);
  ssize_t got = pread(fd, &word, sizeof word, at);
  close(fd);
  return got == (ssize_t)sizeof word ? (int)(word >> 63) : -1;
}

/* Pages that frames have filled leave the segment's mapping when their
 * write-back starts (their frames stay in the page cache); the page being
 * filled stays mapped. Every event still reads back, before and after a reopen. */
static void filled_pages_leave_the_mapping_when_written_back(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 100000;
  bp_store *s = open_ok(f);
  char text[200];
  memset(text, 'w', sizeof text - 1);
  text[sizeof text - 1] = 0;
  bp_append_receipt first = append_text(s, &ALICE, text);
  while (frames_end(s) < 512 * 1024) append_text(s, &ALICE, text);
  if (!s->wmap) {
    print_message("segment not mapped here: nothing to check\n");
    assert_ok(bp_close(s));
    return;
  }
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const uint8_t *filling = s->wmap + bp__os_page_floor(s->wsize - 1);
  int present = page_present(filling);
  if (present < 0) {
    print_message("no /proc/self/pagemap: mappings not checked\n");
  } else {
    assert_int_equal(present, 1); /* the check sees a mapped page */
    if (s->wflushed < 256 * 1024) fail_msg("write-back started below %llu only", (unsigned long long)s->wflushed);
    for (uint64_t at = 0; at < s->wflushed; at += page)
      if (page_present(s->wmap + at)) fail_msg("page at %llu is still mapped after its write-back started (below %llu)",
                                              (unsigned long long)at, (unsigned long long)s->wflushed);
  }
  uint64_t n = count_of(s);
  bp_event *ev;
  assert_ok(bp_get(s, first.event_id, &ev));
  assert_int_equal(ev->payload_len, strlen(text));
  assert_memory_equal(ev->payload, text, strlen(text));
  bp_event_free(ev);
  assert_ok(bp_close(s));
  s = open_ok(f);
  assert_int_equal(count_of(s), n);
  assert_ok(bp_get(s, first.event_id, &ev));
  assert_memory_equal(ev->payload, text, strlen(text));
  bp_event_free(ev);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "filled pages dropped from the mapping");
}

/* Failing to write the zeros ahead fails no append: the frames extend the
 * file themselves, and every one is there after a reopen. */
static int preads;
static ssize_t counting_pread(int fd, void *buf, size_t n, off_t off) {
  preads++;
  return pread(fd, buf, n, off);
}

/* Events in the active segment are read through a read-only mapping of it,
 * with the writer mapping it (sync every 1000) or writing with pwrite (sync
 * every event): no pread per frame. Readers see every published frame. */
static void active_segment_is_read_through_its_mapping(void **state) {
  fixture *f = *state;
  const uint32_t modes[2] = {1000, 1};
  for (int m = 0; m < 2; m++) {
    f->cfg.sync_every_n_events = modes[m];
    bp_store *s = open_ok(f);
    bp_append_receipt r[50];
    char text[50][32];
    for (int i = 0; i < 50; i++) {
      snprintf(text[i], sizeof text[i], "event %d of mode %d", i, m);
      r[i] = append_text(s, &ALICE, text[i]);
    }
    preads = 0;
    bp__os_table.pread = counting_pread;
    for (int i = 0; i < 50; i++) expect_text(s, r[i].event_id, "user:alice", text[i], "active segment");
    bp_events walk;
    assert_ok(bp_walk_ancestors(s, r[49].event_id, 50, &walk));
    assert_int_equal(walk.len, 50);
    bp_events_free(&walk);
    bp__os_table = bp__os_default;
    if (preads) fail_msg("sync every %u: %d preads for reads of the active segment", modes[m], preads);
    assert_int_equal(r[49].disk_pos.segment_id, s->wseg);
    assert_ok(bp_close(s));
    /* Sealed by the close: read again after reopening. */
    s = open_ok(f);
    expect_text(s, r[49].event_id, "user:alice", text[49], "after reopen");
    assert_ok(bp_close(s));
  }
}

/* A released segment's pages leave the process (compaction releases each
 * source segment once copied) and come back on the next read. */
static void released_segment_pages_leave_and_come_back(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_append_receipt r = append_text(s, &ALICE, "in a sealed segment");
  assert_ok(bp_close(s));
  s = open_ok(f);
  expect_text(s, r.event_id, "user:alice", "in a sealed segment", "first read");
  size_t len;
  const uint8_t *map = bp__segment_map(s, r.disk_pos.segment_id, &len);
  if (!map || page_present(map + r.disk_pos.offset) < 0) {
    print_message("segment not mapped or no /proc/self/pagemap: nothing to check\n");
    assert_ok(bp_close(s));
    return;
  }
  assert_int_equal(page_present(map + r.disk_pos.offset), 1);
  bp__segment_release(s, r.disk_pos.segment_id);
  assert_int_equal(page_present(map + r.disk_pos.offset), 0);
  expect_text(s, r.event_id, "user:alice", "in a sealed segment", "read after the release");
  assert_int_equal(page_present(map + r.disk_pos.offset), 1);
  assert_ok(bp_close(s));
}

static void a_failed_write_of_zeros_ahead_fails_no_append(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 1;
  bp_store *s = open_ok(f);
  bp__os_table.pwritev = failing_pwritev;
  fail_writes = 1000;
  fail_errno = ENOSPC;
  fail_from_len = 64 * 1024; /* the zeros, not the frames */
  past_plain_writes(s);
  for (int i = 0; i < 10; i++) append_text(s, &ALICE, "no zeros");
  assert_true(fail_writes < 1000); /* the zeros were tried, and refused */
  fail_writes = 0;
  fail_from_len = 0;
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(file_size(f->dir, "000001.fbat"), (off_t)d.active_segment_bytes);
  assert_ok(bp_close(s));
  bp__os_table = bp__os_default;
  s = open_ok(f);
  assert_int_equal(count_of(s), PLAIN_EVENTS + 10);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "zeros refused");
}

static void bp_sync_forces_durability(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "x");
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.durable_sequence, 0);
  assert_ok(bp_sync(s));
  bp_diagnostics(s, &d);
  assert_int_equal(d.durable_sequence, 1);
  assert_ok(bp_close(s));
}

/* An fsync that bp_sync asks for fails: BP_EIO naming the fsync, nothing
 * acknowledged is lost, and the writer goes on in a fresh segment (the
 * restart policy's one restart). */
static void failed_bp_sync_fails_eio_and_keeps_acknowledged_events(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "one");
  append_text(s, &ALICE, "two");
  bp__os_table.fsync = failing_fsync;
  fail_syncs = 1;
  assert_status(bp_sync(s), BP_EIO);
  assert_non_null(strstr(bp_last_error()->message, "fsync"));
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.durable_sequence, 0);
  assert_int_equal(count_of(s), 2);
  bp_append_receipt r = append_text(s, &ALICE, "three");
  assert_int_equal(r.disk_pos.segment_id, 2);
  assert_ok(bp_sync(s));
  bp_diagnostics(s, &d);
  assert_int_equal(d.durable_sequence, 3);
  assert_ok(bp_close(s));
  bp__os_table = bp__os_default;
  s = open_ok(f);
  assert_int_equal(count_of(s), 3);
  assert_ok(bp_close(s));
  tu_assert_verifies(f->dir, "after a failed bp_sync");
}

/* ------------------------------------------------------------ misc */

static void readonly_open_reads_and_refuses_appends(void **state) {
  fixture *f = *state;
  make_store(f, 3);
  bp_store *w = open_ok(f); /* a writer holds the lock */
  bp_store *s;
  assert_ok(bp_open_readonly(&f->cfg, &s));
  assert_int_equal(count_of(s), 3);
  bp_append_receipt r;
  assert_status(bp_append(s, &ALICE, 0x1001, "x", 1, &r), BP_EREADONLY);
  assert_status(bp_sync(s), BP_EREADONLY);
  assert_ok(bp_close(s));
  assert_ok(bp_close(w));
  bp_config c = f->cfg;
  char missing[4200];
  snprintf(missing, sizeof missing, "%s/nope", f->tmp);
  c.data_dir = missing;
  assert_status(bp_open_readonly(&c, &s), BP_EIO);
}

static int64_t backwards_clock(void *ctx) {
  int *calls = ctx;
  return 2000000000000000ll - 1000000ll * (*calls)++; /* one second earlier each call */
}

static void wall_clock_never_goes_backwards_for_an_entity(void **state) {
  fixture *f = *state;
  int calls = 0;
  f->cfg.clock = backwards_clock;
  f->cfg.clock_ctx = &calls;
  bp_store *s = open_ok(f);
  bp_append_receipt r[3];
  for (int i = 0; i < 3; i++) r[i] = append_text(s, &ALICE, "t");
  uint64_t prev = 0;
  for (int i = 0; i < 3; i++) {
    bp_entry e;
    assert_ok(bp_get_entry(s, r[i].event_id, &e));
    assert_true(e.wall_ms >= prev);
    prev = e.wall_ms;
    bp_event *ev;
    assert_ok(bp_get(s, r[i].event_id, &ev));
    assert_int_equal(ev->header.timestamp_us, 2000000000000000ll - 1000000ll * i);
    bp_event_free(ev);
  }
  assert_int_equal(prev, 2000000000000ull);
  assert_ok(bp_close(s));
}

static void log_callback_reports_a_dropped_torn_tail(void **state) {
  fixture *f = *state;
  pid_t pid = fork();
  if (pid == 0) {
    bp_store *s;
    if (bp_open(&f->cfg, &s)) _exit(2);
    bp_append_receipt r;
    bp_append(s, &ALICE, 0x1001, "one", 3, &r);
    bp_append(s, &ALICE, 0x1001, "two", 3, &r);
    char path[4200];
    snprintf(path, sizeof path, "%s/000001.fbat", f->dir);
    if (truncate(path, (off_t)(r.disk_pos.offset + r.disk_pos.length - 1))) _exit(3);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  log_capture cap = {0};
  f->cfg.log_fn = capture_log;
  f->cfg.log_ctx = &cap;
  bp_store *s = open_ok(f);
  assert_int_equal(count_of(s), 1);
  assert_true(cap.warnings >= 1);
  assert_ok(bp_close(s));
}

#define THREADS 4
#define PER_THREAD 500

typedef struct thread_arg {
  bp_store *s;
  int t;
  bp_append_receipt r[PER_THREAD];
} thread_arg;

static void *appender(void *p) {
  thread_arg *a = p;
  char entity[32];
  snprintf(entity, sizeof entity, "thread:%d", a->t);
  bp_coord c = {entity, "scope:mt"};
  for (int i = 0; i < PER_THREAD; i++)
    if (bp_append(a->s, &c, 0x1001, &i, sizeof i, &a->r[i]) != BP_OK) return (void *)1;
  return NULL;
}

static void concurrent_appends_get_dense_sequences_and_clocks(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 64 * 1024;
  bp_store *s = open_ok(f);
  thread_arg *args = calloc(THREADS, sizeof *args);
  pthread_t th[THREADS];
  for (int t = 0; t < THREADS; t++) {
    args[t].s = s;
    args[t].t = t;
    pthread_create(&th[t], NULL, appender, &args[t]);
  }
  for (int t = 0; t < THREADS; t++) {
    void *rv;
    pthread_join(th[t], &rv);
    assert_null(rv);
  }
  uint8_t *seen = calloc(THREADS * PER_THREAD, 1);
  for (int t = 0; t < THREADS; t++)
    for (int i = 0; i < PER_THREAD; i++) {
      uint64_t q = args[t].r[i].sequence;
      assert_true(q < THREADS * PER_THREAD);
      assert_false(seen[q]);
      seen[q] = 1;
      if (i) assert_true(q > args[t].r[i - 1].sequence);
    }
  assert_int_equal(count_of(s), THREADS * PER_THREAD);
  assert_ok(bp_close(s));
  s = open_ok(f);
  for (int t = 0; t < THREADS; t++) {
    char entity[32];
    snprintf(entity, sizeof entity, "thread:%d", t);
    bp_entries st;
    assert_ok(bp_stream(s, entity, &st));
    assert_int_equal(st.len, PER_THREAD);
    for (size_t i = 0; i < st.len; i++) {
      assert_int_equal(st.items[i].clock, i);
      assert_int_equal(st.items[i].global_sequence, args[t].r[i].sequence);
    }
    bp_entries_free(&st);
  }
  assert_ok(bp_close(s));
  free(seen);
  free(args);
}

static void *keyed_appender(void *p) {
  thread_arg *a = p;
  char entity[32];
  snprintf(entity, sizeof entity, "thread:%d", a->t);
  bp_coord c = {entity, "scope:group"};
  bp_append_options o;
  memset(&o, 0, sizeof o);
  for (int i = 0; i < PER_THREAD / 5; i++) {
    o.idempotency_key = bp_id_v7();
    if (bp_append_with(a->s, &c, 0x1001, &i, sizeof i, &o, &a->r[i]) != BP_OK) return (void *)1;
  }
  return NULL;
}

/* Durable group commit: concurrent appends are written in shared groups (one
 * write and one fsync each), and each still gets its own dense sequence. */
static void group_commit_shares_fsyncs_between_concurrent_appends(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 1;
  f->cfg.group_commit_max_batch = 0;
  bp_store *s = open_ok(f);
  thread_arg *args = calloc(THREADS, sizeof *args);
  pthread_t th[THREADS];
  for (int t = 0; t < THREADS; t++) {
    args[t].s = s;
    args[t].t = t;
    pthread_create(&th[t], NULL, keyed_appender, &args[t]);
  }
  for (int t = 0; t < THREADS; t++) {
    void *rv;
    pthread_join(th[t], &rv);
    assert_null(rv);
  }
  const int total = THREADS * (PER_THREAD / 5);
  assert_int_equal(count_of(s), total);
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  assert_int_equal(d.durable_sequence, total);      /* every group was fsynced */
  assert_int_equal(d.fsyncs, d.write_groups);
  assert_true(d.write_groups <= (uint64_t)total);
  uint8_t *seen = calloc(total, 1);
  for (int t = 0; t < THREADS; t++)
    for (int i = 0; i < PER_THREAD / 5; i++) {
      uint64_t q = args[t].r[i].sequence;
      assert_true(q < (uint64_t)total);
      assert_false(seen[q]);
      seen[q] = 1;
    }
  assert_ok(bp_close(s));
  free(seen);
  free(args);
}

/* Which thread called each fsync, and a gate that holds the first one armed. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool armed, held, released;
  pthread_t callers[8];
  int calls;
} sync_gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false, false, {0}, 0};

static int recording_fsync(int fd) {
  pthread_mutex_lock(&sync_gate.lock);
  if (sync_gate.calls < 8) sync_gate.callers[sync_gate.calls++] = pthread_self();
  if (sync_gate.armed) {
    sync_gate.armed = false;
    sync_gate.held = true;
    pthread_cond_broadcast(&sync_gate.cond);
    while (!sync_gate.released) pthread_cond_wait(&sync_gate.cond, &sync_gate.lock);
  }
  pthread_mutex_unlock(&sync_gate.lock);
  return fsync(fd);
}

typedef struct keyed_one {
  bp_store *s;
  const char *entity;
  pthread_t self;
  bp_append_receipt r;
  bp_status st;
} keyed_one;

static void *append_keyed_once(void *p) {
  keyed_one *a = p;
  a->self = pthread_self();
  bp_coord c = {a->entity, "scope:group"};
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  a->st = bp_append_with(a->s, &c, 0x1001, "x", 1, &o, &a->r);
  return NULL;
}

/* A leader whose group was fsynced does not go on to commit appends queued
 * behind it: it returns, and one of their callers commits them (the second
 * fsync is made on that caller's thread). */
static void leader_hands_over_after_an_fsynced_group(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 1;
  f->cfg.group_commit_max_batch = 0;
  f->cfg.sync_mode = BP_SYNC_ALL;
  bp_store *s = open_ok(f);
  keyed_one first = {.s = s, .entity = "entity:first"};
  keyed_one second = {.s = s, .entity = "entity:second"};
  append_keyed_once(&first); /* the segment exists before the gate is armed */
  assert_ok(first.st);

  sync_gate.armed = true;
  sync_gate.held = sync_gate.released = false;
  sync_gate.calls = 0;
  bp__os_table.fsync = recording_fsync;
  pthread_t ta, tb;
  pthread_create(&ta, NULL, append_keyed_once, &first);
  pthread_mutex_lock(&sync_gate.lock);
  while (!sync_gate.held) pthread_cond_wait(&sync_gate.cond, &sync_gate.lock);
  pthread_mutex_unlock(&sync_gate.lock);
  /* first's caller leads and waits in its fsync; second queues behind it. */
  pthread_create(&tb, NULL, append_keyed_once, &second);
  for (;;) {
    pthread_mutex_lock(&s->qlock);
    size_t queued = s->qlen;
    pthread_mutex_unlock(&s->qlock);
    if (queued == 1) break;
    usleep(100);
  }
  pthread_mutex_lock(&sync_gate.lock);
  sync_gate.released = true;
  pthread_cond_broadcast(&sync_gate.cond);
  pthread_mutex_unlock(&sync_gate.lock);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  bp__os_table = bp__os_default;
  assert_ok(first.st);
  assert_ok(second.st);
  assert_int_equal(sync_gate.calls, 2);
  if (!pthread_equal(sync_gate.callers[0], first.self))
    fail_msg("the first group's fsync was not made by its own caller");
  if (!pthread_equal(sync_gate.callers[1], second.self))
    fail_msg("the second group's fsync was made by the first caller's thread, not the second's: no hand-over");
  assert_int_equal(second.r.sequence, first.r.sequence + 1);
  assert_int_equal(count_of(s), 3);
  assert_ok(bp_close(s));
}

typedef struct reader_arg {
  bp_store *s;
  _Atomic int *stop;
  int checks;
  const char *failure;
} reader_arg;

/* Readers racing the writers: every snapshot is a gap-free prefix of the log,
 * every entity stream has dense clocks, and every listed event can be read. */
static void *reader(void *p) {
  reader_arg *a = p;
  while (!*a->stop && !a->failure) {
    bp_region all = bp_region_all();
    bp_entries r;
    if (bp_query(a->s, &all, &r) != BP_OK) { a->failure = "query failed"; break; }
    for (size_t i = 0; i < r.len; i++)
      if (r.items[i].global_sequence != i) { a->failure = "gap in the global sequence"; break; }
    if (r.len > 0) {
      bp_event *ev;
      if (bp_get(a->s, r.items[r.len - 1].event_id, &ev) != BP_OK) a->failure = "visible event unreadable";
      bp_event_free(ev);
    }
    bp_entries_free(&r);
    bp_entries st;
    if (bp_stream(a->s, "thread:0", &st) != BP_OK) { a->failure = "stream failed"; break; }
    for (size_t i = 0; i < st.len; i++)
      if (st.items[i].clock != i) { a->failure = "gap in an entity's clocks"; break; }
    bp_entries_free(&st);
    a->checks++;
  }
  return NULL;
}

static void readers_see_a_gap_free_prefix_while_writers_append(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 32 * 1024; /* rotations while reading */
  bp_store *s = open_ok(f);
  _Atomic int stop = 0;
  reader_arg ra[2] = {{s, &stop, 0, NULL}, {s, &stop, 0, NULL}};
  thread_arg *wa = calloc(2, sizeof *wa);
  pthread_t rt[2], wt[2];
  for (int i = 0; i < 2; i++) pthread_create(&rt[i], NULL, reader, &ra[i]);
  for (int i = 0; i < 2; i++) {
    wa[i].s = s;
    wa[i].t = i;
    pthread_create(&wt[i], NULL, appender, &wa[i]);
  }
  for (int i = 0; i < 2; i++) pthread_join(wt[i], NULL);
  stop = 1;
  for (int i = 0; i < 2; i++) pthread_join(rt[i], NULL);
  for (int i = 0; i < 2; i++) {
    if (ra[i].failure) fail_msg("reader %d: %s", i, ra[i].failure);
    assert_true(ra[i].checks > 0);
  }
  assert_int_equal(count_of(s), 2 * PER_THREAD);
  assert_ok(bp_close(s));
  free(wa);
}

static void apply_transition_appends_its_kind_and_payload(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_transition opened = {0x2001, "\x81\xa2to\xa4open", 9};
  bp_coord door = {"door:1", "house"};
  bp_append_receipt r;
  assert_ok(bp_apply_transition(s, &door, &opened, NULL, &r));
  bp_event *ev;
  assert_ok(bp_get(s, r.event_id, &ev));
  assert_int_equal(ev->header.kind, 0x2001);
  tu_assert_bytes_eq(ev->payload, ev->payload_len, opened.payload, opened.len, "transition payload");
  bp_event_free(ev);
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.expect = BP_EXPECT_EMPTY; /* a transition guarded by CAS */
  assert_status(bp_apply_transition(s, &door, &opened, &o, &r), BP_ESEQUENCE);
  assert_status(bp_apply_transition(s, &door, NULL, NULL, &r), BP_EINVAL);
  assert_int_equal(count_of(s), 1);
  assert_ok(bp_close(s));
}

typedef struct snap_writer {
  bp_store *s;
  _Atomic int stop;
  _Atomic uint64_t acked;
} snap_writer;

static void *keep_appending(void *p) {
  snap_writer *w = p;
  bp_coord c = {"busy", "snap"};
  while (!atomic_load(&w->stop)) {
    bp_append_receipt r;
    if (bp_append(w->s, &c, 0x1001, "x", 1, &r) != BP_OK) break;
    atomic_store(&w->acked, r.sequence + 1);
  }
  return NULL;
}

/* A snapshot taken while another thread appends opens with every event
 * acknowledged before the call, and is a prefix of the store. */
static void snapshot_under_concurrent_appends_is_a_consistent_prefix(void **state) {
  fixture *f = *state;
  f->cfg.segment_max_bytes = 4096;
  bp_store *s = open_ok(f);
  for (int i = 0; i < 50; i++) append_text(s, &ALICE, "before");
  snap_writer w = {s, 0, 0};
  pthread_t t;
  pthread_create(&t, NULL, keep_appending, &w);
  while (atomic_load(&w.acked) < 100) usleep(1000);
  uint64_t before = count_of(s);
  char dest[4200];
  snprintf(dest, sizeof dest, "%s/snap", f->tmp);
  assert_ok(bp_snapshot(s, dest));
  atomic_store(&w.stop, 1);
  pthread_join(t, NULL);

  bp_config cfg = f->cfg;
  cfg.data_dir = dest;
  bp_store *snap;
  assert_ok(bp_open_readonly(&cfg, &snap));
  bp_region all = bp_region_all();
  bp_entries a, b;
  assert_ok(bp_query(snap, &all, &a));
  assert_ok(bp_query(s, &all, &b));
  assert_true(a.len >= before);
  assert_true(a.len <= b.len);
  for (size_t i = 0; i < a.len; i++) assert_true(bp_id_eq(a.items[i].event_id, b.items[i].event_id));
  bp_verify_report r;
  assert_ok(bp_verify(dest, &r));
  bp_verify_report_free(&r);
  bp_entries_free(&a);
  bp_entries_free(&b);
  assert_ok(bp_close(snap));
  assert_ok(bp_close(s));
}

static void snapshot_refuses_the_store_itself_and_a_full_directory(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "x");
  char inside[4200], full[4200];
  snprintf(inside, sizeof inside, "%s/inner", f->dir);
  assert_status(bp_snapshot(s, inside), BP_EINVAL);
  assert_status(bp_snapshot(s, f->dir), BP_EINVAL);
  snprintf(full, sizeof full, "%s/full", f->tmp);
  mkdir(full, 0700);
  char junk[4300];
  snprintf(junk, sizeof junk, "%s/file", full);
  FILE *fp = fopen(junk, "w");
  fclose(fp);
  assert_status(bp_snapshot(s, full), BP_EINVAL);
  assert_ok(bp_close(s));
}

/* ----------------------------------- lookups while the hash tables grow */

/* A reader that looks up, without a lock, what the writer has published,
 * while the writer's inserts keep growing the table. Rounds start from an
 * empty index so that every growth happens again. */
enum { GROW_ROUNDS = 40, GROW_NAMES = 2000, GROW_IDS = 20000 };

typedef struct grow_shared {
  bp__index *ix;
  _Atomic uint32_t published; /* names name:0 .. published-1, or entries below it */
  atomic_bool done;
  atomic_int misses;
  char first_miss[96];
} grow_shared;

static void *name_looker(void *p) {
  grow_shared *g = p;
  uint32_t x = 2463534242u;
  while (!atomic_load(&g->done)) {
    uint32_t n = atomic_load(&g->published);
    if (!n) continue;
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    char name[32];
    int len = snprintf(name, sizeof name, "name:%u", x % n);
    if (!bp__index_find_name(g->ix, name, (size_t)len) && atomic_fetch_add(&g->misses, 1) == 0)
      snprintf(g->first_miss, sizeof g->first_miss, "%s (of %u interned)", name, n);
  }
  return NULL;
}

static void name_lookups_never_miss_while_the_name_table_grows(void **state) {
  (void)state;
  grow_shared g = {.ix = calloc(1, sizeof(bp__index))};
  assert_non_null(g.ix);
  for (int round = 0; round < GROW_ROUNDS && !atomic_load(&g.misses); round++) {
    assert_ok(bp__index_init(g.ix));
    atomic_store(&g.published, 0);
    atomic_store(&g.done, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, name_looker, &g), 0);
    for (uint32_t i = 0; i < GROW_NAMES; i++) {
      char name[32];
      int len = snprintf(name, sizeof name, "name:%u", i);
      bp__name *nm;
      assert_ok(bp__index_intern(g.ix, name, (size_t)len, &nm));
      atomic_store(&g.published, i + 1);
    }
    atomic_store(&g.done, true);
    pthread_join(t, NULL);
    bp__index_free(g.ix);
  }
  free(g.ix);
  if (atomic_load(&g.misses)) fail_msg("%d lookups missed a name already interned; the first: %s", atomic_load(&g.misses), g.first_miss);
}

static void *id_looker(void *p) {
  grow_shared *g = p;
  uint32_t x = 88675123u;
  while (!atomic_load(&g->done)) {
    uint64_t visible = bp__index_visible(g->ix);
    if (!visible) continue;
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    uint64_t want = x % visible, seq;
    bp_id id = bp__index_at(g->ix, want)->event_id;
    if ((!bp__index_find_id(g->ix, id, visible, &seq) || seq != want) && atomic_fetch_add(&g->misses, 1) == 0)
      snprintf(g->first_miss, sizeof g->first_miss, "sequence %" PRIu64 " (of %" PRIu64 " visible)", want, visible);
  }
  return NULL;
}

static void id_lookups_never_miss_while_the_id_table_grows(void **state) {
  (void)state;
  grow_shared g = {.ix = calloc(1, sizeof(bp__index))};
  assert_non_null(g.ix);
  for (int round = 0; round < GROW_ROUNDS / 4 && !atomic_load(&g.misses); round++) {
    assert_ok(bp__index_init(g.ix));
    atomic_store(&g.done, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, id_looker, &g), 0);
    for (uint32_t i = 0; i < GROW_IDS; i++) {
      bp__ientry e;
      memset(&e, 0, sizeof e);
      e.event_id = bp_id_v7();
      e.kind = 0x1001;
      assert_ok(bp__index_push(g.ix, &e));
      bp__index_publish(g.ix);
    }
    atomic_store(&g.done, true);
    pthread_join(t, NULL);
    bp__index_free(g.ix);
  }
  free(g.ix);
  if (atomic_load(&g.misses)) fail_msg("%d lookups missed a visible event; the first: %s", atomic_load(&g.misses), g.first_miss);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

/* Counts the resident pages of [p, p + pages pages). */
static size_t resident_pages(void *p, size_t pages) {
  unsigned char vec[64];
  assert_true(pages <= sizeof vec);
  assert_int_equal(mincore(p, pages * (size_t)sysconf(_SC_PAGESIZE), vec), 0);
  size_t n = 0;
  for (size_t i = 0; i < pages; i++) n += vec[i] & 1;
  return n;
}

/* Large query results are mapped in ahead of the copy: the helper maps the
 * pages of a fresh region, keeps what reused pages hold, and stays inside
 * the whole pages of the range it is given. */
static void prefault_maps_missing_pages_and_keeps_resident_ones(void **state) {
  (void)state;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  uint8_t *m = mmap(NULL, 32 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(m != MAP_FAILED);
  assert_int_equal(resident_pages(m, 32), 0);
  memset(m + 4 * page, 0xab, page); /* one page already in use */
  /* From the middle of page 1 to the middle of page 30: pages 2..29 are whole. */
  bp__os_prefault_write(m + page + page / 2, 29 * page);
#if defined(__linux__)
  struct utsname u;
  assert_int_equal(uname(&u), 0);
  int major = 0, minor = 0;
  sscanf(u.release, "%d.%d", &major, &minor);
  if (major > 5 || (major == 5 && minor >= 14)) {
    assert_int_equal(resident_pages(m + 2 * page, 28), 28);
    assert_int_equal(resident_pages(m, 2), 0);
    assert_int_equal(resident_pages(m + 30 * page, 2), 0);
  }
#endif
  assert_int_equal(m[4 * page], 0xab);
  assert_int_equal(m[5 * page - 1], 0xab);
  assert_int_equal(m[2 * page], 0);
  munmap(m, 32 * page);
}

static _Atomic int gated_fsyncs;
static _Atomic bool fsync_gate_open;
static int gated_fsync(int fd) {
  atomic_fetch_add(&gated_fsyncs, 1);
  while (!atomic_load(&fsync_gate_open)) usleep(1000);
  return fsync(fd);
}

typedef struct drain_arg {
  bp_store *s;
  int n;
  _Atomic bool started;
  bp_status st;
  bp_append_receipt r;
} drain_arg;

static void *append_one(void *p) {
  drain_arg *a = p;
  char body[16];
  int len = snprintf(body, sizeof body, "drain %d", a->n);
  atomic_store(&a->started, true);
  a->st = bp_append(a->s, &ALICE, 0x1001, body, (size_t)len, &a->r);
  return NULL;
}

static void *close_store(void *p) { return (void *)(intptr_t)bp_close(p); }

/* bp_close while appends wait in the queue: the first shutdown_drain_limit of
 * them are committed (and survive a reopen), the others fail BP_ESHUTDOWN and
 * write nothing. The first append is held in its fsync (holding the writer)
 * while the others queue up and bp_close begins. */
static void close_drains_queued_appends_up_to_the_limit_and_refuses_the_rest(void **state) {
  fixture *f = *state;
  f->cfg.sync_every_n_events = 1;
  f->cfg.shutdown_drain_limit = 2;
  bp_store *s = open_ok(f);
  append_text(s, &ALICE, "before");
  atomic_store(&gated_fsyncs, 0);
  atomic_store(&fsync_gate_open, false);
  bp__os_table.fsync = gated_fsync;
  enum { N = 6 };
  static drain_arg a[N];
  pthread_t th[N], closer;
  memset(a, 0, sizeof a);
  for (int i = 0; i < N; i++) {
    a[i].s = s;
    a[i].n = i;
    pthread_create(&th[i], NULL, append_one, &a[i]);
    if (i == 0)
      while (atomic_load(&gated_fsyncs) == 0) usleep(1000); /* the first holds the writer */
  }
  for (int i = 1; i < N; i++)
    while (!atomic_load(&a[i].started)) usleep(1000);
  usleep(200 * 1000); /* they queue behind the first within microseconds */
  pthread_create(&closer, NULL, close_store, s);
  usleep(200 * 1000); /* bp_close marks the store closing at once, then waits */
  atomic_store(&fsync_gate_open, true);
  void *closed;
  pthread_join(closer, &closed);
  assert_int_equal((intptr_t)closed, BP_OK);
  int ok = 0, refused = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(th[i], NULL);
    if (a[i].st == BP_OK) ok++;
    else if (a[i].st == BP_ESHUTDOWN) refused++;
    else fail_msg("append %d: %s", i, bp_status_name(a[i].st));
  }
  bp__os_table = bp__os_default;
  assert_int_equal(a[0].st, BP_OK);
  assert_int_equal(ok, 1 + 2);
  assert_int_equal(refused, N - 3);

  s = open_ok(f);
  assert_int_equal(count_of(s), 1 + ok);
  for (int i = 0; i < N; i++) {
    if (a[i].st != BP_OK) continue;
    bp_event *ev;
    assert_ok(bp_get(s, a[i].r.event_id, &ev));
    bp_event_free(ev);
  }
  assert_ok(bp_close(s));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      T(config_defaults_are_documented_values),
      T(config_zero_fields_fail_naming_the_field_and_create_nothing),
      T(config_out_of_range_fields_fail_naming_the_field_and_create_nothing),
      T(empty_store_opens_and_closes_without_files),
      T(store_files_are_private_to_the_owner),
      T(planted_segment_symlink_is_not_followed),
      T(second_open_in_the_same_process_is_locked),
      T(open_from_another_process_is_locked),
      T(append_then_get_returns_every_field),
      T(get_trusts_a_hinted_frame_only_if_it_holds_the_id),
      T(get_returns_payloads_of_every_size_around_its_stack_buffer),
      T(append_json_stores_msgpack_and_reads_back_json),
      T(reaction_carries_correlation_and_causation),
      T(reopen_by_checkpoint_sidx_and_scan_gives_the_same_store),
      T(checkpoint_entries_read_alike_on_both_paths),
      T(process_exit_without_close_loses_nothing),
      T(rotation_seals_segments_at_the_size_limit),
      T(oversized_payload_fails_elimit_and_writes_nothing),
      T(empty_or_oversized_coordinates_fail_ecoord),
      T(null_payload_with_length_fails_einval),
      T(cas_modes_check_the_entity_sequence),
      T(idempotency_key_returns_the_original_receipt_and_writes_nothing),
      T(receipts_are_written_in_every_byte),
      T(group_commit_requires_idempotency_keys),
      T(batch_is_all_or_nothing_on_a_failed_check),
      T(batch_frames_carry_member_flags_except_the_last),
      T(interrupted_batch_is_wholly_absent_after_reopen),
      T(foreign_file_in_the_directory_is_ignored),
      T(segment_with_bad_magic_fails_ecorrupt),
      T(segment_with_unknown_version_fails_ecorrupt),
      T(directory_named_like_a_segment_fails_ecorrupt_and_changes_nothing),
      T(segment_cut_inside_its_header_opens_as_empty),
      T(corrupt_checkpoint_is_rebuilt_not_fatal),
      T(truncated_checkpoint_is_rebuilt),
      T(checkpoint_that_lies_under_a_valid_crc_is_rebuilt),
      T(lying_sidx_footer_is_ignored_for_a_scan),
      T(footer_claiming_billions_of_events_is_scanned),
      T(checkpoint_of_many_pieces_and_a_failed_piece),
      T(sidx_footer_in_pieces_is_the_encoded_footer),
      T(truncated_sidx_footer_is_ignored_for_a_scan),
      T(bad_frame_in_a_sealed_segment_fails_unless_salvaged),
      T(crc_mismatch_on_read_fails_ecrc),
      T(undecodable_frame_names_its_place_and_the_reason),
      T(failed_write_fails_eio_then_restarts_once),
      T(bounded_restart_policy_allows_n_restarts),
      T(failed_fsync_fails_the_append_and_keeps_earlier_events),
      T(failed_space_reservation_fails_eio_and_the_writer_goes_on),
      T(space_allocated_ahead_is_not_a_torn_tail),
      T(durable_appends_land_on_zeros_written_ahead),
      T(filled_pages_leave_the_mapping_when_written_back),
      T(active_segment_is_read_through_its_mapping),
      T(released_segment_pages_leave_and_come_back),
      T(a_failed_write_of_zeros_ahead_fails_no_append),
      T(bp_sync_forces_durability),
      T(failed_bp_sync_fails_eio_and_keeps_acknowledged_events),
      T(readonly_open_reads_and_refuses_appends),
      T(wall_clock_never_goes_backwards_for_an_entity),
      T(log_callback_reports_a_dropped_torn_tail),
      T(concurrent_appends_get_dense_sequences_and_clocks),
      T(readers_see_a_gap_free_prefix_while_writers_append),
      T(group_commit_shares_fsyncs_between_concurrent_appends),
      T(leader_hands_over_after_an_fsynced_group),
      cmocka_unit_test(name_lookups_never_miss_while_the_name_table_grows),
      cmocka_unit_test(id_lookups_never_miss_while_the_id_table_grows),
      T(apply_transition_appends_its_kind_and_payload),
      T(snapshot_under_concurrent_appends_is_a_consistent_prefix),
      T(snapshot_refuses_the_store_itself_and_a_full_directory),
      T(prefault_maps_missing_pages_and_keeps_resident_ones),
      T(close_drains_queued_appends_up_to_the_limit_and_refuses_the_rest),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
