/* CLIENT LIST, counted per source IP in one pass over the raw reply (collectors/clientscan.py).
 *
 * Why C: with 10,000 clients the reply is 2.6 MB and Redis builds it in ~6 ms; the regex pass plus
 * the Python fold cost as much again (bench/clientlist.py). This scan reads every line once and
 * leaves Python a handful of per-IP and per-(IP, cmd) rows and the top-N most idle lines.
 *
 * Semantics are collectors/clients.py's per-line path, which stays the reference (and the fallback
 * when this library is not built): a line is split on '\n' and stripped of '\r' at both ends; an
 * empty line does not count; fields are split on ' ' and each on its first '=' (name=addr=x is a
 * name); a key given twice keeps its last value; a line is usable when addr has a non-empty IP
 * before its last ':' and an all-digit port after it, and age and idle are 1 to 18 ASCII digits.
 * tests/collectors/test_clients_scan.py checks both give the same aggregate.
 *
 * Built by `make` into collectors/_clientscan.so and loaded with ctypes: no Python headers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t off;               /* the IP's bytes in the reply, as written ("[::1]" keeps its brackets) */
    int64_t count, idle_over, idle_over_long, unused, oldest_age, max_idle;
    int32_t len;
    int32_t pad;
} ip_t;

typedef struct {               /* one (IP, cmd), in the order each first appears in the reply */
    int64_t off;
    int64_t count;
    int32_t len;
    int32_t ip;                /* index into the ip_t rows */
} cmd_t;

typedef struct {               /* one of the most idle lines */
    int64_t start, end;        /* the line without its '\n' (a '\r' stays, as in the Python split) */
    int64_t ip_off, idle;
    int32_t ip_len;
    int32_t pad;
} top_t;

enum { OK = 0, NO_MEMORY = -1, FULL = 1 };

static uint64_t hash_bytes(const char *p, int64_t n, uint64_t h) {
    for (int64_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* 1 to 18 ASCII digits, as clients._count accepts: an int64 holds them all. */
static int number(const char *p, int64_t n, int64_t *out) {
    if (n < 1 || n > 18) return 0;
    int64_t v = 0;
    for (int64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < '0' || c > '9') return 0;
        v = v * 10 + (c - '0');
    }
    *out = v;
    return 1;
}

/* If a field starting at f is one of the four wanted, points its value there (a later one wins). */
static inline void key(const char *f, const char *e, const char **addr, const char **age,
                       const char **idle, const char **cmd) {
    int64_t n = e - f;
    switch (n >= 4 ? *f : 0) {
    case 'a':
        if (f[1] == 'g' && f[2] == 'e' && f[3] == '=') *age = f + 4;
        else if (n >= 5 && f[1] == 'd' && f[2] == 'd' && f[3] == 'r' && f[4] == '=') *addr = f + 5;
        break;
    case 'i':
        if (n >= 5 && f[1] == 'd' && f[2] == 'l' && f[3] == 'e' && f[4] == '=') *idle = f + 5;
        break;
    case 'c':
        if (f[1] == 'm' && f[2] == 'd' && f[3] == '=') *cmd = f + 4;
        break;
    }
}

static int64_t value_len(const char *v, const char *e) {
    if (!v) return 0;
    const char *p = v;
    while (p < e && *p != ' ') p++;
    return p - v;
}

/* a worse than b: less idle, or as idle and later in the reply (ties keep the reply's order). */
static int worse(const top_t *a, const top_t *b) {
    return a->idle < b->idle || (a->idle == b->idle && a->start > b->start);
}

static void sift_down(top_t *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(&h[l], &h[m])) m = l;
        if (r < n && worse(&h[r], &h[m])) m = r;
        if (m == i) return;
        top_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

static void sift_up(top_t *h, int32_t i) {
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (!worse(&h[i], &h[p])) return;
        top_t t = h[i]; h[i] = h[p]; h[p] = t;
        i = p;
    }
}

static int most_idle_first(const void *a, const void *b) {
    const top_t *x = a, *y = b;
    if (x->idle != y->idle) return x->idle > y->idle ? -1 : 1;
    return x->start < y->start ? -1 : x->start > y->start;
}

static int32_t table_size(int32_t rows) {
    int32_t s = 16;
    while (s < 2 * rows) s *= 2;
    return s;
}

/* Scans data[0:n]. idle_over counts idle > idle_thr, idle_over_long idle > long_thr among those
 * (the thresholds are the floors of the Python floats, so int > float compares exactly); unused
 * counts age >= unused_after with idle >= age - 1. Returns OK, NO_MEMORY, or FULL when more IPs or
 * (IP, cmd) pairs turn up than the rows given: the caller retries with more. */
