/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * virtq.h - a driver-side split virtqueue (VIRTIO 1.2 §2.7) for test harnesses and
 * benchmarks that play the guest against libvstor. Header-only, C11 and C++17.
 *
 * The ring is laid out exactly as Linux's virtio_ring.c (vring_init / vring_size) lays out a
 * modern (virtio-pci 1.x) queue: the descriptor table at the ring offset (16-byte aligned), the
 * available ring right after it (flags, idx, ring[size], used_event), and the used ring at the
 * next multiple of VIRTQ_USED_ALIGN (flags, idx, ring[size] of {id, len}, avail_event).
 * Linux's modern transports pass SMP_CACHE_BYTES (64 on x86) as the alignment, the legacy one
 * 4096 (VIRTIO_PCI_VRING_ALIGN); define VIRTQ_USED_ALIGN before including to change it.
 *
 * Like Linux, free descriptors are chained through desc.next (free_head), a chain is returned
 * to the free list by walking its NEXT flags, avail->idx is published with a release store
 * (virtio_wmb) and used->idx is read with an acquire load (virtio_rmb). With EVENT_IDX
 * (virtq_set_event_idx) the driver keeps used_event = last_used_idx, as virtqueue_get_buf does.
 *
 * The ring lives in a guest RAM buffer the caller owns: `ram` is its host address and
 * `ram_gpa` its guest physical address, so gpa = ram_gpa + (host pointer - ram). Buffers passed
 * to virtq_add are guest physical addresses (any registered region, not only this one).
 *
 * Usage:
 *   struct virtq vq;
 *   virtq_init(&vq, ram, RAM_GPA, ring_off, 256);          // ring_off: virtq_ring_bytes(256)
 *   cfg.desc_addr = virtq_desc_gpa(&vq); ...               // -> vstor_device_queue_setup
 *   struct virtq_sg sg[3] = {{hdr_gpa, 16}, {buf_gpa, 4096}, {st_gpa, 1}};
 *   virtq_add(&vq, sg, 1, 2, &head);                       // 1 device-readable, 2 writable
 *   if (virtq_publish(&vq)) vstor_device_kick(dev, 0);
 *   while (virtq_get_used(&vq, &head, &len) == 1) ...;
 *
 * All functions are static inline; nothing here allocates. Not thread-safe: one thread drives
 * a queue at a time (the device side may run on other threads; the barriers cover that).
 */

#ifndef VSTOR_EXAMPLES_VIRTQ_H
#define VSTOR_EXAMPLES_VIRTQ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef VIRTQ_USED_ALIGN
#define VIRTQ_USED_ALIGN 64u /* Linux modern virtio-pci: SMP_CACHE_BYTES */
#endif

/* Largest queue size a split virtqueue may have (VIRTIO 1.2 §2.7). */
#define VIRTQ_MAX_SIZE 32768u

/* Descriptor flags (VIRTQ_DESC_F_*). */
#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_DESC_F_INDIRECT 4u

/* Ring flags. */
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u
#define VIRTQ_USED_F_NO_NOTIFY 1u

/* Generic feature bits. */
#define VIRTQ_F_INDIRECT_DESC 28
#define VIRTQ_F_EVENT_IDX 29
#define VIRTQ_F_VERSION_1 32
#define VIRTQ_F_ACCESS_PLATFORM 33
#define VIRTQ_F_RING_PACKED 34

/* Device status bits (VIRTIO 1.2 §2.1). */
#define VIRTQ_STATUS_ACKNOWLEDGE 0x01u
#define VIRTQ_STATUS_DRIVER 0x02u
#define VIRTQ_STATUS_DRIVER_OK 0x04u
#define VIRTQ_STATUS_FEATURES_OK 0x08u
#define VIRTQ_STATUS_NEEDS_RESET 0x40u
#define VIRTQ_STATUS_FAILED 0x80u

/* Return codes (negative errno values, spelled out so no <errno.h> dependency). */
#define VIRTQ_EINVAL (-22)
#define VIRTQ_ENOSPC (-28)
#define VIRTQ_EIO (-5)

/* One descriptor, as in guest memory (little-endian). */
struct virtq_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

/* One used ring element, as in guest memory (little-endian). */
struct virtq_used_elem {
  uint32_t id;
  uint32_t len;
};

/* One buffer of a request: guest physical address and length. */
struct virtq_sg {
  uint64_t gpa;
  uint32_t len;
};

/* Driver-side state of one split virtqueue. Fields are public for tests that need to poke at
 * the ring (hostile-guest cases); normal users go through the functions. */
