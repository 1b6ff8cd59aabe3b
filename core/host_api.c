/*
 * The host API table plugins call, and the runtime behind it on the libuv
 * loop.  Each plugin instance gets its own sovmesh_host, which remembers
 * every timer, fd watch and HTTP call it started, so that what a plugin
 * forgets to stop is released (loudly) when the instance goes.
 *
 * Callbacks into plugins may remove handles, including the one being
 * dispatched: handle memory is freed only from uv_close() callbacks or,
 * for fd watches, after the dispatch loop over that fd has finished.
 */
#include "host.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "adapter.h"
#include "http_client.h"
#include "log.h"
#include "random.h"
#include "tensor_set.h"

typedef struct fd_poll fd_poll;
typedef struct work_req work_req;
typedef struct subscription subscription;

struct sovmesh_timer {
	uv_timer_t uv;
	host_runtime *rt;
	void (*cb)(void *ud);
	void *ud;
	sovmesh_timer *prev, *next; /* the owning host's list */
};

struct sovmesh_watch {
	fd_poll *fp;
	unsigned events; /* SOVMESH_WATCH_READ | SOVMESH_WATCH_WRITE */
	void (*cb)(void *ud, int fd, unsigned revents);
	void *ud;
	int removed;                /* freed after the current dispatch */
	int fresh;                  /* added during the current dispatch */
	sovmesh_watch *fd_next;     /* the fd's list, in order of addition */
	sovmesh_watch *prev, *next; /* the owning host's list */
};

/* libuv allows one poll handle per fd, so watches on one fd share it. */
struct fd_poll {
	uv_poll_t uv;
	host_runtime *rt;
	int fd;
	int uv_events;   /* what the handle was last started with */
	int dispatching; /* inside on_fd_poll */
	sovmesh_watch *watches;
	fd_poll *next;
};

struct sovmesh_http_call {
	sovmesh_host *host;
	http_call *inner;
	sovmesh_http_callbacks cbs;
	void *ud;
	sovmesh_http_call *prev, *next;
};

struct work_req {
	uv_work_t req;
	host_runtime *rt;
	sovmesh_host *host; /* NULL once the instance is gone */
	void (*work)(void *ud);
	void (*done)(void *ud, int cancelled);
	void *ud;
	work_req *prev, *next;
};

struct subscription {
	char *name;
	sovmesh_host *host;
	void (*cb)(void *ud, const char *name, const char *json);
	void *ud;
	int removed;
	subscription *next;
};

struct sovmesh_host {
	host_runtime *rt;
	char *label; /* "agg-fedavg": the log source */
	const plugin_settings *settings;
	char *state_path; /* made on first plugin_state_dir() */
	sovmesh_timer *timers;
	sovmesh_watch *watches;
	sovmesh_http_call *calls;
	sovmesh_host *prev, *next;
};

struct host_runtime {
	uv_loop_t *loop;
	char *state_dir;
	char *node_name;
	http_client *http;
	int http_open;
	size_t pending_closes;
	fd_poll *polls;
	work_req *works;
	subscription *subs;
	int emitting;
	sovmesh_host *hosts;
};

/* Doubly linked list helpers for the host-owned lists. */
#define LIST_PUSH(head, item)                                                                      \
	do {                                                                                       \
		(item)->prev = NULL;                                                               \
		(item)->next = (head);                                                             \
		if (head)                                                                          \
			(head)->prev = (item);                                                     \
		(head) = (item);                                                                   \
	} while (0)
#define LIST_UNLINK(head, item)                                                                    \
	do {                                                                                       \
		if ((item)->prev)                                                                  \
			(item)->prev->next = (item)->next;                                         \
		else                                                                               \
			(head) = (item)->next;                                                     \
		if ((item)->next)                                                                  \
			(item)->next->prev = (item)->prev;                                         \
		(item)->prev = (item)->next = NULL;                                                \
	} while (0)

