/*
 * faultfs.h - the store's file-system table (store/os.h) wrapped for tests.
 *
 * Faults: ff_arm(k, ...) makes the k-th call from now (counting from 0) of
 * open, pwritev, fsync, fdatasync, rename, unlink, link, mkdir or ftruncate
 * fail with EIO,
 * or end the process with _exit(FF_CRASH_EXIT), as a crash at that step.
 *
 * Power loss: between ff_power_track() and ff_power_cut(), every file the
 * store writes is followed: each fsync copies what the file then holds to a
 * durable image (in a temporary directory). Writes through the store's
 * writable mapping are covered too: they reach the file without a call
 * through the table, and the image is compared with what the file holds. The
 * cut (in a child process) saves the record and exits; ff_power_apply() (in
 * the parent) then does to each 512-byte sector that differs from the image,
 * and to the length past the durable one, what a power failure may do to data
 * that was never fsynced: loses it, garbles it, or keeps it, chosen by a seed.
 * Directory operations (create, rename, unlink) are taken as durable.
 */
#ifndef BATPAK_TEST_FAULTFS_H
#define BATPAK_TEST_FAULTFS_H

#include <stdbool.h>
#include <stdint.h>

#define FF_CRASH_EXIT 7

void ff_arm(int after, bool crash);
void ff_disarm(void);
/* Whether the armed fault happened. */
bool ff_hit(void);

void ff_power_track(void);
/* Cuts the power after `after` more calls (as ff_arm), or now with after < 0.
 * The record goes to record_path. */
void ff_power_cut_after(int after, const char *record_path);
void ff_power_cut(const char *record_path);
/* Applies a recorded power loss to the files. Returns how many files lost or
 * had garbled data. */
int ff_power_apply(const char *record_path, unsigned seed);

#endif
