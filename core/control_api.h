/*
 * The control API: JSON endpoints under /v1/ that back the CLI and the
 * Network page.  Served on the control socket (paths "/v1/...") and
 * mirrored on the loopback HTTP port under a mount prefix
 * ("/sovmesh/v1/...").  The daemon registers its handlers in a table of
 * (method, path); this module routes, parses request bodies, answers 404
 * for unknown paths and 405 for wrong methods, and serializes replies.
 * Every answer is application/json; errors are {"error": "message"}.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_CONTROL_API_H
#define SOVMESH_CORE_CONTROL_API_H

#include <jansson.h>
#include <sovmesh/plugin.h>

#include "http_server.h"

typedef struct control_api control_api;

typedef struct control_request {
	const char *method;
	const char *path;         /* without the mount prefix: "/v1/status" */
	const char *query;        /* after '?', "" when none */
	json_t *body;             /* parsed JSON body (borrowed), NULL when empty */
	const http_request *http; /* headers, peer credentials, raw body */
} control_request;

/*
 * A synchronous handler.  `*status` arrives as 200; set *reply to a new
 * JSON value (ownership passes to the API) and/or change *status, and
 * return 0.  With *reply left NULL the answer is {} for a success status
 * and {"error": "<reason phrase>"} otherwise.  A negative errno return
 * with *reply NULL answers 500 {"error": "internal error: <strerror>"}.
 * `req` lives for the call only.
 */
typedef int (*control_handler_fn)(void *ud, const control_request *req, json_t **reply,
                                  int *status);

/*
 * An asynchronous handler: answers later with control_api_reply() /
 * control_api_reply_error(), which take over the handler's reference to
 * `resp` (see http_server.h for the response's lifetime and the cancel
 * callback).  `req` lives for the call only; keep req->body with
 * json_incref() and the request with http_response_request(resp).
 */
typedef void (*control_async_fn)(void *ud, const control_request *req, http_response *resp);

/*
 * A new, empty route table in *out (the caller's; free with
 * control_api_free()).  With `srv` non-NULL the API becomes that server's
 * request handler (the control socket: paths "/v1/...", everything else
 * 404); with NULL it is reached only through control_api_dispatch().
 * 0 or -ENOMEM.
 */
int control_api_new(http_server *srv, control_api **out);

/* Free the table (NULL is a no-op).  Do it after http_server_close() of a
 * server it handles, or in the same loop turn before it.  Responses
 * already handed to async handlers are unaffected. */
void control_api_free(control_api *api);

/*
 * Register `fn` for `method` (e.g. "GET") on `path` (exact match, e.g.
 * "/v1/status"; a trailing "*" matches any rest, e.g. "/v1/peers/" followed by "*").
 * Strings are copied; `ud` is passed back.  0, -EEXIST for a duplicate
 * (method, path), -EINVAL, -ENOMEM.
 */
int control_api_route(control_api *api, const char *method, const char *path, control_handler_fn fn,
                      void *ud);
int control_api_route_async(control_api *api, const char *method, const char *path,
                            control_async_fn fn, void *ud);

/*
 * Answer `req` if its path lies under `mount` (e.g. "/sovmesh" on the HTTP
 * port; "" on the control socket): unknown paths get 404, known paths with
 * another method 405 with an Allow header, an unparsable body 400.
 * Returns 0 when the API took the request (and `resp` with it), -ENOENT
 * when the path is not under `mount` + "/v1/" (then `resp` is still the
 * caller's to answer).
 */
int control_api_dispatch(control_api *api, const char *mount, const http_request *req,
                         http_response *resp);

/* An http_handler_fn for a server that serves only the control API (the
 * control socket): ud is the control_api; everything else gets 404. */
void control_api_http_handler(void *ud, const http_request *req, http_response *resp);

/* Complete an asynchronous answer: `reply` (stolen; NULL as in
 * control_handler_fn) with `status`.  Drops the caller's reference to
 * `resp`.  0 or -errno as http_response_send(). */
int control_api_reply(http_response *resp, int status, json_t *reply);

/* Complete with {"error": formatted message}.  Drops the caller's
 * reference.  0 or -errno. */
int control_api_reply_error(http_response *resp, int status, const char *fmt, ...)
    SOVMESH_PRINTF(3, 4);

/* A new {"error": formatted message} object (NULL only when out of
 * memory), for synchronous handlers' *reply. */
json_t *control_api_error(const char *fmt, ...) SOVMESH_PRINTF(1, 2);

#endif
