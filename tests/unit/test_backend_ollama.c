/*
 * backend-ollama through the real loader, settings and host runtime (so
 * HTTP goes through the core's curl multi on the loop), against the
 * Ollama stand-in tests/fixtures/ollama_standin.py run as a subprocess,
 * plus a tiny canned responder thread for what the stand-in cannot do
 * (an Ollama without /api/embed, an over-long NDJSON line).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <sovmesh/backend.h>

#include "host.h"
#include "plugin_loader.h"
#include "plugin_settings.h"

/* ---- the stand-in subprocess ----------------------------------------- */

typedef struct standin {
	pid_t pid;
	char url[96];
} standin;

/* Start the stand-in with extra flags (NULL-ended); its first stdout line
 * is "LISTENING host:port". */
static void standin_start(standin *s, const char *const *flags)
{
	const char *data = getenv("SOVMESH_TEST_DATA_DIR");
	assert_non_null(data);
	char script[1024];
	snprintf(script, sizeof(script), "%s/../fixtures/ollama_standin.py", data);
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	const char *argv[32] = {"python3", script, "--listen", "127.0.0.1:0", "--quiet"};
	int n = 5;
	for (; flags && *flags && n < 30; flags++)
		argv[n++] = *flags;
	argv[n] = NULL;
	s->pid = fork();
	assert_true(s->pid >= 0);
	if (s->pid == 0) {
		/* Never outlive a test that crashed or was killed. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		dup2(pfd[1], 1);
		close(pfd[0]);
		close(pfd[1]);
		execvp("python3", (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	FILE *f = fdopen(pfd[0], "r");
	assert_non_null(f);
	char line[128] = {0};
	if (!fgets(line, sizeof(line), f))
		fail_msg("the Ollama stand-in (%s) printed no LISTENING line", script);
	fclose(f);
	char hostport[64];
	if (sscanf(line, "LISTENING %63s", hostport) != 1)
		fail_msg("unexpected first line from the stand-in: %s", line);
	snprintf(s->url, sizeof(s->url), "http://%s", hostport);
}

static void standin_stop(standin *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGTERM);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
	}
}

/* ---- a canned responder: fixed answers per path ---------------------- */

typedef struct canned {
	int fd;
	int port;
	pthread_t thread;
	const char *(*answer)(const char *path); /* whole HTTP response */
	int hits_embed, hits_embeddings;
} canned;

static void *canned_main(void *arg)
{
	canned *c = arg;
	for (;;) {
		int cfd = accept(c->fd, NULL, NULL);
		if (cfd < 0)
			return NULL;
		char req[65536];
		size_t got = 0;
		char *hdr_end = NULL;
		long clen = 0;
		while (got < sizeof(req) - 1) {
			ssize_t r = read(cfd, req + got, sizeof(req) - 1 - got);
			if (r <= 0)
				break;
			got += (size_t)r;
			req[got] = '\0';
			if (!hdr_end && (hdr_end = strstr(req, "\r\n\r\n"))) {
				char *cl = strcasestr(req, "Content-Length:");
				clen = cl && cl < hdr_end ? strtol(cl + 15, NULL, 10) : 0;
			}
			if (hdr_end && got >= (size_t)(hdr_end + 4 - req) + (size_t)clen)
				break;
		}
		char path[256] = {0};
		sscanf(req, "%*s %255s", path);
		if (strcmp(path, "/api/embed") == 0)
			c->hits_embed++;
		if (strcmp(path, "/api/embeddings") == 0)
			c->hits_embeddings++;
		const char *resp = c->answer(path);
		/* In pieces with pauses, as a streaming server would. */
		size_t len = strlen(resp), off = 0;
		while (off < len) {
			size_t n = len - off > 700 ? 700 : len - off;
			if (write(cfd, resp + off, n) < 0)
				break;
			off += n;
			usleep(2000);
		}
		close(cfd);
	}
}

static void canned_start(canned *c, const char *(*answer)(const char *))
{
	memset(c, 0, sizeof(*c));
	c->answer = answer;
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(c->fd >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(c->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t al = sizeof(a);
	getsockname(c->fd, (struct sockaddr *)&a, &al);
	c->port = ntohs(a.sin_port);
	assert_int_equal(listen(c->fd, 8), 0);
	assert_int_equal(pthread_create(&c->thread, NULL, canned_main, c), 0);
}

static void canned_stop(canned *c)
{
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	pthread_join(c->thread, NULL);
}

/* ---- fixture: loop, runtime, plugin instance ------------------------- */

#define MAX_CHUNKS 64

typedef struct fx {
	uv_loop_t loop;
	host_runtime *rt;
	plugin_search_path sp;
	plugin_instance *pi;
	const sovmesh_backend_ops *ops;
	standin si;
	canned cn;
	int have_canned;

	/* results */
	int n_chunks;
	char *chunks[MAX_CHUNKS];
	int done_flags[MAX_CHUNKS];
	uint64_t chunk_ms[MAX_CHUNKS];
	int done_calls;
	int code;
	long http_status;
	char message[512];
	char *json;
	float *vecs;
	size_t n_vecs, dim;
	uint64_t done_ms;
	int cancel_after; /* cancel in on_chunk after this many chunks; 0 never */
	sovmesh_backend_call *call;
} fx;

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	assert_int_equal(host_runtime_new(&f->loop, NULL, "ollama-test", &f->rt), 0);
	const char *dir = getenv("SOVMESH_BUILD_PLUGIN_DIR");
	assert_non_null(dir);
	assert_int_equal(plugin_search_path_build(&dir, 1, &f->sp), 0);
	*state = f;
	return 0;
}

static void load(fx *f, const char *url, const char *extra)
{
	sovmesh_error err = {0};
	loaded_plugin *lp = NULL;
	if (plugin_load_by_name(&f->sp, SOVMESH_KIND_BACKEND, "ollama", &lp, &err) < 0)
		fail_msg("load: %s", err.message);
	char p1[128];
	snprintf(p1, sizeof(p1), "url=%s", url);
	const char *params[] = {p1, extra};
	plugin_settings *s = NULL;
	if (plugin_settings_from_params(lp->label, lp->desc->settings, params, extra ? 2 : 1, &s,
	                                &err) < 0)
		fail_msg("settings: %s", err.message);
	if (plugin_instance_new(f->rt, lp, s, &f->pi, &err) < 0)
		fail_msg("create: %s", err.message);
	f->ops = f->pi->plugin->ops;
}

static int teardown(void **state)
{
	fx *f = *state;
	plugin_instance_free(f->pi);
	plugin_search_path_free(&f->sp);
	host_runtime_free(f->rt);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	standin_stop(&f->si);
	if (f->have_canned)
		canned_stop(&f->cn);
	for (int i = 0; i < f->n_chunks; i++)
		free(f->chunks[i]);
	free(f->json);
	free(f->vecs);
	free(f);
	return 0;
}

static void run_until_done(fx *f, uint64_t max_ms)
{
	uint64_t deadline = uv_now(&f->loop) + max_ms;
	while (f->done_calls == 0 && uv_now(&f->loop) < deadline) {
		uv_update_time(&f->loop);
		uv_run(&f->loop, UV_RUN_ONCE);
	}
	assert_int_equal(f->done_calls, 1);
}

static void idle_cb(uv_timer_t *t)
{
	(void)t;
}

/* Keep the loop turning for ms (so a late callback would show). */
static void run_for(fx *f, uint64_t ms)
{
	uv_timer_t t;
	uv_timer_init(&f->loop, &t);
	uv_timer_start(&t, idle_cb, 10, 10);
	uint64_t end = uv_now(&f->loop) + ms;
	while (uv_now(&f->loop) < end)
		uv_run(&f->loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void status_into(fx *f, const sovmesh_backend_status *st)
{
	f->done_calls++;
	f->code = st->code;
	f->http_status = st->http_status;
	snprintf(f->message, sizeof(f->message), "%s", st->message ? st->message : "");
	f->done_ms = uv_now(&f->loop);
}

static void on_chunk(void *ud, const sovmesh_gen_chunk *ch)
{
	fx *f = ud;
	assert_true(f->n_chunks < MAX_CHUNKS);
	f->chunks[f->n_chunks] = strndup(ch->json, ch->json_len);
	f->done_flags[f->n_chunks] = ch->done;
	uv_update_time(&f->loop);
	f->chunk_ms[f->n_chunks] = uv_now(&f->loop);
	f->n_chunks++;
	if (f->cancel_after && f->n_chunks == f->cancel_after)
		f->ops->cancel(f->pi->instance, f->call);
}

static void on_gen_done(void *ud, const sovmesh_backend_status *st)
{
	status_into(ud, st);
}

static void on_json(void *ud, const sovmesh_backend_status *st, const char *json, size_t len)
{
	fx *f = ud;
	status_into(f, st);
	if (json)
		f->json = strndup(json, len);
}

static void on_embed(void *ud, const sovmesh_backend_status *st, const float *v, size_t n,
                     size_t dim)
{
	fx *f = ud;
	status_into(f, st);
	f->n_vecs = n;
	f->dim = dim;
	if (v) {
		f->vecs = malloc(n * dim * sizeof(float));
		memcpy(f->vecs, v, n * dim * sizeof(float));
	}
}

static const sovmesh_gen_callbacks gen_cbs = {
    .size = sizeof(sovmesh_gen_callbacks),
    .on_chunk = on_chunk,
    .on_done = on_gen_done,
};

static void chat(fx *f, const char *model, int stream, uint32_t timeout_ms)
{
	char body[512];
	snprintf(body, sizeof(body),
	         "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":"
	         "\"one two three four\"}]%s}",
	         model, stream ? "" : ",\"stream\":false");
	sovmesh_gen_request req = {
	    .size = sizeof(req),
	    .kind = SOVMESH_GEN_CHAT,
	    .model = model,
	    .body_json = body,
	    .body_len = strlen(body),
	    .stream = stream,
	    .timeout_ms = timeout_ms,
	};
	f->call = f->ops->generate(f->pi->instance, &req, &gen_cbs, f);
	assert_non_null(f->call);
}

static void start_with(fx *f, const char *const *flags, const char *extra)
{
	standin_start(&f->si, flags);
	load(f, f->si.url, extra);
}

/* ---- tests ----------------------------------------------------------- */

static void streaming_chat(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--delay-ms", "80", NULL};
	start_with(f, flags, "parallel=3");
	assert_int_equal(f->ops->parallel_slots(f->pi->instance), 3);
	chat(f, "llama3.2", 1, 20000);
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	/* "echo: one two three four": 5 words + the final object. */
	assert_int_equal(f->n_chunks, 6);
	char text[256] = "";
	for (int i = 0; i < f->n_chunks; i++) {
		json_t *o = json_loads(f->chunks[i], 0, NULL);
		assert_non_null(o);
		assert_int_equal(f->done_flags[i], i == f->n_chunks - 1);
		assert_int_equal(json_is_true(json_object_get(o, "done")), f->done_flags[i]);
		strcat(text, json_string_value(json_object_get(json_object_get(o, "message"),
		                                               "content")));
		json_decref(o);
	}
	assert_string_equal(text, "echo: one two three four");
	/* Relayed as they arrived: the server paused 80 ms between chunks, so
	 * the first came well before the last (a lower bound only). */
	assert_true(f->chunk_ms[f->n_chunks - 1] - f->chunk_ms[0] >= 200);
}

static void non_streaming_generate(void **state)
{
	fx *f = *state;
	start_with(f, NULL, NULL);
	/* The body streams by default; req.stream = 0 must win. */
	const char *body = "{\"model\":\"llama3.2\",\"prompt\":\"hi there\"}";
	sovmesh_gen_request req = {
	    .size = sizeof(req),
	    .kind = SOVMESH_GEN_GENERATE,
	    .model = "llama3.2",
	    .body_json = body,
	    .body_len = strlen(body),
	    .stream = 0,
	};
	f->call = f->ops->generate(f->pi->instance, &req, &gen_cbs, f);
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_int_equal(f->n_chunks, 1);
	assert_int_equal(f->done_flags[0], 1);
	json_t *o = json_loads(f->chunks[0], 0, NULL);
	assert_string_equal(json_string_value(json_object_get(o, "response")), "echo: hi there");
	json_decref(o);
}

static void tags_ps_version_show(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--models", "llama3.2:latest,qwen2:0.5b", NULL};
	start_with(f, flags, NULL);
	assert_non_null(f->ops->list_models(f->pi->instance, on_json, f));
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_non_null(strstr(f->json, "\"qwen2:0.5b\""));
	json_t *o = json_loads(f->json, 0, NULL);
	assert_int_equal(json_array_size(json_object_get(o, "models")), 2);
	json_decref(o);

	free(f->json);
	f->json = NULL;
	f->done_calls = 0;
	assert_non_null(f->ops->info(f->pi->instance, "version", NULL, on_json, f));
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_non_null(strstr(f->json, "\"version\""));

	free(f->json);
	f->json = NULL;
	f->done_calls = 0;
	assert_non_null(f->ops->info(f->pi->instance, "ps", NULL, on_json, f));
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_non_null(strstr(f->json, "\"models\""));

	free(f->json);
	f->json = NULL;
	f->done_calls = 0;
	assert_non_null(
	    f->ops->info(f->pi->instance, "show", "{\"model\":\"nope\"}", on_json, f));
	run_until_done(f, 20000);
	assert_int_equal(f->code, -ENOENT);
	assert_int_equal(f->http_status, 404);
	assert_non_null(strstr(f->message, "not found"));

	assert_null(f->ops->info(f->pi->instance, "pull", NULL, on_json, f));
}

static void embed_vectors(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--embed-dim", "16", NULL};
	start_with(f, flags, NULL);
	const char *texts[] = {"hello world", "another text", "x"};
	assert_non_null(f->ops->embed(f->pi->instance, "llama3.2", texts, 3, 20000, on_embed, f));
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_int_equal(f->n_vecs, 3);
	assert_int_equal(f->dim, 16);
	/* Different texts, different vectors. */
	assert_true(memcmp(f->vecs, f->vecs + 16, 16 * sizeof(float)) != 0);
}

static void busy_is_ebusy(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--busy", NULL};
	start_with(f, flags, NULL);
	chat(f, "llama3.2", 1, 20000);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -EBUSY);
	assert_int_equal(f->http_status, 503);
	assert_int_equal(f->n_chunks, 0);
	assert_non_null(strstr(f->message, "server busy"));
}

static void unknown_model_is_enoent(void **state)
{
	fx *f = *state;
	start_with(f, NULL, NULL);
	chat(f, "nope", 1, 20000);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -ENOENT);
	assert_int_equal(f->http_status, 404);
	assert_non_null(strstr(f->message, "\"nope\" not found"));
}

static void error_mid_stream_is_eproto(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--fail-mid-stream", "2", NULL};
	start_with(f, flags, NULL);
	chat(f, "llama3.2", 1, 20000);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -EPROTO);
	assert_int_equal(f->n_chunks, 2);
	assert_int_equal(f->done_flags[1], 0);
	assert_non_null(strstr(f->message, "unexpected EOF"));
}

static void cut_mid_stream_is_an_error(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--cut-mid-stream", "2", NULL};
	start_with(f, flags, NULL);
	chat(f, "llama3.2", 1, 20000);
	run_until_done(f, 20000);
	assert_true(f->code == -EIO || f->code == -EPROTO);
	assert_int_equal(f->n_chunks, 2);
}

static void connection_refused(void **state)
{
	fx *f = *state;
	/* A port nobody listens on: bind one, note it, close it. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t al = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &al);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
	close(fd);
	load(f, url, NULL);
	chat(f, "llama3.2", 1, 20000);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -ECONNREFUSED);
	assert_int_equal(f->n_chunks, 0);
}

static void timeout_is_etimedout(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--first-delay-ms", "5000", NULL};
	start_with(f, flags, NULL);
	chat(f, "llama3.2", 1, 300);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -ETIMEDOUT);
	assert_int_equal(f->n_chunks, 0);
}

static void cancel_mid_stream(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--delay-ms", "50", NULL};
	start_with(f, flags, NULL);
	f->cancel_after = 2;
	chat(f, "llama3.2", 1, 20000);
	uint64_t deadline = uv_now(&f->loop) + 20000;
	while (f->n_chunks < 2 && uv_now(&f->loop) < deadline)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(f->n_chunks, 2);
	/* The rest of the answer would take ~250 ms: nothing may follow. */
	run_for(f, 700);
	assert_int_equal(f->n_chunks, 2);
	assert_int_equal(f->done_calls, 0);
}

static void cancel_from_outside_and_destroy_with_calls_open(void **state)
{
	fx *f = *state;
	const char *flags[] = {"--first-delay-ms", "2000", NULL};
	start_with(f, flags, NULL);
	chat(f, "llama3.2", 1, 20000);
	run_for(f, 100);
	f->ops->cancel(f->pi->instance, f->call);
	/* A second call left open: destroy() must end it silently. */
	chat(f, "llama3.2", 1, 20000);
	run_for(f, 100);
	assert_int_equal(f->n_chunks, 0);
	assert_int_equal(f->done_calls, 0);
}

/* How many requests the stand-in recorded with this method and a path
 * starting with `prefix` (its GET /__standin/requests log). */
static int count_requests(fx *f, const char *method, const char *prefix)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd),
	         "python3 -c 'import json,urllib.request;"
	         "r=json.load(urllib.request.urlopen(\"%s/__standin/requests\",timeout=10))[\"requests\"];"
	         "print(sum(1 for x in r if x[\"method\"]==\"%s\" and x[\"path\"].startswith(\"%s\")))'",
	         f->si.url, method, prefix);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	int n = -1;
	if (fscanf(p, "%d", &n) != 1)
		n = -1;
	pclose(p);
	return n;
}

