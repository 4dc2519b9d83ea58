/* test_policy.c - gates, denials, receipts, the pipeline, bypasses, typed ids
 * and typestate machines. */
#include "testutil.h"

#include <json-c/json.h>

typedef tu_store_fixture fixture;
#define setup tu_store_setup
#define teardown tu_store_teardown

typedef struct order {
  int amount;
  const char *customer;
} order;

typedef struct calls {
  char log[8][32];
  int n;
} calls;

static void record(void *data, const char *name) {
  calls *c = data;
  if (c->n < 8) snprintf(c->log[c->n++], 32, "%s", name);
}

static bool positive(const void *ctx, void *data, bp_denial *d) {
  record(data, "positive");
  const order *o = ctx;
  if (o->amount > 0) return true;
  bp_denial_set(d, "AMOUNT", "amount must be positive");
  bp_denial_add_context(d, "amount", o->amount == 0 ? "0" : "negative");
  return false;
}

static bool under_limit(const void *ctx, void *data, bp_denial *d) {
  record(data, "under_limit");
  const order *o = ctx;
  if (o->amount <= 1000) return true;
  bp_denial_set(d, "LIMIT", "amount over 1000");
  return false;
}

static bool known_customer(const void *ctx, void *data, bp_denial *d) {
  record(data, "known_customer");
  const order *o = ctx;
  if (o->customer && *o->customer) return true;
  bp_denial_set(d, "CUSTOMER", "unknown customer");
  return false;
}

static bp_gateset *make_gates(calls *c) {
  bp_gateset *g = bp_gateset_new();
  bp_gate gates[] = {{"positive", "amount > 0", positive, c},
                     {"under_limit", NULL, under_limit, c},
                     {"known_customer", "customer set", known_customer, c}};
  for (int i = 0; i < 3; i++) assert_ok(bp_gateset_push(g, &gates[i]));
  return g;
}

static void gates_run_in_order_and_stop_at_the_first_denial(void **state) {
  (void)state;
  calls c = {0};
  bp_gateset *g = make_gates(&c);
  assert_int_equal(bp_gateset_len(g), 3);
  assert_string_equal(bp_gateset_name(g, 1), "under_limit");
  assert_string_equal(bp_gateset_description(g, 0), "amount > 0");
  assert_null(bp_gateset_name(g, 3));
  order o = {5000, ""};
  bp_receipt *r = (bp_receipt *)1;
  bp_denial *d = NULL;
  assert_status(bp_gateset_evaluate(g, &o, "p", 1, &r, &d), BP_EDENIED);
  assert_null(r);
  assert_int_equal(c.n, 2); /* known_customer never ran */
  assert_string_equal(c.log[0], "positive");
  assert_string_equal(c.log[1], "under_limit");
  assert_string_equal(bp_denial_gate(d), "under_limit");
  assert_string_equal(bp_denial_code(d), "LIMIT");
  char text[64];
  bp_denial_format(d, text, sizeof text);
  assert_string_equal(text, "[under_limit] amount over 1000");
  bp_denial_free(d);
  bp_gateset_free(g);
}

static void evaluate_all_returns_every_denial(void **state) {
  (void)state;
  calls c = {0};
  bp_gateset *g = make_gates(&c);
  order o = {0, NULL};
  bp_receipt *r;
  bp_denial **ds;
  size_t n;
  assert_status(bp_gateset_evaluate_all(g, &o, "p", 1, &r, &ds, &n), BP_EDENIED);
  assert_int_equal(c.n, 3);
  assert_int_equal(n, 2);
  assert_string_equal(bp_denial_gate(ds[0]), "positive");
  assert_string_equal(bp_denial_gate(ds[1]), "known_customer");
  const char *k, *v;
  assert_int_equal(bp_denial_context_len(ds[0]), 1);
  assert_true(bp_denial_context(ds[0], 0, &k, &v));
  assert_string_equal(k, "amount");
  assert_string_equal(v, "0");
  assert_false(bp_denial_context(ds[0], 1, &k, &v));
  bp_denials_free(ds, n);
  o = (order){10, "ann"};
  assert_ok(bp_gateset_evaluate_all(g, &o, "p", 1, &r, &ds, &n));
  assert_int_equal(n, 0);
  assert_int_equal(bp_receipt_gate_count(r), 3);
  bp_receipt_free(r);
  bp_gateset_free(g);
}

