/*
 * batpak - the command-line tool for batpak stores.
 *
 *   batpak COMMAND DIR [options]      (batpak COMMAND --help for each)
 *
 * Output is for people by default and JSON with --json. Errors go to stderr
 * with the library's message, and the exit status is 1 (2 for bad usage).
 */
#include <batpak.h>
#if BATPAK_HAVE_NATS
#include <batpak/replication.h>
#endif

#include "jsonline.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool json_out;

/* {"key": "value"} on a line, the value escaped as JSON. */
static void jl_print_pair(const char *key, const char *value) {
  struct json_object *o = json_object_new_object();
  json_object_object_add(o, key, json_object_new_string(value));
  puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
  json_object_put(o);
}

static int fail(const char *what) {
  fprintf(stderr, "batpak: %s: %s: %s\n", what, bp_status_name(bp_last_error()->code), bp_last_error()->message);
  return 1;
}

static int usage(const char *text) {
  fputs(text, stderr);
  return 2;
}

/* A progress line on a terminal (stderr), every `every` items; `done` 0 ends it. */
static void progress(const char *what, uint64_t done, uint64_t every) {
  static int on_tty = -1;
  if (on_tty < 0) on_tty = isatty(STDERR_FILENO) && !json_out;
  if (!on_tty) return;
  if (done == 0) fputc('\n', stderr);
  else if (done % every == 0) fprintf(stderr, "\rbatpak: %s: %" PRIu64, what, done);
}

static void log_to_stderr(int level, const char *msg, void *ctx) {
  (void)ctx;
  if (level <= BP_LOG_WARN) fprintf(stderr, "batpak: %s: %s\n", level == BP_LOG_ERROR ? "error" : "warning", msg);
}

static const char *opt(int argc, char **argv, const char *name) {
  for (int i = 0; i + 1 < argc; i++)
    if (strcmp(argv[i], name) == 0) return argv[i + 1];
  return NULL;
}

static bool flag(int argc, char **argv, const char *name) {
  for (int i = 0; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return true;
  return false;
}

/* A whole unsigned number of at most max (decimal, or 0x hexadecimal when
 * hex_ok): no sign, no space, nothing after it, no overflow. strtoul alone
 * would read "" and "abc" as 0, "-1" as the largest value and "12x" as 12,
 * and a compare-and-swap given such a number would silently check another. */
static bool parse_uint(const char *s, uint64_t max, bool hex_ok, uint64_t *out) {
  if (!s || !*s) return false;
  int base = 10;
  const char *digits = s;
  if (hex_ok && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    digits = s + 2;
  }
  if (!*digits) return false;
  for (const char *p = digits; *p; p++)
    if (!(base == 16 ? isxdigit((unsigned char)*p) : isdigit((unsigned char)*p))) return false;
  errno = 0;
  char *end;
  unsigned long long v = strtoull(digits, &end, base);
  if (errno == ERANGE || *end || v > max) return false;
  *out = v;
  return true;
}

static bool parse_kind(const char *s, bp_kind *out) {
  uint64_t v;
  if (!parse_uint(s, 0xFFFF, true, &v)) return false;
  *out = (bp_kind)v;
  return true;
}

static int64_t import_clock_us;
static int64_t import_clock(void *ctx) {
  (void)ctx;
  return import_clock_us;
}

typedef enum open_mode {
  OPEN_READ,     /* read-only: the store may be in use by its owner */
  OPEN_WRITE,
  OPEN_IMPORT,   /* writable, appends take their timestamps from import_clock_us */
  OPEN_SALVAGE   /* read-only, keep what precedes damage, rebuild without the checkpoint */
} open_mode;

static bp_store *open_store(const char *dir, open_mode mode) {
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.log_fn = log_to_stderr;
  if (mode == OPEN_IMPORT) cfg.clock = import_clock;
  if (mode == OPEN_SALVAGE) {
    cfg.salvage = true;
    cfg.enable_checkpoint = false;
  }
  bp_store *s = NULL;
  bp_status st = mode == OPEN_READ || mode == OPEN_SALVAGE ? bp_open_readonly(&cfg, &s) : bp_open(&cfg, &s);
  if (st) fail("open");
  return s;
}

/* One entry, for people or as a JSON object. */
static void print_entry(const bp_entry *e) {
  char id[33], corr[33], caus[33] = "", kind[7], hash[65];
  bp_id_to_hex(e->event_id, id);
  bp_id_to_hex(e->correlation_id, corr);
  if (!bp_id_is_nil(e->causation_id)) bp_id_to_hex(e->causation_id, caus);
  bp_kind_format(e->kind, kind);
  jl_hex(e->hash_chain.event_hash, 32, hash);
  if (json_out) {
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "global_sequence", json_object_new_uint64(e->global_sequence));
    json_object_object_add(o, "event_id", json_object_new_string(id));
    json_object_object_add(o, "entity", json_object_new_string(e->entity));
    json_object_object_add(o, "scope", json_object_new_string(e->scope));
    json_object_object_add(o, "kind", json_object_new_int(e->kind));
    json_object_object_add(o, "clock", json_object_new_int64(e->clock));
    json_object_object_add(o, "wall_ms", json_object_new_uint64(e->wall_ms));
    json_object_object_add(o, "correlation_id", json_object_new_string(corr));
    json_object_object_add(o, "causation_id", *caus ? json_object_new_string(caus) : NULL);
    json_object_object_add(o, "event_hash", json_object_new_string(hash));
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
  } else {
    printf("%6" PRIu64 "  %s  %s  %s@%s  clock %u\n", e->global_sequence, id, kind, e->entity, e->scope, e->clock);
  }
}

/* ---------------------------------------------------------------- commands */

static int cmd_init(const char *dir, int argc, char **argv) {
  (void)argc;
  (void)argv;
  bp_store *s = open_store(dir, OPEN_WRITE);
  if (!s) return 1;
  if (bp_close(s)) return fail("close");
  if (json_out) jl_print_pair("initialised", dir);
  else printf("initialised %s\n", dir);
  return 0;
}

