/* testutil.c - helpers shared by the tests. */
#define _GNU_SOURCE
#include "testutil.h"
#include "store/store_impl.h"

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
  if (n < 0 || n > (1l << 40)) { /* not a file's length: a directory, say */
    fclose(f);
    return NULL;
  }
  uint8_t *buf = malloc((size_t)n + 1);
  if (!buf) {
    fclose(f);
    return NULL;
  }
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
    struct stat sb;
    if (lstat(from, &sb) != 0) continue;
    if (S_ISDIR(sb.st_mode) && strcmp(e->d_name, "index") == 0) {
      tu_copy_dir(from, to); /* the persistent index */
      continue;
    }
    if (!S_ISREG(sb.st_mode)) continue; /* regular files only */
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

/* ------------------------------------------------------------ store images */

void tu_image_take(bp_store *s, tu_image *out) {
  bp_region all = bp_region_all();
  bp_entries e;
  assert_ok(bp_query(s, &all, &e));
  out->n = e.len;
  out->v = calloc(e.len ? e.len : 1, sizeof *out->v);
  for (size_t i = 0; i < e.len; i++) {
    tu_shown *w = &out->v[i];
    w->entry = e.items[i];
    snprintf(w->entity, sizeof w->entity, "%s", e.items[i].entity);
    snprintf(w->scope, sizeof w->scope, "%s", e.items[i].scope);
    w->entry.entity = w->entity;
    w->entry.scope = w->scope;
    bp_event *ev;
    w->get = bp_get(s, e.items[i].event_id, &ev);
    if (w->get) continue;
    w->header = ev->header;
    snprintf(w->ev_entity, sizeof w->ev_entity, "%s", ev->entity);
    snprintf(w->ev_scope, sizeof w->ev_scope, "%s", ev->scope);
    w->has_chain = ev->has_hash_chain;
    w->chain = ev->hash_chain;
    w->payload_len = ev->payload_len;
    w->payload = malloc(ev->payload_len ? ev->payload_len : 1);
    memcpy(w->payload, ev->payload, ev->payload_len);
    bp_event_free(ev);
  }
  bp_entries_free(&e);
}

void tu_image_free(tu_image *im) {
  for (size_t i = 0; i < im->n; i++) free(im->v[i].payload);
  free(im->v);
  im->v = NULL;
  im->n = 0;
}

static const char *entry_diff(const bp_entry *a, const bp_entry *b) {
  if (!bp_id_eq(a->event_id, b->event_id)) return "event_id";
  if (!bp_id_eq(a->correlation_id, b->correlation_id)) return "correlation_id";
  if (!bp_id_eq(a->causation_id, b->causation_id)) return "causation_id";
  if (strcmp(a->entity, b->entity)) return "entity";
  if (strcmp(a->scope, b->scope)) return "scope";
  if (a->kind != b->kind) return "kind";
  if (a->wall_ms != b->wall_ms) return "wall_ms";
  if (a->clock != b->clock) return "clock";
  if (memcmp(a->hash_chain.prev_hash, b->hash_chain.prev_hash, 32)) return "prev_hash";
  if (memcmp(a->hash_chain.event_hash, b->hash_chain.event_hash, 32)) return "event_hash";
  if (a->global_sequence != b->global_sequence) return "global_sequence";
  if (a->disk_pos.segment_id != b->disk_pos.segment_id || a->disk_pos.offset != b->disk_pos.offset ||
      a->disk_pos.length != b->disk_pos.length)
    return "disk_pos";
  return NULL;
}

static const char *event_diff(const tu_shown *a, const tu_shown *b) {
  const bp_header *x = &a->header, *y = &b->header;
  if (!bp_id_eq(x->event_id, y->event_id)) return "header.event_id";
  if (!bp_id_eq(x->correlation_id, y->correlation_id)) return "header.correlation_id";
  if (!bp_id_eq(x->causation_id, y->causation_id)) return "header.causation_id";
  if (x->timestamp_us != y->timestamp_us) return "header.timestamp_us";
  if (x->position.wall_ms != y->position.wall_ms || x->position.counter != y->position.counter ||
      x->position.depth != y->position.depth || x->position.lane != y->position.lane ||
      x->position.sequence != y->position.sequence)
    return "header.position";
  if (x->payload_size != y->payload_size) return "header.payload_size";
  if (x->kind != y->kind) return "header.kind";
  if (x->flags != y->flags) return "header.flags";
  if (memcmp(x->content_hash, y->content_hash, 32)) return "header.content_hash";
  if (strcmp(a->ev_entity, b->ev_entity)) return "event entity";
  if (strcmp(a->ev_scope, b->ev_scope)) return "event scope";
  if (a->has_chain != b->has_chain || memcmp(a->chain.prev_hash, b->chain.prev_hash, 32) ||
      memcmp(a->chain.event_hash, b->chain.event_hash, 32))
    return "hash chain";
  if (a->payload_len != b->payload_len || memcmp(a->payload, b->payload, a->payload_len)) return "payload";
  return NULL;
}

const char *tu_image_diff(const tu_image *got, const tu_image *want, bool reads_may_fail, size_t *read_failures) {
  static char why[256];
  if (got->n != want->n) {
    snprintf(why, sizeof why, "%zu events listed, %zu expected", got->n, want->n);
    return why;
  }
  for (size_t i = 0; i < got->n; i++) {
    const tu_shown *a = &got->v[i], *b = &want->v[i];
    const char *d = entry_diff(&a->entry, &b->entry);
    if (!d && a->get != b->get) {
      if (reads_may_fail && (a->get == BP_ECRC || a->get == BP_ECORRUPT) && b->get == BP_OK) {
        if (read_failures) (*read_failures)++;
        continue;
      }
      d = "bp_get status";
    }
    if (!d && a->get == BP_OK) d = event_diff(a, b);
    if (d) {
      snprintf(why, sizeof why, "event %zu: %s differs", i, d);
      return why;
    }
  }
  return NULL;
}

void tu_drop_index(const char *dir) {
  char p[4200];
  snprintf(p, sizeof p, "%s/index", dir);
  tu_remove_tree(p);
}

void tu_seal_newest(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.segment_max_bytes = 1;
  cfg.enable_checkpoint = false;
  bp_store *s;
  assert_ok(bp_open(&cfg, &s));
  assert_ok(bp_close(s));
}

bp_status tu_write_checkpoint(const char *dir) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.enable_checkpoint = false;
  bp_store *s;
  bp_status st = bp_open(&cfg, &s);
  if (st) return st;
  st = bp__checkpoint_write(s);
  bp_error err = *bp_last_error();
  bp_close(s);
  tu_drop_index(dir);
  if (st) bp__set_error(&err);
  return st;
}

void tu_require_features(uint32_t bits) {
  if ((bp_build_features() & bits) != bits) {
    print_message("skipped: this build lacks features 0x%x\n", (unsigned)(bits & ~bp_build_features()));
    skip();
  }
}
