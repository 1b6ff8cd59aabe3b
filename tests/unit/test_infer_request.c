/*
 * infer_request.c: Ollama /api/chat and /api/generate bodies checked with
 * one-line refusals naming the field; the peer payload carrying only the
 * last user text (no system prompt, history, options or images); the
 * serving side's strict payload check and the exact backend bodies.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "infer_request.h"

#define CHAT SOVMESH_GEN_CHAT
#define GEN  SOVMESH_GEN_GENERATE

static void parse_ok(sovmesh_gen_kind kind, const char *body, infer_request *r)
{
	sovmesh_error err = {0};
	int rc = infer_request_parse(kind, body, strlen(body), r, &err);
	if (rc != 0)
		fail_msg("refused (%d): %s\n  body: %s", rc, err.message, body);
	assert_int_equal(r->kind, kind);
	assert_non_null(r->model);
	assert_non_null(r->body);
}

/* A refusal: -EINVAL, one non-empty line containing `want`, *out zeroed. */
static void check_refusal(int rc, const sovmesh_error *err, const infer_request *r,
                          const char *want, const char *input)
{
	if (rc != -EINVAL)
		fail_msg("expected -EINVAL, got %d (%s)\n  input: %s", rc, err->message, input);
	if (!strstr(err->message, want))
		fail_msg("error \"%s\" does not contain \"%s\"\n  input: %s", err->message, want,
		         input);
	assert_null(strchr(err->message, '\n'));
	assert_null(r->model);
	assert_null(r->body);
	assert_null(r->last_user_text);
}

static void refuse(sovmesh_gen_kind kind, const char *body, const char *want)
{
	sovmesh_error err = {0};
	infer_request r;
	memset(&r, 0xa5, sizeof(r));
	int rc = infer_request_parse(kind, body, strlen(body), &r, &err);
	check_refusal(rc, &err, &r, want, body);
}

static void refuse_payload(const char *payload, const char *want)
{
	sovmesh_error err = {0};
	infer_request r;
	memset(&r, 0xa5, sizeof(r));
	int rc = infer_request_from_peer_payload(payload, strlen(payload), &r, &err);
	check_refusal(rc, &err, &r, want, payload);
}

static char *payload_of(const infer_request *r)
{
	char *p = NULL;
	size_t len = 0;
	assert_int_equal(infer_peer_payload(r, &p, &len), 0);
	assert_non_null(p);
	assert_int_equal(len, strlen(p));
	return p;
}

static const char chat_body[] =
    "{\"model\":\"llama3.2:3b\","
    "\"messages\":["
    "{\"role\":\"system\",\"content\":\"SECRET-SYSTEM-PROMPT you are a pirate\"},"
    "{\"role\":\"user\",\"content\":\"OLDER-QUESTION my bank PIN is 1234\"},"
    "{\"role\":\"assistant\",\"content\":\"OLDER-ANSWER noted\"},"
    "{\"role\":\"user\",\"content\":\"What is the capital of France?\","
    "\"images\":[\"SU1BR0VEQVRB\"]},"
    "{\"role\":\"assistant\",\"content\":\"PARTIAL-ASSISTANT The capital\"}],"
    "\"options\":{\"temperature\":0.5,\"num_ctx\":4096,\"seed\":424242},"
    "\"format\":{\"type\":\"object\",\"title\":\"FORMAT-SCHEMA\"},"
    "\"keep_alive\":\"5m\",\"think\":false,"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"TOOL-NAME\"}}],"
    "\"x_custom\":{\"a\":[1,2],\"b\":\"UNKNOWN-FIELD\"}}";

