/* fuzz_msgpack.c - the MessagePack reader and msgpack -> JSON on arbitrary bytes.
 * Invariants: never reads outside the input; a document that converts to JSON
 * also skips as one whole value. */
#include "wire/msgpack.h"
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
  return 0;
}
