/* run.c - building, mapping and reading runs (see run.h). */
#include "store/run.h"
#include "store/os.h"
#include "wire/records.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#define RUN_MAGIC "BPXRUN01"
#define RUN_VERSION 1u

void bp__run_path(const char *ixdir, uint64_t no, char *buf, size_t size) {
  snprintf(buf, size, "%s/run-%08" PRIu64, ixdir, no);
}

/* Where each section starts, from the counts (the header need not say). */
typedef struct run_layout {
  uint64_t edir, sdir, kdir, cdir, post, slots, blocks, nblocks, total;
} run_layout;

static run_layout layout_of(uint32_t nent, uint32_t nscope, uint32_t nkind, uint64_t npost, uint64_t nslots) {
  run_layout l;
  l.edir = BP__RUN_HEADER;
  l.sdir = l.edir + (uint64_t)nent * 12;
  l.kdir = l.sdir + (uint64_t)nscope * 12;
  l.cdir = l.kdir + (uint64_t)nkind * 12;
  l.post = l.cdir + 16 * 8;
  l.slots = (l.post + npost * 4 + 7) & ~(uint64_t)7;
  l.blocks = l.slots + nslots * 8;
  l.nblocks = (l.blocks - BP__RUN_HEADER + BP__RUN_BLOCK - 1) / BP__RUN_BLOCK;
  l.total = l.blocks + l.nblocks * 4;
  return l;
}

/* ---------------------------------------------------------------- build */

typedef struct counts {
  uint32_t *ent, *scope, *kind; /* by key: events, then the next free posting */
  uint32_t cat[16];
} counts;

/* Writes the (key, offset, count) directory of the keys below nkeys that
 * occur (per_key[key] != 0), their postings laid out from *off on; each
 * count becomes the key's next free posting. */
static void fill_dir(uint32_t *dir, uint32_t *per_key, uint32_t nkeys, uint32_t *off) {
  uint32_t j = 0;
  for (uint32_t key = 0; key < nkeys; key++) {
    if (!per_key[key]) continue;
    dir[3 * j] = key, dir[3 * j + 1] = *off, dir[3 * j + 2] = per_key[key], j++;
    uint32_t k = per_key[key];
    per_key[key] = *off;
    *off += k;
  }
}

/* Builds the run of ref into its file under ixdir or, with ixdir NULL, into
 * anonymous memory returned in *mem (its length in *mem_len). */
