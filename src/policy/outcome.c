/*
 * outcome.c - the Outcome algebra (the crate's Outcome<T>), with T carried as
 * one MessagePack value.
 *
 * Every combinator consumes its input outcome(s) and returns a new tree; the
 * Batch distribution rules follow the crate: map, and_then, map_err, or_else,
 * inspect and and_then_if apply element-wise inside a Batch.
 *
 * Wire form (serde, adjacently tagged): {"type": <variant>, "data": <payload>}
 *   Ok        data = the value
 *   Err       data = {"kind": ErrorKind, "message": str, "compensation": nil|CompensationAction,
 *                     "retryable": bool}; ErrorKind = "NotFound" | ... | {"Custom": u16}
 *   Retry     data = {"after_ms": u64, "attempt": u32, "max_attempts": u32, "reason": str}
 *   Pending   data = {"condition": WaitCondition, "resume_token": bin16}
 *   Cancelled data = {"reason": str}
 *   Batch     data = [Outcome, ...]
 */
#include "internal.h"
#include "batpak/policy.h"
#include "wire/records.h"

struct bp_outcome {
  bp_outcome_type type;
  uint8_t *value;               /* Ok */
  size_t len;
  bp_error_kind kind;           /* Err */
  uint16_t code;
  bool retryable;
  char *text;                   /* Err message, Retry/Cancelled reason */
  uint8_t *extra;               /* Err compensation, Pending condition */
  size_t extra_len;
  uint64_t after_ms;            /* Retry */
  uint32_t attempt, max_attempts;
  bp_id token;                  /* Pending */
  bp_outcome **items;           /* Batch */
  size_t n;
};

static const char *const kind_names[] = {"NotFound", "Conflict", "Validation", "PolicyRejection",
                                         "StorageError", "Timeout", "Serialization", "Internal"};
static const char *const type_names[] = {"Ok", "Err", "Retry", "Pending", "Cancelled", "Batch"};

bool bp_error_kind_is_retryable(bp_error_kind k) { return k == BP_ERRKIND_STORAGE_ERROR || k == BP_ERRKIND_TIMEOUT; }
bool bp_error_kind_is_domain(bp_error_kind k) {
  return k == BP_ERRKIND_NOT_FOUND || k == BP_ERRKIND_CONFLICT || k == BP_ERRKIND_VALIDATION ||
         k == BP_ERRKIND_POLICY_REJECTION;
}
bool bp_error_kind_is_operational(bp_error_kind k) {
  return k == BP_ERRKIND_STORAGE_ERROR || k == BP_ERRKIND_TIMEOUT || k == BP_ERRKIND_SERIALIZATION ||
         k == BP_ERRKIND_INTERNAL;
}

/* ---------------------------------------------------------------- building */

static bp_outcome *alloc_outcome(bp_outcome_type t) {
  bp_outcome *o = calloc(1, sizeof *o);
  if (!o) bp__fail(BP_ENOMEM, "out of memory for an outcome");
  else o->type = t;
  return o;
}

/* A NULL where an outcome is expected is a constructor or combinator that
 * failed, whose error is already recorded. Calls that take several outcomes
 * free the others and return NULL, so that calls can be nested without a
 * check at every level. Returns true when some item was NULL (all freed,
 * the slots cleared). */
static bool drop_if_any_missing(bp_outcome **items, size_t n) {
  bool missing = false;
  for (size_t i = 0; i < n && !missing; i++) missing = !items[i];
  if (!missing) return false;
  for (size_t i = 0; i < n; i++) {
    bp_outcome_free(items[i]);
    items[i] = NULL;
  }
  /* Keep the failure that made the NULL; a NULL passed by mistake gets one. */
  if (bp_last_error()->code == BP_OK) bp__fail(BP_EINVAL, "outcome: an item is NULL");
  return true;
}

static uint8_t *copy_bytes(const void *p, size_t n) {
  uint8_t *c = malloc(n ? n : 1);
  if (c && n) memcpy(c, p, n);
  return c;
}

/* True when [p, p+n) is exactly one MessagePack value. */
static bool one_value(const void *p, size_t n) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, p, n);
  return p && bp__mp_skip(&r) == BP_OK && bp__mp_remaining(&r) == 0;
}

void bp_outcome_free(bp_outcome *o) {
  if (!o) return;
  for (size_t i = 0; i < o->n; i++) bp_outcome_free(o->items[i]);
  free(o->items);
  free(o->value);
  free(o->text);
  free(o->extra);
  free(o);
}

