/* Blocking JSON requests to sovmeshd's control socket, for the CLI. */
#include "control_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_TIMEOUT_MS 300000L
#define CONNECT_TIMEOUT_MS 10000L
/* A control reply is small; anything near this is not our daemon. */
#define MAX_REPLY_BYTES (64u * 1024u * 1024u)

typedef struct reply_buf {
	char *data;
	size_t len;
	bool too_big;
} reply_buf;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
	reply_buf *b = ud;
	size_t n = size * nmemb;
	if (b->len + n > MAX_REPLY_BYTES) {
		b->too_big = true;
		return 0;
	}
	char *p = realloc(b->data, b->len + n + 1);
	if (!p)
		return 0;
	memcpy(p + b->len, ptr, n);
	b->data = p;
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

/* The reason a connection could not be made, as one clear line. */
static int connect_error(const char *socket_path, int os_errno, const char *curl_msg, char *err,
                         size_t errlen)
{
	switch (os_errno) {
	case ENOENT:
		return fail(err, errlen, -ENOENT,
		            "cannot reach sovmeshd at %s: no such file (is the daemon running?)",
		            socket_path);
	case EACCES:
	case EPERM:
		return fail(err, errlen, -EACCES,
		            "cannot reach sovmeshd at %s: permission denied (the control socket is "
		            "owner-only; run as the daemon's user)",
		            socket_path);
	case ECONNREFUSED:
		return fail(err, errlen, -ECONNREFUSED,
		            "cannot reach sovmeshd at %s: connection refused (stale socket; is the "
		            "daemon running?)",
		            socket_path);
	default:
		return fail(err, errlen, -EIO, "cannot reach sovmeshd at %s: %s", socket_path,
		            os_errno ? strerror(os_errno) : curl_msg);
	}
}

int control_client_request(const char *socket_path, const char *method, const char *path,
                           json_t *body, long timeout_ms, json_t **reply, long *status, char *err,
                           size_t errlen)
{
	if (reply)
		*reply = NULL;
	if (status)
		*status = 0;
	if (!socket_path || !*socket_path || !method || !path || path[0] != '/' || !reply)
		return fail(err, errlen, -EINVAL, "control client: bad request arguments");

	/* Check first: curl's own message for a missing socket is vague. */
	struct stat st;
	if (stat(socket_path, &st) < 0)
		return connect_error(socket_path, errno, "", err, errlen);
	if (!S_ISSOCK(st.st_mode))
		return fail(err, errlen, -ENOTSOCK, "cannot reach sovmeshd at %s: not a socket",
		            socket_path);

	char *payload = NULL;
	if (body) {
		payload = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
		if (!payload)
			return fail(err, errlen, -ENOMEM,
			            "control client: cannot encode the request");
	}
	size_t urllen = strlen("http://localhost") + strlen(path) + 1;
	char *url = malloc(urllen);
	CURL *c = curl_easy_init();
	if (!url || !c) {
		free(url);
		free(payload);
		curl_easy_cleanup(c);
		return fail(err, errlen, -ENOMEM, "control client: out of memory");
	}
	snprintf(url, urllen, "http://localhost%s", path);

	reply_buf rb = {0};
	char curl_err[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
	if (payload) {
		hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
		/* The daemon answers at once; waiting for 100-continue is wasted. */
		hdrs = curl_slist_append(hdrs, "Expect:");
	}
	curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, socket_path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &rb);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
	if (payload) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
	} else if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		/* Methods like DELETE without a body still say so. */
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
	}

	int r = 0;
	CURLcode cr = curl_easy_perform(c);
	long code = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	if (cr == CURLE_COULDNT_CONNECT) {
		long os_errno = 0;
		curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
		r = connect_error(socket_path, (int)os_errno,
		                  curl_err[0] ? curl_err : curl_easy_strerror(cr), err, errlen);
	} else if (cr == CURLE_OPERATION_TIMEDOUT) {
		r = fail(err, errlen, -ETIMEDOUT, "sovmeshd at %s did not answer %s %s in time",
		         socket_path, method, path);
	} else if (cr == CURLE_WRITE_ERROR && rb.too_big) {
		r = fail(err, errlen, -EBADMSG, "sovmeshd at %s sent a reply larger than %u bytes",
		         socket_path, MAX_REPLY_BYTES);
	} else if (cr != CURLE_OK) {
		r = fail(err, errlen, -EIO, "request %s %s to sovmeshd at %s failed: %s", method,
		         path, socket_path, curl_err[0] ? curl_err : curl_easy_strerror(cr));
	} else {
		json_error_t jerr;
		json_t *j = rb.len ? json_loadb(rb.data, rb.len, JSON_DECODE_ANY, &jerr) : NULL;
		if (!j) {
			r = fail(err, errlen, -EBADMSG,
			         "sovmeshd at %s sent a reply that is not JSON (HTTP %ld to %s %s)",
			         socket_path, code, method, path);
		} else {
			*reply = j;
			if (status)
				*status = code;
		}
	}
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(c);
	free(rb.data);
	free(url);
	free(payload);
	return r;
}

int control_client_get(const char *socket_path, const char *path, json_t **reply, long *status,
                       char *err, size_t errlen)
{
	return control_client_request(socket_path, "GET", path, NULL, 0, reply, status, err,
	                              errlen);
}

int control_client_post(const char *socket_path, const char *path, json_t *body, json_t **reply,
                        long *status, char *err, size_t errlen)
{
	json_t *empty = body ? NULL : json_object();
	int r = control_client_request(socket_path, "POST", path, body ? body : empty, 0, reply,
	                               status, err, errlen);
	json_decref(empty);
	return r;
}