static void gate_without_a_message_still_denies_clearly(void **state) {
  (void)state;
  bp_gateset *g = bp_gateset_new();
  bp_gate bad = {"", NULL, positive, NULL};
  assert_status(bp_gateset_push(g, &bad), BP_EINVAL);
  bp_gate nofn = {"x", NULL, NULL, NULL};
  assert_status(bp_gateset_push(g, &nofn), BP_EINVAL);
  bp_gateset_free(g);
}

typedef struct fake_log {
  int calls;
  uint64_t next_seq;
} fake_log;

static bp_status record_commit(const void *payload, size_t len, void *ctx, bp_committed *out) {
  fake_log *l = ctx;
  l->calls++;
  out->event_id = bp_id_v7();
  out->sequence = l->next_seq++;
  bp_compute_hash(payload, len, out->hash);
  return BP_OK;
}

static void receipt_is_consumed_by_its_one_commit(void **state) {
  (void)state;
  calls c = {0};
  bp_gateset *g = make_gates(&c);
  order o = {10, "ann"};
  bp_receipt *r;
  bp_denial *d;
  assert_ok(bp_gateset_evaluate(g, &o, "\xa2ok", 3, &r, &d));
  assert_false(bp_receipt_is_bypass(r));
  assert_string_equal(bp_receipt_gate(r, 2), "known_customer");
  size_t len;
  assert_memory_equal(bp_receipt_payload(r, &len), "\xa2ok", 3);
  fake_log log = {0, 42};
  bp_committed done;
  assert_ok(bp_receipt_commit(r, record_commit, &log, &done));
  assert_int_equal(done.sequence, 42);
  tu_assert_bytes_eq(done.payload, done.payload_len, "\xa2ok", 3, "committed payload");
  assert_true(bp_receipt_is_consumed(r));
  bp_committed again;
  assert_status(bp_receipt_commit(r, record_commit, &log, &again), BP_ERECEIPT);
  assert_non_null(strstr(bp_last_error()->message, "consumed"));
  assert_int_equal(log.calls, 1); /* nothing written the second time */
  bp_committed_free(&done);
  bp_receipt_free(r);
  bp_gateset_free(g);
}

static void forged_and_freed_receipts_are_refused(void **state) {
  (void)state;
  fake_log log = {0, 0};
  bp_committed out;
  /* A pointer that was never a receipt: refused without being read. */
  static char not_a_receipt[64];
  assert_status(bp_receipt_commit((bp_receipt *)not_a_receipt, record_commit, &log, &out), BP_ERECEIPT);
  assert_status(bp_receipt_commit(NULL, record_commit, &log, &out), BP_ERECEIPT);
  /* A freed receipt: refused (the registry no longer knows the pointer). */
  bp_gateset *g = bp_gateset_new();
  bp_receipt *r;
  bp_denial *d;
  assert_ok(bp_gateset_evaluate(g, NULL, "x", 1, &r, &d)); /* no gates: passes */
  bp_receipt_free(r);
  assert_status(bp_receipt_commit(r, record_commit, &log, &out), BP_ERECEIPT);
  bp_receipt_free(r); /* a second free is refused, not a double free */
  assert_int_equal(log.calls, 0);
  bp_gateset_free(g);
}

static void pipeline_commits_into_a_real_store(void **state) {
  fixture *f = *state;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  calls c = {0};
  bp_gateset *g = make_gates(&c);
  order o = {250, "bob"};
  uint8_t *mp;
  size_t len;
  assert_ok(bp_json_to_msgpack("{\"amount\": 250}", 15, &mp, &len));
  bp_receipt *r;
  bp_denial *d;
  assert_ok(bp_gateset_evaluate(g, &o, mp, len, &r, &d));
  bp_coord coord = {"order:1", "shop"};
  bp_append_receipt ar;
  assert_ok(bp_commit_append(s, &coord, 0x1001, r, &ar));
  assert_status(bp_commit_append(s, &coord, 0x1001, r, &ar), BP_ERECEIPT);
  bp_event *ev;
  assert_ok(bp_get(s, ar.event_id, &ev));
  tu_assert_bytes_eq(ev->payload, ev->payload_len, mp, len, "stored payload");
  bp_event_free(ev);
  bp_store_stats st;
  bp_stats(s, &st);
  assert_int_equal(st.event_count, 1);
  bp_receipt_free(r);
  bp_free(mp);
  bp_gateset_free(g);
  assert_ok(bp_close(s));
}