bp_outcome *bp_outcome_ok(const void *value, size_t len) {
  if (!one_value(value, len)) {
    bp__fail(BP_ESERIAL, "outcome: an Ok value must be one MessagePack document");
    return NULL;
  }
  bp_outcome *o = alloc_outcome(BP_OUTCOME_OK);
  if (!o) return NULL;
  o->value = copy_bytes(value, len);
  o->len = len;
  if (!o->value) {
    bp_outcome_free(o);
    bp__fail(BP_ENOMEM, "out of memory for an outcome");
    return NULL;
  }
  return o;
}

static bp_outcome *with_text(bp_outcome *o, const char *text) {
  if (!o) return NULL;
  o->text = strdup(text ? text : "");
  if (!o->text) {
    bp_outcome_free(o);
    bp__fail(BP_ENOMEM, "out of memory for an outcome");
    return NULL;
  }
  return o;
}

bp_outcome *bp_outcome_err(const bp_outcome_error *e) {
  if (!e || (unsigned)e->kind > BP_ERRKIND_CUSTOM) {
    bp__fail(BP_EINVAL, "outcome: bad error");
    return NULL;
  }
  if (e->compensation) {
    bp__compensation c;
    if (bp__compensation_decode(e->compensation, e->compensation_len, &c) != BP_OK) return NULL;
    bp__compensation_free(&c);
  }
  bp_outcome *o = with_text(alloc_outcome(BP_OUTCOME_ERR), e->message);
  if (!o) return NULL;
  o->kind = e->kind;
  o->code = e->kind == BP_ERRKIND_CUSTOM ? e->custom_code : 0;
  o->retryable = e->retryable;
  if (e->compensation) {
    o->extra = copy_bytes(e->compensation, e->compensation_len);
    o->extra_len = e->compensation_len;
    if (!o->extra) {
      bp_outcome_free(o);
      bp__fail(BP_ENOMEM, "out of memory for an outcome");
      return NULL;
    }
  }
  return o;
}

static bp_outcome *err_of(bp_error_kind kind, const char *message) {
  bp_outcome_error e = {kind, 0, message, false, NULL, 0};
  return bp_outcome_err(&e);
}

bp_outcome *bp_outcome_retry(uint64_t after_ms, uint32_t attempt, uint32_t max_attempts, const char *reason) {
  bp_outcome *o = with_text(alloc_outcome(BP_OUTCOME_RETRY), reason);
  if (o) {
    o->after_ms = after_ms;
    o->attempt = attempt;
    o->max_attempts = max_attempts;
  }
  return o;
}

bp_outcome *bp_outcome_pending(const void *condition, size_t len, bp_id token) {
  bp__wait w;
  if (!condition || bp__wait_decode(condition, len, &w) != BP_OK) {
    if (!condition) bp__fail(BP_EINVAL, "outcome: a pending outcome needs a wait condition");
    return NULL;
  }
  bp__wait_free(&w);
  bp_outcome *o = alloc_outcome(BP_OUTCOME_PENDING);
  if (!o) return NULL;
  o->extra = copy_bytes(condition, len);
  o->extra_len = len;
  o->token = token;
  if (!o->extra) {
    bp_outcome_free(o);
    bp__fail(BP_ENOMEM, "out of memory for an outcome");
    return NULL;
  }
  return o;
}

bp_outcome *bp_outcome_cancelled(const char *reason) {
  return with_text(alloc_outcome(BP_OUTCOME_CANCELLED), reason);
}

bp_outcome *bp_outcome_batch(bp_outcome **items, size_t n) {
  if (n && !items) {
    bp__fail(BP_EINVAL, "outcome: a batch of %zu items without the items", n);
    return NULL;
  }
  if (drop_if_any_missing(items, n)) return NULL;
  bp_outcome *o = alloc_outcome(BP_OUTCOME_BATCH);
  if (o && n && !(o->items = malloc(n * sizeof *o->items))) {
    bp__fail(BP_ENOMEM, "out of memory for a batch of %zu outcomes", n);
    bp_outcome_free(o);
    o = NULL;
  }
  if (!o) {
    for (size_t i = 0; i < n; i++) bp_outcome_free(items[i]);
    return NULL;
  }
  if (n) memcpy(o->items, items, n * sizeof *items);
  o->n = n;
  return o;
}

bp_outcome *bp_outcome_clone(const bp_outcome *o) {
  if (!o) return NULL;
  bp_outcome *c = alloc_outcome(o->type);
  if (!c) return NULL;
  *c = *o;
  c->value = o->value ? copy_bytes(o->value, o->len) : NULL;
  c->text = o->text ? strdup(o->text) : NULL;
  c->extra = o->extra ? copy_bytes(o->extra, o->extra_len) : NULL;
  c->items = o->n ? calloc(o->n, sizeof *c->items) : NULL;
  bool oom = (o->value && !c->value) || (o->text && !c->text) || (o->extra && !c->extra) || (o->n && !c->items);
  for (size_t i = 0; !oom && i < o->n; i++) oom = !(c->items[i] = bp_outcome_clone(o->items[i]));
  if (oom) {
    c->n = c->items ? o->n : 0;
    bp_outcome_free(c);
    bp__fail(BP_ENOMEM, "out of memory cloning an outcome");
    return NULL;
  }
  return c;
}

