/*
 * golden_check.c: a porter's first step, in C99 with libc only.
 *
 * Reads a refimpl golden file (safetensors: 8-byte header length, JSON header with the
 * tensor table and the manifest, then the data; only the header and the tensors it checks
 * are read, by seeking to their offsets), recomputes LiLT's layout embeddings from
 * the checkpoint's model.safetensors and the golden inputs, and compares every element with
 * the golden tensor `lilt.layout_embeddings.LayerNorm` within the manifest's tolerance.
 *
 *     cc -std=c99 -O2 -o golden_check golden_check.c -lm
 *     ./golden_check case.safetensors path/to/checkpoint/model.safetensors
 *
 * Exit status: 0 every element within tolerance; 1 a mismatch (the tensor is named);
 * 2 a usage error or a file that cannot be read.
 *
 * The layout embeddings (transformers' LiltLayoutEmbeddings.forward):
 *     left  = x_position_embeddings[x0]   upper = y_position_embeddings[y0]
 *     right = x_position_embeddings[x1]   lower = y_position_embeddings[y1]
 *     h     = h_position_embeddings[y1 - y0]   w = w_position_embeddings[x1 - x0]
 *     spatial = box_linear_embeddings(concat(left, upper, right, lower, h, w))
 *     out = LayerNorm(spatial + box_position_embeddings[position_ids])   (eps from the config)
 */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- a minimal JSON reader */
enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };
typedef struct J {
    int type;
    double num;
    char *str;          /* J_STR: the decoded string */
    int n;              /* J_ARR / J_OBJ: number of items */
    char **keys;        /* J_OBJ: keys */
    struct J **items;   /* J_ARR / J_OBJ: values */
} J;

static const char *jp;  /* parse position */

static void die(const char *msg, const char *what) {
    fprintf(stderr, "golden_check: %s%s%s\n", msg, what ? ": " : "", what ? what : "");
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory", NULL);
    return p;
}

static void skip_ws(void) { while (*jp && isspace((unsigned char)*jp)) jp++; }
static J *parse_value(void);

static char *parse_string(void) {
    /* jp at the opening quote; decode escapes (\uXXXX as UTF-8, BMP only) */
    size_t cap = 16, len = 0;
    char *out = xmalloc(cap);
    jp++;
    while (*jp && *jp != '"') {
        unsigned c = (unsigned char)*jp++;
        if (c == '\\') {
            char e = *jp++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *jp++;
                    if (!isxdigit((unsigned char)h)) die("bad \\u escape in JSON", NULL);
                    v = v * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                }
                if (len + 4 >= cap) out = realloc(out, cap *= 2);
                if (v < 0x80) c = v;
                else if (v < 0x800) { out[len++] = (char)(0xC0 | (v >> 6)); c = 0x80 | (v & 0x3F); }
                else { out[len++] = (char)(0xE0 | (v >> 12)); out[len++] = (char)(0x80 | ((v >> 6) & 0x3F)); c = 0x80 | (v & 0x3F); }
                break;
            }
            case '\0': die("unterminated JSON string", NULL); break;
            default: c = (unsigned char)e; /* \" \\ \/ */
            }
        }
        if (len + 2 >= cap) { out = realloc(out, cap *= 2); if (!out) die("out of memory", NULL); }
        out[len++] = (char)c;
    }
    if (*jp != '"') die("unterminated JSON string", NULL);
    jp++;
    out[len] = '\0';
    return out;
}

static J *parse_container(char close) {
    J *j = xmalloc(sizeof *j);
    memset(j, 0, sizeof *j);
    j->type = close == '}' ? J_OBJ : J_ARR;
    int cap = 8;
    j->items = xmalloc(cap * sizeof *j->items);
    if (close == '}') j->keys = xmalloc(cap * sizeof *j->keys);
    jp++;
    skip_ws();
    if (*jp == close) { jp++; return j; }
    for (;;) {
        if (j->n == cap) {
            cap *= 2;
            j->items = realloc(j->items, cap * sizeof *j->items);
            if (close == '}') j->keys = realloc(j->keys, cap * sizeof *j->keys);
            if (!j->items || (close == '}' && !j->keys)) die("out of memory", NULL);
        }
        skip_ws();
        if (close == '}') {
            if (*jp != '"') die("JSON object key expected", NULL);
            j->keys[j->n] = parse_string();
            skip_ws();
            if (*jp++ != ':') die("':' expected in JSON object", NULL);
        }
        j->items[j->n++] = parse_value();
        skip_ws();
        if (*jp == ',') { jp++; continue; }
        if (*jp == close) { jp++; return j; }
        die("',' or a closing bracket expected in JSON", NULL);
    }
}

