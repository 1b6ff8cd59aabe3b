/* SPDX-License-Identifier: MIT */
/*
 * discovery-mdns: publishes this node as `_sovmesh._tcp` and browses for
 * others through avahi-daemon (avahi-client over D-Bus), driven by the
 * core's loop through the AvahiPoll in avahi_poll.c.
 *
 * Lifetimes.  The client is made with AVAHI_CLIENT_NO_FAIL, so a missing
 * avahi-daemon leaves it CONNECTING until the daemon appears.  When a
 * connected daemon goes away (or D-Bus itself fails) the client enters
 * FAILURE and is dead: a retry timer (never the state callback itself)
 * frees it and makes a new one, with backoff while even that fails.  The
 * outage is logged once as a warning, and once more when it is over.
 *
 * Peers.  One entry per browse result, keyed "<ifname>/<proto>/<service
 * name>", with a resolver that stays open so Avahi reports changed
 * addresses and TXT records.  Entries outlive a client: after a reconnect
 * or refresh() the new browser's first ALL_FOR_NOW ends a generation, and
 * entries not seen again in it are reported GONE.  So an avahi restart
 * does not make peers flap; an mDNS goodbye (BROWSER_REMOVE) is GONE at
 * once.
 */
#include <errno.h>
#include <net/if.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/alternative.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/strlst.h>

#include <sovmesh/discovery.h>
#include <sovmesh/plugin.h>

#include "avahi_poll.h"
#include "txt.h"

#define SERVICE_TYPE   "_sovmesh._tcp"
#define RETRY_FIRST_MS 1000u
#define RETRY_MAX_MS   60000u
#define MAX_RENAMES    32 /* collisions in a row before we give up */

typedef struct mdns mdns;

typedef struct mdns_peer {
	struct mdns_peer *next;
	mdns *m;
	char *key; /* instance_id */
	AvahiServiceResolver *resolver;
	unsigned gen; /* browse generation that last saw it */
	int reported; /* APPEARED sent, GONE not yet */
	/* What was last reported. */
	char address[AVAHI_ADDRESS_STR_MAX];
	uint16_t port;
	uint32_t ifindex;
	mdns_txt txt;
	/* To resolve again after a failed lookup (e.g. while the peer's
	 * address changes): what the browser reported, and a backoff timer. */
	AvahiIfIndex iface;
	AvahiProtocol proto;
	char *name, *type, *domain;
	sovmesh_timer *resolve_timer;
	unsigned resolve_delay_ms;
} mdns_peer;

struct mdns {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	mdns_poll *poll;

	AvahiClient *client;
	AvahiEntryGroup *group;
	AvahiServiceBrowser *browser;
	sovmesh_timer *retry_timer;
	unsigned retry_ms;
	unsigned gen; /* current browse generation */
	int gen_done; /* its ALL_FOR_NOW came */
	int started;
	int outage_warned; /* an outage is in progress and was logged */
	unsigned renames;  /* collisions since the last ESTABLISHED */

	/* What we announce. */
	char *node_name;
	char *service_name; /* node_name, or Avahi's alternative after a collision */
	char fingerprint[MDNS_TXT_FP_LEN + 1];
	uint16_t peer_port;
	uint16_t pairing_port;
	uint32_t proto_version;

	const sovmesh_discovery_sink *sink;
	void *ctx;
	mdns_peer *peers;
};

#define LOG(m, level, ...) (m)->api->log((m)->host, (level), __VA_ARGS__)

static void client_connect(mdns *m);
static void publish(mdns *m);

/* ---- outage and retry -------------------------------------------------- */

static void outage(mdns *m, const char *why)
{
	if (!m->outage_warned) {
		LOG(m, SOVMESH_LOG_WARNING,
		    "avahi-daemon is not available (%s); mDNS discovery paused, retrying "
		    "(other discovery keeps working)",
		    why);
		m->outage_warned = 1;
	} else {
		LOG(m, SOVMESH_LOG_DEBUG, "avahi-daemon still not available (%s)", why);
	}
}

