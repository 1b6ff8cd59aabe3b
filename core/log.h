/* Logging to stderr with level prefixes (journald-friendly). */
#ifndef SOVMESH_CORE_LOG_H
#define SOVMESH_CORE_LOG_H

#include <stdarg.h>
#include <sovmesh/plugin.h>

/* Parse "error|warning|notice|info|debug"; returns the level or -EINVAL. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

/* Messages above `level` are dropped.  Default SOVMESH_LOG_INFO. */
void log_set_level(int level);
int log_get_level(void);

/*
 * Write one line to stderr.  With $JOURNAL_STREAM set (stderr is the
 * journal) the line starts with "<N>" (sd-daemon(3) prefixes); otherwise
 * with "LEVEL: ".  `source` (may be NULL) names the subsystem or plugin
 * and is put in brackets after the prefix.  Thread-safe: one write(2) per
 * line.
 */
void log_msg(int level, const char *source, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
void log_vmsg(int level, const char *source, const char *fmt, va_list ap);

/*
 * Make `s` safe to print as one log line: control characters (newlines
 * included) become '?'.  Messages that echo input (config values, file
 * names, network data) pass through this so input cannot forge lines.
 */
void log_one_line(char *s);

#define log_error(...)   log_msg(SOVMESH_LOG_ERROR, NULL, __VA_ARGS__)
#define log_warning(...) log_msg(SOVMESH_LOG_WARNING, NULL, __VA_ARGS__)
#define log_notice(...)  log_msg(SOVMESH_LOG_NOTICE, NULL, __VA_ARGS__)
#define log_info(...)    log_msg(SOVMESH_LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...)   log_msg(SOVMESH_LOG_DEBUG, NULL, __VA_ARGS__)

#endif