static int cmd_append(const char *dir, int argc, char **argv) {
  const char *entity = opt(argc, argv, "--entity"), *scope = opt(argc, argv, "--scope");
  const char *json = opt(argc, argv, "--json-payload");
  bp_kind kind = BP_KIND_DATA;
  if (opt(argc, argv, "--kind") && !parse_kind(opt(argc, argv, "--kind"), &kind))
    return usage("batpak append: --kind takes a number such as 0x1001\n");
  if (!entity || !scope || !json)
    return usage("usage: batpak append DIR --entity E --scope S --json-payload JSON [--kind K]\n"
                 "       [--expect-sequence N | --expect-empty] [--idempotency-key HEX]\n");
  bp_append_options o;
  memset(&o, 0, sizeof o);
  if (opt(argc, argv, "--expect-sequence")) {
    uint64_t v;
    if (!parse_uint(opt(argc, argv, "--expect-sequence"), UINT32_MAX, false, &v))
      return usage("batpak append: --expect-sequence takes a clock from 0 to 4294967295\n");
    o.expect = BP_EXPECT_SEQUENCE;
    o.expected_sequence = (uint32_t)v;
  }
  if (flag(argc, argv, "--expect-empty")) o.expect = BP_EXPECT_EMPTY;
  if (opt(argc, argv, "--idempotency-key") && bp_id_from_hex(opt(argc, argv, "--idempotency-key"), &o.idempotency_key))
    return fail("--idempotency-key");
  uint8_t *mp;
  size_t len;
  if (bp_json_to_msgpack(json, strlen(json), &mp, &len)) return fail("--json-payload");
  bp_store *s = open_store(dir, OPEN_WRITE);
  if (!s) {
    bp_free(mp);
    return 1;
  }
  bp_coord c = {entity, scope};
  bp_append_receipt r;
  bp_status st = bp_append_with(s, &c, kind, mp, len, &o, &r);
  bp_free(mp);
  if (st) {
    fail("append");
    bp_close(s);
    return 1;
  }
  char id[33];
  bp_id_to_hex(r.event_id, id);
  if (json_out) printf("{\"event_id\": \"%s\", \"sequence\": %" PRIu64 "}\n", id, r.sequence);
  else printf("%s at sequence %" PRIu64 "\n", id, r.sequence);
  return bp_close(s) ? fail("close") : 0;
}

static int cmd_get(const char *dir, int argc, char **argv) {
  if (argc < 1) return usage("usage: batpak get DIR EVENT_ID\n");
  bp_id id;
  if (bp_id_from_hex(argv[0], &id) && bp_id_from_uuid(argv[0], &id)) return fail("event id");
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  bp_event *ev;
  bp_entry e;
  int rc = 0;
  if (bp_get(s, id, &ev) || bp_get_entry(s, id, &e)) {
    rc = fail("get");
  } else {
    char *payload = bp_event_payload_json(ev);
    if (json_out) {
      char idh[33], kind[7];
      bp_id_to_hex(id, idh);
      bp_kind_format(ev->header.kind, kind);
      struct json_object *o = json_object_new_object();
      json_object_object_add(o, "event_id", json_object_new_string(idh));
      json_object_object_add(o, "entity", json_object_new_string(ev->entity));
      json_object_object_add(o, "scope", json_object_new_string(ev->scope));
      json_object_object_add(o, "kind", json_object_new_int(ev->header.kind));
      json_object_object_add(o, "clock", json_object_new_int64(ev->header.position.sequence));
      json_object_object_add(o, "global_sequence", json_object_new_uint64(e.global_sequence));
      json_object_object_add(o, "timestamp_us", json_object_new_int64(ev->header.timestamp_us));
      json_object_object_add(o, "payload", payload ? json_tokener_parse(payload) : NULL);
      puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
      json_object_put(o);
    } else {
      print_entry(&e);
      printf("        payload %s\n", payload ? payload : "(not MessagePack)");
    }
    bp_free(payload);
    bp_event_free(ev);
  }
  bp_close(s);
  return rc;
}

static bp_region region_from(int argc, char **argv, bool *bad) {
  bp_region r = bp_region_all();
  r.entity_prefix = opt(argc, argv, "--entity-prefix");
  r.scope = opt(argc, argv, "--scope");
  bp_kind k = 0;
  if (opt(argc, argv, "--kind")) {
    if (!parse_kind(opt(argc, argv, "--kind"), &k)) *bad = true;
    r = bp_region_with_kind(r, k);
  }
  if (opt(argc, argv, "--category")) {
    uint64_t c = 0;
    if (!parse_uint(opt(argc, argv, "--category"), 15, true, &c)) *bad = true;
    r = bp_region_with_category(r, (uint8_t)c);
  }
  return r;
}

/* Prints entries as the query finds them, up to a limit (0: none): output
 * starts at once and `| head` ends the walk (SIGPIPE, or a failed write). */
typedef struct printer {
  uint64_t left;
  bool limited;
} printer;

static bool print_visit(const bp_entry *e, void *ctx) {
  printer *p = ctx;
  print_entry(e);
  if (ferror(stdout)) return false;
  return !p->limited || --p->left > 0;
}

static int cmd_query(const char *dir, int argc, char **argv) {
  bool bad = false;
  bp_region r = region_from(argc, argv, &bad);
  printer p = {0, false};
  if (opt(argc, argv, "--limit")) {
    if (!parse_uint(opt(argc, argv, "--limit"), UINT64_MAX, false, &p.left)) bad = true;
    p.limited = true;
  }
  if (bad)
    return usage("usage: batpak query DIR [--entity-prefix P] [--scope S] [--kind K | --category C] [--limit N]\n");
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  bp_status st = p.limited && p.left == 0 ? BP_OK : bp_query_each(s, &r, print_visit, &p);
  bp_close(s);
  return st ? fail("query") : 0;
}

static int cmd_stream(const char *dir, int argc, char **argv) {
  if (argc < 1) return usage("usage: batpak stream DIR ENTITY\n");
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  /* Printed as found, like query: the first line does not wait for the last. */
  printer p = {0, false};
  bp_status st = bp_stream_each(s, argv[0], print_visit, &p);
  bp_close(s);
  return st ? fail("stream") : 0;
}

static int cmd_stats(const char *dir, int argc, char **argv) {
  (void)argc;
  (void)argv;
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  bp_store_diagnostics d;
  bp_diagnostics(s, &d);
  static const char *paths[] = {"empty", "checkpoint", "SIDX footers", "frame scan", "persistent index"};
  if (json_out)
    printf("{\"events\": %" PRIu64 ", \"segments\": %" PRIu64 ", \"entities\": %" PRIu64 ", \"scopes\": %" PRIu64
           ", \"open_path\": \"%s\", \"torn_bytes\": %" PRIu64 "}\n",
           d.event_count, d.segment_count, d.entity_count, d.scope_count, paths[d.open_path], d.torn_bytes_dropped);
  else
    printf("events     %" PRIu64 "\nsegments   %" PRIu64 "\nentities   %" PRIu64 "\nscopes     %" PRIu64
           "\nopened by  %s\ntorn bytes %" PRIu64 "\n",
           d.event_count, d.segment_count, d.entity_count, d.scope_count, paths[d.open_path], d.torn_bytes_dropped);
  bp_close(s);
  return 0;
}

/* Progress of verify and snapshot on a terminal, in MiB, at most every
 * 64 MiB, for stores of 64 MiB or more. */
static void bytes_progress(uint64_t done, uint64_t total, void *ctx) {
  uint64_t *shown = ctx;
  if (!isatty(STDERR_FILENO) || json_out || total < (64u << 20)) return;
  if (done < total && done - *shown < (64u << 20)) return;
  *shown = done;
  fprintf(stderr, "\rbatpak: %" PRIu64 " of %" PRIu64 " MiB%s", done >> 20, total >> 20, done >= total ? "\n" : "");
}