static void test_chat_valid(void **state)
{
	(void)state;
	infer_request r;
	parse_ok(CHAT, chat_body, &r);
	assert_string_equal(r.model, "llama3.2:3b");
	assert_int_equal(r.stream, 1);
	assert_int_equal(r.has_images, 1);
	/* the last user message, although an assistant message follows */
	assert_string_equal(r.last_user_text, "What is the capital of France?");
	/* the system prompt and history stay in the local body */
	json_t *msgs = json_object_get(r.body, "messages");
	assert_int_equal(json_array_size(msgs), 5);
	assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
	                    "SECRET-SYSTEM-PROMPT you are a pirate");
	infer_request_clear(&r);
	assert_null(r.model);
	assert_null(r.body);
	infer_request_clear(&r); /* twice is harmless */

	/* all four roles, tool_calls, nulls for optional fields, empty
	 * messages (Ollama loads the model), no messages at all */
	parse_ok(CHAT,
	         "{\"model\":\"m\",\"messages\":["
	         "{\"role\":\"user\",\"content\":\"weather?\"},"
	         "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":"
	         "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}}]},"
	         "{\"role\":\"tool\",\"content\":\"22C\",\"tool_name\":\"get_weather\"},"
	         "{\"role\":\"user\",\"content\":\"and tomorrow?\",\"images\":[]}],"
	         "\"options\":null,\"format\":\"json\",\"keep_alive\":300,\"think\":\"high\"}",
	         &r);
	assert_string_equal(r.last_user_text, "and tomorrow?");
	assert_int_equal(r.has_images, 0);
	infer_request_clear(&r);
	parse_ok(CHAT, "{\"model\":\"m\",\"messages\":[]}", &r);
	assert_null(r.last_user_text);
	infer_request_clear(&r);
	parse_ok(CHAT, "{\"model\":\"m\"}", &r);
	assert_null(r.last_user_text);
	infer_request_clear(&r);
	parse_ok(CHAT, "{\"model\":\"m\",\"keep_alive\":-1.5}", &r);
	infer_request_clear(&r);

	/* the body need not be NUL-terminated: only `len` bytes count */
	static const char buf[] = "{\"model\":\"m\",\"messages\":[]}GARBAGE";
	sovmesh_error err = {0};
	assert_int_equal(infer_request_parse(CHAT, buf, sizeof(buf) - 1 - 7, &r, &err), 0);
	infer_request_clear(&r);
	assert_int_equal(infer_request_parse(CHAT, buf, sizeof(buf) - 1, &r, &err), -EINVAL);
	assert_non_null(strstr(err.message, "body is not valid JSON"));
}

static void test_generate_valid(void **state)
{
	(void)state;
	infer_request r;
	parse_ok(GEN,
	         "{\"model\":\"hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M\","
	         "\"prompt\":\"Why is the sky blue?\",\"suffix\":\"\",\"system\":\"SYS\","
	         "\"template\":\"{{ .Prompt }}\",\"raw\":false,\"context\":[1,2,-3],"
	         "\"images\":[],\"stream\":false,\"options\":{\"top_k\":20}}",
	         &r);
	assert_string_equal(r.model, "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M");
	assert_string_equal(r.last_user_text, "Why is the sky blue?");
	assert_int_equal(r.stream, 0);
	assert_int_equal(r.has_images, 0);
	infer_request_clear(&r);

	parse_ok(GEN, "{\"model\":\"llava\",\"prompt\":\"what is this?\",\"images\":[\"aGk=\"]}",
	         &r);
	assert_int_equal(r.has_images, 1);
	assert_int_equal(r.stream, 1);
	infer_request_clear(&r);

	/* no prompt: Ollama loads the model; there is no text for a peer */
	parse_ok(GEN, "{\"model\":\"m\"}", &r);
	assert_null(r.last_user_text);
	infer_request_clear(&r);

	/* "messages" means nothing to generate: passed through unchecked */
	parse_ok(GEN, "{\"model\":\"m\",\"prompt\":\"p\",\"messages\":7}", &r);
	infer_request_clear(&r);
}

