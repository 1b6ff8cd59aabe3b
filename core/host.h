/*
 * The host side of the plugin ABI: the sovmesh_host_api table and the
 * runtime behind it (libuv timers and fd watches, the thread pool, the
 * event bus, curl multi on the loop), plus plugin instances.
 */
#ifndef SOVMESH_CORE_HOST_H
#define SOVMESH_CORE_HOST_H

#include <uv.h>
#include <sovmesh/plugin.h>

#include "plugin_loader.h"
#include "plugin_settings.h"

typedef struct host_runtime host_runtime;

/*
 * One runtime per process, on `loop` (not owned).  state_dir and
 * node_name are copied; state_dir may be NULL for offline tools (then
 * plugin_state_dir returns NULL).  0 or -errno.
 */
int host_runtime_new(uv_loop_t *loop, const char *state_dir, const char *node_name,
                     host_runtime **out);

/*
 * Close every handle the runtime still holds (timers, watches, curl),
 * run the loop until they are closed, and free the runtime.  Call after
 * every plugin instance is destroyed.  NULL is a no-op.
 */
void host_runtime_free(host_runtime *rt);

uv_loop_t *host_runtime_loop(host_runtime *rt);

/* The table handed to every plugin (static, never freed). */
const sovmesh_host_api *host_api_table(void);

/* A created plugin instance. */
typedef struct plugin_instance {
	loaded_plugin *plugin;    /* owned */
	plugin_settings *settings; /* owned */
	sovmesh_host *host;       /* owned */
	void *instance;           /* the plugin's; may be NULL */
} plugin_instance;

/*
 * Call the plugin's create() with a fresh host handle.  Takes ownership
 * of `plugin` and `settings` on success AND on failure.  On failure the
 * message is "FILE: create failed: <plugin's message>".
 */
int plugin_instance_new(host_runtime *rt, loaded_plugin *plugin, plugin_settings *settings,
                        plugin_instance **out, sovmesh_error *err);

/*
 * Load <kind>-<name>.so along `sp`, validate `params` ("KEY=VALUE", as
 * the offline tools' --param; may be NULL with n_params 0) against its
 * declared settings and create an instance on `rt`: what the offline
 * tools and the benches do to use a plugin by name.  Errors as
 * plugin_load_by_name(), plugin_settings_from_params() and
 * plugin_instance_new().
 */
int plugin_instance_open(host_runtime *rt, const plugin_search_path *sp, uint32_t kind,
                         const char *name, const char *const *params, size_t n_params,
                         plugin_instance **out, sovmesh_error *err);

/* destroy() the instance, release what the plugin left open (with a
 * warning naming it), free everything.  The library stays loaded. */
void plugin_instance_free(plugin_instance *pi);

/* The host handle's own facts, for core code that calls plugins. */
host_runtime *host_get_runtime(sovmesh_host *host);

#endif