/* ---------------------------------------------------------------- reading */

bp_outcome_type bp_outcome_type_of(const bp_outcome *o) { return o->type; }

bool bp_outcome_is_terminal(const bp_outcome *o) {
  return o->type == BP_OUTCOME_OK || o->type == BP_OUTCOME_ERR || o->type == BP_OUTCOME_CANCELLED;
}

const void *bp_outcome_value(const bp_outcome *o, size_t *len) {
  if (!o || o->type != BP_OUTCOME_OK) return NULL;
  if (len) *len = o->len;
  return o->value;
}

bool bp_outcome_error_of(const bp_outcome *o, bp_outcome_error *out) {
  if (!o || o->type != BP_OUTCOME_ERR) return false;
  *out = (bp_outcome_error){o->kind, o->code, o->text, o->retryable, o->extra, o->extra_len};
  return true;
}

bool bp_outcome_retry_of(const bp_outcome *o, uint64_t *after_ms, uint32_t *attempt, uint32_t *max_attempts) {
  if (!o || o->type != BP_OUTCOME_RETRY) return false;
  if (after_ms) *after_ms = o->after_ms;
  if (attempt) *attempt = o->attempt;
  if (max_attempts) *max_attempts = o->max_attempts;
  return true;
}

bool bp_outcome_pending_of(const bp_outcome *o, const uint8_t **condition, size_t *len, bp_id *token) {
  if (!o || o->type != BP_OUTCOME_PENDING) return false;
  if (condition) *condition = o->extra;
  if (len) *len = o->extra_len;
  if (token) *token = o->token;
  return true;
}

const char *bp_outcome_reason(const bp_outcome *o) {
  return o && (o->type == BP_OUTCOME_RETRY || o->type == BP_OUTCOME_CANCELLED) ? o->text : NULL;
}

size_t bp_outcome_batch_len(const bp_outcome *o) { return o && o->type == BP_OUTCOME_BATCH ? o->n : 0; }

const bp_outcome *bp_outcome_batch_item(const bp_outcome *o, size_t i) {
  return o && o->type == BP_OUTCOME_BATCH && i < o->n ? o->items[i] : NULL;
}

static bool same_bytes(const void *a, size_t al, const void *b, size_t bl) {
  return al == bl && (al == 0 || memcmp(a, b, al) == 0);
}

bool bp_outcome_equal(const bp_outcome *a, const bp_outcome *b) {
  if (!a || !b || a->type != b->type) return a == b;
  switch (a->type) {
    case BP_OUTCOME_OK: return same_bytes(a->value, a->len, b->value, b->len);
    case BP_OUTCOME_ERR:
      return a->kind == b->kind && a->code == b->code && a->retryable == b->retryable &&
             strcmp(a->text, b->text) == 0 && same_bytes(a->extra, a->extra_len, b->extra, b->extra_len);
    case BP_OUTCOME_RETRY:
      return a->after_ms == b->after_ms && a->attempt == b->attempt && a->max_attempts == b->max_attempts &&
             strcmp(a->text, b->text) == 0;
    case BP_OUTCOME_PENDING:
      return bp_id_eq(a->token, b->token) && same_bytes(a->extra, a->extra_len, b->extra, b->extra_len);
    case BP_OUTCOME_CANCELLED: return strcmp(a->text, b->text) == 0;
    case BP_OUTCOME_BATCH:
      if (a->n != b->n) return false;
      for (size_t i = 0; i < a->n; i++)
        if (!bp_outcome_equal(a->items[i], b->items[i])) return false;
      return true;
  }
  return false;
}

/* ---------------------------------------------------------------- combinators */

/* The batch case of every element-wise combinator: apply f to each item. */
typedef bp_outcome *(*each_fn)(bp_outcome *o, const void *args);

static bp_outcome *each(bp_outcome *o, each_fn f, const void *args) {
  for (size_t i = 0; i < o->n; i++) {
    bp_outcome *r = f(o->items[i], args);
    o->items[i] = r;
    if (!r) {
      /* Free what is left: the consumed items are gone, the rest are ours. */
      for (size_t j = i + 1; j < o->n; j++) bp_outcome_free(o->items[j]);
      for (size_t j = 0; j < i; j++) bp_outcome_free(o->items[j]);
      o->n = 0;
      bp_outcome_free(o);
      return NULL;
    }
  }
  return o;
}