static void peer_free(mdns_peer *p)
{
	if (p->resolver)
		avahi_service_resolver_free(p->resolver);
	if (p->resolve_timer)
		p->m->api->timer_stop(p->m->host, p->resolve_timer);
	free(p->name);
	free(p->type);
	free(p->domain);
	free(p->key);
	free(p);
}

/* Free every Avahi object and the client; peer entries stay. */
static void client_teardown(mdns *m)
{
	for (mdns_peer *p = m->peers; p; p = p->next) {
		if (p->resolver)
			avahi_service_resolver_free(p->resolver);
		p->resolver = NULL;
	}
	if (m->browser)
		avahi_service_browser_free(m->browser);
	m->browser = NULL;
	if (m->group)
		avahi_entry_group_free(m->group);
	m->group = NULL;
	if (m->client)
		avahi_client_free(m->client);
	m->client = NULL;
}

static void on_retry(void *ud)
{
	mdns *m = ud;
	m->api->timer_stop(m->host, m->retry_timer);
	m->retry_timer = NULL;
	client_teardown(m);
	client_connect(m);
}

static void schedule_retry(mdns *m)
{
	if (m->retry_timer || !m->started)
		return;
	if (m->retry_ms == 0)
		m->retry_ms = RETRY_FIRST_MS;
	m->retry_timer = m->api->timer_start(m->host, m->retry_ms, 0, on_retry, m);
	if (!m->retry_timer)
		LOG(m, SOVMESH_LOG_ERROR, "cannot start the avahi retry timer: out of memory");
	m->retry_ms = m->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : m->retry_ms * 2;
}

/* ---- peers ------------------------------------------------------------- */

static void emit(mdns *m, sovmesh_peer_event ev, const mdns_peer *p)
{
	if (!m->sink || !m->sink->peer_event)
		return;
	sovmesh_discovered_peer dp = {
	    .size = sizeof(dp),
	    .instance_id = p->key,
	};
	if (ev != SOVMESH_PEER_GONE) {
		dp.node_name = p->txt.name;
		dp.fingerprint = p->txt.fingerprint;
		dp.address = p->address;
		dp.port = p->port;
		dp.proto_version = p->txt.version;
		dp.ifindex = p->ifindex;
		dp.pairing_port = p->txt.pairing_port;
	}
	m->sink->peer_event(m->ctx, ev, &dp);
}

static void peer_gone(mdns *m, mdns_peer *p)
{
	if (p->reported) {
		p->reported = 0;
		emit(m, SOVMESH_PEER_GONE, p);
	}
}

static mdns_peer *peer_find(mdns *m, const char *key, mdns_peer ***link)
{
	mdns_peer **pp = &m->peers;
	for (; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->key, key) == 0) {
			if (link)
				*link = pp;
			return *pp;
		}
	}
	return NULL;
}

static void peer_key(char *buf, size_t len, AvahiIfIndex iface, AvahiProtocol proto,
                     const char *name)
{
	char ifname[IF_NAMESIZE] = "";
	if (iface < 0 || !if_indextoname((unsigned)iface, ifname))
		snprintf(ifname, sizeof(ifname), "if%d", (int)iface);
	snprintf(buf, len, "%s/%s/%s", ifname, proto == AVAHI_PROTO_INET6 ? "ipv6" : "ipv4", name);
}

/* Report every entry the finished generation did not see again. */
static void reconcile(mdns *m)
{
	mdns_peer **pp = &m->peers;
	while (*pp) {
		mdns_peer *p = *pp;
		if (p->gen != m->gen) {
			*pp = p->next;
			LOG(m, SOVMESH_LOG_DEBUG, "'%s' is no longer announced", p->key);
			peer_gone(m, p);
			peer_free(p);
		} else {
			pp = &p->next;
		}
	}
}

static void on_resolve(AvahiServiceResolver *r, AvahiIfIndex iface, AvahiProtocol proto,
                       AvahiResolverEvent event, const char *name, const char *type,
                       const char *domain, const char *host_name, const AvahiAddress *a,
                       uint16_t port, AvahiStringList *txt, AvahiLookupResultFlags flags, void *ud);