static void test_stream(void **state)
{
	(void)state;
	static const struct {
		const char *body;
		int stream;
	} cases[] = {
	    {"{\"model\":\"m\",\"messages\":[]}", 1},
	    {"{\"model\":\"m\",\"messages\":[],\"stream\":false}", 0},
	    {"{\"model\":\"m\",\"messages\":[],\"stream\":true}", 1},
	    {"{\"model\":\"m\",\"messages\":[],\"stream\":null}", 1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		infer_request r;
		parse_ok(CHAT, cases[i].body, &r);
		assert_int_equal(r.stream, cases[i].stream);
		infer_request_clear(&r);
		parse_ok(GEN, cases[i].body, &r);
		assert_int_equal(r.stream, cases[i].stream);
		infer_request_clear(&r);
	}
}

static void test_refusals(void **state)
{
	(void)state;
	static const struct {
		sovmesh_gen_kind kind;
		const char *body;
		const char *want;
	} cases[] = {
	    {CHAT, "", "body is not valid JSON: "},
	    {CHAT, "{\"model\":\"m\",", "body is not valid JSON: "},
	    {CHAT, "model=m", "body is not valid JSON: "},
	    {CHAT, "{\"model\":\"m\"}\n{}", "at line 2 column"},
	    {GEN, "[1,2]", "body must be a JSON object"},
	    {GEN, "\"just a string\"", "body must be a JSON object"},
	    {CHAT, "{\"messages\":[]}", "model is required"},
	    {CHAT, "{\"model\":null}", "model is required"},
	    {CHAT, "{\"model\":7}", "model must be a string"},
	    {GEN, "{\"model\":\"\"}", "model must not be empty"},
	    {GEN, "{\"model\":\"a\\tb\"}", "model must not contain control characters"},
	    {GEN, "{\"model\":\"a\\nb\"}", "model must not contain control characters"},
	    {GEN, "{\"model\":\"a\\u007fb\"}", "model must not contain control characters"},
	    {GEN, "{\"model\":\"a\\u0085b\"}", "model must not contain control characters"},
	    {GEN, "{\"model\":\"llama 3\"}",
	     "model must not contain control characters or whitespace"},
	    {GEN, "{\"model\":\"m\\u0000x\"}", "body is not valid JSON: "},
	    {CHAT, "{\"model\":\"m\",\"messages\":{}}", "messages must be an array"},
	    {CHAT, "{\"model\":\"m\",\"messages\":\"hi\"}", "messages must be an array"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},\"hi\"]}",
	     "messages[1] must be an object"},
	    {CHAT,
	     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"},{\"role\":\"user\"},"
	     "{\"role\":\"admin\"}]}",
	     "messages[2].role must be one of system, user, assistant, tool"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"content\":\"a\"}]}",
	     "messages[0].role must be one of system, user, assistant, tool"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":1}]}",
	     "messages[0].role must be one of"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"User\"}]}",
	     "messages[0].role must be one of"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]}",
	     "messages[0].content must be a string"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000\"}]}",
	     "body is not valid JSON: "},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"images\":\"aGk=\"}]}",
	     "messages[0].images must be an array of strings"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"images\":[\"aGk=\",3]}]}",
	     "messages[0].images[1] must be a string"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}",
	     "messages[0].tool_calls must be an array"},
	    {GEN, "{\"model\":\"m\",\"images\":[null]}", "images[0] must be a string"},
	    {GEN, "{\"model\":\"m\",\"images\":{}}", "images must be an array of strings"},
	    {CHAT, "{\"model\":\"m\",\"options\":[]}", "options must be an object"},
	    {GEN, "{\"model\":\"m\",\"options\":\"temperature=1\"}", "options must be an object"},
	    {CHAT, "{\"model\":\"m\",\"stream\":\"false\"}", "stream must be true or false"},
	    {GEN, "{\"model\":\"m\",\"stream\":0}", "stream must be true or false"},
	    {CHAT, "{\"model\":\"m\",\"keep_alive\":true}",
	     "keep_alive must be a string or a number"},
	    {GEN, "{\"model\":\"m\",\"keep_alive\":{}}", "keep_alive must be a string or a number"},
	    {CHAT, "{\"model\":\"m\",\"format\":1}", "format must be a string or an object"},
	    {CHAT, "{\"model\":\"m\",\"think\":1}", "think must be true, false or a string"},
	    {GEN, "{\"model\":\"m\",\"tools\":{}}", "tools must be an array"},
	    {GEN, "{\"model\":\"m\",\"context\":\"1,2\"}", "context must be an array of integers"},
	    {GEN, "{\"model\":\"m\",\"context\":[1,2.5]}", "context[1] must be an integer"},
	    {GEN, "{\"model\":\"m\",\"context\":[1,\"2\"]}", "context[1] must be an integer"},
	    {GEN, "{\"model\":\"m\",\"prompt\":5}", "prompt must be a string"},
	    {GEN, "{\"model\":\"m\",\"suffix\":[]}", "suffix must be a string"},
	    {GEN, "{\"model\":\"m\",\"system\":{}}", "system must be a string"},
	    {GEN, "{\"model\":\"m\",\"template\":true}", "template must be a string"},
	    {GEN, "{\"model\":\"m\",\"raw\":\"yes\"}", "raw must be true or false"},
	    {CHAT, "{\"model\":\"m\",\"model\":\"n\"}", "duplicate"},
	    {CHAT,
	     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\","
	     "\"content\":\"b\"}]}",
	     "duplicate"},
	    {GEN, "{\"model\":\"m\",\"prompt\":\"\xff\"}", "body is not valid JSON: "},
	    {(sovmesh_gen_kind)0, "{\"model\":\"m\"}", "unknown request kind"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		refuse(cases[i].kind, cases[i].body, cases[i].want);

	/* a NUL byte inside the body */
	static const char nul[] = "{\"model\":\"m\",\"prompt\":\"a\0b\"}";
	sovmesh_error err = {0};
	infer_request r;
	assert_int_equal(infer_request_parse(GEN, nul, sizeof(nul) - 1, &r, &err), -EINVAL);
	assert_non_null(strstr(err.message, "body is not valid JSON: "));
	assert_null(r.body);

	/* the JSON error names line and column; control bytes it quotes
	 * from the input do not break the line */
	assert_int_equal(infer_request_parse(GEN, "{\n\"a\":\x01}", 8, &r, &err), -EINVAL);
	assert_non_null(strstr(err.message, "at line 2 column"));
	for (const char *p = err.message; *p; p++)
		assert_true((unsigned char)*p >= 0x20);
}

