/*
 * batpak/policy.h - the policy layer: gates, denials, receipts, the commit
 * pipeline and bypasses, typed entity ids and typestate machines.
 *
 * A proposal passes through a gate set; passing every gate yields a receipt,
 * the only thing a commit accepts. Receipts are opaque: code outside the
 * library cannot make one (its type is incomplete), and a commit checks every
 * receipt against the library's registry of live receipts before touching it,
 * so a forged, freed or already-consumed receipt fails BP_ERECEIPT.
 */
#ifndef BATPAK_POLICY_H
#define BATPAK_POLICY_H

#include "batpak/core.h"
#include "batpak/store.h"

#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- denials */

/* Why a gate said no: the gate's name, a code, a message and key/value
 * context. The library never keeps a denial itself: the caller frees each one
 * it receives with bp_denial_free. */
typedef struct bp_denial bp_denial;

/* For gates: fill in the denial they are handed. Strings are copied. */
BP_API void bp_denial_set(bp_denial *denial, const char *code, const char *message);
BP_API void bp_denial_add_context(bp_denial *denial, const char *key, const char *value);

BP_API const char *bp_denial_gate(const bp_denial *denial);
BP_API const char *bp_denial_code(const bp_denial *denial);      /* "" if unset */
BP_API const char *bp_denial_message(const bp_denial *denial);   /* "denied" if unset */
BP_API size_t bp_denial_context_len(const bp_denial *denial);
/* The i-th pair; false when i is out of range. */
BP_API bool bp_denial_context(const bp_denial *denial, size_t i, const char **key, const char **value);
/* "[gate] message" into buf (NUL-terminated, truncated to size); returns the
 * length it would have. */
BP_API int bp_denial_format(const bp_denial *denial, char *buf, size_t size);
BP_API void bp_denial_free(bp_denial *denial);

/* ---------------------------------------------------------------- gates */

/* A named, pure predicate over a caller-defined context. evaluate returns true
 * to pass; to deny it returns false and may describe why in *denial. */
typedef struct bp_gate {
  const char *name;              /* copied by bp_gateset_push */
  const char *description;       /* optional, copied */
  bool (*evaluate)(const void *ctx, void *gate_data, bp_denial *denial);
  void *gate_data;               /* borrowed: must outlive the gate set */
} bp_gate;

typedef struct bp_gateset bp_gateset;
typedef struct bp_receipt bp_receipt;

/* NULL when out of memory. */
BP_API bp_gateset *bp_gateset_new(void);
BP_API void bp_gateset_free(bp_gateset *set);
/* Appends a gate; gates run in the order they were pushed.
 * Errors: BP_EINVAL (no name or evaluate), BP_ENOMEM. */
BP_API bp_status bp_gateset_push(bp_gateset *set, const bp_gate *gate);
BP_API size_t bp_gateset_len(const bp_gateset *set);
BP_API const char *bp_gateset_name(const bp_gateset *set, size_t i);       /* NULL out of range */
BP_API const char *bp_gateset_description(const bp_gateset *set, size_t i);

/* Runs the gates in order and stops at the first denial. On success *out is a
 * receipt holding a copy of payload and the names of the gates passed.
 * Errors: BP_EDENIED (*denial set: free it), BP_EINVAL, BP_ENOMEM (also when
 * a gate denied and its denial could not be recorded whole: nothing to free).
 * Ownership: free the receipt with bp_receipt_free (after committing it or not). */
BP_API bp_status bp_gateset_evaluate(const bp_gateset *set, const void *ctx, const void *payload, size_t len,
                                     bp_receipt **out, bp_denial **denial);
/* Runs every gate, for observability: on BP_EDENIED *denials holds all of
 * them (*n of them; free with bp_denials_free). On success as above. */
BP_API bp_status bp_gateset_evaluate_all(const bp_gateset *set, const void *ctx, const void *payload, size_t len,
                                         bp_receipt **out, bp_denial ***denials, size_t *n);
BP_API void bp_denials_free(bp_denial **denials, size_t n);

/* ---------------------------------------------------------------- receipts */

/* What a commit produced (the crate's Committed): the payload (one MessagePack
 * value by convention), the event id, the sequence and the content hash. */