/* ---- logging and memory ------------------------------------------------ */

static void slot_vlog(sovmesh_host *host, sovmesh_log_level level, const char *fmt, va_list ap)
{
	log_vmsg((int)level, host ? host->label : NULL, fmt, ap);
}

static void slot_log(sovmesh_host *host, sovmesh_log_level level, const char *fmt, ...)
    SOVMESH_PRINTF(3, 4);
static void slot_log(sovmesh_host *host, sovmesh_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	slot_vlog(host, level, fmt, ap);
	va_end(ap);
}

static void *slot_alloc(sovmesh_host *host, size_t size)
{
	(void)host;
	return malloc(size);
}

static void *slot_calloc(sovmesh_host *host, size_t n, size_t size)
{
	(void)host;
	return calloc(n, size);
}

static void *slot_realloc(sovmesh_host *host, void *ptr, size_t size)
{
	(void)host;
	return realloc(ptr, size);
}

static void slot_free(sovmesh_host *host, void *ptr)
{
	(void)host;
	free(ptr);
}

/* ---- time and timers --------------------------------------------------- */

static uint64_t slot_now_ms(sovmesh_host *host)
{
	(void)host;
	/* Not uv_now(): that is cached per loop iteration, and a plugin timing
	 * its own work inside one callback would see no time pass. */
	return uv_hrtime() / 1000000u;
}

static int64_t slot_wall_time(sovmesh_host *host)
{
	(void)host;
	return (int64_t)time(NULL);
}

static void on_handle_closed(uv_handle_t *h)
{
	host_runtime *rt;
	if (h->type == UV_TIMER) {
		sovmesh_timer *t = h->data;
		rt = t->rt;
		free(t);
	} else {
		fd_poll *fp = h->data;
		rt = fp->rt;
		free(fp);
	}
	rt->pending_closes--;
}

static void on_timer(uv_timer_t *h)
{
	sovmesh_timer *t = h->data;
	/* t may be stopped (closed) inside cb; it is freed only later. */
	t->cb(t->ud);
}

static sovmesh_timer *slot_timer_start(sovmesh_host *host, uint64_t timeout_ms, uint64_t repeat_ms,
                                       void (*cb)(void *ud), void *ud)
{
	if (!host || !cb)
		return NULL;
	sovmesh_timer *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->rt = host->rt;
	t->cb = cb;
	t->ud = ud;
	uv_timer_init(host->rt->loop, &t->uv);
	t->uv.data = t;
	uv_timer_start(&t->uv, on_timer, timeout_ms, repeat_ms);
	LIST_PUSH(host->timers, t);
	return t;
}

static void timer_release(sovmesh_host *host, sovmesh_timer *t)
{
	LIST_UNLINK(host->timers, t);
	uv_timer_stop(&t->uv);
	host->rt->pending_closes++;
	uv_close((uv_handle_t *)&t->uv, on_handle_closed);
}

static void slot_timer_stop(sovmesh_host *host, sovmesh_timer *t)
{
	if (!host || !t)
		return;
	timer_release(host, t);
}

/* ---- fd watches -------------------------------------------------------- */

static void on_fd_poll(uv_poll_t *h, int status, int uv_events);

static void fp_close(fd_poll *fp)
{
	host_runtime *rt = fp->rt;
	for (fd_poll **pp = &rt->polls; *pp; pp = &(*pp)->next) {
		if (*pp == fp) {
			*pp = fp->next;
			break;
		}
	}
	uv_poll_stop(&fp->uv);
	rt->pending_closes++;
	uv_close((uv_handle_t *)&fp->uv, on_handle_closed);
}

/*
 * Start the poll handle with the union of the live watches' events.  After
 * an error libuv has stopped the handle; it is restarted only when a
 * plugin adds or changes a watch (`restart`), not after every dispatch,
 * so a plugin that ignores SOVMESH_WATCH_ERROR does not spin the loop.
 */
