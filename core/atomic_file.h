/*
 * Crash-safe file replacement, for every state file that must never be
 * half-written (adapters now; trust store, budget ledger later): write a
 * temporary file in the same directory (mode 0600), fsync it, rename it
 * over the target, fsync the directory.  After a crash the target holds
 * either the old or the new contents, never a mix.
 */
#ifndef SOVMESH_CORE_ATOMIC_FILE_H
#define SOVMESH_CORE_ATOMIC_FILE_H

#include <stddef.h>
#include <sys/uio.h>
#include <sovmesh/plugin.h>

/*
 * Replace `path` with the concatenation of parts[0..n-1] (borrowed).
 * 0 or -errno with "PATH: what failed: strerror" in err.  The temporary
 * file is removed on failure.
 */
int atomic_file_write(const char *path, const struct iovec *parts, size_t n, sovmesh_error *err);

/* fsync the directory holding `path` (a rename into it is then durable).
 * 0 or -errno. */
int atomic_fsync_parent(const char *path);

#endif
