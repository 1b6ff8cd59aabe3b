/*
 * The pairing engine (see pairing.h).  Pairing is rare and short, so it
 * runs on worker threads with blocking steps rather than as a state
 * machine on the loop: the issuer's listener has its own thread, each
 * join runs on the libuv thread pool.  A worker never touches loop-owned
 * state; it posts messages to a queue drained by one uv_async_t, and a pin
 * is such a message the worker waits for (the trust store stays
 * single-threaded on the loop).
 */
#include "pairing.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "hostport.h"
#include "log.h"

#define LOG_SRC  "pairing"
#define SALT_LEN 16

typedef struct offer offer;
typedef struct loop_msg loop_msg;

enum { MSG_EVENT, MSG_PIN };
enum { PIN_QUEUED, PIN_RUNNING, PIN_DONE };

/* Worker -> loop.  Events own their peer copy; a pin borrows the worker's. */
struct loop_msg {
	loop_msg *next;
	int kind;
	/* MSG_EVENT */
	uint64_t gen;
	pairing_event_type type;
	unsigned attempts_left;
	char message[640];
	pair_hello peer;
	/* MSG_PIN */
	const pair_hello *pin_peer;
	int state;
	int rc;
	sovmesh_error err;
};

struct offer {
	pairing *p;
	uint64_t gen;
	pthread_t thread;
	int listen_fd;
	int stop_pipe[2];
	atomic_bool stop;
	atomic_bool open; /* code outstanding, listener open */
	atomic_uint attempts_left;
	char code[PAIR_CODE_LEN + 1];
	int64_t expires_mono_ms;
	gnutls_srp_server_credentials_t srp;
	pairing_offer_info info;
	loop_msg *final; /* the terminal event, posted when the thread ends */
};

typedef struct join {
	uv_work_t work;
	pairing *p;
	char code[PAIR_CODE_LEN + 1];
	char addr[PAIR_HOSTPORT_MAX + 1];
	hostport hp;
	char expected[IDENTITY_FP_HEX_LEN + 1]; /* "" = none */
	pairing_join_fn done;
	void *ud;
	int status;
	char message[640];
	pair_hello peer;
} join;

struct pairing {
	uv_loop_t *loop;
	const identity *self;
	hostport listen;
	unsigned ttl_secs, max_attempts, io_timeout_ms;
	char bind_host[HOSTPORT_HOST_MAX]; /* "" = any */
	char *hello_line;                  /* ours, built once */
	pairing_pin_fn pin;
	pairing_event_fn on_event;
	void *ud;

	uv_async_t async;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	loop_msg *head, *tail; /* under lock */

	offer *offer; /* loop thread */
	uint64_t next_gen;
	int stop_pipe[2]; /* joins: written by pairing_close */
	atomic_bool closing;
	unsigned joins_running;
	void (*on_closed)(void *ud);
	void *closed_ud;
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int make_pipe(int fds[2])
{
	return pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0 ? -errno : 0;
}

static void close_pipe(int fds[2])
{
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	fds[0] = fds[1] = -1;
}

/* Wake every poll() on the pipe for good: it is never read. */
static void poke(int fds[2])
{
	ssize_t n;
	do
		n = write(fds[1], "x", 1);
	while (n < 0 && errno == EINTR);
}

/* ---- blocking I/O with a deadline and a stop pipe ---------------------- */

typedef struct io {
	int fd;
	int stopfd;
	int64_t deadline;
	int why; /* 0, ETIMEDOUT or ECANCELED once a wait gave up */
} io;

static int io_wait(io *io, short events)
{
	for (;;) {
		int64_t left = io->deadline - mono_ms();
		if (left <= 0) {
			io->why = ETIMEDOUT;
			return -ETIMEDOUT;
		}
		struct pollfd pf[2] = {{io->fd, events, 0}, {io->stopfd, POLLIN, 0}};
		int n = poll(pf, 2, left > INT_MAX ? INT_MAX : (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (pf[1].revents) {
			io->why = ECANCELED;
			return -ECANCELED;
		}
		if (pf[0].revents)
			return 0;
	}
}

static ssize_t io_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	io *io = ptr;
	for (;;) {
		ssize_t n = recv(io->fd, buf, len, 0);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		int rc = io_wait(io, POLLIN);
		if (rc < 0) {
			errno = -rc;
			return -1;
		}
	}
}

static ssize_t io_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	io *io = ptr;
	for (;;) {
		ssize_t n = send(io->fd, buf, len, MSG_NOSIGNAL);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		int rc = io_wait(io, POLLOUT);
		if (rc < 0) {
			errno = -rc;
			return -1;
		}
	}
}

static int session_new(gnutls_session_t *out, unsigned flags, void *srp_cred, io *io)
{
	gnutls_session_t s;
	int rc = gnutls_init(&s, flags);
	if (rc < 0)
		return rc;
	if ((rc = gnutls_priority_set_direct(s, PAIRING_PRIORITY, NULL)) < 0 ||
	    (rc = gnutls_credentials_set(s, GNUTLS_CRD_SRP, srp_cred)) < 0) {
		gnutls_deinit(s);
		return rc;
	}
	gnutls_transport_set_ptr(s, io);
	gnutls_transport_set_pull_function(s, io_pull);
	gnutls_transport_set_push_function(s, io_push);
	*out = s;
	return 0;
}

static int handshake(gnutls_session_t s)
{
	int rc;
	do
		rc = gnutls_handshake(s);
	while (rc < 0 && !gnutls_error_is_fatal(rc));
	return rc;
}

/* What went wrong on the wire, for a message. */
static const char *io_reason(const io *io, int gnutls_rc)
{
	if (io->why == ETIMEDOUT)
		return "timed out";
	if (io->why == ECANCELED)
		return "stopped";
	return gnutls_strerror(gnutls_rc);
}

static int send_all(gnutls_session_t s, io *io, const char *data, unsigned timeout_ms)
{
	size_t len = strlen(data), off = 0;
	io->deadline = mono_ms() + timeout_ms;
	while (off < len) {
		ssize_t n = gnutls_record_send(s, data + off, len - off);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0)
			return (int)n;
		off += (size_t)n;
	}
	return 0;
}