static int fp_update(fd_poll *fp, int restart)
{
	unsigned want = 0;
	for (sovmesh_watch *w = fp->watches; w; w = w->fd_next)
		if (!w->removed)
			want |= w->events;
	int uv_events = 0;
	/* Hang-up is asked for only with READ: a write-only watcher would
	 * otherwise be woken over and over by a peer that shut down its
	 * side. */
	if (want & SOVMESH_WATCH_READ)
		uv_events |= UV_READABLE | UV_DISCONNECT;
	if (want & SOVMESH_WATCH_WRITE)
		uv_events |= UV_WRITABLE;
	if (uv_events == fp->uv_events && (!restart || uv_is_active((uv_handle_t *)&fp->uv)))
		return 0;
	fp->uv_events = uv_events;
	if (uv_events == 0)
		return uv_poll_stop(&fp->uv);
	return uv_poll_start(&fp->uv, uv_events, on_fd_poll);
}

/* Free watches removed during a dispatch; close the handle if none is left. */
static void fp_purge(fd_poll *fp)
{
	sovmesh_watch **pp = &fp->watches;
	while (*pp) {
		sovmesh_watch *w = *pp;
		if (w->removed) {
			*pp = w->fd_next;
			free(w);
		} else {
			w->fresh = 0;
			pp = &w->fd_next;
		}
	}
	if (!fp->watches)
		fp_close(fp);
	else
		fp_update(fp, 0);
}

static void on_fd_poll(uv_poll_t *h, int status, int uv_events)
{
	fd_poll *fp = h->data;
	unsigned ready = 0, error = 0;
	if (status < 0) {
		error = SOVMESH_WATCH_ERROR;
	} else {
		if (uv_events & UV_READABLE)
			ready |= SOVMESH_WATCH_READ;
		if (uv_events & UV_WRITABLE)
			ready |= SOVMESH_WATCH_WRITE;
		if (uv_events & UV_DISCONNECT)
			error = SOVMESH_WATCH_ERROR;
	}
	fp->dispatching++;
	for (sovmesh_watch *w = fp->watches; w; w = w->fd_next) {
		if (w->removed || w->fresh || w->events == 0)
			continue;
		unsigned revents = (ready & w->events) | error;
		if (revents)
			w->cb(w->ud, fp->fd, revents);
	}
	fp->dispatching--;
	fp_purge(fp);
}

static sovmesh_watch *slot_watch_add(sovmesh_host *host, int fd, unsigned events,
                                     void (*cb)(void *ud, int fd, unsigned revents), void *ud)
{
	if (!host || fd < 0 || !cb) {
		log_msg(SOVMESH_LOG_ERROR, host ? host->label : NULL,
		        "watch_add: bad arguments (fd %d, callback %s)", fd, cb ? "set" : "NULL");
		return NULL;
	}
	host_runtime *rt = host->rt;
	fd_poll *fp = rt->polls;
	while (fp && fp->fd != fd)
		fp = fp->next;
	int created = 0;
	if (!fp) {
		fp = calloc(1, sizeof(*fp));
		if (!fp)
			return NULL;
		int rc = uv_poll_init(rt->loop, &fp->uv, fd);
		if (rc < 0) {
			log_msg(SOVMESH_LOG_ERROR, host->label, "watch_add: cannot watch fd %d: %s",
			        fd, uv_strerror(rc));
			free(fp);
			return NULL;
		}
		fp->uv.data = fp;
		fp->rt = rt;
		fp->fd = fd;
		fp->next = rt->polls;
		rt->polls = fp;
		created = 1;
	}
	sovmesh_watch *w = calloc(1, sizeof(*w));
	if (!w) {
		if (created)
			fp_close(fp);
		return NULL;
	}
	w->fp = fp;
	w->events = events & (SOVMESH_WATCH_READ | SOVMESH_WATCH_WRITE);
	w->cb = cb;
	w->ud = ud;
	w->fresh = fp->dispatching > 0;
	sovmesh_watch **pp = &fp->watches;
	while (*pp)
		pp = &(*pp)->fd_next;
	*pp = w;
	LIST_PUSH(host->watches, w);
	int rc = fp_update(fp, 1);
	if (rc < 0)
		log_msg(SOVMESH_LOG_ERROR, host->label, "watch_add: cannot poll fd %d: %s", fd,
		        uv_strerror(rc));
	return w;
}