/* The length of a problem's place: "segment 000003" of "segment 000003
 * offset 1234", "index" of "index entry 6", the whole of anything else. */
static size_t place_len(const char *where) {
  const char *sp = strchr(where, ' ');
  if (!sp) return strlen(where);
  if (strncmp(where, "segment ", 8) == 0) {
    const char *sp2 = strchr(sp + 1, ' ');
    return sp2 ? (size_t)(sp2 - where) : strlen(where);
  }
  return (size_t)(sp - where);
}

static int cmd_verify(const char *dir, int argc, char **argv) {
  bp_verify_report r;
  uint64_t shown = 0;
  bp_status st = bp_verify_with_progress(dir, &r, bytes_progress, &shown);
  if (st != BP_OK && st != BP_ECORRUPT) return fail("verify");
  if (json_out) {
    struct json_object *o = json_object_new_object(), *ps = json_object_new_array();
    json_object_object_add(o, "ok", json_object_new_boolean(st == BP_OK));
    json_object_object_add(o, "segments", json_object_new_uint64(r.segments));
    json_object_object_add(o, "frames", json_object_new_uint64(r.frames));
    json_object_object_add(o, "entities", json_object_new_uint64(r.entities));
    for (size_t i = 0; i < r.problem_count; i++) {
      struct json_object *p = json_object_new_object();
      json_object_object_add(p, "where", json_object_new_string(r.problems[i].where));
      json_object_object_add(p, "what", json_object_new_string(r.problems[i].what));
      json_object_array_add(ps, p);
    }
    json_object_object_add(o, "problems", ps);
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
  } else {
    printf("%" PRIu64 " segments, %" PRIu64 " frames, %" PRIu64 " entities: %s\n", r.segments, r.frames, r.entities,
           st == BP_OK ? "intact" : "PROBLEMS");
    /* A damaged frame is reported again by everything that reads past it
     * (the footer's entries, the chains, the index): the first problem of
     * each place comes first, the knock-on ones are counted (--all lists
     * them). A place is what a problem's "where" names before its offset or
     * number: a segment, the index, an entity. */
    bool all = flag(argc, argv, "--all");
    size_t listed = 0;
    for (size_t i = 0; i < r.problem_count; i++) {
      bool first = true;
      size_t klen = place_len(r.problems[i].where);
      for (size_t j = 0; j < i && first && !all; j++)
        first = !(place_len(r.problems[j].where) == klen && strncmp(r.problems[j].where, r.problems[i].where, klen) == 0);
      if (!first) continue;
      printf("  %s: %s\n", r.problems[i].where, r.problems[i].what);
      listed++;
    }
    if (listed < r.problem_count)
      printf("%zu problems in all; %zu more follow from those above (--all lists every one)\n", r.problem_count,
             r.problem_count - listed);
  }
  bp_verify_report_free(&r);
  return st == BP_OK ? 0 : 3;
}


/* snapshot: through a read-only handle, so that it works on a store another
 * process owns (a live backup) as on one nobody has open. */
static int cmd_snapshot(const char *dir, int argc, char **argv) {
  if (argc < 1) return usage("usage: batpak snapshot DIR DEST\n");
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  uint64_t shown = 0;
  int rc = bp_snapshot_with_progress(s, argv[0], bytes_progress, &shown) ? fail("snapshot") : 0;
  if (!rc && json_out) jl_print_pair("snapshot", argv[0]);
  else if (!rc) printf("snapshot of %s written to %s\n", dir, argv[0]);
  bp_close(s);
  return rc;
}

/* compact: an event is dropped (or tombstoned) when it matches every --drop-* option given. */
typedef struct drop_rule {
  const char *entity_prefix;
  bool has_kind;
  bp_kind kind;
  bool has_before;
  uint64_t before_ms;
  uint64_t seen;
} drop_rule;

static bool keep_event(const bp_event *ev, void *ctx) {
  drop_rule *r = ctx;
  if (++r->seen % 100000 == 0) progress("compact: events read", r->seen, 100000);
  bool match = true;
  if (r->entity_prefix) match = strncmp(ev->entity, r->entity_prefix, strlen(r->entity_prefix)) == 0;
  if (r->has_kind) match = match && ev->header.kind == r->kind;
  if (r->has_before) match = match && (uint64_t)(ev->header.timestamp_us / 1000) < r->before_ms;
  return !match;
}

static int cmd_compact(const char *dir, int argc, char **argv) {
  const char *strategy = opt(argc, argv, "--strategy");
  const char *kind = opt(argc, argv, "--drop-kind"), *before = opt(argc, argv, "--drop-before-ms");
  const char *min = opt(argc, argv, "--min-segments");
  drop_rule rule = {.entity_prefix = opt(argc, argv, "--drop-entity-prefix")};
  bp_compaction_config cfg = {.strategy = BP_COMPACT_MERGE, .keep = keep_event, .ctx = &rule};
  if (!strategy || !strcmp(strategy, "merge")) cfg.strategy = BP_COMPACT_MERGE;
  else if (!strcmp(strategy, "retention")) cfg.strategy = BP_COMPACT_RETENTION;
  else if (!strcmp(strategy, "tombstone")) cfg.strategy = BP_COMPACT_TOMBSTONE;
  else return usage("batpak compact: --strategy is merge, retention or tombstone\n");
  if (kind && !(rule.has_kind = parse_kind(kind, &rule.kind)))
    return usage("batpak compact: --drop-kind takes a kind from 0 to 0xFFFF\n");
  if (before) {
    if (!parse_uint(before, UINT64_MAX, false, &rule.before_ms))
      return usage("batpak compact: --drop-before-ms takes milliseconds since 1970\n");
    rule.has_before = true;
  }
  if (min) {
    uint64_t v;
    if (!parse_uint(min, SIZE_MAX, false, &v) || v == 0)
      return usage("batpak compact: --min-segments takes a number from 1\n");
    cfg.min_segments = (size_t)v;
  }
  if (cfg.strategy != BP_COMPACT_MERGE && !rule.entity_prefix && !rule.has_kind && !rule.has_before)
    return usage("batpak compact: retention and tombstone need --drop-entity-prefix, --drop-kind or "
                 "--drop-before-ms\n");
  bp_store *s = open_store(dir, OPEN_WRITE);
  if (!s) return 1;
  bp_store_stats before_stats, after_stats;
  bp_stats(s, &before_stats);
  bp_compaction_result res;
  int rc = bp_compact(s, &cfg, &res) ? fail("compact") : 0;
  if (rule.seen >= 100000) progress("compact", 0, 1);
  bp_stats(s, &after_stats);
  if (!rc && json_out) {
    printf("{\"segments_removed\":%zu,\"bytes_reclaimed\":%" PRIu64 ",\"events_before\":%" PRIu64
           ",\"events_after\":%" PRIu64 "}\n",
           res.segments_removed, res.bytes_reclaimed, before_stats.event_count, after_stats.event_count);
  } else if (!rc) {
    printf("%zu segments removed, %" PRIu64 " bytes reclaimed, %" PRIu64 " events (was %" PRIu64 ")\n",
           res.segments_removed, res.bytes_reclaimed, after_stats.event_count, before_stats.event_count);
  }
  if (bp_close(s) && !rc) rc = fail("close");
  return rc;
}