typedef struct linebuf {
	char buf[PAIR_MSG_MAX + 1];
	size_t have;
	size_t line_len; /* of the line returned last, consumed by the next read */
} linebuf;

/*
 * Next '\n'-terminated line into lb (the line is lb->buf[0..lb->line_len)).
 * 0, or -ETIMEDOUT, -ECANCELED, -ECONNRESET (closed), -EMSGSIZE, -EIO.
 */
static int read_line(gnutls_session_t s, io *io, linebuf *lb, unsigned timeout_ms)
{
	if (lb->line_len) {
		size_t used = lb->line_len + 1;
		memmove(lb->buf, lb->buf + used, lb->have - used);
		lb->have -= used;
		lb->line_len = 0;
	}
	io->deadline = mono_ms() + timeout_ms;
	for (;;) {
		char *nl = memchr(lb->buf, '\n', lb->have);
		if (nl) {
			lb->line_len = (size_t)(nl - lb->buf);
			if (lb->line_len == 0) {
				/* An empty line is not a message; skip it. */
				memmove(lb->buf, lb->buf + 1, --lb->have);
				continue;
			}
			return 0;
		}
		if (lb->have == sizeof(lb->buf))
			return -EMSGSIZE;
		ssize_t n = gnutls_record_recv(s, lb->buf + lb->have, sizeof(lb->buf) - lb->have);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == 0)
			return -ECONNRESET;
		if (n < 0)
			return io->why ? -io->why : -EIO;
		lb->have += (size_t)n;
	}
}

static const char *read_reason(int rc)
{
	switch (rc) {
	case -ETIMEDOUT:
		return "no message before the timeout";
	case -ECANCELED:
		return "stopped";
	case -ECONNRESET:
		return "the connection was closed before a message";
	case -EMSGSIZE:
		return "a message longer than 64 KiB";
	default:
		return "a TLS error while reading";
	}
}

/* Best effort: tell the other side why, then shut the write side. */
static void send_error(gnutls_session_t s, io *io, const char *why, unsigned timeout_ms)
{
	char *line = NULL;
	if (pair_error_build(why, &line) == 0)
		send_all(s, io, line, timeout_ms);
	free(line);
}

static void format_addr(const struct sockaddr_storage *ss, uint16_t port, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], ip, sizeof(ip));
			snprintf(out, len, "%s:%u", ip, (unsigned)port);
		} else {
			inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
			snprintf(out, len, "[%s]:%u", ip, (unsigned)port);
		}
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, (unsigned)port);
	}
}

/* The address a peer was seen at goes first (most useful to dial back). */
static void note_seen_address(pair_hello *h, const char *hostport_text)
{
	if (pair_hostport_check("seen address", hostport_text, NULL, NULL) < 0)
		return;
	for (size_t i = 0; i < h->n_addresses; i++) {
		if (strcmp(h->addresses[i], hostport_text) == 0) {
			if (i == 0)
				return;
			memmove(h->addresses[1], h->addresses[0], i * sizeof(h->addresses[0]));
			snprintf(h->addresses[0], sizeof(h->addresses[0]), "%s", hostport_text);
			return;
		}
	}
	size_t n = h->n_addresses < PAIR_MAX_ADDRS ? h->n_addresses : PAIR_MAX_ADDRS - 1;
	memmove(h->addresses[1], h->addresses[0], n * sizeof(h->addresses[0]));
	snprintf(h->addresses[0], sizeof(h->addresses[0]), "%s", hostport_text);
	h->n_addresses = n + 1;
}

/* ---- worker -> loop ---------------------------------------------------- */

static void enqueue_locked(pairing *p, loop_msg *m)
{
	m->next = NULL;
	if (p->tail)
		p->tail->next = m;
	else
		p->head = m;
	p->tail = m;
}

static bool terminal(pairing_event_type t)
{
	return t != PAIRING_ATTEMPT_FAILED;
}

static void post_event(offer *o, pairing_event_type type, const pair_hello *peer, const char *fmt,
                       ...) SOVMESH_PRINTF(4, 5);
static void post_event(offer *o, pairing_event_type type, const pair_hello *peer, const char *fmt,
                       ...)
{
	pairing *p = o->p;
	loop_msg *m = calloc(1, sizeof(*m));
	if (!m) {
		log_msg(SOVMESH_LOG_ERROR, LOG_SRC, "out of memory reporting a pairing event");
		return;
	}
	m->kind = MSG_EVENT;
	m->gen = o->gen;
	m->type = type;
	m->attempts_left = atomic_load(&o->attempts_left);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m->message, sizeof(m->message), fmt, ap);
	va_end(ap);
	log_one_line(m->message);
	if (peer && pair_hello_copy(&m->peer, peer) < 0) {
		/* Still report the outcome; the peer is pinned already. */
		memset(&m->peer, 0, sizeof(m->peer));
	}
	if (terminal(type)) {
		/* Posted by offer_main as its very last act, so the loop's
		 * pthread_join on it never waits for a TLS goodbye. */
		if (o->final) {
			pair_hello_clear(&m->peer);
			free(m);
		} else {
			o->final = m;
		}
		return;
	}
	pthread_mutex_lock(&p->lock);
	enqueue_locked(p, m);
	pthread_mutex_unlock(&p->lock);
	uv_async_send(&p->async);
}

