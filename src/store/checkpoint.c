/*
 * checkpoint.c - index.ckpt, a snapshot of the index for fast reopen.
 *
 *   +----------+---------------+-------------------+--------------------+
 *   | "FBATCK" | version u16LE | crc32 u32LE(body) | body (MessagePack) |
 *   +----------+---------------+-------------------+--------------------+
 *   body = {global_sequence, watermark_segment_id, watermark_offset,
 *           interner_strings: [str] (index 0 is ""),
 *           entries: [{event_id, correlation_id, causation_id, entity_id,
 *                      scope_id, kind, wall_ms, clock, prev_hash, event_hash,
 *                      segment_id, offset, length, global_sequence}]}
 *
 * Written to index.ckpt.tmp, fsynced, renamed over index.ckpt, and the
 * directory fsynced: a crash leaves the old checkpoint or the new one. A
 * checkpoint that fails any check is ignored (the caller rebuilds), never an
 * error that stops the store from opening.
 */
#include "store/store_impl.h"
#include "wire/canon.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define CKPT_MAGIC "FBATCK"
#define CKPT_VERSION 2
#define CKPT_HEADER 12
/* The fewest bytes an entry can take: its 14 keys (137 bytes with their
 * headers), the map header and a byte for each value. An entry count that
 * could not fit what is left of the file is a lie, and is not reserved for. */
#define CKPT_ENTRY_MIN 152

void bp__checkpoint_put_entry(bp__buf *b, const bp__ientry *e, uint64_t seq) {
  bp__mp_put_map(b, 14);
  bp__mp_put_lit(b, "event_id");
  bp__mp_put_id(b, e->event_id);
  bp__mp_put_lit(b, "correlation_id");
  bp__mp_put_id(b, e->correlation_id);
  bp__mp_put_lit(b, "causation_id");
  if (bp_id_is_nil(e->causation_id)) bp__mp_put_nil(b);
  else bp__mp_put_id(b, e->causation_id);
  bp__mp_put_lit(b, "entity_id");
  bp__mp_put_uint(b, e->entity);
  bp__mp_put_lit(b, "scope_id");
  bp__mp_put_uint(b, e->scope);
  bp__mp_put_lit(b, "kind");
  bp__mp_put_uint(b, e->kind);
  bp__mp_put_lit(b, "wall_ms");
  bp__mp_put_uint(b, e->wall_ms);
  bp__mp_put_lit(b, "clock");
  bp__mp_put_uint(b, e->clock);
  bp__mp_put_lit(b, "prev_hash");
  bp__mp_put_byte_array(b, e->prev_hash, 32);
  bp__mp_put_lit(b, "event_hash");
  bp__mp_put_byte_array(b, e->event_hash, 32);
  bp__mp_put_lit(b, "segment_id");
  bp__mp_put_uint(b, e->segment_id);
  bp__mp_put_lit(b, "offset");
  bp__mp_put_uint(b, e->offset);
  bp__mp_put_lit(b, "length");
  bp__mp_put_uint(b, e->length);
  bp__mp_put_lit(b, "global_sequence");
  bp__mp_put_uint(b, seq);
}

bp_status bp__checkpoint_watermark(bp_store *s, uint64_t *n, uint64_t *wm_seg, uint64_t *wm_off) {
  *n = bp__index_visible(&s->ix);
  *wm_seg = *wm_off = 0;
  if (*n == 0 || s->nsegs == 0) return BP_OK;
  /* The end of the last segment as it is on disk now (an abandoned or
   * still-open segment's size is not tracked in the table)... */
  *wm_seg = s->segs[s->nsegs - 1].id;
  char seg_path[4096];
  bp__segment_path(s, *wm_seg, seg_path, sizeof seg_path);
  struct stat sb;
  if (lstat(seg_path, &sb) != 0) return bp__fail_errno(BP_EIO, errno, "checkpoint: stat %s", seg_path);
  *wm_off = (uint64_t)sb.st_size;
  /* ...except for the active segment, which has space allocated ahead of its
   * frames: later frames go there, so its watermark is its end of frames. */
  if (s->wfd >= 0 && s->wseg == *wm_seg) *wm_off = s->wsize;
  return BP_OK;
}

bp_status bp__checkpoint_write(bp_store *s) {
  uint64_t n, wm_seg, wm_off;
  bp_status st = bp__checkpoint_watermark(s, &n, &wm_seg, &wm_off);
  return st ? st : bp__checkpoint_write_at(s, n, wm_seg, wm_off);
}

