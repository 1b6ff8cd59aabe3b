/* Running the discovery plugins (see discovery_host.h). */
#include "discovery_host.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "peer_transport.h"
#include "plugin_settings.h"

typedef struct disc_plugin {
	discovery_host *dh; /* back pointer: the sink's ctx is this struct */
	plugin_instance *pi;
	const sovmesh_discovery_ops *ops; /* host-sized copy (loader) */
	int owned;
	int started;
} disc_plugin;

struct discovery_host {
	host_runtime *rt;
	discovery_event_fn fn;
	void *ud;
	disc_plugin *p;
	size_t n;
	int started;
	char *node_name;
	char fingerprint[65];
	sovmesh_local_service self;
};

/* The sink every plugin reports to; ctx is its disc_plugin. */
static void sink_event(void *ctx, sovmesh_peer_event event, const sovmesh_discovered_peer *peer)
{
	disc_plugin *dp = ctx;
	if (!dp->started || !peer ||
	    peer->size < offsetof(sovmesh_discovered_peer, ifindex) + sizeof(peer->ifindex))
		return;
	dp->dh->fn(dp->dh->ud, dp->pi->plugin->label, event, peer);
}

static const sovmesh_discovery_sink the_sink = {
    .size = sizeof(sovmesh_discovery_sink),
    .peer_event = sink_event,
};

/* See discovery_host.h.  rt borrowed. */
int discovery_host_new(host_runtime *rt, discovery_event_fn fn, void *ud, discovery_host **out)
{
	if (!rt || !fn || !out)
		return -EINVAL;
	discovery_host *dh = calloc(1, sizeof(*dh));
	if (!dh)
		return -ENOMEM;
	dh->rt = rt;
	dh->fn = fn;
	dh->ud = ud;
	*out = dh;
	return 0;
}

/* See discovery_host.h.  pi owned when `owned` (also on failure). */
int discovery_host_add(discovery_host *dh, plugin_instance *pi, int owned, sovmesh_error *err)
{
	int r;
	if (!pi || !pi->plugin || pi->plugin->kind != SOVMESH_KIND_DISCOVERY || !pi->plugin->ops) {
		r = sovmesh_fail(err, -EINVAL, "%s: not a discovery plugin",
		                 pi && pi->plugin ? pi->plugin->label : "(plugin)");
		goto fail;
	}
	if (dh->started) {
		r = sovmesh_fail(err, -EALREADY, "%s: discovery already started",
		                 pi->plugin->label);
		goto fail;
	}
	for (size_t i = 0; i < dh->n; i++)
		if (strcmp(dh->p[i].pi->plugin->label, pi->plugin->label) == 0) {
			r = sovmesh_fail(err, -EEXIST, "%s: named twice in mesh.discovery",
			                 pi->plugin->label);
			goto fail;
		}
	const sovmesh_discovery_ops *ops = pi->plugin->ops;
	if (!ops->start) {
		r = sovmesh_fail(err, -EINVAL, "%s: the plugin has no start()", pi->plugin->path);
		goto fail;
	}
	/* Each sink ctx points into this array: grow it only before start. */
	disc_plugin *n = realloc(dh->p, (dh->n + 1) * sizeof(*n));
	if (!n) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto fail;
	}
	dh->p = n;
	dh->p[dh->n++] = (disc_plugin){.dh = dh, .pi = pi, .ops = ops, .owned = owned};
	return 0;
fail:
	if (owned)
		plugin_instance_free(pi);
	return r;
}

/* See discovery_host.h.  sp, cfg and name borrowed. */
int discovery_host_load(discovery_host *dh, const plugin_search_path *sp, const sovmesh_config *cfg,
                        const char *name, sovmesh_error *err)
{
	loaded_plugin *lp = NULL;
	int r = plugin_load_by_name(sp, SOVMESH_KIND_DISCOVERY, name, &lp, err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < dh->n; i++)
		if (strcmp(dh->p[i].pi->plugin->label, lp->label) == 0) {
			r = sovmesh_fail(err, -EEXIST, "%s: named twice in mesh.discovery",
			                 lp->label);
			plugin_release(lp, 1);
			return r;
		}
	plugin_settings *ps = NULL;
	r = plugin_settings_from_config(lp->label, lp->desc->settings,
	                                cfg ? config_plugin_section(cfg, lp->label) : NULL, &ps,
	                                err);
	if (r < 0) {
		plugin_release(lp, 1);
		return r;
	}
	plugin_instance *pi = NULL;
	r = plugin_instance_new(dh->rt, lp, ps, &pi, err);
	if (r < 0)
		return r;
	return discovery_host_add(dh, pi, 1, err);
}

