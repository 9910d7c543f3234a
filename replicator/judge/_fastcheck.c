/* The judge's compiled fast path: accept well-formed, healthy records without decoding them
 * into Python objects.
 *
 * Why: fastavro's decode into a dict and the Python checks were the service's largest cost
 * per record (docs/performance.md). For a writer schema whose fields are all primitives,
 * this walks the Avro body once, in C, and tests the same sufficient conditions as the
 * fast path of `replicator.judge.compiled` (itself checked against the specification,
 * `replicator.judge.rules.check_record`).
 *
 * Contract: it only ever says "good". For each item it returns either the program's verdict
 * (schema id, "", ""), which means the Python path would have judged the record good, or
 * None, which means "not sure": the caller then judges that item in Python, which names the reason of a
 * bad record. Anything unusual gives None: a non-ASCII string, a varint longer than 64 bits,
 * an out-of-range union or enum index, a value at a rule's edge it does not model, trailing
 * bytes. The program of each schema is made in Python (`replicator.judge.native`), which
 * also decides which schemas this path may take at all.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { W_NULL, W_BOOL, W_INT, W_LONG, W_FLOAT, W_DOUBLE, W_STRING, W_ENUM };
enum { R_NONE, R_SCAN, R_UUID, R_HEX, R_DEPT, R_CCAM, R_CIP13, R_ATC, R_RANGE, R_ENUM };
enum { S_EVENT, S_BIRTH, S_DATE0, S_DATE1, S_DATE2, S_REIMBURSED, S_BASE, S_PAID, N_SLOTS };

#define NIR_MIN_LENGTH 15
#define HASH_MIN_LENGTH 32 /* rules._HASH_MIN_LENGTH */
#define YEARS 211 /* 1890 .. 2100 */

typedef struct {
    int wire;
    int null_branch; /* -1: not a union; else the index of the null branch (0 or 1) */
    int rule;
    int slot; /* -1: none */
    int64_t lo, hi;      /* R_RANGE bounds (inclusive); R_HEX: lo is the length */
    char *safe_symbols;  /* R_ENUM: one flag per symbol (1: holds no NIR) */
    Py_ssize_t symbols;
} Op;

typedef struct {
    Py_ssize_t nops;
    Op *ops;
    PyObject *topic;   /* the schema's topic (str) */
    PyObject *verdict; /* (schema id, "", "") */
    int64_t first_year, min_date_days, day_ms;
    int64_t year_start_ms[YEARS];
    int64_t lowest_day[YEARS];
} Program;

static const char *CAPSULE = "replicator._fastcheck.Program";

static void program_free(PyObject *capsule) {
    Program *p = (Program *)PyCapsule_GetPointer(capsule, CAPSULE);
    if (p == NULL) return;
    for (Py_ssize_t i = 0; i < p->nops; i++) PyMem_Free(p->ops[i].safe_symbols);
    PyMem_Free(p->ops);
    Py_XDECREF(p->topic);
    Py_XDECREF(p->verdict);
    PyMem_Free(p);
}

