/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * blk_harness.c - a minimal "hypervisor" in C driving a libvstor virtio-blk device the way the
 * Linux virtio_blk driver would, over a raw (or qcow2) image file.
 *
 *   blk_harness [--format raw|qcow2|probe] IMAGE | memory:SIZE
 *
 * IMAGE is an existing raw image (4..64 MiB, a multiple of 64 KiB; e.g. made with
 * `truncate -s 4M`). Its contents are overwritten, and compared at the end with what the
 * harness wrote (pread from C). With --format qcow2 (or probe: vstor and qemu-img find the
 * format themselves) IMAGE is opened in that format instead, e.g. a qcow2 image made with
 * `qemu-img create -f qcow2 IMAGE 8M`, with or without a backing file; its guest-visible
 * contents are then read, before and after, through `qemu-img convert -O raw` (which must be
 * on PATH) into a temporary raw file. With memory:SIZE (e.g. memory:8M) every request completes
 * synchronously inside vstor_device_kick; with a file it completes asynchronously (io_uring,
 * or threads with VSTOR_DISABLE_IO_URING=1) and the harness polls the completion fd and calls
 * vstor_device_process. Guest RAM is two separate mmap()s that are
 * contiguous in guest physical address space, so a buffer may straddle them.
 *
 * Phases:
 *  A  callback interrupts, vstor_device_kick, and (for asynchronous engines) the completion fd
 *     polled + vstor_device_process; EVENT_IDX + INDIRECT_DESC negotiated. Writes, reads,
 *     several descriptor layouts, FLUSH, DISCARD, WRITE_ZEROES, GET_ID, out-of-range requests,
 *     an unknown request type, the writeback config field.
 *  B  save (two-call protocol) on the live device, free it, publish requests while no device
 *     exists, create a new device, restore, and continue the same virtqueue in completion-fd
 *     mode with an ioeventfd (vstor_device_set_kick_fd) and an irqfd
 *     (vstor_device_set_queue_irqfd); then routes removed, back to the callback.
 *  C  worker threads (VSTOR_DEVICE_WORKER_THREADS), two queues (MQ), no EVENT_IDX: queue 0 kicked
 *     with vstor_device_kick, queue 1 through an ioeventfd; interrupts counted by the callback
 *     on the worker threads (C11 atomics + a condition variable).
 * Finally the image file is compared with the expected contents (pread), the devices are reset
 * and freed, and a summary line printed. Exit status 0 only if every check passed.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "vstor.h"
#include "virtio_blk.h"
#include "virtq.h"

/* ------------------------------------------------------------------------------------------ */
/* Failure reporting                                                                          */