/* (Re)start the resolver of a tracked service. */
static void start_resolver(mdns_peer *p)
{
	mdns *m = p->m;
	if (p->resolver || !m->client || !p->name)
		return;
	p->resolver = avahi_service_resolver_new(m->client, p->iface, p->proto, p->name, p->type,
	                                         p->domain, p->proto, 0, on_resolve, p);
	if (!p->resolver)
		LOG(m, SOVMESH_LOG_WARNING, "cannot resolve '%s': %s", p->key,
		    avahi_strerror(avahi_client_errno(m->client)));
}

static void on_resolve_timer(void *ud)
{
	mdns_peer *p = ud;
	p->m->api->timer_stop(p->m->host, p->resolve_timer);
	p->resolve_timer = NULL;
	start_resolver(p);
}

static void schedule_resolve(mdns_peer *p)
{
	if (p->resolve_timer)
		return;
	p->resolve_delay_ms = p->resolve_delay_ms ? p->resolve_delay_ms * 2 : 1000;
	if (p->resolve_delay_ms > 30000)
		p->resolve_delay_ms = 30000;
	p->resolve_timer =
	    p->m->api->timer_start(p->m->host, p->resolve_delay_ms, 0, on_resolve_timer, p);
}

static void on_resolve(AvahiServiceResolver *r, AvahiIfIndex iface, AvahiProtocol proto,
                       AvahiResolverEvent event, const char *name, const char *type,
                       const char *domain, const char *host_name, const AvahiAddress *a,
                       uint16_t port, AvahiStringList *txt, AvahiLookupResultFlags flags, void *ud)
{
	mdns_peer *p = ud;
	mdns *m = p->m;
	(void)proto, (void)name, (void)type, (void)domain, (void)host_name, (void)flags;

	if (event != AVAHI_RESOLVER_FOUND) {
		LOG(m, SOVMESH_LOG_DEBUG, "cannot resolve '%s': %s", p->key,
		    avahi_strerror(avahi_client_errno(avahi_service_resolver_get_client(r))));
		/* Freeing a resolver in its callback is Avahi's own pattern.  The
		 * browser still lists the service (it would have said goodbye),
		 * so try again with backoff: a peer whose address is changing
		 * answers a little later. */
		avahi_service_resolver_free(r);
		p->resolver = NULL;
		peer_gone(m, p);
		schedule_resolve(p);
		return;
	}
	p->resolve_delay_ms = 0;

	/* Each string takes >= 1 wire byte: more than the total limit in
	 * strings cannot pass, so do not even allocate for them. */
	unsigned count = txt ? avahi_string_list_length(txt) : 0;
	mdns_txt t;
	char why[160];
	int rc;
	if (count > MDNS_TXT_MAX_TOTAL) {
		rc = -EBADMSG;
		snprintf(why, sizeof(why), "TXT record has %u strings", count);
	} else {
		mdns_txt_item *items = calloc(count ? count : 1, sizeof(*items));
		if (!items) {
			LOG(m, SOVMESH_LOG_ERROR, "out of memory reading the TXT record of '%s'",
			    p->key);
			return;
		}
		size_t n = 0;
		for (AvahiStringList *l = txt; l && n < count; l = avahi_string_list_get_next(l)) {
			items[n].data = avahi_string_list_get_text(l);
			items[n].len = avahi_string_list_get_size(l);
			n++;
		}
		rc = mdns_txt_parse(items, n, &t, why, sizeof(why));
		free(items);
	}
	if (rc < 0) {
		LOG(m, SOVMESH_LOG_DEBUG, "ignoring '%s': %s", p->key, why);
		peer_gone(m, p);
		return;
	}
	if (strcmp(t.fingerprint, m->fingerprint) == 0) {
		LOG(m, SOVMESH_LOG_DEBUG, "ignoring '%s': it is this node", p->key);
		return;
	}
	char addr[AVAHI_ADDRESS_STR_MAX];
	if (!a || !avahi_address_snprint(addr, sizeof(addr), a)) {
		LOG(m, SOVMESH_LOG_DEBUG, "ignoring '%s': no usable address", p->key);
		return;
	}
	uint32_t ifindex = iface > 0 ? (uint32_t)iface : 0;
	int changed = strcmp(addr, p->address) || port != p->port || ifindex != p->ifindex ||
	              memcmp(&t, &p->txt, sizeof(t)) != 0;
	if (p->reported && !changed)
		return;
	memcpy(p->address, addr, sizeof(addr));
	p->port = port;
	p->ifindex = ifindex;
	p->txt = t;
	sovmesh_peer_event ev = p->reported ? SOVMESH_PEER_CHANGED : SOVMESH_PEER_APPEARED;
	p->reported = 1;
	LOG(m, SOVMESH_LOG_DEBUG, "%s '%s' (%s) at %s port %u",
	    ev == SOVMESH_PEER_APPEARED ? "found" : "changed", p->key, t.name, addr, port);
	emit(m, ev, p);
}