int64_t clientscan(const char *data, int64_t n, int64_t idle_thr, int64_t long_thr, int64_t unused_after,
                   ip_t *ips, int32_t max_ips, int32_t *n_ips,
                   cmd_t *cmds, int32_t max_cmds, int32_t *n_cmds,
                   top_t *top, int32_t top_n, int32_t *n_top,
                   int64_t *lines_out, int64_t *skipped_out) {
    int32_t isize = table_size(max_ips), csize = table_size(max_cmds);
    int32_t *itab = malloc(sizeof(int32_t) * (size_t)isize);
    int32_t *ctab = malloc(sizeof(int32_t) * (size_t)csize);
    if (!itab || !ctab) { free(itab); free(ctab); return NO_MEMORY; }
    memset(itab, 0xff, sizeof(int32_t) * (size_t)isize);
    memset(ctab, 0xff, sizeof(int32_t) * (size_t)csize);
    int32_t ni = 0, nc = 0, nt = 0;
    int64_t lines = 0, skipped = 0;
    int64_t rc = OK;
    int32_t last_ip = -1;

    const char *p = data, *end = data + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        int64_t line_start = p - data, line_end = le - data;
        const char *s = p, *e = le;
        p = nl ? nl + 1 : end;
        while (s < e && *s == '\r') s++;
        while (e > s && e[-1] == '\r') e--;
        if (s == e) continue;
        lines++;

        const char *addr = NULL, *age = NULL, *idle = NULL, *cmd = NULL;
        key(s, e, &addr, &age, &idle, &cmd);
        /* Every field starts after a space: find the spaces eight bytes at a time (SWAR). The
         * zero-byte test can also flag a '!' right above a space, hence the check. */
        const char *q = s;
        for (; q + 8 <= e; q += 8) {
            uint64_t w;
            memcpy(&w, q, 8);
            uint64_t x = w ^ 0x2020202020202020ULL;
            uint64_t m = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
            while (m) {
                const char *sp = q + (__builtin_ctzll(m) >> 3);
                if (*sp == ' ') key(sp + 1, e, &addr, &age, &idle, &cmd);
                m &= m - 1;
            }
        }
        for (; q < e; q++)
            if (*q == ' ') key(q + 1, e, &addr, &age, &idle, &cmd);
        int64_t addr_n = value_len(addr, e), age_n = value_len(age, e), idle_n = value_len(idle, e);
        int64_t cmd_n = value_len(cmd, e);

        int64_t age_v, idle_v;
        if (!addr || !number(age, age_n, &age_v) || !number(idle, idle_n, &idle_v)) {
            skipped++;
            continue;
        }
        int64_t colon = addr_n - 1;
        while (colon >= 0 && addr[colon] != ':') colon--;
        int64_t port_n = addr_n - colon - 1;
        int ok = colon > 0 && port_n > 0;
        for (int64_t i = colon + 1; ok && i < addr_n; i++)
            ok = addr[i] >= '0' && addr[i] <= '9';
        if (!ok) {
            skipped++;
            continue;
        }
        int64_t ip_n = colon;

        /* The IP's row: the previous line's is a cheap first guess (clients of one host connect together). */
        int32_t k = last_ip;
        if (k < 0 || ips[k].len != ip_n || memcmp(data + ips[k].off, addr, (size_t)ip_n) != 0) {
            uint64_t h = hash_bytes(addr, ip_n, 14695981039346656037ULL);
            int32_t slot = (int32_t)(h & (uint64_t)(isize - 1));
            for (;;) {
                k = itab[slot];
                if (k < 0) {
                    if (ni == max_ips) { rc = FULL; goto done; }
                    k = itab[slot] = ni++;
                    memset(&ips[k], 0, sizeof ips[k]);
                    ips[k].off = addr - data;
                    ips[k].len = (int32_t)ip_n;
                    break;
                }
                if (ips[k].len == ip_n && memcmp(data + ips[k].off, addr, (size_t)ip_n) == 0) break;
                slot = (slot + 1) & (isize - 1);
            }
            last_ip = k;
        }
        ip_t *r = &ips[k];
        r->count++;
        if (age_v > r->oldest_age) r->oldest_age = age_v;
        if (age_v >= unused_after && idle_v >= age_v - 1) r->unused++;
        if (idle_v > idle_thr) {
            r->idle_over++;
            if (idle_v > long_thr) r->idle_over_long++;
            if (idle_v > r->max_idle) r->max_idle = idle_v;
        }

        const char *cm = cmd ? cmd : addr;       /* no cmd field counts as cmd="" */
        cmd_n = cmd ? cmd_n : 0;
        uint64_t h = hash_bytes(cm, cmd_n, 14695981039346656037ULL ^ ((uint64_t)k * 0x9e3779b97f4a7c15ULL));
        int32_t slot = (int32_t)(h & (uint64_t)(csize - 1));
        for (;;) {
            int32_t c = ctab[slot];
            if (c < 0) {
                if (nc == max_cmds) { rc = FULL; goto done; }
                c = ctab[slot] = nc++;
                cmds[c].off = cm - data;
                cmds[c].len = (int32_t)cmd_n;
                cmds[c].ip = k;
                cmds[c].count = 1;
                break;
            }
            if (cmds[c].ip == k && cmds[c].len == cmd_n && memcmp(data + cmds[c].off, cm, (size_t)cmd_n) == 0) {
                cmds[c].count++;
                break;
            }
            slot = (slot + 1) & (csize - 1);
        }

        if (top_n > 0) {
            top_t t = {line_start, line_end, addr - data, idle_v, (int32_t)ip_n, 0};
            if (nt < top_n) {
                top[nt] = t;
                sift_up(top, nt++);
            } else if (worse(&top[0], &t)) {
                top[0] = t;
                sift_down(top, nt, 0);
            }
        }
    }
    qsort(top, (size_t)nt, sizeof *top, most_idle_first);
done:
    free(itab);
    free(ctab);
    *n_ips = ni;
    *n_cmds = nc;
    *n_top = nt;
    *lines_out = lines;
    *skipped_out = skipped;
    return rc;
}