/* The checkpoint goes to its file in pieces of about this many bytes, so that
 * writing it needs no memory in proportion to the store (307 bytes an event). */
#define CKPT_PIECE (1u << 20)

/* Writes b at *at and empties it, folding b[from, len) into *crc. Returns 0
 * or an errno value. */
static int write_piece(int fd, bp__buf *b, size_t from, uint64_t *at, uint32_t *crc) {
  *crc = bp__crc32_update(*crc, b->data + from, b->len - from);
  return bp__os_write_buf(fd, b, at);
}

/* The body (everything after the header) to fd, piece by piece; its CRC in *crc.
 * Returns 0, an errno value, or -1 when memory ran out. */
static int write_body(bp_store *s, int fd, uint64_t n, uint64_t wm_seg, uint64_t wm_off, uint32_t *crc) {
  bp__buf b;
  bp__buf_init(&b);
  uint8_t header[CKPT_HEADER] = {0}; /* written last, with the CRC */
  bp__buf_append(&b, header, sizeof header);
  bp__mp_put_map(&b, 5);
  bp__mp_put_lit(&b, "global_sequence");
  bp__mp_put_uint(&b, n);
  bp__mp_put_lit(&b, "watermark_segment_id");
  bp__mp_put_uint(&b, wm_seg);
  bp__mp_put_lit(&b, "watermark_offset");
  bp__mp_put_uint(&b, wm_off);
  bp__mp_put_lit(&b, "interner_strings");
  uint32_t names = bp__index_name_count(&s->ix);
  bp__mp_put_array(&b, names);
  for (uint32_t i = 0; i < names; i++) {
    const bp__name *nm = bp__index_name(&s->ix, i);
    bp__mp_put_str(&b, nm->str, nm->len);
  }
  bp__mp_put_lit(&b, "entries");
  bp__mp_put_array(&b, (uint32_t)n);
  uint64_t at = 0;
  size_t skip = CKPT_HEADER; /* the header is not under the CRC */
  int rc = 0;
  *crc = 0;
  for (uint64_t seq = 0; seq < n && !b.oom && !rc; seq++) {
    bp__checkpoint_put_entry(&b, bp__index_at(&s->ix, seq), seq);
    if (b.len >= CKPT_PIECE && !b.oom) {
      rc = write_piece(fd, &b, skip, &at, crc);
      skip = 0;
    }
  }
  if (!rc && b.oom) rc = -1;
  if (!rc && b.len > 0) rc = write_piece(fd, &b, skip, &at, crc);
  bp__buf_free(&b);
  return rc;
}

bp_status bp__checkpoint_write_at(bp_store *s, uint64_t n, uint64_t wm_seg, uint64_t wm_off) {
  if (n == 0) return BP_OK;
  char tmp[4096], path[4096];
  snprintf(tmp, sizeof tmp, "%s/%s", s->dir, BP__CHECKPOINT_TMP);
  snprintf(path, sizeof path, "%s/%s", s->dir, BP__CHECKPOINT_FILE);
  int fd = bp__os_table.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return bp__fail_errno(BP_EIO, errno, "checkpoint: create %s", tmp);
  uint32_t crc;
  int rc = write_body(s, fd, n, wm_seg, wm_off, &crc);
  if (rc == 0) {
    uint8_t header[CKPT_HEADER] = {0};
    memcpy(header, CKPT_MAGIC, 6);
    bp__put_le16(header + 6, CKPT_VERSION);
    bp__put_le32(header + 8, crc);
    struct iovec iov = {header, sizeof header};
    rc = bp__os_write_all(fd, &iov, 1, 0);
  }
  if (rc == 0) rc = bp__os_sync(fd, 0);
  bp__os_table.close(fd);
  bp_status st = BP_OK;
  if (rc < 0) st = bp__fail(BP_ENOMEM, "checkpoint: out of memory");
  else if (rc > 0) st = bp__fail_errno(BP_EIO, rc, "checkpoint: write %s", tmp);
  else if (bp__os_table.rename(tmp, path) != 0) st = bp__fail_errno(BP_EIO, errno, "checkpoint: rename %s", tmp);
  if (st) {
    bp__os_table.unlink(tmp);
    return st;
  }
  bp__os_sync_dir(s->dir);
  return BP_OK;
}

/* ------------------------------------------------------------------ load */

static const bp__field entry_fields[] = {
    BP__FIELD("event_id"), BP__FIELD("correlation_id"), BP__FIELD("causation_id"),
    BP__FIELD("entity_id"), BP__FIELD("scope_id"), BP__FIELD("kind"), BP__FIELD("wall_ms"),
    BP__FIELD("clock"), BP__FIELD("prev_hash"), BP__FIELD("event_hash"), BP__FIELD("segment_id"),
    BP__FIELD("offset"), BP__FIELD("length"), BP__FIELD("global_sequence")};