static int read_int64_seq(PyObject *seq, int64_t *out, Py_ssize_t n, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd values", what, n);
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

/* compile(topic, verdict, ops, first_year, min_date_days, day_ms, year_start_ms, lowest_day)
 * ops: sequence of (wire, null_branch, rule, slot, lo, hi, safe_symbols: bytes | None) */
static PyObject *compile_program(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *topic, *verdict, *ops, *year_start, *lowest;
    long long first_year, min_date_days, day_ms;
    if (!PyArg_ParseTuple(args, "UOOLLLOO", &topic, &verdict, &ops, &first_year, &min_date_days,
                          &day_ms, &year_start, &lowest))
        return NULL;
    if (day_ms <= 0) {
        PyErr_SetString(PyExc_ValueError, "day_ms must be positive");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(ops, "ops must be a sequence");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Program *p = PyMem_Calloc(1, sizeof(Program));
    if (p == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    p->ops = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(Op));
    if (p->ops == NULL) {
        PyMem_Free(p);
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    p->first_year = first_year;
    p->min_date_days = min_date_days;
    p->day_ms = day_ms;
    if (read_int64_seq(year_start, p->year_start_ms, YEARS, "year_start_ms") < 0 ||
        read_int64_seq(lowest, p->lowest_day, YEARS, "lowest_day") < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        Op *op = &p->ops[i];
        PyObject *symbols;
        long long lo, hi;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iiiiLLO", &op->wire,
                              &op->null_branch, &op->rule, &op->slot, &lo, &hi, &symbols))
            goto fail;
        p->nops = i + 1; /* from here on, program_free releases this op */
        op->lo = lo;
        op->hi = hi;
        if (op->wire < W_NULL || op->wire > W_ENUM || op->rule < R_NONE || op->rule > R_ENUM ||
            op->slot < -1 || op->slot >= N_SLOTS || op->null_branch < -1 || op->null_branch > 1) {
            PyErr_Format(PyExc_ValueError, "op %zd out of range", i);
            goto fail;
        }
        if (op->rule == R_ENUM) {
            char *data;
            Py_ssize_t len;
            if (PyBytes_AsStringAndSize(symbols, &data, &len) < 0) goto fail;
            op->safe_symbols = PyMem_Malloc(len > 0 ? (size_t)len : 1);
            if (op->safe_symbols == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            memcpy(op->safe_symbols, data, (size_t)len);
            op->symbols = len;
        }
    }
    p->nops = n;
    Py_DECREF(fast);
    Py_INCREF(topic);
    Py_INCREF(verdict);
    p->topic = topic;
    p->verdict = verdict;
    PyObject *capsule = PyCapsule_New(p, CAPSULE, program_free);
    if (capsule == NULL) {
        Py_DECREF(topic);
        Py_DECREF(verdict);
        p->topic = p->verdict = NULL;
        goto fail_freed_fast;
    }
    return capsule;
fail:
    Py_DECREF(fast);
fail_freed_fast:
    for (Py_ssize_t i = 0; i < p->nops; i++) PyMem_Free(p->ops[i].safe_symbols);
    PyMem_Free(p->ops);
    PyMem_Free(p);
    return NULL;
}

/* ---------------------------------------------------------------- wire reading */

/* An Avro long: zigzag varint of at most 10 bytes and 64 bits. 0 on success. */
static inline int read_long(const unsigned char **at, const unsigned char *end, int64_t *out) {
    const unsigned char *p = *at;
    uint64_t n = 0;
    int shift = 0;
    for (;;) {
        if (p >= end || shift > 63) return -1;
        unsigned char b = *p++;
        if (shift == 63 && (b & 0x7E)) return -1; /* past 64 bits */
        n |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) break;
        shift += 7;
    }
    *at = p;
    *out = (int64_t)(n >> 1) ^ -(int64_t)(n & 1);
    return 0;
}

/* Character classes of the NIR scan, one table lookup each (filled at import). */
enum { C_DIGIT = 1, C_HEX = 2, C_SEP = 4, C_SEX = 8 };
static unsigned char CLASS[256];

static void init_classes(void) {
    for (int c = 0; c < 256; c++) {
        unsigned char k = 0;
        if (c >= '0' && c <= '9') k |= C_DIGIT | C_HEX;
        if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) k |= C_HEX;
        /* ASCII separators: whitespace as str.isspace sees it, then . _ / - */
        if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f) || c == '.' ||
            c == '_' || c == '/' || c == '-')
            k |= C_SEP;
        if (c == '1' || c == '2' || c == '3' || c == '4' || c == '7' || c == '8') k |= C_SEX;
        CLASS[c] = k;
    }
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static inline int is_lower_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}
static inline int is_hex(unsigned char c) { return CLASS[c] & C_HEX; }

/* The NIR rule of `rules.find_nir`, exactly, for ASCII text (callers leave any other
 * text to Python). Separators (ASCII whitespace as str.isspace sees it, '.', '_', '/', '-')
 * may stand in any number between groups; the NIR must not follow nor precede an ASCII
 * digit; a match inside a run of 32 or more hex digits (E1) or inside a maximal run of hex
 * digits and '-' shaped as a UUID or a traceparent (E2) does not count. */
static inline int is_sep(unsigned char c) { return CLASS[c] & C_SEP; }

static int is_hex_id(const unsigned char *s, Py_ssize_t n) {
    static const int uuid_groups[] = {8, 4, 4, 4, 12};
    static const int trace_groups[] = {2, 32, 16, 2};
    const int *groups;
    int count;
    if (n == 36) {
        groups = uuid_groups;
        count = 5;
    } else if (n == 55) {
        groups = trace_groups;
        count = 4;
    } else {
        return 0;
    }
    Py_ssize_t at = 0;
    for (int g = 0; g < count; g++) {
        if (g > 0 && s[at++] != '-') return 0;
        for (int k = 0; k < groups[g]; k++)
            if (!is_hex(s[at++])) return 0;
    }
    return 1;
}

