/*
 * Running one external command to completion from a worker thread:
 * posix_spawn into its own process group, stdout and stderr read line by
 * line with poll() against a deadline, SIGTERM then SIGKILL to the whole
 * group when the deadline passes, and nothing of the group left running
 * when spawn_run() returns.  No event loop, no signal handlers: safe to
 * call from several threads at once.
 */
#ifndef SOVMESH_TRAINER_EXEC_SPAWN_H
#define SOVMESH_TRAINER_EXEC_SPAWN_H

#include <stdint.h>

#include <sovmesh/plugin.h>

/* Longest line handed to on_line; longer lines arrive in pieces. */
#define SPAWN_LINE_MAX 2048

/* `stream` is 1 (stdout) or 2 (stderr); `line` has no newline. */
typedef void (*spawn_line_fn)(void *ud, int stream, const char *line);

typedef struct spawn_result {
	int exited; /* 1: ended with exit status `code`; 0: killed by `sig` */
	int code;
	int sig;
	int timed_out; /* the deadline passed and SIGTERM went to the group */
	int killed;    /* the grace period passed too: SIGKILL went to the group */
	int leftovers; /* processes of the group outlived the command (killed) */
	int held_open; /* something outside the group kept the pipes open */
	int lost;      /* the exit status was lost (SIGCHLD is ignored) */
} spawn_result;

typedef struct spawn_spec {
	const char *const *argv; /* argv[0]: absolute path, no PATH search */
	const char *const *envp; /* the whole environment */
	const char *cwd;
	uint64_t timeout_ms; /* 0: none */
	uint64_t grace_ms;   /* SIGTERM -> SIGKILL */
	spawn_line_fn on_line;
	void *ud;
} spawn_spec;

/*
 * Run the command and wait for it.  0 when it ran (whatever its outcome,
 * see *res), or -errno with err filled when it could not be started
 * (-ENOENT, -EACCES, -ENOEXEC from exec; -EMFILE, ...).
 */
int spawn_run(const spawn_spec *spec, spawn_result *res, sovmesh_error *err);

#endif