bp_status bp__checkpoint_read_entry_general(bp__mp_reader *r, bp__ientry *e, uint64_t *seq) {
  uint32_t n;
  bp_status st = bp__mp_read_map(r, &n);
  unsigned seen = 0;
  memset(e, 0, sizeof *e);
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    bool present = false;
    uint64_t v = 0;
    if ((st = bp__mp_read_str(r, &k, &kl))) break;
    int idx = bp__field_find(entry_fields, 14, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, entry_fields, "checkpoint entry"))) break;
    switch (idx) {
      case 0: st = bp__mp_read_id(r, &e->event_id); break;
      case 1: st = bp__mp_read_id(r, &e->correlation_id); break;
      case 2:
        st = bp__mp_read_nil_or(r, &present);
        if (!st && present) st = bp__mp_read_id(r, &e->causation_id);
        break;
      case 3: st = bp__mp_read_u32(r, &e->entity); break;
      case 4: st = bp__mp_read_u32(r, &e->scope); break;
      case 5: st = bp__mp_read_u16(r, &e->kind); break;
      case 6: st = bp__mp_read_u64(r, &e->wall_ms); break;
      case 7: st = bp__mp_read_u32(r, &e->clock); break;
      case 8: st = bp__mp_read_fixed_bytes(r, e->prev_hash, 32); break;
      case 9: st = bp__mp_read_fixed_bytes(r, e->event_hash, 32); break;
      case 10:
        st = bp__mp_read_u64(r, &v);
        if (!st && v > UINT32_MAX) st = bp__fail(BP_ESERIAL, "checkpoint entry: segment id too large");
        e->segment_id = (uint32_t)v;
        break;
      case 11: st = bp__mp_read_u64(r, &e->offset); break;
      case 12: st = bp__mp_read_u32(r, &e->length); break;
      case 13: st = bp__mp_read_u64(r, seq); break;
      default: st = bp__mp_skip(r); break;
    }
  }
  if (!st) st = bp__field_require(seen, 0x3fff, entry_fields, "checkpoint entry");
  return st;
}

/* An entry in the canonical layout (wire/canon.h), read in one pass: true,
 * with *e and *seq as the general reader gives them and *pp past the entry,
 * or false (nothing recorded, *pp unmoved) for anything else, which the
 * general reader reads. */
static bool canon_entry(const uint8_t **pp, const uint8_t *end, bp__ientry *e, uint64_t *seq) {
  canon c = {*pp, end};
  memset(e, 0, sizeof *e);
  if (!CANON_LIT(&c, "\x8e\xa8" "event_id") || !canon_id(&c, &e->event_id) ||
      !CANON_LIT(&c, "\xae" "correlation_id") || !canon_id(&c, &e->correlation_id) ||
      !CANON_LIT(&c, "\xac" "causation_id"))
    return false;
  if (c.p < c.end && *c.p == 0xc0) c.p++;
  else if (!canon_id(&c, &e->causation_id)) return false;
  if (!CANON_LIT(&c, "\xa9" "entity_id")) return false;
  CANON_UINT(&c, UINT32_MAX, e->entity);
  if (!CANON_LIT(&c, "\xa8" "scope_id")) return false;
  CANON_UINT(&c, UINT32_MAX, e->scope);
  if (!CANON_LIT(&c, "\xa4" "kind")) return false;
  CANON_UINT(&c, UINT16_MAX, e->kind);
  if (!CANON_LIT(&c, "\xa7" "wall_ms")) return false;
  CANON_UINT(&c, UINT64_MAX, e->wall_ms);
  if (!CANON_LIT(&c, "\xa5" "clock")) return false;
  CANON_UINT(&c, UINT32_MAX, e->clock);
  if (!CANON_LIT(&c, "\xa9" "prev_hash") || !canon_hash(&c, e->prev_hash) ||
      !CANON_LIT(&c, "\xaa" "event_hash") || !canon_hash(&c, e->event_hash) ||
      !CANON_LIT(&c, "\xaa" "segment_id"))
    return false;
  CANON_UINT(&c, UINT32_MAX, e->segment_id);
  if (!CANON_LIT(&c, "\xa6" "offset")) return false;
  CANON_UINT(&c, UINT64_MAX, e->offset);
  if (!CANON_LIT(&c, "\xa6" "length")) return false;
  CANON_UINT(&c, UINT32_MAX, e->length);
  if (!CANON_LIT(&c, "\xaf" "global_sequence")) return false;
  CANON_UINT(&c, UINT64_MAX, *seq);
  *pp = c.p;
  return true;
}

