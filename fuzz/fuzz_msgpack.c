/* fuzz_msgpack.c - the MessagePack reader and msgpack -> JSON on arbitrary bytes.
 * Invariants: never reads outside the input; a document that converts to JSON
 * also skips as one whole value; every decoder of integer byte arrays
 * agrees with decoding element by element; every writer of byte arrays
 * writes what the portable one does, within its room, and it decodes back. */
#include "wire/records.h"
#include "batpak/policy.h"
#include "batpak/wire.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, data, size);
  bool skipped_whole = bp__mp_skip(&r) == BP_OK && bp__mp_remaining(&r) == 0;

  char *json = NULL;
  bp_status st = bp_msgpack_to_json(data, size, &json);
  if (st == BP_OK && !skipped_whole) abort();
  if (st == BP_OK && !json) abort();
  bp_free(json);

  /* Typed reads over the same bytes must stay in bounds too. */
  uint8_t fixed[32];
  const uint8_t *p;
  size_t n;
  bp__buf scratch;
  bp__buf_init(&scratch);
  bp__mp_reader_init(&r, data, size);
  (void)bp__mp_read_fixed_bytes(&r, fixed, sizeof fixed);
  bp__mp_reader_init(&r, data, size);
  (void)bp__mp_read_bytes(&r, &scratch, &p, &n);
  bp__buf_free(&scratch);

  /* The byte-array decoder on the input after its first byte, which says how
   * many elements to take. */
  if (size > 1) {
    uint8_t want[256];
    const uint8_t *a = data + 1, *b = data + 1;
    size_t count = data[0];
    uint8_t *got = malloc(count ? count : 1); /* exactly count bytes: ASan sees any write past them */
    if (!got) abort();
    bool want_ok = bp__mp_take_int_bytes_each(&b, data + size, want, count);
    /* Every decoder this processor can run: PEXT blocks, SSSE3 blocks and
     * windows, portable windows. */
    const unsigned paths[] = {~0u, BP__CPU_SSSE3 | BP__CPU_POPCNT, BP__CPU_SSSE3, 0};
    for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
      a = data + 1;
      bool ok = bp__mp_take_int_bytes_using(paths[k], &a, data + size, got, count);
      if (ok != want_ok) abort();
      if (ok && (a != b || memcmp(got, want, count) != 0)) abort();
      if (!ok && a != data + 1) abort();
    }
    free(got);
  }

  /* The input written as a byte array by every writer: the same bytes as the
   * portable writer's, none past the room (ASan sees the heap block's end),
   * and they decode back to the input. */
  if (size <= 4096) {
    size_t room = 5 + 2 * size;
    uint8_t *want = malloc(room), *got = malloc(room), *back = malloc(size ? size : 1);
    if (!want || !got || !back) abort();
    size_t want_len = (size_t)(bp__mp_emit_byte_array_using(0, want, data, size) - want);
    const unsigned writers[] = {~0u, BP__CPU_SSSE3 | BP__CPU_POPCNT};
    for (size_t k = 0; k < sizeof writers / sizeof writers[0]; k++) {
      size_t got_len = (size_t)(bp__mp_emit_byte_array_using(writers[k], got, data, size) - got);
      if (got_len != want_len || memcmp(got, want, want_len) != 0) abort();
    }
    bp__mp_reader_init(&r, want, want_len);
    uint32_t items;
    if (bp__mp_read_array(&r, &items) != BP_OK || items != size) abort();
    const uint8_t *q = want + bp__mp_offset(&r);
    if (!bp__mp_take_int_bytes(&q, want + want_len, back, size) || q != want + want_len) abort();
    if (size && memcmp(back, data, size) != 0) abort();
    free(want);
    free(got);
    free(back);
  }

  /* The policy records: what decodes re-encodes to something that decodes equal. */
  bp_outcome *o;
  if (bp_outcome_decode(data, size, &o) == BP_OK) {
    uint8_t *mp;
    size_t mp_len;
    bp_outcome *again;
    if (bp_outcome_encode(o, &mp, &mp_len) != BP_OK || bp_outcome_decode(mp, mp_len, &again) != BP_OK) abort();
    if (!bp_outcome_equal(o, again)) abort();
    bp_outcome_free(again);
    bp_outcome_free(o);
    bp_free(mp);
  }
  bp_committed c;
  if (bp_committed_decode(data, size, &c) == BP_OK) bp_committed_free(&c);
  bp__wait w;
  if (bp__wait_decode(data, size, &w) == BP_OK) bp__wait_free(&w);
  bp__compensation comp;
  if (bp__compensation_decode(data, size, &comp) == BP_OK) bp__compensation_free(&comp);
  return 0;
}
