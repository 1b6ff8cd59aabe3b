/* SPDX-License-Identifier: MIT */
/*
 * AvahiPoll on the host API.  Three things make this more than a table of
 * forwarders:
 *   - Avahi timeouts are absolute gettimeofday() times; host timers are
 *     relative, so each (re)arm converts against the wall clock now.
 *   - libdbus may watch one fd for read and for write with two watches;
 *     the host merges several watches on one fd, so each AvahiWatch is
 *     simply one host watch.
 *   - Avahi frees watches and timeouts inside their own callbacks.  The
 *     host allows removing a watch or stopping a timer inside its
 *     callback, and our trampolines never touch the object after calling
 *     Avahi, so an object can be freed at once.
 */
#include "avahi_poll.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/time.h>

struct AvahiWatch {
	mdns_poll *p;
	sovmesh_watch *hw; /* never NULL: watch_new fails instead */
	int fd;
	AvahiWatchEvent events;      /* requested */
	AvahiWatchEvent last_events; /* of the last dispatch */
	AvahiWatchCallback cb;
	void *ud;
	AvahiWatch *prev, *next;
};

struct AvahiTimeout {
	mdns_poll *p;
	sovmesh_timer *timer; /* NULL while disabled */
	AvahiTimeoutCallback cb;
	void *ud;
	AvahiTimeout *prev, *next;
};

struct mdns_poll {
	AvahiPoll poll; /* first: Avahi hands back &poll, userdata points to us */
	sovmesh_host *host;
	const sovmesh_host_api *api;
	AvahiWatch *watches;
	AvahiTimeout *timeouts;
	size_t live;
};

#define LIST_PUSH(head, x)                                                                         \
	do {                                                                                       \
		(x)->prev = NULL;                                                                  \
		(x)->next = (head);                                                                \
		if (head)                                                                          \
			(head)->prev = (x);                                                        \
		(head) = (x);                                                                      \
	} while (0)
#define LIST_UNLINK(head, x)                                                                       \
	do {                                                                                       \
		if ((x)->prev)                                                                     \
			(x)->prev->next = (x)->next;                                               \
		else                                                                               \
			(head) = (x)->next;                                                        \
		if ((x)->next)                                                                     \
			(x)->next->prev = (x)->prev;                                               \
	} while (0)

/* ---- watches ----------------------------------------------------------- */

static unsigned to_host_events(AvahiWatchEvent e)
{
	unsigned ev = 0;
	if (e & AVAHI_WATCH_IN)
		ev |= SOVMESH_WATCH_READ;
	if (e & AVAHI_WATCH_OUT)
		ev |= SOVMESH_WATCH_WRITE;
	return ev;
}

static void on_host_watch(void *ud, int fd, unsigned revents)
{
	AvahiWatch *w = ud;
	AvahiWatchEvent ev = 0;
	if (revents & SOVMESH_WATCH_READ)
		ev |= AVAHI_WATCH_IN;
	if (revents & SOVMESH_WATCH_WRITE)
		ev |= AVAHI_WATCH_OUT;
	/* The host folds error and hang-up into one bit; libdbus reads what
	 * is left before it acts on either, so reporting both is safe. */
	if (revents & SOVMESH_WATCH_ERROR)
		ev |= AVAHI_WATCH_ERR | AVAHI_WATCH_HUP;
	w->last_events = ev;
	/* w may be freed inside cb: nothing touches it afterwards. */
	w->cb(w, fd, ev, w->ud);
}

static AvahiWatch *watch_new(const AvahiPoll *api, int fd, AvahiWatchEvent event,
                             AvahiWatchCallback callback, void *userdata)
{
	mdns_poll *p = api->userdata;
	if (fd < 0 || !callback)
		return NULL;
	AvahiWatch *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->p = p;
	w->fd = fd;
	w->events = event;
	w->cb = callback;
	w->ud = userdata;
	w->hw = p->api->watch_add(p->host, fd, to_host_events(event), on_host_watch, w);
	if (!w->hw) {
		free(w);
		return NULL;
	}
	LIST_PUSH(p->watches, w);
	p->live++;
	return w;
}

static void watch_update(AvahiWatch *w, AvahiWatchEvent event)
{
	w->events = event;
	w->p->api->watch_update(w->p->host, w->hw, to_host_events(event));
}