/* The flags an event keeps when copied into another store: batch membership
 * belongs to the batch that wrote it, not to the event. */
static int copied_flags(uint16_t flags) {
  return flags & ~BP_FLAG_BATCH_MEMBER & 0xff;
}

/* Appends an event that keeps the identity it had in another store: its id
 * (through the idempotency key), links, flags and timestamp. dst must have
 * been opened with OPEN_IMPORT. */
static bp_status append_preserving(bp_store *dst, const char *entity, const char *scope, bp_kind kind,
                                   int64_t timestamp_us, const bp_append_options *o, const uint8_t *payload,
                                   size_t len) {
  bp_coord c = {entity, scope};
  bp_append_receipt r;
  import_clock_us = timestamp_us;
  return bp_append_with(dst, &c, kind, payload, len, o, &r);
}

/* export: one JSON object per line and event, with everything import needs
 * to rebuild the same events (ids, links, flags, timestamps, payload bytes). */
/* export: through a cursor, a batch at a time, so that memory stays flat
 * however many events there are; progress on a terminal. */
static int cmd_export(const char *dir, int argc, char **argv) {
  (void)argc;
  (void)argv;
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  bp_store_stats stats;
  bp_stats(s, &stats);
  bp_region all = bp_region_all();
  bp_cursor *c = bp_cursor_open(s, &all);
  if (!c) {
    bp_close(s);
    return fail("export");
  }
  int rc = 0;
  uint64_t done = 0;
  bp_entries e;
  while (!rc && done < stats.event_count && bp_cursor_poll_batch(c, 1024, &e) == BP_OK && e.len) {
    for (size_t i = 0; i < e.len && !rc; i++) {
      bp_event *ev;
      if (bp_get(s, e.items[i].event_id, &ev)) {
        rc = fail("export");
        break;
      }
      jl_event line = {ev->header.event_id, ev->header.correlation_id, ev->header.causation_id,
                       (char *)ev->entity, (char *)ev->scope, ev->header.kind, (uint8_t)copied_flags(ev->header.flags),
                       ev->header.timestamp_us, (uint8_t *)ev->payload, ev->payload_len};
      char *text = jl_format(&line);
      if (text) {
        puts(text);
      } else {
        fputs("batpak: export: out of memory\n", stderr);
        rc = 1;
      }
      free(text);
      bp_event_free(ev);
      progress("export: events", ++done, 100000);
    }
    bp_entries_free(&e);
  }
  if (done >= 100000) progress("export", 0, 1);
  bp_cursor_close(c);
  bp_close(s);
  return rc;
}

static int cmd_import(const char *dir, int argc, char **argv) {
  (void)argc;
  (void)argv;
  bp_store *s = open_store(dir, OPEN_IMPORT);
  if (!s) return 1;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  uint64_t lineno = 0, imported = 0;
  int rc = 0;
  while (!rc && (n = getline(&line, &cap, stdin)) > 0) {
    lineno++;
    jl_event ev;
    char why[128];
    if (!jl_parse(line, (size_t)n, &ev, why, sizeof why)) {
      fprintf(stderr, "batpak: import: line %" PRIu64 " is not an exported event: %s\n", lineno, why);
      rc = 1;
      break;
    }
    bp_append_options o;
    memset(&o, 0, sizeof o);
    o.idempotency_key = ev.event_id;
    o.correlation_id = ev.correlation_id;
    o.causation_id = ev.causation_id;
    o.flags = ev.flags;
    if (append_preserving(s, ev.entity, ev.scope, ev.kind, ev.timestamp_us, &o, ev.payload, ev.payload_len)) {
      fprintf(stderr, "batpak: import: line %" PRIu64 ": ", lineno);
      rc = fail("append");
    } else {
      progress("import: events", ++imported, 10000);
    }
    jl_free(&ev);
  }
  if (imported >= 10000) progress("import", 0, 1);
  free(line);
  if (bp_close(s)) rc = fail("close");
  if (!rc && json_out) printf("{\"imported\": %" PRIu64 "}\n", imported);
  else if (!rc) fprintf(stderr, "imported %" PRIu64 " events\n", imported);
  return rc;
}

/* repair: copies what can be read of a damaged store into a new one. The
 * source is opened read-only with salvage (a damaged sealed segment keeps the
 * frames before the damage) and without its checkpoint; an event whose frame
 * fails its CRC or does not decode when read is reported and left out. Every kept event keeps
 * its id, links, flags, timestamp and payload. */
/* True when path is dir or lies inside it (path need not exist yet: the
 * nearest existing ancestor decides). */
static bool within(const char *dir, const char *path) {
  char d[PATH_MAX], p[PATH_MAX], probe[PATH_MAX];
  if (!realpath(dir, d)) return false;
  snprintf(probe, sizeof probe, "%s", path);
  while (!realpath(probe, p)) {
    char *slash = strrchr(probe, '/');
    if (!slash) {
      if (!getcwd(p, sizeof p)) return false;
      break;
    }
    if (slash == probe) slash[1] = 0;
    else *slash = 0;
  }
  size_t n = strlen(d);
  return strncmp(p, d, n) == 0 && (p[n] == 0 || p[n] == '/');
}