static void on_browse(AvahiServiceBrowser *b, AvahiIfIndex iface, AvahiProtocol proto,
                      AvahiBrowserEvent event, const char *name, const char *type,
                      const char *domain, AvahiLookupResultFlags flags, void *ud)
{
	mdns *m = ud;
	char key[IF_NAMESIZE + 8 + 256]; /* a service name is <= 63 bytes */
	mdns_peer *p, **link;

	switch (event) {
	case AVAHI_BROWSER_NEW:
		/* Not skipped when flagged OUR_OWN: after a name collision the
		 * name we tried first belongs to a namesake device, and Avahi
		 * reports it under the same key.  on_resolve drops our own
		 * service by fingerprint. */
		(void)flags;
		peer_key(key, sizeof(key), iface, proto, name);
		p = peer_find(m, key, NULL);
		if (!p) {
			p = calloc(1, sizeof(*p));
			if (!p || !(p->key = strdup(key))) {
				free(p);
				LOG(m, SOVMESH_LOG_ERROR, "out of memory tracking '%s'", key);
				return;
			}
			p->m = m;
			p->next = m->peers;
			m->peers = p;
		}
		p->gen = m->gen;
		if (!p->name) {
			p->iface = iface;
			p->proto = proto;
			p->name = strdup(name);
			p->type = strdup(type);
			p->domain = strdup(domain);
			if (!p->name || !p->type || !p->domain) {
				LOG(m, SOVMESH_LOG_ERROR, "out of memory tracking '%s'", key);
				return;
			}
		}
		start_resolver(p);
		break;
	case AVAHI_BROWSER_REMOVE:
		peer_key(key, sizeof(key), iface, proto, name);
		p = peer_find(m, key, &link);
		if (p) {
			*link = p->next;
			LOG(m, SOVMESH_LOG_DEBUG, "'%s' said goodbye", key);
			peer_gone(m, p);
			peer_free(p);
		}
		break;
	case AVAHI_BROWSER_ALL_FOR_NOW:
		if (!m->gen_done) {
			m->gen_done = 1;
			reconcile(m);
		}
		break;
	case AVAHI_BROWSER_CACHE_EXHAUSTED:
		break;
	case AVAHI_BROWSER_FAILURE:
		/* A dead client is replaced by the retry timer. */
		LOG(m, SOVMESH_LOG_WARNING, "browsing for %s failed: %s", SERVICE_TYPE,
		    avahi_strerror(avahi_client_errno(avahi_service_browser_get_client(b))));
		break;
	}
}

static void browse_start(mdns *m)
{
	if (m->browser)
		avahi_service_browser_free(m->browser);
	m->gen++;
	m->gen_done = 0;
	m->browser = avahi_service_browser_new(m->client, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC,
	                                       SERVICE_TYPE, NULL, 0, on_browse, m);
	if (!m->browser)
		LOG(m, SOVMESH_LOG_WARNING, "cannot browse for %s: %s", SERVICE_TYPE,
		    avahi_strerror(avahi_client_errno(m->client)));
}

