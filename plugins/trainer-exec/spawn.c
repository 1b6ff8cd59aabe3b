/*
 * See spawn.h.  The child is made with posix_spawn (glibc uses
 * clone(CLONE_VFORK) and reports exec errors back), so no code of ours
 * runs between fork and exec.  Its exit is watched with a pidfd when the
 * kernel has them (Linux >= 5.3), else by polling waitpid(WNOHANG) every
 * 50 ms; either way poll() also serves the two pipes and the deadline.
 */
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* After the command exits, how long the pipes may stay open (a killed
 * process group closes them at once; only a process that left the group
 * can hold them). */
#define DRAIN_MS 2000
/* waitpid polling interval without a pidfd. */
#define REAP_POLL_MS 50

typedef struct line_buf {
	int fd;
	int stream;
	size_t len;
	char buf[SPAWN_LINE_MAX + 1];
} line_buf;

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void emit(const spawn_spec *spec, line_buf *lb)
{
	if (lb->len && lb->buf[lb->len - 1] == '\r')
		lb->len--;
	lb->buf[lb->len] = '\0';
	if (spec->on_line)
		spec->on_line(spec->ud, lb->stream, lb->buf);
	lb->len = 0;
}

/* Read what is there; split into lines.  Closes the fd at EOF or error. */
static void drain(const spawn_spec *spec, line_buf *lb)
{
	char chunk[4096];
	for (;;) {
		ssize_t n = read(lb->fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) { /* EOF, or an error we cannot do anything about */
			if (lb->len)
				emit(spec, lb);
			close(lb->fd);
			lb->fd = -1;
			return;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (chunk[i] == '\n') {
				emit(spec, lb);
				continue;
			}
			lb->buf[lb->len++] = chunk[i] ? chunk[i] : ' ';
			if (lb->len == SPAWN_LINE_MAX)
				emit(spec, lb);
		}
	}
}

static int open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
	long fd = syscall(SYS_pidfd_open, pid, 0);
	if (fd >= 0) {
		fcntl((int)fd, F_SETFD, FD_CLOEXEC);
		return (int)fd;
	}
#else
	(void)pid;
#endif
	return -1;
}

static int start(const spawn_spec *spec, int out_w, int err_w, pid_t *pid, sovmesh_error *err)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	int rc = posix_spawn_file_actions_init(&fa);
	if (rc)
		return sovmesh_fail(err, -rc, "posix_spawn_file_actions_init: %s", strerror(rc));
	rc = posix_spawnattr_init(&at);
	if (rc) {
		posix_spawn_file_actions_destroy(&fa);
		return sovmesh_fail(err, -rc, "posix_spawnattr_init: %s", strerror(rc));
	}
	sigemptyset(&none);
	sigfillset(&all);
	/* Own process group (so the whole tree can be signalled), no blocked
	 * signals and default dispositions: a daemon that ignores SIGPIPE or
	 * blocks signals in its threads must not pass that on through exec. */
	rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
	                                       POSIX_SPAWN_SETSIGDEF);
	if (!rc)
		rc = posix_spawnattr_setpgroup(&at, 0);
	if (!rc)
		rc = posix_spawnattr_setsigmask(&at, &none);
	if (!rc)
		rc = posix_spawnattr_setsigdefault(&at, &all);
	if (!rc)
		rc = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	if (!rc)
		rc = posix_spawn_file_actions_adddup2(&fa, out_w, STDOUT_FILENO);
	if (!rc)
		rc = posix_spawn_file_actions_adddup2(&fa, err_w, STDERR_FILENO);
	if (!rc && spec->cwd)
		rc = posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	/* Descriptors the daemon opened without O_CLOEXEC stay ours. */
	if (!rc)
		rc = posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
#endif
	if (rc) {
		posix_spawnattr_destroy(&at);
		posix_spawn_file_actions_destroy(&fa);
		return sovmesh_fail(err, -rc, "cannot prepare to run %s: %s", spec->argv[0],
		                    strerror(rc));
	}
	rc = posix_spawn(pid, spec->argv[0], &fa, &at, (char *const *)spec->argv,
	                 (char *const *)spec->envp);
	posix_spawnattr_destroy(&at);
	posix_spawn_file_actions_destroy(&fa);
	if (rc)
		return sovmesh_fail(err, -rc, "cannot run %s: %s", spec->argv[0], strerror(rc));
	return 0;
}

