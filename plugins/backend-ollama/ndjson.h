/* SPDX-License-Identifier: MIT */
/*
 * An incremental NDJSON line splitter: bytes arrive in arbitrary pieces
 * (HTTP chunks), complete lines leave as soon as their newline is in.
 * It only finds line boundaries; the JSON in a line is parsed by the
 * caller (jansson).  CR before LF is dropped, blank lines are skipped,
 * and a line longer than `limit` bytes is an error rather than a reason
 * to buffer without bound.
 */
#ifndef OLLAMA_NDJSON_H
#define OLLAMA_NDJSON_H

#include <stddef.h>

/* Called once per non-empty line, without its "\n" or "\r\n".  `line` is
 * valid during the call only.  A non-zero return stops the splitter and
 * is returned by ndjson_feed/ndjson_finish. */
typedef int (*ndjson_line_cb)(void *ud, const char *line, size_t len);

typedef struct ndjson_splitter {
	char *buf; /* the incomplete last line; owned */
	size_t len, cap;
	size_t limit;
	int failed; /* an over-limit line was seen: every later call fails */
} ndjson_splitter;

/* Start empty; lines longer than `limit` bytes (without the newline) are
 * refused.  Cannot fail. */
void ndjson_init(ndjson_splitter *s, size_t limit);

/*
 * Add `len` bytes and emit every line they complete, in order.  Returns 0,
 * -EMSGSIZE for a line over the limit (emitting nothing more), -ENOMEM,
 * or the callback's non-zero value.
 */
int ndjson_feed(ndjson_splitter *s, const char *data, size_t len, ndjson_line_cb cb, void *ud);

/* End of input: emit a last line that had no newline (Ollama's
 * "stream": false answer is one object without one).  Same returns. */
int ndjson_finish(ndjson_splitter *s, ndjson_line_cb cb, void *ud);

/* Release the buffer; the splitter may be ndjson_init'ed again. */
void ndjson_free(ndjson_splitter *s);

#endif