static void test_model_length(void **state)
{
	(void)state;
	char body[INFER_MODEL_MAX + 64], name[INFER_MODEL_MAX + 2];
	memset(name, 'a', sizeof(name));
	name[INFER_MODEL_MAX] = '\0';
	snprintf(body, sizeof(body), "{\"model\":\"%s\"}", name);
	infer_request r;
	parse_ok(GEN, body, &r);
	assert_int_equal(strlen(r.model), INFER_MODEL_MAX);
	infer_request_clear(&r);
	name[INFER_MODEL_MAX] = 'a';
	name[INFER_MODEL_MAX + 1] = '\0';
	snprintf(body, sizeof(body), "{\"model\":\"%s\"}", name);
	refuse(GEN, body, "model is too long (257 bytes, at most 256)");
	/* non-ASCII names are fine */
	parse_ok(CHAT, "{\"model\":\"mod\xc3\xa8le:7b\"}", &r);
	assert_string_equal(r.model, "mod\xc3\xa8le:7b");
	infer_request_clear(&r);
}

static void test_body_text_passthrough(void **state)
{
	(void)state;
	infer_request r;
	parse_ok(CHAT, chat_body, &r);
	size_t len = 0;
	char *text = infer_request_body_text(&r, &len);
	assert_non_null(text);
	assert_int_equal(len, strlen(text));
	assert_non_null(strstr(text, "\"x_custom\":{\"a\":[1,2],\"b\":\"UNKNOWN-FIELD\"}"));
	assert_non_null(strstr(text, "SECRET-SYSTEM-PROMPT"));
	assert_null(strchr(text, '\n')); /* compact */
	json_t *orig = json_loads(chat_body, 0, NULL), *back = json_loads(text, 0, NULL);
	assert_non_null(orig);
	assert_non_null(back);
	assert_true(json_equal(orig, back));
	json_decref(orig);
	json_decref(back);
	free(text);
	infer_request_clear(&r);
}

