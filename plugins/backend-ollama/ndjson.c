/* SPDX-License-Identifier: MIT */
#include "ndjson.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void ndjson_init(ndjson_splitter *s, size_t limit)
{
	memset(s, 0, sizeof(*s));
	s->limit = limit;
}

void ndjson_free(ndjson_splitter *s)
{
	free(s->buf);
	s->buf = NULL;
	s->len = s->cap = 0;
}

static int is_blank(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
			return 0;
	return 1;
}

static int emit(const char *line, size_t n, ndjson_line_cb cb, void *ud)
{
	if (n && line[n - 1] == '\r')
		n--;
	if (is_blank(line, n))
		return 0;
	return cb(ud, line, n);
}

static int append(ndjson_splitter *s, const char *p, size_t n)
{
	if (s->len + n > s->cap) {
		size_t cap = s->cap ? s->cap : 256;
		while (cap < s->len + n)
			cap *= 2;
		char *b = realloc(s->buf, cap);
		if (!b)
			return -ENOMEM;
		s->buf = b;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	return 0;
}

/* +1: the CR of a CRLF may sit at the limit's edge before its LF comes. */
static int over(const ndjson_splitter *s, size_t n)
{
	return n > s->limit + 1;
}

int ndjson_feed(ndjson_splitter *s, const char *data, size_t len, ndjson_line_cb cb, void *ud)
{
	if (s->failed)
		return -EMSGSIZE;
	while (len > 0) {
		const char *nl = memchr(data, '\n', len);
		if (!nl) {
			if (over(s, s->len + len)) {
				s->failed = 1;
				return -EMSGSIZE;
			}
			return append(s, data, len);
		}
		size_t n = (size_t)(nl - data);
		int rc;
		if (s->len == 0) {
			/* The common case: the whole line is in this piece, no copy. */
			size_t eff = n && data[n - 1] == '\r' ? n - 1 : n;
			if (eff > s->limit) {
				s->failed = 1;
				return -EMSGSIZE;
			}
			rc = emit(data, n, cb, ud);
		} else {
			if (over(s, s->len + n)) {
				s->failed = 1;
				return -EMSGSIZE;
			}
			rc = append(s, data, n);
			if (rc < 0)
				return rc;
			size_t eff = s->len && s->buf[s->len - 1] == '\r' ? s->len - 1 : s->len;
			if (eff > s->limit) {
				s->failed = 1;
				return -EMSGSIZE;
			}
			s->len = 0;
			rc = emit(s->buf, eff, cb, ud);
		}
		if (rc != 0)
			return rc;
		data = nl + 1;
		len -= n + 1;
	}
	return 0;
}

int ndjson_finish(ndjson_splitter *s, ndjson_line_cb cb, void *ud)
{
	if (s->failed)
		return -EMSGSIZE;
	if (s->len == 0)
		return 0;
	size_t n = s->len;
	s->len = 0;
	if (n && s->buf[n - 1] == '\r')
		n--;
	if (n > s->limit) {
		s->failed = 1;
		return -EMSGSIZE;
	}
	return emit(s->buf, n, cb, ud);
}