static int slot_watch_update(sovmesh_host *host, sovmesh_watch *w, unsigned events)
{
	if (!host || !w || w->removed)
		return -EINVAL;
	w->events = events & (SOVMESH_WATCH_READ | SOVMESH_WATCH_WRITE);
	if (w->fp->dispatching)
		return 0; /* fp_purge applies it when the dispatch ends */
	return fp_update(w->fp, 1);
}

static void watch_release(sovmesh_host *host, sovmesh_watch *w)
{
	LIST_UNLINK(host->watches, w);
	w->removed = 1;
	fd_poll *fp = w->fp;
	if (!fp->dispatching)
		fp_purge(fp);
}

static void slot_watch_remove(sovmesh_host *host, sovmesh_watch *w)
{
	if (!host || !w || w->removed)
		return;
	watch_release(host, w);
}

/* ---- randomness and blocking work -------------------------------------- */

static int slot_random_bytes(sovmesh_host *host, void *buf, size_t len)
{
	(void)host;
	if (!buf && len)
		return -EINVAL;
	return rng_bytes(buf, len);
}

static void on_work(uv_work_t *req)
{
	work_req *w = req->data;
	w->work(w->ud);
}

static void on_work_done(uv_work_t *req, int status)
{
	work_req *w = req->data;
	host_runtime *rt = w->rt;
	LIST_UNLINK(rt->works, w);
	/* An instance freed with work in flight no longer hears of it. */
	if (w->host && w->done)
		w->done(w->ud, status == UV_ECANCELED);
	free(w);
}

static int slot_queue_work(sovmesh_host *host, void (*work)(void *ud),
                           void (*done)(void *ud, int cancelled), void *ud)
{
	if (!host || !work)
		return -EINVAL;
	work_req *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->rt = host->rt;
	w->host = host;
	w->work = work;
	w->done = done;
	w->ud = ud;
	w->req.data = w;
	int rc = uv_queue_work(host->rt->loop, &w->req, on_work, on_work_done);
	if (rc < 0) {
		free(w);
		return rc;
	}
	LIST_PUSH(host->rt->works, w);
	return 0;
}

/* ---- settings and node facts ------------------------------------------- */

static const char *setting_type_name(sovmesh_setting_type t)
{
	switch (t) {
	case SOVMESH_SETTING_BOOL:
		return "a bool";
	case SOVMESH_SETTING_INT:
		return "an int";
	case SOVMESH_SETTING_DOUBLE:
		return "a double";
	case SOVMESH_SETTING_STRING:
		return "a string";
	}
	return "an unknown type";
}

static const plugin_setting_value *setting_lookup(sovmesh_host *host, const char *name,
                                                  sovmesh_setting_type type)
{
	if (!host)
		return NULL;
	const plugin_setting_value *v = NULL;
	if (host->settings && name)
		v = plugin_settings_get(host->settings, name);
	if (!v) {
		log_msg(SOVMESH_LOG_ERROR, host->label,
		        "plugin bug: read setting '%s' that it did not declare",
		        name ? name : "(null)");
		return NULL;
	}
	if (v->def->type != type) {
		log_msg(SOVMESH_LOG_ERROR, host->label,
		        "plugin bug: read setting '%s', which is %s, as %s", name,
		        setting_type_name(v->def->type), setting_type_name(type));
		return NULL;
	}
	return v;
}