static void adapter_create(void **state)
{
	fx *f = *state;
	start_with(f, NULL, NULL);
	char dir[] = "/tmp/sovmesh-ollama-adapter-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char p[256];
	snprintf(p, sizeof(p), "%s/adapter_model.safetensors", dir);
	FILE *fp = fopen(p, "w");
	fputs("not really safetensors, the stand-in only hashes it", fp);
	fclose(fp);
	snprintf(p, sizeof(p), "%s/adapter_config.json", dir);
	fp = fopen(p, "w");
	fputs("{\"peft_type\":\"LORA\",\"r\":8}", fp);
	fclose(fp);
	sovmesh_adapter_apply req = {
	    .size = sizeof(req),
	    .base_model = "llama3.2",
	    .adapter_dir = dir,
	    .target_model = "llama3.2-fl",
	};
	assert_non_null(f->ops->apply_adapter(f->pi->instance, &req, on_json, f));
	run_until_done(f, 20000);
	if (f->code != 0)
		fail_msg("apply_adapter: %s", f->message);
	assert_non_null(strstr(f->json, "success"));
	/* Published: show knows it, with the adapter layers. */
	free(f->json);
	f->json = NULL;
	f->done_calls = 0;
	f->ops->info(f->pi->instance, "show", "{\"model\":\"llama3.2-fl\"}", on_json, f);
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_non_null(strstr(f->json, "ADAPTER sha256:"));
	/* The same adapter again under another name: HEAD finds both blobs,
	 * so nothing is uploaded twice. */
	free(f->json);
	f->json = NULL;
	f->done_calls = 0;
	req.target_model = "llama3.2-fl2";
	assert_non_null(f->ops->apply_adapter(f->pi->instance, &req, on_json, f));
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_int_equal(count_requests(f, "POST", "/api/blobs/"), 2);
	assert_int_equal(count_requests(f, "HEAD", "/api/blobs/"), 4);
	assert_int_equal(count_requests(f, "POST", "/api/create"), 2);
	/* A missing directory fails cleanly, after the slot returned. */
	free(f->json);
	f->json = NULL;
	f->done_calls = 0;
	req.adapter_dir = "/nonexistent/adapter";
	assert_non_null(f->ops->apply_adapter(f->pi->instance, &req, on_json, f));
	assert_int_equal(f->done_calls, 0);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -ENOENT);
	assert_non_null(strstr(f->message, "/nonexistent/adapter/adapter_model.safetensors"));
	snprintf(p, sizeof(p), "%s/adapter_model.safetensors", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/adapter_config.json", dir);
	unlink(p);
	rmdir(dir);
}