struct virtq {
  uint8_t *ram;          /* host address of the guest RAM region holding the ring */
  uint64_t ram_gpa;      /* its guest physical address */
  uint64_t ring_off;     /* offset of the descriptor table in that region */
  uint16_t size;         /* entries (power of two) */
  uint16_t num_free;     /* free descriptors */
  uint16_t free_head;    /* first free descriptor (chained through desc.next) */
  uint16_t avail_idx;    /* shadow of avail->idx: next slot to fill */
  uint16_t published;    /* avail->idx value last published */
  uint16_t last_used;    /* next used ring slot to consume */
  int event_idx;         /* VIRTIO_F_EVENT_IDX negotiated */
  int cb_disabled;       /* virtq_disable_cb in effect */
  struct virtq_desc *desc;                /* descriptor table */
  uint16_t *avail;                        /* [0]=flags [1]=idx [2..]=ring, [2+size]=used_event */
  uint16_t *used;                         /* [0]=flags [1]=idx, then elements */
  struct virtq_used_elem *used_ring;      /* used ring elements; avail_event after them */
};

/* ---- little-endian accessors (virtio 1.x rings are little-endian) ---- */

static inline uint16_t virtq_le16(uint16_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_bswap16(v);
#else
  return v;
#endif
}

static inline uint32_t virtq_le32(uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_bswap32(v);
#else
  return v;
#endif
}

static inline uint64_t virtq_le64(uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_bswap64(v);
#else
  return v;
#endif
}

/* ---- layout ---- */

static inline uint64_t virtq_align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* Bytes of the descriptor table + avail ring (incl. used_event). */
static inline uint64_t virtq_avail_end(unsigned size) {
  return 16ull * size + 2ull * (3u + size);
}

/* Offset of the used ring from the descriptor table. */
static inline uint64_t virtq_used_off(unsigned size) {
  return virtq_align_up(virtq_avail_end(size), VIRTQ_USED_ALIGN);
}

/* Total bytes of a ring of `size` entries (Linux vring_size(size, VIRTQ_USED_ALIGN)). */
static inline uint64_t virtq_ring_bytes(unsigned size) {
  return virtq_used_off(size) + 2ull * 3u + 8ull * size;
}

/* ---- address helpers ---- */

static inline uint64_t virtq_desc_gpa(const struct virtq *vq) { return vq->ram_gpa + vq->ring_off; }

static inline uint64_t virtq_avail_gpa(const struct virtq *vq) {
  return vq->ram_gpa + vq->ring_off + 16ull * vq->size;
}

static inline uint64_t virtq_used_gpa(const struct virtq *vq) {
  return vq->ram_gpa + vq->ring_off + virtq_used_off(vq->size);
}

/* Guest physical address of a host pointer inside the ring's RAM region. */
static inline uint64_t virtq_gpa(const struct virtq *vq, const void *hva) {
  return vq->ram_gpa + (uint64_t)((const uint8_t *)hva - vq->ram);
}

/* Host pointer of a guest physical address inside the ring's RAM region. */
static inline void *virtq_hva(const struct virtq *vq, uint64_t gpa) {
  return vq->ram + (gpa - vq->ram_gpa);
}

/* ---- setup ---- */

/* Lays out and zeroes a ring of `size` entries at `ram + ring_off` (which must be 16-byte
 * aligned; virtq_ring_bytes(size) bytes are used) and builds the free list. Returns 0, or
 * VIRTQ_EINVAL for a size that is not a power of two in 1..32768 or a misaligned offset. */
static inline int virtq_init(struct virtq *vq, void *ram, uint64_t ram_gpa, uint64_t ring_off,
                             unsigned size) {
  unsigned i;
  uint8_t *base;
  memset(vq, 0, sizeof(*vq)); /* also on failure: a zeroed queue is size 0, unusable */
  if (size == 0 || size > VIRTQ_MAX_SIZE || (size & (size - 1)) != 0) return VIRTQ_EINVAL;
  if (((ram_gpa + ring_off) & 15u) != 0 || ((uintptr_t)ram + ring_off) % 16u != 0)
    return VIRTQ_EINVAL;
  vq->ram = (uint8_t *)ram;
  vq->ram_gpa = ram_gpa;
  vq->ring_off = ring_off;
  vq->size = (uint16_t)size;
  base = vq->ram + ring_off;
  memset(base, 0, (size_t)virtq_ring_bytes(size));
  vq->desc = (struct virtq_desc *)(void *)base;
  vq->avail = (uint16_t *)(void *)(base + 16ull * size);
  vq->used = (uint16_t *)(void *)(base + virtq_used_off(size));
  vq->used_ring = (struct virtq_used_elem *)(void *)(base + virtq_used_off(size) + 4);
  /* Free list: 0 -> 1 -> ... -> size-1, as virtqueue_init / vring_create does. */
  for (i = 0; i + 1 < size; i++) vq->desc[i].next = virtq_le16((uint16_t)(i + 1));
  vq->free_head = 0;
  vq->num_free = (uint16_t)size;
  return 0;
}

