/* cache_lmdb.c - a projection cache in an LMDB environment (built with
 * BATPAK_WITH_LMDB; without it, bp_cache_lmdb_open says so). */
#include "store/store_impl.h"

#if BATPAK_WITH_LMDB

#include <errno.h>
#include <lmdb.h>
#include <sys/stat.h>

typedef struct lmdb_cache {
  MDB_env *env;
  MDB_dbi dbi;
} lmdb_cache;

static bp_status lmdb_fail(int rc, const char *what) {
  if (rc == MDB_NOTFOUND) return bp__fail(BP_ENOTFOUND, "lmdb cache: key not found");
  return bp__fail(rc == ENOMEM ? BP_ENOMEM : BP_EIO, "lmdb cache: %s: %s", what, mdb_strerror(rc));
}

static bp_status lmdb_get(void *ctx, const void *key, size_t klen, void **value, size_t *vlen) {
  lmdb_cache *c = ctx;
  MDB_txn *txn;
  int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
  if (rc) return lmdb_fail(rc, "begin");
  MDB_val k = {klen, (void *)key}, v;
  rc = mdb_get(txn, c->dbi, &k, &v);
  if (rc == 0) {
    /* The value lives in the map only while the transaction does: copy it. */
    *value = malloc(v.mv_size ? v.mv_size : 1);
    if (*value) {
      memcpy(*value, v.mv_data, v.mv_size);
      *vlen = v.mv_size;
    } else {
      rc = ENOMEM;
    }
  }
  mdb_txn_abort(txn);
  return rc ? lmdb_fail(rc, "get") : BP_OK;
}

static bp_status lmdb_put(void *ctx, const void *key, size_t klen, const void *value, size_t vlen) {
  lmdb_cache *c = ctx;
  MDB_txn *txn;
  int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
  if (rc) return lmdb_fail(rc, "begin");
  MDB_val k = {klen, (void *)key}, v = {vlen, (void *)value};
  rc = mdb_put(txn, c->dbi, &k, &v, 0);
  if (rc) {
    mdb_txn_abort(txn);
    return lmdb_fail(rc, "put");
  }
  rc = mdb_txn_commit(txn);
  return rc ? lmdb_fail(rc, "commit") : BP_OK;
}

static bp_status lmdb_delete_prefix(void *ctx, const void *prefix, size_t plen) {
  lmdb_cache *c = ctx;
  MDB_txn *txn;
  MDB_cursor *cur;
  int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
  if (rc) return lmdb_fail(rc, "begin");
  if ((rc = mdb_cursor_open(txn, c->dbi, &cur))) {
    mdb_txn_abort(txn);
    return lmdb_fail(rc, "cursor");
  }
  MDB_val k = {plen, (void *)prefix}, v;
  rc = mdb_cursor_get(cur, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST);
  while (rc == 0 && k.mv_size >= plen && memcmp(k.mv_data, prefix, plen) == 0) {
    if ((rc = mdb_cursor_del(cur, 0))) break;
    rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
    if (rc == EINVAL) rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc && rc != MDB_NOTFOUND) {
    mdb_txn_abort(txn);
    return lmdb_fail(rc, "delete");
  }
  rc = mdb_txn_commit(txn);
  return rc ? lmdb_fail(rc, "commit") : BP_OK;
}

static bp_status lmdb_sync(void *ctx) {
  int rc = mdb_env_sync(((lmdb_cache *)ctx)->env, 1);
  return rc ? lmdb_fail(rc, "sync") : BP_OK;
}

static void lmdb_destroy(void *ctx) {
  lmdb_cache *c = ctx;
  mdb_env_close(c->env);
  free(c);
}

bp_status bp_cache_lmdb_open(const char *path, size_t map_size, bp_cache **out) {
  if (out) *out = NULL;
  if (!path || !out) return bp__fail(BP_EINVAL, "bp_cache_lmdb_open: NULL argument");
  if (mkdir(path, 0700) != 0 && errno != EEXIST) return bp__fail_errno(BP_EIO, errno, "lmdb cache: create %s", path);
  lmdb_cache *c = calloc(1, sizeof *c);
  if (!c) return bp__fail(BP_ENOMEM, "out of memory for a cache");
  int rc = mdb_env_create(&c->env);
  if (!rc) rc = mdb_env_set_mapsize(c->env, map_size ? map_size : (size_t)1 << 30);
  if (!rc) rc = mdb_env_open(c->env, path, MDB_NOTLS, 0600);
  MDB_txn *txn = NULL;
  if (!rc) rc = mdb_txn_begin(c->env, NULL, 0, &txn);
  if (!rc) rc = mdb_dbi_open(txn, NULL, 0, &c->dbi);
  if (!rc) rc = mdb_txn_commit(txn), txn = NULL;
  if (rc) {
    if (txn) mdb_txn_abort(txn);
    if (c->env) mdb_env_close(c->env);
    free(c);
    return lmdb_fail(rc, path);
  }
  static const bp_cache_vtable vt = {BP_CACHE_VERSION, BP_CACHE_CAP_DURABLE, lmdb_get, lmdb_put,
                                     lmdb_delete_prefix, lmdb_sync, NULL, lmdb_destroy};
  bp_status st = bp_cache_custom(&vt, c, out);
  if (st) lmdb_destroy(c);
  return st;
}
#else

bp_status bp_cache_lmdb_open(const char *path, size_t map_size, bp_cache **out) {
  (void)path;
  (void)map_size;
  if (out) *out = NULL;
  return bp__fail(BP_EUNSUPPORTED, "bp_cache_lmdb_open: this build of batpak has no LMDB cache "
                  "(configure with -DBATPAK_WITH_LMDB=ON)");
}
#endif
