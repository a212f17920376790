/* The log collector's fast path: counts talk-shape lines per window and (service, remote, kind).
 *
 * Why C: parsing and grouping a million lines in Python costs about 7x a bare line loop over the
 * same file (bench/logs.py); this scan runs near the speed of reading. It understands exactly one
 * shape, `MMM DD HH:MM:SS service: [remote] event key=value ...`, in printable ASCII, and gives
 * every other line back to Python as "slow" -- collectors/logs.py stays the reference parser, and
 * tests/test_fastlog.py checks that both count every line the same way.
 *
 * Built by `make` into collectors/_fastlog.so and loaded with ctypes (collectors/fastlog.py), so
 * it needs a C compiler but no Python headers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE (64 * 1024)
#define FIELD_TRIES 16
#define MAX_EXAMPLES 8

enum { K_TIMEOUT, K_SUCCESS, K_REFUSED, K_IO_TIMEOUT, K_SENT, K_SLOW_CONSUMER, K_OTHER };

typedef struct {
    int64_t svc_off;           /* offsets into the scanned buffer */
    int64_t rem_off;
    int32_t svc_len;
    int32_t rem_len;           /* -1: no remote (`[-]` or no bracket) */
    int32_t kind;
    int32_t month, day;        /* the lines' date */
    int32_t start;             /* their window's start, seconds into the day (as logs.py counts) */
    int32_t clock;             /* the first line's HHMMSS as written (99:99:99 too) */
    int32_t nex;
    int64_t count;
    int64_t ex_off[MAX_EXAMPLES];
    int32_t ex_len[MAX_EXAMPLES];
} group_t;

static const char MONTHS[12][3] = {{'J','a','n'},{'F','e','b'},{'M','a','r'},{'A','p','r'},
    {'M','a','y'},{'J','u','n'},{'J','u','l'},{'A','u','g'},{'S','e','p'},{'O','c','t'},
    {'N','o','v'},{'D','e','c'}};

static int month_of(const char *p) {
    for (int i = 0; i < 12; i++)
        if (p[0] == MONTHS[i][0] && p[1] == MONTHS[i][1] && p[2] == MONTHS[i][2])
            return i + 1;
    return 0;
}

static int isdig(char c) { return c >= '0' && c <= '9'; }

static int has(const char *s, int64_t n, const char *needle) {
    int64_t m = (int64_t)strlen(needle);
    if (m > n) return 0;
    const char *end = s + n - m;
    for (const char *p = s; p <= end; p++) {
        p = memchr(p, needle[0], (size_t)(end - p + 1));
        if (!p) return 0;
        if (memcmp(p, needle, (size_t)m) == 0) return 1;
    }
    return 0;
}

