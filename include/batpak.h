/*
 * batpak.h - batpak for C, an embedded event store.
 *
 * This umbrella header includes one header per layer. A function that does not
 * appear in these headers is not part of the published API.
 *
 *   batpak/core.h   status codes, ids, kinds, coordinates, regions, positions,
 *                   headers, hashing
 *   batpak/wire.h   JSON <-> MessagePack payload helpers
 *   batpak/store.h  the store: open, append, read, query, follow, project
 *   batpak/policy.h gates, receipts, bypasses, typed ids, typestate
 */
#ifndef BATPAK_H
#define BATPAK_H

#include "batpak/core.h"
#include "batpak/wire.h"
#include "batpak/store.h"
#include "batpak/policy.h"

#endif /* BATPAK_H */