typedef struct fn_args {
  bp_outcome_map_fn map;
  bp_outcome_bind_fn bind;
  bp_outcome_map_err_fn map_err;
  bp_outcome_recover_fn recover;
  bp_outcome_pred_fn pred;
  bp_outcome_inspect_fn inspect;
  void *ctx;
} fn_args;

static bp_outcome *map_one(bp_outcome *o, const void *a) {
  const fn_args *args = a;
  if (o->type == BP_OUTCOME_BATCH) return each(o, map_one, a);
  if (o->type != BP_OUTCOME_OK) return o;
  void *out = NULL;
  size_t len = 0;
  bp_status st = args->map(o->value, o->len, &out, &len, args->ctx);
  bp_outcome *r;
  if (st != BP_OK || !one_value(out, len)) r = err_of(BP_ERRKIND_INTERNAL, "map: the function failed");
  else r = bp_outcome_ok(out, len);
  free(out);
  bp_outcome_free(o);
  return r;
}

bp_outcome *bp_outcome_map(bp_outcome *o, bp_outcome_map_fn fn, void *ctx) {
  if (!o) return NULL;
  fn_args a = {.map = fn, .ctx = ctx};
  return map_one(o, &a);
}

static bp_outcome *bind_one(bp_outcome *o, const void *a) {
  const fn_args *args = a;
  if (o->type == BP_OUTCOME_BATCH) return each(o, bind_one, a);
  if (o->type != BP_OUTCOME_OK) return o;
  bp_outcome *r = args->bind(o->value, o->len, args->ctx);
  bp_outcome_free(o);
  return r;
}

bp_outcome *bp_outcome_and_then(bp_outcome *o, bp_outcome_bind_fn fn, void *ctx) {
  if (!o) return NULL;
  fn_args a = {.bind = fn, .ctx = ctx};
  return bind_one(o, &a);
}

static bp_outcome *map_err_one(bp_outcome *o, const void *a) {
  const fn_args *args = a;
  if (o->type == BP_OUTCOME_BATCH) return each(o, map_err_one, a);
  if (o->type != BP_OUTCOME_ERR) return o;
  bp_outcome_error e;
  bp_outcome_error_of(o, &e);
  bp_outcome_error ne = args->map_err(&e, args->ctx);
  bp_outcome *r = bp_outcome_err(&ne);
  bp_outcome_free(o);
  return r;
}

bp_outcome *bp_outcome_map_err(bp_outcome *o, bp_outcome_map_err_fn fn, void *ctx) {
  if (!o) return NULL;
  fn_args a = {.map_err = fn, .ctx = ctx};
  return map_err_one(o, &a);
}

static bp_outcome *or_else_one(bp_outcome *o, const void *a) {
  const fn_args *args = a;
  if (o->type == BP_OUTCOME_BATCH) return each(o, or_else_one, a);
  if (o->type != BP_OUTCOME_ERR) return o;
  bp_outcome_error e;
  bp_outcome_error_of(o, &e);
  bp_outcome *r = args->recover(&e, args->ctx);
  bp_outcome_free(o);
  return r;
}

bp_outcome *bp_outcome_or_else(bp_outcome *o, bp_outcome_recover_fn fn, void *ctx) {
  if (!o) return NULL;
  fn_args a = {.recover = fn, .ctx = ctx};
  return or_else_one(o, &a);
}

static bp_outcome *inspect_one(bp_outcome *o, const void *a) {
  const fn_args *args = a;
  if (o->type == BP_OUTCOME_BATCH) return each(o, inspect_one, a);
  if (o->type == BP_OUTCOME_OK) args->inspect(o->value, o->len, args->ctx);
  return o;
}

bp_outcome *bp_outcome_inspect(bp_outcome *o, bp_outcome_inspect_fn fn, void *ctx) {
  if (!o) return NULL;
  fn_args a = {.inspect = fn, .ctx = ctx};
  return inspect_one(o, &a);
}

static bp_outcome *bind_if_one(bp_outcome *o, const void *a) {
  const fn_args *args = a;
  if (o->type == BP_OUTCOME_BATCH) return each(o, bind_if_one, a);
  if (o->type != BP_OUTCOME_OK || !args->pred(o->value, o->len, args->ctx)) return o;
  bp_outcome *r = args->bind(o->value, o->len, args->ctx);
  bp_outcome_free(o);
  return r;
}