bp_status bp__checkpoint_read_entry(bp__mp_reader *r, bp__ientry *e, uint64_t *seq) {
  if (canon_entry(&r->p, r->end, e, seq)) return BP_OK;
  return bp__checkpoint_read_entry_general(r, e, seq);
}

/* A mapped checkpoint is read twice, front to back (CRC, then decode). Pages
 * already read are released as the reading moves on, so that the file does
 * not add its whole size to the process's resident memory. */
#define RELEASE_STEP (4u << 20)

static void release_before(const uint8_t *base, size_t *released, size_t upto, bool mapped) {
  if (!mapped) return;
  size_t end = (size_t)bp__os_page_floor(upto);
  if (end >= *released + RELEASE_STEP) {
    madvise((void *)(base + *released), end - *released, MADV_DONTNEED);
    *released = end;
  }
}

static uint32_t checkpoint_crc(const uint8_t *data, size_t size, bool mapped) {
  uint32_t crc = 0;
  size_t released = 0;
  for (size_t off = CKPT_HEADER; off < size;) {
    size_t n = size - off < RELEASE_STEP ? size - off : RELEASE_STEP;
    crc = bp__crc32_update(crc, data + off, n);
    off += n;
    release_before(data, &released, off, mapped);
  }
  return crc;
}

static const bp__segment *segment_of(const bp_store *s, uint64_t id) {
  for (size_t i = 0; i < s->nsegs; i++)
    if (s->segs[i].id == id) return &s->segs[i];
  return NULL;
}

