/* "host:port" parsing (see hostport.h). */
#include "hostport.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
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

size_t hostport_reachable(const char *listen_host, uint16_t port, char (*out)[HOSTPORT_TEXT_MAX],
                          size_t max)
{
	size_t n = 0;
	if (max == 0)
		return 0;
	int wildcard = strcmp(listen_host, "0.0.0.0") == 0 || strcmp(listen_host, "::") == 0;
	if (!wildcard) {
		hostport hp = {.port = port,
		               .family = strchr(listen_host, ':') ? AF_INET6 : AF_INET};
		snprintf(hp.host, sizeof(hp.host), "%s", listen_host);
		hostport_format(&hp, out[0], HOSTPORT_TEXT_MAX);
		return 1;
	}
	struct ifaddrs *ifs = NULL;
	if (getifaddrs(&ifs) == 0) {
		for (struct ifaddrs *i = ifs; i && n < max; i = i->ifa_next) {
			if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
				continue;
			if (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))
				continue;
			hostport hp = {.port = port, .family = AF_INET};
			const struct sockaddr_in *sin = (const struct sockaddr_in *)i->ifa_addr;
			if (!inet_ntop(AF_INET, &sin->sin_addr, hp.host, sizeof(hp.host)))
				continue;
			hostport_format(&hp, out[n++], HOSTPORT_TEXT_MAX);
		}
		freeifaddrs(ifs);
	}
	if (n == 0)
		snprintf(out[n++], HOSTPORT_TEXT_MAX, "127.0.0.1:%u", (unsigned)port);
	return n;
}
