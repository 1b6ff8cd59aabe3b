/*
 * The CLI's side of the control API: blocking JSON requests to sovmeshd
 * over its unix control socket (libcurl, CURLOPT_UNIX_SOCKET_PATH).
 *
 * Threading: any thread; each call uses its own curl handle.  libcurl's
 * global init happens on first use (thread-safe in libcurl >= 7.84).
 */
#ifndef SOVMESH_CORE_CONTROL_CLIENT_H
#define SOVMESH_CORE_CONTROL_CLIENT_H

#include <jansson.h>
#include <stddef.h>

/*
 * Send `method` `path` (e.g. "GET", "/v1/status") to the daemon on
 * `socket_path`, with `body` (borrowed; NULL for none) as JSON.
 * `timeout_ms` bounds the whole exchange (0: 300 s).
 *
 * Returns 0 when the daemon answered with a JSON body, whatever the HTTP
 * status: *status is set and *reply holds the parsed body (the caller's;
 * json_decref it).  Otherwise a negative errno, *reply NULL, and `err`
 * holds one line naming the socket and the reason, e.g.
 *   "cannot reach sovmeshd at PATH: no such file (is the daemon running?)"
 *   -ENOENT; "...: permission denied (...)" -EACCES; "...: connection
 *   refused (stale socket; is the daemon running?)" -ECONNREFUSED;
 *   "sovmeshd at PATH sent a reply that is not JSON ..." -EBADMSG;
 *   -ETIMEDOUT, -EIO for other transfer failures.
 * `status` may be NULL.
 */
int control_client_request(const char *socket_path, const char *method, const char *path,
                           json_t *body, long timeout_ms, json_t **reply, long *status, char *err,
                           size_t errlen);

/* GET `path`; as control_client_request() with the default timeout. */
int control_client_get(const char *socket_path, const char *path, json_t **reply, long *status,
                       char *err, size_t errlen);

/* POST `body` (borrowed; NULL sends {}) to `path`; as
 * control_client_request() with the default timeout. */
int control_client_post(const char *socket_path, const char *path, json_t *body, json_t **reply,
                        long *status, char *err, size_t errlen);

#endif