/* ---- publishing -------------------------------------------------------- */

static AvahiStringList *build_txt(const mdns *m)
{
	/* avahi_string_list_add prepends: add in reverse of the wire order. */
	AvahiStringList *l = NULL;
	if (m->pairing_port)
		l = avahi_string_list_add_printf(l, "pair=%u", (unsigned)m->pairing_port);
	l = avahi_string_list_add_printf(l, "name=%s", m->node_name);
	l = avahi_string_list_add_printf(l, "fp=%s", m->fingerprint);
	l = avahi_string_list_add_printf(l, "v=%u", (unsigned)m->proto_version);
	return l;
}

static int rename_service(mdns *m)
{
	if (++m->renames > MAX_RENAMES) {
		LOG(m, SOVMESH_LOG_ERROR,
		    "service name '%s' still collides after %d renames; not publishing",
		    m->service_name, MAX_RENAMES);
		return -EEXIST;
	}
	char *alt = avahi_alternative_service_name(m->service_name);
	char *copy = alt ? strdup(alt) : NULL;
	avahi_free(alt);
	if (!copy)
		return -ENOMEM;
	LOG(m, SOVMESH_LOG_NOTICE, "service name '%s' is taken on the LAN; using '%s'",
	    m->service_name, copy);
	free(m->service_name);
	m->service_name = copy;
	return 0;
}

static void on_group(AvahiEntryGroup *g, AvahiEntryGroupState state, void *ud)
{
	mdns *m = ud;
	m->group = g;
	switch (state) {
	case AVAHI_ENTRY_GROUP_ESTABLISHED:
		m->renames = 0;
		LOG(m, SOVMESH_LOG_INFO, "published '%s' (%s) on port %u", m->service_name,
		    SERVICE_TYPE, (unsigned)m->peer_port);
		break;
	case AVAHI_ENTRY_GROUP_COLLISION:
		if (rename_service(m) == 0) {
			avahi_entry_group_reset(g);
			publish(m);
		}
		break;
	case AVAHI_ENTRY_GROUP_FAILURE:
		LOG(m, SOVMESH_LOG_WARNING, "publishing '%s' failed: %s", m->service_name,
		    avahi_strerror(avahi_client_errno(avahi_entry_group_get_client(g))));
		break;
	case AVAHI_ENTRY_GROUP_UNCOMMITED:
	case AVAHI_ENTRY_GROUP_REGISTERING:
		break;
	}
}

/* Add our service to an empty group and commit; renames on a local
 * collision.  Only while the client is RUNNING. */
static void publish(mdns *m)
{
	if (!m->client || avahi_client_get_state(m->client) != AVAHI_CLIENT_S_RUNNING)
		return;
	if (!m->group) {
		m->group = avahi_entry_group_new(m->client, on_group, m);
		if (!m->group) {
			LOG(m, SOVMESH_LOG_WARNING, "cannot publish: %s",
			    avahi_strerror(avahi_client_errno(m->client)));
			return;
		}
	}
	if (!avahi_entry_group_is_empty(m->group))
		return;
	AvahiStringList *txt = build_txt(m);
	if (!txt) {
		LOG(m, SOVMESH_LOG_ERROR, "cannot publish: out of memory");
		return;
	}
	int rc;
	for (;;) {
		rc = avahi_entry_group_add_service_strlst(
		    m->group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC, 0, m->service_name, SERVICE_TYPE,
		    NULL, NULL, m->peer_port, txt);
		if (rc != AVAHI_ERR_COLLISION || rename_service(m) != 0)
			break;
	}
	avahi_string_list_free(txt);
	if (rc == 0)
		rc = avahi_entry_group_commit(m->group);
	if (rc < 0)
		LOG(m, SOVMESH_LOG_WARNING, "cannot publish '%s': %s", m->service_name,
		    avahi_strerror(rc));
}

/* ---- the client -------------------------------------------------------- */

