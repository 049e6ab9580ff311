/*
 * fuzz_config.c - fuzz target for the configuration loader.
 *
 * Input: INI text, optionally followed by a line "%%" and then
 * environment entries, one per line (e.g. "WSGUARD_BACKEND_URL=ws://a").
 * The text is loaded twice: through a memfd as a file (so NUL bytes and
 * every byte reach the reader callback) and through config_load_string()
 * (which stops at the first NUL). Both must agree on success; a loaded
 * config must satisfy the validation invariants, survive route lookups and
 * config_unsupported(), and be freed exactly once (ASan/LSan check that).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_config: " __VA_ARGS__);                    \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

struct count {
    size_t n;
};

static void
on_msg(const char *msg, void *ctx)
{
    struct count *c = ctx;

    /* Every message names its origin. */
    if (strncmp(msg, "fuzz.ini", 8) != 0 && strncmp(msg, "env ", 4) != 0
        && strncmp(msg, "/proc/self/fd/", 14) != 0)
        FAIL("message without location: %s", msg);
    c->n++;
}

static void
check(struct config *cfg)
{
    static const char *const paths[] = { "/", "/chat", "/chat/x", "", "/a" };
    const char *name;

    if (cfg->nlisten == 0 || cfg->global.nbackends == 0)
        FAIL("loaded without listener or backend");
    for (size_t i = 0; i + 1 < cfg->nroutes; i++) {
        if (strlen(cfg->routes[i].prefix) < strlen(cfg->routes[i + 1].prefix))
            FAIL("routes not sorted longest first");
    }
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        const struct policy *p = config_route(cfg, paths[i],
                                              strlen(paths[i]), &name);
        if (p != NULL && p->nbackends == 0)
            FAIL("route without backend");
        if (p == NULL && cfg->nroutes == 0)
            FAIL("no policy without routes");
    }
    config_unsupported(cfg, NULL, NULL);
    config_unref(config_ref(cfg));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *envtext, *sep, *envp[18];
    size_t ini_len = size, nenv = 0;
    struct count c1 = { 0 }, c2 = { 0 };

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    /* Split off the environment part (only when it is NUL-free). */
    sep = strstr(text, "\n%%\n");
    if (sep != NULL) {
        ini_len = (size_t)(sep - text) + 1;
        envtext = sep + 4;
        sep[1] = '\0';
        for (char *line = strtok(envtext, "\n"); line && nenv < 16;
             line = strtok(NULL, "\n"))
            envp[nenv++] = line;
    }
    /* Keep the certificate check away from the file system. */
    envp[nenv++] = "WSGUARD_TLS_ENABLED=no";
    envp[nenv] = NULL;

    struct config *a = config_load_string("fuzz.ini", text, envp, on_msg,
                                          &c1);
    if (a != NULL) {
        if (c1.n != 0)
            FAIL("loaded but reported %zu errors", c1.n);
        check(a);
    } else if (c1.n == 0) {
        FAIL("failed without reporting an error");
    }

    int fd = memfd_create("fuzz_config", 0);
    if (fd != -1) {
        char path[64];
        if (write(fd, data, ini_len) == (ssize_t)ini_len) {
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            struct config *b = config_load(path, envp, on_msg, &c2);
            if (b != NULL) {
                check(b);
                config_unref(b);
            } else if (c2.n == 0) {
                FAIL("file load failed without reporting an error");
            }
            /* Without a NUL the two loads see the same text. */
            if (memchr(data, '\0', ini_len) == NULL
                && (a == NULL) != (b == NULL))
                FAIL("string and file loads disagree");
        }
        close(fd);
    }
    config_unref(a);
    free(text);
    return 0;
}