typedef struct bp_committed {
  uint8_t *payload;              /* owned: bp_committed_free */
  size_t payload_len;
  bp_id event_id;
  uint64_t sequence;
  uint8_t hash[32];
} bp_committed;

/* Writes the committed payload somewhere (for example, appends it) and fills
 * event_id, sequence and hash. Called at most once per receipt. */
typedef bp_status (*bp_commit_fn)(const void *payload, size_t len, void *ctx, bp_committed *out);

/* Commits a gate receipt: calls fn with its payload and consumes the receipt.
 * Errors: BP_ERECEIPT (forged, freed, consumed, or a bypass receipt), and fn's
 * errors (the receipt is then still consumed: a receipt is good for one try).
 * Ownership: out->payload is a copy, freed with bp_committed_free. */
BP_API bp_status bp_receipt_commit(bp_receipt *receipt, bp_commit_fn fn, void *ctx, bp_committed *out);
/* The store-aware commit: appends the receipt's payload as (coord, kind).
 * Errors: BP_ERECEIPT, and bp_append's errors. */
BP_API bp_status bp_commit_append(bp_store *store, const bp_coord *coord, bp_kind kind, bp_receipt *receipt,
                                  bp_append_receipt *out);

/* A bypass: a receipt made without gates, carrying why. It is committed only
 * by the bypass calls below, never by the ones above, so that an audit can tell
 * bypassed commits apart. reason and justification are required (copied).
 * Returns NULL on failure (BP_EINVAL, BP_ENOMEM). */
BP_API bp_receipt *bp_bypass(const void *payload, size_t len, const char *reason, const char *justification);
BP_API bp_status bp_bypass_commit(bp_receipt *receipt, bp_commit_fn fn, void *ctx, bp_committed *out);
/* Appends the payload as (coord, kind), and in the same atomic batch an audit
 * event of kind BP_KIND_POLICY_BYPASS on the same coordinate whose payload is
 * {"event_id": bin16, "reason": str, "justification": str} and whose causation
 * is the bypassed event. out receives the payload event's receipt. */
BP_API bp_status bp_commit_bypass_append(bp_store *store, const bp_coord *coord, bp_kind kind, bp_receipt *receipt,
                                         bp_append_receipt *out);
#define BP_KIND_POLICY_BYPASS ((bp_kind)0x0010)

BP_API bool bp_receipt_is_bypass(const bp_receipt *receipt);
BP_API bool bp_receipt_is_consumed(const bp_receipt *receipt);
BP_API const void *bp_receipt_payload(const bp_receipt *receipt, size_t *len);
BP_API size_t bp_receipt_gate_count(const bp_receipt *receipt);
BP_API const char *bp_receipt_gate(const bp_receipt *receipt, size_t i);
BP_API const char *bp_receipt_reason(const bp_receipt *receipt);          /* bypass only, else NULL */
BP_API const char *bp_receipt_justification(const bp_receipt *receipt);   /* bypass only, else NULL */
/* Accepts NULL, and refuses (ignores) pointers that are not live receipts. */
BP_API void bp_receipt_free(bp_receipt *receipt);

/* The crate's Committed record as MessagePack: {payload, event_id, sequence,
 * hash}, payload spliced in as it is. Ownership: *out with bp_free.
 * Errors: BP_ENOMEM. */
BP_API bp_status bp_committed_encode(const bp_committed *c, uint8_t **out, size_t *out_len);
/* Errors: BP_ESERIAL. Ownership: bp_committed_free. */
BP_API bp_status bp_committed_decode(const void *data, size_t len, bp_committed *out);
BP_API void bp_committed_free(bp_committed *c);

/* ---------------------------------------------------------------- outcome */

/* The crate's Outcome<T>: the result of an operation that may succeed, fail,
 * need a retry, wait on a condition, be cancelled, or be a batch of outcomes.
 * T is carried as one MessagePack value (the bytes are copied in and out), so
 * an outcome encodes exactly as the crate's does. An outcome is a tree owned
 * by whoever holds the pointer; combinators consume the outcome they are
 * given and return a new one (NULL only when memory runs out). */
typedef struct bp_outcome bp_outcome;

