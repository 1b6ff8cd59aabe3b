/* libFuzzer target: discovery-mdns TXT validation.  The input is read as
 * DNS TXT wire data (a sequence of length-prefixed strings; a truncated
 * last string keeps what is there).  Anything may be refused with one
 * line; what is accepted must satisfy every rule the plugin relies on. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "txt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mdns_txt_item *items = calloc(size + 1, sizeof(*items));
	if (!items)
		return 0;
	size_t n = 0;
	for (size_t i = 0; i < size;) {
		size_t len = data[i++];
		if (len > size - i)
			len = size - i;
		items[n].data = data + i;
		items[n].len = len;
		n++;
		i += len;
	}
	mdns_txt t;
	char why[200];
	why[0] = '\0';
	int rc = mdns_txt_parse(items, n, &t, why, sizeof(why));
	if (rc == 0) {
		if (t.version != MDNS_TXT_VERSION)
			abort();
		if (strlen(t.fingerprint) != MDNS_TXT_FP_LEN)
			abort();
		for (size_t i = 0; i < MDNS_TXT_FP_LEN; i++)
			if (!strchr("0123456789abcdef", t.fingerprint[i]))
				abort();
		if (!mdns_txt_name_ok((const uint8_t *)t.name, strlen(t.name)))
			abort();
	} else {
		if ((rc != -EBADMSG && rc != -EPROTONOSUPPORT) || !why[0] || strchr(why, '\n'))
			abort();
	}
	free(items);
	return 0;
}
