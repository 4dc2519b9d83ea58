/*
 * chat.c - a chat room: messages are events in a room's scope; a listener
 * thread subscribes to the room and prints each message as it arrives, and a
 * reactor thread answers messages that mention the bot.
 *
 *   chat [DATA_DIR]      (default ./chat-data)
 */
#include <batpak.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

enum { KIND_MESSAGE = 0x2001 };

static void *listen_room(void *arg) {
  bp_subscription *sub = arg;
  bp_notification n;
  /* Until the store closes (BP_ECLOSED) or the expected messages arrived. */
  for (int got = 0; got < 4 && bp_sub_recv(sub, &n, 5000) == BP_OK; got++)
    printf("  [listener] new message from %s (sequence %llu)\n", n.entity, (unsigned long long)n.sequence);
  return NULL;
}

/* The bot answers any message that mentions "@bot". */
static void bot(const bp_event *ev, bp_emitter *out, void *ctx) {
  (void)ctx;
  char *text = bp_event_payload_json(ev);
  if (text && strstr(text, "@bot") && strcmp(ev->entity, "user:bot") != 0) {
    bp_coord me = {"user:bot", ev->scope};
    uint8_t *mp;
    size_t len;
    const char *reply = "\"beep boop, hello!\"";
    if (bp_json_to_msgpack(reply, strlen(reply), &mp, &len) == BP_OK) {
      bp_emit(out, &me, KIND_MESSAGE, mp, len);
      bp_free(mp);
    }
  }
  bp_free(text);
}

static void say(bp_store *s, const char *who, const char *json) {
  bp_coord c = {who, "room:lobby"};
  bp_append_receipt r;
  if (bp_append_json(s, &c, KIND_MESSAGE, json, &r) == BP_OK) printf("%s says %s\n", who, json);
}

int main(int argc, char **argv) {
  bp_config cfg;
  bp_config_init(&cfg, argc > 1 ? argv[1] : "./chat-data");
  bp_store *s;
  if (bp_open(&cfg, &s) != BP_OK) {
    fprintf(stderr, "chat: %s\n", bp_last_error()->message);
    return 1;
  }
  bp_region room = bp_region_scope("room:lobby");
  bp_subscription *sub = bp_subscribe(s, &room);
  bp_reactor *r = bp_react_loop(s, &room, bot, NULL);
  pthread_t listener;
  pthread_create(&listener, NULL, listen_room, sub);

  say(s, "user:ann", "\"hi everyone\"");
  say(s, "user:bob", "\"hello ann\"");
  say(s, "user:ann", "\"@bot are you there?\"");
  pthread_join(listener, NULL); /* the bot's answer is the fourth message */
  bp_reactor_stop(r);

  bp_entries history;
  bp_by_scope(s, "room:lobby", &history);
  printf("the lobby holds %zu messages; the last from %s, caused by the question: %s\n", history.len,
         history.items[history.len - 1].entity,
         bp_entry_is_root_cause(&history.items[history.len - 1]) ? "no" : "yes");
  bp_entries_free(&history);
  bp_sub_close(sub);
  return bp_close(s) == BP_OK ? 0 : 1;
}