static int cmd_repair(const char *dir, int argc, char **argv) {
  if (argc < 1 || argv[0][0] == '-') return usage("usage: batpak repair DIR DEST\n");
  if (within(dir, argv[0])) {
    fprintf(stderr, "batpak: repair: %s is inside the store being repaired; give a directory outside it\n", argv[0]);
    return 1;
  }
  bp_store *src = open_store(dir, OPEN_SALVAGE);
  if (!src) return 1;
  bp_store *dst = open_store(argv[0], OPEN_IMPORT);
  if (!dst) {
    bp_close(src);
    return 1;
  }
  bp_store_diagnostics sd, dd;
  bp_diagnostics(src, &sd);
  bp_diagnostics(dst, &dd);
  int rc = 0;
  bp_region all = bp_region_all();
  bp_entries e = {0};
  if (dd.event_count) {
    fprintf(stderr, "batpak: repair: %s already holds %" PRIu64 " events; give a new directory\n", argv[0],
            dd.event_count);
    rc = 1;
  } else if (bp_query(src, &all, &e)) {
    rc = fail("repair");
  }
  uint64_t kept = 0, unreadable = 0;
  for (size_t i = 0; i < e.len && !rc; i++) {
    bp_event *ev;
    bp_status st = bp_get(src, e.items[i].event_id, &ev);
    if (st == BP_ECRC || st == BP_ECORRUPT) {
      char id[33];
      bp_id_to_hex(e.items[i].event_id, id);
      fprintf(stderr, "batpak: repair: dropped event %s (%s): %s\n", id, e.items[i].entity, bp_last_error()->message);
      unreadable++;
      continue;
    }
    if (st) {
      rc = fail("repair");
      break;
    }
    bp_append_options o;
    memset(&o, 0, sizeof o);
    o.idempotency_key = ev->header.event_id;
    o.correlation_id = ev->header.correlation_id;
    o.causation_id = ev->header.causation_id;
    o.flags = (uint8_t)copied_flags(ev->header.flags);
    if (append_preserving(dst, ev->entity, ev->scope, ev->header.kind, ev->header.timestamp_us, &o, ev->payload,
                          ev->payload_len))
      rc = fail("repair: append");
    else
      kept++;
    bp_event_free(ev);
    progress("repair: events copied", i + 1, 10000);
  }
  if (e.len >= 10000) progress("repair", 0, 1);
  bp_entries_free(&e);
  bp_close(src);
  if (bp_close(dst) && !rc) rc = fail("repair: close");
  if (rc) return rc;
  if (json_out)
    printf("{\"kept\": %" PRIu64 ", \"unreadable_events\": %" PRIu64 ", \"torn_bytes\": %" PRIu64
           ", \"batch_frames\": %" PRIu64 "}\n",
           kept, unreadable, sd.torn_bytes_dropped, sd.batch_frames_dropped);
  else
    printf("kept %" PRIu64 " events in %s; dropped %" PRIu64 " unreadable events, %" PRIu64
           " bytes after damage or a torn tail, %" PRIu64 " frames of interrupted batches\n",
           kept, argv[0], unreadable, sd.torn_bytes_dropped, sd.batch_frames_dropped);
  return 0;
}

/* Where to start so that at most `last` events of region r lie between
 * there and count: windows from the end, eight times larger each time,
 * until one holds enough or reaches the start; the positions of the last
 * `last` matches kept in a ring. */
static uint64_t tail_start(bp_store *s, const bp_region *r, uint64_t count, uint64_t last) {
  if (last == 0) return count;
  if (last >= count) return 0;
  uint64_t *ring = malloc(sizeof *ring * last);
  if (!ring) return 0;
  uint64_t window = last, start = 0;
  for (;;) {
    uint64_t from = count > window ? count - window : 0, seen = 0;
    bp_cursor *c = bp_cursor_open(s, r);
    if (!c) break;
    bp_cursor_seek(c, from);
    bp_entries b;
    bool done = false;
    while (!done && bp_cursor_poll_batch(c, 512, &b) == BP_OK && b.len) {
      for (size_t i = 0; i < b.len && !done; i++) {
        if (b.items[i].global_sequence >= count) done = true;
        else ring[seen++ % last] = b.items[i].global_sequence;
      }
      bp_entries_free(&b);
    }
    bp_cursor_close(c);
    if (seen >= last || from == 0) {
      start = seen >= last ? ring[seen % last] : from;
      break;
    }
    window = window > UINT64_MAX / 8 ? UINT64_MAX : window * 8;
  }
  free(ring);
  return start;
}

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

/* tail: the last N events of a region (-n N, 10 by default; -n all), and
 * with -f the new ones as the writer publishes them, through one read-only
 * handle that follows it (docs/FOLLOWERS.md) across its restarts and
 * compactions, until interrupted. Waiting, it sleeps in the kernel. */
static int cmd_tail(const char *dir, int argc, char **argv) {
  bool follow = flag(argc, argv, "--follow");
  const char *n_text = opt(argc, argv, "--lines");
  uint64_t last = 10;
  if (n_text && strcmp(n_text, "all") == 0) last = UINT64_MAX;
  else if (n_text && !parse_uint(n_text, UINT64_MAX, false, &last))
    return usage("batpak tail: -n takes a whole number of events, or all\n");
  bool bad = false;
  bp_region r = region_from(argc, argv, &bad);
  if (bad) return usage("usage: batpak tail DIR [-n N|all] [-f] [--entity-prefix P] [--scope S] [--kind K]\n");
  struct sigaction sa = {0};
  sa.sa_handler = on_signal; /* no SA_RESTART: poll returns on a signal */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  bp_store_stats stats;
  bp_stats(s, &stats);
  bp_cursor *c = bp_cursor_open(s, &r);
  bp_subscription *sub = follow ? bp_subscribe(s, &r) : NULL;
  if (!c || (follow && !sub)) {
    bp_close(s);
    return fail("tail");
  }
  bp_cursor_seek(c, tail_start(s, &r, stats.event_count, last));
  int fd = sub ? bp_sub_fd(sub) : -1;
  int rc = 0;
  while (!interrupted) {
    bp_entries b;
    bp_status st;
    /* Wake-ups are taken before the cursor reads, never after: one that
     * came between an empty read and the wait would be taken without its
     * event being read, and the wait would then sleep past that event. */
    bp_notification note;
    while (follow && bp_sub_recv(sub, &note, 0) == BP_OK) {}
    while ((st = bp_cursor_poll_batch(c, 512, &b)) == BP_OK && b.len) {
      for (size_t i = 0; i < b.len; i++) print_entry(&b.items[i]);
      bp_entries_free(&b);
    }
    fflush(stdout);
    if (st) {
      rc = fail("tail");
      break;
    }
    if (!follow) break;
    struct pollfd p = {fd, POLLIN, 0};
    if (fd >= 0) poll(&p, 1, -1);
    else if (bp_sub_recv(sub, &note, 1000) == BP_OK) {} /* no descriptor on this platform */
  }
  if (sub) bp_sub_close(sub);
  bp_cursor_close(c);
  bp_close(s);
  return rc;
}

/* ------------------------------------------------------------ replication */

