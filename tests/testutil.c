/* testutil.c - helpers shared by the tests. */
#define _GNU_SOURCE
#include "testutil.h"

#include <inttypes.h>

#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

static void hex_dump(char *out, size_t outsz, const uint8_t *p, size_t n) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 3 < outsz; i++) o += (size_t)snprintf(out + o, outsz - o, "%02x", p[i]);
  if (o + 3 >= outsz && outsz > 4) memcpy(out + outsz - 4, "...", 4);
}

void tu_assert_bytes_eq(const void *got, size_t got_len, const void *want, size_t want_len,
                        const char *what) {
  if (got_len == want_len && (got_len == 0 || memcmp(got, want, got_len) == 0)) return;
  size_t first = 0;
  while (first < got_len && first < want_len && ((const uint8_t *)got)[first] == ((const uint8_t *)want)[first])
    first++;
  char g[1024], w[1024];
  hex_dump(g, sizeof g, (const uint8_t *)got + first, got_len - first);
  hex_dump(w, sizeof w, (const uint8_t *)want + first, want_len - first);
  fail_msg("%s: %zu bytes vs %zu expected, first difference at %zu\n  got:  ...%s\n  want: ...%s",
           what, got_len, want_len, first, g, w);
}

static int hexv(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

uint8_t *tu_from_hex(const char *hex, size_t *len) {
  size_t n = strlen(hex);
  uint8_t *out = malloc(n / 2 + 1);
  size_t o = 0;
  int hi = -1;
  for (size_t i = 0; i < n; i++) {
    int v = hexv(hex[i]);
    if (v < 0) continue;
    if (hi < 0) hi = v;
    else { out[o++] = (uint8_t)(hi << 4 | v); hi = -1; }
  }
  *len = o;
  return out;
}

uint8_t *tu_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc((size_t)n + 1);
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); fclose(f); return NULL; }
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

uint8_t *tu_read_data(const char *rel, size_t *len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", BATPAK_TEST_DATA_DIR, rel);
  uint8_t *p = tu_read_file(path, len);
  if (!p) fail_msg("cannot read test data %s", path);
  return p;
}

char *tu_make_temp_dir(const char *tag) {
  const char *base = getenv("TMPDIR");
  char tmpl[4096];
  snprintf(tmpl, sizeof tmpl, "%s/batpak-%s-XXXXXX", base && *base ? base : "/tmp", tag);
  char *d = mkdtemp(tmpl);
  if (!d) fail_msg("mkdtemp failed for %s", tmpl);
  return strdup(d);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(path);
}

void tu_remove_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

void tu_flip_byte(const char *path, long at, uint8_t mask) {
  FILE *f = fopen(path, "r+b");
  if (!f) fail_msg("cannot open %s", path);
  assert_int_equal(fseek(f, at, SEEK_SET), 0);
  int c = fgetc(f);
  if (c == EOF) fail_msg("%s has no byte at %ld", path, at);
  assert_int_equal(fseek(f, at, SEEK_SET), 0);
  fputc(c ^ mask, f);
  assert_int_equal(fclose(f), 0);
}

void tu_copy_dir(const char *src, const char *dst) {
  mkdir(dst, 0700);
  DIR *d = opendir(src);
  if (!d) fail_msg("cannot open %s", src);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/%s", src, e->d_name);
    snprintf(to, sizeof to, "%s/%s", dst, e->d_name);
    size_t n;
    uint8_t *buf = tu_read_file(from, &n);
    if (!buf) continue;
    FILE *f = fopen(to, "wb");
    if (!f || fwrite(buf, 1, n, f) != n) fail_msg("cannot write %s", to);
    fclose(f);
    free(buf);
  }
  closedir(d);
}

#include <json-c/json.h>

const char *tu_fixture_path(const char *fixture, const char *file, char *buf, size_t size) {
  snprintf(buf, size, "%s/fixtures/%s/%s", BATPAK_TEST_DATA_DIR, fixture, file);
  return buf;
}

struct json_object *tu_manifest(const char *fixture) {
  char path[4096];
  tu_fixture_path(fixture, "manifest.json", path, sizeof path);
  struct json_object *m = json_object_from_file(path);
  if (!m) fail_msg("cannot parse %s", path);
  return m;
}

