/*
 * field.c - query parameters and cookies as backends read them (see
 * field.h for why names are folded).
 */
#include "field.h"

#include <string.h>

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* A name being folded: the bytes left, and whether leading blanks are
 * still being dropped. */
struct fold {
    const char *p;
    const char *end;
    bool lead;
};

/* The next folded byte of f, or -1 at the end. */
static int
fold_next(struct fold *f)
{
    for (;;) {
        unsigned char c;

        if (f->p >= f->end)
            return -1;
        c = (unsigned char)*f->p++;
        if (c == '%' && f->end - f->p >= 2 && hexval((unsigned char)f->p[0]) >= 0
            && hexval((unsigned char)f->p[1]) >= 0) {
            c = (unsigned char)(hexval((unsigned char)f->p[0]) * 16
                                + hexval((unsigned char)f->p[1]));
            f->p += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (f->lead && is_blank((char)c))
            continue;
        f->lead = false;
        if (c == ' ' || c == '.' || c == '[')
            return '_';
        if (c >= 'A' && c <= 'Z')
            return c - 'A' + 'a';
        return c;
    }
}

bool
field_name_is(const char *raw, size_t len, const char *name)
{
    struct fold a = { raw, raw + len, true };
    struct fold b = { name, name + strlen(name), true };

    for (;;) {
        int x = fold_next(&a), y = fold_next(&b);

        if (x != y)
            return false;
        if (x == -1)
            return true;
    }
}

/* Split an element into name and value at the first '='. */
static void
split(struct field *f, const char *s, size_t len)
{
    const char *eq = memchr(s, '=', len);

    f->name = s;
    f->name_len = eq != NULL ? (size_t)(eq - s) : len;
    f->value = eq != NULL ? eq + 1 : s + len;
    f->value_len = eq != NULL ? len - f->name_len - 1 : 0;
}

static bool
is_query_sep(char c)
{
    return c == '&' || c == ';';
}

int
field_query_next(const char *q, size_t len, size_t *pos, struct field *f)
{
    size_t i = *pos;

    while (i < len && is_query_sep(q[i]))
        i++;
    if (i >= len) {
        *pos = len;
        return 0;
    }
    size_t s = i;
    while (i < len && !is_query_sep(q[i]))
        i++;
    f->raw = q + s;
    f->raw_len = i - s;
    split(f, f->raw, f->raw_len);
    *pos = i;
    return 1;
}

static void
trim(const char **p, size_t *len)
{
    while (*len > 0 && is_blank(**p)) {
        (*p)++;
        (*len)--;
    }
    while (*len > 0 && is_blank((*p)[*len - 1]))
        (*len)--;
}

int
field_cookie_next(const char *v, size_t len, size_t *pos, struct field *f)
{
    size_t i = *pos;

    for (;;) {
        while (i < len && (v[i] == ';' || is_blank(v[i])))
            i++;
        if (i >= len) {
            *pos = len;
            return 0;
        }
        size_t s = i;
        while (i < len && v[i] != ';')
            i++;
        const char *el = v + s;
        size_t el_len = i - s;
        trim(&el, &el_len);
        if (el_len == 0)
            continue;
        f->raw = el;
        f->raw_len = el_len;
        split(f, el, el_len);
        trim(&f->name, &f->name_len);
        trim(&f->value, &f->value_len);
        if (f->value_len >= 2 && f->value[0] == '"'
            && f->value[f->value_len - 1] == '"') {
            f->value++;
            f->value_len -= 2;
        }
        *pos = i;
        return 1;
    }
}

static bool
listed(const struct field *f, const char *const *names, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (names[k] != NULL && field_name_is(f->name, f->name_len, names[k]))
            return true;
    return false;
}

int
field_query_without(const char *q, size_t len, const char *const *names,
                    size_t n, char *out, size_t cap)
{
    size_t pos = 0, copied = 0, o = 0;
    bool kept = false;
    struct field f;

    /* Copy the bytes between removed elements as they are. A removed
     * element takes the separator before it; one with no element kept
     * before it takes the separators around it instead. */
    while (field_query_next(q, len, &pos, &f)) {
        size_t s = (size_t)(f.raw - q), e = s + f.raw_len;

        if (!listed(&f, names, n)) {
            kept = true;
            continue;
        }
        if (!kept) {
            s = copied;
            while (e < len && is_query_sep(q[e]))
                e++;
        } else if (s > copied && is_query_sep(q[s - 1])) {
            s--;
        }
        if (s > copied) {
            if (o + (s - copied) >= cap)
                return -1;
            memcpy(out + o, q + copied, s - copied);
            o += s - copied;
        }
        copied = e;
    }
    if (len > copied) {
        if (o + (len - copied) >= cap)
            return -1;
        memcpy(out + o, q + copied, len - copied);
        o += len - copied;
    }
    if (o >= cap)
        return -1;
    out[o] = '\0';
    return (int)o;
}