/*
 * Ask the loop to pin `peer` and wait for the answer.  Gives up only while
 * the request is still queued (once the loop runs it, it finishes quickly)
 * so the loop can stop a worker without waiting on itself.
 */
static int call_pin(pairing *p, atomic_bool *stop, const pair_hello *peer, sovmesh_error *err)
{
	loop_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	m->kind = MSG_PIN;
	m->pin_peer = peer;
	m->state = PIN_QUEUED;
	pthread_mutex_lock(&p->lock);
	enqueue_locked(p, m);
	pthread_mutex_unlock(&p->lock);
	uv_async_send(&p->async);

	pthread_mutex_lock(&p->lock);
	while (m->state != PIN_DONE) {
		if (m->state == PIN_QUEUED && (atomic_load(stop) || atomic_load(&p->closing))) {
			loop_msg **pp = &p->head, *prev = NULL;
			while (*pp != m) {
				prev = *pp;
				pp = &(*pp)->next;
			}
			*pp = m->next;
			if (p->tail == m)
				p->tail = prev;
			pthread_mutex_unlock(&p->lock);
			free(m);
			return sovmesh_fail(err, -ECANCELED, "pairing was stopped");
		}
		pthread_cond_wait(&p->cond, &p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	int rc = m->rc;
	if (rc < 0 && err)
		*err = m->err;
	free(m);
	return rc;
}

static void offer_free(offer *o);

static void on_async(uv_async_t *h)
{
	pairing *p = h->data;
	/* One message at a time: a callback may stop an offer, whose thread
	 * can then still withdraw a pin request that is not yet taken. */
	for (;;) {
		pthread_mutex_lock(&p->lock);
		loop_msg *m = p->head;
		if (m) {
			p->head = m->next;
			if (p->tail == m)
				p->tail = NULL;
			if (m->kind == MSG_PIN)
				m->state = PIN_RUNNING;
		}
		pthread_mutex_unlock(&p->lock);
		if (!m)
			break;
		if (m->kind == MSG_PIN) {
			sovmesh_error err = {0};
			int rc = atomic_load(&p->closing)
			             ? sovmesh_fail(&err, -ECANCELED, "pairing was stopped")
			             : p->pin(p->ud, m->pin_peer, &err);
			pthread_mutex_lock(&p->lock);
			m->rc = rc;
			m->err = err;
			m->state = PIN_DONE; /* the worker frees m from here on */
			pthread_cond_broadcast(&p->cond);
			pthread_mutex_unlock(&p->lock);
			continue;
		}
		bool current = p->offer && p->offer->gen == m->gen && !atomic_load(&p->closing);
		if (current && terminal(m->type)) {
			/* The thread posts its terminal event last: join is quick. */
			pthread_join(p->offer->thread, NULL);
			offer_free(p->offer);
			p->offer = NULL;
		}
		if (current && p->on_event) {
			pairing_event ev = {
			    .type = m->type,
			    .peer = m->type == PAIRING_PAIRED ? &m->peer : NULL,
			    .attempts_left = m->attempts_left,
			    .message = m->message,
			};
			p->on_event(p->ud, &ev);
		}
		pair_hello_clear(&m->peer);
		free(m);
	}
}

/* ---- issuer ------------------------------------------------------------ */

static int srp_server_creds(gnutls_session_t s, const char *username, gnutls_datum_t *salt,
                            gnutls_datum_t *verifier, gnutls_datum_t *generator,
                            gnutls_datum_t *prime)
{
	offer *o = gnutls_session_get_ptr(s);
	const gnutls_datum_t *g = &gnutls_srp_3072_group_generator;
	const gnutls_datum_t *n = &gnutls_srp_3072_group_prime;
	if (strcmp(username, PAIRING_SRP_USER) != 0 || mono_ms() >= o->expires_mono_ms)
		return -1;
	/* GnuTLS frees all four with gnutls_free. */
	salt->data = gnutls_malloc(SALT_LEN);
	generator->data = gnutls_malloc(g->size);
	prime->data = gnutls_malloc(n->size);
	if (!salt->data || !generator->data || !prime->data)
		goto fail;
	salt->size = SALT_LEN;
	if (gnutls_rnd(GNUTLS_RND_NONCE, salt->data, SALT_LEN) < 0)
		goto fail;
	memcpy(generator->data, g->data, g->size);
	generator->size = g->size;
	memcpy(prime->data, n->data, n->size);
	prime->size = n->size;
	if (gnutls_srp_verifier(username, o->code, salt, g, n, verifier) < 0)
		goto fail;
	return 0;
fail:
	gnutls_free(salt->data);
	gnutls_free(generator->data);
	gnutls_free(prime->data);
	salt->data = generator->data = prime->data = NULL;
	return -1;
}

static void close_listener(offer *o)
{
	atomic_store(&o->open, false);
	if (o->listen_fd >= 0) {
		close(o->listen_fd);
		o->listen_fd = -1;
	}
}

enum { SERVE_NEXT, SERVE_DONE, SERVE_STOPPED };

/* After the SRP handshake: the hello/hello/confirm exchange.  Posts the
 * terminal event. */
static int issuer_exchange(offer *o, gnutls_session_t s, io *io, const char *remote_ip_port,
                           const struct sockaddr_storage *ss)
{
	pairing *p = o->p;
	unsigned t = p->io_timeout_ms;
	linebuf *lb = calloc(1, sizeof(*lb));
	pair_msg msg;
	sovmesh_error err = {0};
	int rc;
	memset(&msg, 0, sizeof(msg));
	if (!lb) {
		post_event(o, PAIRING_FAILED, NULL, "pairing with %s failed: out of memory",
		           remote_ip_port);
		return SERVE_DONE;
	}
	if ((rc = read_line(s, io, lb, t)) < 0) {
		if (rc == -ECANCELED)
			goto stopped;
		if (rc == -EMSGSIZE)
			send_error(s, io, "message longer than 64 KiB", t);
		post_event(o, PAIRING_FAILED, NULL, "pairing with %s failed: %s", remote_ip_port,
		           read_reason(rc));
		goto out;
	}
	if (pair_msg_parse(lb->buf, lb->line_len, &msg, &err) < 0) {
		send_error(s, io, err.message, t);
		post_event(o, PAIRING_FAILED, NULL, "pairing with %s refused: %s", remote_ip_port,
		           err.message);
		goto out;
	}
	if (msg.type == PAIR_MSG_ERROR) {
		post_event(o, PAIRING_FAILED, NULL, "pairing with %s failed: the joiner said: %s",
		           remote_ip_port, msg.error);
		goto out;
	}
	if (msg.type != PAIR_MSG_HELLO) {
		send_error(s, io, "expected pair-hello", t);
		post_event(o, PAIRING_FAILED, NULL,
		           "pairing with %s refused: expected pair-hello first", remote_ip_port);
		goto out;
	}
	if (memcmp(msg.hello.fingerprint, p->self->fingerprint, IDENTITY_FP_LEN) == 0) {
		send_error(s, io, "that is this node's own certificate", t);
		post_event(o, PAIRING_FAILED, NULL,
		           "pairing with %s refused: it presented this node's own certificate",
		           remote_ip_port);
		goto out;
	}
	char seen[PAIR_HOSTPORT_MAX + 1];
	format_addr(ss, msg.hello.peer_port, seen, sizeof(seen));
	note_seen_address(&msg.hello, seen);

	if ((rc = send_all(s, io, p->hello_line, t)) < 0) {
		if (io->why == ECANCELED)
			goto stopped;
		post_event(o, PAIRING_FAILED, NULL,
		           "pairing with %s failed: sending pair-hello: %s", remote_ip_port,
		           io_reason(io, rc));
		goto out;
	}
	pair_msg reply;
	memset(&reply, 0, sizeof(reply));
	if ((rc = read_line(s, io, lb, t)) < 0) {
		if (rc == -ECANCELED)
			goto stopped;
		post_event(o, PAIRING_FAILED, NULL,
		           "pairing with %s (%s) failed waiting for pair-confirm: %s",
		           msg.hello.name, msg.hello.short_fp, read_reason(rc));
		goto out;
	}
	if (pair_msg_parse(lb->buf, lb->line_len, &reply, &err) < 0) {
		send_error(s, io, err.message, t);
		post_event(o, PAIRING_FAILED, NULL, "pairing with %s (%s) refused: %s",
		           msg.hello.name, msg.hello.short_fp, err.message);
		goto out;
	}
	if (reply.type != PAIR_MSG_CONFIRM) {
		if (reply.type == PAIR_MSG_ERROR)
			post_event(o, PAIRING_FAILED, NULL,
			           "pairing with %s (%s) failed: the joiner refused: %s",
			           msg.hello.name, msg.hello.short_fp, reply.error);
		else
			post_event(o, PAIRING_FAILED, NULL,
			           "pairing with %s (%s) refused: expected pair-confirm",
			           msg.hello.name, msg.hello.short_fp);
		if (reply.type != PAIR_MSG_ERROR)
			send_error(s, io, "expected pair-confirm", t);
		pair_msg_clear(&reply);
		goto out;
	}
	if ((rc = call_pin(p, &o->stop, &msg.hello, &err)) < 0) {
		if (rc == -ECANCELED)
			goto stopped;
		send_error(s, io, "the issuer could not pin you", t);
		post_event(o, PAIRING_FAILED, NULL, "pairing with %s (%s) failed: cannot pin: %s",
		           msg.hello.name, msg.hello.short_fp, err.message);
		goto out;
	}
	post_event(o, PAIRING_PAIRED, &msg.hello, "paired with %s (%s) at %s", msg.hello.name,
	           msg.hello.short_fp, remote_ip_port);
out:
	pair_msg_clear(&msg);
	free(lb);
	return SERVE_DONE;
stopped:
	pair_msg_clear(&msg);
	free(lb);
	return SERVE_STOPPED;
}

static int serve(offer *o, int fd, const struct sockaddr_storage *ss)
{
	pairing *p = o->p;
	char remote[PAIR_HOSTPORT_MAX + 1];
	uint16_t rport = ss->ss_family == AF_INET6
	                     ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
	                     : ntohs(((const struct sockaddr_in *)ss)->sin_port);
	format_addr(ss, rport, remote, sizeof(remote));
	io io = {.fd = fd, .stopfd = o->stop_pipe[0], .deadline = mono_ms() + p->io_timeout_ms};
	gnutls_session_t s = NULL;
	int rc = session_new(&s, GNUTLS_SERVER, o->srp, &io);
	if (rc < 0) {
		log_msg(SOVMESH_LOG_ERROR, LOG_SRC, "cannot start a TLS-SRP session: %s",
		        gnutls_strerror(rc));
		return SERVE_NEXT;
	}
	gnutls_session_set_ptr(s, o);
	rc = handshake(s);
	if (rc < 0) {
		gnutls_deinit(s);
		if (io.why == ECANCELED || atomic_load(&o->stop))
			return SERVE_STOPPED;
		/* Every failed handshake counts: with SRP a wrong guess is only
		 * seen as a failure, and there is no cheaper way to try one. */
		unsigned left = atomic_load(&o->attempts_left);
		left = left ? left - 1 : 0;
		atomic_store(&o->attempts_left, left);
		const char *why = rc == GNUTLS_E_DECRYPTION_FAILED || rc == GNUTLS_E_SRP_PWD_ERROR
		                      ? "wrong code"
		                      : io_reason(&io, rc);
		if (left == 0) {
			close_listener(o);
			post_event(
			    o, PAIRING_BURNED, NULL,
			    "pairing code burned after %u failed attempts (last from %s: %s); "
			    "pairing listener closed",
			    p->max_attempts, remote, why);
			return SERVE_DONE;
		}
		post_event(o, PAIRING_ATTEMPT_FAILED, NULL,
		           "pairing attempt from %s failed: %s; %u attempt%s left", remote, why,
		           left, left == 1 ? "" : "s");
		return SERVE_NEXT;
	}
	/* The code is used up: nobody else may try it, whatever follows. */
	close_listener(o);
	int r = issuer_exchange(o, s, &io, remote, ss);
	io.deadline = mono_ms() + 1000;
	gnutls_bye(s, GNUTLS_SHUT_WR);
	gnutls_deinit(s);
	return r;
}

static void *offer_main(void *arg)
{
	offer *o = arg;
	pairing *p = o->p;
	for (;;) {
		int64_t left = o->expires_mono_ms - mono_ms();
		if (left <= 0) {
			post_event(o, PAIRING_EXPIRED, NULL,
			           "pairing code expired unused; pairing listener closed");
			break;
		}
		struct pollfd pf[2] = {{o->listen_fd, POLLIN, 0}, {o->stop_pipe[0], POLLIN, 0}};
		int n = poll(pf, 2, left > INT_MAX ? INT_MAX : (int)left);
		if (n < 0 && errno != EINTR) {
			log_msg(SOVMESH_LOG_ERROR, LOG_SRC, "poll on the pairing listener: %s",
			        strerror(errno));
			n = 0;
		}
		if (pf[1].revents || atomic_load(&o->stop))
			break;
		if (n <= 0 || !pf[0].revents)
			continue;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(o->listen_fd, (struct sockaddr *)&ss, &sl,
		                 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				/* Let descriptors free up rather than spin. */
				struct pollfd sp = {o->stop_pipe[0], POLLIN, 0};
				poll(&sp, 1, 100);
			}
			continue;
		}
		int r = serve(o, fd, &ss);
		close(fd);
		if (r != SERVE_NEXT)
			break;
	}
	close_listener(o);
	loop_msg *m = o->final;
	o->final = NULL;
	if (m && !atomic_load(&o->stop)) {
		pthread_mutex_lock(&p->lock);
		enqueue_locked(p, m);
		pthread_mutex_unlock(&p->lock);
		uv_async_send(&p->async);
	} else if (m) {
		pair_hello_clear(&m->peer);
		free(m);
	}
	return NULL;
}

static void offer_free(offer *o)
{
	if (!o)
		return;
	close_listener(o);
	close_pipe(o->stop_pipe);
	if (o->srp)
		gnutls_srp_free_server_credentials(o->srp);
	gnutls_memset(o->code, 0, sizeof(o->code));
	gnutls_memset(o->info.code, 0, sizeof(o->info.code));
	free(o);
}

/* Stop the offer's thread (prompt: every wait polls the stop pipe) and
 * free it.  Loop thread. */
static void offer_stop(pairing *p, offer *o)
{
	atomic_store(&o->stop, true);
	poke(o->stop_pipe);
	pthread_mutex_lock(&p->lock);
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	pthread_join(o->thread, NULL);
	offer_free(o);
}

static int open_listener(pairing *p, offer *o, sovmesh_error *err)
{
	struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
	                         .ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;
	char port[8];
	char text[PAIR_HOSTPORT_MAX + 1];
	hostport_format(&p->listen, text, sizeof(text));
	snprintf(port, sizeof(port), "%u", (unsigned)p->listen.port);
	int rc = getaddrinfo(p->listen.host, port, &hints, &ai);
	if (rc != 0)
		return sovmesh_fail(err, -EINVAL, "pairing listener %s: %s", text,
		                    gai_strerror(rc));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		goto fail;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 8) < 0) {
		rc = -errno;
		goto fail;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		rc = -errno;
		goto fail;
	}
	o->info.port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
	                                        : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	hostport bound = p->listen;
	bound.port = o->info.port;
	hostport_format(&bound, o->info.listen, sizeof(o->info.listen));
	o->listen_fd = fd;
	freeaddrinfo(ai);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	freeaddrinfo(ai);
	return sovmesh_fail(err, rc, "pairing listener %s: cannot listen: %s", text, strerror(-rc));
}