static bp_status build(const char *ixdir, const bp__ixrun_ref *ref, uint32_t nnames, bp__run_entry_fn at, void *ctx,
                       const _Atomic bool *cancel, uint8_t **mem, size_t *mem_len) {
  uint64_t n = ref->end - ref->first;
  counts c;
  memset(&c, 0, sizeof c);
  c.ent = calloc(nnames ? nnames : 1, sizeof *c.ent);
  c.scope = calloc(nnames ? nnames : 1, sizeof *c.scope);
  c.kind = bp__os_zalloc(65536 * sizeof *c.kind);
  bp_status rs = BP_OK;
  int fd = -1;
  uint8_t *m = MAP_FAILED;
  run_layout l = {0};
  char path[4200] = "", tmp[4300] = "";
  if (ixdir) {
    bp__run_path(ixdir, ref->no, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
  }
  if (!c.ent || !c.scope || !c.kind) {
    rs = bp__fail(BP_ENOMEM, "out of memory building an index run");
    goto out;
  }
  bp_id lo = {UINT64_MAX, UINT64_MAX}, hi = {0, 0};
  for (uint64_t seq = ref->first; seq < ref->end; seq++) {
    const bp__ientry *e = at(ctx, seq);
    if (e->entity >= nnames || e->scope >= nnames) {
      rs = bp__fail(BP_ECORRUPT, "index entry %" PRIu64 " names an unknown name", seq);
      goto out;
    }
    c.ent[e->entity]++;
    c.scope[e->scope]++;
    c.kind[e->kind]++;
    c.cat[bp_kind_category(e->kind)]++;
    if (bp_id_cmp(e->event_id, lo) < 0) lo = e->event_id;
    if (bp_id_cmp(e->event_id, hi) > 0) hi = e->event_id;
  }
  uint32_t nent = 0, nscope = 0, nkind = 0;
  for (uint32_t i = 0; i < nnames; i++) nent += c.ent[i] != 0, nscope += c.scope[i] != 0;
  for (uint32_t k = 0; k < 65536; k++) nkind += c.kind[k] != 0;
  uint64_t nslots = 16;
  while (nslots < 2 * n) nslots *= 2;
  l = layout_of(nent, nscope, nkind, 4 * n, nslots);

  if (!ixdir) {
    m = mmap(NULL, l.total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      rs = bp__fail(BP_ENOMEM, "out of memory building an index run");
      goto out;
    }
  } else {
    fd = bp__os_table.open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      rs = bp__fail_errno(BP_EIO, errno, "create %s", tmp);
      goto out;
    }
    if (bp__os_table.fallocate(fd, 0, 0, (off_t)l.total) != 0 &&
        (errno != EOPNOTSUPP || bp__os_table.ftruncate(fd, (off_t)l.total) != 0)) {
      rs = bp__fail_errno(BP_EIO, errno, "allocate %s", tmp);
      goto out;
    }
    m = bp__os_table.mmap(NULL, l.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      rs = bp__fail_errno(BP_EIO, errno, "map %s", tmp);
      goto out;
    }
  }
  /* Directories, and each key's first posting (counts become cursors). */
  uint32_t *edir = (uint32_t *)(m + l.edir), *sdir = (uint32_t *)(m + l.sdir), *kdir = (uint32_t *)(m + l.kdir);
  uint32_t *cdir = (uint32_t *)(m + l.cdir), *post = (uint32_t *)(m + l.post);
  uint32_t off = 0;
  fill_dir(edir, c.ent, nnames, &off);
  fill_dir(sdir, c.scope, nnames, &off);
  fill_dir(kdir, c.kind, 65536, &off);
  for (int i = 0; i < 16; i++) {
    cdir[2 * i] = off, cdir[2 * i + 1] = c.cat[i];
    uint32_t k = c.cat[i];
    c.cat[i] = off;
    off += k;
  }
  uint32_t *slots = (uint32_t *)(m + l.slots);
  uint64_t mask = nslots - 1;
  for (uint64_t seq = ref->first; seq < ref->end; seq++) {
    if ((seq & 0xffff) == 0 && cancel && atomic_load(cancel)) {
      rs = bp__fail(BP_ESHUTDOWN, "index run %08" PRIu64 " abandoned: the store is closing", ref->no);
      goto out;
    }
    const bp__ientry *e = at(ctx, seq);
    uint32_t s32 = (uint32_t)seq;
    post[c.ent[e->entity]++] = s32;
    post[c.scope[e->scope]++] = s32;
    post[c.kind[e->kind]++] = s32;
    post[c.cat[bp_kind_category(e->kind)]++] = s32;
    uint64_t h = bp__hash_id(e->event_id), i = h & mask;
    while (slots[2 * i + 1]) i = (i + 1) & mask;
    slots[2 * i] = (uint32_t)(h >> 32);
    slots[2 * i + 1] = s32 + 1;
  }
  uint8_t *h = m;
  memcpy(h, RUN_MAGIC, 8);
  bp__put_le32(h + 8, RUN_VERSION);
  bp__put_le32(h + 12, ref->level);
  bp__put_le64(h + 16, ref->first);
  bp__put_le64(h + 24, ref->end);
  bp__put_le64(h + 32, ref->no);
  bp__put_le32(h + 40, nent);
  bp__put_le32(h + 44, nscope);
  bp__put_le32(h + 48, nkind);
  bp__put_le64(h + 56, nslots);
  bp__put_le64(h + 64, 4 * n);
  bp__put_le64(h + 72, lo.hi);
  bp__put_le64(h + 80, lo.lo);
  bp__put_le64(h + 88, hi.hi);
  bp__put_le64(h + 96, hi.lo);
  bp__put_le64(h + 104, l.total);
  uint8_t *table = m + l.blocks;
  for (uint64_t b = 0; b < l.nblocks; b++) {
    uint64_t from = BP__RUN_HEADER + b * BP__RUN_BLOCK, to = from + BP__RUN_BLOCK < l.blocks ? from + BP__RUN_BLOCK : l.blocks;
    bp__put_le32(table + 4 * b, bp__crc32(m + from, to - from));
  }
  bp__put_le32(h + 112, bp__crc32(table, l.nblocks * 4));
  bp__put_le32(h + 124, bp__crc32(h, 124));
  if (!ixdir) {
    *mem = m;
    *mem_len = l.total;
    m = MAP_FAILED;
    goto out;
  }
  int rc = msync(m, l.total, MS_SYNC) != 0 ? errno : bp__os_sync(fd, 0);
  if (!rc && bp__os_table.rename(tmp, path) != 0) rc = errno;
  if (!rc) rc = bp__os_sync_dir(ixdir);
  if (rc) rs = bp__fail_errno(BP_EIO, rc, "write %s", path);
out:
  if (m != MAP_FAILED) {
    if (ixdir) bp__os_table.munmap(m, l.total);
    else munmap(m, l.total);
  }
  if (fd >= 0) bp__os_table.close(fd);
  if (rs && ixdir) bp__os_table.unlink(tmp);
  free(c.ent);
  free(c.scope);
  bp__os_zfree(c.kind, 65536 * sizeof *c.kind);
  return rs;
}