static int nir_exempt(const unsigned char *s, Py_ssize_t n, Py_ssize_t start, Py_ssize_t end) {
    Py_ssize_t left = start, right = end;
    if (end - start == NIR_MIN_LENGTH) { /* E1: no separator, all of [0-9ABab] */
        while (left > 0 && is_hex(s[left - 1])) left--;
        while (right < n && is_hex(s[right])) right++;
        if (right - left >= HASH_MIN_LENGTH) return 1;
    }
    for (Py_ssize_t i = start; i < end; i++)
        if (!is_hex(s[i]) && s[i] != '-') return 0;
    left = start;
    right = end;
    while (left > 0 && (is_hex(s[left - 1]) || s[left - 1] == '-')) left--;
    while (right < n && (is_hex(s[right]) || s[right] == '-')) right++;
    return is_hex_id(s + left, right - left); /* E2 */
}

/* The NIR starting at s[i], if any: its end (exclusive) with a valid key and not exempt;
 * else -1. Each character is tested as it is read, so most candidates end at once. */
static Py_ssize_t nir_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) {
    static const int group_length[] = {1, 2, 2, 2, 3, 3, 2};
    unsigned char c[NIR_MIN_LENGTH];
    int k = 0;
    Py_ssize_t j = i;
    for (int g = 0; g < 7; g++) {
        if (g > 0)
            while (j < n && is_sep(s[j])) j++;
        for (int m = 0; m < group_length[g]; m++) {
            if (j >= n) return -1;
            unsigned char ch = s[j++];
            /* every character a digit, but the department's second may be A/B/a/b */
            if (!is_digit(ch) && !(k == 6 && c[5] == '2' &&
                                   (ch == 'A' || ch == 'B' || ch == 'a' || ch == 'b')))
                return -1;
            c[k++] = ch;
        }
        if (g == 2) { /* month */
            int month = (c[3] - '0') * 10 + (c[4] - '0');
            if (!((month >= 1 && month <= 12) || month == 20 || (month >= 30 && month <= 42) ||
                  month >= 50))
                return -1;
        }
    }
    if (j < n && is_digit(s[j])) return -1;
    if (!(c[0] == '1' || c[0] == '2' || c[0] == '3' || c[0] == '4' || c[0] == '7' || c[0] == '8'))
        return -1;
    int department;
    if (is_digit(c[6])) {
        department = (c[5] - '0') * 10 + (c[6] - '0');
        if (department == 0) return -1;
    } else {
        department = (c[6] == 'A' || c[6] == 'a') ? 19 : 18; /* 2A, 2B */
    }
    int64_t number = 0;
    for (int m = 0; m < 5; m++) number = number * 10 + (c[m] - '0');
    number = number * 100 + department;
    for (int m = 7; m < 13; m++) number = number * 10 + (c[m] - '0');
    int key = (c[13] - '0') * 10 + (c[14] - '0');
    if (97 - number % 97 != key) return -1;
    if (nir_exempt(s, n, i, j)) return -1;
    return j;
}

/* 1 if ASCII text holds no NIR (rules.find_nir finds nothing), else 0. */
static int holds_no_nir(const unsigned char *s, Py_ssize_t n) {
    if (n < NIR_MIN_LENGTH) return 1;
    /* as rules._find_nir_fast: one run of 32 or more hex digits (E1 covers every
     * match in it) or a UUID (E2) holds none; a pseudonym key is one of these */
    if (n >= HASH_MIN_LENGTH) {
        Py_ssize_t h = 0;
        while (h < n && is_hex(s[h])) h++;
        if (h == n) return 1;
    }
    if (n == 36 && is_hex_id(s, n)) return 1;
    int after_digit = 0;
    for (Py_ssize_t i = 0; i + NIR_MIN_LENGTH <= n; i++) {
        unsigned char k = CLASS[s[i]];
        if ((k & C_SEX) && !after_digit && nir_at(s, n, i) >= 0) return 0;
        after_digit = k & C_DIGIT;
    }
    return 1;
}

/* 1 if the bytes are ASCII and hold no NIR; 0 if not sure (Python decides). */
static int ascii_holds_no_nir(const unsigned char *s, Py_ssize_t n) {
    if (n < NIR_MIN_LENGTH) return 1; /* fewer characters than a NIR in any reading */
    unsigned char seen = 0;
    for (Py_ssize_t i = 0; i < n; i++) seen |= s[i];
    if (seen & 0x80) return 0;
    return holds_no_nir(s, n);
}

static int is_department(const unsigned char *s, Py_ssize_t n) {
    if (n == 2) {
        unsigned char a = s[0], b = s[1];
        if (a == '2' && (b == 'A' || b == 'B')) return 1;
        if (!is_digit(a) || !is_digit(b)) return 0;
        int v = (a - '0') * 10 + (b - '0');
        return v >= 1 && v != 20 && v != 96 && v != 97 && v != 98;
    }
    if (n == 3) return s[0] == '9' && s[1] == '7' && s[2] >= '1' && s[2] <= '6';
    return 0;
}

