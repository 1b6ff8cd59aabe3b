/*
 * The backend-ollama NDJSON splitter: lines split across reads, several
 * lines in one read, CRLF, blank lines, the last line without a newline,
 * and a line over the limit refused (and everything after it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ndjson.h"

typedef struct lines {
	char text[16][64];
	int n;
	int stop_at; /* return 7 from the callback on this line, -1 never */
} lines;

static int on_line(void *ud, const char *line, size_t len)
{
	lines *l = ud;
	assert_true(l->n < 16);
	assert_true(len < 64);
	memcpy(l->text[l->n], line, len);
	l->text[l->n][len] = '\0';
	return l->n++ == l->stop_at ? 7 : 0;
}

static int feed(ndjson_splitter *s, const char *t, lines *l)
{
	return ndjson_feed(s, t, strlen(t), on_line, l);
}

static void split_across_reads(void **state)
{
	(void)state;
	ndjson_splitter s;
	lines l = {.stop_at = -1};
	ndjson_init(&s, 100);
	assert_int_equal(feed(&s, "{\"a\":", &l), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(feed(&s, "1", &l), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(feed(&s, "}\n{\"b\"", &l), 0);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.text[0], "{\"a\":1}");
	assert_int_equal(feed(&s, ":2}\n", &l), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.text[1], "{\"b\":2}");
	assert_int_equal(ndjson_finish(&s, on_line, &l), 0);
	assert_int_equal(l.n, 2);
	ndjson_free(&s);
}

static void several_in_one_read_crlf_blank(void **state)
{
	(void)state;
	ndjson_splitter s;
	lines l = {.stop_at = -1};
	ndjson_init(&s, 100);
	assert_int_equal(feed(&s, "{\"x\":1}\r\n\n\r\n  \n{\"y\":2}\n{\"z\":3}\r", &l), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.text[0], "{\"x\":1}");
	assert_string_equal(l.text[1], "{\"y\":2}");
	/* The CR waits for its LF in the next read. */
	assert_int_equal(feed(&s, "\n", &l), 0);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.text[2], "{\"z\":3}");
	ndjson_free(&s);
}

static void last_line_without_newline(void **state)
{
	(void)state;
	ndjson_splitter s;
	lines l = {.stop_at = -1};
	ndjson_init(&s, 100);
	assert_int_equal(feed(&s, "{\"done\":true}", &l), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(ndjson_finish(&s, on_line, &l), 0);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.text[0], "{\"done\":true}");
	/* Nothing left: a second finish emits nothing. */
	assert_int_equal(ndjson_finish(&s, on_line, &l), 0);
	assert_int_equal(l.n, 1);
	ndjson_free(&s);
}

static void over_limit(void **state)
{
	(void)state;
	ndjson_splitter s;
	lines l = {.stop_at = -1};
	/* Exactly at the limit is fine, in one piece and buffered. */
	ndjson_init(&s, 8);
	assert_int_equal(feed(&s, "12345678\n1234", &l), 0);
	assert_int_equal(feed(&s, "5678\r\n", &l), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.text[1], "12345678");
	/* One over, inside one read. */
	assert_int_equal(feed(&s, "123456789\n", &l), -EMSGSIZE);
	/* Refused from then on. */
	assert_int_equal(feed(&s, "1\n", &l), -EMSGSIZE);
	assert_int_equal(ndjson_finish(&s, on_line, &l), -EMSGSIZE);
	assert_int_equal(l.n, 2);
	ndjson_free(&s);

	/* Over the limit while still waiting for the newline: refused at
	 * once, before the line is complete (no unbounded buffering). */
	ndjson_init(&s, 8);
	assert_int_equal(feed(&s, "12345", &l), 0);
	assert_int_equal(feed(&s, "6789a", &l), -EMSGSIZE);
	assert_int_equal(l.n, 2);
	ndjson_free(&s);

	/* The last, unterminated line over the limit at finish. */
	ndjson_init(&s, 8);
	assert_int_equal(feed(&s, "123456789", &l), 0); /* 9 = limit + CR slack */
	assert_int_equal(ndjson_finish(&s, on_line, &l), -EMSGSIZE);
	ndjson_free(&s);
}

static void callback_stops(void **state)
{
	(void)state;
	ndjson_splitter s;
	lines l = {.stop_at = 1};
	ndjson_init(&s, 100);
	assert_int_equal(feed(&s, "a\nb\nc\n", &l), 7);
	assert_int_equal(l.n, 2);
	ndjson_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(split_across_reads),
	    cmocka_unit_test(several_in_one_read_crlf_blank),
	    cmocka_unit_test(last_line_without_newline),
	    cmocka_unit_test(over_limit),
	    cmocka_unit_test(callback_stops),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
