/*
 * gate.c - denials, gate sets, receipts, the commit pipeline and bypasses.
 *
 * Receipts are tracked in a registry of live receipts (a mutex-protected hash
 * set of pointers). Every call that takes a receipt looks it up there before
 * reading it, so a forged pointer, a freed receipt or one from another
 * allocation is refused with BP_ERECEIPT without being dereferenced.
 */
#include "internal.h"
#include "batpak/policy.h"
#include "wire/records.h"

#include <pthread.h>

/* ---------------------------------------------------------------- denials */

struct bp_denial {
  char *gate, *code, *message;
  char **keys, **values;
  size_t n, cap;
  bool oom;
};

static char *dup_str(const char *s, bool *oom) {
  char *d = strdup(s ? s : "");
  if (!d) *oom = true;
  return d;
}

static bp_denial *denial_new(const char *gate) {
  bp_denial *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->gate = dup_str(gate, &d->oom);
  return d;
}

void bp_denial_set(bp_denial *d, const char *code, const char *message) {
  if (!d) return;
  free(d->code);
  free(d->message);
  d->code = dup_str(code, &d->oom);
  d->message = dup_str(message, &d->oom);
}

void bp_denial_add_context(bp_denial *d, const char *key, const char *value) {
  if (!d) return;
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    char **k = realloc(d->keys, cap * sizeof *k);
    if (k) d->keys = k;
    char **v = realloc(d->values, cap * sizeof *v);
    if (v) d->values = v;
    if (!k || !v) {
      d->oom = true;
      return;
    }
    d->cap = cap;
  }
  bool oom = false;
  char *k = dup_str(key, &oom), *v = dup_str(value, &oom);
  if (oom) {
    /* Not kept half: the evaluation reports BP_ENOMEM instead (complete). */
    free(k);
    free(v);
    d->oom = true;
    return;
  }
  d->keys[d->n] = k;
  d->values[d->n] = v;
  d->n++;
}

const char *bp_denial_gate(const bp_denial *d) { return d && d->gate ? d->gate : ""; }
const char *bp_denial_code(const bp_denial *d) { return d && d->code ? d->code : ""; }
const char *bp_denial_message(const bp_denial *d) { return d && d->message && *d->message ? d->message : "denied"; }
size_t bp_denial_context_len(const bp_denial *d) { return d ? d->n : 0; }

bool bp_denial_context(const bp_denial *d, size_t i, const char **key, const char **value) {
  if (!d || i >= d->n) return false;
  if (key) *key = d->keys[i];
  if (value) *value = d->values[i];
  return true;
}

int bp_denial_format(const bp_denial *d, char *buf, size_t size) {
  return snprintf(buf, size, "[%s] %s", bp_denial_gate(d), bp_denial_message(d));
}

void bp_denial_free(bp_denial *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) {
    free(d->keys[i]);
    free(d->values[i]);
  }
  free(d->keys);
  free(d->values);
  free(d->gate);
  free(d->code);
  free(d->message);
  free(d);
}

void bp_denials_free(bp_denial **ds, size_t n) {
  if (!ds) return;
  for (size_t i = 0; i < n; i++) bp_denial_free(ds[i]);
  free(ds);
}

/* ---------------------------------------------------------------- receipts */

#define RECEIPT_MAGIC 0x4250524543454950ull /* "BPRECEIP" */

