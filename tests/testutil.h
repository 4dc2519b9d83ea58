/*
 * testutil.h - helpers shared by the tests: cmocka, hex, files, fixtures.
 */
#ifndef BATPAK_TESTUTIL_H
#define BATPAK_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batpak.h"

#ifndef BATPAK_TEST_DATA_DIR
#error "BATPAK_TEST_DATA_DIR must point at tests/data"
#endif

/* Asserts a call returned BP_OK, printing the code and message when not. */
#define assert_ok(expr)                                                                   \
  do {                                                                                    \
    bp_status st_ = (expr);                                                               \
    if (st_ != BP_OK)                                                                     \
      fail_msg("%s returned %s: %s", #expr, bp_status_name(st_), bp_last_error()->message); \
  } while (0)

/* Asserts a call failed with the given code, printing both when not. */
#define assert_status(expr, want)                                                   \
  do {                                                                              \
    bp_status st_ = (expr);                                                         \
    if (st_ != (want))                                                              \
      fail_msg("%s returned %s, expected %s (%s)", #expr, bp_status_name(st_),      \
               bp_status_name(want), bp_last_error()->message);                     \
  } while (0)

/* Asserts two byte strings are equal, printing both as hex when not. */
void tu_assert_bytes_eq(const void *got, size_t got_len, const void *want, size_t want_len,
                        const char *what);

/* Decodes hex text (whitespace ignored) into a malloc'd buffer. */
uint8_t *tu_from_hex(const char *hex, size_t *len);
/* Reads a whole file; NULL on error. */
uint8_t *tu_read_file(const char *path, size_t *len);
/* Reads a file under tests/data (path relative to it). Fails the test when absent. */
uint8_t *tu_read_data(const char *rel, size_t *len);
/* A fresh empty directory under the system temporary directory. Caller frees. */
char *tu_make_temp_dir(const char *tag);
/* Removes a directory tree. */
void tu_remove_tree(const char *path);
/* Copies every regular file of src into dst (created if missing). */
void tu_copy_dir(const char *src, const char *dst);
/* XORs the byte at `at` of the file at path with mask (damage for corruption
 * tests; the same call again undoes it). Fails the test when it cannot. */
void tu_flip_byte(const char *path, long at, uint8_t mask);

#endif

/* Skips the calling test unless the library was built with every feature
 * in bits (BP_FEATURE_*: the optional cache backends). */
void tu_require_features(uint32_t bits);

/* ---- a store in a fresh temporary directory, for cmocka setup/teardown ---- */
typedef struct tu_store_fixture {
  char *tmp;          /* the temporary directory (removed by teardown) */
  char dir[4096];     /* tmp/data: the store directory, not yet created */
  bp_config cfg;      /* bp_config_init(&cfg, dir) */
} tu_store_fixture;
int tu_store_setup(void **state);
int tu_store_teardown(void **state);

/* bp_verify on a closed store directory; on problems prints each and fails
 * the test, naming `what`. */
void tu_assert_verifies(const char *dir, const char *what);

/* Writes index.ckpt for the store in dir as the Rust crate would (this
 * library no longer writes one at close) and removes the persistent index,
 * so that the next open takes the checkpoint's path. Returns the write's
 * status (its error is this thread's). */
bp_status tu_write_checkpoint(const char *dir);
/* Removes dir's persistent index (index/), for opens by the other paths. */
void tu_drop_index(const char *dir);
/* Seals the newest segment of the closed store in dir (a close leaves it
 * unsealed): a read-write open with segment_max_bytes 1, whose close then
 * owes the segment its rotation. The index is left as it was. */
void tu_seal_newest(const char *dir);
/* Reopens the store of cfg and checks that each of the n acknowledged ids
 * reads back (check, when not NULL, also sees each event with its index),
 * that the store holds n events with global sequences 0..n-1, then closes it
 * and verifies the directory. Failures name `what`. */
void tu_assert_acknowledged(const bp_config *cfg, const bp_id *ids, size_t n,
                            void (*check)(const bp_event *ev, size_t i, void *ctx), void *ctx, const char *what);
/* The text of a payload that is one MessagePack fixstr (as the crash tests
 * write them), NUL-terminated and cut to size - 1 bytes. */
void tu_fixstr_text(const bp_event *ev, char *text, size_t size);
/* After a crash: the reopened store in dir takes one more append as global
 * sequence `count` (its event count), closes cleanly and verifies. */
void tu_finish_after_crash(bp_store *s, uint64_t count, const char *dir, const char *what);

/* ---- everything a store shows, for comparing two opens of it ---- */
/* One event as the store shows it: its entry (the index) and its event (the
 * frame), or the status bp_get returned for it. */
typedef struct tu_shown {
  bp_entry entry;           /* entity and scope point into the names below */
  char entity[256], scope[256];
  bp_status get;            /* bp_get's status; the fields below when BP_OK */
  bp_header header;
  char ev_entity[256], ev_scope[256];
  bool has_chain;
  bp_hash_chain chain;
  uint8_t *payload;
  size_t payload_len;
} tu_shown;
typedef struct tu_image {
  tu_shown *v;
  size_t n;
} tu_image;
/* Every event of the store in global order, each field of entry and event. */
void tu_image_take(bp_store *s, tu_image *out);
void tu_image_free(tu_image *im);
/* NULL when got shows exactly what want does; else a description of the
 * first difference (a static buffer). An event that got could not read
 * (bp_get failed ECRC or ECORRUPT) but lists identically counts as the same
 * when reads_may_fail is set, and is counted in *read_failures. */
const char *tu_image_diff(const tu_image *got, const tu_image *want, bool reads_may_fail, size_t *read_failures);

/* ---- fixture manifests (json-c) ---- */
struct json_object;
/* Parses tests/data/fixtures/<name>/manifest.json. Free with json_object_put. */
struct json_object *tu_manifest(const char *fixture);
/* Path of a file of a fixture, into buf. */
const char *tu_fixture_path(const char *fixture, const char *file, char *buf, size_t size);
/* Field accessors that fail the test when the field is missing. */
struct json_object *tu_field(struct json_object *o, const char *key);
uint64_t tu_u64(struct json_object *o, const char *key);
const char *tu_str(struct json_object *o, const char *key);
/* A hex id field (32 digits) or nil when the field is null. */
bp_id tu_id(struct json_object *o, const char *key);
/* A 64-digit hex hash field into out. */
void tu_hash(struct json_object *o, const char *key, uint8_t out[32]);