/* Declares whether VIRTIO_F_EVENT_IDX was negotiated (call before the first request). */
static inline void virtq_set_event_idx(struct virtq *vq, int on) { vq->event_idx = on ? 1 : 0; }

/* Asks the device not to interrupt (Linux virtqueue_disable_cb_split): without EVENT_IDX the
 * avail flags get NO_INTERRUPT; with it, used_event is parked a whole index space behind (a
 * value the device's used index reaches again only after 65536 completions) and
 * virtq_get_used stops moving it. Advisory: a device may still interrupt. */
static inline void virtq_disable_cb(struct virtq *vq) {
  vq->cb_disabled = 1;
  if (vq->event_idx)
    __atomic_store_n(&vq->avail[2 + vq->size], virtq_le16((uint16_t)(vq->last_used - 1)),
                     __ATOMIC_RELAXED);
  else
    __atomic_store_n(&vq->avail[0], virtq_le16(VIRTQ_AVAIL_F_NO_INTERRUPT), __ATOMIC_RELAXED);
}

/* Asks for interrupts again (virtqueue_enable_cb_prepare): avail flags cleared, used_event =
 * next entry to consume, then a full barrier. Returns non-zero when used entries are already
 * waiting (the interrupt for them may never come): consume them before sleeping. */
static inline int virtq_enable_cb(struct virtq *vq) {
  vq->cb_disabled = 0;
  if (vq->event_idx)
    __atomic_store_n(&vq->avail[2 + vq->size], virtq_le16(vq->last_used), __ATOMIC_RELAXED);
  else
    __atomic_store_n(&vq->avail[0], 0, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* virtio_mb: publish before re-reading used idx */
  return virtq_le16(__atomic_load_n(&vq->used[1], __ATOMIC_ACQUIRE)) != vq->last_used;
}

/* ---- requests ---- */

/* Free descriptors (a chain of n buffers needs n; an indirect request needs 1). */
static inline unsigned virtq_free_count(const struct virtq *vq) { return vq->num_free; }

/* Adds one request: n_out device-readable buffers followed by n_in device-writable ones,
 * chained through descriptors from the free list. *head (if not NULL) receives the head
 * descriptor index, which virtq_get_used returns when the device is done. The request becomes
 * visible to the device at the next virtq_publish. Returns 0, VIRTQ_EINVAL (no buffers) or
 * VIRTQ_ENOSPC (not enough free descriptors). */
static inline int virtq_add(struct virtq *vq, const struct virtq_sg *sg, unsigned n_out,
                           unsigned n_in, uint16_t *head) {
  unsigned n = n_out + n_in, k;
  uint16_t i, first;
  if (n == 0) return VIRTQ_EINVAL;
  if (n > vq->num_free) return VIRTQ_ENOSPC;
  first = i = vq->free_head;
  for (k = 0; k < n; k++) {
    struct virtq_desc *d = &vq->desc[i];
    uint16_t flags = (uint16_t)(k < n_out ? 0u : VIRTQ_DESC_F_WRITE);
    if (k + 1 < n) flags = (uint16_t)(flags | VIRTQ_DESC_F_NEXT);
    d->addr = virtq_le64(sg[k].gpa);
    d->len = virtq_le32(sg[k].len);
    d->flags = virtq_le16(flags);
    i = virtq_le16(d->next); /* free list link (kept for the last one: the new free head) */
  }
  vq->free_head = i;
  vq->num_free = (uint16_t)(vq->num_free - n);
  vq->avail[2 + (vq->avail_idx & (vq->size - 1))] = virtq_le16(first);
  vq->avail_idx++;
  if (head) *head = first;
  return 0;
}

/* Adds one request through an indirect descriptor table (VIRTIO_F_INDIRECT_DESC): the n_out +
 * n_in buffers are written to a table at `table_gpa` (host address `table_hva`, 16-byte
 * aligned, (n_out + n_in) * 16 bytes, which the caller keeps untouched until the request is
 * used), and one ring descriptor points at it. Returns as virtq_add. */
static inline int virtq_add_indirect(struct virtq *vq, const struct virtq_sg *sg, unsigned n_out,
                                    unsigned n_in, void *table_hva, uint64_t table_gpa,
                                    uint16_t *head) {
  unsigned n = n_out + n_in, k;
  struct virtq_desc *t = (struct virtq_desc *)table_hva;
  struct virtq_desc *d;
  uint16_t first;
  if (n == 0 || table_hva == NULL || (table_gpa & 15u) != 0) return VIRTQ_EINVAL;
  if (vq->num_free < 1) return VIRTQ_ENOSPC;
  for (k = 0; k < n; k++) {
    uint16_t flags = (uint16_t)(k < n_out ? 0u : VIRTQ_DESC_F_WRITE);
    if (k + 1 < n) flags = (uint16_t)(flags | VIRTQ_DESC_F_NEXT);
    t[k].addr = virtq_le64(sg[k].gpa);
    t[k].len = virtq_le32(sg[k].len);
    t[k].flags = virtq_le16(flags);
    t[k].next = virtq_le16((uint16_t)(k + 1));
  }
  first = vq->free_head;
  d = &vq->desc[first];
  d->addr = virtq_le64(table_gpa);
  d->len = virtq_le32((uint32_t)(n * sizeof(struct virtq_desc)));
  d->flags = virtq_le16(VIRTQ_DESC_F_INDIRECT);
  vq->free_head = virtq_le16(d->next);
  vq->num_free--;
  vq->avail[2 + (vq->avail_idx & (vq->size - 1))] = virtq_le16(first);
  vq->avail_idx++;
  if (head) *head = first;
  return 0;
}

/* Publishes every request added since the last call: stores avail->idx with release semantics
 * (descriptors and ring entries become visible first), then, like virtqueue_kick_prepare,
 * issues a full barrier and decides whether the device wants a notification (used->flags
 * NO_NOTIFY, or avail_event with EVENT_IDX). Returns 1 when the caller should kick the device,
 * 0 when it need not (kicking anyway is harmless). */
static inline int virtq_publish(struct virtq *vq) {
  uint16_t old = vq->published, now = vq->avail_idx;
  __atomic_store_n(&vq->avail[1], virtq_le16(now), __ATOMIC_RELEASE);
  vq->published = now;
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* virtio_mb: idx store before reading event */
  if (vq->event_idx) {
    uint16_t ev = virtq_le16(__atomic_load_n(
        (const uint16_t *)(const void *)&vq->used_ring[vq->size], __ATOMIC_RELAXED));
    /* vring_need_event(event, new, old) */
    return (uint16_t)(now - ev - 1) < (uint16_t)(now - old);
  }
  return !(virtq_le16(__atomic_load_n(&vq->used[0], __ATOMIC_RELAXED)) &
           VIRTQ_USED_F_NO_NOTIFY);
}

/* Requests published and not yet consumed from the used ring. */
static inline unsigned virtq_pending(const struct virtq *vq) {
  return (uint16_t)(vq->published - vq->last_used);
}

/* Non-zero when the used ring holds an element not yet consumed (acquire load of used->idx). */
static inline int virtq_more_used(const struct virtq *vq) {
  return virtq_le16(__atomic_load_n(&vq->used[1], __ATOMIC_ACQUIRE)) != vq->last_used;
}

/* Consumes one used element: *head = the request's head descriptor, *len = bytes the device
 * wrote (either may be NULL), and returns its descriptors to the free list. Returns 1, 0 when
 * the used ring is empty, or VIRTQ_EIO when the device returned a bad id (not a head in
 * flight, or a chain that does not end). */
static inline int virtq_get_used(struct virtq *vq, uint16_t *head, uint32_t *len) {
  uint16_t used_idx = virtq_le16(__atomic_load_n(&vq->used[1], __ATOMIC_ACQUIRE));
  struct virtq_used_elem *e;
  uint32_t id, n = 1;
  uint16_t i;
  if (used_idx == vq->last_used) return 0;
  if ((uint16_t)(used_idx - vq->last_used) > vq->size) return VIRTQ_EIO;
  e = &vq->used_ring[vq->last_used & (vq->size - 1)];
  id = virtq_le32(e->id);
  if (id >= vq->size) return VIRTQ_EIO;
  if (len) *len = virtq_le32(e->len);
  if (head) *head = (uint16_t)id;
  /* detach_buf: walk the chain, link its tail to the free list. */
  i = (uint16_t)id;
  while (virtq_le16(vq->desc[i].flags) & VIRTQ_DESC_F_NEXT) {
    i = virtq_le16(vq->desc[i].next);
    if (i >= vq->size || ++n > vq->size) return VIRTQ_EIO;
  }
  vq->desc[i].next = virtq_le16(vq->free_head);
  vq->free_head = (uint16_t)id;
  vq->num_free = (uint16_t)(vq->num_free + n);
  vq->last_used++;
  if (vq->event_idx && !vq->cb_disabled) /* virtqueue_get_buf: interrupt at the next entry */
    __atomic_store_n(&vq->avail[2 + vq->size], virtq_le16(vq->last_used), __ATOMIC_SEQ_CST);
  return 1;
}

#endif /* VSTOR_EXAMPLES_VIRTQ_H */
