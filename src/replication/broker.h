/*
 * broker.h - what the relay and the follower share: options checked and
 * defaulted, a connection to NATS (with nats.c's reasons turned into
 * bp_status and messages that name the servers), message headers, and
 * logging. Built on nats.c and libbatpak's public API only.
 */
#ifndef BATPAK_REPLICATION_BROKER_H
#define BATPAK_REPLICATION_BROKER_H

#include "batpak/replication.h"

#include <nats/nats.h>

/* Header names carried by every relayed message (docs/REPLICATION.md). */
#define BP__HDR_MSG_ID "Nats-Msg-Id"
#define BP__HDR_PREV_ID "Batpak-Prev-Id"
#define BP__HDR_ENTITY "Batpak-Entity"
#define BP__HDR_SCOPE "Batpak-Scope"
#define BP__HDR_KIND "Batpak-Kind"
#define BP__HDR_SEQUENCE "Batpak-Sequence"
#define BP__HDR_PREV_HASH "Batpak-Prev-Hash"
#define BP__HDR_EVENT_HASH "Batpak-Event-Hash"
#define BP__NO_PREV "none" /* Batpak-Prev-Id of a stream's first event */

/* The options with defaults filled in and strings owned. */
typedef struct bp__broker_opts {
  bp_nats_options o;
  char *urls, *stream, *prefix, *durable;
  char *creds_file, *user, *password, *token, *tls_ca_file, *tls_cert_file, *tls_key_file;
} bp__broker_opts;

typedef struct bp__broker {
  bp__broker_opts opts;
  natsConnection *nc;
  jsCtx *js;
} bp__broker;

/* Checks and copies opts (NULL fields take defaults; durable_default is
 * the default durable name). Errors: BP_EINVAL (named), BP_ENOMEM. */
bp_status bp__broker_opts_copy(const bp_nats_options *in, const char *durable_default, bp__broker_opts *out);
void bp__broker_opts_free(bp__broker_opts *o);

/* Connects with the options (retrying with doubling waits for
 * connect_wait_ms) and opens a JetStream context whose publish window and
 * acknowledgement handler are given (ack may be NULL).
 * Errors: BP_EBROKER (names the URLs and nats.c's reason), BP_EINVAL (a
 * credentials or certificate file nats.c could not load), BP_ENOMEM.
 * On error nothing is left open. */
bp_status bp__broker_connect(bp__broker *b, const char *client_name, jsPubAckHandler ack, void *ack_ctx);
void bp__broker_close(bp__broker *b);

/* A failed nats.c call as a bp_status with a message: what was being done,
 * nats.c's text and JetStream's error code when there is one. */
bp_status bp__broker_fail(const bp__broker *b, natsStatus s, jsErrCode jerr, const char *what);

/* Logs through opts.log_fn (printf-style). */
void bp__broker_log(const bp__broker *b, int level, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* The value of header key of m, or NULL. */
const char *bp__header(natsMsg *m, const char *key);

/* Lower-case hex of n bytes into out (2n + 1 bytes). */
void bp__hex(const uint8_t *p, size_t n, char *out);

/* Monotonic milliseconds. */
int64_t bp__mono_ms(void);

#endif