typedef enum bp_outcome_type {
  BP_OUTCOME_OK = 0, BP_OUTCOME_ERR, BP_OUTCOME_RETRY, BP_OUTCOME_PENDING, BP_OUTCOME_CANCELLED,
  BP_OUTCOME_BATCH
} bp_outcome_type;

typedef enum bp_error_kind {
  BP_ERRKIND_NOT_FOUND = 0, BP_ERRKIND_CONFLICT, BP_ERRKIND_VALIDATION, BP_ERRKIND_POLICY_REJECTION,
  BP_ERRKIND_STORAGE_ERROR, BP_ERRKIND_TIMEOUT, BP_ERRKIND_SERIALIZATION, BP_ERRKIND_INTERNAL,
  BP_ERRKIND_CUSTOM                   /* with a u16 code */
} bp_error_kind;

BP_API bool bp_error_kind_is_retryable(bp_error_kind kind);   /* storage error, timeout */
BP_API bool bp_error_kind_is_domain(bp_error_kind kind);      /* not found, conflict, validation, policy */
BP_API bool bp_error_kind_is_operational(bp_error_kind kind); /* storage, timeout, serialization, internal */

/* An Err outcome's error, as callbacks see it (strings borrowed for the call). */
typedef struct bp_outcome_error {
  bp_error_kind kind;
  uint16_t custom_code;               /* with BP_ERRKIND_CUSTOM */
  const char *message;
  bool retryable;
  const uint8_t *compensation;        /* a CompensationAction as MessagePack, or NULL */
  size_t compensation_len;
} bp_outcome_error;

/* Constructors copy their inputs. value: one MessagePack document (checked).
 * compensation and condition: a CompensationAction / WaitCondition as
 * MessagePack (checked; NULL for none). Return NULL on bad input or no memory
 * (bp_last_error: BP_ESERIAL, BP_EINVAL, BP_ENOMEM). batch takes ownership of
 * items (also on failure). */
BP_API bp_outcome *bp_outcome_ok(const void *value, size_t len);
BP_API bp_outcome *bp_outcome_err(const bp_outcome_error *error);
BP_API bp_outcome *bp_outcome_retry(uint64_t after_ms, uint32_t attempt, uint32_t max_attempts, const char *reason);
BP_API bp_outcome *bp_outcome_pending(const void *condition, size_t len, bp_id resume_token);
BP_API bp_outcome *bp_outcome_cancelled(const char *reason);
BP_API bp_outcome *bp_outcome_batch(bp_outcome **items, size_t n);
BP_API bp_outcome *bp_outcome_clone(const bp_outcome *o);
BP_API void bp_outcome_free(bp_outcome *o);

BP_API bp_outcome_type bp_outcome_type_of(const bp_outcome *o);
BP_API bool bp_outcome_is_terminal(const bp_outcome *o);          /* Ok, Err, Cancelled */
BP_API const void *bp_outcome_value(const bp_outcome *o, size_t *len);       /* Ok, else NULL */
BP_API bool bp_outcome_error_of(const bp_outcome *o, bp_outcome_error *out); /* Err, else false */
/* Retry: after_ms, attempt, max_attempts; Pending: the resume token; Cancelled
 * and Retry: the reason. Each returns false for other variants. */
BP_API bool bp_outcome_retry_of(const bp_outcome *o, uint64_t *after_ms, uint32_t *attempt, uint32_t *max_attempts);
BP_API bool bp_outcome_pending_of(const bp_outcome *o, const uint8_t **condition, size_t *len, bp_id *token);
BP_API const char *bp_outcome_reason(const bp_outcome *o);
BP_API size_t bp_outcome_batch_len(const bp_outcome *o);
BP_API const bp_outcome *bp_outcome_batch_item(const bp_outcome *o, size_t i);
/* Structural equality (values compared as bytes). */
BP_API bool bp_outcome_equal(const bp_outcome *a, const bp_outcome *b);

/* Combinators. They consume o and distribute over Batch as the crate does.
 * A NULL outcome (a constructor or combinator that failed) gives NULL, with
 * bp_last_error still the failure that made it; calls that take several
 * outcomes (batch, zip, join_all, join_any) then free the others. So calls
 * can be nested and checked once, at the end. */
