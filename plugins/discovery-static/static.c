/* SPDX-License-Identifier: MIT */
/*
 * discovery-static: peers listed in the config, for networks where
 * multicast does not pass (Wi-Fi client isolation, VLANs, VPNs).
 *
 *   plugin_settings: { discovery-static: { peers = "10.0.0.2:47470, [fd00::3]:47470"; }; };
 *
 * Each entry is reported as SOVMESH_PEER_APPEARED once start() has
 * returned, with instance_id = the entry as normalised here and no name
 * or fingerprint: the core learns who answers at an address from its
 * authenticated health check.  Nothing is announced (a static list has
 * no one to announce to), so update() has nothing to do.
 *
 * Only numeric addresses are accepted: resolving names would make the
 * config depend on DNS (the same rule as the core's hostport.c, which a
 * plugin cannot link).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>

#include <sovmesh/discovery.h>
#include <sovmesh/plugin.h>

/* Longest entry we accept: "[" IPv6 with zone "]:" port. */
#define ENTRY_MAX 80

typedef struct static_peer {
	char id[ENTRY_MAX + 16]; /* normalised "1.2.3.4:5" / "[::1]:5" */
	char host[ENTRY_MAX];    /* without brackets; < 64 bytes like the core's */
	uint16_t port;
	uint32_t ifindex;
} static_peer;

typedef struct static_disc {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	static_peer *peers;
	size_t n_peers;
	const sovmesh_discovery_sink *sink; /* set by start(), until stop() */
	void *sink_ctx;
	sovmesh_timer *report; /* pending deferred report, or NULL */
} static_disc;

static const sovmesh_setting_def static_settings[] = {
    {
        .name = "peers",
        .type = SOVMESH_SETTING_STRING,
        .default_value = "",
        .help = "comma-separated numeric host:port list of peer ports, e.g. "
                "\"192.168.1.20:47470, [fd00::5]:47470\"",
    },
    {.name = NULL},
};