static int is_uuid(const unsigned char *s, Py_ssize_t n) {
    if (n != 36) return 0;
    for (Py_ssize_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return 0;
        } else if (!is_hex(s[i])) {
            return 0;
        }
    }
    return 1;
}

static int is_ccam(const unsigned char *s, Py_ssize_t n) {
    return n == 7 && is_upper(s[0]) && is_upper(s[1]) && is_upper(s[2]) && is_upper(s[3]) &&
           is_digit(s[4]) && is_digit(s[5]) && is_digit(s[6]);
}

static int is_cip13(const unsigned char *s, Py_ssize_t n) {
    if (n != 13 || memcmp(s, "3400", 4) != 0) return 0;
    for (int i = 4; i < 13; i++)
        if (!is_digit(s[i])) return 0;
    int total = 0;
    for (int i = 0; i < 12; i++) total += (s[i] - '0') * (i % 2 ? 3 : 1);
    return (10 - total % 10) % 10 == s[12] - '0';
}

static int is_atc(const unsigned char *s, Py_ssize_t n) {
    return n == 7 && strchr("ABCDGHJLMNPRSV", s[0]) != NULL && s[0] != 0 && is_digit(s[1]) &&
           is_digit(s[2]) && is_upper(s[3]) && is_upper(s[4]) && is_digit(s[5]) &&
           is_digit(s[6]);
}

static int string_passes(int rule, const Op *op, const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] & 0x80) return 0; /* not ASCII: the Python path decides */
    switch (rule) {
        case R_SCAN: return holds_no_nir(s, n);
        case R_UUID: return is_uuid(s, n);
        case R_HEX:
            if (n != op->lo) return 0;
            for (Py_ssize_t i = 0; i < n; i++)
                if (!is_lower_hex(s[i])) return 0;
            return 1;
        case R_DEPT: return is_department(s, n);
        case R_CCAM: return is_ccam(s, n);
        case R_CIP13: return is_cip13(s, n);
        case R_ATC: return is_atc(s, n);
        default: return 0;
    }
}

/* 1 if the body is a well-formed record of the program's schema, every byte read, that the
 * checks accept; 0 if not sure. */