int pairing_offer_new(pairing *p, pairing_offer_info *info, sovmesh_error *err)
{
	if (atomic_load(&p->closing))
		return sovmesh_fail(err, -ECANCELED, "pairing is shutting down");
	if (p->offer) {
		offer_stop(p, p->offer);
		p->offer = NULL;
	}
	offer *o = calloc(1, sizeof(*o));
	if (!o)
		return sovmesh_fail(err, -ENOMEM, "pairing: out of memory");
	o->p = p;
	o->gen = ++p->next_gen;
	o->listen_fd = -1;
	o->stop_pipe[0] = o->stop_pipe[1] = -1;
	atomic_init(&o->attempts_left, p->max_attempts);
	int rc;
	if ((rc = pair_code_generate(o->code)) < 0) {
		rc = sovmesh_fail(err, rc, "pairing: no randomness for a code");
		goto fail;
	}
	if ((rc = make_pipe(o->stop_pipe)) < 0) {
		rc = sovmesh_fail(err, rc, "pairing: pipe: %s", strerror(-rc));
		goto fail;
	}
	if ((rc = gnutls_srp_allocate_server_credentials(&o->srp)) < 0) {
		o->srp = NULL;
		rc =
		    sovmesh_fail(err, -ENOMEM, "pairing: SRP credentials: %s", gnutls_strerror(rc));
		goto fail;
	}
	gnutls_srp_set_server_credentials_function(o->srp, srp_server_creds);
	if ((rc = open_listener(p, o, err)) < 0)
		goto fail;
	o->expires_mono_ms = mono_ms() + (int64_t)p->ttl_secs * 1000;
	o->info.expires_at = (int64_t)time(NULL) + p->ttl_secs;
	o->info.attempts_left = p->max_attempts;
	pair_code_format(o->code, o->info.code);
	atomic_store(&o->open, true);
	if ((rc = pthread_create(&o->thread, NULL, offer_main, o)) != 0) {
		rc = sovmesh_fail(err, -rc, "pairing: cannot start the listener thread: %s",
		                  strerror(rc));
		goto fail;
	}
	p->offer = o;
	if (info)
		*info = o->info;
	log_msg(SOVMESH_LOG_NOTICE, LOG_SRC,
	        "pairing code issued; listening on %s for %u s, %u attempts", o->info.listen,
	        p->ttl_secs, p->max_attempts);
	return 0;
fail:
	offer_free(o);
	return rc;
}

