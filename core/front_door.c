/*
 * The Ollama-compatible front door (front_door.h): Host/Origin checks
 * first, then chat/generate through the router, the informational
 * endpoints through the local backend, and the control API mirror.
 */
#include "front_door.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "hostport.h"
#include "http_server.h"
#include "infer_request.h"
#include "log.h"
#include "web_assets.h"

/* An embedding call has no router timer behind it; this bounds a hung
 * backend for clients that never give up. */
#define EMBED_TIMEOUT_MS (5u * 60u * 1000u)

#define CORS_ALLOW_METHODS "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
#define CORS_ALLOW_HEADERS                                                                         \
	"Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Sovmesh-Token"
#define CORS_EXPOSE_HEADERS "X-Sovmesh-Source, X-Sovmesh-Peer, X-Sovmesh-Degraded"

/* The Network page loads nothing but its own files and talks only to its
 * own origin; no other page may frame it (clickjacking its buttons). */
#define PAGE_CSP                                                                                   \
	"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "          \
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "             \
	"frame-ancestors 'none'"

typedef struct fd_job fd_job;
typedef struct fd_pass fd_pass;

struct front_door {
	uv_loop_t *loop;
	http_server *srv;
	router *router;
	local_backend *lb;
	peer_table *ptable;
	control_api *control;
	http_handler_fn feedback; /* POST /api/feedback; NULL: 404 */
	void *feedback_ud;
	char *token;
	char *version;
	char listen_host[HOSTPORT_HOST_MAX];
	fd_job *jobs;    /* routed chat/generate requests */
	fd_pass *passes; /* open backend pass-through calls */
	bool closing;
	void (*closed)(void *ud);
	void *closed_ud;
};

/* One chat/generate request on its way through the router. */
struct fd_job {
	fd_job *prev, *next;
	front_door *fd;
	http_response *resp;
	router_job *rj;
	sovmesh_gen_kind kind;
	char *model;
	bool stream;
	bool started; /* streamed: the status line is out */
	bool have_source;
	router_source source;
	char peer[128];
	/* "stream": false: the first chunk as sent, and the merge of all of
	 * them should the source send more than one. */
	char *one;
	size_t one_len;
	size_t nchunks;
	json_t *merged;
	uint64_t t0_ns;
};

typedef enum pass_kind {
	PASS_TAGS,
	PASS_SHOW,
	PASS_PS,
	PASS_VERSION,
	PASS_EMBED,
	PASS_EMBEDDINGS,
} pass_kind;

/* One informational or embedding call to the local backend. */
struct fd_pass {
	fd_pass *prev, *next;
	front_door *fd;
	http_response *resp;
	sovmesh_backend_call *call;
	pass_kind kind;
	/* embed */
	json_t *doc; /* the request, which owns model and texts */
	const char *model;
	const char **texts;
	size_t ntexts;
	size_t dimensions; /* 0: as the model gives them */
};

/* --- small helpers --- */

static void send_json(http_response *resp, int status, json_t *doc)
{
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!text) {
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	http_response_send(resp, status, "application/json", text, strlen(text));
	free(text);
}

