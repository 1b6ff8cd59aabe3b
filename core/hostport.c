/* "host:port" parsing (see hostport.h). */
#include "hostport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int hostport_parse(const char *text, int allow_port0, hostport *out, const char **why)
{
	const char *reason = "missing ':port'";
	const char *host = text, *host_end, *colon;
	memset(out, 0, sizeof(*out));
	if (!text || !*text) {
		reason = "empty address";
		goto bad;
	}
	if (*text == '[') {
		host = text + 1;
		host_end = strchr(host, ']');
		if (!host_end) {
			reason = "missing ']' after an IPv6 address";
			goto bad;
		}
		colon = host_end + 1;
		if (*colon != ':')
			goto bad;
		out->family = AF_INET6;
	} else {
		colon = strrchr(text, ':');
		if (!colon)
			goto bad;
		host_end = colon;
		out->family = AF_INET;
	}
	size_t hlen = (size_t)(host_end - host);
	reason = "host must be a numeric IPv4 or [IPv6] address";
	if (hlen == 0 || hlen >= sizeof(out->host))
		goto bad;
	memcpy(out->host, host, hlen);
	out->host[hlen] = '\0';
	unsigned char buf[sizeof(struct in6_addr)];
	if (out->family == AF_INET6) {
		/* A zone id ("%eth0") follows link-local addresses. */
		char addr[HOSTPORT_HOST_MAX];
		snprintf(addr, sizeof(addr), "%s", out->host);
		char *pct = strchr(addr, '%');
		if (pct) {
			if (!pct[1])
				goto bad;
			*pct = '\0';
		}
		if (inet_pton(AF_INET6, addr, buf) != 1)
			goto bad;
	} else if (inet_pton(AF_INET, out->host, buf) != 1) {
		goto bad;
	}
	const char *p = colon + 1;
	reason = allow_port0 ? "port must be 0..65535" : "port must be 1..65535";
	if (!*p || strlen(p) > 5)
		goto bad;
	for (const char *c = p; *c; c++)
		if (*c < '0' || *c > '9')
			goto bad;
	long port = strtol(p, NULL, 10);
	if (port > 65535 || (port == 0 && !allow_port0))
		goto bad;
	out->port = (uint16_t)port;
	return 0;
bad:
	if (why)
		*why = reason;
	return -EINVAL;
}

void hostport_format(const hostport *hp, char *buf, size_t len)
{
	if (hp->family == AF_INET6)
		snprintf(buf, len, "[%s]:%u", hp->host, (unsigned)hp->port);
	else
		snprintf(buf, len, "%s:%u", hp->host, (unsigned)hp->port);
}