static J *parse_value(void) {
    skip_ws();
    if (*jp == '{') return parse_container('}');
    if (*jp == '[') return parse_container(']');
    J *j = xmalloc(sizeof *j);
    memset(j, 0, sizeof *j);
    if (*jp == '"') { j->type = J_STR; j->str = parse_string(); return j; }
    if (!strncmp(jp, "null", 4)) { jp += 4; j->type = J_NULL; return j; }
    if (!strncmp(jp, "true", 4)) { jp += 4; j->type = J_BOOL; j->num = 1; return j; }
    if (!strncmp(jp, "false", 5)) { jp += 5; j->type = J_BOOL; return j; }
    char *end;
    j->num = strtod(jp, &end);
    if (end == jp) die("unexpected character in JSON", NULL);
    j->type = J_NUM;
    jp = end;
    return j;
}

static J *json_parse(const char *text) { jp = text; return parse_value(); }

static J *jget(const J *o, const char *key) {
    if (!o || o->type != J_OBJ) return NULL;
    for (int i = 0; i < o->n; i++) if (!strcmp(o->keys[i], key)) return o->items[i];
    return NULL;
}

static double jnum(const J *v, const char *what) {
    if (!v || v->type != J_NUM) die("a number was expected", what);
    return v->num;
}

/* ---------------------------------------------------------------- safetensors */
/* Only the header is read up front; each tensor is read on demand by seeking to its
 * data_offsets, so checking one tensor of a 2 GB golden file reads that tensor's bytes only. */
typedef struct {
    char *path;
    FILE *f;
    J *header;
    uint64_t data_start;  /* 8 + header length */
    uint64_t data_len;
} ST;

