/*
 * Running the discovery plugins (mesh.discovery names one or more): each
 * is loaded by name, created with its plugin_settings.<label> section,
 * started with what this node announces, and reports into one callback
 * tagged with its label (peer_table_discovery_event fits).  Several may
 * run at once (e.g. mdns and static).
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_DISCOVERY_HOST_H
#define SOVMESH_CORE_DISCOVERY_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/discovery.h>

#include "config.h"
#include "host.h"
#include "plugin_loader.h"

/* Where events go: `source` is the plugin's label ("discovery-static");
 * `peer` and its strings are valid during the call only. */
typedef void (*discovery_event_fn)(void *ud, const char *source, sovmesh_peer_event event,
                                   const sovmesh_discovered_peer *peer);

/* What this node announces; strings copied by discovery_host_start(). */
typedef struct discovery_self {
	const char *node_name;
	const char *fingerprint; /* 64 lowercase hex */
	uint16_t peer_port;
	uint16_t pairing_port; /* 0 while no pairing code is outstanding */
} discovery_self;

typedef struct discovery_host discovery_host;

/* An empty set reporting to fn(ud, ...); `rt` not owned (must outlive
 * it).  0, -EINVAL or -ENOMEM. */
int discovery_host_new(host_runtime *rt, discovery_event_fn fn, void *ud, discovery_host **out);

/*
 * Load discovery-<name>.so along `sp`, validate its settings against
 * `cfg`'s plugin_settings.discovery-<name> section (cfg may be NULL: no
 * section, defaults), create it and add it (owned).  Not after start.
 * 0 or -errno with one line in `err` (loader, settings or create() error,
 * naming the file/key), -EEXIST if that plugin is already in the set.
 */
int discovery_host_load(discovery_host *dh, const plugin_search_path *sp, const sovmesh_config *cfg,
                        const char *name, sovmesh_error *err);

/* Add an instance created elsewhere (e.g. by the daemon's plugin plan);
 * kind must be discovery.  owned != 0: freed with the set. */
int discovery_host_add(discovery_host *dh, plugin_instance *pi, int owned, sovmesh_error *err);

/*
 * Start every plugin (in the order added).  A plugin whose start() fails
 * fails the whole call ("discovery-X: start failed: ..."); plugins
 * already started are stopped.  0 or -errno.
 */
int discovery_host_start(discovery_host *dh, const discovery_self *self, sovmesh_error *err);

/* A pairing code was offered (port) or finished (0): re-announce through
 * every running plugin's update().  Failures are logged, not returned. */
void discovery_host_set_pairing_port(discovery_host *dh, uint16_t pairing_port);

/* Browse again now (the user pressed refresh). */
void discovery_host_refresh(discovery_host *dh);

size_t discovery_host_count(const discovery_host *dh);
/* Label of plugin i ("discovery-mdns"), NULL past the end. */
const char *discovery_host_label(const discovery_host *dh, size_t i);

/* Stop every running plugin (no event follows), free the owned
 * instances (reverse order) and the set.  Call before the peer table the
 * events went to is freed, and before host_runtime_free().  NULL: no-op. */
void discovery_host_free(discovery_host *dh);

#endif