bp_outcome *bp_outcome_and_then_if(bp_outcome *o, bp_outcome_pred_fn pred, bp_outcome_bind_fn fn, void *ctx) {
  if (!o) return NULL;
  fn_args a = {.pred = pred, .bind = fn, .ctx = ctx};
  return bind_if_one(o, &a);
}

static bp_outcome *decode_value(const void *value, size_t len, void *ctx) {
  (void)ctx;
  bp_outcome *inner;
  if (bp_outcome_decode(value, len, &inner) != BP_OK)
    return err_of(BP_ERRKIND_SERIALIZATION, "flatten: the Ok value is not an encoded outcome");
  return inner;
}

bp_outcome *bp_outcome_flatten(bp_outcome *o) { return bp_outcome_and_then(o, decode_value, NULL); }

bp_status bp_outcome_unwrap_or(bp_outcome *o, const void *def, size_t def_len, void **out, size_t *out_len) {
  if (!out || !out_len) return bp__fail(BP_EINVAL, "bp_outcome_unwrap_or: NULL argument");
  const void *src = o && o->type == BP_OUTCOME_OK ? o->value : def;
  size_t n = o && o->type == BP_OUTCOME_OK ? o->len : def_len;
  *out = copy_bytes(src, n);
  *out_len = n;
  bp_outcome_free(o);
  return *out ? BP_OK : bp__fail(BP_ENOMEM, "out of memory");
}

/* Ok([a, b]) from two Ok outcomes (consumed). */
static bp_outcome *pair(bp_outcome *a, bp_outcome *b) {
  bp__buf buf;
  bp__buf_init(&buf);
  bp__mp_put_array(&buf, 2);
  bp__buf_append(&buf, a->value, a->len);
  bp__buf_append(&buf, b->value, b->len);
  bp_outcome *r = buf.oom ? NULL : bp_outcome_ok(buf.data, buf.len);
  if (buf.oom) bp__fail(BP_ENOMEM, "out of memory");
  bp__buf_free(&buf);
  bp_outcome_free(a);
  bp_outcome_free(b);
  return r;
}

static int zip_rank(bp_outcome_type t) {
  switch (t) {
    case BP_OUTCOME_ERR: return 4;
    case BP_OUTCOME_CANCELLED: return 3;
    case BP_OUTCOME_RETRY: return 2;
    case BP_OUTCOME_PENDING: return 1;
    default: return 0;
  }
}

bp_outcome *bp_outcome_zip(bp_outcome *a, bp_outcome *b) {
  if (!a || !b) {
    bp_outcome_free(a);
    bp_outcome_free(b);
    return NULL;
  }
  if (a->type == BP_OUTCOME_OK && b->type == BP_OUTCOME_OK) return pair(a, b);
  int ra = zip_rank(a->type), rb = zip_rank(b->type);
  if (ra || rb) {
    /* The highest-priority non-Ok variant wins; a wins ties. */
    bp_outcome *win = ra >= rb ? a : b;
    bp_outcome_free(win == a ? b : a);
    return win;
  }
  /* Batches: pairwise, truncated to the shorter; an Ok pairs with each item. */
  bp_outcome *batch = a->type == BP_OUTCOME_BATCH ? a : b;
  size_t n = a->type == BP_OUTCOME_BATCH && b->type == BP_OUTCOME_BATCH ? (a->n < b->n ? a->n : b->n) : batch->n;
  bp_outcome **items = calloc(n ? n : 1, sizeof *items);
  bool oom = !items;
  for (size_t i = 0; !oom && i < n; i++) {
    bp_outcome *x = a->type == BP_OUTCOME_BATCH ? a->items[i] : bp_outcome_clone(a);
    bp_outcome *y = b->type == BP_OUTCOME_BATCH ? b->items[i] : bp_outcome_clone(b);
    if (a->type == BP_OUTCOME_BATCH) a->items[i] = NULL;
    if (b->type == BP_OUTCOME_BATCH) b->items[i] = NULL;
    oom = !(items[i] = bp_outcome_zip(x, y));
  }
  bp_outcome_free(a);
  bp_outcome_free(b);
  if (oom) {
    for (size_t i = 0; items && i < n; i++) bp_outcome_free(items[i]);
    free(items);
    return NULL;
  }
  bp_outcome *r = bp_outcome_batch(items, n);
  free(items);
  return r;
}

/* join_all over items[from..n): appends Ok values to vals; returns NULL when
 * all were Ok (consumed), or the short-circuiting outcome (the rest freed). */