int pairing_offer_get(pairing *p, pairing_offer_info *info)
{
	offer *o = p->offer;
	if (!o || !atomic_load(&o->open))
		return 0;
	if (info) {
		*info = o->info;
		info->attempts_left = atomic_load(&o->attempts_left);
	}
	return 1;
}

int pairing_offer_cancel(pairing *p)
{
	if (!p->offer)
		return -ENOENT;
	bool was_open = atomic_load(&p->offer->open);
	offer_stop(p, p->offer);
	p->offer = NULL;
	return was_open ? 0 : -ENOENT;
}

/* ---- joiner ------------------------------------------------------------ */

static int join_fail(join *j, int status, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static int join_fail(join *j, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(j->message, sizeof(j->message), fmt, ap);
	va_end(ap);
	log_one_line(j->message);
	j->status = status;
	return status;
}

static int join_connect(join *j, io *io)
{
	pairing *p = j->p;
	struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
	                         .ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;
	char port[8];
	snprintf(port, sizeof(port), "%u", (unsigned)j->hp.port);
	int rc = getaddrinfo(j->hp.host, port, &hints, &ai);
	if (rc != 0)
		return join_fail(j, -EINVAL, "pairing: %s: %s", j->addr, gai_strerror(rc));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		freeaddrinfo(ai);
		return join_fail(j, rc, "pairing: socket: %s", strerror(-rc));
	}
	io->fd = fd;
	io->deadline = mono_ms() + p->io_timeout_ms;
	if (p->bind_host[0]) {
		struct addrinfo *src = NULL;
		struct addrinfo shints = {.ai_flags = AI_NUMERICHOST | AI_PASSIVE,
		                          .ai_family = ai->ai_family,
		                          .ai_socktype = SOCK_STREAM};
		/* Best effort: a source of another family is simply not used. */
		if (getaddrinfo(p->bind_host, "0", &shints, &src) == 0) {
			if (bind(fd, src->ai_addr, src->ai_addrlen) < 0)
				log_debug("pairing: cannot bind to %s: %s", p->bind_host,
				          strerror(errno));
			freeaddrinfo(src);
		}
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
		rc = -errno;
	} else if ((rc = io_wait(io, POLLOUT)) == 0) {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		rc = -soerr;
	}
	freeaddrinfo(ai);
	if (rc == 0)
		return 0;
	if (rc == -ECONNREFUSED)
		return join_fail(
		    j, rc,
		    "no pairing code outstanding at %s (connection refused): ask for a "
		    "new code",
		    j->addr);
	if (rc == -ECANCELED)
		return join_fail(j, rc, "pairing with %s was stopped", j->addr);
	return join_fail(j, rc, "pairing: cannot connect to %s: %s", j->addr,
	                 rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
}

static int join_read(join *j, gnutls_session_t s, io *io, linebuf *lb, pair_msg *msg,
                     const char *expect)
{
	sovmesh_error err = {0};
	int rc = read_line(s, io, lb, j->p->io_timeout_ms);
	if (rc < 0)
		return join_fail(j, rc == -ECANCELED ? rc : -EPROTO,
		                 "pairing with %s failed waiting for %s: %s", j->addr, expect,
		                 read_reason(rc));
	if (pair_msg_parse(lb->buf, lb->line_len, msg, &err) < 0) {
		send_error(s, io, err.message, j->p->io_timeout_ms);
		return join_fail(j, -EPROTO, "pairing with %s refused: %s", j->addr, err.message);
	}
	if (msg->type == PAIR_MSG_ERROR)
		return join_fail(j, -EPROTO, "pairing with %s failed: the issuer said: %s", j->addr,
		                 msg->error);
	return 0;
}

static void join_exchange(join *j, gnutls_session_t s, io *io)
{
	pairing *p = j->p;
	unsigned t = p->io_timeout_ms;
	sovmesh_error err = {0};
	pair_msg msg;
	memset(&msg, 0, sizeof(msg));
	linebuf *lb = calloc(1, sizeof(*lb));
	if (!lb) {
		join_fail(j, -ENOMEM, "pairing: out of memory");
		return;
	}
	int rc = send_all(s, io, p->hello_line, t);
	if (rc < 0) {
		join_fail(j, io->why == ECANCELED ? -ECANCELED : -EPROTO,
		          "pairing with %s failed sending pair-hello: %s", j->addr,
		          io_reason(io, rc));
		goto out;
	}
	if (join_read(j, s, io, lb, &msg, "the issuer's pair-hello") < 0)
		goto out;
	if (msg.type != PAIR_MSG_HELLO) {
		send_error(s, io, "expected pair-hello", t);
		join_fail(j, -EPROTO, "pairing with %s refused: expected the issuer's pair-hello",
		          j->addr);
		goto out;
	}
	if (j->expected[0] && strcmp(j->expected, msg.hello.fingerprint_hex) != 0) {
		send_error(s, io, "your fingerprint is not the one in the pairing URI", t);
		join_fail(
		    j, -EPERM,
		    "pairing with %s refused: it presented fingerprint %s, but the pairing URI "
		    "says %s; not pinned",
		    j->addr, msg.hello.fingerprint_hex, j->expected);
		goto out;
	}
	if (memcmp(msg.hello.fingerprint, p->self->fingerprint, IDENTITY_FP_LEN) == 0) {
		send_error(s, io, "that is this node's own certificate", t);
		join_fail(j, -EPROTO, "pairing with %s refused: it is this node itself", j->addr);
		goto out;
	}
	hostport seen = j->hp;
	seen.port = msg.hello.peer_port;
	char seen_text[PAIR_HOSTPORT_MAX + 1];
	hostport_format(&seen, seen_text, sizeof(seen_text));
	note_seen_address(&msg.hello, seen_text);
	if ((rc = call_pin(p, &p->closing, &msg.hello, &err)) < 0) {
		send_error(s, io, "the joiner could not pin you", t);
		join_fail(j, rc, "pairing with %s (%s) failed: cannot pin: %s", msg.hello.name,
		          msg.hello.short_fp, err.message);
		goto out;
	}
	char *confirm = NULL;
	if ((rc = pair_confirm_build(&confirm)) < 0 || (rc = send_all(s, io, confirm, t)) < 0) {
		free(confirm);
		join_fail(j, -EPROTO,
		          "pairing with %s (%s): pinned it, but sending pair-confirm failed: %s",
		          msg.hello.name, msg.hello.short_fp,
		          rc == -ENOMEM ? "out of memory" : io_reason(io, rc));
		goto out;
	}
	free(confirm);
	j->status = 0;
	snprintf(j->message, sizeof(j->message), "paired with %s (%s) at %s", msg.hello.name,
	         msg.hello.short_fp, j->addr);
	log_one_line(j->message);
	j->peer = msg.hello;
	memset(&msg.hello, 0, sizeof(msg.hello)); /* ownership moved */
out:
	pair_msg_clear(&msg);
	free(lb);
}

static void join_work(uv_work_t *w)
{
	join *j = w->data;
	pairing *p = j->p;
	io io = {.fd = -1, .stopfd = p->stop_pipe[0]};
	gnutls_srp_client_credentials_t cred = NULL;
	gnutls_session_t s = NULL;
	int rc;
	if (atomic_load(&p->closing)) {
		join_fail(j, -ECANCELED, "pairing with %s was stopped", j->addr);
		return;
	}
	if (join_connect(j, &io) < 0)
		goto out;
	if ((rc = gnutls_srp_allocate_client_credentials(&cred)) < 0 ||
	    (rc = gnutls_srp_set_client_credentials(cred, PAIRING_SRP_USER, j->code)) < 0 ||
	    (rc = session_new(&s, GNUTLS_CLIENT, cred, &io)) < 0) {
		join_fail(j, -ENOMEM, "pairing: cannot set up TLS-SRP: %s", gnutls_strerror(rc));
		goto out;
	}
	/* Accept only the big groups the issuer uses. */
	gnutls_srp_set_prime_bits(s, 3072);
	io.deadline = mono_ms() + p->io_timeout_ms;
	rc = handshake(s);
	if (rc < 0) {
		if (io.why == ECANCELED)
			join_fail(j, -ECANCELED, "pairing with %s was stopped", j->addr);
		else if (io.why == ETIMEDOUT)
			join_fail(j, -ETIMEDOUT, "pairing with %s: the TLS-SRP handshake timed out",
			          j->addr);
		else if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED || rc == GNUTLS_E_DECRYPTION_FAILED ||
		         rc == GNUTLS_E_PREMATURE_TERMINATION || rc == GNUTLS_E_PULL_ERROR)
			join_fail(
			    j, -EACCES,
			    "the issuer at %s refused the pairing code (wrong, expired, burned "
			    "or already used): %s",
			    j->addr, gnutls_strerror(rc));
		else
			join_fail(j, -EPROTO, "pairing with %s: TLS-SRP handshake failed: %s",
			          j->addr, gnutls_strerror(rc));
		goto out;
	}
	join_exchange(j, s, &io);
	io.deadline = mono_ms() + 1000;
	gnutls_bye(s, GNUTLS_SHUT_WR);
out:
	if (s)
		gnutls_deinit(s);
	if (cred)
		gnutls_srp_free_client_credentials(cred);
	if (io.fd >= 0)
		close(io.fd);
	gnutls_memset(j->code, 0, sizeof(j->code));
}