static int slot_setting_bool(sovmesh_host *host, const char *name)
{
	const plugin_setting_value *v = setting_lookup(host, name, SOVMESH_SETTING_BOOL);
	return v ? v->b : 0;
}

static int64_t slot_setting_int(sovmesh_host *host, const char *name)
{
	const plugin_setting_value *v = setting_lookup(host, name, SOVMESH_SETTING_INT);
	return v ? v->i : 0;
}

static double slot_setting_double(sovmesh_host *host, const char *name)
{
	const plugin_setting_value *v = setting_lookup(host, name, SOVMESH_SETTING_DOUBLE);
	return v ? v->d : 0.0;
}

static const char *slot_setting_string(sovmesh_host *host, const char *name)
{
	const plugin_setting_value *v = setting_lookup(host, name, SOVMESH_SETTING_STRING);
	return v ? v->s : NULL;
}

static const char *slot_node_name(sovmesh_host *host)
{
	return host && host->rt->node_name ? host->rt->node_name : "";
}

static const char *slot_plugin_state_dir(sovmesh_host *host)
{
	if (!host || !host->rt->state_dir)
		return NULL;
	if (host->state_path)
		return host->state_path;
	char *path = NULL;
	if (asprintf(&path, "%s/%s", host->rt->state_dir, host->label) < 0)
		return NULL;
	if (mkdir(path, 0700) < 0) {
		int e = errno;
		struct stat st;
		if (e != EEXIST || stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
			log_msg(SOVMESH_LOG_ERROR, host->label,
			        "cannot create state directory %s: %s", path,
			        strerror(e == EEXIST ? ENOTDIR : e));
			free(path);
			return NULL;
		}
	}
	host->state_path = path;
	return path;
}

/* ---- tensor sets and adapters ------------------------------------------ */

static sovmesh_tensor_set *slot_tensor_set_new(sovmesh_host *host, const sovmesh_tensor_set *layout,
                                               size_t count)
{
	(void)host;
	return tset_new(layout, count);
}

static int slot_tensor_init(sovmesh_host *host, sovmesh_tensor_set *set, size_t index,
                            const char *name, sovmesh_dtype dtype, uint32_t ndim,
                            const uint64_t *shape)
{
	(void)host;
	return tset_init_tensor(set, index, name, dtype, ndim, shape);
}

static void slot_tensor_set_free(sovmesh_host *host, sovmesh_tensor_set *set)
{
	(void)host;
	tset_free(set);
}

static int slot_adapter_read(sovmesh_host *host, const char *dir, sovmesh_tensor_set **out,
                             sovmesh_error *err)
{
	(void)host;
	return adapter_read(dir, out, NULL, err);
}

static int slot_adapter_write(sovmesh_host *host, const char *dir, const sovmesh_tensor_set *set,
                              const char *config_json, sovmesh_error *err)
{
	(void)host;
	return adapter_write(dir, set, config_json, err);
}

/* ---- HTTP -------------------------------------------------------------- */

/* The plugin's callbacks run through these so the host can forget the
 * call when it ends.  Nothing touches hc after the plugin's callback
 * returns: the plugin may have cancelled (and so freed) it. */
static void hc_on_status(void *ud, long status)
{
	sovmesh_http_call *hc = ud;
	if (hc->cbs.on_status)
		hc->cbs.on_status(hc->ud, status);
}

static int hc_on_body(void *ud, const char *data, size_t len)
{
	sovmesh_http_call *hc = ud;
	if (hc->cbs.on_body)
		return hc->cbs.on_body(hc->ud, data, len);
	return 0;
}

static void hc_on_done(void *ud, int result, long status, const char *message)
{
	sovmesh_http_call *hc = ud;
	void (*done)(void *, int, long, const char *) = hc->cbs.on_done;
	void *user = hc->ud;
	LIST_UNLINK(hc->host->calls, hc);
	free(hc);
	if (done)
		done(user, result, status, message);
}