bp_status bp__run_build(const char *ixdir, const bp__ixrun_ref *ref, uint32_t nnames, bp__run_entry_fn at, void *ctx,
                        const _Atomic bool *cancel) {
  return build(ixdir, ref, nnames, at, ctx, cancel, NULL, NULL);
}

/* ------------------------------------------------------------------ map */

/* Reads the header of the run in m (len bytes) into out; the reason it
 * cannot be used, or NULL. */
static const char *parse(uint8_t *m, size_t len, const bp__ixrun_ref *ref, bp__run *out) {
  out->map = m;
  out->len = len;
  const uint8_t *h = m;
  if (memcmp(h, RUN_MAGIC, 8) != 0 || bp__get_le32(h + 124) != bp__crc32(h, 124)) return "header damaged";
  if (bp__get_le32(h + 8) != RUN_VERSION) return "unknown version";
  if (bp__get_le32(h + 12) != ref->level || bp__get_le64(h + 16) != ref->first || bp__get_le64(h + 24) != ref->end ||
      bp__get_le64(h + 32) != ref->no)
    return "not the run the index state names";
  out->nent = bp__get_le32(h + 40);
  out->nscope = bp__get_le32(h + 44);
  out->nkind = bp__get_le32(h + 48);
  out->nslots = bp__get_le64(h + 56);
  out->npost = bp__get_le64(h + 64);
  uint64_t n = ref->end - ref->first;
  if (out->npost != 4 * n || out->nslots < 2 * n || (out->nslots & (out->nslots - 1)) || out->nkind > 65536 ||
      out->nent > n || out->nscope > n)
    return "counts do not fit its range";
  run_layout l = layout_of(out->nent, out->nscope, out->nkind, out->npost, out->nslots);
  if (l.total != bp__get_le64(h + 104) || l.total != out->len) return "cut short or overlong";
  out->ref = *ref;
  out->min_id = (bp_id){bp__get_le64(h + 72), bp__get_le64(h + 80)};
  out->max_id = (bp_id){bp__get_le64(h + 88), bp__get_le64(h + 96)};
  out->block_crcs = (const uint32_t *)(m + l.blocks);
  out->nblocks = l.nblocks;
  if (bp__crc32(m + l.blocks, l.nblocks * 4) != bp__get_le32(h + 112)) return "its table of block CRCs is damaged";
  out->edir = (const uint32_t *)(m + l.edir);
  out->sdir = (const uint32_t *)(m + l.sdir);
  out->kdir = (const uint32_t *)(m + l.kdir);
  out->cdir = (const uint32_t *)(m + l.cdir);
  out->post = (const uint32_t *)(m + l.post);
  out->slots = (const uint32_t *)(m + l.slots);
  return NULL;
}

bp_status bp__run_map(const char *ixdir, const bp__ixrun_ref *ref, bool trusted, bp__run *out) {
  memset(out, 0, sizeof *out);
  char path[4200];
  bp__run_path(ixdir, ref->no, path, sizeof path);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) {
    int err = errno;
    return bp__fail_errno(err == ENOENT ? BP_ENOTFOUND : BP_EIO, err, "open %s", path);
  }
  struct stat st;
  if (bp__os_table.fstat(fd, &st) != 0) {
    int err = errno;
    bp__os_table.close(fd);
    return bp__fail_errno(BP_EIO, err, "stat %s", path);
  }
  if ((uint64_t)st.st_size < BP__RUN_HEADER) {
    bp__os_table.close(fd);
    return bp__fail(BP_ECORRUPT, "%s: shorter than its header", path);
  }
  uint8_t *m = bp__os_table.mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  int err = errno;
  bp__os_table.close(fd);
  if (m == MAP_FAILED) return bp__fail_errno(BP_EIO, err, "map %s", path);
  const char *why = parse(m, (size_t)st.st_size, ref, out);
  if (!why && !(out->check = calloc(1, sizeof *out->check))) why = "out of memory";
  if (!why && !(out->check->done = calloc((out->nblocks + 63) / 64 + 1, sizeof *out->check->done)))
    why = "out of memory";
  if (why) {
    bp__run_unmap(out);
    return strcmp(why, "out of memory") == 0 ? bp__fail(BP_ENOMEM, "out of memory mapping %s", path)
                                             : bp__fail(BP_ECORRUPT, "%s: %s", path, why);
  }
  pthread_mutex_init(&out->check->lock, NULL);
  atomic_store(&out->check->state, trusted ? BP__RUN_GOOD : BP__RUN_CHECKING);
  return BP_OK;
}

