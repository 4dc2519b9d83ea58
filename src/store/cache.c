/*
 * cache.c - projection caches: the vtable wrapper, the no-op cache and the
 * user-supplied cache. The LMDB and SQLite backends live in cache_lmdb.c and
 * cache_sqlite.c.
 */
#include "store/store_impl.h"

struct bp_cache {
  bp_cache_vtable vt;
  void *ctx;
};

bp_status bp_cache_custom(const bp_cache_vtable *vt, void *ctx, bp_cache **out) {
  if (out) *out = NULL;
  if (!vt || !out) return bp__fail(BP_EINVAL, "bp_cache_custom: NULL argument");
  if (vt->version != BP_CACHE_VERSION)
    return bp__fail(BP_EINVAL, "bp_cache_custom: vtable version %u, this library knows %u", vt->version,
                    BP_CACHE_VERSION);
  if (!vt->get || !vt->put || !vt->delete_prefix)
    return bp__fail(BP_EINVAL, "bp_cache_custom: get, put and delete_prefix are required");
  bp_cache *c = calloc(1, sizeof *c);
  if (!c) return bp__fail(BP_ENOMEM, "out of memory for a cache");
  c->vt = *vt;
  c->ctx = ctx;
  *out = c;
  return BP_OK;
}

static bp_status noop_get(void *ctx, const void *k, size_t kl, void **v, size_t *vl) {
  (void)ctx; (void)k; (void)kl; (void)v; (void)vl;
  return bp__fail(BP_ENOTFOUND, "no-op cache holds nothing");
}
static bp_status noop_put(void *ctx, const void *k, size_t kl, const void *v, size_t vl) {
  (void)ctx; (void)k; (void)kl; (void)v; (void)vl;
  return BP_OK;
}
static bp_status noop_delete(void *ctx, const void *p, size_t pl) {
  (void)ctx; (void)p; (void)pl;
  return BP_OK;
}

bp_status bp_cache_noop(bp_cache **out) {
  static const bp_cache_vtable vt = {BP_CACHE_VERSION, 0, noop_get, noop_put, noop_delete, NULL, NULL, NULL};
  return bp_cache_custom(&vt, NULL, out);
}

bp_status bp_cache_get(bp_cache *c, const void *key, size_t klen, void **value, size_t *vlen) {
  if (!c || !key || !value || !vlen) return bp__fail(BP_EINVAL, "bp_cache_get: NULL argument");
  *value = NULL;
  *vlen = 0;
  return c->vt.get(c->ctx, key, klen, value, vlen);
}

bp_status bp_cache_put(bp_cache *c, const void *key, size_t klen, const void *value, size_t vlen) {
  if (!c || !key || (!value && vlen)) return bp__fail(BP_EINVAL, "bp_cache_put: NULL argument");
  return c->vt.put(c->ctx, key, klen, value, vlen);
}

bp_status bp_cache_delete_prefix(bp_cache *c, const void *prefix, size_t plen) {
  if (!c || (!prefix && plen)) return bp__fail(BP_EINVAL, "bp_cache_delete_prefix: NULL argument");
  return c->vt.delete_prefix(c->ctx, prefix, plen);
}

bp_status bp_cache_sync(bp_cache *c) {
  if (!c) return bp__fail(BP_EINVAL, "bp_cache_sync: NULL cache");
  return c->vt.sync ? c->vt.sync(c->ctx) : BP_OK;
}

bp_status bp_cache_prefetch(bp_cache *c, const void *key, size_t klen) {
  if (!c) return bp__fail(BP_EINVAL, "bp_cache_prefetch: NULL cache");
  return c->vt.prefetch ? c->vt.prefetch(c->ctx, key, klen) : BP_OK;
}

uint32_t bp_cache_capabilities(const bp_cache *c) { return c ? c->vt.capabilities : 0; }

void bp_cache_free(bp_cache *c) {
  if (!c) return;
  if (c->vt.destroy) c->vt.destroy(c->ctx);
  free(c);
}
