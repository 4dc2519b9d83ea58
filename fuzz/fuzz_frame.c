/* fuzz_frame.c - the frame body and segment header decoders on arbitrary bytes.
 * Invariant: a body that decodes re-encodes (canonically) to bytes that decode
 * to the same frame, and that canonical encoding is a fixed point. */
#include "wire/records.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_frame(const bp__frame *a, const bp__frame *b) {
  return memcmp(&a->header, &b->header, sizeof a->header) == 0 && a->entity_len == b->entity_len &&
         memcmp(a->entity, b->entity, a->entity_len) == 0 && a->scope_len == b->scope_len &&
         memcmp(a->scope, b->scope, a->scope_len) == 0 && a->payload_len == b->payload_len &&
         (a->payload_len == 0 || memcmp(a->payload, b->payload, a->payload_len) == 0) &&
         a->has_chain == b->has_chain &&
         (!a->has_chain || memcmp(&a->chain, &b->chain, sizeof a->chain) == 0);
}

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
  memset(&f.header, 0, sizeof f.header); /* padding bytes compare equal */
  if (bp__frame_decode_body(data, size, &scratch, &f) == BP_OK) {
    bp__frame_encode_body(&once, &f);
    if (bp__frame_decode_body(once.data, once.len, &scratch2, &g) != BP_OK) abort();
    if (!same_frame(&f, &g)) abort();
    bp__frame_encode_body(&twice, &g);
    if (once.len != twice.len || memcmp(once.data, twice.data, once.len) != 0) abort();
  }
  bp__buf_free(&scratch);
  bp__buf_free(&scratch2);
  bp__buf_free(&once);
  bp__buf_free(&twice);
  return 0;
}