#define CHECK(call)                                                                          \
  do {                                                                                       \
    int rc_ = (call);                                                                        \
    if (rc_ < 0) {                                                                           \
      fprintf(stderr, "blk_harness: %s:%d: %s returned %d (%s): %s\n", __FILE__, __LINE__,   \
              #call, rc_, strerror(-rc_), vstor_last_error());                               \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

#define EXPECT(cond, ...)                                                                    \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "blk_harness: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);  \
      fprintf(stderr, __VA_ARGS__);                                                          \
      fprintf(stderr, " (vstor_last_error: \"%s\")\n", vstor_last_error());                  \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Guest RAM: two regions, contiguous in guest physical space, separate host mappings          */

#define RAM_A_GPA 0x100000ull
#define RAM_A_LEN (8ull << 20)
#define RAM_B_GPA (RAM_A_GPA + RAM_A_LEN)
#define RAM_B_LEN (8ull << 20)

#define RING_AREA 0x0ull        /* region A offsets: rings, 16 KiB per queue */
#define RING_STRIDE 0x4000ull
#define SLOT_AREA 0x10000ull    /* per-queue request slots, 64 KiB per queue */
#define SLOT_STRIDE 0x10000ull
#define SLOT_BYTES 256u         /* header @0, status @16, indirect table @64 (12 entries) */
#define DATA_A 0x40000ull       /* data area in region A (queue 1 in phase C) */

static uint8_t *ram_a, *ram_b;

static uint8_t *gpa_ptr(uint64_t gpa, uint64_t len) {
  if (gpa >= RAM_A_GPA && gpa + len <= RAM_A_GPA + RAM_A_LEN) return ram_a + (gpa - RAM_A_GPA);
  if (gpa >= RAM_B_GPA && gpa + len <= RAM_B_GPA + RAM_B_LEN) return ram_b + (gpa - RAM_B_GPA);
  return NULL;
}

/* Copies in or out of guest memory, a byte range that may straddle the two regions. */
static void gmem_copy(uint64_t gpa, void *host, uint64_t len, bool to_guest) {
  uint8_t *h = (uint8_t *)host;
  while (len) {
    uint64_t chunk = len;
    uint8_t *p;
    if (gpa < RAM_B_GPA && gpa + chunk > RAM_B_GPA) chunk = RAM_B_GPA - gpa;
    p = gpa_ptr(gpa, chunk);
    EXPECT(p != NULL, "guest address %#" PRIx64 " len %" PRIu64 " not in RAM", gpa, chunk);
    if (to_guest)
      memcpy(p, h, chunk);
    else
      memcpy(h, p, chunk);
    gpa += chunk;
    h += chunk;
    len -= chunk;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Interrupts                                                                                 */

#define MAX_Q 2

struct irqs {
  atomic_uint queue[MAX_Q];
  atomic_uint config;
  atomic_uint other;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static struct irqs irq_state = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* May run on a vstor worker thread: count with release ordering (the used ring entries the
 * interrupt announces were written before it), then wake the waiter. No vstor calls here. */
static void irq_callback(void *opaque, uint32_t queue) {
  struct irqs *s = (struct irqs *)opaque;
  if (queue == VSTOR_IRQ_CONFIG)
    atomic_fetch_add_explicit(&s->config, 1, memory_order_release);
  else if (queue < MAX_Q)
    atomic_fetch_add_explicit(&s->queue[queue], 1, memory_order_release);
  else
    atomic_fetch_add_explicit(&s->other, 1, memory_order_release);
  pthread_mutex_lock(&s->mu);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Waits up to `ms` for queue q's interrupt count to move past `snap`. */
static void wait_irq(unsigned q, unsigned snap, int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += (long)ms * 1000000L;
  ts.tv_sec += ts.tv_nsec / 1000000000L;
  ts.tv_nsec %= 1000000000L;
  pthread_mutex_lock(&irq_state.mu);
  while (atomic_load_explicit(&irq_state.queue[q], memory_order_acquire) == snap) {
    if (pthread_cond_timedwait(&irq_state.cv, &irq_state.mu, &ts) == ETIMEDOUT) break;
  }
  pthread_mutex_unlock(&irq_state.mu);
}

/* ------------------------------------------------------------------------------------------ */
/* Driver state                                                                               */

enum mode {
  MODE_KICK,   /* vstor_device_kick + completion fd / vstor_device_process, irq callback */
  MODE_FD,     /* ioeventfd kicks + completion fd / vstor_device_process, irqfd */
  MODE_WORKER, /* worker threads; kicks by vstor_device_kick or ioeventfd; irq callback */
};

enum layout {
  L_SIMPLE,   /* [hdr][data][status] */
  L_SPLIT,    /* [hdr 8][hdr 8][data, unevenly split][status] */
  L_MERGED,   /* OUT: [hdr+data][status]; IN: [hdr][data+status] */
  L_INDIRECT, /* L_SIMPLE through an indirect table */
  L_COUNT
};

#define MAX_BATCH 32

struct req {
  uint32_t type;
  uint64_t sector;
  uint32_t len;      /* data bytes (segments for DISCARD / WRITE_ZEROES) */
  int layout;
  uint8_t expect;    /* expected status */
  uint64_t hdr_gpa, data_gpa, st_gpa;
  uint16_t head;
  bool done;
  uint8_t status;
  uint32_t used_len;
};

struct queue {
  struct virtq vq;
  uint16_t index;
  uint64_t slot_base; /* gpa of this queue's slots */
  uint64_t data_base, data_end, data_next;
  int head_map[VIRTQ_MAX_SIZE > 1024 ? 1024 : VIRTQ_MAX_SIZE];
  struct req reqs[MAX_BATCH];
  unsigned nreq;
  int kick_efd; /* ioeventfd for this queue, or -1 */
};

struct drv {
  vstor_device *dev;
  enum mode mode;
  uint64_t features;
  uint64_t capacity; /* sectors */
  uint32_t blk_size;
  uint16_t nq;
  struct queue q[MAX_Q];
  int irq_efd;       /* irqfd of queue 0 in MODE_FD, or -1 */
  unsigned long irqfd_count, process_events, kicks, kicks_suppressed;
};

/* Expected disk contents and statistics. */
static uint8_t *shadow;
static uint64_t disk_bytes;
static bool discard_zeroes;
static bool is_file; /* an image file (else memory:SIZE) */
static bool via_convert; /* a non-raw image file: contents read through qemu-img convert */
static unsigned long n_requests, n_bytes_written, n_bytes_read;
static unsigned generation = 1;

static uint8_t pattern_byte(uint64_t off, unsigned gen) {
  uint64_t x = off * 0x9E3779B97F4A7C15ull + gen * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (uint8_t)(x ^ (x >> 17));
}

static bool has(const struct drv *d, int bit) { return (d->features >> bit) & 1u; }

/* ------------------------------------------------------------------------------------------ */
/* Device bring-up as Linux does it (virtio_dev_probe, virtblk_probe, vp_modern setup_vq)     */

static void driver_init(struct drv *d, uint16_t nq, const uint16_t *qsizes, uint64_t want) {
  uint8_t status;
  uint64_t offered;
  uint32_t gen0, gen1;
  struct vstor_device_info info;
  uint16_t q;

  /* virtio_dev_probe: reset, ACKNOWLEDGE, DRIVER. */
  CHECK(vstor_device_set_status(d->dev, 0));
  CHECK(vstor_device_set_status(d->dev, VIRTQ_STATUS_ACKNOWLEDGE));
  CHECK(vstor_device_set_status(d->dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER));
  CHECK(vstor_device_features(d->dev, &offered));
  EXPECT(offered & (1ull << VIRTQ_F_VERSION_1), "VERSION_1 not offered (%#" PRIx64 ")", offered);
  d->features = offered & want;
  CHECK(vstor_device_set_driver_features(d->dev, d->features));
  CHECK(vstor_device_set_status(
      d->dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER | VIRTQ_STATUS_FEATURES_OK));
  /* virtio_features_ok: re-read status, FEATURES_OK must have stuck. */
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status & VIRTQ_STATUS_FEATURES_OK, "FEATURES_OK did not stick (status %#x)", status);

  info.size = sizeof(info);
  CHECK(vstor_device_get_info(d->dev, &info));
  EXPECT(info.device_type == 2 && info.num_queues == nq && info.config_len >= 60,
         "device info: type %u queues %u config_len %u", info.device_type, info.num_queues,
         info.config_len);

  /* virtio_cread64 (capacity): read under a stable configuration generation. */
  do {
    CHECK(vstor_device_config_generation(d->dev, &gen0));
    CHECK(vstor_device_config_read(d->dev, VBLK_CFG_CAPACITY, &d->capacity, 8));
    CHECK(vstor_device_config_generation(d->dev, &gen1));
  } while (gen0 != gen1);
  d->capacity = virtq_le64(d->capacity);
  EXPECT(d->capacity * 512 == disk_bytes, "capacity %" PRIu64 " sectors, image %" PRIu64 " bytes",
         d->capacity, disk_bytes);
  d->blk_size = 512;
  if (has(d, VBLK_F_BLK_SIZE)) {
    CHECK(vstor_device_config_read(d->dev, VBLK_CFG_BLK_SIZE, &d->blk_size, 4));
    d->blk_size = virtq_le32(d->blk_size);
    EXPECT(d->blk_size >= 512 && (d->blk_size & (d->blk_size - 1)) == 0, "blk_size %u",
           d->blk_size);
  }
  if (has(d, VBLK_F_MQ)) {
    uint16_t n;
    CHECK(vstor_device_config_read(d->dev, VBLK_CFG_NUM_QUEUES, &n, 2));
    EXPECT(virtq_le16(n) == nq, "config num_queues %u, expected %u", virtq_le16(n), nq);
  } else {
    EXPECT(nq == 1, "MQ not negotiated but %u queues", nq);
  }
  d->nq = nq;

  /* setup_vq for each queue: size, addresses, enable. */
  for (q = 0; q < nq; q++) {
    struct queue *Q = &d->q[q];
    struct vstor_queue_config qc, back;
    uint16_t size = qsizes[q] ? qsizes[q] : info.max_queue_size;
    EXPECT(size <= info.max_queue_size && size <= 1024, "queue size %u", size);
    EXPECT(virtq_init(&Q->vq, ram_a, RAM_A_GPA, RING_AREA + q * RING_STRIDE, size) == 0,
           "virtq_init");
    EXPECT(virtq_ring_bytes(size) <= RING_STRIDE, "ring too large");
    virtq_set_event_idx(&Q->vq, has(d, VIRTQ_F_EVENT_IDX));
    Q->index = q;
    Q->slot_base = RAM_A_GPA + SLOT_AREA + q * SLOT_STRIDE;
    /* queue 0 allocates data in region B (and across the A/B boundary), queue 1 in A */
    if (q == 0) {
      Q->data_base = RAM_B_GPA - 0x20000;
      Q->data_end = RAM_B_GPA + RAM_B_LEN;
    } else {
      Q->data_base = RAM_A_GPA + DATA_A;
      Q->data_end = RAM_B_GPA - 0x40000;
    }
    Q->kick_efd = -1;
    memset(&qc, 0, sizeof(qc));
    qc.size = sizeof(qc);
    qc.queue_size = size;
    qc.desc_addr = virtq_desc_gpa(&Q->vq);
    qc.avail_addr = virtq_avail_gpa(&Q->vq);
    qc.used_addr = virtq_used_gpa(&Q->vq);
    qc.enabled = 1;
    CHECK(vstor_device_queue_setup(d->dev, q, &qc));
    memset(&back, 0, sizeof(back));
    back.size = sizeof(back);
    CHECK(vstor_device_queue_get(d->dev, q, &back));
    EXPECT(back.queue_size == size && back.enabled == 1 && back.desc_addr == qc.desc_addr &&
               back.avail_addr == qc.avail_addr && back.used_addr == qc.used_addr,
           "queue_get does not return what queue_setup set");
  }
  CHECK(vstor_device_set_status(d->dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER |
                                            VIRTQ_STATUS_FEATURES_OK | VIRTQ_STATUS_DRIVER_OK));
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status == 0x0f, "status after DRIVER_OK is %#x", status);
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                   */

static uint64_t data_alloc(struct queue *Q, uint32_t len) {
  uint64_t gpa = virtq_align_up(Q->data_next + 64, 4096);
  EXPECT(gpa + len + 64 <= Q->data_end, "out of data space");
  Q->data_next = gpa + len + 64;
  return gpa;
}

static void batch_begin(struct queue *Q) {
  Q->nreq = 0;
  Q->data_next = Q->data_base;
}

/* Queues a request for the next batch_run. For OUT the data is generated here and the shadow
 * updated; for IN the buffer is poisoned and later compared with the shadow. */
static struct req *breq(struct drv *d, struct queue *Q, uint32_t type, uint64_t sector,
                        uint32_t len, int layout, uint8_t expect) {
  struct req *r;
  uint64_t slot;
  EXPECT(Q->nreq < MAX_BATCH, "batch full");
  if (layout == L_INDIRECT && !has(d, VIRTQ_F_INDIRECT_DESC)) layout = L_SIMPLE;
  r = &Q->reqs[Q->nreq];
  slot = Q->slot_base + (uint64_t)Q->nreq * SLOT_BYTES;
  Q->nreq++;
  memset(r, 0, sizeof(*r));
  r->type = type;
  r->sector = sector;
  r->len = len;
  r->layout = layout;
  r->expect = expect;
  r->hdr_gpa = slot;
  r->st_gpa = slot + 16;
  r->data_gpa = len ? data_alloc(Q, len) : 0;
  if (layout == L_MERGED && len) {
    if (vblk_data_is_in(type))
      r->st_gpa = r->data_gpa + len; /* status shares the data descriptor */
    else
      r->hdr_gpa = r->data_gpa - 16; /* header shares the data descriptor */
  }
  if (len && type == VBLK_T_OUT) {
    uint8_t *buf = (uint8_t *)malloc(len);
    uint64_t off = sector * 512, i;
    EXPECT(buf != NULL, "malloc");
    for (i = 0; i < len; i++) buf[i] = pattern_byte(off + i, generation);
    gmem_copy(r->data_gpa, buf, len, true);
    if (expect == VBLK_S_OK) {
      EXPECT(off + len <= disk_bytes, "OK write past the disk");
      memcpy(shadow + off, buf, len);
    }
    free(buf);
  } else if (len && vblk_data_is_in(type)) {
    uint8_t *buf = (uint8_t *)malloc(len);
    EXPECT(buf != NULL, "malloc");
    memset(buf, 0xA5, len);
    gmem_copy(r->data_gpa, buf, len, true);
    free(buf);
  }
  return r;
}

/* A DISCARD or WRITE_ZEROES request of `n` segments (sector, count, flags). */
static struct req *breq_ranges(struct drv *d, struct queue *Q, uint32_t type, unsigned n,
                               const uint64_t *sectors, const uint32_t *counts, uint32_t flags,
                               int layout, uint8_t expect) {
  struct req *r = breq(d, Q, type, 0, n * 16u, layout, expect);
  unsigned i;
  for (i = 0; i < n; i++) {
    struct vblk_dwz_seg s;
    vblk_write_seg(&s, sectors[i], counts[i], flags);
    gmem_copy(r->data_gpa + 16ull * i, &s, 16, true);
    if (expect == VBLK_S_OK && (type == VBLK_T_WRITE_ZEROES || discard_zeroes))
      memset(shadow + sectors[i] * 512, 0, (size_t)counts[i] * 512);
  }
  return r;
}

static unsigned build_sg(struct req *r, struct virtq_sg *sg, unsigned *n_out, unsigned *n_in) {
  bool in = vblk_data_is_in(r->type);
  unsigned n = 0, out;
  switch (r->layout) {
  case L_SPLIT: {
    uint32_t left = r->len, first = r->len > 1000 ? 1000 : r->len;
    uint64_t at = r->data_gpa;
    sg[n].gpa = r->hdr_gpa;
    sg[n++].len = 8;
    sg[n].gpa = r->hdr_gpa + 8;
    sg[n++].len = 8;
    while (left) {
      uint32_t c = (at == r->data_gpa) ? first : (left > 4096 ? 4096 : left);
      sg[n].gpa = at;
      sg[n++].len = c;
      at += c;
      left -= c;
    }
    out = in ? 2 : n;
    sg[n].gpa = r->st_gpa;
    sg[n++].len = 1;
    *n_out = out;
    *n_in = n - out;
    return n;
  }
  case L_MERGED:
    if (r->len && !in) {
      sg[0].gpa = r->hdr_gpa;
      sg[0].len = 16 + r->len;
      sg[1].gpa = r->st_gpa;
      sg[1].len = 1;
      *n_out = 1;
      *n_in = 1;
      return 2;
    }
    if (r->len && in) {
      sg[0].gpa = r->hdr_gpa;
      sg[0].len = 16;
      sg[1].gpa = r->data_gpa;
      sg[1].len = r->len + 1;
      *n_out = 1;
      *n_in = 1;
      return 2;
    }
    return vblk_sg(sg, r->type, r->hdr_gpa, r->data_gpa, r->len, r->st_gpa, n_out, n_in);
  default:
    return vblk_sg(sg, r->type, r->hdr_gpa, r->data_gpa, r->len, r->st_gpa, n_out, n_in);
  }
}

/* Adds every request of the batch to the ring and publishes them (without notifying). Returns
 * whether the device asked for a notification. */
static bool batch_add(struct queue *Q) {
  unsigned i;
  for (i = 0; i < Q->nreq; i++) {
    struct req *r = &Q->reqs[i];
    struct virtq_sg sg[24];
    unsigned n_out, n_in;
    uint8_t poison = 0xEE;
    int rc;
    vblk_write_outhdr(gpa_ptr(r->hdr_gpa, 16), r->type, r->sector);
    gmem_copy(r->st_gpa, &poison, 1, true);
    build_sg(r, sg, &n_out, &n_in);
    if (r->layout == L_INDIRECT) {
      uint64_t table = r->hdr_gpa + 64;
      rc = virtq_add_indirect(&Q->vq, sg, n_out, n_in, gpa_ptr(table, 16u * (n_out + n_in)),
                              table, &r->head);
    } else {
      rc = virtq_add(&Q->vq, sg, n_out, n_in, &r->head);
    }
    EXPECT(rc == 0, "virtq_add: %d", rc);
    Q->head_map[r->head] = (int)i;
  }
  return virtq_publish(&Q->vq) != 0;
}

static void notify(struct drv *d, struct queue *Q, bool needed) {
  if (!needed) {
    d->kicks_suppressed++;
    return;
  }
  d->kicks++;
  if (Q->kick_efd >= 0) {
    uint64_t one = 1;
    EXPECT(write(Q->kick_efd, &one, 8) == 8, "ioeventfd write: %s", strerror(errno));
  } else {
    CHECK(vstor_device_kick(d->dev, Q->index));
  }
}

/* Consumes used entries of Q; returns how many requests are still outstanding. */
static unsigned reap(struct queue *Q, unsigned *left) {
  uint16_t head;
  uint32_t len;
  int rc;
  while ((rc = virtq_get_used(&Q->vq, &head, &len)) == 1) {
    struct req *r;
    EXPECT(head < Q->vq.size && Q->head_map[head] >= 0, "used id %u not in flight", head);
    r = &Q->reqs[Q->head_map[head]];
    Q->head_map[head] = -1;
    EXPECT(!r->done, "request completed twice");
    r->done = true;
    r->used_len = len;
    gmem_copy(r->st_gpa, &r->status, 1, false);
    (*left)--;
  }
  EXPECT(rc == 0, "virtq_get_used: %d (corrupt used ring)", rc);
  return *left;
}

/* Waits until every outstanding request of the queues in `qs` is used. */
static void wait_queues(struct drv *d, struct queue **qs, unsigned nqs, unsigned *left) {
  int fd = vstor_device_completion_fd(d->dev);
  struct timespec t0, t;
  unsigned total, i;
  CHECK(fd);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    total = 0;
    for (i = 0; i < nqs; i++) total += reap(qs[i], &left[i]);
    if (total == 0) break;
    clock_gettime(CLOCK_MONOTONIC, &t);
    EXPECT(t.tv_sec - t0.tv_sec < 30, "timeout: %u requests never completed", total);
    if (d->mode == MODE_WORKER) {
      /* Interrupt-driven: snapshot the count, re-check the ring (used_event was published by
       * virtq_get_used with a full barrier), then sleep until the count moves. */
      for (i = 0; i < nqs; i++) {
        unsigned snap;
        if (!left[i]) continue;
        snap = atomic_load_explicit(&irq_state.queue[qs[i]->index], memory_order_acquire);
        if (virtq_more_used(&qs[i]->vq)) continue;
        wait_irq(qs[i]->index, snap, 100);
      }
    } else {
      struct pollfd p[2];
      int n = 1;
      p[0].fd = fd;
      p[0].events = POLLIN;
      p[0].revents = 0;
      if (d->irq_efd >= 0) {
        p[1].fd = d->irq_efd;
        p[1].events = POLLIN;
        p[1].revents = 0;
        n = 2;
      }
      EXPECT(poll(p, (nfds_t)n, 100) >= 0, "poll: %s", strerror(errno));
      if (p[0].revents & POLLIN) {
        int rc = vstor_device_process(d->dev);
        CHECK(rc);
        d->process_events += (unsigned)rc;
      }
      if (n == 2 && (p[1].revents & POLLIN)) {
        uint64_t v;
        EXPECT(read(d->irq_efd, &v, 8) == 8, "irqfd read");
        d->irqfd_count += v;
      }
    }
  }
  /* Drain a pending irqfd signal so counts are complete. */
  if (d->irq_efd >= 0) {
    uint64_t v;
    struct pollfd p = {.fd = d->irq_efd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 0) == 1 && read(d->irq_efd, &v, 8) == 8) d->irqfd_count += v;
  }
}

/* Checks the results of a finished batch: status, used length, data read. */
static void batch_check(struct queue *Q) {
  unsigned i;
  for (i = 0; i < Q->nreq; i++) {
    struct req *r = &Q->reqs[i];
    uint32_t want_len = 1;
    EXPECT(r->done, "request %u not done", i);
    EXPECT(r->status == r->expect, "queue %u request %u (type %u sector %" PRIu64 " len %u "
           "layout %d): status %u, expected %u", Q->index, i, r->type, r->sector, r->len,
           r->layout, r->status, r->expect);
    n_requests++;
    if (r->status == VBLK_S_OK && r->type == VBLK_T_IN) want_len = r->len + 1;
    if (r->status == VBLK_S_OK && r->type == VBLK_T_GET_ID)
      want_len = (r->len < VBLK_ID_BYTES ? r->len : VBLK_ID_BYTES) + 1;
    EXPECT(r->used_len == want_len, "request %u (type %u): used len %u, expected %u", i, r->type,
           r->used_len, want_len);
    if (r->status == VBLK_S_OK && r->type == VBLK_T_IN) {
      uint8_t *buf = (uint8_t *)malloc(r->len);
      uint64_t off = r->sector * 512, k;
      EXPECT(buf != NULL, "malloc");
      gmem_copy(r->data_gpa, buf, r->len, false);
      for (k = 0; k < r->len; k++) {
        if (buf[k] != shadow[off + k]) {
          EXPECT(0, "read sector %" PRIu64 " len %u: byte %" PRIu64 " is %#x, expected %#x",
                 r->sector, r->len, k, buf[k], shadow[off + k]);
        }
      }
      free(buf);
      n_bytes_read += r->len;
    }
    if (r->status == VBLK_S_OK && r->type == VBLK_T_OUT) n_bytes_written += r->len;
  }
}

/* Runs the batches prepared on the queues in `qs`: add, publish, notify, wait, check. */
static void run_queues(struct drv *d, struct queue **qs, unsigned nqs) {
  unsigned left[MAX_Q], i;
  uint8_t status;
  for (i = 0; i < nqs; i++) {
    left[i] = qs[i]->nreq;
    notify(d, qs[i], batch_add(qs[i]));
  }
  wait_queues(d, qs, nqs, left);
  for (i = 0; i < nqs; i++) batch_check(qs[i]);
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status == 0x0f, "device status %#x after a batch (NEEDS_RESET?)", status);
  generation++;
}

static void run(struct drv *d, struct queue *Q) {
  struct queue *qs[1];
  qs[0] = Q;
  run_queues(d, qs, 1);
}

/* Reads the whole disk back through the device in 64 KiB requests and compares. */
static void verify_through_device(struct drv *d, struct queue *Q) {
  uint64_t sec = 0, per = 65536 / 512;
  while (sec < d->capacity) {
    unsigned k;
    batch_begin(Q);
    for (k = 0; k < 8 && sec < d->capacity; k++, sec += per)
      breq(d, Q, VBLK_T_IN, sec, (uint32_t)(per * 512), (int)(k % L_COUNT), VBLK_S_OK);
    run(d, Q);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Phases                                                                                     */

static const uint64_t WANT_COMMON = (1ull << VIRTQ_F_VERSION_1) | (1ull << VIRTQ_F_INDIRECT_DESC) |
                                    (1ull << VBLK_F_SIZE_MAX) | (1ull << VBLK_F_SEG_MAX) |
                                    (1ull << VBLK_F_GEOMETRY) | (1ull << VBLK_F_BLK_SIZE) |
                                    (1ull << VBLK_F_FLUSH) | (1ull << VBLK_F_TOPOLOGY) |
                                    (1ull << VBLK_F_CONFIG_WCE) | (1ull << VBLK_F_MQ) |
                                    (1ull << VBLK_F_DISCARD) | (1ull << VBLK_F_WRITE_ZEROES);

static const char SERIAL[] = "vstor-harness-0001";

static void new_device(struct drv *d, vstor_blockdev *bdev, uint32_t flags, uint16_t nq,
                       bool keep_queues) {
  struct vstor_blk_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.size = sizeof(cfg);
  cfg.flags = flags;
  cfg.num_queues = nq;
  cfg.serial = SERIAL;
  CHECK(vstor_blk_new(bdev, &cfg, &d->dev));
  CHECK(vstor_device_add_memory(d->dev, RAM_A_GPA, RAM_A_LEN, ram_a));
  CHECK(vstor_device_add_memory(d->dev, RAM_B_GPA, RAM_B_LEN, ram_b));
  CHECK(vstor_device_set_irq_callback(d->dev, irq_callback, &irq_state));
  d->irq_efd = -1;
  if (!keep_queues) {
    memset(d->q, 0, sizeof(d->q));
    memset(d->q[0].head_map, 0xff, sizeof(d->q[0].head_map));
    memset(d->q[1].head_map, 0xff, sizeof(d->q[1].head_map));
    d->q[0].kick_efd = d->q[1].kick_efd = -1;
  }
}

/* Counts this process's io_uring instances (to report which engine vstor picked). */
static int count_io_uring_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  if (!dir) return -1;
  while ((e = readdir(dir)) != NULL) {
    char path[300], target[256];
    ssize_t l;
    snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
    l = readlink(path, target, sizeof(target) - 1);
    if (l <= 0) continue;
    target[l] = 0;
    if (strstr(target, "io_uring")) n++;
  }
  closedir(dir);
  return n;
}

static void phase_a(struct drv *d) {
  struct queue *Q = &d->q[0];
  uint16_t sizes[1] = {0};
  unsigned i, lay;
  uint64_t cap;
  uint8_t wb;
  int uring;

  driver_init(d, 1, sizes, WANT_COMMON | (1ull << VIRTQ_F_EVENT_IDX));
  EXPECT(has(d, VIRTQ_F_EVENT_IDX) && has(d, VIRTQ_F_INDIRECT_DESC) && has(d, VBLK_F_FLUSH),
         "features %#" PRIx64, d->features);
  cap = d->capacity;
  uring = count_io_uring_fds();
  printf("blk_harness: phase A: features %#" PRIx64 ", capacity %" PRIu64 " sectors, blk_size "
         "%u, io_uring instances %d (engine: %s)\n", d->features, cap, d->blk_size, uring,
         uring > 0 ? "io_uring" : is_file ? "threads" : "none, synchronous");

  /* 1. Writes in every layout, 4 KiB .. 64 KiB, one straddling the two RAM regions. */
  batch_begin(Q);
  for (i = 0, lay = 0; i < 12; i++, lay++) {
    uint32_t len = 4096u << (i % 5); /* 4k..64k */
    breq(d, Q, VBLK_T_OUT, (uint64_t)i * 128, len, (int)(lay % L_COUNT), VBLK_S_OK);
  }
  run(d, Q);
  batch_begin(Q);
  for (i = 0; i < 12; i++) {
    uint32_t len = 4096u << (i % 5);
    breq(d, Q, VBLK_T_IN, (uint64_t)i * 128, len, (int)((i + 1) % L_COUNT), VBLK_S_OK);
  }
  run(d, Q);

  /* 2. A buffer that straddles the two memory regions (one descriptor, two host mappings). */
  batch_begin(Q);
  Q->data_next = RAM_B_GPA - 0x2000 - 0x1000 - 64; /* next data_alloc lands at B - 8 KiB */
  breq(d, Q, VBLK_T_OUT, 2048, 16384, L_SIMPLE, VBLK_S_OK);
  EXPECT(Q->reqs[0].data_gpa < RAM_B_GPA && Q->reqs[0].data_gpa + 16384 > RAM_B_GPA,
         "straddling buffer at %#" PRIx64, Q->reqs[0].data_gpa);
  run(d, Q);
  batch_begin(Q);
  Q->data_next = RAM_B_GPA - 0x2000 - 0x1000 - 64;
  breq(d, Q, VBLK_T_IN, 2048, 16384, L_SPLIT, VBLK_S_OK);
  run(d, Q);

  /* 3. FLUSH, GET_ID (serial), an unknown type, requests past the end. */
  batch_begin(Q);
  breq(d, Q, VBLK_T_FLUSH, 0, 0, L_SIMPLE, VBLK_S_OK);
  breq(d, Q, VBLK_T_GET_ID, 0, VBLK_ID_BYTES, L_SIMPLE, VBLK_S_OK);
  breq(d, Q, 0x7f, 0, 512, L_SIMPLE, VBLK_S_UNSUPP);
  breq(d, Q, VBLK_T_IN, cap, 4096, L_SIMPLE, VBLK_S_IOERR);        /* starts at the end */
  breq(d, Q, VBLK_T_IN, cap - 4, 4096, L_SPLIT, VBLK_S_IOERR);     /* crosses the end */
  breq(d, Q, VBLK_T_OUT, cap + 64, 4096, L_MERGED, VBLK_S_IOERR);   /* write past the end */
  breq(d, Q, VBLK_T_IN, ~0ull / 512, 512, L_SIMPLE, VBLK_S_IOERR); /* offset overflows */
  run(d, Q);
  {
    char id[VBLK_ID_BYTES + 1];
    memset(id, 0, sizeof(id));
    gmem_copy(Q->reqs[1].data_gpa, id, VBLK_ID_BYTES, false);
    EXPECT(strcmp(id, SERIAL) == 0, "GET_ID returned \"%s\", expected \"%s\"", id, SERIAL);
    EXPECT(memcmp(id + strlen(SERIAL), "\0\0", 2) == 0, "GET_ID not zero-padded");
  }

  /* 4. DISCARD (2 segments) and WRITE_ZEROES (plain and UNMAP), then read back. */
  if (has(d, VBLK_F_DISCARD)) {
    uint64_t s[2] = {0, 512};
    uint32_t c[2] = {128, 64};
    batch_begin(Q);
    breq_ranges(d, Q, VBLK_T_DISCARD, 2, s, c, 0, L_SIMPLE, VBLK_S_OK);
    run(d, Q);
    if (!discard_zeroes) { /* contents undefined: rewrite so the shadow is right again */
      batch_begin(Q);
      breq(d, Q, VBLK_T_OUT, 0, 65536, L_SIMPLE, VBLK_S_OK);
      breq(d, Q, VBLK_T_OUT, 512, 32768, L_SIMPLE, VBLK_S_OK);
      run(d, Q);
    }
    batch_begin(Q);
    breq(d, Q, VBLK_T_IN, 0, 65536, L_SIMPLE, VBLK_S_OK);
    breq(d, Q, VBLK_T_IN, 512, 32768, L_SPLIT, VBLK_S_OK);
    run(d, Q);
  }
  if (has(d, VBLK_F_WRITE_ZEROES)) {
    uint64_t s1[1] = {256}, s2[1] = {1024};
    uint32_t c1[1] = {64}, c2[1] = {200};
    batch_begin(Q);
    breq_ranges(d, Q, VBLK_T_WRITE_ZEROES, 1, s1, c1, 0, L_SPLIT, VBLK_S_OK);
    breq_ranges(d, Q, VBLK_T_WRITE_ZEROES, 1, s2, c2, VBLK_WRITE_ZEROES_FLAG_UNMAP, L_INDIRECT,
                VBLK_S_OK);
    s1[0] = cap - 8; /* past the end */
    c1[0] = 16;
    breq_ranges(d, Q, VBLK_T_WRITE_ZEROES, 1, s1, c1, 0, L_SIMPLE, VBLK_S_IOERR);
    run(d, Q);
    batch_begin(Q);
    breq(d, Q, VBLK_T_IN, 256, 32768, L_MERGED, VBLK_S_OK);
    breq(d, Q, VBLK_T_IN, 1024, 102400, L_SIMPLE, VBLK_S_OK);
    run(d, Q);
  }

  /* 5. The write cache: switch to writethrough through config space, write, switch back. */
  if (has(d, VBLK_F_CONFIG_WCE)) {
    uint8_t off = 0, on = 1;
    CHECK(vstor_device_config_write(d->dev, VBLK_CFG_WRITEBACK, &off, 1));
    CHECK(vstor_device_config_read(d->dev, VBLK_CFG_WRITEBACK, &wb, 1));
    EXPECT(wb == 0, "writeback reads %u after writing 0", wb);
    batch_begin(Q);
    breq(d, Q, VBLK_T_OUT, 3000, 8192, L_SPLIT, VBLK_S_OK);
    run(d, Q);
    CHECK(vstor_device_config_write(d->dev, VBLK_CFG_WRITEBACK, &on, 1));
    CHECK(vstor_device_config_read(d->dev, VBLK_CFG_WRITEBACK, &wb, 1));
    EXPECT(wb == 1, "writeback reads %u after writing 1", wb);
  }

  /* 6. Many small requests in one batch (more than fit the used ring of a 1-entry batch). */
  batch_begin(Q);
  for (i = 0; i < MAX_BATCH; i++)
    breq(d, Q, VBLK_T_OUT, 4096 + (uint64_t)i * 8, 4096, (int)(i % L_COUNT), VBLK_S_OK);
  run(d, Q);
  batch_begin(Q);
  breq(d, Q, VBLK_T_FLUSH, 0, 0, L_SPLIT, VBLK_S_OK);
  run(d, Q);

  /* 7. Interrupt suppression with EVENT_IDX: used_event parked by virtq_disable_cb means no
   * interrupt at all for a batch (vstor honours it); virtq_enable_cb brings them back. */
  {
    unsigned before = atomic_load(&irq_state.queue[0]);
    virtq_disable_cb(&Q->vq);
    batch_begin(Q);
    for (i = 0; i < 4; i++) breq(d, Q, VBLK_T_IN, (uint64_t)i * 64, 4096, L_SIMPLE, VBLK_S_OK);
    run(d, Q);
    EXPECT(atomic_load(&irq_state.queue[0]) == before,
           "%u interrupts while used_event was parked", atomic_load(&irq_state.queue[0]) - before);
    EXPECT(virtq_enable_cb(&Q->vq) == 0, "used entries left after the batch");
    batch_begin(Q);
    breq(d, Q, VBLK_T_IN, 0, 4096, L_SIMPLE, VBLK_S_OK);
    run(d, Q);
    EXPECT(atomic_load(&irq_state.queue[0]) > before, "no interrupt after virtq_enable_cb");
  }
  verify_through_device(d, Q);
  EXPECT(atomic_load(&irq_state.queue[0]) > 0, "no interrupt reached the callback in phase A");
  printf("blk_harness: phase A: %lu requests; callback interrupts %u, vstor_device_process "
         "events %lu (0 when every request completed inside vstor_device_kick)\n", n_requests,
         atomic_load(&irq_state.queue[0]), d->process_events);
}

/* Saves the live device, frees it, publishes requests while no device exists, restores into
 * a new device and continues the same virtqueue in completion-fd mode (ioeventfd + irqfd). */
static void phase_b(struct drv *d, vstor_blockdev *bdev) {
  struct queue *Q = &d->q[0];
  size_t len = 0, len2;
  void *blob;
  int rc;
  unsigned i, cb_before, left[1];
  unsigned long process_before = d->process_events;
  struct queue *qs[1];
  uint8_t status;
  char id[9];

  /* Two-call protocol: size first (NULL buffer, then a buffer one byte short). */
  rc = vstor_device_save(d->dev, NULL, &len);
  EXPECT(rc == -ENOSPC && len > 0, "save(NULL) returned %d, len %zu", rc, len);
  EXPECT(strstr(vstor_last_error(), "bytes") != NULL, "save(NULL) message");
  blob = malloc(len);
  EXPECT(blob != NULL, "malloc");
  len2 = len - 1;
  rc = vstor_device_save(d->dev, blob, &len2);
  EXPECT(rc == -ENOSPC && len2 == len, "save(short) returned %d, len %zu", rc, len2);
  len2 = len;
  CHECK(vstor_device_save(d->dev, blob, &len2));
  EXPECT(len2 == len, "save wrote %zu bytes, announced %zu", len2, len);
  CHECK(vstor_device_free(d->dev));
  d->dev = NULL;

  /* The guest keeps running: these are published while no device exists. */
  batch_begin(Q);
  for (i = 0; i < 4; i++)
    breq(d, Q, VBLK_T_OUT, 6000 + (uint64_t)i * 64, 16384, (int)(i % L_COUNT), VBLK_S_OK);
  breq(d, Q, VBLK_T_GET_ID, 0, 8, L_SIMPLE, VBLK_S_OK); /* short buffer: 8 bytes of serial */
  (void)batch_add(Q);

  /* A new device: memory, callback, ioeventfd and irqfd, then the saved state. */
  new_device(d, bdev, 0, 1, true);
  d->mode = MODE_FD;
  Q->kick_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  d->irq_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  EXPECT(Q->kick_efd >= 0 && d->irq_efd >= 0, "eventfd: %s", strerror(errno));
  CHECK(vstor_device_set_kick_fd(d->dev, 0, Q->kick_efd));
  CHECK(vstor_device_set_queue_irqfd(d->dev, 0, d->irq_efd));
  CHECK(vstor_device_restore(d->dev, blob, len));
  free(blob);
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status == 0x0f, "status after restore %#x", status);
  {
    uint64_t cap;
    CHECK(vstor_device_config_read(d->dev, VBLK_CFG_CAPACITY, &cap, 8));
    EXPECT(virtq_le64(cap) == d->capacity, "capacity after restore");
  }

  /* "Kick it once to pick up requests the driver added meanwhile": through the ioeventfd. */
  cb_before = atomic_load(&irq_state.queue[0]);
  notify(d, Q, true);
  left[0] = Q->nreq;
  qs[0] = Q;
  wait_queues(d, qs, 1, left);
  batch_check(Q);
  memset(id, 0, sizeof(id));
  gmem_copy(Q->reqs[4].data_gpa, id, 8, false);
  EXPECT(memcmp(id, SERIAL, 8) == 0, "short GET_ID returned \"%s\"", id);
  generation++;

  /* More batches in this mode; reads check what was written before and after the restore. */
  batch_begin(Q);
  for (i = 0; i < 4; i++)
    breq(d, Q, VBLK_T_IN, 6000 + (uint64_t)i * 64, 16384, (int)((i + 2) % L_COUNT), VBLK_S_OK);
  breq(d, Q, VBLK_T_IN, 0, 65536, L_SPLIT, VBLK_S_OK);
  breq(d, Q, VBLK_T_OUT, 7000, 65536, L_INDIRECT, VBLK_S_OK);
  breq(d, Q, VBLK_T_FLUSH, 0, 0, L_SIMPLE, VBLK_S_OK);
  run(d, Q);
  EXPECT(d->irqfd_count > 0, "no interrupt arrived on the irqfd");
  EXPECT(atomic_load(&irq_state.queue[0]) == cb_before,
         "the callback got queue interrupts routed to the irqfd");
  EXPECT(d->process_events > process_before, "vstor_device_process handled no event");

  /* Routes removed: kicks by vstor_device_kick, interrupts back to the callback. */
  CHECK(vstor_device_set_kick_fd(d->dev, 0, -1));
  CHECK(vstor_device_set_queue_irqfd(d->dev, 0, -1));
  close(Q->kick_efd);
  close(d->irq_efd);
  Q->kick_efd = -1;
  d->irq_efd = -1;
  d->mode = MODE_KICK;
  batch_begin(Q);
  breq(d, Q, VBLK_T_OUT, 7200, 4096, L_MERGED, VBLK_S_OK);
  breq(d, Q, VBLK_T_IN, 7000, 65536, L_MERGED, VBLK_S_OK);
  run(d, Q);
  EXPECT(atomic_load(&irq_state.queue[0]) > cb_before, "callback not called after irqfd removal");
  printf("blk_harness: phase B: state %zu bytes restored; irqfd signals %lu, "
         "vstor_device_process events %lu\n", len, d->irqfd_count,
         d->process_events - process_before);

  /* Driver removal: reset (status 0), then free. */
  CHECK(vstor_device_set_status(d->dev, 0));
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status == 0, "status after reset %#x", status);
  CHECK(vstor_device_free(d->dev));
  d->dev = NULL;
}

/* Worker threads, two queues (MQ), no EVENT_IDX: queue 0 kicked by vstor_device_kick, queue 1
 * by an ioeventfd; completion waits are driven by the interrupt callback only. */
static void phase_c(struct drv *d, vstor_blockdev *bdev) {
  uint16_t sizes[2] = {0, 64};
  struct queue *qs[2];
  unsigned i, round, before[2];
  uint8_t status;

  new_device(d, bdev, VSTOR_DEVICE_WORKER_THREADS, 2, false);
  d->mode = MODE_WORKER;
  /* The device holds its own reference: the block device handle can go now. */
  CHECK(vstor_blockdev_close(bdev));
  driver_init(d, 2, sizes, WANT_COMMON);
  EXPECT(has(d, VBLK_F_MQ) && !has(d, VIRTQ_F_EVENT_IDX), "features %#" PRIx64, d->features);
  d->q[1].kick_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  EXPECT(d->q[1].kick_efd >= 0, "eventfd");
  CHECK(vstor_device_set_kick_fd(d->dev, 1, d->q[1].kick_efd)); /* on a live device */
  qs[0] = &d->q[0];
  qs[1] = &d->q[1];
  before[0] = atomic_load(&irq_state.queue[0]);
  before[1] = atomic_load(&irq_state.queue[1]);
  for (round = 0; round < 3; round++) {
    /* queue 0 uses 512 sectors from the middle of the disk, queue 1 the next 512 */
    batch_begin(qs[0]);
    batch_begin(qs[1]);
    for (i = 0; i < 8; i++) {
      uint64_t s = d->capacity / 2 + (uint64_t)i * 64;
      uint32_t t = (round == 1) ? VBLK_T_IN : VBLK_T_OUT;
      breq(d, qs[0], t, s, 32768, (int)((i + round) % L_COUNT), VBLK_S_OK);
      breq(d, qs[1], t, s + 512, 32768, (int)((i + round + 1) % L_COUNT), VBLK_S_OK);
    }
    run_queues(d, qs, 2);
  }
  batch_begin(qs[1]);
  breq(d, qs[1], VBLK_T_FLUSH, 0, 0, L_SIMPLE, VBLK_S_OK);
  breq(d, qs[1], VBLK_T_GET_ID, 0, VBLK_ID_BYTES, L_INDIRECT, VBLK_S_OK);
  run(d, qs[1]);
  verify_through_device(d, qs[0]);
  EXPECT(atomic_load(&irq_state.queue[0]) > before[0] &&
             atomic_load(&irq_state.queue[1]) > before[1],
         "worker interrupts: queue 0 %u, queue 1 %u", atomic_load(&irq_state.queue[0]) - before[0],
         atomic_load(&irq_state.queue[1]) - before[1]);
  printf("blk_harness: phase C: worker interrupts queue 0 %u, queue 1 %u\n",
         atomic_load(&irq_state.queue[0]) - before[0], atomic_load(&irq_state.queue[1]) - before[1]);
  CHECK(vstor_device_reset(d->dev));
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status == 0, "status after reset %#x", status);
  CHECK(vstor_device_set_kick_fd(d->dev, 1, -1));
  close(d->q[1].kick_efd);
  d->q[1].kick_efd = -1;
  /* Hot-unplug of both regions (the last one too: guest memory is then empty). */
  CHECK(vstor_device_remove_memory(d->dev, RAM_B_GPA, RAM_B_LEN));
  CHECK(vstor_device_remove_memory(d->dev, RAM_A_GPA, RAM_A_LEN));
  CHECK(vstor_device_free(d->dev));
  d->dev = NULL;
}

extern char **environ;

/* Writes the guest-visible contents of `image` (format `fmt`, or probed when NULL) to a fresh
 * temporary raw file with `qemu-img convert -O raw` and returns a descriptor open on it (the
 * file itself is already unlinked). */
static int convert_to_raw(const char *image, const char *fmt) {
  const char *tmpdir = getenv("TMPDIR");
  char path[4096];
  char *args[10];
  int n = 0, fd, status = 0;
  pid_t pid;

  if (!tmpdir || !*tmpdir) tmpdir = "/tmp";
  EXPECT(snprintf(path, sizeof(path), "%s/blk_harness-XXXXXX", tmpdir) < (int)sizeof(path),
         "TMPDIR too long");
  fd = mkstemp(path);
  EXPECT(fd >= 0, "mkstemp %s: %s", path, strerror(errno));
  close(fd);
  args[n++] = (char *)"qemu-img";
  args[n++] = (char *)"convert";
  if (fmt) {
    args[n++] = (char *)"-f";
    args[n++] = (char *)fmt;
  }
  args[n++] = (char *)"-O";
  args[n++] = (char *)"raw";
  args[n++] = (char *)image;
  args[n++] = path;
  args[n] = NULL;
  errno = posix_spawnp(&pid, "qemu-img", NULL, NULL, args, environ);
  EXPECT(errno == 0, "cannot run qemu-img: %s", strerror(errno));
  EXPECT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
         "qemu-img convert -O raw %s failed (status %#x)", image, status);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  EXPECT(fd >= 0, "open %s: %s", path, strerror(errno));
  unlink(path);
  return fd;
}

