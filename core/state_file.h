/*
 * State files: crash-safe replacement for every file that must never be
 * half-written (identity, trust store, adapters, later the budget ledger):
 * write a temporary file in the same directory (mode 0600), fsync it,
 * rename it over the target, fsync the directory.  After a crash the
 * target holds either the old or the new contents, never a mix.  And a
 * bounded read for the small files among them.
 */
#ifndef SOVMESH_CORE_STATE_FILE_H
#define SOVMESH_CORE_STATE_FILE_H

#include <sys/stat.h>

#include <stddef.h>
#include <sys/uio.h>
#include <sovmesh/plugin.h>

/*
 * Replace `path` with the concatenation of parts[0..n-1] (borrowed).
 * 0 or -errno with "PATH: what failed: strerror" in err.  The temporary
 * file is removed on failure.
 */
int state_file_write(const char *path, const struct iovec *parts, size_t n, sovmesh_error *err);

/* fsync the directory holding `path` (a rename into it is then durable).
 * 0 or -errno. */
int state_file_fsync_parent(const char *path);

/*
 * Read the regular file `path`, at most `max` bytes, into a NUL-terminated
 * malloc'd buffer (*out, caller frees; wipe it first if it held a secret).
 * *st (may be NULL) gets its fstat.  Opened O_NONBLOCK so a FIFO planted
 * there cannot hang the daemon.  0, or -errno with "PATH: reason"
 * (-ENOENT when it does not exist, -EINVAL not a regular file, -E2BIG
 * over `max`).
 */
int state_file_read(const char *path, size_t max, char **out, size_t *len, struct stat *st,
                    sovmesh_error *err);

#endif