static void on_client(AvahiClient *c, AvahiClientState state, void *ud)
{
	mdns *m = ud;
	/* Called from inside avahi_client_new too, before it returns. */
	m->client = c;
	switch (state) {
	case AVAHI_CLIENT_S_RUNNING:
		if (m->outage_warned)
			LOG(m, SOVMESH_LOG_NOTICE,
			    "avahi-daemon is available again; publishing and browsing");
		m->outage_warned = 0;
		m->retry_ms = 0;
		publish(m);
		if (!m->browser)
			browse_start(m);
		break;
	case AVAHI_CLIENT_S_COLLISION:
	case AVAHI_CLIENT_S_REGISTERING:
		/* Host name changing: withdraw; RUNNING publishes again. */
		if (m->group)
			avahi_entry_group_reset(m->group);
		break;
	case AVAHI_CLIENT_CONNECTING:
		outage(m, "waiting for it to start");
		break;
	case AVAHI_CLIENT_FAILURE:
		outage(m, avahi_strerror(avahi_client_errno(c)));
		schedule_retry(m);
		break;
	}
}

static void client_connect(mdns *m)
{
	int error = 0;
	AvahiClient *c =
	    avahi_client_new(mdns_poll_get(m->poll), AVAHI_CLIENT_NO_FAIL, on_client, m, &error);
	if (!c) {
		/* on_client may have stored it before failing. */
		m->client = NULL;
		outage(m, avahi_strerror(error));
		schedule_retry(m);
		return;
	}
	m->client = c;
}

/* ---- ops --------------------------------------------------------------- */

static int take_service(mdns *m, const sovmesh_local_service *svc, sovmesh_error *err)
{
	if (!svc || svc->size < offsetof(sovmesh_local_service, proto_version) + sizeof(uint32_t))
		return sovmesh_fail(err, -EINVAL, "no local service description given");
	const char *name = svc->node_name;
	if (!name || !mdns_txt_name_ok((const uint8_t *)name, strlen(name)))
		return sovmesh_fail(err, -EINVAL,
		                    "node name is not 1..%u bytes of UTF-8 without control "
		                    "characters",
		                    MDNS_TXT_MAX_NAME);
	const char *fp = svc->fingerprint;
	if (!fp || !mdns_txt_fp_ok((const uint8_t *)fp, strlen(fp)))
		return sovmesh_fail(err, -EINVAL, "fingerprint is not %u hex digits",
		                    MDNS_TXT_FP_LEN);
	if (svc->peer_port == 0)
		return sovmesh_fail(err, -EINVAL, "peer port is 0");
	char *copy = strdup(name);
	if (!copy)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	free(m->node_name);
	m->node_name = copy;
	for (size_t i = 0; i <= MDNS_TXT_FP_LEN; i++)
		m->fingerprint[i] =
		    (char)(fp[i] >= 'A' && fp[i] <= 'F' ? fp[i] - 'A' + 'a' : fp[i]);
	m->peer_port = svc->peer_port;
	m->proto_version = svc->proto_version ? svc->proto_version : MDNS_TXT_VERSION;
	m->pairing_port =
	    svc->size >= offsetof(sovmesh_local_service, pairing_port) + sizeof(uint16_t)
	        ? svc->pairing_port
	        : 0;
	return 0;
}

static int mdns_start(void *instance, const sovmesh_local_service *self,
                      const sovmesh_discovery_sink *sink, void *ctx, sovmesh_error *err)
{
	mdns *m = instance;
	if (m->started)
		return sovmesh_fail(err, -EALREADY, "discovery-mdns is already started");
	if (!sink || !sink->peer_event)
		return sovmesh_fail(err, -EINVAL, "no discovery sink given");
	int rc = take_service(m, self, err);
	if (rc < 0)
		return rc;
	free(m->service_name);
	if (!(m->service_name = strdup(m->node_name)))
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	m->sink = sink;
	m->ctx = ctx;
	m->started = 1;
	m->renames = 0;
	client_connect(m);
	return 0;
}