static bp_outcome *join_collect(bp_outcome **items, size_t n, bp__buf *vals, uint32_t *count) {
  for (size_t i = 0; i < n; i++) {
    bp_outcome *o = items[i];
    items[i] = NULL;
    if (o->type == BP_OUTCOME_OK) {
      bp__buf_append(vals, o->value, o->len);
      (*count)++;
      bp_outcome_free(o);
      continue;
    }
    bp_outcome *stop = NULL;
    if (o->type == BP_OUTCOME_BATCH) {
      stop = join_collect(o->items, o->n, vals, count);
      bp_outcome_free(o);
    } else {
      stop = o;
    }
    if (stop) {
      for (size_t j = i + 1; j < n; j++) {
        bp_outcome_free(items[j]);
        items[j] = NULL;
      }
      return stop;
    }
  }
  return NULL;
}

bp_outcome *bp_outcome_join_all(bp_outcome **items, size_t n) {
  if (drop_if_any_missing(items, n)) return NULL;
  bp__buf vals;
  bp__buf_init(&vals);
  uint32_t count = 0;
  bp_outcome *stop = join_collect(items, n, &vals, &count);
  if (stop) {
    bp__buf_free(&vals);
    return stop;
  }
  bp__buf out;
  bp__buf_init(&out);
  bp__mp_put_array(&out, count);
  bp__buf_append(&out, vals.data, vals.len);
  bp_outcome *r = out.oom || vals.oom ? NULL : bp_outcome_ok(out.data, out.len);
  if (!r && (out.oom || vals.oom)) bp__fail(BP_ENOMEM, "out of memory");
  bp__buf_free(&out);
  bp__buf_free(&vals);
  return r;
}

bp_outcome *bp_outcome_join_any(bp_outcome **items, size_t n) {
  if (drop_if_any_missing(items, n)) return NULL;
  bp_outcome *last_err = NULL, *result = NULL;
  size_t i = 0;
  for (; i < n && !result; i++) {
    bp_outcome *o = items[i];
    items[i] = NULL;
    if (o->type == BP_OUTCOME_ERR) {
      bp_outcome_free(last_err);
      last_err = o;
    } else {
      result = o; /* Ok wins; Retry, Pending, Cancelled (and Batch) pass through */
    }
  }
  for (; i < n; i++) {
    bp_outcome_free(items[i]);
    items[i] = NULL;
  }
  if (result) {
    bp_outcome_free(last_err);
    return result;
  }
  return last_err ? last_err : err_of(BP_ERRKIND_INTERNAL, "join_any called with no outcomes");
}

/* ---------------------------------------------------------------- wire */

static void encode(bp__buf *b, const bp_outcome *o) {
  bp__mp_put_map(b, 2);
  bp__mp_put_lit(b, "type");
  bp__mp_put_cstr(b, type_names[o->type]);
  bp__mp_put_lit(b, "data");
  switch (o->type) {
    case BP_OUTCOME_OK: bp__buf_append(b, o->value, o->len); break;
    case BP_OUTCOME_ERR:
      bp__mp_put_map(b, 4);
      bp__mp_put_lit(b, "kind");
      if (o->kind == BP_ERRKIND_CUSTOM) {
        bp__mp_put_map(b, 1);
        bp__mp_put_lit(b, "Custom");
        bp__mp_put_uint(b, o->code);
      } else {
        bp__mp_put_cstr(b, kind_names[o->kind]);
      }
      bp__mp_put_lit(b, "message");
      bp__mp_put_cstr(b, o->text);
      bp__mp_put_lit(b, "compensation");
      if (o->extra) bp__buf_append(b, o->extra, o->extra_len);
      else bp__mp_put_nil(b);
      bp__mp_put_lit(b, "retryable");
      bp__mp_put_bool(b, o->retryable);
      break;
    case BP_OUTCOME_RETRY:
      bp__mp_put_map(b, 4);
      bp__mp_put_lit(b, "after_ms");
      bp__mp_put_uint(b, o->after_ms);
      bp__mp_put_lit(b, "attempt");
      bp__mp_put_uint(b, o->attempt);
      bp__mp_put_lit(b, "max_attempts");
      bp__mp_put_uint(b, o->max_attempts);
      bp__mp_put_lit(b, "reason");
      bp__mp_put_cstr(b, o->text);
      break;
    case BP_OUTCOME_PENDING:
      bp__mp_put_map(b, 2);
      bp__mp_put_lit(b, "condition");
      bp__buf_append(b, o->extra, o->extra_len);
      bp__mp_put_lit(b, "resume_token");
      bp__mp_put_id(b, o->token);
      break;
    case BP_OUTCOME_CANCELLED:
      bp__mp_put_map(b, 1);
      bp__mp_put_lit(b, "reason");
      bp__mp_put_cstr(b, o->text);
      break;
    case BP_OUTCOME_BATCH:
      bp__mp_put_array(b, (uint32_t)o->n);
      for (size_t i = 0; i < o->n; i++) encode(b, o->items[i]);
      break;
  }
}