static void bypass_leaves_an_audit_trail(void **state) {
  fixture *f = *state;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  assert_null(bp_bypass("x", 1, "", "because"));
  assert_int_equal(bp_last_error()->code, BP_EINVAL);
  bp_receipt *b = bp_bypass("\xc3", 1, "incident 42", "restoring a lost order by hand");
  assert_non_null(b);
  assert_true(bp_receipt_is_bypass(b));
  assert_string_equal(bp_receipt_reason(b), "incident 42");
  bp_coord coord = {"order:2", "shop"};
  bp_append_receipt ar;
  /* The ordinary commit refuses a bypass receipt. */
  assert_status(bp_commit_append(s, &coord, 0x1001, b, &ar), BP_ERECEIPT);
  assert_ok(bp_commit_bypass_append(s, &coord, 0x1001, b, &ar));
  assert_status(bp_commit_bypass_append(s, &coord, 0x1001, b, &ar), BP_ERECEIPT);
  bp_entries st;
  assert_ok(bp_stream(s, "order:2", &st));
  assert_int_equal(st.len, 2);
  assert_true(bp_id_eq(st.items[0].event_id, ar.event_id));
  assert_int_equal(st.items[1].kind, BP_KIND_POLICY_BYPASS);
  assert_true(bp_id_eq(st.items[1].causation_id, ar.event_id));
  bp_event *audit;
  assert_ok(bp_get(s, st.items[1].event_id, &audit));
  char *json = bp_event_payload_json(audit);
  assert_non_null(strstr(json, "\"reason\":\"incident 42\""));
  assert_non_null(strstr(json, "\"justification\":\"restoring a lost order by hand\""));
  bp_free(json);
  bp_event_free(audit);
  bp_entries_free(&st);
  /* And a gate receipt cannot go through the bypass call. */
  bp_gateset *g = bp_gateset_new();
  bp_receipt *r;
  bp_denial *d;
  assert_ok(bp_gateset_evaluate(g, NULL, "x", 1, &r, &d));
  assert_status(bp_commit_bypass_append(s, &coord, 0x1001, r, &ar), BP_ERECEIPT);
  bp_receipt_free(r);
  bp_receipt_free(b);
  bp_gateset_free(g);
  assert_ok(bp_close(s));
}

static void committed_record_matches_the_golden_vector(void **state) {
  (void)state;
  size_t n, hexlen;
  char *hex = (char *)tu_read_data("golden/committed_v1.hex", &hexlen);
  uint8_t *want = tu_from_hex(hex, &n);
  bp_committed c = {(uint8_t *)"\xac" "test_payload", 13, {0x0123456789ABCDEFull, 0x0123456789ABCDEFull}, 42, {0}};
  memset(c.hash, 0xAB, 32);
  uint8_t *got;
  size_t got_len;
  assert_ok(bp_committed_encode(&c, &got, &got_len));
  tu_assert_bytes_eq(got, got_len, want, n, "committed");
  bp_committed d;
  assert_ok(bp_committed_decode(want, n, &d));
  assert_int_equal(d.sequence, 42);
  tu_assert_bytes_eq(d.payload, d.payload_len, c.payload, 13, "payload");
  bp_committed_free(&d);
  assert_status(bp_committed_decode(want, n - 1, &d), BP_ESERIAL);
  bp_free(got);
  free(want);
  free(hex);
}

/* ---- typed ids ---- */
BP_DEFINE_ENTITY_ID(player_id, "player");
BP_DEFINE_ENTITY_ID(guild_id, "guild");