struct json_object *tu_field(struct json_object *o, const char *key) {
  struct json_object *v;
  if (!json_object_object_get_ex(o, key, &v)) fail_msg("manifest field %s missing", key);
  return v;
}

uint64_t tu_u64(struct json_object *o, const char *key) {
  return json_object_get_uint64(tu_field(o, key));
}

const char *tu_str(struct json_object *o, const char *key) {
  return json_object_get_string(tu_field(o, key));
}

bp_id tu_id(struct json_object *o, const char *key) {
  struct json_object *v = tu_field(o, key);
  if (json_object_is_type(v, json_type_null)) return BP_ID_NIL;
  bp_id id;
  if (bp_id_from_hex(json_object_get_string(v), &id) != BP_OK)
    fail_msg("manifest field %s is not a hex id: %s", key, json_object_get_string(v));
  return id;
}

void tu_hash(struct json_object *o, const char *key, uint8_t out[32]) {
  size_t n;
  uint8_t *raw = tu_from_hex(tu_str(o, key), &n);
  if (n != 32) fail_msg("manifest field %s is not a 32-byte hash", key);
  memcpy(out, raw, 32);
  free(raw);
}

void tu_assert_verifies(const char *dir, const char *what) {
  bp_verify_report rep;
  bp_status st = bp_verify(dir, &rep);
  for (size_t i = 0; st && i < rep.problem_count; i++)
    print_message("  %s: %s\n", rep.problems[i].where, rep.problems[i].what);
  if (st) fail_msg("%s: bp_verify returned %s with %zu problems", what, bp_status_name(st), rep.problem_count);
  bp_verify_report_free(&rep);
}

void tu_assert_acknowledged(const bp_config *cfg, const bp_id *ids, size_t n,
                            void (*check)(const bp_event *ev, size_t i, void *ctx), void *ctx, const char *what) {
  bp_store *s;
  bp_status st = bp_open(cfg, &s);
  if (st) fail_msg("%s: reopen: %s: %s", what, bp_status_name(st), bp_last_error()->message);
  for (size_t i = 0; i < n; i++) {
    bp_event *ev;
    st = bp_get(s, ids[i], &ev);
    if (st) fail_msg("%s: acknowledged event %zu lost: %s", what, i, bp_last_error()->message);
    if (check) check(ev, i, ctx);
    bp_event_free(ev);
  }
  bp_entries all;
  bp_region r = bp_region_all();
  assert_ok(bp_query(s, &r, &all));
  if (all.len != n) fail_msg("%s: %zu events, %zu acknowledged", what, all.len, n);
  for (size_t i = 0; i < all.len; i++)
    if (all.items[i].global_sequence != i)
      fail_msg("%s: event %zu has global sequence %" PRIu64, what, i, all.items[i].global_sequence);
  bp_entries_free(&all);
  assert_ok(bp_close(s));
  tu_assert_verifies(cfg->data_dir, what);
}

void tu_fixstr_text(const bp_event *ev, char *text, size_t size) {
  size_t n = ev->payload_len > 0 ? ev->payload_len - 1 : 0;
  if (n > size - 1) n = size - 1;
  memcpy(text, ev->payload + 1, n);
  text[n] = 0;
}

void tu_finish_after_crash(bp_store *s, uint64_t count, const char *dir, const char *what) {
  bp_coord c = {"after:crash", "crash"};
  bp_append_receipt r;
  assert_ok(bp_append(s, &c, 0x1003, "\xc0", 1, &r));
  assert_int_equal(r.sequence, count);
  assert_ok(bp_close(s));
  tu_assert_verifies(dir, what);
}

int tu_store_setup(void **state) {
  tu_store_fixture *f = calloc(1, sizeof *f);
  f->tmp = tu_make_temp_dir("store");
  snprintf(f->dir, sizeof f->dir, "%s/data", f->tmp);
  bp_config_init(&f->cfg, f->dir);
  *state = f;
  return 0;
}

int tu_store_teardown(void **state) {
  tu_store_fixture *f = *state;
  tu_remove_tree(f->tmp);
  free(f->tmp);
  free(f);
  return 0;
}