/* An Ollama older than 0.3.0: no /api/embed, only /api/embeddings. */
static const char *old_ollama(const char *path)
{
	if (strcmp(path, "/api/embeddings") == 0)
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
		       "Content-Length: 29\r\nConnection: close\r\n\r\n"
		       "{\"embedding\":[0.5,-1.0,2.25]}";
	return "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
	       "Content-Length: 18\r\nConnection: close\r\n\r\n404 page not found";
}

static void legacy_embeddings_fallback(void **state)
{
	fx *f = *state;
	canned_start(&f->cn, old_ollama);
	f->have_canned = 1;
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", f->cn.port);
	load(f, url, NULL);
	const char *texts[] = {"a", "b"};
	f->ops->embed(f->pi->instance, "m", texts, 2, 20000, on_embed, f);
	run_until_done(f, 20000);
	assert_int_equal(f->code, 0);
	assert_int_equal(f->n_vecs, 2);
	assert_int_equal(f->dim, 3);
	assert_true(f->vecs[4] == -1.0f);
	assert_int_equal(f->cn.hits_embed, 1);
	assert_int_equal(f->cn.hits_embeddings, 2);
}

static char long_line_resp[(2u << 20) + 256];

static const char *long_line(const char *path)
{
	(void)path;
	return long_line_resp;
}