static void st_open(ST *st, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    if (fseek(f, 0, SEEK_END) != 0) die("cannot seek in", path);
    long size = ftell(f);
    if (size < 8) die("truncated safetensors file", path);
    rewind(f);
    unsigned char len8[8];
    if (fread(len8, 1, 8, f) != 8) die("cannot read", path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len8[i];
    if (n > (uint64_t)size - 8) die("header length runs past the end of", path);
    char *head = xmalloc((size_t)n + 1);
    if (fread(head, 1, (size_t)n, f) != (size_t)n) die("cannot read the header of", path);
    head[n] = '\0';
    st->header = json_parse(head);
    if (st->header->type != J_OBJ) die("header is not a JSON object", path);
    st->path = (char *)path;
    st->f = f;
    st->data_start = 8 + n;
    st->data_len = (uint64_t)size - 8 - n;
}

/* Tensor `name` as a freshly allocated double array; shape into dims/ndim. NULL if absent. */
static double *st_tensor(const ST *st, const char *name, int64_t *dims, int *ndim) {
    J *t = jget(st->header, name);
    if (!t) return NULL;
    J *dt = jget(t, "dtype"), *shape = jget(t, "shape"), *off = jget(t, "data_offsets");
    if (!dt || dt->type != J_STR || !shape || shape->type != J_ARR || !off || off->n != 2)
        die("bad tensor entry", name);
    size_t count = 1;
    *ndim = shape->n;
    for (int i = 0; i < shape->n; i++) { dims[i] = (int64_t)jnum(shape->items[i], name); count *= (size_t)dims[i]; }
    size_t begin = (size_t)jnum(off->items[0], name), end = (size_t)jnum(off->items[1], name);
    size_t item = !strcmp(dt->str, "F64") || !strcmp(dt->str, "I64") ? 8 : !strcmp(dt->str, "F32") ? 4 : 0;
    if (!item) die("unsupported dtype (F64, F32, I64 only) of", name);
    if (end > st->data_len || end < begin || end - begin != count * item) die("data_offsets do not fit", name);
    unsigned char *raw = xmalloc(end - begin);
    if (fseek(st->f, (long)(st->data_start + begin), SEEK_SET) != 0) die("cannot seek to", name);
    if (fread(raw, 1, end - begin, st->f) != end - begin) die("cannot read tensor", name);
    double *out = xmalloc(count * sizeof *out);
    const unsigned char *p = raw;
    for (size_t i = 0; i < count; i++, p += item) {  /* little-endian on disk */
        if (!strcmp(dt->str, "F64")) { double v; memcpy(&v, p, 8); out[i] = v; }
        else if (!strcmp(dt->str, "I64")) { int64_t v; memcpy(&v, p, 8); out[i] = (double)v; }
        else { float v; memcpy(&v, p, 4); out[i] = (double)v; }
    }
    free(raw);
    return out;
}

static double *need(const ST *st, const char *name, int64_t *dims, int *ndim) {
    double *t = st_tensor(st, name, dims, ndim);
    if (!t) { fprintf(stderr, "golden_check: %s has no tensor %s\n", st->path, name); exit(2); }
    return t;
}

/* A checkpoint weight: "lilt.<key>" (head models) or "<key>" (the base model). */
static double *weight(const ST *ck, const char *key, int64_t *dims, int *ndim) {
    char name[256];
    snprintf(name, sizeof name, "lilt.%s", key);
    double *t = st_tensor(ck, name, dims, ndim);
    return t ? t : need(ck, key, dims, ndim);
}

/* ---------------------------------------------------------------- main */
int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s GOLDEN.safetensors CHECKPOINT/model.safetensors\n", argv[0]);
        return 2;
    }
    ST g, ck;
    st_open(&g, argv[1]);
    st_open(&ck, argv[2]);
    J *meta = jget(g.header, "__metadata__");
    J *mtext = jget(meta, "refimpl_manifest");
    if (!mtext || mtext->type != J_STR) die("no refimpl_manifest in", argv[1]);
    J *manifest = json_parse(mtext->str);
    double eps = jnum(jget(jget(manifest, "config"), "layer_norm_eps"), "config.layer_norm_eps");

    /* head models prefix names with "lilt."; resolve aliases through the manifest's table */
    const char *want_names[2] = {"lilt.layout_embeddings.LayerNorm", "layout_embeddings.LayerNorm"};
    const char *pos_names[2] = {"lilt.embeddings.position_ids", "embeddings.position_ids"};
    J *entries = jget(manifest, "tensors"), *aliases = jget(manifest, "aliases"), *entry = NULL;
    int which = -1;
    for (int k = 0; k < 2 && which < 0; k++)
        for (int i = 0; entries && i < entries->n; i++) {
            J *nm = jget(entries->items[i], "name");
            if (nm && nm->type == J_STR && !strcmp(nm->str, want_names[k])) { which = k; entry = entries->items[i]; break; }
        }
    if (which < 0) die("the golden file lists no layout_embeddings.LayerNorm (was it left out by --select?)", argv[1]);
    const char *name = want_names[which];
    J *alias = jget(aliases, name);
    const char *stored = alias && alias->type == J_STR ? alias->str : name;
    J *pos_alias = jget(aliases, pos_names[which]);
    const char *pos_stored = pos_alias && pos_alias->type == J_STR ? pos_alias->str : pos_names[which];
    double atol = jnum(jget(entry, "atol"), "atol"), rtol = jnum(jget(entry, "rtol"), "rtol");

    int64_t d[8], gd[8], pd[8], md[8];
    int nd, gnd, pnd, mnd;
    double *bbox = need(&g, "inputs.bbox", d, &nd);                 /* [B, S, 4] */
    int64_t B = d[0], S = d[1];
    double *pos = need(&g, pos_stored, pd, &pnd);                    /* [B, S] */
    double *gold = need(&g, stored, gd, &gnd);                       /* [B, S, H/r] */
    double *mask = NULL;                                             /* padded rows are skipped */
    J *masks = jget(entry, "masks");
    if (masks && masks->n > 0) mask = need(&g, jget(masks->items[0], "input")->str, md, &mnd);

    int64_t xd[2], yd[2], hd[2], wd[2], bpd[2], lwd[2], lbd[1], nwd[1], nbd[1];
    int k2;
    double *xe = weight(&ck, "layout_embeddings.x_position_embeddings.weight", xd, &k2);  /* [max2d, H/6] */
    double *ye = weight(&ck, "layout_embeddings.y_position_embeddings.weight", yd, &k2);
    double *he = weight(&ck, "layout_embeddings.h_position_embeddings.weight", hd, &k2);
    double *we = weight(&ck, "layout_embeddings.w_position_embeddings.weight", wd, &k2);
    double *bp = weight(&ck, "layout_embeddings.box_position_embeddings.weight", bpd, &k2);  /* [P, H/r] */
    double *lw = weight(&ck, "layout_embeddings.box_linear_embeddings.weight", lwd, &k2);    /* [H/r, H] */
    double *lb = weight(&ck, "layout_embeddings.box_linear_embeddings.bias", lbd, &k2);      /* [H/r] */
    double *nw = weight(&ck, "layout_embeddings.LayerNorm.weight", nwd, &k2);
    double *nb = weight(&ck, "layout_embeddings.LayerNorm.bias", nbd, &k2);
    int64_t E = xd[1], H = lwd[1], R = lwd[0];
    if (6 * E != H || gd[0] != B || gd[1] != S || gd[2] != R) die("shapes of the checkpoint and the golden file disagree", NULL);

    double *cat = xmalloc((size_t)H * sizeof *cat), *y = xmalloc((size_t)R * sizeof *y);
    double max_abs = 0;
    long bad = 0, compared = 0, first_bad = -1;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t s = 0; s < S; s++) {
            if (mask && mask[b * S + s] == 0) continue;
            const double *bx = bbox + (b * S + s) * 4;
            int64_t x0 = (int64_t)bx[0], y0 = (int64_t)bx[1], x1 = (int64_t)bx[2], y1 = (int64_t)bx[3];
            int64_t p = (int64_t)pos[b * S + s];
            int64_t idx[6] = {x0, y0, x1, y1, y1 - y0, x1 - x0};
            const double *tab[6] = {xe, ye, xe, ye, he, we};
            int64_t rows[6] = {xd[0], yd[0], xd[0], yd[0], hd[0], wd[0]};
            for (int k = 0; k < 6; k++) {   /* six lookups, concatenated: [H] */
                if (idx[k] < 0 || idx[k] >= rows[k]) die("box coordinate outside the embedding table", name);
                memcpy(cat + k * E, tab[k] + idx[k] * E, (size_t)E * sizeof *cat);
            }
            if (p < 0 || p >= bpd[0]) die("position id outside box_position_embeddings", name);
            double mean = 0, var = 0;
            for (int64_t r = 0; r < R; r++) {  /* box_linear_embeddings + box_position_embeddings */
                double acc = lb[r];
                for (int64_t h = 0; h < H; h++) acc += lw[r * H + h] * cat[h];
                y[r] = acc + bp[p * R + r];
                mean += y[r];
            }
            mean /= (double)R;
            for (int64_t r = 0; r < R; r++) var += (y[r] - mean) * (y[r] - mean);
            var /= (double)R;                  /* biased variance, as torch's LayerNorm */
            double inv = 1.0 / sqrt(var + eps);
            for (int64_t r = 0; r < R; r++) {
                double ours = (y[r] - mean) * inv * nw[r] + nb[r];
                double ref = gold[(b * S + s) * R + r];
                double diff = fabs(ours - ref);
                if (!(diff <= atol + rtol * fabs(ref))) { if (first_bad < 0) first_bad = (long)((b * S + s) * R + r); bad++; }
                if (diff > max_abs || diff != diff) max_abs = diff;
                compared++;
                if (b == 0 && s == 0 && r < 4) printf("  [0,0,%lld] ours %+.15f golden %+.15f\n", (long long)r, ours, ref);
            }
        }
    }
    printf("%s  %lldx%lldx%lld  max_abs %.3e  atol %.0e rtol %.0e  compared %ld  %s\n", name,
           (long long)B, (long long)S, (long long)R, max_abs, atol, rtol, compared, bad ? "NOT OK" : "OK");
    if (bad) {
        fprintf(stderr, "golden_check: %s: %ld of %ld elements out of tolerance (first at flat index %ld)\n",
                name, bad, compared, first_bad);
        return 1;
    }
    return 0;
}