int main(int argc, char **argv) {
  struct drv d;
  struct vstor_blockdev_opts opts;
  struct vstor_blockdev_info info;
  vstor_blockdev *bdev = NULL;
  struct stat st;
  uint8_t *ondisk;
  uint64_t off;
  int fd = -1;
  struct timespec t0, t1;
  const char *format = "raw"; /* for vstor_blockdev_open; NULL probes */
  const char *image;

  if (argc == 4 && strcmp(argv[1], "--format") == 0) {
    format = strcmp(argv[2], "probe") == 0 ? NULL : argv[2];
    argv += 2;
    argc -= 2;
  }
  if (argc != 2) {
    fprintf(stderr, "usage: %s [--format raw|qcow2|probe] IMAGE | memory:SIZE\n", argv[0]);
    return 2;
  }
  image = argv[1];
  setvbuf(stdout, NULL, _IOLBF, 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  EXPECT(vstor_abi_version() == VSTOR_ABI_VERSION, "ABI %u, header %u", vstor_abi_version(),
         VSTOR_ABI_VERSION);
  EXPECT(vstor_version() && *vstor_version(), "empty version");

  /* A raw image (its current contents seed the expected-contents shadow), or memory:SIZE
   * (starts zeroed; no file to check at the end; requests complete inside the kick). */
  is_file = strncmp(image, "memory:", 7) != 0;
  via_convert = is_file && (format == NULL || strcmp(format, "raw") != 0);
  if (is_file) {
    /* A non-raw image: its guest view, flattened by qemu-img, stands in for the file. */
    fd = via_convert ? convert_to_raw(image, format) : open(image, O_RDONLY | O_CLOEXEC);
    EXPECT(fd >= 0, "open %s: %s", image, strerror(errno));
    EXPECT(fstat(fd, &st) == 0 && st.st_size >= (4 << 20) && st.st_size <= (64 << 20) &&
               st.st_size % 65536 == 0,
           "%s: want a disk of 4..64 MiB, a multiple of 64 KiB", image);
    disk_bytes = (uint64_t)st.st_size;
  }

  /* Guest RAM: two separate mappings, contiguous in guest physical space. */
  ram_a = (uint8_t *)mmap(NULL, RAM_A_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
  ram_b = (uint8_t *)mmap(NULL, RAM_B_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
  EXPECT(ram_a != MAP_FAILED && ram_b != MAP_FAILED, "mmap: %s", strerror(errno));

  memset(&opts, 0, sizeof(opts));
  opts.size = sizeof(opts);
  opts.format = format;
  opts.cache_mode = VSTOR_CACHE_WRITEBACK;
  opts.aio = VSTOR_AIO_AUTO;
  CHECK(vstor_blockdev_open(image, &opts, &bdev));
  memset(&info, 0, sizeof(info));
  info.size = sizeof(info);
  CHECK(vstor_blockdev_get_info(bdev, &info));
  if (!is_file) {
    disk_bytes = info.capacity;
    EXPECT(disk_bytes >= (4 << 20) && disk_bytes <= (64 << 20) && disk_bytes % 65536 == 0,
           "%s: want 4..64 MiB, a multiple of 64 KiB", image);
  }
  EXPECT(info.capacity == disk_bytes, "blockdev capacity %" PRIu64, info.capacity);
  shadow = (uint8_t *)calloc(1, disk_bytes);
  ondisk = (uint8_t *)malloc(disk_bytes);
  EXPECT(shadow && ondisk, "malloc");
  if (is_file) EXPECT(pread(fd, shadow, disk_bytes, 0) == (ssize_t)disk_bytes, "pread");
  discard_zeroes = (info.flags & VSTOR_BDEV_INFO_DISCARD_ZEROES) != 0;
  printf("blk_harness: %s (%s): %" PRIu64 " bytes, logical block %u, flags %#x "
         "(discard %s)\n",
         image, format ? format : "probed", info.capacity, info.logical_block_size, info.flags,
         discard_zeroes ? "reads zeroes" : "contents undefined");

  memset(&d, 0, sizeof(d));
  new_device(&d, bdev, 0, 1, false);
  d.mode = MODE_KICK;
  phase_a(&d);
  phase_b(&d, bdev);
  phase_c(&d, bdev); /* closes bdev */

  /* The image holds exactly what was written (read from the C side, not through vstor; for a
   * non-raw image through qemu-img, now that vstor has closed it). */
  if (is_file) {
    if (via_convert) {
      close(fd);
      fd = convert_to_raw(image, format);
    }
    EXPECT(pread(fd, ondisk, disk_bytes, 0) == (ssize_t)disk_bytes, "pread");
    EXPECT(fstat(fd, &st) == 0 && (uint64_t)st.st_size == disk_bytes,
           "image (virtual) size changed to %lld", (long long)st.st_size);
    for (off = 0; off < disk_bytes; off++)
      EXPECT(ondisk[off] == shadow[off], "image byte %" PRIu64 " is %#x, expected %#x", off,
             ondisk[off], shadow[off]);
    close(fd);
    printf("blk_harness: image %s matches every write, discard and write-zeroes\n",
           via_convert ? "contents (qemu-img convert -O raw)" : "file");
  }

  EXPECT(atomic_load(&irq_state.config) == 0 && atomic_load(&irq_state.other) == 0,
         "unexpected interrupts: config %u, other %u", atomic_load(&irq_state.config),
         atomic_load(&irq_state.other));
  munmap(ram_a, RAM_A_LEN);
  munmap(ram_b, RAM_B_LEN);
  free(shadow);
  free(ondisk);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("blk_harness: OK: %lu requests, %lu bytes written, %lu read; interrupts: callback q0 "
         "%u q1 %u, irqfd %lu; kicks %lu (suppressed %lu); %.2f s\n",
         n_requests, n_bytes_written, n_bytes_read, atomic_load(&irq_state.queue[0]),
         atomic_load(&irq_state.queue[1]), d.irqfd_count, d.kicks, d.kicks_suppressed,
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}