static const sovmesh_http_callbacks hc_callbacks = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = hc_on_status,
    .on_body = hc_on_body,
    .on_done = hc_on_done,
};

static sovmesh_http_call *slot_http_request(sovmesh_host *host, const sovmesh_http_request *req,
                                            const sovmesh_http_callbacks *cbs, void *ud,
                                            sovmesh_error *err)
{
	if (!host) {
		sovmesh_fail(err, -EINVAL, "http_request: no host handle");
		return NULL;
	}
	sovmesh_http_call *hc = calloc(1, sizeof(*hc));
	if (!hc) {
		sovmesh_fail(err, -ENOMEM, "http_request: out of memory");
		return NULL;
	}
	hc->host = host;
	hc->ud = ud;
	if (cbs)
		memcpy(&hc->cbs, cbs, cbs->size < sizeof(hc->cbs) ? cbs->size : sizeof(hc->cbs));
	hc->inner = http_client_start(host->rt->http, req, &hc_callbacks, hc, err);
	if (!hc->inner) {
		free(hc);
		return NULL;
	}
	LIST_PUSH(host->calls, hc);
	return hc;
}

static void http_release(sovmesh_host *host, sovmesh_http_call *hc)
{
	LIST_UNLINK(host->calls, hc);
	http_client_cancel(hc->inner);
	free(hc);
}

static void slot_http_cancel(sovmesh_host *host, sovmesh_http_call *hc)
{
	if (!host || !hc)
		return;
	http_release(host, hc);
}

/* ---- events ------------------------------------------------------------ */

static void subs_purge(host_runtime *rt)
{
	subscription **pp = &rt->subs;
	while (*pp) {
		subscription *s = *pp;
		if (s->removed) {
			*pp = s->next;
			free(s->name);
			free(s);
		} else {
			pp = &s->next;
		}
	}
}

static int slot_event_emit(sovmesh_host *host, const char *name, const char *json)
{
	if (!host || !name || !name[0])
		return -EINVAL;
	host_runtime *rt = host->rt;
	if (!json)
		json = "null";
	json_error_t jerr;
	json_t *parsed = json_loads(json, JSON_DECODE_ANY, &jerr);
	if (!parsed) {
		log_msg(SOVMESH_LOG_ERROR, host->label,
		        "event_emit('%s'): payload is not JSON: %s at column %d", name, jerr.text,
		        jerr.column);
		return -EINVAL;
	}
	json_decref(parsed);

	/* Subscribers added by a callback hear only later events. */
	subscription *last = rt->subs;
	while (last && last->next)
		last = last->next;
	rt->emitting++;
	for (subscription *s = rt->subs; s && last; s = s->next) {
		if (!s->removed && strcmp(s->name, name) == 0)
			s->cb(s->ud, name, json);
		if (s == last)
			break;
	}
	if (--rt->emitting == 0)
		subs_purge(rt);
	return 0;
}

static int slot_event_subscribe(sovmesh_host *host, const char *name,
                                void (*cb)(void *ud, const char *name, const char *json), void *ud)
{
	if (!host || !name || !name[0] || !cb)
		return -EINVAL;
	subscription *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->name = strdup(name);
	if (!s->name) {
		free(s);
		return -ENOMEM;
	}
	s->host = host;
	s->cb = cb;
	s->ud = ud;
	subscription **pp = &host->rt->subs;
	while (*pp)
		pp = &(*pp)->next;
	*pp = s;
	return 0;
}

/* ---- the table --------------------------------------------------------- */

