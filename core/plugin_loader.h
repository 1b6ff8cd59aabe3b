/*
 * Finding, opening and checking plugins: config name -> <kind>-<name>.so
 * on the search path -> dlopen(RTLD_NOW|RTLD_LOCAL) -> the one entry
 * symbol -> descriptor checks.  Every refusal is one line naming the file
 * and the reason (docs/plugin-abi.md lists them).
 */
#ifndef SOVMESH_CORE_PLUGIN_LOADER_H
#define SOVMESH_CORE_PLUGIN_LOADER_H

#include <stddef.h>
#include <sovmesh/plugin.h>

/* File-name prefix of a kind ("discovery", "backend", "cache", "agg",
 * "dp", "trainer"), or NULL for an unknown kind. */
const char *plugin_kind_prefix(uint32_t kind);
/* Human name of a kind ("aggregator", "noise mechanism", ...). */
const char *plugin_kind_label(uint32_t kind);
/* Ops-table size this host was built with for `kind`, 0 if unknown. */
size_t plugin_kind_ops_size(uint32_t kind);

/* An ordered list of directories to search. */
typedef struct plugin_search_path {
	size_t count;
	char **dirs;
} plugin_search_path;

/*
 * Build the search path: `config_dirs` (may be NULL/0), then each entry of
 * $SOVMESH_PLUGIN_PATH (colon-separated), then the build tree's plugin
 * directory when this binary runs from the build tree, then the install
 * directory.  Caller frees with plugin_search_path_free().
 */
int plugin_search_path_build(const char *const *config_dirs, size_t n_config,
                             plugin_search_path *out);
void plugin_search_path_free(plugin_search_path *sp);

/* A loaded, checked plugin. */
typedef struct loaded_plugin {
	char *path;        /* the file that was opened */
	char *label;       /* "<prefix>-<name>", e.g. "agg-fedavg" */
	void *dl;          /* dlopen handle; never dlclose'd while in use */
	const sovmesh_plugin_descriptor *desc; /* in the plugin's memory */
	uint32_t kind;
	/* The kind's ops table copied into a zeroed struct of the host's size:
	 * slots the plugin's (older, shorter) table lacks are NULL. */
	void *ops;
} loaded_plugin;

/*
 * Find "<prefix(kind)>-<name>.so" along `sp` and load it.  `name` must
 * match [a-z0-9][a-z0-9_]*.  Errors (err->message is the whole line,
 * naming the file or, when not found, every directory searched):
 *   -ENOENT  not found on the search path
 *   -ELIBBAD dlopen failed, symbol missing, bad magic, descriptor too
 *            small, ABI major differs, minor newer than the host, unknown
 *            kind, wrong kind, name differs, ops table missing or too small
 *   -EINVAL  bad name
 */
int plugin_load_by_name(const plugin_search_path *sp, uint32_t kind, const char *name,
                        loaded_plugin **out, sovmesh_error *err);

/* Load a given file, expecting `kind` and `name` (name NULL: any). */
int plugin_load_file(const char *path, uint32_t kind, const char *name,
                     loaded_plugin **out, sovmesh_error *err);

/* Forget a plugin.  dlclose only when `unload` is set: callers pass 0
 * unless every loop handle the plugin may own is known closed. */
void plugin_release(loaded_plugin *p, int unload);

#endif