bp_status bp_outcome_encode(const bp_outcome *o, uint8_t **out, size_t *out_len) {
  if (!o || !out || !out_len) return bp__fail(BP_EINVAL, "bp_outcome_encode: NULL argument");
  bp__buf b;
  bp__buf_init(&b);
  encode(&b, o);
  if (b.oom) {
    bp__buf_free(&b);
    return bp__fail(BP_ENOMEM, "out of memory encoding an outcome");
  }
  *out = b.data;
  *out_len = b.len;
  return BP_OK;
}

/* The raw bytes of the next value. */
static bp_status raw_value(bp__mp_reader *r, const uint8_t **p, size_t *n) {
  const uint8_t *at = r->p;
  bp_status st = bp__mp_skip(r);
  *p = at;
  *n = (size_t)(r->p - at);
  return st;
}

static char *read_text(bp__mp_reader *r, bp_status *st) {
  const char *s;
  uint32_t n;
  if ((*st = bp__mp_read_str(r, &s, &n))) return NULL;
  char *t = malloc((size_t)n + 1);
  if (!t) {
    *st = bp__fail(BP_ENOMEM, "out of memory");
    return NULL;
  }
  memcpy(t, s, n);
  t[n] = 0;
  return t;
}

#define OUTCOME_MAX_DEPTH 64

static bp_status decode(bp__mp_reader *r, bp_outcome **out, int depth);

static bp_status decode_data(bp__mp_reader *r, bp_outcome *o, int depth) {
  bp_status st = BP_OK;
  uint32_t n;
  if (o->type == BP_OUTCOME_OK) {
    const uint8_t *p;
    size_t len;
    if ((st = raw_value(r, &p, &len))) return st;
    o->value = copy_bytes(p, len);
    o->len = len;
    return o->value ? BP_OK : bp__fail(BP_ENOMEM, "out of memory");
  }
  if (o->type == BP_OUTCOME_BATCH) {
    if ((st = bp__mp_read_array(r, &n))) return st;
    if (n > bp__mp_remaining(r)) return bp__fail(BP_ESERIAL, "outcome: batch of %u items, input too short", n);
    o->items = calloc(n ? n : 1, sizeof *o->items);
    if (!o->items) return bp__fail(BP_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < n && !st; i++) {
      st = decode(r, &o->items[i], depth + 1);
      if (!st) o->n = i + 1;
    }
    return st;
  }
  if ((st = bp__mp_read_map(r, &n))) return st;
  unsigned seen = 0;
  for (uint32_t i = 0; i < n && !st; i++) {
    const char *k;
    uint32_t kl;
    bool present = false;
    if ((st = bp__mp_read_str(r, &k, &kl))) break;
    const uint8_t *p;
    size_t len;
    if (o->type == BP_OUTCOME_ERR && bp__mp_key_is(k, kl, "kind")) {
      bp__mp_value v;
      bp__mp_reader peek = *r;
      if ((st = bp__mp_next(&peek, &v))) break;
      if (v.type == BP__MP_STR) {
        int found = -1;
        for (int j = 0; j < 8; j++)
          if (bp__mp_key_is((const char *)v.ptr, v.len, kind_names[j])) found = j;
        if (found < 0) st = bp__fail(BP_ESERIAL, "outcome: unknown error kind");
        o->kind = (bp_error_kind)(found < 0 ? 0 : found);
        *r = peek;
      } else {
        uint32_t one;
        const char *ck;
        uint32_t ckl;
        if (!(st = bp__mp_read_map(r, &one)) && one == 1 && !(st = bp__mp_read_str(r, &ck, &ckl)) &&
            bp__mp_key_is(ck, ckl, "Custom"))
          st = bp__mp_read_u16(r, &o->code);
        else if (!st)
          st = bp__fail(BP_ESERIAL, "outcome: unknown error kind");
        o->kind = BP_ERRKIND_CUSTOM;
      }
      seen |= 1;
    } else if ((o->type == BP_OUTCOME_ERR && bp__mp_key_is(k, kl, "message")) ||
               ((o->type == BP_OUTCOME_RETRY || o->type == BP_OUTCOME_CANCELLED) && bp__mp_key_is(k, kl, "reason"))) {
      free(o->text);
      o->text = read_text(r, &st);
      seen |= 2;
    } else if (o->type == BP_OUTCOME_ERR && bp__mp_key_is(k, kl, "compensation")) {
      if (!(st = bp__mp_read_nil_or(r, &present)) && present && !(st = raw_value(r, &p, &len))) {
        bp__compensation c;
        if (!(st = bp__compensation_decode(p, len, &c))) {
          bp__compensation_free(&c);
          o->extra = copy_bytes(p, len);
          o->extra_len = len;
        }
      }
    } else if (o->type == BP_OUTCOME_ERR && bp__mp_key_is(k, kl, "retryable")) {
      bp__mp_value v;
      if (!(st = bp__mp_next(r, &v)) && v.type != BP__MP_BOOL) st = bp__fail(BP_ESERIAL, "outcome: retryable is not a bool");
      o->retryable = v.b;
      seen |= 4;
    } else if (o->type == BP_OUTCOME_RETRY && bp__mp_key_is(k, kl, "after_ms")) {
      st = bp__mp_read_u64(r, &o->after_ms);
      seen |= 4;
    } else if (o->type == BP_OUTCOME_RETRY && bp__mp_key_is(k, kl, "attempt")) {
      st = bp__mp_read_u32(r, &o->attempt);
      seen |= 8;
    } else if (o->type == BP_OUTCOME_RETRY && bp__mp_key_is(k, kl, "max_attempts")) {
      st = bp__mp_read_u32(r, &o->max_attempts);
      seen |= 16;
    } else if (o->type == BP_OUTCOME_PENDING && bp__mp_key_is(k, kl, "condition")) {
      if (!(st = raw_value(r, &p, &len))) {
        bp__wait w;
        if (!(st = bp__wait_decode(p, len, &w))) {
          bp__wait_free(&w);
          o->extra = copy_bytes(p, len);
          o->extra_len = len;
        }
      }
      seen |= 1;
    } else if (o->type == BP_OUTCOME_PENDING && bp__mp_key_is(k, kl, "resume_token")) {
      st = bp__mp_read_id(r, &o->token);
      seen |= 2;
    } else {
      st = bp__mp_skip(r);
    }
  }
  if (st) return st;
  unsigned need = o->type == BP_OUTCOME_ERR ? 7 : o->type == BP_OUTCOME_RETRY ? 30 : o->type == BP_OUTCOME_PENDING ? 3 : 2;
  if ((seen & need) != need) return bp__fail(BP_ESERIAL, "outcome: %s is missing fields", type_names[o->type]);
  return BP_OK;
}

