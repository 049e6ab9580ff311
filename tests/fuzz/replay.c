/*
 * replay.c - a plain main() for the libFuzzer targets, so `make test` can
 * replay the checked-in corpus and every saved crash (tests/fuzz/corpus/<t>/
 * and tests/fuzz/regress/<t>/) with the normal compiler and no libFuzzer.
 * Usage: fuzz_x FILE_OR_DIR...  Prints "<target>: N inputs" and exits 0;
 * a crash or sanitizer report ends the process with an error instead.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long
replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf != NULL && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
            } else {
                buf = nb;
            }
        }
    }
    fclose(f);
    if (buf == NULL) {
        fprintf(stderr, "%s: out of memory\n", path);
        exit(2);
    }
    /* An exact-size copy, so a sanitizer sees any read past the input. */
    uint8_t *exact = malloc(len ? len : 1);
    if (exact == NULL)
        exit(2);
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 1;
}

static long
replay(const char *path)
{
    struct stat st;
    if (stat(path, &st) == -1)
        return 0;               /* an absent corpus directory is fine */
    if (!S_ISDIR(st.st_mode))
        return replay_file(path);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    long count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        count += replay(sub);
    }
    closedir(d);
    return count;
}

int
main(int argc, char **argv)
{
    long count = 0;
    for (int i = 1; i < argc; i++)
        count += replay(argv[i]);
    const char *name = strrchr(argv[0], '/');
    printf("%s: %ld inputs\n", name ? name + 1 : argv[0], count);
    return 0;
}