static void test_peer_payload_minimal(void **state)
{
	(void)state;
	infer_request r;
	parse_ok(CHAT, chat_body, &r);
	char *p = payload_of(&r);
	assert_string_equal(p, "{\"v\":1,\"kind\":\"chat\",\"model\":\"llama3.2:3b\","
	                       "\"text\":\"What is the capital of France?\",\"stream\":true}");
	json_t *o = json_loads(p, 0, NULL);
	assert_non_null(o);
	assert_int_equal(json_object_size(o), 5);
	static const char *const keys[] = {"v", "kind", "model", "text", "stream"};
	for (size_t i = 0; i < 5; i++)
		assert_non_null(json_object_get(o, keys[i]));
	json_decref(o);
	/* nothing else of the request leaves the device */
	static const char *const secrets[] = {
	    "SECRET-SYSTEM-PROMPT",
	    "OLDER-QUESTION",
	    "1234",
	    "OLDER-ANSWER",
	    "PARTIAL-ASSISTANT",
	    "SU1BR0VEQVRB",
	    "424242",
	    "temperature",
	    "FORMAT-SCHEMA",
	    "TOOL-NAME",
	    "5m",
	    "UNKNOWN-FIELD",
	    "x_custom",
	    "options",
	    "messages",
	    "images",
	};
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		if (strstr(p, secrets[i]))
			fail_msg("payload leaks \"%s\": %s", secrets[i], p);
	free(p);
	infer_request_clear(&r);

	/* generate: the prompt only; not system, template, suffix, context */
	parse_ok(GEN,
	         "{\"model\":\"m\",\"prompt\":\"hello \\\"there\\\"\\n\",\"system\":\"SYS-PROMPT\","
	         "\"template\":\"TPL\",\"suffix\":\"SUFFIX\",\"context\":[987654],"
	         "\"images\":[\"IMGDATA\"],\"stream\":false}",
	         &r);
	p = payload_of(&r);
	assert_string_equal(p, "{\"v\":1,\"kind\":\"generate\",\"model\":\"m\","
	                       "\"text\":\"hello \\\"there\\\"\\n\",\"stream\":false}");
	free(p);
	infer_request_clear(&r);
}

static void test_peer_payload_no_text(void **state)
{
	(void)state;
	static const struct {
		sovmesh_gen_kind kind;
		const char *body;
	} cases[] = {
	    {CHAT, "{\"model\":\"m\"}"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[]}"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"}]}"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":\"a\"}]}"},
	    /* the last user message has no text: never fall back to an
	     * older one */
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"OLD\"},"
	           "{\"role\":\"user\",\"images\":[\"aGk=\"]}]}"},
	    {CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"OLD\"},"
	           "{\"role\":\"user\",\"content\":\"\"}]}"},
	    {GEN, "{\"model\":\"m\"}"},
	    {GEN, "{\"model\":\"m\",\"prompt\":\"\",\"system\":\"s\"}"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		infer_request r;
		parse_ok(cases[i].kind, cases[i].body, &r);
		assert_null(r.last_user_text);
		char *p = (char *)"untouched";
		size_t len = 99;
		assert_int_equal(infer_peer_payload(&r, &p, &len), -ENOENT);
		assert_null(p);
		infer_request_clear(&r);
	}
}