static bool block_good(const bp__run *r, uint64_t b) {
  uint64_t from = BP__RUN_HEADER + b * BP__RUN_BLOCK;
  uint64_t end = (const uint8_t *)r->block_crcs - r->map;
  uint64_t to = from + BP__RUN_BLOCK < end ? from + BP__RUN_BLOCK : end;
  return bp__crc32(r->map + from, to - from) == r->block_crcs[b];
}

/* The run to read bytes [from, to) of: r once the blocks holding them passed
 * their CRCs, else a run with the same contents made in memory from the
 * entries (the failure logged); never NULL (an empty run without memory
 * for a replacement, which is logged too). */
static const bp__run *ready(const bp__run *r, uint64_t from, uint64_t to, const bp__run_fix *fix) {
  bp__runcheck *c = r->check;
  if (!c) return r;
  int state = atomic_load_explicit(&c->state, memory_order_acquire);
  if (BP__LIKELY(state == BP__RUN_GOOD)) return r;
  if (state == BP__RUN_REPLACED) return c->replacement;
  static const bp__run empty; /* no postings, no slots: nothing found */
  if (to <= from) return r;
  uint64_t b0 = (from - BP__RUN_HEADER) / BP__RUN_BLOCK, b1 = (to - 1 - BP__RUN_HEADER) / BP__RUN_BLOCK;
  bool all = true;
  for (uint64_t b = b0; b <= b1 && all; b++)
    all = atomic_load_explicit(&c->done[b / 64], memory_order_acquire) >> (b % 64) & 1;
  if (all) return r;
  pthread_mutex_lock(&c->lock);
  state = atomic_load_explicit(&c->state, memory_order_acquire);
  bool bad = false;
  for (uint64_t b = b0; b <= b1 && state == BP__RUN_CHECKING && !bad; b++) {
    if (atomic_load_explicit(&c->done[b / 64], memory_order_relaxed) >> (b % 64) & 1) continue;
    if (block_good(r, b)) atomic_fetch_or_explicit(&c->done[b / 64], 1ull << (b % 64), memory_order_release);
    else bad = true;
  }
  if (bad) {
    bp_error saved = *bp_last_error();
    char msg[512];
    snprintf(msg, sizeof msg, "index run %08" PRIu64 " (events %" PRIu64 "..%" PRIu64 ") fails a block CRC; its "
             "postings are made again from the index entries", r->ref.no, r->ref.first, r->ref.end - 1);
    fix->log(fix->log_ctx, msg);
    bp__run *rep = calloc(1, sizeof *rep);
    uint8_t *m = NULL;
    size_t len = 0;
    if (rep && build(NULL, &r->ref, fix->nnames, fix->at, fix->ctx, NULL, &m, &len) == BP_OK &&
        !parse(m, len, &r->ref, rep)) {
      rep->anonymous = true;
      c->replacement = rep;
      state = BP__RUN_REPLACED;
      atomic_store_explicit(&c->state, state, memory_order_release);
    } else {
      if (m) munmap(m, len);
      free(rep);
      fix->log(fix->log_ctx, "out of memory for a replacement run: its events are missing from streams");
    }
    bp__set_error(&saved);
  }
  pthread_mutex_unlock(&c->lock);
  if (state == BP__RUN_REPLACED) return c->replacement;
  return bad ? &empty : r;
}

bp_status bp__run_check_body(const bp__run *r) {
  for (uint64_t b = 0; b < r->nblocks; b++)
    if (!block_good(r, b))
      return bp__fail(BP_ECORRUPT, "index run %08" PRIu64 " (events %" PRIu64 "..%" PRIu64 "): block %" PRIu64
                      " fails its CRC", r->ref.no, r->ref.first, r->ref.end - 1, b);
  return BP_OK;
}