static void stop_all(discovery_host *dh)
{
	for (size_t i = dh->n; i-- > 0;) {
		disc_plugin *dp = &dh->p[i];
		if (dp->started && dp->ops->stop)
			dp->ops->stop(dp->pi->instance);
		dp->started = 0;
	}
	dh->started = 0;
}

/* See discovery_host.h.  self's strings copied. */
int discovery_host_start(discovery_host *dh, const discovery_self *self, sovmesh_error *err)
{
	if (!self || !self->node_name || !self->fingerprint ||
	    strlen(self->fingerprint) != sizeof(dh->fingerprint) - 1)
		return sovmesh_fail(err, -EINVAL, "discovery: incomplete local service");
	if (dh->started)
		return sovmesh_fail(err, -EALREADY, "discovery: already started");
	free(dh->node_name);
	dh->node_name = strdup(self->node_name);
	if (!dh->node_name)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	memcpy(dh->fingerprint, self->fingerprint, sizeof(dh->fingerprint));
	dh->self = (sovmesh_local_service){
	    .size = sizeof(sovmesh_local_service),
	    .node_name = dh->node_name,
	    .fingerprint = dh->fingerprint,
	    .peer_port = self->peer_port,
	    .proto_version = PEER_PROTOCOL_VERSION,
	    .pairing_port = self->pairing_port,
	};
	dh->started = 1;
	for (size_t i = 0; i < dh->n; i++) {
		disc_plugin *dp = &dh->p[i];
		sovmesh_error perr = {0};
		dp->started = 1; /* before start(): a plugin may report at once */
		int r = dp->ops->start(dp->pi->instance, &dh->self, &the_sink, dp, &perr);
		if (r != 0) {
			dp->started = 0;
			stop_all(dh);
			return sovmesh_fail(
			    err, r < 0 ? r : -EINVAL, "%s: start failed: %s", dp->pi->plugin->label,
			    perr.message[0] ? perr.message : "(the plugin gave no reason)");
		}
	}
	return 0;
}

void discovery_host_set_pairing_port(discovery_host *dh, uint16_t pairing_port)
{
	if (!dh || dh->self.pairing_port == pairing_port)
		return;
	dh->self.pairing_port = pairing_port;
	for (size_t i = 0; dh->started && i < dh->n; i++) {
		disc_plugin *dp = &dh->p[i];
		if (!dp->started || !dp->ops->update)
			continue;
		sovmesh_error perr = {0};
		if (dp->ops->update(dp->pi->instance, &dh->self, &perr) != 0)
			log_warning("%s: cannot announce the pairing port: %s",
			            dp->pi->plugin->label,
			            perr.message[0] ? perr.message : "(no reason given)");
	}
}

void discovery_host_refresh(discovery_host *dh)
{
	for (size_t i = 0; dh && dh->started && i < dh->n; i++)
		if (dh->p[i].started && dh->p[i].ops->refresh)
			dh->p[i].ops->refresh(dh->p[i].pi->instance);
}

size_t discovery_host_count(const discovery_host *dh)
{
	return dh ? dh->n : 0;
}

const char *discovery_host_label(const discovery_host *dh, size_t i)
{
	return dh && i < dh->n ? dh->p[i].pi->plugin->label : NULL;
}

void discovery_host_free(discovery_host *dh)
{
	if (!dh)
		return;
	stop_all(dh);
	for (size_t i = dh->n; i-- > 0;)
		if (dh->p[i].owned)
			plugin_instance_free(dh->p[i].pi);
	free(dh->p);
	free(dh->node_name);
	free(dh);
}