int spawn_run(const spawn_spec *spec, spawn_result *res, sovmesh_error *err)
{
	memset(res, 0, sizeof(*res));
	int out_p[2], err_p[2];
	/* O_CLOEXEC: a spawn on another thread must not inherit our pipes. */
	if (pipe2(out_p, O_CLOEXEC) < 0)
		return sovmesh_fail(err, -errno, "pipe: %s", strerror(errno));
	if (pipe2(err_p, O_CLOEXEC) < 0) {
		int e = errno;
		close(out_p[0]);
		close(out_p[1]);
		return sovmesh_fail(err, -e, "pipe: %s", strerror(e));
	}
	pid_t pid = -1;
	int rc = start(spec, out_p[1], err_p[1], &pid, err);
	close(out_p[1]);
	close(err_p[1]);
	if (rc < 0) {
		close(out_p[0]);
		close(err_p[0]);
		return rc;
	}

	line_buf *lb = calloc(2, sizeof(*lb));
	if (!lb) {
		/* Cannot read its output: stop it rather than leave it running. */
		kill(-pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		close(out_p[0]);
		close(err_p[0]);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	lb[0].fd = out_p[0];
	lb[0].stream = 1;
	lb[1].fd = err_p[0];
	lb[1].stream = 2;
	for (int i = 0; i < 2; i++)
		fcntl(lb[i].fd, F_SETFL, fcntl(lb[i].fd, F_GETFL) | O_NONBLOCK);

	int pidfd = open_pidfd(pid);
	uint64_t t0 = mono_ms();
	uint64_t deadline = spec->timeout_ms ? t0 + spec->timeout_ms : UINT64_MAX;
	uint64_t kill_at = UINT64_MAX, drain_until = UINT64_MAX;
	int reaped = 0, status = 0;

	for (;;) {
		if (!reaped) {
			pid_t w = waitpid(pid, &status, WNOHANG);
			if (w == pid || (w < 0 && errno == ECHILD)) {
				/* ECHILD: the kernel reaped it for us (SIGCHLD
				 * set to SIG_IGN); the status is lost. */
				if (w < 0)
					res->lost = 1;
				reaped = 1;
				/* Whatever is left of its group goes now.  The
				 * leader's pid cannot be reused while the group
				 * exists, so this reaches only its processes. */
				if (kill(-pid, SIGKILL) == 0)
					res->leftovers = 1;
				drain_until = mono_ms() + DRAIN_MS;
				if (pidfd >= 0) {
					close(pidfd);
					pidfd = -1;
				}
			}
		}
		if (reaped && lb[0].fd < 0 && lb[1].fd < 0)
			break;
		uint64_t now = mono_ms();
		if (reaped && now >= drain_until) {
			res->held_open = 1;
			break;
		}
		if (!reaped && !res->timed_out && now >= deadline) {
			kill(-pid, SIGTERM);
			res->timed_out = 1;
			kill_at = now + spec->grace_ms;
		}
		if (!reaped && res->timed_out && !res->killed && now >= kill_at) {
			kill(-pid, SIGKILL);
			res->killed = 1;
		}

		uint64_t next = UINT64_MAX;
		if (!reaped && !res->timed_out)
			next = deadline;
		else if (!reaped && !res->killed)
			next = kill_at;
		else if (reaped)
			next = drain_until;
		uint64_t wait = next == UINT64_MAX ? 60000 : next - now;
		if (!reaped && pidfd < 0 && wait > REAP_POLL_MS)
			wait = REAP_POLL_MS;
		if (wait > 60000)
			wait = 60000;

		struct pollfd pfd[3];
		int np = 0, idx[2] = {-1, -1};
		for (int i = 0; i < 2; i++) {
			if (lb[i].fd < 0)
				continue;
			idx[i] = np;
			pfd[np++] = (struct pollfd){.fd = lb[i].fd, .events = POLLIN};
		}
		if (!reaped && pidfd >= 0)
			pfd[np++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
		int n = poll(pfd, (nfds_t)np, (int)wait);
		if (n < 0 && errno != EINTR) {
			int e = errno;
			kill(-pid, SIGKILL);
			if (!reaped)
				while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
					;
			rc = sovmesh_fail(err, -e, "poll: %s", strerror(e));
			break;
		}
		for (int i = 0; n > 0 && i < 2; i++)
			if (idx[i] >= 0 && pfd[idx[i]].revents)
				drain(spec, &lb[i]);
	}
	for (int i = 0; i < 2; i++)
		if (lb[i].fd >= 0)
			close(lb[i].fd);
	if (pidfd >= 0)
		close(pidfd);
	free(lb);
	if (rc < 0)
		return rc;
	if (res->lost) {
		res->exited = 0;
	} else if (WIFSIGNALED(status)) {
		res->sig = WTERMSIG(status);
	} else {
		res->exited = 1;
		res->code = WEXITSTATUS(status);
	}
	return 0;
}
