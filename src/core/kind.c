/* kind.c - event kinds: a 4-bit category over a 12-bit type. */
#include "internal.h"

bp_status bp_kind_custom(uint8_t category, uint16_t type_id, bp_kind *out) {
  if (!out) return bp__fail(BP_EINVAL, "bp_kind_custom: out is NULL");
  if (category > 0xF)
    return bp__fail(BP_EINVAL, "bp_kind_custom: category 0x%X does not fit in 4 bits", category);
  if (category == BP_KIND_CATEGORY_SYSTEM)
    return bp__fail(BP_EINVAL, "bp_kind_custom: category 0x0 is reserved for system kinds");
  if (category == BP_KIND_CATEGORY_EFFECT)
    return bp__fail(BP_EINVAL, "bp_kind_custom: category 0xD is reserved for effect kinds");
  *out = (bp_kind)(((unsigned)category << 12) | (type_id & 0x0FFFu));
  return BP_OK;
}

uint8_t bp_kind_category(bp_kind kind) { return (uint8_t)(kind >> 12); }
uint16_t bp_kind_type_id(bp_kind kind) { return (uint16_t)(kind & 0x0FFFu); }
bool bp_kind_is_system(bp_kind kind) { return bp_kind_category(kind) == BP_KIND_CATEGORY_SYSTEM; }
bool bp_kind_is_effect(bp_kind kind) { return bp_kind_category(kind) == BP_KIND_CATEGORY_EFFECT; }

void bp_kind_format(bp_kind kind, char out[7]) {
  static const char digits[] = "0123456789ABCDEF";
  out[0] = '0';
  out[1] = 'x';
  for (int i = 0; i < 4; i++) out[2 + i] = digits[(kind >> (12 - 4 * i)) & 0xF];
  out[6] = '\0';
}

bp_status bp__kind_check_appendable(bp_kind kind, const char *what) {
  /* The reserved categories hold the tombstone and the policy-bypass audit
   * kinds: a caller who could append them could forge either. */
  if (!bp_kind_is_system(kind) && !bp_kind_is_effect(kind)) return BP_OK;
  char k[7];
  bp_kind_format(kind, k);
  return bp__fail(BP_EINVAL, "%s: kind %s is in the reserved %s category (0x%X); only the library writes it", what, k,
                  bp_kind_is_system(kind) ? "system" : "effect", bp_kind_category(kind));
}