static int body_passes(const Program *p, const unsigned char *at, const unsigned char *end) {
    int64_t slot[N_SLOTS];
    int present[N_SLOTS] = {0};
    for (Py_ssize_t i = 0; i < p->nops; i++) {
        const Op *op = &p->ops[i];
        if (op->null_branch >= 0) {
            int64_t branch;
            if (read_long(&at, end, &branch) < 0 || branch < 0 || branch > 1) return 0;
            if (branch == op->null_branch) continue; /* null: no rule applies */
        }
        int64_t v = 0;
        switch (op->wire) {
            case W_NULL: continue;
            case W_BOOL:
                if (at >= end || *at > 1) return 0;
                at++;
                continue;
            case W_FLOAT:
                if (end - at < 4) return 0;
                at += 4;
                continue;
            case W_DOUBLE:
                if (end - at < 8) return 0;
                at += 8;
                continue;
            case W_INT:
            case W_LONG:
                if (read_long(&at, end, &v) < 0) return 0;
                if (op->wire == W_INT && (v < INT32_MIN || v > INT32_MAX)) return 0;
                if (op->rule == R_RANGE && (v < op->lo || v > op->hi)) return 0;
                if (op->slot >= 0) {
                    slot[op->slot] = v;
                    present[op->slot] = 1;
                }
                continue;
            case W_STRING: {
                int64_t len;
                if (read_long(&at, end, &len) < 0 || len < 0 || len > end - at) return 0;
                if (!string_passes(op->rule, op, at, (Py_ssize_t)len)) return 0;
                at += len;
                continue;
            }
            case W_ENUM:
                if (read_long(&at, end, &v) < 0 || v < 0 || v >= op->symbols) return 0;
                if (!op->safe_symbols[v]) return 0;
                continue;
            default: return 0;
        }
    }
    if (at != end) return 0; /* trailing bytes */
    /* Rules across fields, as judge.compiled writes them. */
    if (present[S_BIRTH]) {
        int64_t index = slot[S_BIRTH] - p->first_year;
        if (index < 0 || index >= YEARS) return 0;
        if (present[S_EVENT] && slot[S_EVENT] < p->year_start_ms[index]) return 0;
    }
    int64_t lowest =
        present[S_BIRTH] ? p->lowest_day[slot[S_BIRTH] - p->first_year] : p->min_date_days;
    for (int s = S_DATE0; s <= S_DATE2; s++) {
        if (!present[s]) continue;
        if (slot[s] < lowest) return 0;
        if (present[S_EVENT]) {
            if (slot[S_EVENT] < 0) return 0; /* floor division: not modelled */
            if (slot[s] > slot[S_EVENT] / p->day_ms + 1) return 0;
        }
    }
    if (present[S_DATE0] && present[S_DATE1] && slot[S_DATE1] < slot[S_DATE0]) return 0;
    if (present[S_REIMBURSED]) {
        if (present[S_BASE] && slot[S_REIMBURSED] > slot[S_BASE]) return 0;
        if (present[S_PAID] && slot[S_REIMBURSED] > slot[S_PAID]) return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- the envelope */

static inline unsigned char *put_long(unsigned char *out, int64_t value) {
    uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (n & ~(uint64_t)0x7F) {
        *out++ = (unsigned char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *out++ = (unsigned char)n;
    return out;
}

/* The Avro encoding of the envelope's headers field (format 3): an array of
 * {key: string, value: [null, bytes]} in the record's order, one block then the end.
 * headers: None or an empty sequence (no headers: the single byte 0), or a sequence of
 * (str name, bytes or None value) pairs. Writes into `out` when not NULL; returns the
 * size, or -1 with an exception set. */
static Py_ssize_t header_block(PyObject *headers, unsigned char *out) {
    if (headers == Py_None) {
        if (out != NULL) *out = 0;
        return 1;
    }
    PyObject *hf = PySequence_Fast(headers, "headers must be a sequence of (name, value)");
    if (hf == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(hf), size = 0;
    unsigned char scratch[16];
    if (n > 0) {
        unsigned char *end = put_long(out != NULL ? out : scratch, n);
        size += end - (out != NULL ? out : scratch);
    }
    for (Py_ssize_t h = 0; h < n; h++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(hf, h);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "each header must be a (name, value) tuple");
            goto fail;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "header names must be str");
            goto fail;
        }
        Py_ssize_t name_len;
        const char *name_utf8 = PyUnicode_AsUTF8AndSize(name, &name_len);
        if (name_utf8 == NULL) goto fail;
        if (value != Py_None && !PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "header values must be bytes or None");
            goto fail;
        }
        unsigned char *at = out != NULL ? out + size : scratch;
        unsigned char *end = put_long(at, name_len);
        size += end - at;
        if (out != NULL) memcpy(out + size, name_utf8, (size_t)name_len);
        size += name_len;
        if (value == Py_None) {
            if (out != NULL) out[size] = 0;
            size += 1;
        } else {
            Py_ssize_t value_len = PyBytes_GET_SIZE(value);
            if (out != NULL) out[size] = 2;
            size += 1;
            at = out != NULL ? out + size : scratch;
            end = put_long(at, value_len);
            size += end - at;
            if (out != NULL) memcpy(out + size, PyBytes_AS_STRING(value), (size_t)value_len);
            size += value_len;
        }
    }
    if (out != NULL) out[size] = 0; /* the array's end */
    size += 1;
    Py_DECREF(hf);
    return size;
fail:
    Py_DECREF(hf);
    return -1;
}

/* The envelope of one record; `headers` is NULL for format 2 (no headers field), else the
 * record's headers (None, or a sequence of pairs: `header_block`). */
static PyObject *envelope(int64_t offset, int64_t timestamp, const char *key, Py_ssize_t key_len,
                          PyObject *headers, const char *body, Py_ssize_t body_len) {
    unsigned char head[48];
    unsigned char *at = put_long(head, offset);
    at = put_long(at, timestamp);
    if (key == NULL) {
        *at++ = 0;
    } else {
        *at++ = 2;
        at = put_long(at, key_len);
    }
    Py_ssize_t head_len = at - head;
    Py_ssize_t headers_len = 0;
    if (headers != NULL) {
        if (headers == Py_None || (PyList_CheckExact(headers) && PyList_GET_SIZE(headers) == 0))
            headers_len = 1; /* the common case: no headers, one byte */
        else {
            headers_len = header_block(headers, NULL);
            if (headers_len < 0) return NULL;
        }
    }
    Py_ssize_t total = head_len + (key ? key_len : 0) + headers_len + 1 + body_len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, head, (size_t)head_len);
    o += head_len;
    if (key != NULL) {
        memcpy(o, key, (size_t)key_len);
        o += key_len;
    }
    if (headers_len == 1) {
        *o++ = 0;
    } else if (headers_len > 1) {
        if (header_block(headers, (unsigned char *)o) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        o += headers_len;
    }
    *o++ = 0; /* union branch 0 */
    memcpy(o, body, (size_t)body_len);
    return out;
}

/* 1 if the message's key (bytes or None) and headers (None or a list of (str name, bytes or
 * None value)) are ASCII and hold no NIR (rules.find_identifier_in_message finds
 * nothing); 0 if not sure. */
static int message_passes(PyObject *key, PyObject *headers) {
    if (key != Py_None &&
        !ascii_holds_no_nir((const unsigned char *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))
        return 0;
    if (headers == Py_None) return 1;
    if (!PyList_CheckExact(headers)) return 0;
    for (Py_ssize_t h = 0; h < PyList_GET_SIZE(headers); h++) {
        PyObject *header = PyList_GET_ITEM(headers, h);
        if (!PyTuple_CheckExact(header) || PyTuple_GET_SIZE(header) != 2) return 0;
        PyObject *name = PyTuple_GET_ITEM(header, 0), *value = PyTuple_GET_ITEM(header, 1);
        if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name)) return 0;
        if (!holds_no_nir(PyUnicode_1BYTE_DATA(name), PyUnicode_GET_LENGTH(name))) return 0;
        if (value == Py_None) continue;
        if (!PyBytes_CheckExact(value)) return 0;
        if (!ascii_holds_no_nir((const unsigned char *)PyBytes_AS_STRING(value),
                                PyBytes_GET_SIZE(value)))
            return 0;
    }
    return 1;
}