static void entity_ids_format_and_parse_with_their_prefix(void **state) {
  (void)state;
  player_id p = player_id_now_v7();
  assert_false(player_id_is_nil(p));
  assert_true(player_id_is_nil(player_id_nil()));
  char text[player_id_TEXT_LEN];
  player_id_format(p, text);
  assert_int_equal(strncmp(text, "player:", 7), 0);
  assert_int_equal(strlen(text), 7 + 32);
  player_id back;
  assert_ok(player_id_parse(text, &back));
  assert_true(player_id_eq(p, back));
  guild_id gid;
  assert_int_equal(guild_id_parse(text, &gid), BP_EINVAL); /* another entity's id */
  assert_int_equal(player_id_parse("player:xyz", &back), BP_EINVAL);
  assert_int_equal(player_id_parse("player", &back), BP_EINVAL);
}

/* ---- typestate ---- */
BP_STATE(door, closed);
BP_STATE(door, open);
BP_STATE(door, locked);
BP_TRANSITION(door, closed, open, 0x2001);
BP_TRANSITION(door, open, closed, 0x2002);
BP_TRANSITION(door, closed, locked, 0x2003);

static void typestate_transitions_produce_events_to_apply(void **state) {
  fixture *f = *state;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  door_closed c = door_closed_at(bp_id_v7());
  door_open o;
  door_closed c2;
  door_locked l;
  bp_coord door = {"door:front", "house"};
  bp_append_receipt r;
  bp_transition t = door_closed_to_open(&c, &o, "\x01", 1);
  assert_true(bp_id_eq(o.id, c.id));
  assert_ok(bp_apply_transition(s, &door, &t, NULL, &r));
  t = door_open_to_closed(&o, &c2, "\x02", 1);
  assert_ok(bp_apply_transition(s, &door, &t, NULL, &r));
  t = door_closed_to_locked(&c2, &l, "\x03", 1);
  assert_ok(bp_apply_transition(s, &door, &t, NULL, &r));
  bp_entries st;
  assert_ok(bp_stream(s, "door:front", &st));
  assert_int_equal(st.len, 3);
  assert_int_equal(st.items[0].kind, 0x2001);
  assert_int_equal(st.items[2].kind, 0x2003);
  bp_entries_free(&st);
  assert_ok(bp_close(s));
}

/* A store in group commit refuses appends without an idempotency key. The
 * commits that append for the caller take no options, so they supply the
 * keys themselves: a receipt's event and a bypass with its audit event. */
static void commits_by_append_work_on_a_group_commit_store(void **state) {
  fixture *f = *state;
  f->cfg.group_commit_max_batch = 4;
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  calls c = {0};
  bp_gateset *g = make_gates(&c);
  order o = {250, "bob"};
  bp_receipt *r;
  bp_denial *d;
  assert_ok(bp_gateset_evaluate(g, &o, "\xc3", 1, &r, &d));
  bp_coord coord = {"order:3", "shop"};
  bp_append_receipt ar;
  assert_ok(bp_commit_append(s, &coord, 0x1001, r, &ar));
  bp_receipt *b = bp_bypass("\xc2", 1, "incident 43", "a manual fix");
  assert_ok(bp_commit_bypass_append(s, &coord, 0x1001, b, &ar));
  bp_entries st;
  assert_ok(bp_stream(s, "order:3", &st));
  assert_int_equal(st.len, 3);
  assert_int_equal(st.items[2].kind, BP_KIND_POLICY_BYPASS);
  bp_entries_free(&st);
  bp_receipt_free(r);
  bp_receipt_free(b);
  bp_gateset_free(g);
  assert_ok(bp_close(s));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(gates_run_in_order_and_stop_at_the_first_denial),
      cmocka_unit_test(evaluate_all_returns_every_denial),
      cmocka_unit_test(gate_without_a_message_still_denies_clearly),
      cmocka_unit_test(receipt_is_consumed_by_its_one_commit),
      cmocka_unit_test(forged_and_freed_receipts_are_refused),
      T(pipeline_commits_into_a_real_store),
      T(bypass_leaves_an_audit_trail),
      T(commits_by_append_work_on_a_group_commit_store),
      cmocka_unit_test(committed_record_matches_the_golden_vector),
      cmocka_unit_test(entity_ids_format_and_parse_with_their_prefix),
      T(typestate_transitions_produce_events_to_apply),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
