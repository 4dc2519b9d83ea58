/* fuzz_store.c - opening stores whose files are arbitrary bytes: a segment
 * (frames, SIDX footer), or a checkpoint beside a good segment. Invariant:
 * open, query, get and verify never crash or read out of bounds; whatever
 * opens answers consistently (every listed event is found by id). */
#include "batpak.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256];
static uint8_t *good_segment;
static size_t good_len;

static void setup_once(void) {
  if (dir[0]) return;
  snprintf(dir, sizeof dir, "/tmp/batpak-fuzz-store-%d", (int)getpid());
  char seed[300];
  snprintf(seed, sizeof seed, "%s-seed", dir);
  bp_config cfg;
  bp_config_init(&cfg, seed);
  cfg.enable_checkpoint = false; /* without the persistent index, close seals: mode 2 needs the footer */
  bp_store *s;
  if (bp_open(&cfg, &s)) abort();
  const char *ents[3] = {"a", "ab", "b"};
  for (int i = 0; i < 6; i++) {
    bp_coord c = {ents[i % 3], i % 2 ? "x" : "y"};
    bp_append_receipt r;
    uint8_t p[2] = {0x91, (uint8_t)i};
    if (bp_append(s, &c, (bp_kind)(0x1001 + i % 2), p, 2, &r)) abort();
  }
  bp_close(s);
  char path[400];
  snprintf(path, sizeof path, "%s/000001.fbat", seed);
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  good_len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  good_segment = malloc(good_len);
  if (fread(good_segment, 1, good_len, f) != good_len) abort();
  fclose(f);
}

static void put(const char *name, const uint8_t *d, size_t n) {
  char path[400];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) abort();
  if (n && write(fd, d, n) != (ssize_t)n) abort();
  close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup_once();
  if (size < 1) return 0;
  /* A fresh directory holds only what this input writes: the two names used. */
  char path[400];
  mkdir(dir, 0700);
  snprintf(path, sizeof path, "%s/000001.fbat", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/index.ckpt", dir);
  unlink(path);
  int mode = data[0] % 3;
  data++;
  size--;
  if (mode == 0) {
    put("000001.fbat", data, size);                 /* a whole segment */
  } else if (mode == 1) {
    put("000001.fbat", good_segment, good_len);     /* a checkpoint beside a good segment */
    put("index.ckpt", data, size);
  } else {
    /* A good segment's frames with the input as its footer. */
    uint64_t st_off = 0;
    for (int i = 7; i >= 0; i--) st_off = st_off << 8 | good_segment[good_len - 16 + i];
    uint8_t *seg = malloc(st_off + size + 1);
    memcpy(seg, good_segment, st_off);
    memcpy(seg + st_off, data, size);
    put("000001.fbat", seg, st_off + size);
    free(seg);
  }
  bp_config cfg;
  bp_config_init(&cfg, dir);
  bp_store *s;
  if (bp_open_readonly(&cfg, &s) == BP_OK) {
    bp_region all = bp_region_all();
    bp_entries e;
    if (bp_query(s, &all, &e) == BP_OK) {
      for (size_t i = 0; i < e.len; i++) {
        bp_entry one;
        if (bp_get_entry(s, e.items[i].event_id, &one) != BP_OK) abort();
        bp_event *ev;
        if (bp_get(s, e.items[i].event_id, &ev) == BP_OK) bp_event_free(ev);
      }
      bp_entries_free(&e);
    }
    bp_close(s);
  }
  bp_verify_report r;
  bp_verify(dir, &r);
  bp_verify_report_free(&r);
  return 0;
}
