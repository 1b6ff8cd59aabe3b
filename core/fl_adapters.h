/*
 * The adapters federated learning produces, kept under
 * <state_dir>/fl/adapters/:
 *
 *   initial/          the trainer's initial adapter (every node's start)
 *   a000001/ ...      one PEFT adapter directory per aggregation
 *   history.json      {"version": 1, "history": ["initial", "a000001", ...]}
 *                     the last entry is the current adapter, the one
 *                     before it the previous (what `sovmesh fl rollback`
 *                     returns to).
 *
 * history.json is replaced atomically (state_file.h) after the new
 * adapter directory is complete, so a crash leaves either the old or the
 * new current adapter.  At most FL_ADAPTERS_KEPT entries are kept; older
 * directories are deleted ("initial" never is).
 *
 * Threading: the loop's thread (writes are small; the caller may run
 * fl_adapters_commit on a worker if it keeps the object to itself).
 */
#ifndef SOVMESH_CORE_FL_ADAPTERS_H
#define SOVMESH_CORE_FL_ADAPTERS_H

#include <jansson.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

#define FL_ADAPTERS_KEPT 6
#define FL_ADAPTER_NAME_MAX 32

typedef struct fl_adapters fl_adapters;

/* Open <dir> (created 0700); reads history.json if present.  A malformed
 * history is refused with a message (-EINVAL), not reset. */
int fl_adapters_open(const char *dir, fl_adapters **out, sovmesh_error *err);
void fl_adapters_free(fl_adapters *a);

/* Entries in the history (0: no adapter yet). */
size_t fl_adapters_count(const fl_adapters *a);
/* The current / previous entry's name, or NULL. */
const char *fl_adapters_current(const fl_adapters *a);
const char *fl_adapters_previous(const fl_adapters *a);
/* Absolute directory of entry `name` into buf (PATH_MAX). */
void fl_adapters_dir(const fl_adapters *a, const char *name, char *buf, size_t len);

/* Load the current adapter (heap copy; tset_free) and, if config_json is
 * non-NULL, its adapter_config.json text (free()).  -ENOENT when none. */
int fl_adapters_load_current(const fl_adapters *a, sovmesh_tensor_set **out, char **config_json,
                             sovmesh_error *err);

/*
 * Write `set` as a new adapter directory (named "initial" when the history
 * is empty, else the next "aNNNNNN") with `config_json` (NULL: minimal
 * LoRA config) and make it current.  *name_out (may be NULL) receives the
 * name (FL_ADAPTER_NAME_MAX).
 */
int fl_adapters_commit(fl_adapters *a, const sovmesh_tensor_set *set, const char *config_json,
                       char *name_out, sovmesh_error *err);

/* Drop the current entry and make the previous one current (its
 * directory is kept until pruned).  -ENOENT with a message when there is
 * no previous adapter. */
int fl_adapters_rollback(fl_adapters *a, sovmesh_error *err);

/* {"current": name|null, "previous": name|null, "history": [..]} */
json_t *fl_adapters_json(const fl_adapters *a);

#endif
