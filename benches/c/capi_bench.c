/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * capi_bench.c - the device-model cost of one 4 KiB request through the C ABI.
 *
 * A minimal C "hypervisor": guest RAM from mmap, a `null:1G` block device opened with NULL
 * options (reads leave the buffers untouched: no data copy), one virtio-blk device with one
 * queue, driven through the Linux driver's init sequence, then a timed loop that plays the
 * guest: add a batch of 4 KiB requests (header, data, status: 3 descriptors each, as Linux lays
 * them out without INDIRECT_DESC), publish, vstor_device_kick (the null backend completes them
 * synchronously inside the kick), reap the used ring, check every status byte and used length,
 * and start again.
 *
 *   capi_bench [--op read|write] [--qd N] [--batch N] [--requests N] [--runs N] [--warmup N]
 *              [--queue-size N] [--no-event-idx] [--indirect] [--split] [--quiet]
 *
 *   --qd N         requests per kick (in flight when vstor_device_kick is called); default 32
 *   --batch N      synonym of --qd (the null backend completes inside the kick, so the queue
 *                  depth the device sees is exactly the batch)
 *   --requests N   requests per run (default 2000000)
 *   --runs N       timed runs; the best is reported (default 5)
 *   --warmup N     untimed requests first (default 20000; checked like the others)
 *   --split        also time the vstor_device_kick calls alone: after each plain run, a run
 *                  with clock_gettime around each kick (the cost of timing an empty interval
 *                  subtracted); reported as kick_ns_per_req
 *   --inject-error self-test of the checks: one request in 1000 reads past the end of the
 *                  device, so the bench must fail (exit 1)
 *   --indirect     negotiate VIRTIO_F_INDIRECT_DESC and put the 3 buffers in an indirect table
 *                  (what Linux does when the feature is offered)
 *
 * Output: a human line per run, then one machine-readable line
 *   RESULT op=read qd=32 ... ns_per_req=... req_per_s=... kicks=... irqs=... total_requests=...
 * (total_requests counts the warm-up too: divide whole-process instruction counts by it)
 * Exit status 1 if any request failed (status byte not VIRTIO_BLK_S_OK, wrong used length,
 * missing or extra completion, device in NEEDS_RESET): the bench cannot time failures.
 *
 * Under callgrind the loop is the function bench_loop (never inlined), so
 *   valgrind --tool=callgrind --toggle-collect=bench_loop ...      (driver + device)
 *   valgrind --tool=callgrind --toggle-collect=vstor_device_kick ... (device only)
 * count what one request costs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <vstor.h>

#include "virtio_blk.h"
#include "virtq.h"

#define DIE(...) do { fprintf(stderr, "capi_bench: " __VA_ARGS__); fputc('\n', stderr); \
    exit(1); } while (0)