/* accept(programs, items, max_bytes) -> verdicts
 * programs: {schema id header as a big-endian int: Program}
 * items: list of (schema topic, value, offset, timestamp ms, key, headers)
 * Each verdict is the program's (schema id, "", "") or None ("not sure"), in the items'
 * order. */
static PyObject *accept(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *programs, *items;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyDict_Type, &programs, &PyList_Type, &items,
                          &max_bytes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *verdicts = PyList_New(n);
    if (verdicts == NULL) goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        Py_INCREF(Py_None);
        PyList_SET_ITEM(verdicts, i, Py_None);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) continue;
        PyObject *topic = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        PyObject *offset_obj = PyTuple_GET_ITEM(item, 2), *ts_obj = PyTuple_GET_ITEM(item, 3);
        PyObject *key = PyTuple_GET_ITEM(item, 4), *headers = PyTuple_GET_ITEM(item, 5);
        if (!PyBytes_CheckExact(value) || !PyLong_CheckExact(offset_obj) ||
            !PyLong_CheckExact(ts_obj) || (key != Py_None && !PyBytes_CheckExact(key)))
            continue;
        if (!message_passes(key, headers)) continue;
        Py_ssize_t len = PyBytes_GET_SIZE(value);
        const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
        if (len < 5 || len > max_bytes || v[0] != 0) continue;
        unsigned long header = ((unsigned long)v[1] << 24) | ((unsigned long)v[2] << 16) |
                               ((unsigned long)v[3] << 8) | (unsigned long)v[4];
        PyObject *header_obj = PyLong_FromUnsignedLong(header);
        if (header_obj == NULL) goto error;
        PyObject *capsule = PyDict_GetItemWithError(programs, header_obj); /* borrowed */
        Py_DECREF(header_obj);
        if (capsule == NULL) {
            if (PyErr_Occurred()) goto error;
            continue;
        }
        Program *p = (Program *)PyCapsule_GetPointer(capsule, CAPSULE);
        if (p == NULL) goto error;
        if (topic != p->topic) {
            int same = PyUnicode_Check(topic) ? PyUnicode_Compare(topic, p->topic) : 1;
            if (same == -1 && PyErr_Occurred()) goto error;
            if (same != 0) continue;
        }
        int overflow = 0;
        long long offset = PyLong_AsLongLongAndOverflow(offset_obj, &overflow);
        if (overflow || (offset == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            continue;
        }
        long long ts = PyLong_AsLongLongAndOverflow(ts_obj, &overflow);
        if (overflow || (ts == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            continue;
        }
        if (!body_passes(p, v + 5, v + len)) continue;
        Py_INCREF(p->verdict);
        PyList_SET_ITEM(verdicts, i, p->verdict);
        Py_DECREF(Py_None);
    }
    return verdicts;
error:
    Py_XDECREF(verdicts);
    return NULL;
}

/* envelopes(records, branches, with_headers) -> list of bytes
 * records: sequence of model.RawRecord (offset, timestamp_ms, key, body[, headers]);
 * branches: the union branch of each record (0 <= branch < 64); with_headers: format 3
 * (the headers field) when true, format 2 when false. The bytes of
 * container.encode_record(record, branch, format) for each. */