struct bp_receipt {
  uint64_t magic;
  bool bypass;
  bool consumed;
  uint8_t *payload;
  size_t len;
  char **gates;
  size_t ngates;
  char *reason, *justification;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static bp_receipt **registry;
static size_t registry_cap, registry_n;

static size_t slot_of(const bp_receipt *r, size_t cap) {
  uintptr_t x = (uintptr_t)r;
  x ^= x >> 17;
  x *= 0x9E3779B97F4A7C15ull;
  return (size_t)(x >> 7) & (cap - 1);
}

/* Open addressing with tombstones ((bp_receipt *)1). Called with registry_lock. */
#define TOMB ((bp_receipt *)1)

static bool registry_grow(void) {
  size_t cap = registry_cap ? registry_cap * 2 : 64;
  bp_receipt **t = calloc(cap, sizeof *t);
  if (!t) return false;
  for (size_t i = 0; i < registry_cap; i++) {
    bp_receipt *r = registry[i];
    if (!r || r == TOMB) continue;
    size_t h = slot_of(r, cap);
    while (t[h]) h = (h + 1) & (cap - 1);
    t[h] = r;
  }
  free(registry);
  registry = t;
  registry_cap = cap;
  return true;
}

static bool registry_add(bp_receipt *r) {
  pthread_mutex_lock(&registry_lock);
  bool ok = true;
  if ((registry_n + 1) * 2 > registry_cap) ok = registry_grow();
  if (ok) {
    size_t h = slot_of(r, registry_cap);
    while (registry[h] && registry[h] != TOMB) h = (h + 1) & (registry_cap - 1);
    registry[h] = r;
    registry_n++;
  }
  pthread_mutex_unlock(&registry_lock);
  return ok;
}

/* Finds r; with remove, takes it out. Called with registry_lock. */
static bool registry_find(const bp_receipt *r, bool remove) {
  if (!registry_cap || !r || r == TOMB) return false;
  for (size_t h = slot_of(r, registry_cap), k = 0; k < registry_cap; h = (h + 1) & (registry_cap - 1), k++) {
    if (!registry[h]) return false;
    if (registry[h] == r) {
      if (remove) {
        registry[h] = TOMB;
        registry_n--;
      }
      return true;
    }
  }
  return false;
}

static bool live(const bp_receipt *r) {
  pthread_mutex_lock(&registry_lock);
  bool ok = registry_find(r, false);
  pthread_mutex_unlock(&registry_lock);
  return ok;
}

static void receipt_destroy(bp_receipt *r) {
  for (size_t i = 0; i < r->ngates; i++) free(r->gates[i]);
  free(r->gates);
  free(r->payload);
  free(r->reason);
  free(r->justification);
  r->magic = 0;
  free(r);
}

static bp_receipt *receipt_new(const void *payload, size_t len) {
  bp_receipt *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->magic = RECEIPT_MAGIC;
  r->payload = malloc(len ? len : 1);
  if (!r->payload) {
    free(r);
    return NULL;
  }
  if (len) memcpy(r->payload, payload, len);
  r->len = len;
  return r;
}

void bp_receipt_free(bp_receipt *r) {
  if (!r) return;
  pthread_mutex_lock(&registry_lock);
  bool was_live = registry_find(r, true);
  pthread_mutex_unlock(&registry_lock);
  if (was_live) receipt_destroy(r);
}

#define LIVE_OR(r, ret) \
  if (!live(r) || (r)->magic != RECEIPT_MAGIC) return ret

bool bp_receipt_is_bypass(const bp_receipt *r) {
  LIVE_OR(r, false);
  return r->bypass;
}
bool bp_receipt_is_consumed(const bp_receipt *r) {
  LIVE_OR(r, true);
  return r->consumed;
}
const void *bp_receipt_payload(const bp_receipt *r, size_t *len) {
  LIVE_OR(r, NULL);
  if (len) *len = r->len;
  return r->payload;
}
size_t bp_receipt_gate_count(const bp_receipt *r) {
  LIVE_OR(r, 0);
  return r->ngates;
}
const char *bp_receipt_gate(const bp_receipt *r, size_t i) {
  LIVE_OR(r, NULL);
  return i < r->ngates ? r->gates[i] : NULL;
}
const char *bp_receipt_reason(const bp_receipt *r) {
  LIVE_OR(r, NULL);
  return r->reason;
}
const char *bp_receipt_justification(const bp_receipt *r) {
  LIVE_OR(r, NULL);
  return r->justification;
}

/* Marks a live, unconsumed receipt of the wanted kind as consumed (atomically
 * with the check, so two threads cannot both commit it). */
static bp_status consume(bp_receipt *r, bool bypass) {
  pthread_mutex_lock(&registry_lock);
  bp_status st = BP_OK;
  if (!registry_find(r, false) || r->magic != RECEIPT_MAGIC)
    st = bp__fail(BP_ERECEIPT, "receipt: not a live receipt (forged or freed)");
  else if (r->consumed)
    st = bp__fail(BP_ERECEIPT, "receipt: already consumed");
  else if (r->bypass != bypass)
    st = bp__fail(BP_ERECEIPT, bypass ? "receipt: a gate receipt cannot be committed as a bypass"
                                      : "receipt: a bypass receipt must be committed with the bypass calls");
  else
    r->consumed = true;
  pthread_mutex_unlock(&registry_lock);
  return st;
}

/* ---------------------------------------------------------------- gate sets */

typedef struct gate_entry {
  char *name, *description;
  bool (*evaluate)(const void *, void *, bp_denial *);
  void *data;
} gate_entry;

struct bp_gateset {
  gate_entry *gates;
  size_t n, cap;
};

bp_gateset *bp_gateset_new(void) { return calloc(1, sizeof(bp_gateset)); }

void bp_gateset_free(bp_gateset *set) {
  if (!set) return;
  for (size_t i = 0; i < set->n; i++) {
    free(set->gates[i].name);
    free(set->gates[i].description);
  }
  free(set->gates);
  free(set);
}

bp_status bp_gateset_push(bp_gateset *set, const bp_gate *g) {
  if (!set || !g || !g->name || !*g->name || !g->evaluate)
    return bp__fail(BP_EINVAL, "bp_gateset_push: a gate needs a name and evaluate");
  if (set->n == set->cap) {
    size_t cap = set->cap ? set->cap * 2 : 4;
    gate_entry *n = realloc(set->gates, cap * sizeof *n);
    if (!n) return bp__fail(BP_ENOMEM, "out of memory for a gate");
    set->gates = n;
    set->cap = cap;
  }
  bool oom = false;
  gate_entry e = {dup_str(g->name, &oom), g->description ? dup_str(g->description, &oom) : NULL, g->evaluate,
                  g->gate_data};
  if (oom) {
    free(e.name);
    free(e.description);
    return bp__fail(BP_ENOMEM, "out of memory for a gate");
  }
  set->gates[set->n++] = e;
  return BP_OK;
}

size_t bp_gateset_len(const bp_gateset *set) { return set ? set->n : 0; }
const char *bp_gateset_name(const bp_gateset *set, size_t i) { return set && i < set->n ? set->gates[i].name : NULL; }
const char *bp_gateset_description(const bp_gateset *set, size_t i) {
  return set && i < set->n ? set->gates[i].description : NULL;
}

static bp_status make_receipt(const bp_gateset *set, const void *payload, size_t len, bp_receipt **out) {
  bp_receipt *r = receipt_new(payload, len);
  if (r && set->n) {
    r->gates = calloc(set->n, sizeof *r->gates);
    bool oom = !r->gates;
    if (!oom) r->ngates = set->n; /* names not copied yet are NULL: freeing them is fine */
    for (size_t i = 0; !oom && i < set->n; i++) r->gates[i] = dup_str(set->gates[i].name, &oom);
    if (oom) {
      receipt_destroy(r);
      r = NULL;
    }
  }
  if (!r || !registry_add(r)) {
    if (r) receipt_destroy(r);
    return bp__fail(BP_ENOMEM, "out of memory for a receipt");
  }
  *out = r;
  return BP_OK;
}

/* A denial that lost part of what the gate said to a failed allocation. */
static bool denial_complete(const bp_denial *d) { return d && !d->oom; }

/* Evaluates gate g; on denial returns it in *denial, which is NULL (and
 * nothing to free) when running out of memory left it incomplete: the caller
 * reports BP_ENOMEM then. */
static bool run_gate(const gate_entry *g, const void *ctx, bp_denial **denial) {
  bp_denial *d = denial_new(g->name);
  bool pass = g->evaluate(ctx, g->data, d);
  if (pass || !denial_complete(d)) {
    bp_denial_free(d);
    d = NULL;
  }
  *denial = d;
  return pass;
}

static bp_status denial_lost(const gate_entry *g) {
  return bp__fail(BP_ENOMEM, "gate %s denied (out of memory recording the denial)", g->name);
}

bp_status bp_gateset_evaluate(const bp_gateset *set, const void *ctx, const void *payload, size_t len,
                              bp_receipt **out, bp_denial **denial) {
  if (out) *out = NULL;
  if (denial) *denial = NULL;
  if (!set || !out || !denial || (!payload && len)) return bp__fail(BP_EINVAL, "bp_gateset_evaluate: NULL argument");
  for (size_t i = 0; i < set->n; i++) {
    bp_denial *d;
    if (!run_gate(&set->gates[i], ctx, &d)) {
      *denial = d;
      if (!d) return denial_lost(&set->gates[i]);
      return bp__fail(BP_EDENIED, "[%s] %s", bp_denial_gate(d), bp_denial_message(d));
    }
  }
  return make_receipt(set, payload, len, out);
}

bp_status bp_gateset_evaluate_all(const bp_gateset *set, const void *ctx, const void *payload, size_t len,
                                  bp_receipt **out, bp_denial ***denials, size_t *n) {
  if (out) *out = NULL;
  if (denials) *denials = NULL;
  if (n) *n = 0;
  if (!set || !out || !denials || !n || (!payload && len))
    return bp__fail(BP_EINVAL, "bp_gateset_evaluate_all: NULL argument");
  bp_denial **all = calloc(set->n ? set->n : 1, sizeof *all);
  if (!all) return bp__fail(BP_ENOMEM, "out of memory for denials");
  size_t k = 0;
  for (size_t i = 0; i < set->n; i++) {
    bp_denial *d;
    if (run_gate(&set->gates[i], ctx, &d)) continue;
    if (!d) {
      bp_denials_free(all, k);
      return denial_lost(&set->gates[i]);
    }
    all[k++] = d;
  }
  if (k == 0) {
    free(all);
    return make_receipt(set, payload, len, out);
  }
  *denials = all;
  *n = k;
  return bp__fail(BP_EDENIED, "%zu of %zu gates denied; the first: [%s] %s", k, set->n, bp_denial_gate(all[0]),
                  bp_denial_message(all[0]));
}

/* ---------------------------------------------------------------- commits */

static bp_status run_commit(bp_receipt *r, bool bypass, bp_commit_fn fn, void *ctx, bp_committed *out) {
  if (!fn || !out) return bp__fail(BP_EINVAL, "commit: NULL argument");
  memset(out, 0, sizeof *out);
  bp_status st = consume(r, bypass);
  if (st) return st;
  st = fn(r->payload, r->len, ctx, out);
  if (st) return st;
  out->payload = malloc(r->len ? r->len : 1);
  if (!out->payload) return bp__fail(BP_ENOMEM, "out of memory for a committed record");
  if (r->len) memcpy(out->payload, r->payload, r->len);
  out->payload_len = r->len;
  return BP_OK;
}

bp_status bp_receipt_commit(bp_receipt *r, bp_commit_fn fn, void *ctx, bp_committed *out) {
  return run_commit(r, false, fn, ctx, out);
}

bp_status bp_bypass_commit(bp_receipt *r, bp_commit_fn fn, void *ctx, bp_committed *out) {
  return run_commit(r, true, fn, ctx, out);
}

bp_status bp_commit_append(bp_store *s, const bp_coord *coord, bp_kind kind, bp_receipt *r, bp_append_receipt *out) {
  /* Checked before the receipt is spent: a refused kind leaves it usable. */
  bp_status st = bp__kind_check_appendable(kind, "bp_commit_append");
  if (!st) st = consume(r, false);
  if (st) return st;
  /* A receipt is committed once, so a fresh key is as good as any. */
  return bp__append_own(s, coord, kind, r->payload, r->len, BP_ID_NIL, BP_ID_NIL, out);
}

bp_receipt *bp_bypass(const void *payload, size_t len, const char *reason, const char *justification) {
  if ((!payload && len) || !reason || !*reason || !justification || !*justification) {
    bp__fail(BP_EINVAL, "bp_bypass: a payload, a reason and a justification are required");
    return NULL;
  }
  bp_receipt *r = receipt_new(payload, len);
  bool oom = !r;
  if (r) {
    r->bypass = true;
    r->reason = dup_str(reason, &oom);
    r->justification = dup_str(justification, &oom);
  }
  if (oom || !registry_add(r)) {
    if (r) receipt_destroy(r);
    bp__fail(BP_ENOMEM, "out of memory for a bypass receipt");
    return NULL;
  }
  return r;
}

bp_status bp_commit_bypass_append(bp_store *s, const bp_coord *coord, bp_kind kind, bp_receipt *r,
                                  bp_append_receipt *out) {
  bp_status st = bp__kind_check_appendable(kind, "bp_commit_bypass_append");
  if (!st) st = consume(r, true);
  if (st) return st;
  /* The event and its audit record, atomically: the event's id is fixed in
   * advance (as its idempotency key) so that the audit can point at it. */
  bp_id id = bp_id_v7();
  bp__buf audit;
  bp__buf_init(&audit);
  bp__mp_put_map(&audit, 3);
  bp__mp_put_lit(&audit, "event_id");
  bp__mp_put_id(&audit, id);
  bp__mp_put_lit(&audit, "reason");
  bp__mp_put_cstr(&audit, r->reason);
  bp__mp_put_lit(&audit, "justification");
  bp__mp_put_cstr(&audit, r->justification);
  if (audit.oom) {
    bp__buf_free(&audit);
    return bp__fail(BP_ENOMEM, "out of memory for a bypass audit record");
  }
  bp_event_in evs[2];
  memset(evs, 0, sizeof evs);
  evs[0].coord = *coord;
  evs[0].kind = kind;
  evs[0].payload = r->payload;
  evs[0].len = r->len;
  evs[0].opts.idempotency_key = id;
  evs[1].coord = *coord;
  evs[1].kind = BP_KIND_POLICY_BYPASS;
  evs[1].payload = audit.data;
  evs[1].len = audit.len;
  evs[1].opts.causation_id = id;
  evs[1].opts.correlation_id = id;
  evs[1].opts.idempotency_key = bp_id_v7();
  bp_append_receipt outs[2];
  st = bp__append_batch_library(s, evs, 2, outs);
  bp__buf_free(&audit);
  if (!st && out) *out = outs[0];
  return st;
}

/* ---------------------------------------------------------------- Committed */

bp_status bp_committed_encode(const bp_committed *c, uint8_t **out, size_t *out_len) {
  if (!c || !out || !out_len) return bp__fail(BP_EINVAL, "bp_committed_encode: NULL argument");
  bp__committed rec = {c->payload, c->payload_len, c->event_id, c->sequence, {0}};
  memcpy(rec.hash, c->hash, 32);
  bp__buf b;
  bp__buf_init(&b);
  bp__committed_encode(&b, &rec);
  if (b.oom) {
    bp__buf_free(&b);
    return bp__fail(BP_ENOMEM, "out of memory encoding a committed record");
  }
  *out = b.data;
  *out_len = b.len;
  return BP_OK;
}

bp_status bp_committed_decode(const void *data, size_t len, bp_committed *out) {
  if (!data || !out) return bp__fail(BP_EINVAL, "bp_committed_decode: NULL argument");
  memset(out, 0, sizeof *out);
  bp__committed rec;
  bp_status st = bp__committed_decode(data, len, &rec);
  if (st) return st;
  out->payload = malloc(rec.payload_len ? rec.payload_len : 1);
  if (!out->payload) return bp__fail(BP_ENOMEM, "out of memory");
  memcpy(out->payload, rec.payload, rec.payload_len);
  out->payload_len = rec.payload_len;
  out->event_id = rec.event_id;
  out->sequence = rec.sequence;
  memcpy(out->hash, rec.hash, 32);
  return BP_OK;
}

void bp_committed_free(bp_committed *c) {
  if (!c) return;
  free(c->payload);
  c->payload = NULL;
  c->payload_len = 0;
}
