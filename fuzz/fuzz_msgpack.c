/* fuzz_msgpack.c - the MessagePack reader and msgpack -> JSON on arbitrary bytes.
 * Invariants: never reads outside the input; a document that converts to JSON
 * also skips as one whole value; the window decoder of integer byte arrays
 * agrees with decoding element by element. */
#include "wire/records.h"
#include "batpak/policy.h"
#include "batpak/wire.h"

#include <stdlib.h>

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