static PyObject *envelopes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *records, *branches;
    int with_headers;
    if (!PyArg_ParseTuple(args, "OOp", &records, &branches, &with_headers)) return NULL;
    PyObject *rf = PySequence_Fast(records, "records must be a sequence");
    if (rf == NULL) return NULL;
    PyObject *bf = PySequence_Fast(branches, "branches must be a sequence");
    if (bf == NULL) {
        Py_DECREF(rf);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(rf);
    PyObject *out = NULL;
    if (PySequence_Fast_GET_SIZE(bf) != n) {
        PyErr_SetString(PyExc_ValueError, "one branch per record");
        goto done;
    }
    out = PyList_New(n);
    if (out == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(rf, i);
        long branch = PyLong_AsLong(PySequence_Fast_GET_ITEM(bf, i));
        if (branch == -1 && PyErr_Occurred()) goto fail;
        if (branch < 0 || branch >= 64) {
            PyErr_SetString(PyExc_ValueError, "branch out of range");
            goto fail;
        }
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 4 ||
            PyTuple_GET_SIZE(record) > 5) {
            PyErr_SetString(PyExc_TypeError, "records must be RawRecord tuples");
            goto fail;
        }
        PyObject *headers = NULL;
        if (with_headers)
            headers = PyTuple_GET_SIZE(record) == 5 ? PyTuple_GET_ITEM(record, 4) : Py_None;
        PyObject *key = PyTuple_GET_ITEM(record, 2), *body = PyTuple_GET_ITEM(record, 3);
        if (!PyBytes_Check(body) || (key != Py_None && !PyBytes_Check(key))) {
            PyErr_SetString(PyExc_TypeError, "key and body must be bytes");
            goto fail;
        }
        long long offset = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 0));
        if (offset == -1 && PyErr_Occurred()) goto fail;
        long long ts = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 1));
        if (ts == -1 && PyErr_Occurred()) goto fail;
        PyObject *made = envelope(offset, ts, key == Py_None ? NULL : PyBytes_AS_STRING(key),
                                  key == Py_None ? 0 : PyBytes_GET_SIZE(key), headers,
                                  PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body));
        if (made == NULL) goto fail;
        if (branch != 0) {
            /* the branch byte sits right before the body: 2 * branch for branch < 64 */
            PyBytes_AS_STRING(made)[PyBytes_GET_SIZE(made) - PyBytes_GET_SIZE(body) - 1] =
                (char)(2 * branch);
        }
        PyList_SET_ITEM(out, i, made);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_DECREF(rf);
    Py_DECREF(bf);
    return out;
}

/* holds_no_nir(data: bytes) -> bool: the scan the judge applies to a key or header value
 * (True: ASCII and no NIR; False: not sure). For differential tests. */
static PyObject *py_holds_no_nir(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bytes expected");
        return NULL;
    }
    return PyBool_FromLong(
        ascii_holds_no_nir((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg)));
}

/* wire_payload(offsets, timestamps, keys, values, start, end, skip, branches, empty_headers)
 *   -> (payload, count, first timestamp, last timestamp) or None
 * empty_headers: the envelopes are of format 3 and no record has a header (each envelope
 * then holds an empty headers array); false: format 2 (no headers field).
 * The audit's fast path (replicator/ops/audit_logic.py, `wire_payload`): the four lists are
 * the columns of source records as read from Kafka (values in the Confluent wire format:
 * magic 0, a 4-byte big-endian schema id, the Avro body). For the records of [start, end)
 * whose offset is not a key of the dict `skip` (dead-lettered), the envelopes
 * container.encode_record makes, joined: what a container of them holds once decompressed.
 * branches: {schema id: union branch (0 <= branch < 64)}. None when a record could not have
 * been stored as it is (no value, not the wire format, a schema id not in `branches`). */