static const sovmesh_host_api api_table = {
    .size = sizeof(sovmesh_host_api),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .log = slot_log,
    .vlog = slot_vlog,
    .alloc = slot_alloc,
    .calloc = slot_calloc,
    .realloc = slot_realloc,
    .free = slot_free,
    .now_ms = slot_now_ms,
    .wall_time = slot_wall_time,
    .timer_start = slot_timer_start,
    .timer_stop = slot_timer_stop,
    .watch_add = slot_watch_add,
    .watch_update = slot_watch_update,
    .watch_remove = slot_watch_remove,
    .random_bytes = slot_random_bytes,
    .queue_work = slot_queue_work,
    .setting_bool = slot_setting_bool,
    .setting_int = slot_setting_int,
    .setting_double = slot_setting_double,
    .setting_string = slot_setting_string,
    .node_name = slot_node_name,
    .plugin_state_dir = slot_plugin_state_dir,
    .tensor_set_new = slot_tensor_set_new,
    .tensor_init = slot_tensor_init,
    .tensor_set_free = slot_tensor_set_free,
    .adapter_read = slot_adapter_read,
    .adapter_write = slot_adapter_write,
    .http_request = slot_http_request,
    .http_cancel = slot_http_cancel,
    .event_emit = slot_event_emit,
    .event_subscribe = slot_event_subscribe,
};

const sovmesh_host_api *host_api_table(void)
{
	return &api_table;
}

/* ---- hosts and the runtime --------------------------------------------- */

static sovmesh_host *host_new(host_runtime *rt, const char *label, const plugin_settings *settings)
{
	sovmesh_host *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->label = strdup(label ? label : "plugin");
	if (!h->label) {
		free(h);
		return NULL;
	}
	h->rt = rt;
	h->settings = settings;
	LIST_PUSH(rt->hosts, h);
	return h;
}

/* Release whatever the instance left open; warn if there was anything. */
static void host_free(sovmesh_host *h, const char *when)
{
	host_runtime *rt = h->rt;
	size_t n_timers = 0, n_watches = 0, n_calls = 0, n_work = 0;
	while (h->timers) {
		timer_release(h, h->timers);
		n_timers++;
	}
	while (h->watches) {
		watch_release(h, h->watches);
		n_watches++;
	}
	while (h->calls) {
		http_release(h, h->calls);
		n_calls++;
	}
	for (work_req *w = rt->works; w; w = w->next) {
		if (w->host != h)
			continue;
		w->host = NULL;
		uv_cancel((uv_req_t *)&w->req);
		n_work++;
	}
	for (subscription *s = rt->subs; s; s = s->next)
		if (s->host == h)
			s->removed = 1;
	if (!rt->emitting)
		subs_purge(rt);
	if (n_timers + n_watches + n_calls + n_work > 0) {
		char what[160] = "";
		size_t len = 0;
		const struct {
			size_t n;
			const char *one, *many;
		} items[] = {{n_timers, "timer", "timers"},
		             {n_watches, "fd watch", "fd watches"},
		             {n_calls, "HTTP call", "HTTP calls"},
		             {n_work, "work item", "work items"}};
		for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
			if (items[i].n == 0 || len >= sizeof(what))
				continue;
			len += (size_t)snprintf(what + len, sizeof(what) - len, "%s%zu %s",
			                        len ? ", " : "", items[i].n,
			                        items[i].n == 1 ? items[i].one : items[i].many);
		}
		log_msg(SOVMESH_LOG_WARNING, "host", "plugin %s left %s open %s; released them",
		        h->label, what, when);
	}
	LIST_UNLINK(rt->hosts, h);
	free(h->state_path);
	free(h->label);
	free(h);
}

int host_runtime_new(uv_loop_t *loop, const char *state_dir, const char *node_name,
                     host_runtime **out)
{
	if (!loop || !out)
		return -EINVAL;
	host_runtime *rt = calloc(1, sizeof(*rt));
	if (!rt)
		return -ENOMEM;
	rt->loop = loop;
	if (state_dir && !(rt->state_dir = strdup(state_dir)))
		goto nomem;
	if (node_name && !(rt->node_name = strdup(node_name)))
		goto nomem;
	rt->http = http_client_new(loop);
	if (!rt->http)
		goto nomem;
	rt->http_open = 1;
	*out = rt;
	return 0;
nomem:
	free(rt->state_dir);
	free(rt->node_name);
	free(rt);
	return -ENOMEM;
}

