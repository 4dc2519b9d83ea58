/*
 * gates.c - policy gates guarding appends: a withdrawal is proposed, checked
 * by gates, and committed only with the receipt that passing them yields.
 *
 *   gates [DATA_DIR]      (default ./gates-data)
 */
#include <batpak.h>

#include <stdio.h>

typedef struct withdrawal {
  long amount, balance;
} withdrawal;

static bool positive(const void *ctx, void *data, bp_denial *d) {
  (void)data;
  const withdrawal *w = ctx;
  if (w->amount > 0) return true;
  bp_denial_set(d, "NOT_POSITIVE", "a withdrawal must be positive");
  return false;
}

static bool covered(const void *ctx, void *data, bp_denial *d) {
  (void)data;
  const withdrawal *w = ctx;
  if (w->amount <= w->balance) return true;
  bp_denial_set(d, "INSUFFICIENT_FUNDS", "the balance does not cover it");
  char buf[32];
  snprintf(buf, sizeof buf, "%ld", w->balance);
  bp_denial_add_context(d, "balance", buf);
  return false;
}

static void propose(bp_store *s, const bp_gateset *gates, long amount, long balance) {
  withdrawal w = {amount, balance};
  uint8_t payload = (uint8_t)(amount > 0 && amount < 128 ? amount : 0);
  bp_receipt *receipt;
  bp_denial *denial;
  printf("withdraw %ld from a balance of %ld: ", amount, balance);
  if (bp_gateset_evaluate(gates, &w, &payload, 1, &receipt, &denial) == BP_EDENIED) {
    char text[128];
    bp_denial_format(denial, text, sizeof text);
    printf("denied %s (code %s)\n", text, bp_denial_code(denial));
    bp_denial_free(denial);
    return;
  }
  bp_coord account = {"account:7", "bank"};
  bp_append_receipt r;
  bp_status st = bp_commit_append(s, &account, 0x1003, receipt, &r);
  printf("%s, passed %zu gates, committed at sequence %llu\n", bp_status_name(st), bp_receipt_gate_count(receipt),
         (unsigned long long)r.sequence);
  /* A receipt is good for one commit. */
  st = bp_commit_append(s, &account, 0x1003, receipt, &r);
  printf("  committing the same receipt again: %s\n", bp_status_name(st));
  bp_receipt_free(receipt);
}

int main(int argc, char **argv) {
  bp_config cfg;
  bp_config_init(&cfg, argc > 1 ? argv[1] : "./gates-data");
  bp_store *s;
  if (bp_open(&cfg, &s) != BP_OK) {
    fprintf(stderr, "gates: %s\n", bp_last_error()->message);
    return 1;
  }
  bp_gateset *gates = bp_gateset_new();
  bp_gate g1 = {"positive", "amount > 0", positive, NULL}, g2 = {"covered", "amount <= balance", covered, NULL};
  bp_gateset_push(gates, &g1);
  bp_gateset_push(gates, &g2);

  propose(s, gates, 40, 100);
  propose(s, gates, 400, 100);
  propose(s, gates, -5, 100);

  /* An operator may bypass the gates, leaving an audit event. */
  uint8_t payload = 99;
  bp_receipt *bypass = bp_bypass(&payload, 1, "incident 1234", "refund approved by the duty manager");
  bp_coord account = {"account:7", "bank"};
  bp_append_receipt r;
  printf("bypass: %s\n", bp_status_name(bp_commit_bypass_append(s, &account, 0x1003, bypass, &r)));
  bp_receipt_free(bypass);
  bp_gateset_free(gates);
  return bp_close(s) == BP_OK ? 0 : 1;
}