void bp__run_unmap(bp__run *r) {
  if (r->map) {
    if (r->anonymous) munmap(r->map, r->len);
    else bp__os_table.munmap(r->map, r->len);
  }
  if (r->check) {
    if (r->check->replacement) {
      bp__run_unmap(r->check->replacement);
      free(r->check->replacement);
    }
    pthread_mutex_destroy(&r->check->lock);
    free(r->check->done);
    free(r->check);
  }
  memset(r, 0, sizeof *r);
}

/* --------------------------------------------------------------- lookup */

/* Binary search of a (key, offset, count) directory. */
static const uint32_t *dir_find(const uint32_t *dir, uint32_t n, uint32_t key) {
  uint32_t lo = 0, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (dir[3 * mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && dir[3 * lo] == key ? &dir[3 * lo] : NULL;
}

/* The directory of a stream kind: where it lies, its entries. */
static const uint32_t *dir_of(const bp__run *r, int what, uint32_t *n) {
  switch (what) {
    case BP__STREAM_ENTITY: *n = r->nent; return r->edir;
    case BP__STREAM_SCOPE: *n = r->nscope; return r->sdir;
    case BP__STREAM_KIND: *n = r->nkind; return r->kdir;
    default: *n = 16; return r->cdir;
  }
}

static uint64_t offset_in(const bp__run *r, const void *p) { return (uint64_t)((const uint8_t *)p - r->map); }

bool bp__run_postings(const bp__run *r, int what, uint32_t key, const uint32_t **v, uint32_t *n,
                      const bp__run_fix *fix) {
  *v = NULL;
  *n = 0;
  uint32_t nd;
  const uint32_t *d0 = dir_of(r, what, &nd);
  size_t width = what == BP__STREAM_CATEGORY ? 2 : 3;
  r = ready(r, offset_in(r, d0), offset_in(r, d0 + width * nd), fix);
  d0 = dir_of(r, what, &nd);
  const uint32_t *d = NULL;
  uint32_t off = 0, cnt = 0;
  if (what == BP__STREAM_CATEGORY) {
    if (key < 16 && r->nslots) off = r->cdir[2 * key], cnt = r->cdir[2 * key + 1];
  } else if ((d = dir_find(d0, nd, key))) {
    off = d[1], cnt = d[2];
  }
  /* A damaged directory must not send a reader outside the postings. */
  if (cnt == 0 || off > r->npost || cnt > r->npost - off) return false;
  const bp__run *checked = ready(r, offset_in(r, r->post + off), offset_in(r, r->post + off + cnt), fix);
  if (checked != r) return bp__run_postings(checked, what, key, v, n, fix);
  *v = r->post + off;
  *n = cnt;
  return true;
}

uint32_t bp__run_count(const bp__run *r, int what, uint32_t key, const bp__run_fix *fix) {
  uint32_t nd;
  const uint32_t *d0 = dir_of(r, what, &nd);
  size_t width = what == BP__STREAM_CATEGORY ? 2 : 3;
  const bp__run *checked = ready(r, offset_in(r, d0), offset_in(r, d0 + width * nd), fix);
  if (checked != r) return bp__run_count(checked, what, key, fix);
  uint32_t cnt = 0;
  const uint32_t *d;
  if (what == BP__STREAM_CATEGORY) {
    if (key < 16 && r->nslots) cnt = r->cdir[2 * key + 1];
  } else if ((d = dir_find(d0, nd, key))) {
    cnt = d[2];
  }
  return cnt <= r->npost ? cnt : 0;
}

bool bp__run_find(const bp__run *r, bp_id id, uint64_t h, uint64_t limit, uint64_t *seq, const bp__run_fix *fix) {
  if (!r->nslots) return false;
  uint64_t mask = r->nslots - 1;
  uint32_t want = (uint32_t)(h >> 32);
  for (uint64_t i = h & mask, probes = 0; probes <= mask; i = (i + 1) & mask, probes++) {
    const bp__run *checked = ready(r, offset_in(r, &r->slots[2 * i]), offset_in(r, &r->slots[2 * i + 2]), fix);
    if (checked != r) return bp__run_find(checked, id, h, limit, seq, fix);
    uint32_t s1 = r->slots[2 * i + 1];
    if (!s1) return false;
    /* A slot must not send a reader outside the run's events. */
    if (r->slots[2 * i] != want || s1 - 1 < r->ref.first || s1 - 1 >= r->ref.end || s1 - 1 >= limit) continue;
    if (bp_id_eq(fix->at(fix->ctx, s1 - 1)->event_id, id)) {
      *seq = s1 - 1;
      return true;
    }
  }
  return false;
}
