/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * virtio_blk.h - virtio-blk request helpers for the driver side (VIRTIO 1.2 §5.2), to use
 * with virtq.h. Header-only, C11 and C++17. Names are prefixed VBLK_ / vblk_ so the header
 * can coexist with <linux/virtio_blk.h>.
 *
 * A request is: a 16-byte header (device-readable), then data (device-readable for OUT,
 * DISCARD, WRITE_ZEROES; device-writable for IN and GET_ID; none for FLUSH), then a 1-byte
 * status (device-writable). The header, data and status may be split across descriptors in
 * any way; vblk_sg() builds the common 3-buffer form.
 */

#ifndef VSTOR_EXAMPLES_VIRTIO_BLK_H
#define VSTOR_EXAMPLES_VIRTIO_BLK_H

#include <stdint.h>
#include <string.h>

#include "virtq.h"

/* Request types. */
#define VBLK_T_IN 0u
#define VBLK_T_OUT 1u
#define VBLK_T_FLUSH 4u
#define VBLK_T_GET_ID 8u
#define VBLK_T_GET_LIFETIME 10u
#define VBLK_T_DISCARD 11u
#define VBLK_T_WRITE_ZEROES 13u
#define VBLK_T_SECURE_ERASE 14u

/* Status byte values. */
#define VBLK_S_OK 0u
#define VBLK_S_IOERR 1u
#define VBLK_S_UNSUPP 2u

/* Feature bits. */
#define VBLK_F_SIZE_MAX 1
#define VBLK_F_SEG_MAX 2
#define VBLK_F_GEOMETRY 4
#define VBLK_F_RO 5
#define VBLK_F_BLK_SIZE 6
#define VBLK_F_FLUSH 9
#define VBLK_F_TOPOLOGY 10
#define VBLK_F_CONFIG_WCE 11
#define VBLK_F_MQ 12
#define VBLK_F_DISCARD 13
#define VBLK_F_WRITE_ZEROES 14
#define VBLK_F_LIFETIME 15
#define VBLK_F_SECURE_ERASE 16

/* Write-zeroes segment flag. */
#define VBLK_WRITE_ZEROES_FLAG_UNMAP 1u

/* Sectors are always 512 bytes in the protocol, whatever blk_size says. */
#define VBLK_SECTOR_SIZE 512u

/* GET_ID returns at most this many bytes (not NUL-terminated when all are used). */
#define VBLK_ID_BYTES 20u

/* Offsets in struct virtio_blk_config (device configuration space). */
#define VBLK_CFG_CAPACITY 0u             /* le64, in 512-byte sectors */
#define VBLK_CFG_SIZE_MAX 8u             /* le32 */
#define VBLK_CFG_SEG_MAX 12u             /* le32 */
#define VBLK_CFG_BLK_SIZE 20u            /* le32 */
#define VBLK_CFG_WRITEBACK 32u           /* u8 */
#define VBLK_CFG_NUM_QUEUES 34u          /* le16 */
#define VBLK_CFG_MAX_DISCARD_SECTORS 36u /* le32 */
#define VBLK_CFG_MAX_DISCARD_SEG 40u     /* le32 */
#define VBLK_CFG_DISCARD_SECTOR_ALIGNMENT 44u
#define VBLK_CFG_MAX_WRITE_ZEROES_SECTORS 48u
#define VBLK_CFG_MAX_WRITE_ZEROES_SEG 52u
#define VBLK_CFG_WRITE_ZEROES_MAY_UNMAP 56u

/* The request header (struct virtio_blk_outhdr), little-endian in guest memory. */
struct vblk_outhdr {
  uint32_t type;
  uint32_t reserved; /* ioprio in legacy */
  uint64_t sector;
};

/* One DISCARD / WRITE_ZEROES segment (struct virtio_blk_discard_write_zeroes). */
struct vblk_dwz_seg {
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;
};

#if defined(__cplusplus)
static_assert(sizeof(struct vblk_outhdr) == 16, "outhdr is 16 bytes");
static_assert(sizeof(struct vblk_dwz_seg) == 16, "segment is 16 bytes");
#else
_Static_assert(sizeof(struct vblk_outhdr) == 16, "outhdr is 16 bytes");
_Static_assert(sizeof(struct vblk_dwz_seg) == 16, "segment is 16 bytes");
#endif

/* Writes a request header at `hva` (guest memory). */
static inline void vblk_write_outhdr(void *hva, uint32_t type, uint64_t sector) {
  struct vblk_outhdr h;
  h.type = virtq_le32(type);
  h.reserved = 0;
  h.sector = virtq_le64(sector);
  memcpy(hva, &h, sizeof(h));
}

/* Writes one DISCARD / WRITE_ZEROES segment at `hva` (guest memory). */
static inline void vblk_write_seg(void *hva, uint64_t sector, uint32_t num_sectors,
                                  uint32_t flags) {
  struct vblk_dwz_seg s;
  s.sector = virtq_le64(sector);
  s.num_sectors = virtq_le32(num_sectors);
  s.flags = virtq_le32(flags);
  memcpy(hva, &s, sizeof(s));
}

/* Non-zero when the data of a request of `type` is written by the device. */
static inline int vblk_data_is_in(uint32_t type) {
  return type == VBLK_T_IN || type == VBLK_T_GET_ID || type == VBLK_T_GET_LIFETIME;
}

/* Builds the 3-buffer form of a request in sg[0..3): header (16 bytes at hdr_gpa), data
 * (data_len bytes at data_gpa, skipped when data_len is 0), status (1 byte at status_gpa).
 * Sets *n_out / *n_in for virtq_add and returns the number of buffers (2 or 3). */
static inline unsigned vblk_sg(struct virtq_sg *sg, uint32_t type, uint64_t hdr_gpa,
                               uint64_t data_gpa, uint32_t data_len, uint64_t status_gpa,
                               unsigned *n_out, unsigned *n_in) {
  unsigned n = 0, out = 1;
  sg[n].gpa = hdr_gpa;
  sg[n].len = (uint32_t)sizeof(struct vblk_outhdr);
  n++;
  if (data_len) {
    sg[n].gpa = data_gpa;
    sg[n].len = data_len;
    n++;
    if (!vblk_data_is_in(type)) out++;
  }
  sg[n].gpa = status_gpa;
  sg[n].len = 1;
  n++;
  if (n_out) *n_out = out;
  if (n_in) *n_in = n - out;
  return n;
}

#endif /* VSTOR_EXAMPLES_VIRTIO_BLK_H */