static PyObject *wire_payload(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *offsets, *timestamps, *keys, *values, *skip, *branches;
    Py_ssize_t start, end;
    int empty_headers;
    if (!PyArg_ParseTuple(args, "O!O!O!O!nnO!O!p", &PyList_Type, &offsets, &PyList_Type,
                          &timestamps, &PyList_Type, &keys, &PyList_Type, &values, &start, &end,
                          &PyDict_Type, &skip, &PyDict_Type, &branches, &empty_headers))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(offsets);
    if (PyList_GET_SIZE(timestamps) != n || PyList_GET_SIZE(keys) != n ||
        PyList_GET_SIZE(values) != n) {
        PyErr_SetString(PyExc_ValueError, "the four columns must have one length");
        return NULL;
    }
    if (start < 0) start = 0;
    if (end > n) end = n;
    if (end < start) end = start;
    /* pass 1: check every record and size the payload */
    Py_ssize_t total = 0, count = 0, first = -1, last = -1;
    for (Py_ssize_t i = start; i < end; i++) {
        PyObject *off = PyList_GET_ITEM(offsets, i);
        int dead = PyDict_Contains(skip, off);
        if (dead < 0) return NULL;
        if (dead) continue;
        PyObject *key = PyList_GET_ITEM(keys, i), *value = PyList_GET_ITEM(values, i);
        if (!PyBytes_Check(value) || (key != Py_None && !PyBytes_Check(key))) Py_RETURN_NONE;
        const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
        Py_ssize_t vlen = PyBytes_GET_SIZE(value);
        if (vlen < 5 || v[0] != 0) Py_RETURN_NONE;
        long sid = (long)(((uint32_t)v[1] << 24) | ((uint32_t)v[2] << 16) |
                          ((uint32_t)v[3] << 8) | (uint32_t)v[4]);
        PyObject *sid_obj = PyLong_FromLong(sid);
        if (sid_obj == NULL) return NULL;
        PyObject *branch = PyDict_GetItemWithError(branches, sid_obj);
        Py_DECREF(sid_obj);
        if (branch == NULL) {
            if (PyErr_Occurred()) return NULL;
            Py_RETURN_NONE;
        }
        long b = PyLong_AsLong(branch);
        if (b == -1 && PyErr_Occurred()) return NULL;
        if (b < 0 || b >= 64) {
            PyErr_SetString(PyExc_ValueError, "branch out of range");
            return NULL;
        }
        long long o = PyLong_AsLongLong(off);
        if (o == -1 && PyErr_Occurred()) return NULL;
        long long ts = PyLong_AsLongLong(PyList_GET_ITEM(timestamps, i));
        if (ts == -1 && PyErr_Occurred()) return NULL;
        unsigned char head[48];
        unsigned char *at = put_long(head, o);
        at = put_long(at, ts);
        Py_ssize_t klen = key == Py_None ? 0 : PyBytes_GET_SIZE(key);
        total += (at - head) + 1 + (key == Py_None ? 0 : (put_long(head, klen) - head) + klen) +
                 (empty_headers ? 1 : 0) + 1 + (vlen - 5);
        if (first < 0) first = i;
        last = i;
        count++;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    /* pass 2: write them (every check passed) */
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = start; i < end && count; i++) {
        PyObject *off = PyList_GET_ITEM(offsets, i);
        if (PyDict_Contains(skip, off)) continue;
        PyObject *key = PyList_GET_ITEM(keys, i), *value = PyList_GET_ITEM(values, i);
        const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
        Py_ssize_t vlen = PyBytes_GET_SIZE(value);
        long sid = (long)(((uint32_t)v[1] << 24) | ((uint32_t)v[2] << 16) |
                          ((uint32_t)v[3] << 8) | (uint32_t)v[4]);
        PyObject *sid_obj = PyLong_FromLong(sid);
        if (sid_obj == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        long b = PyLong_AsLong(PyDict_GetItem(branches, sid_obj));
        Py_DECREF(sid_obj);
        o = put_long(o, PyLong_AsLongLong(off));
        o = put_long(o, PyLong_AsLongLong(PyList_GET_ITEM(timestamps, i)));
        if (key == Py_None) {
            *o++ = 0;
        } else {
            Py_ssize_t klen = PyBytes_GET_SIZE(key);
            *o++ = 2;
            o = put_long(o, klen);
            memcpy(o, PyBytes_AS_STRING(key), (size_t)klen);
            o += klen;
        }
        if (empty_headers) *o++ = 0; /* format 3: an empty headers array */
        *o++ = (unsigned char)(2 * b);
        memcpy(o, v + 5, (size_t)(vlen - 5));
        o += vlen - 5;
    }
    if (count == 0) return Py_BuildValue("(NnOO)", out, count, Py_None, Py_None);
    return Py_BuildValue("(NnOO)", out, count, PyList_GET_ITEM(timestamps, first),
                         PyList_GET_ITEM(timestamps, last));
}

static PyMethodDef methods[] = {
    {"holds_no_nir", py_holds_no_nir, METH_O,
     "holds_no_nir(data) -> True if data is ASCII and holds no NIR; False: not sure"},
    {"compile", compile_program, METH_VARARGS,
     "compile(topic, verdict, ops, first_year, min_date_days, day_ms, year_start_ms, "
     "lowest_day) -> program"},
    {"accept", accept, METH_VARARGS,
     "accept(programs, items, max_bytes) -> verdicts; None where not sure"},
    {"envelopes", envelopes, METH_VARARGS,
     "envelopes(records, branches, with_headers) -> the envelope bytes of each record "
     "(encode_record)"},
    {"wire_payload", wire_payload, METH_VARARGS,
     "wire_payload(offsets, timestamps, keys, values, start, end, skip, branches, "
     "empty_headers) -> "
     "(payload, count, first ts, last ts) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "replicator.judge._fastcheck",
    "Compiled fast path of the judge (see replicator/judge/native.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcheck(void) {
    init_classes();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "YEARS", YEARS) < 0 ||
        PyModule_AddIntConstant(m, "SLOTS", N_SLOTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
