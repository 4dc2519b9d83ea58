/* fuzz_frame.c - the frame body and segment header decoders on arbitrary bytes.
 * Invariants: the canonical fast path and the general decoder agree (same
 * status, same frame); a body that decodes re-encodes (canonically) to bytes
 * that decode to the same frame, and that canonical encoding is a fixed point. */
#include "wire/records.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bp__segment_header sh;
  size_t consumed;
  (void)bp__segment_header_decode(data, size, &sh, &consumed);

  bp__buf scratch, scratch2, once, twice;
  bp__buf_init(&scratch);
  bp__buf_init(&scratch2);
  bp__buf_init(&once);
  bp__buf_init(&twice);
  bp__frame f, g;
  bp_status fast = bp__frame_decode_body(data, size, &scratch, &f);
  if (bp__frame_decode_general(data, size, &scratch2, &g) != fast) abort();
  if (fast == BP_OK && !bp__frame_equal(&f, &g)) abort();
  if (fast == BP_OK) {
    bp__frame_encode_body(&once, &f);
    if (!bp__frame_decode_canonical(once.data, once.len, &scratch2, &g)) abort();
    if (!bp__frame_equal(&f, &g)) abort();
    bp__frame_encode_body(&twice, &g);
    if (once.len != twice.len || memcmp(once.data, twice.data, once.len) != 0) abort();
  }
  bp__buf_free(&scratch);
  bp__buf_free(&scratch2);
  bp__buf_free(&once);
  bp__buf_free(&twice);
  return 0;
}
