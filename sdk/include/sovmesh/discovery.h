/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — discovery (kind SOVMESH_KIND_DISCOVERY, files
 * discovery-<name>.so).  A discovery plugin publishes this node and
 * reports other nodes appearing, changing address and disappearing.
 * Discovery never confers trust: the core matches what is reported
 * against its trust store by fingerprint and talks to paired peers only
 * over mutual TLS.  Several discovery plugins may run at once.
 */
#ifndef SOVMESH_DISCOVERY_H
#define SOVMESH_DISCOVERY_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What this node announces.  Nothing in it is secret. */
typedef struct sovmesh_local_service {
	uint32_t size;           /* sizeof(sovmesh_local_service) */
	const char *node_name;   /* UTF-8, <= 63 bytes */
	const char *fingerprint; /* 64 lowercase hex chars */
	uint16_t peer_port;      /* the mutual-TLS peer port */
	uint32_t proto_version;  /* peer protocol version */
	/* Appended (ABI 1.0 tables may end before it; check size): the
	 * pairing listener's port while a pairing code is outstanding,
	 * 0 = none.  Announced so `pair join CODE` finds the issuer. */
	uint16_t pairing_port;
} sovmesh_local_service;

typedef enum sovmesh_peer_event {
	SOVMESH_PEER_APPEARED = 1,
	SOVMESH_PEER_CHANGED = 2, /* same instance_id, new address/port/TXT */
	SOVMESH_PEER_GONE = 3,    /* goodbye or expiry; only instance_id set */
} sovmesh_peer_event;

/* A node seen on the network; all strings owned by the plugin and valid
 * only during the callback.  Values come from the network: the core
 * validates them again. */
typedef struct sovmesh_discovered_peer {
	uint32_t size;           /* sizeof(sovmesh_discovered_peer) */
	const char *instance_id; /* stable within this plugin, e.g. service name */
	const char *node_name;   /* may be NULL (static peers) */
	const char *fingerprint; /* may be NULL (static peers) */
	const char *address;     /* numeric IPv4/IPv6 literal */
	uint16_t port;
	uint32_t proto_version; /* 0 if unknown */
	uint32_t ifindex;       /* 0 if unknown; for IPv6 link-local */
	/* Appended (check size): the peer's announced pairing listener port,
	 * 0 = none announced. */
	uint16_t pairing_port;
} sovmesh_discovered_peer;

/* Where a discovery plugin reports.  Loop thread only. */
typedef struct sovmesh_discovery_sink {
	uint32_t size; /* sizeof(sovmesh_discovery_sink) */
	void (*peer_event)(void *ctx, sovmesh_peer_event event,
	                   const sovmesh_discovered_peer *peer);
} sovmesh_discovery_sink;

typedef struct sovmesh_discovery_ops {
	uint32_t size; /* sizeof(sovmesh_discovery_ops) as built */

	/*
	 * Start publishing `self` and browsing; report through sink/ctx (both
	 * valid until stop()).  A missing system service (avahi-daemon) is
	 * not an error here: warn, retry, return 0.  -errno only for
	 * unusable configuration.
	 */
	int (*start)(void *instance, const sovmesh_local_service *self,
	             const sovmesh_discovery_sink *sink, void *ctx, sovmesh_error *err);
	/* Stop publishing and browsing; no sink call follows.  May be NULL. */
	void (*stop)(void *instance);
	/* The announced facts changed (name, port).  May be NULL. */
	int (*update)(void *instance, const sovmesh_local_service *self, sovmesh_error *err);
	/* Forget peer state and browse again now (user pressed refresh).
	 * May be NULL. */
	void (*refresh)(void *instance);
} sovmesh_discovery_ops;

#ifdef __cplusplus
}
#endif
#endif