/* Parse one trimmed entry.  NULL on success, else a static reason. */
static const char *parse_entry(const char *text, size_t len, static_peer *out)
{
	char buf[ENTRY_MAX];
	if (len == 0)
		return "empty entry";
	if (len >= sizeof(buf))
		return "too long";
	memcpy(buf, text, len);
	buf[len] = '\0';

	char *host, *port_text;
	int v6 = buf[0] == '[';
	if (v6) {
		char *close = strchr(buf, ']');
		if (!close || close[1] != ':')
			return "an IPv6 address must be written [addr]:port";
		*close = '\0';
		host = buf + 1;
		port_text = close + 2;
	} else {
		char *colon = strrchr(buf, ':');
		if (!colon)
			return "missing ':port'";
		*colon = '\0';
		host = buf;
		port_text = colon + 1;
	}
	if (!*port_text || strspn(port_text, "0123456789") != strlen(port_text) ||
	    strlen(port_text) > 5)
		return "port must be 1..65535";
	long port = strtol(port_text, NULL, 10);
	if (port < 1 || port > 65535)
		return "port must be 1..65535";

	memset(out, 0, sizeof(*out));
	if (v6) {
		char addr[64];
		char *zone = strchr(host, '%');
		if (zone)
			*zone++ = '\0';
		struct in6_addr a6;
		if (strlen(host) >= sizeof(addr) || inet_pton(AF_INET6, host, &a6) != 1)
			return "host must be a numeric IPv4 or [IPv6] address";
		if (zone) {
			if (!*zone)
				return "empty IPv6 zone after '%'";
			out->ifindex = if_nametoindex(zone);
			if (out->ifindex == 0) {
				/* A numeric zone is an interface index already. */
				if (strspn(zone, "0123456789") != strlen(zone))
					return "unknown network interface in the IPv6 zone";
				out->ifindex = (uint32_t)strtoul(zone, NULL, 10);
			}
		}
		if (strlen(host) + (zone ? strlen(zone) + 1 : 0) >= 64)
			return "address too long";
		/* Keep the text as written (inet_pton accepted it), zone included. */
		if (zone)
			snprintf(out->host, sizeof(out->host), "%s%%%s", host, zone);
		else
			snprintf(out->host, sizeof(out->host), "%s", host);
		snprintf(out->id, sizeof(out->id), "[%s]:%ld", out->host, port);
	} else {
		struct in_addr a4;
		if (inet_pton(AF_INET, host, &a4) != 1)
			return "host must be a numeric IPv4 or [IPv6] address";
		snprintf(out->host, sizeof(out->host), "%s", host);
		snprintf(out->id, sizeof(out->id), "%s:%ld", host, port);
	}
	out->port = (uint16_t)port;
	return NULL;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Split `list` on commas into d->peers; duplicates are kept once. */
static int parse_list(static_disc *d, const char *list, sovmesh_error *err)
{
	size_t cap = 1;
	for (const char *p = list; *p; p++)
		cap += *p == ',';
	d->peers = d->api->calloc(d->host, cap, sizeof(*d->peers));
	if (!d->peers)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	const char *p = list;
	int only_blank = 1;
	for (const char *q = list; *q; q++)
		only_blank &= is_space(*q);
	if (only_blank)
		return 0;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *s = p;
		while (len && is_space(*s)) {
			s++;
			len--;
		}
		while (len && is_space(s[len - 1]))
			len--;
		static_peer sp;
		const char *why = parse_entry(s, len, &sp);
		if (why)
			return sovmesh_fail(
			    err, -EINVAL, "peers: entry %zu '%.*s' is not a numeric host:port: %s",
			    d->n_peers + 1, (int)(len > 80 ? 80 : len), s, why);
		int dup = 0;
		for (size_t i = 0; i < d->n_peers; i++)
			dup |= strcmp(d->peers[i].id, sp.id) == 0;
		if (!dup)
			d->peers[d->n_peers++] = sp;
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

static int static_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                         sovmesh_error *err)
{
	if (!api->calloc || !api->free || !api->setting_string)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory or settings slots");
	static_disc *d = api->calloc(host, 1, sizeof(*d));
	if (!d)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	d->host = host;
	d->api = api;
	const char *list = api->setting_string(host, "peers");
	int r = parse_list(d, list ? list : "", err);
	if (r < 0) {
		api->free(host, d->peers);
		api->free(host, d);
		return r;
	}
	*instance = d;
	return 0;
}

static void static_destroy(void *instance)
{
	static_disc *d = instance;
	if (!d)
		return;
	d->api->timer_stop(d->host, d->report);
	d->api->free(d->host, d->peers);
	d->api->free(d->host, d);
}

/* Report every entry; deferred out of start()/refresh() so the core is
 * never re-entered from inside its own call. */
static void report_all(void *ud)
{
	static_disc *d = ud;
	d->api->timer_stop(d->host, d->report);
	d->report = NULL;
	for (size_t i = 0; i < d->n_peers && d->sink; i++) {
		const static_peer *sp = &d->peers[i];
		sovmesh_discovered_peer p = {
		    .size = sizeof(p),
		    .instance_id = sp->id,
		    .address = sp->host,
		    .port = sp->port,
		    .ifindex = sp->ifindex,
		};
		d->sink->peer_event(d->sink_ctx, SOVMESH_PEER_APPEARED, &p);
	}
}

static int schedule_report(static_disc *d, sovmesh_error *err)
{
	if (d->report || d->n_peers == 0)
		return 0;
	d->report = d->api->timer_start(d->host, 0, 0, report_all, d);
	if (!d->report)
		return sovmesh_fail(err, -ENOMEM, "out of memory (timer)");
	return 0;
}

static int static_start(void *instance, const sovmesh_local_service *self,
                        const sovmesh_discovery_sink *sink, void *ctx, sovmesh_error *err)
{
	static_disc *d = instance;
	(void)self;
	if (!sink || !sink->peer_event)
		return sovmesh_fail(err, -EINVAL, "no sink to report peers to");
	if (!d->api->timer_start || !d->api->timer_stop)
		return sovmesh_fail(err, -ENOTSUP, "the host offers no timer slots");
	d->sink = sink;
	d->sink_ctx = ctx;
	if (d->n_peers)
		d->api->log(d->host, SOVMESH_LOG_INFO, "%zu static peer address%s configured",
		            d->n_peers, d->n_peers == 1 ? "" : "es");
	return schedule_report(d, err);
}

static void static_stop(void *instance)
{
	static_disc *d = instance;
	d->api->timer_stop(d->host, d->report);
	d->report = NULL;
	d->sink = NULL;
	d->sink_ctx = NULL;
}

static int static_update(void *instance, const sovmesh_local_service *self, sovmesh_error *err)
{
	(void)instance;
	(void)self;
	(void)err;
	return 0;
}

static void static_refresh(void *instance)
{
	static_disc *d = instance;
	if (d->sink)
		schedule_report(d, NULL);
}

static const sovmesh_discovery_ops static_ops = {
    .size = sizeof(sovmesh_discovery_ops),
    .start = static_start,
    .stop = static_stop,
    .update = static_update,
    .refresh = static_refresh,
};

static const sovmesh_plugin_descriptor static_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_DISCOVERY,
    .name = "static",
    .version = "1.0.0",
    .license = "MIT",
    .description = "peers from a configured list of numeric host:port addresses",
    .settings = static_settings,
    .create = static_create,
    .destroy = static_destroy,
    .ops = &static_ops,
};

SOVMESH_PLUGIN_DEFINE(static_descriptor)
