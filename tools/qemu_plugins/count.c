/* Instruction and cache-miss counter for qemu-user.
 *
 * Adds up the instructions of every executed translation block.  When the guest makes the
 * marker syscall (number MARKER, first argument a tag) it writes, for every bucket with
 * anything counted, one line "tag bucket instructions [l1i l1d l2 misses per cache model]".
 *
 * Buckets: 0 is all code outside the regions; the guest names regions by writing a file of
 * "start end bucket" lines (hexadecimal start and end, guest addresses) and making the marker
 * syscall with tag REGIONS: blocks translated after that are attributed to the region holding
 * their first instruction.
 *
 * Cache models (argument cache=NAME:L1I_KIB:WAYS:L1D_KIB:WAYS:L2_KIB:WAYS, repeatable, 64-byte
 * lines, LRU, L2 unified and behind both L1s): every data access and every executed block's
 * instruction bytes go through each model once the guest has made the marker syscall with tag
 * START; a miss in L1 looks up L2.  Guest virtual addresses index the caches.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MARKER 0x4242
#define START 0   /* tag: start the cache models (before the warm-up inference) */
#define REGIONS 4 /* tag: (re)load the regions file */
#define MAX_BUCKETS 1024
#define MAX_MODELS 4
#define LINE_BITS 6

typedef struct {
    uint64_t *tags; /* sets x ways, most recently used first; 0: empty */
    unsigned sets, ways;
} Cache;

typedef struct {
    char name[32];
    Cache l1i, l1d, l2;
} Model;

typedef struct {
    uint64_t insns;
    uint64_t misses[MAX_MODELS][3]; /* l1i, l1d, l2 */
} Bucket;

typedef struct {
    uint64_t start, end;
    unsigned bucket;
} Region;

typedef struct {
    uint64_t vaddr, bytes;
    Bucket *bucket;
} Block;

static Bucket buckets[MAX_BUCKETS];
static Model models[MAX_MODELS];
static int n_models;
static Region *regions;
static size_t n_regions;
static const char *regions_path;
static int active;
static FILE *out;

static int cache_init(Cache *c, unsigned kib, unsigned ways)
{
    unsigned lines = kib * 1024 >> LINE_BITS;
    if (ways == 0 || lines % ways) return -1;
    c->sets = lines / ways;
    c->ways = ways;
    c->tags = calloc(lines, sizeof(uint64_t));
    return c->tags ? 0 : -1;
}

/* Look up one line; returns 1 on a miss (the line is then filled, LRU evicted). */
static int cache_access(Cache *c, uint64_t line)
{
    uint64_t tag = line + 1, *set = c->tags + (line % c->sets) * c->ways;
    unsigned i;
    for (i = 0; i < c->ways; i++) {
        if (set[i] == tag) {
            memmove(set + 1, set, i * sizeof(uint64_t));
            set[0] = tag;
            return 0;
        }
    }
    memmove(set + 1, set, (c->ways - 1) * sizeof(uint64_t));
    set[0] = tag;
    return 1;
}

static void touch(uint64_t vaddr, uint64_t bytes, int data, Bucket *b)
{
    uint64_t first = vaddr >> LINE_BITS, last = (vaddr + bytes - 1) >> LINE_BITS, line;
    for (line = first; line <= last; line++) {
        for (int m = 0; m < n_models; m++) {
            Cache *l1 = data ? &models[m].l1d : &models[m].l1i;
            if (cache_access(l1, line)) {
                b->misses[m][data ? 1 : 0]++;
                if (cache_access(&models[m].l2, line)) b->misses[m][2]++;
            }
        }
    }
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    if (active) touch(vaddr, 1u << qemu_plugin_mem_size_shift(info), 1, udata);
}

static void on_block(unsigned int vcpu, void *udata)
{
    Block *blk = udata;
    if (active) touch(blk->vaddr, blk->bytes, 0, blk->bucket);
}

static Bucket *bucket_of(uint64_t vaddr)
{
    size_t lo = 0, hi = n_regions;
    while (lo < hi) { /* the last region starting at or before vaddr */
        size_t mid = (lo + hi) / 2;
        if (regions[mid].start <= vaddr) lo = mid + 1; else hi = mid;
    }
    if (lo && vaddr < regions[lo - 1].end) return &buckets[regions[lo - 1].bucket];
    return &buckets[0];
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    Bucket *b = bucket_of(vaddr);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->insns, n);
    if (!n_models) return;
    Block *blk = malloc(sizeof(Block));
    if (!blk) return;
    blk->vaddr = vaddr;
    blk->bytes = 0;
    blk->bucket = b;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        blk->bytes += qemu_plugin_insn_size(insn);
        qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_RW, b);
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, blk);
}

static int by_start(const void *a, const void *b)
{
    uint64_t x = ((const Region *)a)->start, y = ((const Region *)b)->start;
    return x < y ? -1 : x > y;
}

static void load_regions(void)
{
    FILE *f = regions_path ? fopen(regions_path, "r") : NULL;
    size_t cap = 0;
    Region r;
    if (!f) {
        fprintf(out, "error: cannot read regions file %s\n", regions_path ? regions_path : "");
        return;
    }
    n_regions = 0;
    while (fscanf(f, "%" SCNx64 " %" SCNx64 " %u", &r.start, &r.end, &r.bucket) == 3) {
        if (r.bucket >= MAX_BUCKETS) continue;
        if (n_regions == cap) {
            cap = cap ? 2 * cap : 256;
            regions = realloc(regions, cap * sizeof(Region));
        }
        regions[n_regions++] = r;
    }
    fclose(f);
    qsort(regions, n_regions, sizeof(Region), by_start);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    if (num != MARKER) return;
    if (a1 == START) active = 1;
    if (a1 == REGIONS) load_regions();
    for (unsigned b = 0; b < MAX_BUCKETS; b++) {
        if (!buckets[b].insns && b) continue;
        fprintf(out, "%" PRIu64 " %u %" PRIu64, a1, b, buckets[b].insns);
        for (int m = 0; m < n_models; m++)
            for (int k = 0; k < 3; k++) fprintf(out, " %" PRIu64, buckets[b].misses[m][k]);
        fputc('\n', out);
    }
    fflush(out);
}

static int parse_model(const char *spec)
{
    unsigned v[6];
    Model *m = &models[n_models];
    const char *colon = strchr(spec, ':');
    if (n_models == MAX_MODELS || !colon || colon - spec >= (long)sizeof(m->name)) return -1;
    if (sscanf(colon + 1, "%u:%u:%u:%u:%u:%u", v, v + 1, v + 2, v + 3, v + 4, v + 5) != 6)
        return -1;
    memcpy(m->name, spec, colon - spec);
    if (cache_init(&m->l1i, v[0], v[1]) || cache_init(&m->l1d, v[2], v[3]) ||
        cache_init(&m->l2, v[4], v[5]))
        return -1;
    n_models++;
    return 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    out = stderr;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "w");
            if (!out) return -1;
        } else if (strncmp(argv[i], "cache=", 6) == 0) {
            if (parse_model(argv[i] + 6)) {
                fprintf(stderr, "count plugin: bad cache model %s\n", argv[i] + 6);
                return -1;
            }
        } else if (strncmp(argv[i], "regions=", 8) == 0) {
            regions_path = argv[i] + 8;
        } else {
            fprintf(stderr, "count plugin: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
