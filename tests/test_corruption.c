/*
 * test_corruption.c - bit rot on a closed store. For every byte of every
 * file of a small store (four segments, three with SIDX footers, and the
 * checkpoint), a copy of the store gets that one byte flipped, and then:
 *   - bp_verify reports a problem (it finds every flip);
 *   - opening it (read-only) either fails with BP_ECORRUPT, or succeeds;
 *   - when it succeeds, every event it lists is one of the original events,
 *     unchanged, and every bp_get returns the original event or an error:
 *     never a wrong event.
 * Nothing may crash or hang (the sanitizer builds run this too).
 *
 * One field is exempt from "verify finds it": a segment header's created_ns
 * value. The header has no checksum in the format, and any timestamp is a
 * plausible one; a flip there changes no event.
 *
 * BATPAK_CORRUPTION_STRIDE=N tries every Nth byte (default 11, which keeps
 * the run short under the sanitizers; 1 tries them all, about 25k flips).
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>

enum { EVENTS = 24 };

typedef struct original {
  bp_id id;
  char entity[32];
  uint8_t payload[160];
  size_t len;
} original;

static original orig[EVENTS];

static void config_for(bp_config *cfg, const char *dir) {
  bp_config_init(cfg, dir);
  cfg->segment_max_bytes = 2048;
}

static void build_store(const char *dir) {
  bp_config cfg;
  config_for(&cfg, dir);
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  for (int i = 0; i < EVENTS; i++) {
    original *o = &orig[i];
    snprintf(o->entity, sizeof o->entity, "thing:%d", i % 4);
    o->len = 20 + (size_t)(i * 37) % 120;
    o->payload[0] = 0xc4; /* MessagePack bin 8 */
    o->payload[1] = (uint8_t)(o->len - 2);
    for (size_t k = 2; k < o->len; k++) o->payload[k] = (uint8_t)(i * 31 + k);
    bp_coord c = {o->entity, i % 3 ? "north" : "south"};
    bp_append_receipt r;
    assert_ok(bp_append(s, &c, (bp_kind)(0x1001 + i % 2), o->payload, o->len, &r));
    o->id = r.event_id;
  }
  assert_ok(bp_close(s));
}

static const original *find_original(bp_id id) {
  for (int i = 0; i < EVENTS; i++)
    if (bp_id_eq(orig[i].id, id)) return &orig[i];
  return NULL;
}

typedef struct tally {
  uint64_t flips, opened, refused, events_checked, gets_refused;
} tally;

/* One flipped copy: the checks of the header comment. */
static void check_flipped(const char *dir, const char *file, size_t at, tally *t) {
  bp_verify_report rep;
  bp_status vst = bp_verify(dir, &rep);
  if (vst != BP_ECORRUPT)
    fail_msg("%s byte %zu flipped: bp_verify returned %s with %zu problems", file, at, bp_status_name(vst),
             rep.problem_count);
  bp_verify_report_free(&rep);

  bp_config cfg;
  config_for(&cfg, dir);
  bp_store *s = NULL;
  /* Read-only: the same recovery, without the checkpoint write (and its
   * fsync) at close that would dominate the run time. */
  bp_status st = bp_open_readonly(&cfg, &s);
  if (st != BP_OK) {
    if (st != BP_ECORRUPT)
      fail_msg("%s byte %zu flipped: bp_open returned %s (%s), expected BP_OK or BP_ECORRUPT", file, at,
               bp_status_name(st), bp_last_error()->message);
    assert_null(s);
    t->refused++;
    return;
  }
  t->opened++;
  bp_region all = bp_region_all();
  bp_entries e;
  assert_ok(bp_query(s, &all, &e));
  for (size_t i = 0; i < e.len; i++) {
    const original *o = find_original(e.items[i].event_id);
    if (!o) fail_msg("%s byte %zu flipped: the store lists an event that was never written", file, at);
    if (strcmp(o->entity, e.items[i].entity) != 0)
      fail_msg("%s byte %zu flipped: entity \"%s\" listed as \"%s\"", file, at, o->entity, e.items[i].entity);
    bp_event *ev;
    bp_status gst = bp_get(s, e.items[i].event_id, &ev);
    if (gst != BP_OK) {
      if (gst != BP_ECRC && gst != BP_ECORRUPT)
        fail_msg("%s byte %zu flipped: bp_get returned %s", file, at, bp_status_name(gst));
      t->gets_refused++;
      continue;
    }
    if (!bp_id_eq(ev->header.event_id, o->id) || strcmp(ev->entity, o->entity) != 0)
      fail_msg("%s byte %zu flipped: bp_get returned another event", file, at);
    tu_assert_bytes_eq(ev->payload, ev->payload_len, o->payload, o->len, "payload after a flip");
    bp_event_free(ev);
    t->events_checked++;
  }
  bp_entries_free(&e);
  assert_ok(bp_close(s));
}

static void every_single_byte_flip_is_found_and_never_returns_a_wrong_event(void **state) {
  (void)state;
  const char *env = getenv("BATPAK_CORRUPTION_STRIDE");
  size_t stride = env && atoi(env) > 0 ? (size_t)atoi(env) : 11;
  char *tmp = tu_make_temp_dir("corrupt");
  char clean[4200], work[4200];
  snprintf(clean, sizeof clean, "%s/clean", tmp);
  snprintf(work, sizeof work, "%s/work", tmp);
  build_store(clean);

  tally t = {0};
  DIR *d = opendir(clean);
  assert_non_null(d);
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strstr(de->d_name, ".fbat") && strcmp(de->d_name, "index.ckpt") != 0) continue;
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", clean, de->d_name);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    size_t hlen;
    uint8_t *head = tu_read_file(path, &hlen);
    assert_non_null(head);
    /* The created_ns value: a MessagePack uint64 (0xcf + 8 bytes) after its key. */
    size_t ts_from = 0, ts_to = 0;
    const uint8_t *key = hlen > 64 ? memmem(head, 64, "created_ns", 10) : NULL;
    if (key && strstr(de->d_name, ".fbat")) {
      ts_from = (size_t)(key - head) + 11;
      ts_to = ts_from + 8;
    }
    free(head);
    /* Verification and read-only opens change no file, so one copy serves:
     * each byte is flipped, checked, and flipped back. */
    tu_remove_tree(work);
    tu_copy_dir(clean, work);
    snprintf(path, sizeof path, "%s/%s", work, de->d_name);
    for (size_t at = 0; at < (size_t)sb.st_size; at += stride) {
      if (at >= ts_from && at < ts_to) continue;
      tu_flip_byte(path, (long)at, 0x5a);
      check_flipped(work, de->d_name, at, &t);
      tu_flip_byte(path, (long)at, 0x5a);
      t.flips++;
    }
  }
  closedir(d);
  tu_remove_tree(tmp);
  free(tmp);
  print_message("corruption: %" PRIu64 " flips; opened %" PRIu64 ", refused %" PRIu64 "; %" PRIu64
                " events checked intact, %" PRIu64 " gets refused\n",
                t.flips, t.opened, t.refused, t.events_checked, t.gets_refused);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_single_byte_flip_is_found_and_never_returns_a_wrong_event),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
