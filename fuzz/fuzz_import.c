/* fuzz_import.c - the line format of `batpak export` / `batpak import`
 * (tools/jsonline.c). Invariant: parsing never crashes or reads out of
 * bounds, and a line that parses formats back to a line that parses to the
 * same event and formats to the same text (round trip). */
#include "jsonline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const jl_event *a, const jl_event *b) {
  if (!bp_id_eq(a->event_id, b->event_id) || !bp_id_eq(a->correlation_id, b->correlation_id) ||
      !bp_id_eq(a->causation_id, b->causation_id) || strcmp(a->entity, b->entity) || strcmp(a->scope, b->scope) ||
      a->kind != b->kind || a->flags != b->flags || a->timestamp_us != b->timestamp_us ||
      a->payload_len != b->payload_len || (a->payload_len && memcmp(a->payload, b->payload, a->payload_len)))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *line = malloc(size + 1);
  if (!line) return 0;
  memcpy(line, data, size);
  line[size] = 0;
  jl_event ev;
  char why[128];
  if (jl_parse(line, size, &ev, why, sizeof why)) {
    char *text = jl_format(&ev);
    jl_event again;
    if (!text || !jl_parse(text, strlen(text), &again, why, sizeof why)) abort();
    same(&ev, &again);
    char *text2 = jl_format(&again);
    if (!text2 || strcmp(text, text2) != 0) abort();
    free(text);
    free(text2);
    jl_free(&again);
    jl_free(&ev);
  }
  free(line);
  return 0;
}