static bp_status decode(bp__mp_reader *r, bp_outcome **out, int depth) {
  *out = NULL;
  if (depth > OUTCOME_MAX_DEPTH) return bp__fail(BP_ESERIAL, "outcome: nested deeper than %d", OUTCOME_MAX_DEPTH);
  uint32_t n;
  bp_status st = bp__mp_read_map(r, &n);
  if (st) return st;
  int type = -1;
  bp__mp_reader data;
  bool have_data = false;
  for (uint32_t i = 0; i < n && !st; i++) {
    const char *k, *t;
    uint32_t kl, tl;
    if ((st = bp__mp_read_str(r, &k, &kl))) break;
    if (bp__mp_key_is(k, kl, "type")) {
      if ((st = bp__mp_read_str(r, &t, &tl))) break;
      for (int j = 0; j < 6; j++)
        if (bp__mp_key_is(t, tl, type_names[j])) type = j;
      if (type < 0) st = bp__fail(BP_ESERIAL, "outcome: unknown type \"%.*s\"", (int)tl, t);
    } else if (bp__mp_key_is(k, kl, "data")) {
      data = *r;
      have_data = true;
      st = bp__mp_skip(r);
    } else {
      st = bp__mp_skip(r);
    }
  }
  if (!st && (type < 0 || !have_data)) st = bp__fail(BP_ESERIAL, "outcome: needs \"type\" and \"data\"");
  if (st) return st;
  bp_outcome *o = alloc_outcome((bp_outcome_type)type);
  if (!o) return BP_ENOMEM;
  st = decode_data(&data, o, depth);
  if (!st && (o->type == BP_OUTCOME_ERR || o->type == BP_OUTCOME_RETRY || o->type == BP_OUTCOME_CANCELLED) && !o->text)
    st = bp__fail(BP_ESERIAL, "outcome: missing text");
  if (st) {
    bp_outcome_free(o);
    return st;
  }
  *out = o;
  return BP_OK;
}

bp_status bp_outcome_decode(const void *data, size_t len, bp_outcome **out) {
  if (!data || !out) return bp__fail(BP_EINVAL, "bp_outcome_decode: NULL argument");
  bp__mp_reader r;
  bp__mp_reader_init(&r, data, len);
  bp_status st = decode(&r, out, 0);
  if (!st && bp__mp_remaining(&r) != 0) {
    bp_outcome_free(*out);
    *out = NULL;
    st = bp__fail(BP_ESERIAL, "outcome: trailing bytes");
  }
  return st;
}