#if BATPAK_HAVE_NATS
/* The broker options shared by relay and follow, from the command line. */
static int nats_options_from(int argc, char **argv, const char *cmd, bp_nats_options *o) {
  bp_nats_options_init(o);
  o->urls = opt(argc, argv, "--nats");
  o->stream = opt(argc, argv, "--stream");
  if (!o->urls || !o->stream) {
    fprintf(stderr, "batpak %s: --nats URLS and --stream NAME are required (batpak %s --help)\n", cmd, cmd);
    return 2;
  }
  const char *v;
  uint64_t n;
  if ((v = opt(argc, argv, "--subject-prefix"))) o->subject_prefix = v;
  if ((v = opt(argc, argv, "--durable"))) o->durable = v;
  if ((v = opt(argc, argv, "--replicas"))) {
    if (!parse_uint(v, 5, false, &n) || n == 0) return usage("batpak relay: --replicas takes 1 to 5\n");
    o->replicas = (uint32_t)n;
  }
  if ((v = opt(argc, argv, "--max-pending"))) {
    if (!parse_uint(v, 1u << 20, false, &n) || n == 0) return usage("batpak relay: --max-pending takes 1 to 1048576\n");
    o->max_pending = (uint32_t)n;
  }
  if ((v = opt(argc, argv, "--connect-wait-ms"))) {
    if (!parse_uint(v, UINT32_MAX, false, &n)) {
      fprintf(stderr, "batpak %s: --connect-wait-ms takes milliseconds\n", cmd);
      return 2;
    }
    o->connect_wait_ms = (uint32_t)n;
  }
  o->creds_file = opt(argc, argv, "--creds");
  o->user = opt(argc, argv, "--user");
  o->password = opt(argc, argv, "--password");
  o->token = opt(argc, argv, "--token");
  o->tls_ca_file = opt(argc, argv, "--tls-ca");
  o->tls_cert_file = opt(argc, argv, "--tls-cert");
  o->tls_key_file = opt(argc, argv, "--tls-key");
  o->tls_required = flag(argc, argv, "--tls");
  o->log_fn = log_to_stderr;
  return 0;
}

/* Logs what the broker said and sleeps, doubling *wait_ms up to 2 s: how
 * relay and follow wait out brokers that are away. */
static void broker_backoff(int64_t *wait_ms) {
  log_to_stderr(BP_LOG_WARN, bp_last_error()->message, NULL);
  usleep((useconds_t)*wait_ms * 1000);
  *wait_ms = *wait_ms * 2 > 2000 ? 2000 : *wait_ms * 2;
}