static void send_errorf(http_response *resp, int status, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static void send_errorf(http_response *resp, int status, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	http_response_send_error(resp, status, msg);
}

/* What to answer for a backend call's status code (backend.h). */
static int backend_http_status(int code)
{
	switch (code) {
	case -ENOENT:
		return 404;
	case -EBUSY:
	case -ECONNREFUSED:
		return 503;
	case -ETIMEDOUT:
		return 504;
	case -EINVAL:
		return 400;
	default:
		return 502;
	}
}

static const char *status_message(const sovmesh_backend_status *st)
{
	if (st->message && *st->message)
		return st->message;
	return st->code ? strerror(-st->code) : "ok";
}

/* "llama3" and "llama3:latest" name the same model (as Ollama says). */
static bool same_model(const char *a, const char *b)
{
	if (strcmp(a, b) == 0)
		return true;
	size_t n = strlen(b);
	if (strncmp(a, b, n) == 0 && strcmp(a + n, ":latest") == 0)
		return true;
	n = strlen(a);
	return strncmp(b, a, n) == 0 && strcmp(b + n, ":latest") == 0;
}

/* The checks infer_request applies to "model", for the endpoints that do
 * not go through it.  NULL when fine, else the reason. */
static const char *model_problem(json_t *v, char *buf, size_t len)
{
	if (!v)
		return "model is required";
	if (!json_is_string(v))
		return "model must be a string";
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	if (n == 0)
		return "model must not be empty";
	if (n > INFER_MODEL_MAX) {
		snprintf(buf, len, "model is longer than %d bytes", INFER_MODEL_MAX);
		return buf;
	}
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return "model must not contain control characters";
	return NULL;
}

/* Parse a request body that must be a JSON object; NULL after answering
 * 400. */
static json_t *body_object(const http_request *req, http_response *resp)
{
	json_error_t jerr;
	json_t *doc = json_loadb(req->body, req->body_len, 0, &jerr);
	if (!doc) {
		send_errorf(resp, 400, "request body is not valid JSON: %s (line %d, column %d)",
		            jerr.text, jerr.line, jerr.column);
		return NULL;
	}
	if (!json_is_object(doc)) {
		json_decref(doc);
		http_response_send_error(resp, 400, "request body must be a JSON object");
		return NULL;
	}
	return doc;
}

/* --- Host and Origin (DNS rebinding, other sites' pages) --- */

/* Split "host", "host:port", "[v6]" or "[v6]:port" into the bare host. */
static bool split_host(const char *s, char *host, size_t hostlen)
{
	const char *h = s, *end;
	size_t hl;
	if (*s == '[') {
		end = strchr(s, ']');
		if (!end)
			return false;
		h = s + 1;
		hl = (size_t)(end - h);
		end++;
		if (!memchr(h, ':', hl))
			return false; /* brackets hold IPv6 literals only */
	} else {
		end = s + strcspn(s, ":");
		hl = (size_t)(end - s);
	}
	if (*end == ':') {
		end++;
		size_t d = strspn(end, "0123456789");
		if (d == 0 || d > 5 || end[d])
			return false;
	} else if (*end) {
		return false;
	}
	if (hl == 0 || hl >= hostlen)
		return false;
	memcpy(host, h, hl);
	host[hl] = '\0';
	return true;
}

static bool loopback_name(const char *h)
{
	return strcasecmp(h, "localhost") == 0 || strcmp(h, "127.0.0.1") == 0 ||
	       strcmp(h, "::1") == 0;
}

int front_door_host_allowed(const char *host_header, const char *listen_host)
{
	char host[HOSTPORT_HOST_MAX];
	if (!host_header || !split_host(host_header, host, sizeof(host)))
		return 0;
	if (loopback_name(host))
		return 1;
	/* A wildcard listen address is no name a client may use: accepting
	 * "0.0.0.0" would let pages reach us through it. */
	if (listen_host && *listen_host && strcmp(listen_host, "0.0.0.0") != 0 &&
	    strcmp(listen_host, "::") != 0 && strcasecmp(host, listen_host) == 0)
		return 1;
	return 0;
}

int front_door_origin_allowed(const char *origin_header)
{
	if (!origin_header)
		return 1; /* not a browser, or a same-origin GET */
	const char *rest;
	if (strncasecmp(origin_header, "http://", 7) == 0)
		rest = origin_header + 7;
	else if (strncasecmp(origin_header, "https://", 8) == 0)
		rest = origin_header + 8;
	else
		return 0; /* "null", other schemes */
	char host[HOSTPORT_HOST_MAX];
	return split_host(rest, host, sizeof(host)) && loopback_name(host);
}

/* The control mirror and the Network page are sovmesh's own: unlike the
 * Ollama API, which any loopback page may use (as with Ollama), only a
 * page of this very origin may call them — not one served by another
 * program on another loopback port (handle() checks; Host is checked
 * as for every path). */
static bool own_path(const char *path)
{
	return strcmp(path, "/sovmesh") == 0 || strncmp(path, "/sovmesh/", 9) == 0 ||
	       strncmp(path, "/settings/", 10) == 0;
}

/* 0 when the request may be routed, else it has been answered. */
static int check_host_origin(front_door *fd, const http_request *req, http_response *resp)
{
	const char *host = NULL;
	size_t nhost = 0;
	for (size_t i = 0; i < req->nheaders; i++) {
		const http_header *h = &req->headers[i];
		if (strcasecmp(h->name, "Host") == 0) {
			host = h->value;
			nhost++;
		} else if (strcasecmp(h->name, "Origin") == 0 && !own_path(req->path) &&
		           !front_door_origin_allowed(h->value)) {
			send_errorf(resp, 403,
			            "origin \"%.100s\" is not allowed: only pages served from "
			            "localhost, 127.0.0.1 or [::1] may use this port",
			            h->value);
			return -EPERM;
		}
	}
	if (nhost > 1) {
		http_response_send_error(resp, 400, "more than one Host header");
		return -EINVAL;
	}
	/* HTTP/1.0 clients may leave Host out; browsers never do. */
	if (!host && (req->http_major > 1 || req->http_minor >= 1)) {
		http_response_send_error(resp, 403, "the Host header is missing");
		return -EPERM;
	}
	if (host && !front_door_host_allowed(host, fd->listen_host)) {
		send_errorf(resp, 403,
		            "host \"%.100s\" is not allowed: use localhost, 127.0.0.1 or [::1]",
		            host);
		return -EPERM;
	}
	return 0;
}

/* --- chat and generate through the router --- */

static void job_link(front_door *fd, fd_job *j)
{
	j->next = fd->jobs;
	if (fd->jobs)
		fd->jobs->prev = j;
	fd->jobs = j;
}

static void job_unlink_free(fd_job *j)
{
	front_door *fd = j->fd;
	if (j->prev)
		j->prev->next = j->next;
	else if (fd->jobs == j)
		fd->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	free(j->model);
	free(j->one);
	json_decref(j->merged);
	free(j);
}

/* One line per request; never the text. */
static void job_log(const fd_job *j, int status, const char *how)
{
	char model[INFER_MODEL_MAX + 1], peer[sizeof(j->peer)];
	snprintf(model, sizeof(model), "%s", j->model ? j->model : "");
	snprintf(peer, sizeof(peer), "%s", j->peer[0] ? j->peer : "-");
	log_one_line(model);
	log_one_line(peer);
	uint64_t ms = (uv_hrtime() - j->t0_ns) / 1000000u;
	log_info("[api] %s model=%s source=%s peer=%s status=%d%s%s %llu ms",
	         infer_kind_name(j->kind), model,
	         j->have_source ? router_source_name(j->source) : "-", peer, status, how ? " " : "",
	         how ? how : "", (unsigned long long)ms);
}

static void job_on_source(void *ud, router_source source, const char *peer_name)
{
	fd_job *j = ud;
	j->have_source = true;
	j->source = source;
	http_response_add_header(j->resp, "X-Sovmesh-Source", router_source_name(source));
	/* A template answer is not an answer to the question: say so. */
	if (source == ROUTER_SOURCE_TEMPLATE)
		http_response_add_header(j->resp, "X-Sovmesh-Degraded", "true");
	if (peer_name) {
		snprintf(j->peer, sizeof(j->peer), "%s", peer_name);
		http_response_add_header(j->resp, "X-Sovmesh-Peer", j->peer);
	}
}

/* Concatenate src[key] onto dst[key] (strings), as a stream's pieces. */
static void merge_text(json_t *dst, json_t *src, const char *key)
{
	json_t *b = json_object_get(src, key);
	if (!json_is_string(b))
		return;
	json_t *a = json_object_get(dst, key);
	if (!json_is_string(a)) {
		json_object_set(dst, key, b);
		return;
	}
	size_t la = json_string_length(a), lb = json_string_length(b);
	char *s = malloc(la + lb + 1);
	if (!s)
		return;
	memcpy(s, json_string_value(a), la);
	memcpy(s + la, json_string_value(b), lb);
	json_object_set_new(dst, key, json_stringn(s, la + lb));
	free(s);
}

/* Fold one more Ollama chunk into `acc`: the text fields add up, the
 * rest (done, done_reason, metrics) is taken from the later chunk. */
static void merge_chunk(json_t *acc, json_t *c, sovmesh_gen_kind kind)
{
	if (kind == SOVMESH_GEN_CHAT) {
		json_t *am = json_object_get(acc, "message");
		json_t *cm = json_object_get(c, "message");
		if (json_is_object(am) && json_is_object(cm)) {
			merge_text(am, cm, "content");
			merge_text(am, cm, "thinking");
			json_t *at = json_object_get(am, "tool_calls");
			json_t *ct = json_object_get(cm, "tool_calls");
			if (json_is_array(at) && json_is_array(ct))
				json_array_extend(at, ct);
			else if (json_is_array(ct))
				json_object_set(am, "tool_calls", ct);
		} else if (json_is_object(cm)) {
			json_object_set(acc, "message", cm);
		}
	} else {
		merge_text(acc, c, "response");
		merge_text(acc, c, "thinking");
	}
	const char *key;
	json_t *v;
	json_object_foreach(c, key, v)
	{
		if (strcmp(key, "message") != 0 && strcmp(key, "response") != 0 &&
		    strcmp(key, "thinking") != 0)
			json_object_set(acc, key, v);
	}
}

static void collect_chunk(fd_job *j, const char *json, size_t len)
{
	if (j->nchunks++ == 0) {
		j->one = malloc(len + 1);
		if (j->one) {
			memcpy(j->one, json, len);
			j->one[len] = '\0';
			j->one_len = len;
		}
		return;
	}
	/* More than one piece for "stream": false: answer their sum. */
	if (!j->merged && j->one) {
		j->merged = json_loadb(j->one, j->one_len, 0, NULL);
		if (j->merged && !json_is_object(j->merged)) {
			json_decref(j->merged);
			j->merged = NULL;
		}
	}
	json_t *c = json_loadb(json, len, 0, NULL);
	if (j->merged && json_is_object(c))
		merge_chunk(j->merged, c, j->kind);
	json_decref(c);
}

static void job_on_chunk(void *ud, const char *json, size_t len, int done)
{
	fd_job *j = ud;
	(void)done;
	if (!j->stream) {
		collect_chunk(j, json, len);
		return;
	}
	if (!j->started) {
		j->started = true;
		http_response_start(j->resp, 200, "application/x-ndjson");
	}
	/* One HTTP chunk per line when it fits the stack; else two. */
	char line[4096];
	if (len < sizeof(line)) {
		memcpy(line, json, len);
		line[len] = '\n';
		http_response_write(j->resp, line, len + 1);
	} else {
		http_response_write(j->resp, json, len);
		http_response_write(j->resp, "\n", 1);
	}
}

/* After output started, an error is one {"error": ...} line, then the end. */
static void write_error_line(http_response *resp, const char *message)
{
	json_t *e = json_pack("{s:s}", "error", message);
	char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
	json_decref(e);
	if (text) {
		size_t n = strlen(text);
		char *line = realloc(text, n + 2);
		if (line) {
			text = line;
			text[n++] = '\n';
			text[n] = '\0';
		}
		http_response_write(resp, text, n);
		free(text);
	}
}

static void job_on_done(void *ud, int code, int http_status, const char *message)
{
	fd_job *j = ud;
	http_response *resp = j->resp;
	j->resp = NULL;
	j->rj = NULL;
	const char *msg = message && *message ? message : "inference failed";
	int status = 200;
	const char *how = NULL;
	if (code == 0 && j->stream) {
		if (!j->started)
			http_response_start(resp, 200, "application/x-ndjson");
		http_response_end(resp);
	} else if (code == 0 && j->merged) {
		send_json(resp, 200, json_incref(j->merged));
	} else if (code == 0 && j->one) {
		http_response_send(resp, 200, "application/json", j->one, j->one_len);
	} else if (code == 0 && j->nchunks) {
		status = 500;
		http_response_send_error(resp, status, "out of memory");
	} else if (code == 0) {
		status = 502;
		http_response_send_error(resp, status, "the answer was empty");
	} else if (j->started) {
		write_error_line(resp, msg);
		http_response_end(resp);
		how = "(failed mid-stream)";
	} else {
		status = http_status >= 400 && http_status <= 599 ? http_status : 502;
		http_response_send_error(resp, status, msg);
	}
	job_log(j, status, how);
	job_unlink_free(j);
}

static void job_on_cancel(void *ud, http_response *resp)
{
	fd_job *j = ud;
	router_cancel(j->rj);
	j->rj = NULL;
	j->resp = NULL;
	http_response_unref(resp);
	job_log(j, 499, "(client went away)");
	job_unlink_free(j);
}

static void route_infer(front_door *fd, sovmesh_gen_kind kind, const http_request *req,
                        http_response *resp)
{
	infer_request ir;
	sovmesh_error err = {0};
	int r = infer_request_parse(kind, req->body, req->body_len, &ir, &err);
	if (r < 0) {
		if (r == -ENOMEM)
			http_response_send_error(resp, 500, "out of memory");
		else
			http_response_send_error(resp, 400,
			                         err.message[0] ? err.message : "invalid request");
		return;
	}
	fd_job *j = calloc(1, sizeof(*j));
	if (j)
		j->model = strdup(ir.model);
	if (!j || !j->model) {
		if (j)
			free(j);
		infer_request_clear(&ir);
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	j->fd = fd;
	j->resp = resp;
	j->kind = kind;
	j->stream = ir.stream != 0;
	j->t0_ns = uv_hrtime();
	static const router_callbacks cbs = {
	    .on_source = job_on_source,
	    .on_chunk = job_on_chunk,
	    .on_done = job_on_done,
	};
	j->rj = router_submit(fd->router, &ir, &cbs, j);
	infer_request_clear(&ir);
	if (!j->rj) {
		free(j->model);
		free(j);
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	job_link(fd, j);
	http_response_on_cancel(resp, job_on_cancel, j);
}

static void route_chat(front_door *fd, const http_request *req, http_response *resp)
{
	route_infer(fd, SOVMESH_GEN_CHAT, req, resp);
}

static void route_generate(front_door *fd, const http_request *req, http_response *resp)
{
	route_infer(fd, SOVMESH_GEN_GENERATE, req, resp);
}

/* --- pass-through calls to the local backend --- */

static fd_pass *pass_new(front_door *fd, http_response *resp, pass_kind kind)
{
	fd_pass *p = calloc(1, sizeof(*p));
	if (!p) {
		http_response_send_error(resp, 500, "out of memory");
		return NULL;
	}
	p->fd = fd;
	p->resp = resp;
	p->kind = kind;
	return p;
}

static void pass_free(fd_pass *p)
{
	json_decref(p->doc);
	free(p->texts);
	free(p);
}

static void pass_unlink_free(fd_pass *p)
{
	front_door *fd = p->fd;
	if (p->prev)
		p->prev->next = p->next;
	else if (fd->passes == p)
		fd->passes = p->next;
	if (p->next)
		p->next->prev = p->prev;
	pass_free(p);
}

static void pass_on_cancel(void *ud, http_response *resp)
{
	fd_pass *p = ud;
	local_backend_cancel_passthrough(p->fd->lb, p->call);
	p->resp = NULL;
	http_response_unref(resp);
	pass_unlink_free(p);
}

/* Track a started call (or answer 503 and free when it did not start). */
static void pass_started(fd_pass *p, sovmesh_backend_call *call, const char *what)
{
	front_door *fd = p->fd;
	if (!call) {
		send_errorf(p->resp, 503, "the local backend could not start %s", what);
		pass_free(p);
		return;
	}
	p->call = call;
	p->next = fd->passes;
	if (fd->passes)
		fd->passes->prev = p;
	fd->passes = p;
	http_response_on_cancel(p->resp, pass_on_cancel, p);
}

/* RFC 3339, UTC, now. */
static void rfc3339_now(char *buf, size_t len)
{
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static bool listed_locally(json_t *models, size_t nlocal, const char *m)
{
	for (size_t i = 0; i < nlocal; i++) {
		json_t *e = json_array_get(models, i);
		const char *n = json_string_value(json_object_get(e, "name"));
		const char *id = json_string_value(json_object_get(e, "model"));
		if ((n && same_model(n, m)) || (id && same_model(id, m)))
			return true;
	}
	return false;
}

/* Connected peers' models that are not local, one entry per model. */
static void append_peer_models(front_door *fd, json_t *models)
{
	if (!fd->ptable)
		return;
	size_t nlocal = json_array_size(models);
	char now[32];
	rfc3339_now(now, sizeof(now));
	json_t *remote = json_object(); /* name -> entry (also in models) */
	if (!remote)
		return;
	size_t n = peer_table_paired_count(fd->ptable);
	for (size_t i = 0; i < n; i++) {
		peer_info pi;
		if (peer_table_paired_at(fd->ptable, i, &pi) < 0 || pi.status != PEER_CONNECTED)
			continue;
		const char *pname = pi.name && *pi.name ? pi.name : pi.fingerprint_hex;
		for (size_t k = 0; k < pi.n_models; k++) {
			const char *m = pi.models[k];
			if (!m || !*m || listed_locally(models, nlocal, m))
				continue;
			json_t *entry = json_object_get(remote, m);
			if (!entry) {
				entry = json_pack(
				    "{s:s, s:s, s:s, s:i, s:s, s:{}, s:b, s:{s:s, s:[]}}", "name",
				    m, "model", m, "modified_at", now, "size", 0, "digest", "",
				    "details", "remote", 1, "sovmesh", "source", "peer", "peers");
				if (!entry)
					continue; /* not UTF-8: no name a client could use */
				json_object_set_new(remote, m, entry);
				json_array_append(models, entry);
			}
			json_t *peers = json_object_get(json_object_get(entry, "sovmesh"), "peers");
			bool have = false;
			for (size_t q = 0; q < json_array_size(peers) && !have; q++)
				have =
				    strcmp(json_string_value(json_array_get(peers, q)), pname) == 0;
			if (!have && pname)
				json_array_append_new(peers, json_string(pname));
		}
	}
	json_decref(remote);
}

/* The local list (NULL: none) plus the peers' models. */
static void tags_answer(front_door *fd, http_response *resp, const char *local, size_t len)
{
	json_t *doc = local ? json_loadb(local, len, 0, NULL) : NULL;
	if (local && !json_is_object(doc)) {
		log_debug("[api] the local backend's model list is not a JSON object; ignoring it");
		json_decref(doc);
		doc = NULL;
	}
	if (!doc)
		doc = json_object();
	json_t *models = doc ? json_object_get(doc, "models") : NULL;
	if (doc && !json_is_array(models)) {
		models = json_array();
		json_object_set_new(doc, "models", models);
	}
	if (models)
		append_peer_models(fd, models);
	send_json(resp, 200, doc);
}

/* Ours alongside the backend's (or 0.0.0 when it is not there). */
static void version_answer(front_door *fd, http_response *resp, const char *local, size_t len)
{
	json_t *doc = local ? json_loadb(local, len, 0, NULL) : NULL;
	if (!json_is_object(doc) || !json_is_string(json_object_get(doc, "version"))) {
		json_decref(doc);
		doc = json_pack("{s:s}", "version", "0.0.0");
	}
	if (doc)
		json_object_set_new(doc, "sovmesh", json_string(fd->version ? fd->version : ""));
	send_json(resp, 200, doc);
}

static void pass_json_cb(void *ud, const sovmesh_backend_status *st, const char *json, size_t len)
{
	fd_pass *p = ud;
	http_response *resp = p->resp;
	p->resp = NULL;
	bool ok = st && st->code == 0 && json;
	switch (p->kind) {
	case PASS_TAGS:
		if (!ok)
			log_debug("[api] local model list failed: %s",
			          st ? status_message(st) : "no status");
		tags_answer(p->fd, resp, ok ? json : NULL, len);
		break;
	case PASS_VERSION:
		version_answer(p->fd, resp, ok ? json : NULL, len);
		break;
	default:
		if (ok)
			http_response_send(resp, 200, "application/json", json, len);
		else if (st && st->code)
			http_response_send_error(resp, backend_http_status(st->code),
			                         status_message(st));
		else
			http_response_send_error(resp, 502, "the local backend gave no answer");
		break;
	}
	pass_unlink_free(p);
}

static void route_tags(front_door *fd, const http_request *req, http_response *resp)
{
	(void)req;
	if (!fd->lb) {
		tags_answer(fd, resp, NULL, 0);
		return;
	}
	fd_pass *p = pass_new(fd, resp, PASS_TAGS);
	if (!p)
		return;
	sovmesh_backend_call *c = local_backend_list_models(fd->lb, pass_json_cb, p);
	if (!c) {
		/* The peers' models are still worth listing. */
		pass_free(p);
		tags_answer(fd, resp, NULL, 0);
		return;
	}
	pass_started(p, c, "the model list");
}

static void route_version(front_door *fd, const http_request *req, http_response *resp)
{
	(void)req;
	if (!fd->lb) {
		version_answer(fd, resp, NULL, 0);
		return;
	}
	fd_pass *p = pass_new(fd, resp, PASS_VERSION);
	if (!p)
		return;
	sovmesh_backend_call *c = local_backend_info(fd->lb, "version", NULL, pass_json_cb, p);
	if (!c) {
		pass_free(p);
		version_answer(fd, resp, NULL, 0);
		return;
	}
	pass_started(p, c, "the version request");
}

static void route_info(front_door *fd, http_response *resp, pass_kind kind, const char *what,
                       const char *body)
{
	if (!fd->lb) {
		http_response_send_error(resp, 503, "no local inference backend is configured");
		return;
	}
	fd_pass *p = pass_new(fd, resp, kind);
	if (!p)
		return;
	pass_started(p, local_backend_info(fd->lb, what, body, pass_json_cb, p), what);
}

static void route_ps(front_door *fd, const http_request *req, http_response *resp)
{
	(void)req;
	route_info(fd, resp, PASS_PS, "ps", NULL);
}

static void route_show(front_door *fd, const http_request *req, http_response *resp)
{
	json_t *doc = body_object(req, resp);
	if (!doc)
		return;
	/* Ollama takes "name" for "model" from old clients. */
	json_t *m = json_object_get(doc, "model");
	json_t *name = json_object_get(doc, "name");
	if (name && (!m || (json_is_string(m) && json_string_length(m) == 0)))
		m = name;
	char buf[80];
	const char *why = model_problem(m, buf, sizeof(buf));
	if (why) {
		json_decref(doc);
		http_response_send_error(resp, 400, why);
		return;
	}
	/* Re-encoded: what the backend gets is exactly what was checked. */
	char *text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	if (!text) {
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	route_info(fd, resp, PASS_SHOW, "show", text);
	free(text);
}

/* --- embeddings --- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* One vector as a JSON array, cut to `keep` dimensions and then scaled
 * back to unit length (as Ollama does for "dimensions"). */
static void sb_vector(sbuf *b, const float *v, size_t dim, size_t keep)
{
	double scale = 1.0;
	if (keep && keep < dim) {
		double sum = 0;
		for (size_t i = 0; i < keep; i++)
			sum += (double)v[i] * v[i];
		if (sum > 0)
			scale = 1.0 / sqrt(sum);
		dim = keep;
	}
	sb_add(b, "[", 1);
	for (size_t i = 0; i < dim; i++) {
		double x = (double)v[i] * scale;
		char num[40];
		int n = snprintf(num, sizeof(num), "%s%.9g", i ? "," : "", isfinite(x) ? x : 0.0);
		sb_add(b, num, (size_t)n);
	}
	sb_add(b, "]", 1);
}

static void embed_answer(fd_pass *p, http_response *resp, const float *v, size_t n, size_t dim)
{
	sbuf b = {0};
	if (p->kind == PASS_EMBEDDINGS) {
		sb_str(&b, "{\"embedding\":");
		if (n)
			sb_vector(&b, v, dim, 0);
		else
			sb_str(&b, "[]");
		sb_str(&b, "}");
	} else {
		char *model = json_dumps(json_object_get(p->doc, "model"), JSON_ENCODE_ANY);
		sb_str(&b, "{\"model\":");
		sb_str(&b, model ? model : "\"\"");
		b.oom |= !model;
		free(model);
		sb_str(&b, ",\"embeddings\":[");
		for (size_t i = 0; i < n; i++) {
			if (i)
				sb_add(&b, ",", 1);
			sb_vector(&b, v + i * dim, dim, p->dimensions);
		}
		sb_str(&b, "]}");
	}
	if (b.oom) {
		http_response_send_error(resp, 500, "out of memory");
	} else {
		/* Embeddings never leave the device: always the local backend. */
		http_response_add_header(resp, "X-Sovmesh-Source", "local");
		http_response_send(resp, 200, "application/json", b.p, b.len);
	}
	free(b.p);
}

static void pass_embed_cb(void *ud, const sovmesh_backend_status *st, const float *vectors,
                          size_t n, size_t dim)
{
	fd_pass *p = ud;
	http_response *resp = p->resp;
	p->resp = NULL;
	if (!st || st->code != 0)
		http_response_send_error(resp, st ? backend_http_status(st->code) : 502,
		                         st ? status_message(st)
		                            : "the local backend gave no answer");
	else if (n != p->ntexts || (n && (!vectors || !dim)))
		send_errorf(resp, 502, "the local backend answered %zu embeddings for %zu inputs",
		            n, p->ntexts);
	else
		embed_answer(p, resp, vectors, n, dim);
	pass_unlink_free(p);
}

/* The optional fields both embedding endpoints share; NULL when fine. */
static const char *embed_common_problem(json_t *doc)
{
	json_t *v = json_object_get(doc, "options");
	if (v && !json_is_object(v))
		return "options must be an object";
	v = json_object_get(doc, "keep_alive");
	if (v && !json_is_string(v) && !json_is_number(v))
		return "keep_alive must be a string or a number";
	return NULL;
}

/* Check an /api/embed or /api/embeddings body into `p`; NULL when fine. */
static const char *embed_parse(fd_pass *p, char *buf, size_t len)
{
	json_t *doc = p->doc;
	const char *why = model_problem(json_object_get(doc, "model"), buf, len);
	if (!why)
		why = embed_common_problem(doc);
	if (why)
		return why;
	p->model = json_string_value(json_object_get(doc, "model"));
	if (p->kind == PASS_EMBEDDINGS) {
		json_t *pr = json_object_get(doc, "prompt");
		if (pr && !json_is_string(pr))
			return "prompt must be a string";
		/* An empty prompt gets an empty embedding, as from Ollama. */
		if (!pr || json_string_length(pr) == 0)
			return NULL;
		p->texts = malloc(sizeof(*p->texts));
		if (!p->texts)
			return "out of memory";
		p->texts[0] = json_string_value(pr);
		p->ntexts = 1;
		return NULL;
	}
	json_t *v = json_object_get(doc, "truncate");
	if (v && !json_is_boolean(v))
		return "truncate must be true or false";
	v = json_object_get(doc, "dimensions");
	if (v && (!json_is_integer(v) || json_integer_value(v) < 0))
		return "dimensions must be a non-negative integer";
	p->dimensions = v ? (size_t)json_integer_value(v) : 0;
	json_t *in = json_object_get(doc, "input");
	if (!in || json_is_null(in))
		return NULL;
	if (json_is_string(in)) {
		if (json_string_length(in) == 0)
			return NULL;
		p->texts = malloc(sizeof(*p->texts));
		if (!p->texts)
			return "out of memory";
		p->texts[0] = json_string_value(in);
		p->ntexts = 1;
		return NULL;
	}
	if (!json_is_array(in))
		return "input must be a string or an array of strings";
	size_t n = json_array_size(in);
	if (!n)
		return NULL;
	p->texts = calloc(n, sizeof(*p->texts));
	if (!p->texts)
		return "out of memory";
	for (size_t i = 0; i < n; i++) {
		json_t *s = json_array_get(in, i);
		if (!json_is_string(s)) {
			snprintf(buf, len, "input[%zu] must be a string", i);
			return buf;
		}
		p->texts[i] = json_string_value(s);
	}
	p->ntexts = n;
	return NULL;
}

static void route_embed_kind(front_door *fd, pass_kind kind, const http_request *req,
                             http_response *resp)
{
	json_t *doc = body_object(req, resp);
	if (!doc)
		return;
	fd_pass *p = pass_new(fd, resp, kind);
	if (!p) {
		json_decref(doc);
		return;
	}
	p->doc = doc;
	char buf[80];
	const char *why = embed_parse(p, buf, sizeof(buf));
	if (why) {
		http_response_send_error(resp, strcmp(why, "out of memory") == 0 ? 500 : 400, why);
		pass_free(p);
		return;
	}
	if (p->ntexts == 0) {
		/* Nothing to embed: Ollama answers at once, and so do we. */
		p->resp = NULL;
		embed_answer(p, resp, NULL, 0, 0);
		pass_free(p);
		return;
	}
	if (!fd->lb) {
		http_response_send_error(resp, 503, "no local inference backend is configured");
		pass_free(p);
		return;
	}
	sovmesh_backend_call *c = local_backend_embed(fd->lb, p->model, p->texts, p->ntexts,
	                                              EMBED_TIMEOUT_MS, pass_embed_cb, p);
	pass_started(p, c, "the embedding");
}

static void route_embed(front_door *fd, const http_request *req, http_response *resp)
{
	route_embed_kind(fd, PASS_EMBED, req, resp);
}

static void route_embeddings(front_door *fd, const http_request *req, http_response *resp)
{
	route_embed_kind(fd, PASS_EMBEDDINGS, req, resp);
}

/* --- the rest --- */

static void route_root(front_door *fd, const http_request *req, http_response *resp)
{
	(void)fd;
	(void)req;
	static const char text[] = "Ollama is running";
	http_response_send(resp, 200, "text/plain; charset=utf-8", text, sizeof(text) - 1);
}

/* The Settings -> Network page (web/): the same strict headers on each
 * of its files.  The page holds no secret: its key comes in the URL
 * fragment from `sovmesh network`. */
static void route_page(front_door *fd, const http_request *req, http_response *resp)
{
	(void)fd;
	const char *body = web_network_html, *type = "text/html; charset=utf-8";
	if (strcmp(req->path, "/settings/network/network.css") == 0) {
		body = web_network_css;
		type = "text/css; charset=utf-8";
	} else if (strcmp(req->path, "/settings/network/network.js") == 0) {
		body = web_network_js;
		type = "text/javascript; charset=utf-8";
	}
	http_response_add_header(resp, "Content-Security-Policy", PAGE_CSP);
	http_response_add_header(resp, "X-Frame-Options", "DENY");
	http_response_add_header(resp, "X-Content-Type-Options", "nosniff");
	http_response_add_header(resp, "Referrer-Policy", "no-referrer");
	http_response_add_header(resp, "Cache-Control", "no-store");
	http_response_add_header(resp, "Cross-Origin-Resource-Policy", "same-origin");
	http_response_send(resp, 200, type, body, strlen(body));
}

/* Constant time in the token's length: the attacker knows its own. */
static bool token_ok(const char *given, const char *want)
{
	size_t gl = strlen(given), wl = strlen(want);
	size_t diff = gl ^ wl;
	for (size_t i = 0; i < wl; i++)
		diff |= (unsigned char)want[i] ^ (unsigned char)(i < gl ? given[i] : 0);
	return diff == 0;
}

static void route_control(front_door *fd, const http_request *req, http_response *resp)
{
	if (!fd->control || strncmp(req->path, "/sovmesh/v1/", 12) != 0) {
		send_errorf(resp, 404, "no such endpoint: %.200s", req->path);
		return;
	}
	if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
		const char *tok = http_request_header(req, "X-Sovmesh-Token");
		if (!tok) {
			http_response_send_error(resp, 403,
			                         "changes need the X-Sovmesh-Token header "
			                         "(see `sovmesh status`)");
			return;
		}
		if (!fd->token || !*fd->token) {
			http_response_send_error(
			    resp, 403, "changes over HTTP are disabled (no control token)");
			return;
		}
		if (!token_ok(tok, fd->token)) {
			http_response_send_error(resp, 403, "wrong X-Sovmesh-Token");
			return;
		}
	}
	if (control_api_dispatch(fd->control, "/sovmesh", req, resp) == -ENOENT)
		send_errorf(resp, 404, "no such endpoint: %.200s", req->path);
}

/* Feedback on an answer, for federated learning (fl_service.h). */
static void route_feedback(front_door *fd, const http_request *req, http_response *resp)
{
	if (!fd->feedback) {
		send_errorf(resp, 404, "federated learning is off on this node: no feedback is "
		                       "collected");
		return;
	}
	fd->feedback(fd->feedback_ud, req, resp);
}

typedef void (*route_fn)(front_door *fd, const http_request *req, http_response *resp);

static const struct {
	const char *path;
	const char *methods; /* for the Allow header */
	route_fn fn;
} routes[] = {
    {"/api/chat", "POST", route_chat},      {"/api/generate", "POST", route_generate},
    {"/api/tags", "GET, HEAD", route_tags}, {"/api/show", "POST", route_show},
    {"/api/ps", "GET", route_ps},           {"/api/version", "GET, HEAD", route_version},
    {"/api/embed", "POST", route_embed},    {"/api/embeddings", "POST", route_embeddings},
    {"/api/feedback", "POST", route_feedback},
    {"/", "GET, HEAD", route_root},
    {"/settings/network", "GET, HEAD", route_page},
    {"/settings/network/", "GET, HEAD", route_page},
    {"/settings/network/network.css", "GET, HEAD", route_page},
    {"/settings/network/network.js", "GET, HEAD", route_page},
};

static bool method_listed(const char *methods, const char *method)
{
	size_t n = strlen(method);
	for (const char *s = methods; *s;) {
		size_t w = strcspn(s, ", ");
		if (w == n && strncmp(s, method, n) == 0)
			return true;
		s += w;
		s += strspn(s, ", ");
	}
	return false;
}

static void add_cors(http_response *resp, const char *origin)
{
	http_response_add_header(resp, "Access-Control-Allow-Origin", origin);
	http_response_add_header(resp, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
	http_response_add_header(resp, "Vary", "Origin");
}

/* Origin "http://<Host>": the request comes from a page of this origin. */
static bool same_origin(const char *origin, const char *host)
{
	return host && strncasecmp(origin, "http://", 7) == 0 && strcasecmp(origin + 7, host) == 0;
}

static void handle(void *ud, const http_request *req, http_response *resp)
{
	front_door *fd = ud;
	if (fd->closing) {
		http_response_send_error(resp, 503, "sovmeshd is shutting down");
		return;
	}
	if (check_host_origin(fd, req, resp) < 0)
		return;
	const char *origin = http_request_header(req, "Origin");
	if (origin && own_path(req->path)) {
		if (!same_origin(origin, http_request_header(req, "Host"))) {
			send_errorf(
			    resp, 403,
			    "origin \"%.100s\" is not allowed on %.100s: only this port's own "
			    "pages may use it",
			    origin, req->path);
			return;
		}
	} else if (origin) {
		add_cors(resp, origin);
	}
	if (strcmp(req->method, "OPTIONS") == 0) {
		/* A browser's preflight for a loopback page. */
		http_response_add_header(resp, "Access-Control-Allow-Methods", CORS_ALLOW_METHODS);
		http_response_add_header(resp, "Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
		http_response_add_header(resp, "Access-Control-Max-Age", "600");
		http_response_add_header(resp, "Allow", CORS_ALLOW_METHODS);
		http_response_send(resp, 204, NULL, NULL, 0);
		return;
	}
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (strcmp(req->path, routes[i].path) != 0)
			continue;
		if (!method_listed(routes[i].methods, req->method)) {
			http_response_add_header(resp, "Allow", routes[i].methods);
			send_errorf(resp, 405, "method %.20s is not allowed on %s (allowed: %s)",
			            req->method, routes[i].path, routes[i].methods);
			return;
		}
		routes[i].fn(fd, req, resp);
		return;
	}
	if (strcmp(req->path, "/sovmesh") == 0 || strncmp(req->path, "/sovmesh/", 9) == 0) {
		route_control(fd, req, resp);
		return;
	}
	send_errorf(resp, 404, "no such endpoint: %.200s", req->path);
}

/* --- life cycle --- */

void front_door_set_feedback(front_door *fd, http_handler_fn fn, void *ud)
{
	if (!fd)
		return;
	fd->feedback = fn;
	fd->feedback_ud = ud;
}

static void door_free(front_door *fd)
{
	free(fd->token);
	free(fd->version);
	free(fd);
}

int front_door_new(uv_loop_t *loop, const front_door_options *opts, front_door **out,
                   sovmesh_error *err)
{
	if (!loop || !opts || !opts->listen || !opts->router || !out)
		return sovmesh_fail(err, -EINVAL, "front door: missing listen address or router");
	hostport hp;
	const char *why = NULL;
	if (hostport_parse(opts->listen, 1, &hp, &why) < 0)
		return sovmesh_fail(err, -EINVAL, "front door: bad listen address \"%.100s\": %s",
		                    opts->listen, why ? why : "invalid");
	front_door *fd = calloc(1, sizeof(*fd));
	if (!fd)
		return sovmesh_fail(err, -ENOMEM, "front door: out of memory");
	fd->loop = loop;
	fd->router = opts->router;
	fd->lb = opts->lb;
	fd->ptable = opts->ptable;
	fd->control = opts->control;
	snprintf(fd->listen_host, sizeof(fd->listen_host), "%s", hp.host);
	fd->token = opts->token ? strdup(opts->token) : NULL;
	fd->version = strdup(opts->version ? opts->version : "");
	http_server_options so = {
	    .max_body_bytes =
	        opts->max_body_bytes ? opts->max_body_bytes : FRONT_DOOR_DEFAULT_MAX_BODY,
	    .name = "api",
	    .handler = handle,
	    .handler_ud = fd,
	};
	if ((opts->token && !fd->token) || !fd->version ||
	    http_server_new(loop, &so, &fd->srv) < 0) {
		door_free(fd);
		return sovmesh_fail(err, -ENOMEM, "front door: out of memory");
	}
	sovmesh_error lerr = {0};
	int r = http_server_listen_tcp(fd->srv, hp.host, hp.port, &lerr);
	if (r < 0) {
		/* The server never listened, so this completes at once. */
		http_server_close(fd->srv, NULL, NULL);
		door_free(fd);
		return sovmesh_fail(err, r, "front door (api.listen): %s", lerr.message);
	}
	log_info("[api] Ollama-compatible API on %s port %d", hp.host, http_server_port(fd->srv));
	*out = fd;
	return 0;
}

int front_door_port(const front_door *fd)
{
	return fd ? http_server_port(fd->srv) : -1;
}

static void on_server_closed(void *ud)
{
	front_door *fd = ud;
	void (*closed)(void *) = fd->closed;
	void *closed_ud = fd->closed_ud;
	door_free(fd);
	if (closed)
		closed(closed_ud);
}

void front_door_close(front_door *fd, void (*closed)(void *ud), void *ud)
{
	if (!fd)
		return;
	fd->closing = true;
	fd->closed = closed;
	fd->closed_ud = ud;
	/* Open requests end with an error the client can read, then the
	 * server closes their connections. */
	while (fd->jobs) {
		fd_job *j = fd->jobs;
		http_response *resp = j->resp;
		j->resp = NULL;
		http_response_on_cancel(resp, NULL, NULL);
		router_cancel(j->rj);
		j->rj = NULL;
		if (j->started) {
			write_error_line(resp, "sovmeshd is shutting down");
			http_response_end(resp);
		} else {
			http_response_send_error(resp, 503, "sovmeshd is shutting down");
		}
		job_log(j, 503, "(shutting down)");
		job_unlink_free(j);
	}
	while (fd->passes) {
		fd_pass *p = fd->passes;
		http_response_on_cancel(p->resp, NULL, NULL);
		local_backend_cancel_passthrough(fd->lb, p->call);
		http_response_send_error(p->resp, 503, "sovmeshd is shutting down");
		p->resp = NULL;
		pass_unlink_free(p);
	}
	http_server_close(fd->srv, on_server_closed, fd);
}