static void finish_close(pairing *p);

static void join_after(uv_work_t *w, int status)
{
	join *j = w->data;
	pairing *p = j->p;
	if (status == UV_ECANCELED && j->status == 0 && !j->message[0])
		join_fail(j, -ECANCELED, "pairing with %s was stopped", j->addr);
	if (j->done)
		j->done(j->ud, j->status, j->status == 0 ? &j->peer : NULL, j->message);
	pair_hello_clear(&j->peer);
	free(j);
	p->joins_running--;
	if (atomic_load(&p->closing) && p->joins_running == 0)
		finish_close(p);
}

int pairing_join(pairing *p, const char *code, const char *hostport_text,
                 const char *expected_fp_hex, pairing_join_fn done, void *ud, sovmesh_error *err)
{
	if (atomic_load(&p->closing))
		return sovmesh_fail(err, -ECANCELED, "pairing is shutting down");
	join *j = calloc(1, sizeof(*j));
	if (!j)
		return sovmesh_fail(err, -ENOMEM, "pairing: out of memory");
	int rc;
	if ((rc = pair_code_normalize(code, j->code, err)) < 0)
		goto fail;
	if (!hostport_text || strlen(hostport_text) > PAIR_HOSTPORT_MAX) {
		rc = sovmesh_fail(err, -EINVAL, "pairing address is missing or too long");
		goto fail;
	}
	if ((rc = pair_hostport_check("pairing address", hostport_text, &j->hp, err)) < 0)
		goto fail;
	strcpy(j->addr, hostport_text);
	if (expected_fp_hex) {
		uint8_t fp[IDENTITY_FP_LEN];
		if (identity_fp_from_hex(expected_fp_hex, fp) < 0) {
			rc = sovmesh_fail(err, -EINVAL,
			                  "expected issuer fingerprint must be 64 hex digits");
			goto fail;
		}
		identity_fp_to_hex(fp, j->expected);
	}
	j->p = p;
	j->done = done;
	j->ud = ud;
	j->work.data = j;
	if ((rc = uv_queue_work(p->loop, &j->work, join_work, join_after)) < 0) {
		rc = sovmesh_fail(err, -ENOMEM, "pairing: cannot queue the join: %s",
		                  uv_strerror(rc));
		goto fail;
	}
	p->joins_running++;
	return 0;
fail:
	gnutls_memset(j->code, 0, sizeof(j->code));
	free(j);
	return rc;
}

