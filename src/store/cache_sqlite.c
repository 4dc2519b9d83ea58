/* cache_sqlite.c - a projection cache in a SQLite table. */
#include "store/store_impl.h"

#if BATPAK_WITH_SQLITE

#include <sqlite3.h>

typedef struct sqlite_cache {
  sqlite3 *db;
  sqlite3_stmt *get, *put, *del;
  pthread_mutex_t lock;      /* one statement set, shared by the store's threads */
} sqlite_cache;

static bp_status sq_fail(sqlite_cache *c, const char *what) {
  return bp__fail(BP_EIO, "sqlite cache: %s: %s", what, sqlite3_errmsg(c->db));
}

static bp_status sq_get(void *ctx, const void *key, size_t klen, void **value, size_t *vlen) {
  sqlite_cache *c = ctx;
  pthread_mutex_lock(&c->lock);
  sqlite3_bind_blob(c->get, 1, key, (int)klen, SQLITE_STATIC);
  int rc = sqlite3_step(c->get);
  bp_status st = BP_OK;
  if (rc == SQLITE_ROW) {
    const void *v = sqlite3_column_blob(c->get, 0);
    size_t n = (size_t)sqlite3_column_bytes(c->get, 0);
    *value = malloc(n ? n : 1);
    if (!*value) st = bp__fail(BP_ENOMEM, "sqlite cache: out of memory");
    else {
      if (n) memcpy(*value, v, n);
      *vlen = n;
    }
  } else if (rc == SQLITE_DONE) {
    st = bp__fail(BP_ENOTFOUND, "sqlite cache: key not found");
  } else {
    st = sq_fail(c, "get");
  }
  sqlite3_reset(c->get);
  pthread_mutex_unlock(&c->lock);
  return st;
}

static bp_status sq_put(void *ctx, const void *key, size_t klen, const void *value, size_t vlen) {
  sqlite_cache *c = ctx;
  pthread_mutex_lock(&c->lock);
  sqlite3_bind_blob(c->put, 1, key, (int)klen, SQLITE_STATIC);
  sqlite3_bind_blob(c->put, 2, vlen ? value : "", (int)vlen, SQLITE_STATIC);
  bp_status st = sqlite3_step(c->put) == SQLITE_DONE ? BP_OK : sq_fail(c, "put");
  sqlite3_reset(c->put);
  pthread_mutex_unlock(&c->lock);
  return st;
}

static bp_status sq_delete_prefix(void *ctx, const void *prefix, size_t plen) {
  sqlite_cache *c = ctx;
  pthread_mutex_lock(&c->lock);
  /* Keys are compared as blobs (memcmp): prefix <= key < the prefix's successor,
   * done here as substr(key, 1, plen) = prefix. */
  sqlite3_bind_blob(c->del, 1, plen ? prefix : "", (int)plen, SQLITE_STATIC);
  sqlite3_bind_int64(c->del, 2, (sqlite3_int64)plen);
  bp_status st = sqlite3_step(c->del) == SQLITE_DONE ? BP_OK : sq_fail(c, "delete");
  sqlite3_reset(c->del);
  pthread_mutex_unlock(&c->lock);
  return st;
}

static bp_status sq_sync(void *ctx) {
  sqlite_cache *c = ctx;
  pthread_mutex_lock(&c->lock);
  int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_FULL, NULL, NULL);
  pthread_mutex_unlock(&c->lock);
  return rc == SQLITE_OK ? BP_OK : sq_fail(c, "checkpoint");
}

static void sq_destroy(void *ctx) {
  sqlite_cache *c = ctx;
  sqlite3_finalize(c->get);
  sqlite3_finalize(c->put);
  sqlite3_finalize(c->del);
  sqlite3_close(c->db);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

bp_status bp_cache_sqlite_open(const char *path, bp_cache **out) {
  if (out) *out = NULL;
  if (!path || !out) return bp__fail(BP_EINVAL, "bp_cache_sqlite_open: NULL argument");
  sqlite_cache *c = calloc(1, sizeof *c);
  if (!c) return bp__fail(BP_ENOMEM, "out of memory for a cache");
  pthread_mutex_init(&c->lock, NULL);
  bp_status st = BP_OK;
  if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
          SQLITE_OK ||
      sqlite3_exec(c->db,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                   "CREATE TABLE IF NOT EXISTS cache(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
                   NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(c->db, "SELECT value FROM cache WHERE key = ?", -1, &c->get, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(c->db, "INSERT OR REPLACE INTO cache(key, value) VALUES(?, ?)", -1, &c->put, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v2(c->db, "DELETE FROM cache WHERE substr(key, 1, ?2) = ?1", -1, &c->del, NULL) != SQLITE_OK)
    st = bp__fail(BP_EIO, "sqlite cache: open %s: %s", path, c->db ? sqlite3_errmsg(c->db) : "out of memory");
  if (st) {
    sq_destroy(c);
    return st;
  }
  static const bp_cache_vtable vt = {BP_CACHE_VERSION, BP_CACHE_CAP_DURABLE, sq_get, sq_put, sq_delete_prefix,
                                     sq_sync, NULL, sq_destroy};
  st = bp_cache_custom(&vt, c, out);
  if (st) sq_destroy(c);
  return st;
}
#else

bp_status bp_cache_sqlite_open(const char *path, bp_cache **out) {
  (void)path;
  if (out) *out = NULL;
  return bp__fail(BP_EUNSUPPORTED, "bp_cache_sqlite_open: this build of batpak has no SQLite cache "
                  "(configure with -DBATPAK_WITH_SQLITE=ON)");
}
#endif