#define CHECK(call) do { int rc_ = (call); if (rc_ < 0) \
    DIE("%s = %d: %s", #call, rc_, vstor_last_error()); } while (0)

/* Guest physical layout (one region at GPA 0). */
#define RAM_GPA 0x0ull
#define RING_OFF 0x1000ull       /* virtq_ring_bytes(32768) would not fit; sizes <= 4096 do */
#define SLOT_OFF 0x100000ull     /* per-request header (16), status (1), indirect table (48) */
#define SLOT_BYTES 128ull
#define DATA_OFF 0x200000ull     /* per-request 4 KiB data page */
#define DATA_LEN 4096u
#define MAX_QUEUE 4096u

struct bench {
  vstor_device *dev;
  struct virtq vq;
  uint8_t *ram;
  size_t ram_len;
  unsigned qd;
  uint32_t type;           /* VBLK_T_IN or VBLK_T_OUT */
  uint32_t expect_len;     /* used length of a successful request */
  int indirect;
  int split;
  int inject;              /* --inject-error: one request per 1000 past the end (self-test) */
  uint64_t nblocks;        /* capacity in 4 KiB blocks */
  uint64_t rng;
  uint16_t slot_of_head[MAX_QUEUE];
  uint16_t free_slots[MAX_QUEUE];
  unsigned nfree;
  /* counters */
  uint64_t completed, kicks, bad_status, bad_len;
  uint64_t kick_ns;        /* --split: time inside vstor_device_kick */
  volatile uint64_t irqs;
};

static void on_irq(void *opaque, uint32_t queue) {
  struct bench *b = (struct bench *)opaque;
  if (queue == 0) b->irqs++;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static inline uint8_t *slot_hva(struct bench *b, unsigned slot) {
  return b->ram + SLOT_OFF + SLOT_BYTES * slot;
}

/* Adds one 4 KiB request in `slot` at a random 4 KiB-aligned sector. */
static inline void add_request(struct bench *b, unsigned slot) {
  uint8_t *s = slot_hva(b, slot);
  uint64_t hdr = RAM_GPA + SLOT_OFF + SLOT_BYTES * slot;
  uint64_t block = xorshift(&b->rng) % b->nblocks;
  uint64_t sector;
  if (b->inject && block % 1000 == 0) block = b->nblocks; /* past the end: VIRTIO_BLK_S_IOERR */
  sector = block * (DATA_LEN / VBLK_SECTOR_SIZE);
  struct virtq_sg sg[3];
  unsigned n_out, n_in;
  uint16_t head;
  int rc;
  vblk_write_outhdr(s, b->type, sector);
  s[16] = 0xff; /* the device must overwrite it with VIRTIO_BLK_S_OK */
  vblk_sg(sg, b->type, hdr, RAM_GPA + DATA_OFF + (uint64_t)DATA_LEN * slot, DATA_LEN, hdr + 16,
          &n_out, &n_in);
  if (b->indirect)
    rc = virtq_add_indirect(&b->vq, sg, n_out, n_in, s + 32, hdr + 32, &head);
  else
    rc = virtq_add(&b->vq, sg, n_out, n_in, &head);
  if (rc != 0) DIE("virtq_add: %d (slot %u, %u descriptors free)", rc, slot, b->vq.num_free);
  b->slot_of_head[head] = (uint16_t)slot;
}

/* Consumes the used ring; returns how many requests completed. */
static inline unsigned reap(struct bench *b) {
  unsigned n = 0;
  uint16_t head;
  uint32_t len;
  int rc;
  while ((rc = virtq_get_used(&b->vq, &head, &len)) == 1) {
    unsigned slot = b->slot_of_head[head];
    uint8_t st = slot_hva(b, slot)[16];
    if (st != VBLK_S_OK) b->bad_status++;
    if (len != b->expect_len) b->bad_len++;
    b->free_slots[b->nfree++] = (uint16_t)slot;
    n++;
  }
  if (rc < 0) DIE("virtq_get_used: %d (the device returned a bad used element)", rc);
  return n;
}

/* The timed loop: `total` requests, `qd` per kick. Never inlined, so that callgrind's
 * --toggle-collect=bench_loop can find it. */
__attribute__((noinline)) void bench_loop(struct bench *b, uint64_t total) {
  uint64_t submitted = 0, done = 0;
  while (done < total) {
    unsigned batch = b->qd, k;
    if (total - submitted < batch) batch = (unsigned)(total - submitted);
    for (k = 0; k < batch && b->nfree > 0; k++) add_request(b, b->free_slots[--b->nfree]);
    submitted += k;
    if (!virtq_publish(&b->vq))
      DIE("the device suppressed the kick while idle (%" PRIu64 " in flight): a driver "
          "following the ring would hang", submitted - done);
    if (b->split) {
      uint64_t t0 = now_ns();
      int rc = vstor_device_kick(b->dev, 0);
      b->kick_ns += now_ns() - t0;
      if (rc < 0) DIE("vstor_device_kick = %d: %s", rc, vstor_last_error());
    } else {
      int rc = vstor_device_kick(b->dev, 0);
      if (rc < 0) DIE("vstor_device_kick = %d: %s", rc, vstor_last_error());
    }
    b->kicks++;
    unsigned got = reap(b);
    if (got == 0) DIE("no completion after a kick (%" PRIu64 " in flight)", submitted - done);
    done += got;
  }
  b->completed += done;
}

/* Runs `total` requests and checks every one of them succeeded. */
static void run_checked(struct bench *b, uint64_t total) {
  uint64_t before = b->completed;
  uint8_t status;
  bench_loop(b, total);
  if (b->completed - before != total)
    DIE("%" PRIu64 " completions for %" PRIu64 " requests", b->completed - before, total);
  if (b->bad_status || b->bad_len)
    DIE("%" PRIu64 " requests with a status other than VIRTIO_BLK_S_OK, %" PRIu64
        " with a used length other than %u", b->bad_status, b->bad_len, b->expect_len);
  if (virtq_more_used(&b->vq) || virtq_pending(&b->vq) != 0)
    DIE("used ring not drained: extra completions");
  if (b->vq.num_free != b->vq.size) DIE("%u descriptors leaked", b->vq.size - b->vq.num_free);
  CHECK(vstor_device_status(b->dev, &status));
  if (status & VIRTQ_STATUS_NEEDS_RESET) DIE("device set DEVICE_NEEDS_RESET");
}

static uint64_t parse_count(const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (*end == 'k' || *end == 'K') v *= 1e3, end++;
  else if (*end == 'm' || *end == 'M') v *= 1e6, end++;
  if (*end || v < 1) DIE("bad count '%s'", s);
  return (uint64_t)v;
}

static void usage(void) {
  fprintf(stderr,
          "usage: capi_bench [--op read|write] [--qd N] [--batch N] [--requests N] [--runs N]\n"
          "                  [--warmup N] [--inject-error]\n"
          "                  [--queue-size N] [--no-event-idx] [--indirect] [--split] [--quiet]\n");
  exit(2);
}

int main(int argc, char **argv) {
  static struct bench b;
  const char *op = "read";
  unsigned queue_size = 256, runs = 5, i;
  uint64_t requests = 2000000, warmup = 20000, features, want, capacity;
  int event_idx = 1, quiet = 0;
  vstor_blockdev *bdev;

  for (i = 1; i < (unsigned)argc; i++) {
    const char *a = argv[i], *v = i + 1 < (unsigned)argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--op") && v) op = v, i++;
    else if ((!strcmp(a, "--qd") || !strcmp(a, "--batch")) && v) b.qd = (unsigned)parse_count(v), i++;
    else if (!strcmp(a, "--requests") && v) requests = parse_count(v), i++;
    else if (!strcmp(a, "--runs") && v) runs = (unsigned)parse_count(v), i++;
    else if (!strcmp(a, "--warmup") && v) warmup = strcmp(v, "0") ? parse_count(v) : 0, i++;
    else if (!strcmp(a, "--queue-size") && v) queue_size = (unsigned)parse_count(v), i++;
    else if (!strcmp(a, "--no-event-idx")) event_idx = 0;
    else if (!strcmp(a, "--indirect")) b.indirect = 1;
    else if (!strcmp(a, "--split")) b.split = 1;
    else if (!strcmp(a, "--inject-error")) b.inject = 1;
    else if (!strcmp(a, "--quiet")) quiet = 1;
    else usage();
  }
  if (!b.qd) b.qd = 32;
  if (strcmp(op, "read") && strcmp(op, "write")) usage();
  b.type = !strcmp(op, "read") ? VBLK_T_IN : VBLK_T_OUT;
  /* Used length: bytes the device wrote, status byte included (§2.7.8). */
  b.expect_len = b.type == VBLK_T_IN ? DATA_LEN + 1 : 1;
  if (queue_size < 2 || queue_size > MAX_QUEUE || (queue_size & (queue_size - 1)))
    DIE("--queue-size must be a power of two in 2..%u", MAX_QUEUE);
  if (b.qd * (b.indirect ? 1u : 3u) > queue_size)
    DIE("--qd %u needs %u descriptors; the queue has %u", b.qd, b.qd * (b.indirect ? 1 : 3),
        queue_size);

  /* Guest RAM: the hypervisor's own mapping, populated so the timing sees no page faults. */
  b.ram_len = DATA_OFF + (size_t)DATA_LEN * b.qd;
  b.ram = mmap(NULL, b.ram_len, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (b.ram == MAP_FAILED) DIE("mmap: %s", strerror(errno));
  memset(b.ram, 0, b.ram_len);

  /* null:1G, default options: reads do not touch the buffers (no data copy). */
  CHECK(vstor_blockdev_open("null:1G", NULL, &bdev));
  struct vstor_blk_config cfg = { .size = sizeof cfg, .num_queues = 1,
                                  .queue_size = (uint16_t)queue_size };
  CHECK(vstor_blk_new(bdev, &cfg, &b.dev));
  CHECK(vstor_blockdev_close(bdev));
  CHECK(vstor_device_add_memory(b.dev, RAM_GPA, b.ram_len, b.ram));
  CHECK(vstor_device_set_irq_callback(b.dev, on_irq, &b));

  /* Linux's virtio_dev_probe / virtblk_probe order. */
  CHECK(vstor_device_reset(b.dev));
  CHECK(vstor_device_set_status(b.dev, VIRTQ_STATUS_ACKNOWLEDGE));
  CHECK(vstor_device_set_status(b.dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER));
  CHECK(vstor_device_features(b.dev, &features));
  want = 1ull << VIRTQ_F_VERSION_1 | 1ull << VBLK_F_SIZE_MAX | 1ull << VBLK_F_SEG_MAX |
         1ull << VBLK_F_GEOMETRY | 1ull << VBLK_F_RO | 1ull << VBLK_F_BLK_SIZE |
         1ull << VBLK_F_FLUSH | 1ull << VBLK_F_TOPOLOGY | 1ull << VBLK_F_CONFIG_WCE |
         1ull << VBLK_F_MQ | 1ull << VBLK_F_DISCARD | 1ull << VBLK_F_WRITE_ZEROES |
         1ull << VBLK_F_SECURE_ERASE;
  if (event_idx) want |= 1ull << VIRTQ_F_EVENT_IDX;
  if (b.indirect) want |= 1ull << VIRTQ_F_INDIRECT_DESC;
  features &= want;
  if (!(features & 1ull << VIRTQ_F_VERSION_1)) DIE("device does not offer VERSION_1");
  if (b.indirect && !(features & 1ull << VIRTQ_F_INDIRECT_DESC))
    DIE("device does not offer INDIRECT_DESC");
  if (features & 1ull << VBLK_F_RO) DIE("device is read-only");
  CHECK(vstor_device_set_driver_features(b.dev, features));
  CHECK(vstor_device_set_status(b.dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER |
                                           VIRTQ_STATUS_FEATURES_OK));
  uint8_t status;
  CHECK(vstor_device_status(b.dev, &status));
  if (!(status & VIRTQ_STATUS_FEATURES_OK)) DIE("FEATURES_OK not accepted");
  CHECK(vstor_device_config_read(b.dev, VBLK_CFG_CAPACITY, &capacity, sizeof capacity));
  b.nblocks = capacity / (DATA_LEN / VBLK_SECTOR_SIZE);
  if (b.nblocks == 0) DIE("capacity %" PRIu64 " sectors", capacity);

  if (RING_OFF + virtq_ring_bytes(queue_size) > SLOT_OFF) DIE("ring too large");
  if (virtq_init(&b.vq, b.ram, RAM_GPA, RING_OFF, queue_size) != 0) DIE("virtq_init");
  virtq_set_event_idx(&b.vq, !!(features & 1ull << VIRTQ_F_EVENT_IDX));
  struct vstor_queue_config q = { .size = sizeof q, .queue_size = (uint16_t)queue_size,
                                  .enabled = 1, .desc_addr = virtq_desc_gpa(&b.vq),
                                  .avail_addr = virtq_avail_gpa(&b.vq),
                                  .used_addr = virtq_used_gpa(&b.vq) };
  CHECK(vstor_device_queue_setup(b.dev, 0, &q));
  CHECK(vstor_device_set_status(b.dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER |
                                           VIRTQ_STATUS_FEATURES_OK | VIRTQ_STATUS_DRIVER_OK));
  virtq_enable_cb(&b.vq);

  for (i = 0; i < b.qd; i++) b.free_slots[b.nfree++] = (uint16_t)(b.qd - 1 - i);
  b.rng = 0x9e3779b97f4a7c15ull;

  /* Warm-up: first calls resolve PLT entries, grow scratch vectors, fault in the heap. */
  if (warmup) run_checked(&b, warmup);

  /* Plain runs (nothing but the loop is timed) interleaved with --split runs (each kick timed
   * too), so both see the same machine load. */
  int split = b.split;
  double best = 0, best_kick = 0, cal = 0;
  uint64_t kicks = 0, irqs = 0;
  if (split) { /* what timing an empty interval costs, subtracted once per timed kick */
    uint64_t sum = 0;
    for (i = 0; i < 100000; i++) {
      uint64_t t0 = now_ns();
      sum += now_ns() - t0;
    }
    cal = (double)sum / 100000.0;
  }
  for (i = 0; i < runs; i++) {
    uint64_t k0 = b.kicks, q0 = b.irqs;
    b.split = 0;
    uint64_t t0 = now_ns();
    run_checked(&b, requests);
    double ns = (double)(now_ns() - t0) / (double)requests;
    kicks += b.kicks - k0;
    irqs += b.irqs - q0;
    if (i == 0 || ns < best) best = ns;
    if (!quiet)
      printf("run %u: %" PRIu64 " %s requests, qd %u: %.1f ns/req, %.0f req/s\n", i + 1,
             requests, op, b.qd, ns, 1e9 / ns);
    if (!split) continue;
    uint64_t kns0 = b.kick_ns;
    k0 = b.kicks;
    b.split = 1;
    run_checked(&b, requests);
    double kick = ((double)(b.kick_ns - kns0) - cal * (double)(b.kicks - k0)) / (double)requests;
    if (i == 0 || kick < best_kick) best_kick = kick;
    if (!quiet)
      printf("run %u: %.1f ns/req inside vstor_device_kick (%.1f ns timer cost per kick "
             "subtracted)\n", i + 1, kick, cal);
  }
  printf("RESULT op=%s qd=%u queue_size=%u event_idx=%d indirect=%d requests=%" PRIu64
         " runs=%u ns_per_req=%.1f req_per_s=%.0f kicks=%" PRIu64 " irqs=%" PRIu64,
         op, b.qd, queue_size, !!(features & 1ull << VIRTQ_F_EVENT_IDX), b.indirect, requests,
         runs, best, 1e9 / best, kicks, irqs);
  if (split) printf(" kick_ns_per_req=%.1f timer_ns=%.1f", best_kick, cal);
  printf(" total_requests=%" PRIu64 " failed=0\n", b.completed);

  CHECK(vstor_device_free(b.dev));
  munmap(b.ram, b.ram_len);
  return 0;
}