typedef bp_status (*bp_outcome_map_fn)(const void *value, size_t len, void **out, size_t *out_len, void *ctx);
typedef bp_outcome *(*bp_outcome_bind_fn)(const void *value, size_t len, void *ctx);
typedef bp_outcome_error (*bp_outcome_map_err_fn)(const bp_outcome_error *error, void *ctx);
typedef bp_outcome *(*bp_outcome_recover_fn)(const bp_outcome_error *error, void *ctx);
typedef bool (*bp_outcome_pred_fn)(const void *value, size_t len, void *ctx);
typedef void (*bp_outcome_inspect_fn)(const void *value, size_t len, void *ctx);

/* map: Ok(v) -> Ok(fn(v)) (*out malloc'd by fn, taken over); a failing fn
 * turns the outcome into Err(Internal, its message). */
BP_API bp_outcome *bp_outcome_map(bp_outcome *o, bp_outcome_map_fn fn, void *ctx);
/* and_then (the monad bind): Ok(v) -> fn(v) (fn returns a new outcome). */
BP_API bp_outcome *bp_outcome_and_then(bp_outcome *o, bp_outcome_bind_fn fn, void *ctx);
BP_API bp_outcome *bp_outcome_map_err(bp_outcome *o, bp_outcome_map_err_fn fn, void *ctx);
BP_API bp_outcome *bp_outcome_or_else(bp_outcome *o, bp_outcome_recover_fn fn, void *ctx);
BP_API bp_outcome *bp_outcome_inspect(bp_outcome *o, bp_outcome_inspect_fn fn, void *ctx);
/* Ok(v) with pred(v) -> fn(v); other Ok values stay as they are. */
BP_API bp_outcome *bp_outcome_and_then_if(bp_outcome *o, bp_outcome_pred_fn pred, bp_outcome_bind_fn fn, void *ctx);
/* Ok(v) where v is an encoded outcome -> that outcome (join = bind(decode)). */
BP_API bp_outcome *bp_outcome_flatten(bp_outcome *o);
/* The Ok value, or a copy of def. Ownership: *out malloc'd (bp_free). Consumes o. */
BP_API bp_status bp_outcome_unwrap_or(bp_outcome *o, const void *def, size_t def_len, void **out, size_t *out_len);
/* zip: both Ok -> Ok([a, b]); otherwise the first of Err > Cancelled > Retry >
 * Pending wins (a before b), Batch pairs distribute. Consumes a and b. */
BP_API bp_outcome *bp_outcome_zip(bp_outcome *a, bp_outcome *b);
/* join_all: all Ok -> Ok([values]) (batches flattened); otherwise the first
 * non-Ok short-circuits. join_any: the first Ok wins; Retry, Pending and
 * Cancelled return at once; otherwise the last Err (an Internal Err for none).
 * Both consume the n items; the array itself stays the caller's. */
BP_API bp_outcome *bp_outcome_join_all(bp_outcome **items, size_t n);
BP_API bp_outcome *bp_outcome_join_any(bp_outcome **items, size_t n);

/* MessagePack, adjacently tagged as the crate writes it: {"type": "Ok",
 * "data": value}, ... Ownership: *out with bp_free. */
BP_API bp_status bp_outcome_encode(const bp_outcome *o, uint8_t **out, size_t *out_len);
/* Errors: BP_ESERIAL, BP_ENOMEM. Ownership: bp_outcome_free. */
BP_API bp_status bp_outcome_decode(const void *data, size_t len, bp_outcome **out);

/* ---------------------------------------------------------------- entity ids */

/* Defines a typed id for one kind of entity: a struct around bp_id, so that a
 * player_id cannot be passed where an order_id is expected. It provides
 *   name name##_new(bp_id), name##_nil(void), name##_now_v7(void),
 *   bool name##_is_nil(name), bool name##_eq(name, name),
 *   void name##_format(name, char out[]), with out of name##_TEXT_LEN bytes:
 *        "<prefix>:<32 hex digits>",
 *   bp_status name##_parse(const char *, name *): the same form, BP_EINVAL otherwise,
 *   and name##_entity(name, char out[]): the same text, for a bp_coord's entity. */