static void test_peer_payload_size(void **state)
{
	(void)state;
	size_t n = INFER_TEXT_MAX + 1;
	char *text = malloc(n + 1);
	assert_non_null(text);
	memset(text, 'x', n);
	text[n] = '\0';
	char *body = malloc(n + 64);
	assert_non_null(body);
	snprintf(body, n + 64, "{\"model\":\"m\",\"prompt\":\"%s\"}", text);
	infer_request r;
	parse_ok(GEN, body, &r); /* the local backend may take it */
	char *p = NULL;
	assert_int_equal(infer_peer_payload(&r, &p, NULL), -EMSGSIZE);
	assert_null(p);
	infer_request_clear(&r);

	/* exactly INFER_TEXT_MAX goes, and the serving side takes it */
	text[INFER_TEXT_MAX] = '\0';
	snprintf(body, n + 64,
	         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", text);
	parse_ok(CHAT, body, &r);
	size_t len = 0;
	assert_int_equal(infer_peer_payload(&r, &p, &len), 0);
	infer_request back;
	sovmesh_error err = {0};
	assert_int_equal(infer_request_from_peer_payload(p, len, &back, &err), 0);
	assert_int_equal(strlen(back.last_user_text), INFER_TEXT_MAX);
	infer_request_clear(&back);
	free(p);
	infer_request_clear(&r);

	/* and one more byte in a payload is refused there */
	text[INFER_TEXT_MAX] = 'x';
	snprintf(body, n + 64,
	         "{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"%s\",\"stream\":true}",
	         text);
	refuse_payload(body, "field \"text\" must be 1..262144 bytes, got 262145");
	free(body);
	free(text);
}

static void test_from_peer_payload(void **state)
{
	(void)state;
	static const struct {
		const char *payload;
		const char *body;
		const char *text;
		int stream;
	} cases[] = {
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"llama3.2:3b\",\"text\":\"Hi \\u00e9\\n\","
	     "\"stream\":true}",
	     "{\"model\":\"llama3.2:3b\",\"messages\":[{\"role\":\"user\",\"content\":"
	     "\"Hi \xc3\xa9\\n\"}],\"stream\":true}",
	     "Hi \xc3\xa9\n", 1},
	    /* any key order */
	    {"{\"stream\":false,\"text\":\"Why?\",\"model\":\"m\",\"kind\":\"generate\",\"v\":1}",
	     "{\"model\":\"m\",\"prompt\":\"Why?\",\"stream\":false}", "Why?", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		infer_request r;
		sovmesh_error err = {0};
		const char *pl = cases[i].payload;
		if (infer_request_from_peer_payload(pl, strlen(pl), &r, &err) != 0)
			fail_msg("refused: %s", err.message);
		size_t len;
		char *b = infer_request_body_text(&r, &len);
		assert_string_equal(b, cases[i].body);
		assert_string_equal(r.last_user_text, cases[i].text);
		assert_int_equal(r.stream, cases[i].stream);
		assert_int_equal(r.has_images, 0);
		free(b);
		/* the body is a request infer_request_parse accepts as well */
		infer_request again;
		parse_ok(r.kind, cases[i].body, &again);
		assert_string_equal(again.last_user_text, cases[i].text);
		infer_request_clear(&again);
		infer_request_clear(&r);
	}
	/* only `len` bytes count (no NUL terminator needed) */
	static const char pl[] = "{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\","
	                         "\"stream\":true}TRAILER";
	infer_request r;
	assert_int_equal(infer_request_from_peer_payload(pl, sizeof(pl) - 1 - 7, &r, NULL), 0);
	infer_request_clear(&r);
	assert_int_equal(infer_request_from_peer_payload(pl, sizeof(pl) - 1, &r, NULL), -EINVAL);
}

static void test_from_peer_payload_refusals(void **state)
{
	(void)state;
	static const struct {
		const char *payload;
		const char *want;
	} cases[] = {
	    {"", "peer payload is not valid JSON: "},
	    {"{\"v\":1,", "peer payload is not valid JSON: "},
	    {"[1]", "peer payload must be a JSON object"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true,"
	     "\"system\":\"s\"}",
	     "unknown field \"system\""},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true,"
	     "\"messages\":[]}",
	     "unknown field \"messages\""},
	    {"{\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"v\" is missing"},
	    {"{\"v\":2,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "version 2 is not supported"},
	    {"{\"v\":0,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "version 0 is not supported"},
	    {"{\"v\":\"1\",\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"v\" must be an integer"},
	    {"{\"v\":1.0,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"v\" must be an integer"},
	    {"{\"v\":1,\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"kind\" is missing"},
	    {"{\"v\":1,\"kind\":1,\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"kind\" must be a string"},
	    {"{\"v\":1,\"kind\":\"embed\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"kind\" must be chat or generate"},
	    {"{\"v\":1,\"kind\":\"Chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "field \"kind\" must be chat or generate"},
	    {"{\"v\":1,\"kind\":\"chat\",\"text\":\"t\",\"stream\":true}",
	     "field \"model\" is missing"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":null,\"text\":\"t\",\"stream\":true}",
	     "field \"model\" must be a string"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"\",\"text\":\"t\",\"stream\":true}",
	     "field \"model\" must not be empty"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"a b\",\"text\":\"t\",\"stream\":true}",
	     "field \"model\" must not contain control characters or whitespace"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"a\\u001bb\",\"text\":\"t\",\"stream\":true}",
	     "field \"model\" must not contain control characters"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"stream\":true}",
	     "field \"text\" is missing"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":[\"t\"],\"stream\":true}",
	     "field \"text\" must be a string"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"\",\"stream\":true}",
	     "field \"text\" must be 1..262144 bytes, got 0"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\\u0000\",\"stream\":true}",
	     "peer payload is not valid JSON: "},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\"}",
	     "field \"stream\" is missing"},
	    {"{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":1}",
	     "field \"stream\" must be true or false"},
	    {"{\"v\":1,\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"t\",\"stream\":true}",
	     "duplicate"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		refuse_payload(cases[i].payload, cases[i].want);

	/* a model name over INFER_MODEL_MAX */
	char buf[INFER_MODEL_MAX + 128], name[INFER_MODEL_MAX + 2];
	memset(name, 'a', INFER_MODEL_MAX + 1);
	name[INFER_MODEL_MAX + 1] = '\0';
	snprintf(buf, sizeof(buf),
	         "{\"v\":1,\"kind\":\"generate\",\"model\":\"%s\",\"text\":\"t\",\"stream\":true}",
	         name);
	refuse_payload(buf, "field \"model\" is too long");

	/* far too many bytes to be one of ours: refused before parsing */
	size_t big = 8u * INFER_TEXT_MAX;
	char *huge = malloc(big);
	assert_non_null(huge);
	memset(huge, ' ', big);
	sovmesh_error err = {0};
	infer_request r;
	assert_int_equal(infer_request_from_peer_payload(huge, big, &r, &err), -EINVAL);
	assert_non_null(strstr(err.message, "peer payload is"));
	free(huge);
}

static void test_round_trip(void **state)
{
	(void)state;
	infer_request r, back;
	sovmesh_error err = {0};
	parse_ok(CHAT, chat_body, &r);
	char *p = payload_of(&r);
	assert_int_equal(infer_request_from_peer_payload(p, strlen(p), &back, &err), 0);
	assert_int_equal(back.kind, CHAT);
	assert_string_equal(back.model, r.model);
	assert_string_equal(back.last_user_text, r.last_user_text);
	assert_int_equal(back.stream, r.stream);
	/* the serving side would send the same payload on: nothing grows */
	char *p2 = payload_of(&back);
	assert_string_equal(p, p2);
	free(p2);
	free(p);
	infer_request_clear(&back);
	infer_request_clear(&r);
}

static void test_from_text(void **state)
{
	(void)state;
	infer_request r;
	sovmesh_error err = {0};
	assert_int_equal(infer_request_from_text(CHAT, "llama3.2", "Hello \"you\"\n", 1, &r, &err),
	                 0);
	char *b = infer_request_body_text(&r, NULL);
	assert_string_equal(b, "{\"model\":\"llama3.2\",\"messages\":[{\"role\":\"user\","
	                       "\"content\":\"Hello \\\"you\\\"\\n\"}],\"stream\":true}");
	assert_string_equal(r.last_user_text, "Hello \"you\"\n");
	assert_string_equal(r.model, "llama3.2");
	assert_int_equal(r.kind, CHAT);
	assert_int_equal(r.stream, 1);
	assert_int_equal(r.has_images, 0);
	free(b);
	char *p = payload_of(&r);
	assert_string_equal(p, "{\"v\":1,\"kind\":\"chat\",\"model\":\"llama3.2\","
	                       "\"text\":\"Hello \\\"you\\\"\\n\",\"stream\":true}");
	free(p);
	infer_request_clear(&r);

	assert_int_equal(infer_request_from_text(GEN, "m", "Why?", 0, &r, &err), 0);
	b = infer_request_body_text(&r, NULL);
	assert_string_equal(b, "{\"model\":\"m\",\"prompt\":\"Why?\",\"stream\":false}");
	assert_int_equal(r.stream, 0);
	free(b);
	infer_request_clear(&r);

	/* refusals */
	static const struct {
		const char *model, *text, *want;
	} cases[] = {
	    {"", "t", "model is required"},
	    {NULL, "t", "model is required"},
	    {"a b", "t", "model must not contain control characters or whitespace"},
	    {"a\nb", "t", "model must not contain control characters"},
	    {"m", NULL, "text is required"},
	    {"m", "bad \xc3(", "text is not valid UTF-8"},
	    {"m\xff", "t", "model is not valid UTF-8"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&r, 0xa5, sizeof(r));
		int rc = infer_request_from_text(CHAT, cases[i].model, cases[i].text, 1, &r, &err);
		check_refusal(rc, &err, &r, cases[i].want, cases[i].want);
	}
	char *big = malloc(INFER_TEXT_MAX + 2);
	assert_non_null(big);
	memset(big, 'y', INFER_TEXT_MAX + 1);
	big[INFER_TEXT_MAX + 1] = '\0';
	int rc = infer_request_from_text(GEN, "m", big, 1, &r, &err);
	check_refusal(rc, &err, &r, "text is too long (262145 bytes, at most 262144)", "big");
	big[INFER_TEXT_MAX] = '\0';
	assert_int_equal(infer_request_from_text(GEN, "m", big, 1, &r, &err), 0);
	infer_request_clear(&r);
	free(big);
	rc = infer_request_from_text((sovmesh_gen_kind)3, "m", "t", 1, &r, &err);
	check_refusal(rc, &err, &r, "unknown request kind", "kind 3");

	/* an empty text is a request without user text */
	assert_int_equal(infer_request_from_text(GEN, "m", "", 1, &r, &err), 0);
	assert_null(r.last_user_text);
	p = NULL;
	assert_int_equal(infer_peer_payload(&r, &p, NULL), -ENOENT);
	infer_request_clear(&r);
}

static void test_kind_name(void **state)
{
	(void)state;
	assert_string_equal(infer_kind_name(CHAT), "chat");
	assert_string_equal(infer_kind_name(GEN), "generate");
	assert_string_equal(infer_kind_name((sovmesh_gen_kind)9), "unknown");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_chat_valid),
	    cmocka_unit_test(test_generate_valid),
	    cmocka_unit_test(test_stream),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_model_length),
	    cmocka_unit_test(test_body_text_passthrough),
	    cmocka_unit_test(test_peer_payload_minimal),
	    cmocka_unit_test(test_peer_payload_no_text),
	    cmocka_unit_test(test_peer_payload_size),
	    cmocka_unit_test(test_from_peer_payload),
	    cmocka_unit_test(test_from_peer_payload_refusals),
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_from_text),
	    cmocka_unit_test(test_kind_name),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
