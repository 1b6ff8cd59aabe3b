/*
 * "host:port" as used in config (listen addresses), pairing URIs and the
 * trust store: a numeric IPv4 address, or a numeric IPv6 address in
 * brackets ("[fe80::1%eth0]:47470"), then a decimal port.  Names are not
 * accepted: resolving would make a config or a URI depend on DNS.
 */
#ifndef SOVMESH_CORE_HOSTPORT_H
#define SOVMESH_CORE_HOSTPORT_H

#include <netinet/in.h>
#include <stdint.h>

/* Room for the longest host: an IPv6 literal with a zone id. */
#define HOSTPORT_HOST_MAX 64
/* Room for a formatted "[host]:port" and its NUL. */
#define HOSTPORT_TEXT_MAX (HOSTPORT_HOST_MAX + 9)

typedef struct hostport {
	char host[HOSTPORT_HOST_MAX]; /* without brackets */
	uint16_t port;
	int family; /* AF_INET or AF_INET6 */
} hostport;

/*
 * Parse `text`.  `allow_port0` accepts port 0 (listen on any free port).
 * 0, or -EINVAL with a static reason in *why ("missing ':port'",
 * "port must be 1..65535", "host must be a numeric IPv4 or [IPv6] address").
 */
int hostport_parse(const char *text, int allow_port0, hostport *out, const char **why);

/* Format back as "1.2.3.4:5" or "[::1]:5".  buf of HOSTPORT_TEXT_MAX bytes. */
void hostport_format(const hostport *hp, char *buf, size_t len);

/*
 * The addresses other devices can reach a listener on: `listen_host` itself
 * unless it is a wildcard (0.0.0.0 / ::), else every up, non-loopback IPv4
 * address of this machine (falling back to 127.0.0.1 when there is none),
 * each with `port`.  Writes at most `max` entries into out[]; returns how
 * many.
 */
size_t hostport_reachable(const char *listen_host, uint16_t port, char (*out)[HOSTPORT_TEXT_MAX],
                          size_t max);

#endif
