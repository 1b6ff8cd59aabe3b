/* The control API's router: (method, path) -> handler, JSON in and out. */
#include "control_api.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct route {
	char *method;
	char *path;
	bool prefix; /* path ended in '*': match the rest */
	control_handler_fn sync_fn;
	control_async_fn async_fn;
	void *ud;
} route;

struct control_api {
	route *routes;
	size_t nroutes, cap;
};

int control_api_new(http_server *srv, control_api **out)
{
	control_api *api = calloc(1, sizeof(*api));
	if (!api)
		return -ENOMEM;
	if (srv)
		http_server_set_handler(srv, control_api_http_handler, api);
	*out = api;
	return 0;
}

void control_api_free(control_api *api)
{
	if (!api)
		return;
	for (size_t i = 0; i < api->nroutes; i++) {
		free(api->routes[i].method);
		free(api->routes[i].path);
	}
	free(api->routes);
	free(api);
}

static int add_route(control_api *api, const char *method, const char *path,
                     control_handler_fn sync_fn, control_async_fn async_fn, void *ud)
{
	if (!api || !method || !*method || !path || path[0] != '/' || (!sync_fn && !async_fn))
		return -EINVAL;
	for (size_t i = 0; i < api->nroutes; i++)
		if (strcmp(api->routes[i].method, method) == 0 &&
		    strcmp(api->routes[i].path, path) == 0)
			return -EEXIST;
	if (api->nroutes == api->cap) {
		size_t cap = api->cap ? api->cap * 2 : 16;
		route *r = realloc(api->routes, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		api->routes = r;
		api->cap = cap;
	}
	route *r = &api->routes[api->nroutes];
	*r = (route){
	    .method = strdup(method),
	    .path = strdup(path),
	    .sync_fn = sync_fn,
	    .async_fn = async_fn,
	    .ud = ud,
	};
	if (!r->method || !r->path) {
		free(r->method);
		free(r->path);
		return -ENOMEM;
	}
	size_t n = strlen(path);
	r->prefix = path[n - 1] == '*';
	api->nroutes++;
	return 0;
}

int control_api_route(control_api *api, const char *method, const char *path, control_handler_fn fn,
                      void *ud)
{
	return add_route(api, method, path, fn, NULL, ud);
}

int control_api_route_async(control_api *api, const char *method, const char *path,
                            control_async_fn fn, void *ud)
{
	return add_route(api, method, path, NULL, fn, ud);
}

static bool route_matches_path(const route *r, const char *path)
{
	if (r->prefix)
		return strncmp(path, r->path, strlen(r->path) - 1) == 0;
	return strcmp(path, r->path) == 0;
}

static json_t *error_vjson(const char *fmt, va_list ap)
{
	char msg[1024];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	return json_pack("{s:s}", "error", msg);
}

json_t *control_api_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	json_t *j = error_vjson(fmt, ap);
	va_end(ap);
	return j;
}

int control_api_reply(http_response *resp, int status, json_t *reply)
{
	if (status < 100 || status > 599)
		status = 500;
	if (!reply)
		reply = status < 400 ? json_object()
		                     : json_pack("{s:s}", "error", http_status_reason(status));
	char *text = reply ? json_dumps(reply, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	json_decref(reply);
	if (!text)
		return http_response_send_error(resp, 500, "cannot encode the reply as JSON");
	size_t n = strlen(text);
	/* A final newline keeps shells and `curl` output tidy. */
	char *line = realloc(text, n + 2);
	if (line) {
		text = line;
		text[n++] = '\n';
		text[n] = '\0';
	}
	/* Control answers describe live state; nothing may cache them. */
	http_response_add_header(resp, "Cache-Control", "no-store");
	int r = http_response_send(resp, status, "application/json", text, n);
	free(text);
	return r;
}

int control_api_reply_error(http_response *resp, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	json_t *j = error_vjson(fmt, ap);
	va_end(ap);
	return control_api_reply(resp, status, j);
}

/* "GET, POST" for a path matched by some route with another method. */
static void allowed_methods(const control_api *api, const char *path, char *out, size_t outlen)
{
	size_t used = 0;
	out[0] = '\0';
	for (size_t i = 0; i < api->nroutes; i++) {
		if (!route_matches_path(&api->routes[i], path))
			continue;
		int n = snprintf(out + used, outlen - used, "%s%s", used ? ", " : "",
		                 api->routes[i].method);
		if (n < 0 || (size_t)n >= outlen - used)
			break;
		used += (size_t)n;
	}
}

int control_api_dispatch(control_api *api, const char *mount, const http_request *req,
                         http_response *resp)
{
	size_t mlen = mount ? strlen(mount) : 0;
	if (strncmp(req->path, mount ? mount : "", mlen) != 0 ||
	    strncmp(req->path + mlen, "/v1/", 4) != 0)
		return -ENOENT;
	const char *path = req->path + mlen;

	const route *found = NULL;
	bool path_known = false;
	for (size_t i = 0; i < api->nroutes && !found; i++) {
		if (!route_matches_path(&api->routes[i], path))
			continue;
		path_known = true;
		if (strcmp(api->routes[i].method, req->method) == 0)
			found = &api->routes[i];
	}
	if (!found && !path_known) {
		control_api_reply_error(resp, 404, "no such endpoint: %s", path);
		return 0;
	}
	if (!found) {
		char allow[256];
		allowed_methods(api, path, allow, sizeof(allow));
		http_response_add_header(resp, "Allow", allow);
		control_api_reply_error(resp, 405, "method %s is not allowed on %s (allowed: %s)",
		                        req->method, path, allow);
		return 0;
	}

	json_t *body = NULL;
	if (req->body_len) {
		json_error_t jerr;
		body = json_loadb(req->body, req->body_len, JSON_DECODE_ANY, &jerr);
		if (!body) {
			control_api_reply_error(
			    resp, 400, "request body is not valid JSON: %s (line %d, column %d)",
			    jerr.text, jerr.line, jerr.column);
			return 0;
		}
	}
	control_request creq = {
	    .method = req->method,
	    .path = path,
	    .query = req->query,
	    .body = body,
	    .http = req,
	};
	if (found->async_fn) {
		found->async_fn(found->ud, &creq, resp);
	} else {
		json_t *reply = NULL;
		int status = 200;
		int r = found->sync_fn(found->ud, &creq, &reply, &status);
		if (r < 0 && !reply) {
			status = 500;
			reply = control_api_error("internal error: %s", strerror(-r));
		}
		control_api_reply(resp, status, reply);
	}
	json_decref(body);
	return 0;
}

void control_api_http_handler(void *ud, const http_request *req, http_response *resp)
{
	if (control_api_dispatch(ud, "", req, resp) == -ENOENT)
		control_api_reply_error(
		    resp, 404, "no such endpoint: %s (the control API is under /v1/)", req->path);
}