/* ---- life cycle -------------------------------------------------------- */

int pairing_new(uv_loop_t *loop, const identity *self, const pairing_config *cfg,
                pairing_pin_fn pin, pairing_event_fn on_event, void *ud, pairing **out,
                sovmesh_error *err)
{
	const char *why = NULL;
	pair_hello hello;
	int rc;
	if (!pin)
		return sovmesh_fail(err, -EINVAL, "pairing: a pin callback is required");
	pairing *p = calloc(1, sizeof(*p));
	if (!p)
		return sovmesh_fail(err, -ENOMEM, "pairing: out of memory");
	p->stop_pipe[0] = p->stop_pipe[1] = -1;
	if (hostport_parse(cfg->listen, 1, &p->listen, &why) < 0) {
		rc = sovmesh_fail(err, -EINVAL, "pairing.listen \"%s\": %s",
		                  cfg->listen ? cfg->listen : "", why);
		if (err)
			log_one_line(err->message);
		goto fail;
	}
	p->loop = loop;
	p->self = self;
	p->ttl_secs = cfg->code_ttl_secs ? cfg->code_ttl_secs : 600;
	p->max_attempts = cfg->max_attempts ? cfg->max_attempts : 5;
	p->io_timeout_ms = cfg->io_timeout_ms ? cfg->io_timeout_ms : 10000;
	if (cfg->bind_host)
		snprintf(p->bind_host, sizeof(p->bind_host), "%s", cfg->bind_host);
	p->pin = pin;
	p->on_event = on_event;
	p->ud = ud;
	if ((rc = pair_hello_from_identity(self, cfg->peer_port, cfg->addresses, cfg->n_addresses,
	                                   &hello, err)) < 0)
		goto fail;
	rc = pair_hello_build(&hello, &p->hello_line, err);
	pair_hello_clear(&hello);
	if (rc < 0)
		goto fail;
	if ((rc = make_pipe(p->stop_pipe)) < 0) {
		rc = sovmesh_fail(err, rc, "pairing: pipe: %s", strerror(-rc));
		goto fail;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	if ((rc = uv_async_init(loop, &p->async, on_async)) < 0) {
		pthread_cond_destroy(&p->cond);
		pthread_mutex_destroy(&p->lock);
		rc = sovmesh_fail(err, -ENOMEM, "pairing: uv_async_init: %s", uv_strerror(rc));
		goto fail;
	}
	p->async.data = p;
	*out = p;
	return 0;
fail:
	close_pipe(p->stop_pipe);
	free(p->hello_line);
	free(p);
	return rc;
}

static void on_async_closed(uv_handle_t *h)
{
	pairing *p = h->data;
	loop_msg *m = p->head;
	while (m) {
		loop_msg *next = m->next;
		pair_hello_clear(&m->peer);
		free(m);
		m = next;
	}
	void (*cb)(void *) = p->on_closed;
	void *cud = p->closed_ud;
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	close_pipe(p->stop_pipe);
	free(p->hello_line);
	free(p);
	if (cb)
		cb(cud);
}

static void finish_close(pairing *p)
{
	uv_close((uv_handle_t *)&p->async, on_async_closed);
}

void pairing_close(pairing *p, void (*on_closed)(void *ud), void *ud)
{
	if (!p || atomic_load(&p->closing))
		return;
	p->on_closed = on_closed;
	p->closed_ud = ud;
	atomic_store(&p->closing, true);
	poke(p->stop_pipe);
	pthread_mutex_lock(&p->lock);
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (p->offer) {
		offer_stop(p, p->offer);
		p->offer = NULL;
	}
	if (p->joins_running == 0)
		finish_close(p);
}
