/*
 * Outgoing HTTP on the event loop: one libcurl multi handle driven by
 * libuv (CURLMOPT_SOCKETFUNCTION -> a uv_poll_t per socket,
 * CURLMOPT_TIMERFUNCTION -> one uv_timer_t).  Bodies are streamed to the
 * caller as they arrive.  Everything here runs on the loop thread.
 */
#ifndef SOVMESH_CORE_HTTP_CLIENT_H
#define SOVMESH_CORE_HTTP_CLIENT_H

#include <uv.h>
#include <sovmesh/plugin.h>

typedef struct http_client http_client;
typedef struct http_call http_call;

/* A client on `loop` (not owned).  NULL on out-of-memory. */
http_client *http_client_new(uv_loop_t *loop);

/*
 * Cancel every call (no callback follows), release libcurl and close the
 * client's loop handles.  The handles close asynchronously: `closed(ud)`
 * (may be NULL) runs from the loop once the last one is closed and the
 * client's memory is gone.  Must not be called from inside one of the
 * client's callbacks.  NULL is a no-op.
 */
void http_client_free(http_client *c, void (*closed)(void *ud), void *ud);

/*
 * Start a request.  `req` and `cbs` are copied (min of their size and
 * ours, so an older caller's shorter struct works); the URL, headers and
 * body are copied too.  Callbacks run later on the loop, never from inside
 * this call: on_status once when the final status line and headers are in
 * (at the latest before the first body byte or on_done), on_body per chunk
 * (non-zero return aborts: on_done gets -ECANCELED), on_done exactly once,
 * last.  The returned handle belongs to the client and stays valid until
 * on_done returns or http_client_cancel() is called.  NULL with err
 * filled: -EINVAL (bad request), -ENOMEM, -EIO.
 */
http_call *http_client_start(http_client *c, const sovmesh_http_request *req,
                             const sovmesh_http_callbacks *cbs, void *ud, sovmesh_error *err);

/* As http_client_start, but connect to the Unix socket `socket_path`
 * (copied) instead of the URL's host; the URL still gives path and Host. */
http_call *http_client_start_unix(http_client *c, const char *socket_path,
                                  const sovmesh_http_request *req,
                                  const sovmesh_http_callbacks *cbs, void *ud, sovmesh_error *err);

/*
 * Cancel a call that has not finished; no callback of it runs afterwards.
 * Allowed inside any callback of the client (including this call's own
 * on_status/on_body), not after on_done has started.  NULL is a no-op.
 */
void http_client_cancel(http_call *call);

#endif