static void stop_on_signals(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

/* relay: publishes the store's events (a region of them) to a JetStream
 * stream through a read-only handle, so that it runs beside the process
 * that writes the store; until interrupted, or with --exit-when-idle once
 * the stream has acknowledged everything. */
static int cmd_relay(const char *dir, int argc, char **argv) {
  bp_nats_options o;
  int rc = nats_options_from(argc, argv, "relay", &o);
  if (rc) return rc;
  bool bad = false;
  bp_region r = region_from(argc, argv, &bad);
  if (bad) return usage("batpak relay: bad region option (batpak relay --help)\n");
  bool exit_idle = flag(argc, argv, "--exit-when-idle");
  stop_on_signals();
  bp_store *s = open_store(dir, OPEN_READ);
  if (!s) return 1;
  /* Brokers that are away when the relay starts are waited for (unless
   * told to exit), as they are once it runs. */
  bp_relay *relay = NULL;
  int64_t wait_ms = 100;
  bp_status st;
  while ((st = bp_relay_open(s, &r, &o, &relay)) == BP_EBROKER && !exit_idle && !interrupted)
    broker_backoff(&wait_ms);
  if (st) {
    rc = interrupted ? 0 : fail("relay");
    bp_close(s);
    return rc;
  }
  uint64_t total = 0;
  while (!interrupted) {
    uint64_t n = 0;
    st = bp_relay_pump(relay, exit_idle ? 200 : 1000, &n);
    total += n;
    if (st == BP_EBROKER) {
      log_to_stderr(BP_LOG_WARN, bp_last_error()->message, NULL);
      continue; /* the pump waited out its time: go on trying */
    }
    if (st) {
      rc = fail("relay");
      break;
    }
    if (n) progress("relay: events", total, 1);
    bp_relay_stats rs;
    bp_relay_get_stats(relay, &rs);
    if (exit_idle && n == 0 && rs.behind_events == 0) break;
  }
  if (total) progress("relay", 0, 1);
  bp_relay_stats rs;
  bp_relay_get_stats(relay, &rs);
  if (json_out)
    printf("{\"published\": %" PRIu64 ", \"stream_sequence\": %" PRIu64 ", \"behind_events\": %" PRIu64 "}\n", total,
           rs.stream_sequence, rs.behind_events);
  else if (!rc)
    fprintf(stderr, "relayed %" PRIu64 " events to stream %s (its last sequence: %" PRIu64 ")\n", total, o.stream,
            rs.stream_sequence);
  bp_relay_close(relay);
  bp_close(s);
  return rc;
}

/* follow: keeps the replica DEST (created if missing) from a stream the
 * relay fills, until interrupted, or with --exit-when-idle once the
 * consumer has nothing pending. Other processes may read DEST meanwhile. */
static int cmd_follow(const char *dir, int argc, char **argv) {
  bp_nats_options o;
  int rc = nats_options_from(argc, argv, "follow", &o);
  if (rc) return rc;
  bool exit_idle = flag(argc, argv, "--exit-when-idle");
  stop_on_signals();
  bp_store *s = open_store(dir, OPEN_WRITE);
  if (!s) return 1;
  /* A follower may start before its relay has made the stream, or while
   * the brokers are away: it waits for them (unless told to exit). */
  bp_follower *f = NULL;
  int64_t wait_ms = 100;
  bp_status st;
  while (((st = bp_follower_open(s, &o, &f)) == BP_ENOTFOUND || st == BP_EBROKER) && !exit_idle && !interrupted)
    broker_backoff(&wait_ms);
  if (st) {
    rc = interrupted ? 0 : fail("follow");
    bp_close(s);
    return rc;
  }
  uint64_t total = 0;
  wait_ms = 100;
  while (!interrupted) {
    uint64_t n = 0;
    st = bp_follower_pump(f, exit_idle ? 200 : 1000, &n);
    total += n;
    if (st == BP_EBROKER) { /* the broker's trouble: nats.c reconnects meanwhile */
      broker_backoff(&wait_ms);
      continue;
    }
    wait_ms = 100;
    if (st) {
      rc = fail("follow");
      break;
    }
    if (n) progress("follow: events", total, 1);
    if (exit_idle && n == 0) {
      bp_follower_stats fs;
      bp_follower_get_stats(f, &fs);
      if (fs.pending == 0) break;
    }
  }
  if (total) progress("follow", 0, 1);
  bp_follower_stats fs;
  bp_follower_get_stats(f, &fs);
  if (json_out)
    printf("{\"applied\": %" PRIu64 ", \"duplicates\": %" PRIu64 ", \"stream_sequence\": %" PRIu64 "}\n", total,
           fs.duplicates, fs.stream_sequence);
  else if (!rc)
    fprintf(stderr, "applied %" PRIu64 " events from stream %s (%" PRIu64 " repeats skipped)\n", total, o.stream,
            fs.duplicates);
  bp_follower_close(f);
  bp_close(s);
  return rc;
}
#else
static int no_nats(const char *dir, int argc, char **argv) {
  (void)dir, (void)argc, (void)argv;
  fputs("batpak: this build has no replication (libbatpak-nats was not built: BATPAK_WITH_NATS, nats.c)\n", stderr);
  return 1;
}
#define cmd_relay no_nats
#define cmd_follow no_nats
#endif

/* ------------------------------------------------------------ arguments */

/* An option of a command: its long name, a short letter (0: none), the name
 * of its value (NULL: a flag), and what it does (for --help). */
typedef struct optspec {
  const char *name;
  char letter;
  const char *value;
  const char *help;
} optspec;

#define REGION_OPTS                                                                  \
  {"entity-prefix", 0, "P", "only entities whose name starts with P"},              \
  {"scope", 0, "S", "only the scope S"},                                             \
  {"kind", 0, "K", "only the kind K (0xCTTT or decimal)"},                          \
  {"category", 0, "C", "only kinds of category C (0-15)"}

static const optspec NO_OPTS[] = {{NULL, 0, NULL, NULL}};
static const optspec APPEND_OPTS[] = {
    {"entity", 0, "E", "the entity (required)"},
    {"scope", 0, "S", "the scope (required)"},
    {"json-payload", 0, "JSON", "the payload as JSON, stored as MessagePack (required)"},
    {"kind", 0, "K", "the kind (default 0x1001)"},
    {"expect-sequence", 0, "N", "fail unless the entity's latest clock is N"},
    {"expect-empty", 0, NULL, "fail unless the entity has no events"},
    {"idempotency-key", 0, "HEX", "an event id: a repeat with it writes nothing"},
    {NULL, 0, NULL, NULL}};
static const optspec QUERY_OPTS[] = {REGION_OPTS, {"limit", 0, "N", "print at most N events"}, {NULL, 0, NULL, NULL}};
static const optspec TAIL_OPTS[] = {
    REGION_OPTS,
    {"lines", 'n', "N", "the last N events (10; 'all' for every one)"},
    {"follow", 'f', NULL, "then print new events as the writer publishes them, until interrupted"},
    {NULL, 0, NULL, NULL}};
#define NATS_OPTS                                                                          \
  {"nats", 0, "URLS", "the NATS servers, comma-separated (required)"},                    \
  {"stream", 0, "NAME", "the JetStream stream (required)"},                                \
  {"subject-prefix", 0, "P", "subjects are P.<scope>.<entity> (batpak)"},                  \
  {"durable", 0, "NAME", "the durable cursor or consumer (relay.STREAM, batpak-follower)"}, \
  {"exit-when-idle", 0, NULL, "exit 0 once nothing is left to do"},                        \
  {"connect-wait-ms", 0, "MS", "keep trying to reach a server this long (10000)"},         \
  {"creds", 0, "FILE", "NATS user credentials (JWT and NKey seed)"},                       \
  {"user", 0, "U", "user name"},                                                           \
  {"password", 0, "P", "password"},                                                        \
  {"token", 0, "T", "authentication token"},                                               \
  {"tls", 0, NULL, "require TLS"},                                                         \
  {"tls-ca", 0, "FILE", "trusted CA certificates (PEM)"},                                  \
  {"tls-cert", 0, "FILE", "client certificate chain (PEM; with --tls-key)"},               \
  {"tls-key", 0, "FILE", "client private key (PEM)"}
static const optspec RELAY_OPTS[] = {
    NATS_OPTS, REGION_OPTS,
    {"replicas", 0, "N", "replicas of the stream when the relay creates it (1)"},
    {"max-pending", 0, "N", "publishes awaiting acknowledgement at once (4096)"},
    {NULL, 0, NULL, NULL}};
static const optspec FOLLOW_OPTS[] = {NATS_OPTS, {NULL, 0, NULL, NULL}};
static const optspec VERIFY_OPTS[] = {
    {"all", 0, NULL, "list every problem, not only the first of each place"}, {NULL, 0, NULL, NULL}};
static const optspec COMPACT_OPTS[] = {
    {"strategy", 0, "merge|retention|tombstone", "what to do with the events the --drop options match"},
    {"drop-entity-prefix", 0, "P", "match events of entities starting with P"},
    {"drop-kind", 0, "K", "match events of kind K"},
    {"drop-before-ms", 0, "MS", "match events older than MS (Unix milliseconds)"},
    {"min-segments", 0, "N", "merge only when at least N segments are sealed"},
    {NULL, 0, NULL, NULL}};

static const struct command {
  const char *name;
  int (*fn)(const char *dir, int argc, char **argv);
  const char *operands;     /* after DIR */
  int operands_needed;
  bool creates;             /* may be given a directory that is not a store yet */
  const optspec *opts;
  const char *help;
} commands[] = {
    {"init", cmd_init, "", 0, true, NO_OPTS, "create an empty store"},
    {"append", cmd_append, "", 0, false, APPEND_OPTS, "append an event"},
    {"get", cmd_get, "EVENT_ID", 1, false, NO_OPTS, "show one event (id in hex or UUID form)"},
    {"query", cmd_query, "", 0, false, QUERY_OPTS, "list the events of a region"},
    {"stream", cmd_stream, "ENTITY", 1, false, NO_OPTS, "list one entity's events"},
    {"tail", cmd_tail, "", 0, false, TAIL_OPTS,
     "print the last events, and with -f the new ones as they are published, following the store's writer"},
    {"stats", cmd_stats, "", 0, false, NO_OPTS, "counts and how the store opened"},
    {"verify", cmd_verify, "", 0, false, VERIFY_OPTS,
     "check frames, footers, hash chains, the index and the checkpoint (exit 3 when damaged)"},
    {"repair", cmd_repair, "DEST", 1, false, NO_OPTS, "copy what is readable of a damaged store into a new store"},
    {"snapshot", cmd_snapshot, "DEST", 1, false, NO_OPTS,
     "copy the store consistently, even while another process writes it"},
    {"compact", cmd_compact, "", 0, false, COMPACT_OPTS,
     "merge the sealed segments; events matching every --drop option are dropped or tombstoned"},
    {"export", cmd_export, "", 0, false, NO_OPTS, "write every event as JSON lines to standard output"},
    {"import", cmd_import, "", 0, true, NO_OPTS, "append JSON lines from standard input (as export writes them)"},
    {"relay", cmd_relay, "", 0, false, RELAY_OPTS,
     "publish the store's events to a NATS JetStream stream, beside the store's writer"},
    {"follow", cmd_follow, "", 0, true, FOLLOW_OPTS,
     "keep the replica DIR from a JetStream stream a relay fills (created if missing)"},
};

#define EXIT_CODES                                                                          \
  "exit status: 0 done; 1 the operation failed (the library's code and message on standard\n" \
  "error); 2 bad usage (the reason on standard error); 3 verify found damage.\n"

static int command_help(const struct command *c, FILE *f) {
  fprintf(f, "usage: batpak %s DIR%s%s [options]\n\n  %s\n\noptions:\n", c->name, *c->operands ? " " : "",
          c->operands, c->help);
  for (const optspec *o = c->opts; o->name; o++) {
    char left[64];
    if (o->letter)
      snprintf(left, sizeof left, "-%c, --%s%s%s", o->letter, o->name, o->value ? " " : "", o->value ? o->value : "");
    else
      snprintf(left, sizeof left, "    --%s%s%s", o->name, o->value ? " " : "", o->value ? o->value : "");
    fprintf(f, "  %-36s %s\n", left, o->help);
  }
  fprintf(f, "  %-36s %s\n  %-36s %s\n\n", "    --json", "output JSON (schemas: docs/CLI.md)", "-h, --help",
          "this text");
  fputs(EXIT_CODES, f);
  return f == stdout ? 0 : 2;
}

/* Whether dir holds a store: a segment, the lock file a writer leaves, or
 * the crate's checkpoint. Anything else would read as an empty store. */
static bool is_store(const char *dir) {
  static const char *const marks[] = {"batpak.lock", "index.ckpt", "000001.fbat"};
  char p[4200];
  for (size_t i = 0; i < sizeof marks / sizeof *marks; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, marks[i]);
    if (access(p, F_OK) == 0) return true;
  }
  DIR *d = opendir(dir);
  if (!d) return false;
  bool found = false;
  for (struct dirent *e; !found && (e = readdir(d));) {
    size_t n = strlen(e->d_name);
    found = n > 5 && strcmp(e->d_name + n - 5, ".fbat") == 0;
  }
  closedir(d);
  return found;
}