/* collectors/logs.py classify(), for ASCII text (where str.lower() is ASCII lowering). */
static int classify(const char *msg, int64_t n, char *low) {
    if (has(msg, n, "Timed out")) return K_TIMEOUT;
    if (has(msg, n, "success")) return has(msg, n, "successfully sent") ? K_SENT : K_SUCCESS;
    if (has(msg, n, "i/o timeout")) return K_IO_TIMEOUT;
    if (has(msg, n, "ECONNREFUSED") || has(msg, n, "onnection refused")) return K_REFUSED;
    for (int64_t i = 0; i < n; i++) {
        char c = msg[i];
        low[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    if (has(low, n, "slow consumer") || has(low, n, "slow_consumer")) return K_SLOW_CONSUMER;
    if (has(low, n, "timed out") || has(low, n, "timeout"))
        return has(low, n, "i/o timeout") ? K_IO_TIMEOUT : K_TIMEOUT;
    if (has(low, n, "econnrefused") || has(low, n, "connection refused")) return K_REFUSED;
    if (has(low, n, "successfully sent")) return K_SENT;
    if (has(low, n, "success")) return K_SUCCESS;
    return K_OTHER;
}

static int iskeych(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || isdig(c) || c == '_' || c == '.' || c == '-';
}

/* collectors/logs.py split_fields(): the length of the event text before its key=value fields. */
static int64_t message_len(const char *ev, int64_t n) {
    const char *eq = memchr(ev, '=', (size_t)n);
    int tries = 0;
    while (eq && tries < FIELD_TRIES) {
        int64_t e = eq - ev, ks = e;
        while (ks > 0 && ev[ks - 1] != ' ') ks--;
        if (ks < e) {
            int ok = 1;
            for (int64_t i = ks; i < e && ok; i++) ok = iskeych(ev[i]);
            if (ok) {
                while (ks > 0 && ev[ks - 1] == ' ') ks--;
                return ks;
            }
        }
        tries++;
        eq = (e + 1 < n) ? memchr(ev + e + 1, '=', (size_t)(n - e - 1)) : NULL;
    }
    return n;
}

/* The talk shape: 1 and the parts, or 0 when Python must parse the line. */
typedef struct { int month, day, clock, sec, kind; int64_t svc, svc_len, rem, rem_len; } parsed_t;

static int parse(const char *line, int64_t n, parsed_t *out, char *low) {
    if (n < 17 || n > MAX_LINE) return 0;
    for (int64_t i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e) return 0;
    int month = month_of(line);
    if (!month || line[3] != ' ' || line[6] != ' ' || line[15] != ' ') return 0;
    int day;
    if (line[4] == ' ' && isdig(line[5])) day = line[5] - '0';
    else if (isdig(line[4]) && isdig(line[5])) day = (line[4] - '0') * 10 + (line[5] - '0');
    else return 0;
    if (day < 1 || day > 31) return 0;
    const char *c = line + 7;
    if (!(isdig(c[0]) && isdig(c[1]) && c[2] == ':' && isdig(c[3]) && isdig(c[4]) && c[5] == ':'
          && isdig(c[6]) && isdig(c[7]))) return 0;
    int h = (c[0] - '0') * 10 + (c[1] - '0'), m = (c[3] - '0') * 10 + (c[4] - '0'),
        sc = (c[6] - '0') * 10 + (c[7] - '0');
    const char *body = line + 16;
    int64_t blen = n - 16;
    const char *sp = memchr(body, ' ', (size_t)blen);
    int64_t first = sp ? sp - body : blen;
    if (first < 2 || body[first - 1] != ':') return 0;    /* syslog and the rest: Python */
    const char *rest = sp ? sp + 1 : body + blen;
    int64_t rlen = (body + blen) - rest;
    int64_t rem = 0, rem_len = -1;
    const char *event = rest;
    int64_t elen = rlen;
    if (rlen > 0 && rest[0] == '[') {
        const char *close = memchr(rest, ']', (size_t)rlen);
        if (close && close > rest + 1) {
            int64_t nl = close - rest - 1;
            int ok = memchr(rest + 1, ' ', (size_t)nl) == NULL && memchr(rest + 1, '[', (size_t)nl) == NULL;
            int64_t after = rlen - (close - rest) - 1;
            if (ok && (after == 0 || close[1] == ' ')) {
                if (!(nl == 1 && rest[1] == '-')) { rem = (rest + 1) - line; rem_len = nl; }
                event = after ? close + 2 : close + 1;
                elen = after ? after - 1 : 0;
            }
        }
    }
    int64_t mlen = message_len(event, elen);
    out->month = month; out->day = day; out->clock = h * 10000 + m * 100 + sc;
    out->sec = h * 3600 + m * 60 + sc;
    out->kind = classify(event, mlen, low);
    out->svc = 16; out->svc_len = first - 1;
    out->rem = rem; out->rem_len = rem_len;
    return 1;
}

static uint64_t hash_key(const char *buf, const parsed_t *p) {
    uint64_t h = 1469598103934665603ULL;
    for (int64_t i = 0; i < p->svc_len; i++) h = (h ^ (unsigned char)buf[p->svc + i]) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (int64_t i = 0; i < p->rem_len; i++) h = (h ^ (unsigned char)buf[p->rem + i]) * 1099511628211ULL;
    h ^= ((uint64_t)(p->rem_len + 1) << 1) ^ ((uint64_t)p->kind << 20) ^ ((uint64_t)p->sec << 24)
         ^ ((uint64_t)p->day << 41) ^ ((uint64_t)p->month << 47);
    h *= 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

static int same(const char *buf, const group_t *g, const parsed_t *p) {
    return g->kind == p->kind && g->start == p->sec && g->day == p->day && g->month == p->month
        && g->svc_len == p->svc_len && g->rem_len == p->rem_len
        && memcmp(buf + g->svc_off, buf + p->svc, (size_t)p->svc_len) == 0
        && (p->rem_len <= 0 || memcmp(buf + g->rem_off, buf + p->rem, (size_t)p->rem_len) == 0);
}

/* Scans the complete lines (each ending in "\n") of buf[start:end]. Talk-shape lines are counted
 * into groups[] per (window, service, remote, kind), windows being `window_s` seconds aligned on
 * the day; each group keeps its first `examples` lines as offsets into buf. The other lines are
 * listed as (start, end) pairs in slow[]. Stops early when groups[] (max_groups) or slow[]
 * (max_slow) is full. Returns the offset after the last line scanned; *lines counts the lines.
 * Returns -1 when out of memory. */
int64_t fastlog_scan(const char *buf, int64_t start, int64_t end, int32_t examples, int32_t window_s,
                     group_t *groups, int32_t max_groups, int32_t *ngroups,
                     int64_t *slow, int32_t max_slow, int32_t *nslow, int64_t *lines) {
    if (examples > MAX_EXAMPLES) examples = MAX_EXAMPLES;
    if (examples < 0) examples = 0;
    if (window_s < 1) window_s = 1;
    uint32_t cap = 1024;
    while (cap < (uint32_t)max_groups * 2u) cap <<= 1;
    int32_t *table = malloc(sizeof(int32_t) * cap);
    char *low = malloc(MAX_LINE);
    if (!table || !low) { free(table); free(low); return -1; }
    memset(table, 0xff, sizeof(int32_t) * cap);
    int32_t ng = 0, ns = 0;
    int64_t pos = start, nlines = 0;
    while (pos < end) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', (size_t)(end - pos));
        if (!nl) break;
        int64_t n = nl - line;
        parsed_t p;
        if (parse(line, n, &p, low)) {
            p.sec -= p.sec % window_s;
            p.svc += pos;
            if (p.rem_len >= 0) p.rem += pos;
            uint32_t slot = (uint32_t)hash_key(buf, &p) & (cap - 1);
            group_t *g = NULL;
            while (table[slot] >= 0) {
                if (same(buf, &groups[table[slot]], &p)) { g = &groups[table[slot]]; break; }
                slot = (slot + 1) & (cap - 1);
            }
            if (!g) {
                if (ng >= max_groups) break;
                table[slot] = ng;
                g = &groups[ng++];
                g->svc_off = p.svc; g->svc_len = (int32_t)p.svc_len;
                g->rem_off = p.rem; g->rem_len = (int32_t)p.rem_len;
                g->kind = p.kind; g->month = p.month; g->day = p.day; g->start = p.sec; g->clock = p.clock;
                g->nex = 0; g->count = 0;
            }
            g->count++;
            if (g->nex < examples) {
                g->ex_off[g->nex] = pos;
                g->ex_len[g->nex] = (int32_t)n;
                g->nex++;
            }
        } else {
            if (ns >= max_slow) break;
            slow[2 * ns] = pos;
            slow[2 * ns + 1] = pos + n;
            ns++;
        }
        nlines++;
        pos += n + 1;
    }
    free(table);
    free(low);
    *ngroups = ng;
    *nslow = ns;
    *lines = nlines;
    return pos;
}
