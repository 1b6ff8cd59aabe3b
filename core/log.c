/* Logging to stderr with level prefixes (journald-friendly). */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int current_level = SOVMESH_LOG_INFO;

static const struct {
	int level;
	const char *name;
} level_names[] = {
    {SOVMESH_LOG_ERROR, "error"}, {SOVMESH_LOG_WARNING, "warning"}, {SOVMESH_LOG_NOTICE, "notice"},
    {SOVMESH_LOG_INFO, "info"},   {SOVMESH_LOG_DEBUG, "debug"},
};

int log_level_parse(const char *name)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (name && strcmp(name, level_names[i].name) == 0)
			return level_names[i].level;
	return -EINVAL;
}

const char *log_level_name(int level)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (level_names[i].level == level)
			return level_names[i].name;
	return "unknown";
}

void log_set_level(int level)
{
	atomic_store(&current_level, level);
}

int log_get_level(void)
{
	return atomic_load(&current_level);
}

void log_one_line(char *s)
{
	for (; s && *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

void log_vmsg(int level, const char *source, const char *fmt, va_list ap)
{
	if (level > atomic_load(&current_level))
		return;
	char line[4096];
	int n;
	/* journald parses "<N>" itself; a terminal reader wants words. */
	if (getenv("JOURNAL_STREAM"))
		n = snprintf(line, sizeof(line), "<%d>", level);
	else
		n = snprintf(line, sizeof(line), "%s: ", log_level_name(level));
	if (source && n >= 0 && (size_t)n < sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, "[%s] ", source);
	if (n >= 0 && (size_t)n < sizeof(line))
		n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	if (n < 0)
		return;
	line[sizeof(line) - 1] = '\0';
	log_one_line(line);
	size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
	line[len++] = '\n';
	/* One write per line so lines from threads do not interleave. */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void log_msg(int level, const char *source, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, source, fmt, ap);
	va_end(ap);
}
