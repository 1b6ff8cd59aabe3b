/* SPDX-License-Identifier: MIT */
/*
 * An AvahiPoll over the sovmesh host API (fd watches and timers), so that
 * avahi-client, and the libdbus under it, run on the core's event loop.
 */
#ifndef SOVMESH_MDNS_AVAHI_POLL_H
#define SOVMESH_MDNS_AVAHI_POLL_H

#include <avahi-common/watch.h>
#include <sovmesh/plugin.h>

typedef struct mdns_poll mdns_poll;

/*
 * A new adapter calling `api` with `host` (both borrowed, must outlive
 * it).  The api needs watch_add/update/remove and timer_start/stop.
 * 0 with *out set, -ENOTSUP when a slot is missing, -ENOMEM.  Loop
 * thread only.
 */
int mdns_poll_new(sovmesh_host *host, const sovmesh_host_api *api, mdns_poll **out);

/* The AvahiPoll to hand to avahi_client_new; owned by `p`. */
const AvahiPoll *mdns_poll_get(mdns_poll *p);

/* Number of watches and timeouts Avahi has not freed yet (for tests and
 * leak warnings). */
size_t mdns_poll_live(const mdns_poll *p);

/*
 * Free the adapter.  Every AvahiClient using it must be freed first;
 * watches and timeouts still alive (a leak in the caller) are released
 * here.  NULL is a no-op.
 */
void mdns_poll_free(mdns_poll *p);

#endif
