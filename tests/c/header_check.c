/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * header_check.c - compiled by tests/c/run.sh as C11 and as C++17 (g++ -x c++), both with
 * -Wall -Wextra -Werror -pedantic: include/vstor.h and the example headers must be clean in
 * both, idempotent (included twice), and lay the ABI structs out as the Rust side does
 * (#[repr(C)] in capi/src). Linked and run, it also proves the C++ build sees the functions
 * with C linkage.
 */

#include "vstor.h"
#include "vstor.h" /* include guard */
#include "virtio_blk.h"
#include "virtq.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
#define STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* Layouts of capi/src/{blk,blockdev,transport,scsi}.rs on LP64. */
STATIC_ASSERT(sizeof(struct vstor_blk_config) == 24, "vstor_blk_config");
STATIC_ASSERT(offsetof(struct vstor_blk_config, num_queues) == 8, "num_queues");
STATIC_ASSERT(offsetof(struct vstor_blk_config, max_discard_seg) == 12, "max_discard_seg");
STATIC_ASSERT(offsetof(struct vstor_blk_config, serial) == 16, "serial");
STATIC_ASSERT(sizeof(struct vstor_blockdev_opts) == 32, "vstor_blockdev_opts");
STATIC_ASSERT(offsetof(struct vstor_blockdev_opts, format) == 8, "format");
STATIC_ASSERT(offsetof(struct vstor_blockdev_opts, reserved) == 28, "reserved");
STATIC_ASSERT(sizeof(struct vstor_blockdev_info) == 32, "vstor_blockdev_info");
STATIC_ASSERT(offsetof(struct vstor_blockdev_info, capacity) == 8, "capacity");
STATIC_ASSERT(sizeof(struct vstor_device_info) == 16, "vstor_device_info");
STATIC_ASSERT(offsetof(struct vstor_device_info, config_len) == 12, "config_len");
STATIC_ASSERT(sizeof(struct vstor_queue_config) == 32, "vstor_queue_config");
STATIC_ASSERT(offsetof(struct vstor_queue_config, desc_addr) == 8, "desc_addr");
STATIC_ASSERT(offsetof(struct vstor_queue_config, used_addr) == 24, "used_addr");
/* capi/src/scsi.rs */
STATIC_ASSERT(sizeof(struct vstor_scsi_config) == 24, "vstor_scsi_config");
STATIC_ASSERT(offsetof(struct vstor_scsi_config, num_queues) == 8, "num_queues");
STATIC_ASSERT(offsetof(struct vstor_scsi_config, seg_max) == 12, "seg_max");
STATIC_ASSERT(offsetof(struct vstor_scsi_config, cmd_per_lun) == 20, "cmd_per_lun");
STATIC_ASSERT(sizeof(struct vstor_lun_opts) == 56, "vstor_lun_opts");
STATIC_ASSERT(offsetof(struct vstor_lun_opts, serial) == 8, "serial");
STATIC_ASSERT(offsetof(struct vstor_lun_opts, wwn) == 16, "wwn");
STATIC_ASSERT(offsetof(struct vstor_lun_opts, pr_file) == 48, "pr_file");
STATIC_ASSERT(VSTOR_SCSI_MAX_LUNS == 16384 && VSTOR_SCSI_MAX_TARGETS == 256, "SCSI limits");
STATIC_ASSERT(VSTOR_IRQ_CONFIG == 0xFFFFFFFFu, "VSTOR_IRQ_CONFIG");
STATIC_ASSERT(VSTOR_ABI_VERSION == 1, "ABI 1");
/* The split-ring structs of virtq.h. */
STATIC_ASSERT(sizeof(struct virtq_desc) == 16, "virtq_desc");
STATIC_ASSERT(sizeof(struct virtq_used_elem) == 8, "virtq_used_elem");

static void irq(void *opaque, uint32_t queue) {
  (void)opaque;
  (void)queue;
}

int main(void) {
  vstor_irq_fn fn = irq;
  static unsigned char ram[8192] __attribute__((aligned(4096)));
  struct virtq vq;
  struct virtq_sg sg[3];
  unsigned n_out, n_in;
  uint16_t head;

  (void)fn;
  if (vstor_abi_version() != VSTOR_ABI_VERSION || strlen(vstor_version()) == 0) return 1;
  /* virtq.h layout: Linux vring_size(256, 64) for the modern transport. */
  if (virtq_ring_bytes(256) != 6726 || virtq_used_off(256) != 4672) return 2;
  if (virtq_init(&vq, ram, 0x1000, 0, 64) != 0) return 3;
  if (virtq_used_gpa(&vq) - virtq_desc_gpa(&vq) != virtq_used_off(64) ||
      virtq_avail_gpa(&vq) != 0x1000 + 64 * 16)
    return 4;
  vblk_sg(sg, VBLK_T_IN, 0x1000, 0x2000, 512, 0x3000, &n_out, &n_in);
  if (n_out != 1 || n_in != 2 || virtq_add(&vq, sg, n_out, n_in, &head) != 0) return 5;
  if (virtq_publish(&vq) != 1 || virtq_free_count(&vq) != 61) return 6;
#ifdef __cplusplus
  printf("header_check: C++%ld OK (libvstor %s)\n", (long)(__cplusplus / 100 % 100),
         vstor_version());
#else
  printf("header_check: C%ld OK (libvstor %s)\n", (long)(__STDC_VERSION__ / 100 % 100),
         vstor_version());
#endif
  return 0;
}
