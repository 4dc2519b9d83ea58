/* region.c - coordinate validation and the region predicate. */
#include "internal.h"

static bp_status check_part(const char *value, const char *what) {
  if (!value) return bp__fail(BP_ECOORD, "coordinate: %s is NULL", what);
  size_t n = strnlen(value, BP_MAX_COORD_LEN + 1);
  if (n == 0) return bp__fail(BP_ECOORD, "coordinate: %s is empty", what);
  if (n > BP_MAX_COORD_LEN)
    return bp__fail(BP_ECOORD, "coordinate: %s is longer than %u bytes", what, BP_MAX_COORD_LEN);
  /* Stored as a MessagePack str, which holds UTF-8 text: readers in other
   * languages (the crate's among them) refuse anything else. */
  size_t bad = bp__utf8_invalid_at((const uint8_t *)value, n);
  if (bad != SIZE_MAX)
    return bp__fail(BP_ECOORD, "coordinate: %s is not valid UTF-8 (byte 0x%02X at offset %zu)", what,
                    (unsigned)(uint8_t)value[bad], bad);
  return BP_OK;
}

bp_status bp_coord_validate(const bp_coord *coord) {
  if (!coord) return bp__fail(BP_ECOORD, "coordinate: NULL");
  bp_status st = check_part(coord->entity, "entity");
  if (st == BP_OK) st = check_part(coord->scope, "scope");
  return st;
}

bp_region bp_region_all(void) {
  bp_region r;
  memset(&r, 0, sizeof r);
  return r;
}

bp_region bp_region_entity(const char *prefix) {
  bp_region r = bp_region_all();
  r.entity_prefix = prefix;
  return r;
}

bp_region bp_region_scope(const char *scope) {
  bp_region r = bp_region_all();
  r.scope = scope;
  return r;
}

bp_region bp_region_with_scope(bp_region region, const char *scope) {
  region.scope = scope;
  return region;
}

bp_region bp_region_with_kind(bp_region region, bp_kind kind) {
  region.fact = BP_FACT_EXACT;
  region.kind = kind;
  return region;
}

bp_region bp_region_with_category(bp_region region, uint8_t category) {
  region.fact = BP_FACT_CATEGORY;
  region.category = category;
  return region;
}

bp_region bp_region_with_clock_range(bp_region region, uint32_t min, uint32_t max) {
  region.has_clock_range = true;
  region.clock_min = min;
  region.clock_max = max;
  return region;
}

bool bp_region_matches_event(const bp_region *r, const char *entity, const char *scope,
                             bp_kind kind) {
  if (r->entity_prefix && strncmp(entity, r->entity_prefix, strlen(r->entity_prefix)) != 0)
    return false;
  if (r->scope && strcmp(scope, r->scope) != 0) return false;
  switch (r->fact) {
    case BP_FACT_EXACT: return kind == r->kind;
    case BP_FACT_CATEGORY: return bp_kind_category(kind) == r->category;
    default: return true;
  }
}

bool bp_region_matches(const bp_region *r, const char *entity, const char *scope, bp_kind kind,
                       uint32_t clock) {
  if (r->has_clock_range && (clock < r->clock_min || clock > r->clock_max)) return false;
  return bp_region_matches_event(r, entity, scope, kind);
}