static AvahiWatchEvent watch_get_events(AvahiWatch *w)
{
	return w->last_events;
}

static void watch_free(AvahiWatch *w)
{
	mdns_poll *p = w->p;
	p->api->watch_remove(p->host, w->hw);
	LIST_UNLINK(p->watches, w);
	p->live--;
	free(w);
}

/* ---- timeouts ---------------------------------------------------------- */

static void on_host_timer(void *ud)
{
	AvahiTimeout *t = ud;
	/* Avahi: once expired, a timeout stays disabled until updated. */
	t->p->api->timer_stop(t->p->host, t->timer);
	t->timer = NULL;
	/* t may be freed or re-armed inside cb: nothing touches it afterwards. */
	t->cb(t, t->ud);
}

/* Milliseconds from now until the absolute time tv, rounded up so the
 * callback never runs before tv; 0 if tv has passed. */
static uint64_t delay_ms(const struct timeval *tv)
{
	struct timeval now;
	gettimeofday(&now, NULL);
	int64_t us = ((int64_t)tv->tv_sec - (int64_t)now.tv_sec) * 1000000 +
	             ((int64_t)tv->tv_usec - (int64_t)now.tv_usec);
	if (us <= 0)
		return 0;
	return (uint64_t)(us + 999) / 1000;
}

static int timeout_arm(AvahiTimeout *t, const struct timeval *tv)
{
	mdns_poll *p = t->p;
	if (t->timer) {
		p->api->timer_stop(p->host, t->timer);
		t->timer = NULL;
	}
	if (!tv)
		return 0;
	t->timer = p->api->timer_start(p->host, delay_ms(tv), 0, on_host_timer, t);
	return t->timer ? 0 : -ENOMEM;
}

static AvahiTimeout *timeout_new(const AvahiPoll *api, const struct timeval *tv,
                                 AvahiTimeoutCallback callback, void *userdata)
{
	mdns_poll *p = api->userdata;
	if (!callback)
		return NULL;
	AvahiTimeout *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->p = p;
	t->cb = callback;
	t->ud = userdata;
	if (timeout_arm(t, tv) < 0) {
		free(t);
		return NULL;
	}
	LIST_PUSH(p->timeouts, t);
	p->live++;
	return t;
}

static void timeout_update(AvahiTimeout *t, const struct timeval *tv)
{
	/* Avahi gives no way to report failure here; out of memory leaves
	 * the timeout disabled, which the host has already logged. */
	(void)timeout_arm(t, tv);
}

static void timeout_free(AvahiTimeout *t)
{
	mdns_poll *p = t->p;
	if (t->timer)
		p->api->timer_stop(p->host, t->timer);
	LIST_UNLINK(p->timeouts, t);
	p->live--;
	free(t);
}

/* ---- the adapter ------------------------------------------------------- */

int mdns_poll_new(sovmesh_host *host, const sovmesh_host_api *api, mdns_poll **out)
{
	if (!api || !out || !SOVMESH_HAS_SLOT(api, sovmesh_host_api, watch_add) ||
	    !SOVMESH_HAS_SLOT(api, sovmesh_host_api, watch_update) ||
	    !SOVMESH_HAS_SLOT(api, sovmesh_host_api, watch_remove) ||
	    !SOVMESH_HAS_SLOT(api, sovmesh_host_api, timer_start) ||
	    !SOVMESH_HAS_SLOT(api, sovmesh_host_api, timer_stop))
		return -ENOTSUP;
	mdns_poll *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->host = host;
	p->api = api;
	p->poll.userdata = p;
	p->poll.watch_new = watch_new;
	p->poll.watch_update = watch_update;
	p->poll.watch_get_events = watch_get_events;
	p->poll.watch_free = watch_free;
	p->poll.timeout_new = timeout_new;
	p->poll.timeout_update = timeout_update;
	p->poll.timeout_free = timeout_free;
	*out = p;
	return 0;
}

const AvahiPoll *mdns_poll_get(mdns_poll *p)
{
	return &p->poll;
}

size_t mdns_poll_live(const mdns_poll *p)
{
	return p ? p->live : 0;
}

void mdns_poll_free(mdns_poll *p)
{
	if (!p)
		return;
	while (p->watches)
		watch_free(p->watches);
	while (p->timeouts)
		timeout_free(p->timeouts);
	free(p);
}