/* Parses a command's arguments with getopt_long (options before or after the
 * operands, --name=value, unknown options and missing values refused) into
 * the form the command bodies read: the operands after DIR, then each
 * option as "--name" and, when it takes one, its value. Returns 0, or the
 * exit status of a usage error (the reason printed). */
static int parse_args(const struct command *c, int argc, char **argv, const char **dir, int *out_argc,
                      char ***out_argv) {
  size_t nopts = 0;
  while (c->opts[nopts].name) nopts++;
  /* "--name" of each option, as the command bodies look for them. */
  static char long_buf[32][40];
  static const char *long_names[32];
  for (size_t i = 0; i < nopts && i < 32; i++) {
    snprintf(long_buf[i], sizeof long_buf[i], "--%s", c->opts[i].name);
    long_names[i] = long_buf[i];
  }
  struct option *lo = calloc(nopts + 3, sizeof *lo);
  char shorts[64] = "+h", *sp = shorts + 2;
  shorts[0] = '-'; /* operands come back in order as option 1 */
  char **norm = calloc((size_t)argc * 2 + 2, sizeof *norm);
  if (!lo || !norm) {
    free(lo);
    free(norm);
    fprintf(stderr, "batpak: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < nopts; i++) {
    lo[i] = (struct option){c->opts[i].name, c->opts[i].value ? required_argument : no_argument, NULL, 256 + (int)i};
    if (c->opts[i].letter) {
      *sp++ = c->opts[i].letter;
      if (c->opts[i].value) *sp++ = ':';
    }
  }
  lo[nopts] = (struct option){"json", no_argument, NULL, 'j'};
  lo[nopts + 1] = (struct option){"help", no_argument, NULL, 'h'};
  *sp = 0;
  const char *operands[8];
  int nops = 0, nnorm = 0, rc = 0;
  opterr = 0;
  optind = 1;
  int ch;
  while (rc == 0 && (ch = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
    if (ch == 1) {
      if (nops == 8) rc = 2;
      else operands[nops++] = optarg;
    } else if (ch == 'h') {
      command_help(c, stdout);
      rc = -1;
    } else if (ch == 'j') {
      json_out = true;
    } else if (ch >= 256 || (ch > 0 && strchr(shorts + 2, ch))) {
      size_t i = 0;
      if (ch >= 256) i = (size_t)(ch - 256);
      else
        while (c->opts[i].letter != ch) i++;
      norm[nnorm++] = (char *)long_names[i];
      if (c->opts[i].value) norm[nnorm++] = optarg;
    } else if (ch == '?' && (optopt >= 256 || (optopt > 0 && optopt < 128 && strchr(shorts + 2, optopt)))) {
      fprintf(stderr, "batpak %s: option %s needs a value (batpak %s --help)\n", c->name, argv[optind - 1], c->name);
      rc = 2;
    } else {
      fprintf(stderr, "batpak %s: unknown option %s (batpak %s --help)\n", c->name, argv[optind - 1], c->name);
      rc = 2;
    }
  }
  free(lo);
  if (rc == 0 && nops != 1 + c->operands_needed) {
    fprintf(stderr, "usage: batpak %s DIR%s%s [options]\n", c->name, *c->operands ? " " : "", c->operands);
    rc = 2;
  }
  if (rc == 0 && !c->creates && !is_store(operands[0])) {
    fprintf(stderr, "batpak %s: %s is not a batpak store (no segment, no batpak.lock, no index.ckpt)\n", c->name,
            operands[0]);
    rc = 1;
  }
  if (rc) {
    free(norm);
    return rc < 0 ? 0 : rc;
  }
  /* Operands after DIR first, then the options. */
  memmove(norm + (nops - 1), norm, sizeof *norm * (size_t)nnorm);
  for (int i = 1; i < nops; i++) norm[i - 1] = (char *)operands[i];
  *dir = operands[0];
  *out_argc = nnorm + nops - 1;
  *out_argv = norm;
  return 0;
}

static int help(FILE *f) {
  fprintf(f, "batpak %s - inspect and maintain batpak stores\n\nusage: batpak COMMAND DIR [operands] [options]\n\n",
          bp_version());
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    char left[40];
    snprintf(left, sizeof left, "%s%s%s", commands[i].name, *commands[i].operands ? " " : "", commands[i].operands);
    fprintf(f, "  %-18s %s\n", left, commands[i].help);
  }
  fprintf(f, "\nbatpak COMMAND --help lists a command's options; --json gives JSON (docs/CLI.md).\n"
             "batpak -V, --version prints the version. The benchmark driver is batpak-bench.\n\n" EXIT_CODES);
  return f == stdout ? 0 : 2;
}

int main(int argc, char **argv) {
  if (argc < 2) return help(stderr);
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) return help(stdout);
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
    printf("batpak %s\n", bp_version());
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    if (strcmp(argv[1], commands[i].name) != 0) continue;
    const char *dir = NULL;
    int cargc = 0;
    char **cargv = NULL;
    int rc = parse_args(&commands[i], argc - 1, argv + 1, &dir, &cargc, &cargv);
    if (rc || !cargv) return rc;
    rc = commands[i].fn(dir, cargc, cargv);
    free(cargv);
    return rc;
  }
  fprintf(stderr, "batpak: unknown command \"%s\" (batpak --help lists them)\n", argv[1]);
  return 2;
}