static void on_http_closed(void *ud)
{
	host_runtime *rt = ud;
	rt->http_open = 0;
}

void host_runtime_free(host_runtime *rt)
{
	if (!rt)
		return;
	while (rt->hosts)
		host_free(rt->hosts, "at shutdown (instance never freed)");
	for (work_req *w = rt->works; w; w = w->next)
		uv_cancel((uv_req_t *)&w->req);
	http_client_free(rt->http, on_http_closed, rt);
	rt->http = NULL;
	/* Only our own handles and requests are waited for; closing handles
	 * make the loop iteration non-blocking, and finishing work wakes it. */
	while (rt->pending_closes > 0 || rt->http_open || rt->works)
		uv_run(rt->loop, UV_RUN_ONCE);
	subs_purge(rt);
	free(rt->state_dir);
	free(rt->node_name);
	free(rt);
}

uv_loop_t *host_runtime_loop(host_runtime *rt)
{
	return rt ? rt->loop : NULL;
}

host_runtime *host_get_runtime(sovmesh_host *host)
{
	return host ? host->rt : NULL;
}

int plugin_instance_open(host_runtime *rt, const plugin_search_path *sp, uint32_t kind,
                         const char *name, const char *const *params, size_t n_params,
                         plugin_instance **out, sovmesh_error *err)
{
	loaded_plugin *lp = NULL;
	int r = plugin_load_by_name(sp, kind, name, &lp, err);
	if (r < 0)
		return r;
	plugin_settings *settings = NULL;
	r = plugin_settings_from_params(lp->label, lp->desc->settings, params, n_params, &settings,
	                                err);
	if (r < 0) {
		plugin_release(lp, 1);
		return r;
	}
	return plugin_instance_new(rt, lp, settings, out, err);
}

int plugin_instance_new(host_runtime *rt, loaded_plugin *plugin, plugin_settings *settings,
                        plugin_instance **out, sovmesh_error *err)
{
	const char *path = plugin && plugin->path ? plugin->path : "(plugin)";
	plugin_instance *pi = NULL;
	int rc;
	if (!rt || !plugin || !plugin->desc || !plugin->desc->create || !out) {
		rc = sovmesh_fail(err, -EINVAL, "%s: cannot create an instance: no create()", path);
		goto fail;
	}
	pi = calloc(1, sizeof(*pi));
	if (!pi) {
		rc = sovmesh_fail(err, -ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	pi->host = host_new(rt, plugin->label, settings);
	if (!pi->host) {
		rc = sovmesh_fail(err, -ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	sovmesh_error perr = {0};
	void *instance = NULL;
	rc = plugin->desc->create(pi->host, host_api_table(), &instance, &perr);
	if (rc != 0) {
		if (rc > 0)
			rc = -EINVAL; /* a plugin bug; still a failure */
		sovmesh_fail(err, rc, "%s: create failed: %s", path,
		             perr.message[0] ? perr.message : "(the plugin gave no reason)");
		host_free(pi->host, "after a failed create()");
		pi->host = NULL;
		goto fail;
	}
	pi->plugin = plugin;
	pi->settings = settings;
	pi->instance = instance;
	*out = pi;
	return 0;
fail:
	free(pi);
	if (settings)
		plugin_settings_free(settings);
	if (plugin)
		plugin_release(plugin, 0);
	return rc;
}

void plugin_instance_free(plugin_instance *pi)
{
	if (!pi)
		return;
	if (pi->plugin && pi->plugin->desc && pi->plugin->desc->destroy)
		pi->plugin->desc->destroy(pi->instance);
	if (pi->host)
		host_free(pi->host, "after destroy()");
	if (pi->settings)
		plugin_settings_free(pi->settings);
	if (pi->plugin)
		plugin_release(pi->plugin, 0);
	free(pi);
}