bp_status bp__checkpoint_load(bp_store *s, uint64_t *wm_seg, uint64_t *wm_off) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", s->dir, BP__CHECKPOINT_FILE);
  int fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return bp__fail_errno(BP_ENOTFOUND, errno, "checkpoint: open %s", path);
  struct stat st_;
  uint8_t *data = NULL;
  bool mapped = false;
  int rc = bp__os_table.fstat(fd, &st_) == 0 ? 0 : errno;
  size_t size = rc ? 0 : (size_t)st_.st_size;
  if (!rc && size < CKPT_HEADER) rc = -1;
  if (!rc) {
    void *m = bp__os_table.mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m != MAP_FAILED) {
      data = m;
      mapped = true;
    } else if (!(data = malloc(size))) {
      rc = ENOMEM;
    } else {
      rc = bp__os_read_all(fd, data, size, 0);
    }
  }
  bp__os_table.close(fd);
  if (rc) {
    if (!mapped) free(data);
    if (rc == ENOMEM) return bp__fail(BP_ENOMEM, "checkpoint: out of memory reading %s", path);
    return bp__fail(BP_ECORRUPT, "checkpoint: cannot read %s (%s)", path,
                    rc == -1 ? "too short" : strerror(rc));
  }

  bp_status st = BP_OK;
  uint64_t gseq = 0, n_entries = 0;
  bool have[5] = {false};
  uint32_t *idmap = NULL, nstr = 0;
  bp__mp_reader r;
  if (memcmp(data, CKPT_MAGIC, 6) != 0) st = bp__fail(BP_ECORRUPT, "checkpoint: bad magic");
  else if (bp__get_le16(data + 6) != CKPT_VERSION)
    st = bp__fail(BP_ECORRUPT, "checkpoint: unsupported version %u", bp__get_le16(data + 6));
  else if (checkpoint_crc(data, size, mapped) != bp__get_le32(data + 8))
    st = bp__fail(BP_ECORRUPT, "checkpoint: CRC mismatch");
  if (st) goto out;

  bp__mp_reader_init(&r, data + CKPT_HEADER, size - CKPT_HEADER);
  uint32_t pairs;
  if ((st = bp__mp_read_map(&r, &pairs))) goto out;
  for (uint32_t i = 0; !st && i < pairs; i++) {
    const char *k;
    uint32_t kl;
    if ((st = bp__mp_read_str(&r, &k, &kl))) break;
    if (bp__mp_key_is(k, kl, "global_sequence")) { st = bp__mp_read_u64(&r, &gseq); have[0] = true; }
    else if (bp__mp_key_is(k, kl, "watermark_segment_id")) { st = bp__mp_read_u64(&r, wm_seg); have[1] = true; }
    else if (bp__mp_key_is(k, kl, "watermark_offset")) { st = bp__mp_read_u64(&r, wm_off); have[2] = true; }
    else if (bp__mp_key_is(k, kl, "interner_strings")) {
      if ((st = bp__mp_read_array(&r, &nstr))) break;
      if (nstr > bp__mp_remaining(&r)) {
        st = bp__fail(BP_ECORRUPT, "checkpoint: bad interner table");
        break;
      }
      if (!(idmap = malloc(sizeof *idmap * (nstr ? nstr : 1)))) {
        st = bp__fail(BP_ENOMEM, "checkpoint: out of memory for %u interned strings", nstr);
        break;
      }
      for (uint32_t j = 0; !st && j < nstr; j++) {
        const char *str;
        uint32_t len;
        bp__name *nm;
        if (!(st = bp__mp_read_str(&r, &str, &len)) && !(st = bp__index_intern(&s->ix, str, len, &nm)))
          idmap[j] = nm->id;
      }
      have[3] = true;
    } else if (bp__mp_key_is(k, kl, "entries")) {
      /* Entries refer to interner ids: the table must come first (it does in every writer). */
      if (!have[3]) { st = bp__fail(BP_ECORRUPT, "checkpoint: entries before interner_strings"); break; }
      uint32_t cnt;
      if ((st = bp__mp_read_array(&r, &cnt))) break;
      if (cnt > bp__mp_remaining(&r) / CKPT_ENTRY_MIN) {
        st = bp__fail(BP_ECORRUPT, "checkpoint: entry count too large");
        break;
      }
      if ((st = bp__index_reserve(&s->ix, cnt))) break;
      size_t released = 0;
      const bp__segment *g = NULL;
      /* Entries are decoded a batch at a time and their id-table slots
       * prefetched, so that the random accesses of the inserts overlap. */
      enum { BATCH = 16 };
      bp__ientry batch[BATCH];
      for (uint32_t j = 0; !st && j < cnt;) {
        uint32_t got = 0;
        for (; !st && got < BATCH && j + got < cnt; got++) {
          bp__ientry *e = &batch[got];
          uint64_t seq;
          uint32_t at = j + got;
          if ((at & 1023) == 0) release_before(data, &released, (size_t)(r.p - data), mapped);
          if ((st = bp__checkpoint_read_entry(&r, e, &seq))) break;
          if (!g || g->id != e->segment_id) g = segment_of(s, e->segment_id);
          if (seq != at) st = bp__fail(BP_ECORRUPT, "checkpoint: entry %u has global sequence %" PRIu64, at, seq);
          else if (e->entity >= nstr || e->scope >= nstr)
            st = bp__fail(BP_ECORRUPT, "checkpoint: entry %u: bad string id", at);
          else if (!g || e->offset + e->length > g->size) {
            st = bp__fail(BP_ECORRUPT, "checkpoint: entry %u points outside segment %u", at, e->segment_id);
            s->ckpt_evidence.segment = e->segment_id;
            s->ckpt_evidence.upto = e->offset + e->length;
          }
          if (st) break;
          e->entity = idmap[e->entity];
          e->scope = idmap[e->scope];
          bp__index_prefetch_id(&s->ix, e->event_id);
        }
        for (uint32_t q = 0; !st && q < got; q++) st = bp__recover_entry(s, &batch[q]);
        j += got;
      }
      n_entries = cnt;
      have[4] = true;
    } else {
      st = bp__mp_skip(&r);
    }
  }
  if (!st && (!have[0] || !have[1] || !have[2] || !have[3] || !have[4]))
    st = bp__fail(BP_ECORRUPT, "checkpoint: missing fields");
  if (!st && gseq != n_entries)
    st = bp__fail(BP_ECORRUPT, "checkpoint: global_sequence %" PRIu64 " but %" PRIu64 " entries", gseq, n_entries);
  if (!st) {
    const bp__segment *g = segment_of(s, *wm_seg);
    if (!g) st = bp__fail(BP_ECORRUPT, "checkpoint: watermark segment %" PRIu64 " is missing", *wm_seg);
    else if (*wm_off > g->size)
      st = bp__fail(BP_ECORRUPT, "checkpoint: watermark offset %" PRIu64 " past the end of segment %" PRIu64,
                    *wm_off, *wm_seg);
    if (st) {
      s->ckpt_evidence.segment = *wm_seg;
      s->ckpt_evidence.upto = *wm_off;
    }
  }
  if (st && st != BP_ENOMEM) st = BP_ECORRUPT;
out:
  free(idmap);
  if (mapped) bp__os_table.munmap(data, size);
  else free(data);
  return st;
}
