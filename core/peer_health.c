/* GET /peer/v1/health (see peer_health.h). */
#include "peer_health.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "peer_table.h"

struct peer_health {
	const identity *id;
	int64_t default_capacity;
	peer_health_providers prov;
	int fl_enabled;
};

json_t *peer_health_json(const peer_health *h)
{
	json_t *models = h->prov.models ? h->prov.models(h->prov.ud) : NULL;
	if (!json_is_array(models)) {
		json_decref(models);
		models = json_array();
	}
	int64_t in_flight = 0, capacity = h->default_capacity;
	if (h->prov.load)
		h->prov.load(h->prov.ud, &in_flight, &capacity);
	int hot = 0, has_temp = 0;
	double temp_c = 0;
	if (h->prov.thermal)
		h->prov.thermal(h->prov.ud, &hot, &has_temp, &temp_c);
	int accepting = h->prov.accepting ? h->prov.accepting(h->prov.ud) : 0;
	int fl = h->fl_enabled;
	return json_pack("{s:s,s:s,s:i,s:o,s:{s:I,s:I},s:{s:b,s:o},s:b,s:b}", "name",
	                 h->id->node_name ? h->id->node_name : "", "fingerprint",
	                 h->id->fingerprint_hex, "protocol", PEER_PROTOCOL_VERSION, "models",
	                 models, "load", "in_flight", (json_int_t)in_flight, "capacity",
	                 (json_int_t)capacity, "thermal", "hot", hot, "temp_c",
	                 has_temp ? json_real(temp_c) : json_null(), "accepting", accepting,
	                 "federated_learning", fl);
}

static void on_health(void *ud, const http_request *req, http_response *resp)
{
	(void)req;
	json_t *j = peer_health_json(ud);
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text) {
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	http_response_send(resp, 200, "application/json", text, strlen(text));
	free(text);
}

/* See peer_health.h.  pt and id borrowed; prov copied. */
int peer_health_register(peer_transport *pt, const identity *id, int64_t default_capacity,
                         const peer_health_providers *prov, peer_health **out)
{
	if (!pt || !id || !out)
		return -EINVAL;
	peer_health *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->id = id;
	h->default_capacity = default_capacity;
	if (prov)
		h->prov = *prov;
	int r = peer_transport_route(pt, "GET", PEER_HEALTH_PATH, on_health, h);
	if (r < 0) {
		free(h);
		return r;
	}
	*out = h;
	return 0;
}

void peer_health_set_providers(peer_health *h, const peer_health_providers *prov)
{
	if (!h)
		return;
	if (prov)
		h->prov = *prov;
	else
		memset(&h->prov, 0, sizeof(h->prov));
}

void peer_health_set_fl_enabled(peer_health *h, int on)
{
	if (h)
		h->fl_enabled = on != 0;
}

void peer_health_free(peer_health *h)
{
	free(h);
}