static void mdns_stop(void *instance)
{
	mdns *m = instance;
	if (!m || !m->started)
		return;
	m->started = 0;
	m->sink = NULL;
	m->ctx = NULL;
	if (m->retry_timer)
		m->api->timer_stop(m->host, m->retry_timer);
	m->retry_timer = NULL;
	m->retry_ms = 0;
	client_teardown(m);
	while (m->peers) {
		mdns_peer *p = m->peers;
		m->peers = p->next;
		peer_free(p);
	}
	m->outage_warned = 0;
}

static int mdns_update(void *instance, const sovmesh_local_service *self, sovmesh_error *err)
{
	mdns *m = instance;
	char *old_name = m->node_name; /* ours again on failure */
	uint16_t old_port = m->peer_port;
	m->node_name = NULL;
	int rc = take_service(m, self, err);
	if (rc < 0) {
		m->node_name = old_name;
		return rc;
	}
	int renamed = !old_name || strcmp(old_name, m->node_name) != 0;
	free(old_name);
	if (renamed) {
		char *copy = strdup(m->node_name);
		if (!copy)
			return sovmesh_fail(err, -ENOMEM, "out of memory");
		free(m->service_name);
		m->service_name = copy;
		m->renames = 0;
	}
	if (!m->started || !m->group || avahi_entry_group_is_empty(m->group))
		return 0; /* RUNNING publishes the new facts */
	if (!renamed && old_port == m->peer_port) {
		/* TXT only: update in place, so browsers see a change, not a
		 * goodbye followed by a new peer. */
		AvahiStringList *txt = build_txt(m);
		int arc = txt ? avahi_entry_group_update_service_txt_strlst(
		                    m->group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC, 0,
		                    m->service_name, SERVICE_TYPE, NULL, txt)
		              : AVAHI_ERR_NO_MEMORY;
		avahi_string_list_free(txt);
		if (arc == 0)
			return 0;
		LOG(m, SOVMESH_LOG_DEBUG,
		    "updating the TXT record in place failed (%s); "
		    "publishing again",
		    avahi_strerror(arc));
	}
	avahi_entry_group_reset(m->group);
	publish(m);
	return 0;
}

static void mdns_refresh(void *instance)
{
	mdns *m = instance;
	if (!m->started || !m->client ||
	    avahi_client_get_state(m->client) != AVAHI_CLIENT_S_RUNNING)
		return;
	for (mdns_peer *p = m->peers; p; p = p->next) {
		if (p->resolver)
			avahi_service_resolver_free(p->resolver);
		p->resolver = NULL;
	}
	browse_start(m);
}

static int mdns_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                       sovmesh_error *err)
{
	if (!SOVMESH_HAS_SLOT(api, sovmesh_host_api, log))
		return sovmesh_fail(err, -ENOTSUP, "the host offers no log slot");
	mdns *m = calloc(1, sizeof(*m));
	if (!m)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	m->host = host;
	m->api = api;
	int rc = mdns_poll_new(host, api, &m->poll);
	if (rc < 0) {
		free(m);
		return sovmesh_fail(err, rc, "the host offers no fd watches or timers (%s)",
		                    rc == -ENOTSUP ? "slots missing" : "out of memory");
	}
	*instance = m;
	return 0;
}

static void mdns_destroy(void *instance)
{
	mdns *m = instance;
	if (!m)
		return;
	mdns_stop(m);
	mdns_poll_free(m->poll);
	free(m->node_name);
	free(m->service_name);
	free(m);
}

static const sovmesh_discovery_ops mdns_ops = {
    .size = sizeof(sovmesh_discovery_ops),
    .start = mdns_start,
    .stop = mdns_stop,
    .update = mdns_update,
    .refresh = mdns_refresh,
};

static const sovmesh_plugin_descriptor mdns_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_DISCOVERY,
    .name = "mdns",
    .version = "1.0.0",
    .license = "MIT",
    .description = "mDNS/DNS-SD discovery through avahi-daemon (_sovmesh._tcp)",
    .settings = NULL,
    .create = mdns_create,
    .destroy = mdns_destroy,
    .ops = &mdns_ops,
};

SOVMESH_PLUGIN_DEFINE(mdns_descriptor)