static void over_long_line_is_eproto(void **state)
{
	fx *f = *state;
	/* A first good line, then one line of 2 MiB without a newline. */
	int n = snprintf(long_line_resp, sizeof(long_line_resp),
	                 "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
	                 "Connection: close\r\n\r\n{\"done\":false}\n{\"x\":\"");
	memset(long_line_resp + n, 'a', (2u << 20));
	canned_start(&f->cn, long_line);
	f->have_canned = 1;
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", f->cn.port);
	load(f, url, NULL);
	chat(f, "llama3.2", 1, 20000);
	run_until_done(f, 20000);
	assert_int_equal(f->code, -EPROTO);
	assert_int_equal(f->n_chunks, 1);
	assert_non_null(strstr(f->message, "over"));
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(streaming_chat, setup, teardown),
	    cmocka_unit_test_setup_teardown(non_streaming_generate, setup, teardown),
	    cmocka_unit_test_setup_teardown(tags_ps_version_show, setup, teardown),
	    cmocka_unit_test_setup_teardown(embed_vectors, setup, teardown),
	    cmocka_unit_test_setup_teardown(busy_is_ebusy, setup, teardown),
	    cmocka_unit_test_setup_teardown(unknown_model_is_enoent, setup, teardown),
	    cmocka_unit_test_setup_teardown(error_mid_stream_is_eproto, setup, teardown),
	    cmocka_unit_test_setup_teardown(cut_mid_stream_is_an_error, setup, teardown),
	    cmocka_unit_test_setup_teardown(connection_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(timeout_is_etimedout, setup, teardown),
	    cmocka_unit_test_setup_teardown(cancel_mid_stream, setup, teardown),
	    cmocka_unit_test_setup_teardown(cancel_from_outside_and_destroy_with_calls_open, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(adapter_create, setup, teardown),
	    cmocka_unit_test_setup_teardown(legacy_embeddings_fallback, setup, teardown),
	    cmocka_unit_test_setup_teardown(over_long_line_is_eproto, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