#define BP_DEFINE_ENTITY_ID(name, prefix)                                                             \
  typedef struct name {                                                                               \
    bp_id id;                                                                                         \
  } name;                                                                                             \
  enum { name##_TEXT_LEN = (int)sizeof(prefix) + 33 };                                                \
  BP_MAYBE_UNUSED static inline name name##_new(bp_id id) {                                                           \
    name v;                                                                                           \
    v.id = id;                                                                                        \
    return v;                                                                                         \
  }                                                                                                   \
  BP_MAYBE_UNUSED static inline name name##_nil(void) { return name##_new(BP_ID_NIL); }                               \
  BP_MAYBE_UNUSED static inline name name##_now_v7(void) { return name##_new(bp_id_v7()); }                           \
  BP_MAYBE_UNUSED static inline bool name##_is_nil(name v) { return bp_id_is_nil(v.id); }                             \
  BP_MAYBE_UNUSED static inline bool name##_eq(name a, name b) { return bp_id_eq(a.id, b.id); }                       \
  BP_MAYBE_UNUSED static inline void name##_format(name v, char out[name##_TEXT_LEN]) {                               \
    char hex[33];                                                                                     \
    bp_id_to_hex(v.id, hex);                                                                          \
    snprintf(out, (size_t)name##_TEXT_LEN, "%s:%s", prefix, hex);                                     \
  }                                                                                                   \
  BP_MAYBE_UNUSED static inline void name##_entity(name v, char out[name##_TEXT_LEN]) { name##_format(v, out); }      \
  BP_MAYBE_UNUSED static inline bp_status name##_parse(const char *text, name *out) {                                 \
    size_t pl = sizeof(prefix) - 1;                                                                   \
    bp_id id;                                                                                         \
    if (!text || strncmp(text, prefix, pl) != 0 || text[pl] != ':' ||                                 \
        bp_id_from_hex(text + pl + 1, &id) != BP_OK)                                                  \
      return BP_EINVAL;                                                                               \
    *out = name##_new(id);                                                                            \
    return BP_OK;                                                                                     \
  }                                                                                                   \
  typedef int name##_defined_ /* swallows the caller's semicolon */

/* ---------------------------------------------------------------- typestate */

/* A state machine whose illegal transitions do not compile. Each state is its
 * own struct type (holding the entity's id); a transition is a function that
 * exists only if it was declared, and that takes the source state's type and
 * produces the target state's, plus the bp_transition (kind and payload) to
 * record with bp_apply_transition. Calling an undeclared transition, or
 * passing a value of the wrong state, is a compile error (with the warnings
 * this project builds with: -Werror, which makes incompatible pointer types
 * and implicit declarations errors).
 *
 *   BP_STATE(door, closed);  BP_STATE(door, open);
 *   BP_TRANSITION(door, closed, open, KIND_DOOR_OPENED);
 *   door_open o; bp_transition t = door_closed_to_open(&c, &o, payload, len);
 */
#define BP_STATE(machine, state)                                                                      \
  typedef struct machine##_##state {                                                                  \
    bp_id id;                                                                                         \
  } machine##_##state;                                                                                \
  BP_MAYBE_UNUSED static inline machine##_##state machine##_##state##_at(bp_id id) {                                  \
    machine##_##state s;                                                                              \
    s.id = id;                                                                                        \
    return s;                                                                                         \
  }                                                                                                   \
  typedef int machine##_##state##_defined_

#define BP_TRANSITION(machine, from, to, event_kind)                                                        \
  BP_MAYBE_UNUSED static inline bp_transition machine##_##from##_to_##to(const machine##_##from *src,                 \
                                                           machine##_##to *dst, const void *payload,  \
                                                           size_t len) {                              \
    bp_transition t;                                                                                  \
    dst->id = src->id;                                                                                \
    t.kind = (event_kind);                                                                            \
    t.payload = payload;                                                                              \
    t.len = len;                                                                                      \
    return t;                                                                                         \
  }                                                                                                   \
  typedef int machine##_##from##_to_##to##_defined_

#ifdef __cplusplus
}
#endif

#endif /* BATPAK_POLICY_H */
