/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * misuse.c - every way a C caller (or a hostile guest) can get libvstor wrong, through the C
 * ABI only. Each case asserts the exact negative errno, that vstor_last_error() is non-empty,
 * starts with the name of the function that failed and mentions the culprit. A guest that
 * corrupts its rings must make the device report DEVICE_NEEDS_RESET, never crash it.
 *
 *   misuse [IMAGE-DIR]
 *
 * IMAGE-DIR (default /tmp) is where a missing file is looked for. Prints "ok - NAME" per
 * passing case; exits non-zero if any check failed.
 *
 * Three cases guard bugs this suite found and that were fixed: a restore refused while
 * decoding the blob left a live device live; a worker-mode kick before DRIVER_OK returned 0;
 * the last memory region could not be removed.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vstor.h"
#include "virtio_blk.h"
#include "virtq.h"

/* ------------------------------------------------------------------------------------------ */
/* Checking                                                                                   */

static int failures, case_failures, passed;
static const char *case_name;

#define FAIL(...)                                                                            \
  do {                                                                                       \
    fprintf(stderr, "misuse: [%s] %s:%d: ", case_name, __FILE__, __LINE__);                  \
    fprintf(stderr, __VA_ARGS__);                                                            \
    fputc('\n', stderr);                                                                     \
    case_failures++;                                                                         \
  } while (0)

#define TRUE(cond)                                                                           \
  do {                                                                                       \
    if (!(cond)) FAIL("expected %s", #cond);                                                 \
  } while (0)

/* `call` must succeed (>= 0). */
#define OK(call)                                                                             \
  do {                                                                                       \
    int rc_ = (call);                                                                        \
    if (rc_ < 0) FAIL("%s returned %d (%s): %s", #call, rc_, strerror(-rc_), vstor_last_error()); \
  } while (0)

/* `call` must fail with -err; vstor_last_error() must start with the function's name and
 * contain `culprit` (case-sensitive; NULL to skip). */
#define ERR(call, err, culprit) check_err(#call, (call), (err), (culprit), __LINE__)

static void check_err(const char *expr, int rc, int err, const char *culprit, int line) {
  const char *msg = vstor_last_error();
  size_t fn_len = strcspn(expr, "(");
  if (rc != -err) {
    FAIL("line %d: %s returned %d (%s), expected %d (%s); last error \"%s\"", line, expr, rc,
         rc < 0 ? strerror(-rc) : "success", -err, strerror(err), msg ? msg : "(null)");
    return;
  }
  if (!msg || !*msg) {
    FAIL("line %d: %s: vstor_last_error() is empty", line, expr);
    return;
  }
  if (strncmp(msg, expr, fn_len) != 0 || msg[fn_len] != ':')
    FAIL("line %d: %s: message does not name the function: \"%s\"", line, expr, msg);
  if (culprit && !strstr(msg, culprit))
    FAIL("line %d: %s: message does not mention \"%s\": \"%s\"", line, expr, culprit, msg);
}

static void begin(const char *name) {
  case_name = name;
  case_failures = 0;
}

static void end(void) {
  if (case_failures) {
    printf("FAIL - %s\n", case_name);
    failures += case_failures;
  } else {
    printf("ok - %s\n", case_name);
    passed++;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Fixtures                                                                                   */

#define RAM_GPA 0x100000ull
#define RAM_LEN (1ull << 20)
#define RING_OFF 0x0ull
#define HDR_OFF 0x8000ull
#define DATA_OFF 0x10000ull

static uint8_t *ram;
static const char *img_dir = "/tmp";

static uint64_t gpa_of(uint64_t off) { return RAM_GPA + off; }

static vstor_blockdev *open_mem(const char *spec) {
  vstor_blockdev *b = NULL;
  int rc = vstor_blockdev_open(spec, NULL, &b);
  if (rc < 0) {
    fprintf(stderr, "misuse: cannot open %s: %s\n", spec, vstor_last_error());
    exit(2);
  }
  return b;
}

static vstor_device *new_dev(vstor_blockdev *b, uint32_t flags) {
  struct vstor_blk_config c;
  vstor_device *d = NULL;
  int rc;
  memset(&c, 0, sizeof(c));
  c.size = sizeof(c);
  c.flags = flags;
  rc = vstor_blk_new(b, &c, &d);
  if (rc < 0) {
    fprintf(stderr, "misuse: vstor_blk_new: %s\n", vstor_last_error());
    exit(2);
  }
  return d;
}

static void queue_cfg(struct vstor_queue_config *qc, const struct virtq *vq) {
  memset(qc, 0, sizeof(*qc));
  qc->size = sizeof(*qc);
  qc->queue_size = vq->size;
  qc->desc_addr = virtq_desc_gpa(vq);
  qc->avail_addr = virtq_avail_gpa(vq);
  qc->used_addr = virtq_used_gpa(vq);
  qc->enabled = 1;
}

/* Brings `d` up as Linux would, with queue 0 of `qsize` entries at RING_OFF; `features` on
 * top of VERSION_1 (masked with what is offered). Returns 0 or the failing rc. */
static int bring_up(vstor_device *d, struct virtq *vq, unsigned qsize, uint64_t features) {
  uint64_t offered;
  struct vstor_queue_config qc;
  int rc;
  if ((rc = vstor_device_set_status(d, 0)) < 0) return rc;
  if ((rc = vstor_device_set_status(d, 1)) < 0) return rc;
  if ((rc = vstor_device_set_status(d, 3)) < 0) return rc;
  if ((rc = vstor_device_features(d, &offered)) < 0) return rc;
  if ((rc = vstor_device_set_driver_features(
           d, offered & (features | (1ull << VIRTQ_F_VERSION_1)))) < 0)
    return rc;
  if ((rc = vstor_device_set_status(d, 11)) < 0) return rc;
  if (virtq_init(vq, ram, RAM_GPA, RING_OFF, qsize) != 0) return -EINVAL;
  virtq_set_event_idx(vq, (offered & features & (1ull << VIRTQ_F_EVENT_IDX)) != 0);
  queue_cfg(&qc, vq);
  if ((rc = vstor_device_queue_setup(d, 0, &qc)) < 0) return rc;
  return vstor_device_set_status(d, 15);
}

/* One 4 KiB read of sector 0 in the 3-descriptor layout; returns the status byte, or -1 when
 * no used entry appeared. */
static int one_read(vstor_device *d, struct virtq *vq) {
  struct virtq_sg sg[3];
  unsigned n_out, n_in, i;
  uint16_t head;
  uint32_t len;
  vblk_write_outhdr(ram + HDR_OFF, VBLK_T_IN, 0);
  ram[HDR_OFF + 16] = 0xEE;
  vblk_sg(sg, VBLK_T_IN, gpa_of(HDR_OFF), gpa_of(DATA_OFF), 4096, gpa_of(HDR_OFF + 16), &n_out,
          &n_in);
  if (virtq_add(vq, sg, n_out, n_in, &head) != 0) return -1;
  (void)virtq_publish(vq);
  if (vstor_device_kick(d, 0) < 0) return -1;
  for (i = 0; i < 2000; i++) { /* memory: devices complete synchronously; allow workers 2 s */
    if (virtq_get_used(vq, &head, &len) == 1) return ram[HDR_OFF + 16];
    usleep(1000);
  }
  return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Cases                                                                                      */

static void null_handles(void) {
  vstor_blockdev *b = NULL;
  vstor_device *d = NULL;
  struct vstor_blockdev_info bi;
  struct vstor_device_info di;
  struct vstor_queue_config qc;
  uint64_t f;
  uint8_t s;
  uint32_t g;
  char buf[8];
  size_t len = sizeof(buf);

  begin("NULL handles are -EINVAL, naming the handle");
  memset(&bi, 0, sizeof(bi));
  bi.size = sizeof(bi);
  memset(&di, 0, sizeof(di));
  di.size = sizeof(di);
  memset(&qc, 0, sizeof(qc));
  qc.size = sizeof(qc);
  ERR(vstor_blockdev_get_info(NULL, &bi), EINVAL, "block device handle is NULL");
  ERR(vstor_blockdev_close(NULL), EINVAL, "block device handle is NULL");
  ERR(vstor_blk_new(NULL, NULL, &d), EINVAL, "block device handle is NULL");
  TRUE(d == NULL);
  ERR(vstor_device_add_memory(NULL, RAM_GPA, RAM_LEN, ram), EINVAL, "device handle is NULL");
  ERR(vstor_device_remove_memory(NULL, RAM_GPA, RAM_LEN), EINVAL, "device handle is NULL");
  ERR(vstor_device_kick(NULL, 0), EINVAL, "device handle is NULL");
  ERR(vstor_device_set_kick_fd(NULL, 0, -1), EINVAL, "device handle is NULL");
  ERR(vstor_device_set_irq_callback(NULL, NULL, NULL), EINVAL, "device handle is NULL");
  ERR(vstor_device_set_queue_irqfd(NULL, 0, -1), EINVAL, "device handle is NULL");
  ERR(vstor_device_set_config_irqfd(NULL, -1), EINVAL, "device handle is NULL");
  ERR(vstor_device_completion_fd(NULL), EINVAL, "device handle is NULL");
  ERR(vstor_device_process(NULL), EINVAL, "device handle is NULL");
  ERR(vstor_device_save(NULL, buf, &len), EINVAL, "device handle is NULL");
  ERR(vstor_device_restore(NULL, buf, sizeof(buf)), EINVAL, "device handle is NULL");
  ERR(vstor_device_free(NULL), EINVAL, "device handle is NULL");
  ERR(vstor_device_get_info(NULL, &di), EINVAL, "device handle is NULL");
  ERR(vstor_device_features(NULL, &f), EINVAL, "device handle is NULL");
  ERR(vstor_device_set_driver_features(NULL, 1ull << 32), EINVAL, "device handle is NULL");
  ERR(vstor_device_status(NULL, &s), EINVAL, "device handle is NULL");
  ERR(vstor_device_set_status(NULL, 1), EINVAL, "device handle is NULL");
  ERR(vstor_device_reset(NULL), EINVAL, "device handle is NULL");
  ERR(vstor_device_config_read(NULL, 0, buf, 4), EINVAL, "device handle is NULL");
  ERR(vstor_device_config_write(NULL, 32, buf, 1), EINVAL, "device handle is NULL");
  ERR(vstor_device_config_generation(NULL, &g), EINVAL, "device handle is NULL");
  ERR(vstor_device_queue_setup(NULL, 0, &qc), EINVAL, "device handle is NULL");
  ERR(vstor_device_queue_get(NULL, 0, &qc), EINVAL, "device handle is NULL");
  ERR(vstor_device_queue_reset(NULL, 0), EINVAL, "device handle is NULL");
  (void)b;
  end();
}

static void null_out_pointers(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);
  struct vstor_queue_config qc;

  begin("NULL out/in pointers are -EINVAL, naming the argument");
  ERR(vstor_blockdev_open("memory:64K", NULL, NULL), EINVAL, "out is NULL");
  ERR(vstor_blockdev_open(NULL, NULL, &b), EINVAL, "path is NULL");
  ERR(vstor_blk_new(b, NULL, NULL), EINVAL, "out is NULL");
  ERR(vstor_blockdev_get_info(b, NULL), EINVAL, "NULL");
  ERR(vstor_device_get_info(d, NULL), EINVAL, "NULL");
  ERR(vstor_device_features(d, NULL), EINVAL, "features is NULL");
  ERR(vstor_device_status(d, NULL), EINVAL, "status is NULL");
  ERR(vstor_device_config_generation(d, NULL), EINVAL, "generation is NULL");
  ERR(vstor_device_config_read(d, 0, NULL, 4), EINVAL, "buf is NULL");
  ERR(vstor_device_config_write(d, 32, NULL, 1), EINVAL, "buf is NULL");
  ERR(vstor_device_queue_setup(d, 0, NULL), EINVAL, "config is NULL");
  ERR(vstor_device_queue_get(d, 0, NULL), EINVAL, "NULL");
  ERR(vstor_device_save(d, NULL, NULL), EINVAL, "len is NULL");
  ERR(vstor_device_restore(d, NULL, 16), EINVAL, "buf is NULL");
  ERR(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, NULL), EINVAL, "NULL");
  /* Zero-length config accesses with a NULL buffer are fine. */
  OK(vstor_device_config_read(d, 0, NULL, 0));
  memset(&qc, 0, sizeof(qc));
  qc.size = sizeof(qc);
  OK(vstor_device_queue_get(d, 0, &qc));
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void bad_handles(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);
  vstor_device *fake_dev = (vstor_device *)(uintptr_t)0x7f0012345670ull;
  vstor_blockdev *fake_bdev = (vstor_blockdev *)(uintptr_t)0x1230ull;
  struct vstor_blockdev_info bi;
  uint8_t s;

  begin("made-up and wrong-kind handles are -EBADF");
  memset(&bi, 0, sizeof(bi));
  bi.size = sizeof(bi);
  ERR(vstor_device_kick(fake_dev, 0), EBADF, "not open");
  ERR(vstor_device_status(fake_dev, &s), EBADF, "not open");
  ERR(vstor_device_free(fake_dev), EBADF, "not open");
  ERR(vstor_blockdev_get_info(fake_bdev, &bi), EBADF, "not open");
  ERR(vstor_blockdev_close(fake_bdev), EBADF, "not open");
  /* A device handle passed as a block device and vice versa. */
  ERR(vstor_blockdev_get_info((vstor_blockdev *)d, &bi), EBADF, "block device handle");
  ERR(vstor_blockdev_close((vstor_blockdev *)d), EBADF, "block device handle");
  ERR(vstor_blk_new((vstor_blockdev *)d, NULL, &fake_dev), EBADF, "block device handle");
  ERR(vstor_device_status((vstor_device *)b, &s), EBADF, "device handle");
  ERR(vstor_device_free((vstor_device *)b), EBADF, "device handle");
  /* ... and both still work afterwards. */
  OK(vstor_device_status(d, &s));
  OK(vstor_blockdev_get_info(b, &bi));
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void double_close(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);
  uint8_t s;

  begin("double close / double free / use after free are -EBADF");
  OK(vstor_blockdev_close(b));
  ERR(vstor_blockdev_close(b), EBADF, "not open");
  ERR(vstor_blk_new(b, NULL, &d), EBADF, "not open");
  OK(vstor_device_status(d, &s)); /* the device keeps its own block device reference */
  OK(vstor_device_free(d));
  ERR(vstor_device_free(d), EBADF, "not open");
  ERR(vstor_device_status(d, &s), EBADF, "not open");
  ERR(vstor_device_kick(d, 0), EBADF, "not open");
  end();
}

static void order_of_operations(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0);
  uint64_t offered, v1 = 1ull << VIRTQ_F_VERSION_1;
  uint8_t s;
  struct virtq vq;
  struct vstor_queue_config qc;

  begin("calls out of order are -EBUSY; bad feature selections -EINVAL");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  OK(vstor_device_features(d, &offered));
  TRUE((offered & v1) != 0);
  ERR(vstor_device_kick(d, 0), EBUSY, "not live");
  ERR(vstor_device_set_driver_features(d, offered), EBUSY, "after DRIVER");
  ERR(vstor_device_set_status(d, VIRTQ_STATUS_DRIVER), EBUSY, "DRIVER before ACKNOWLEDGE");
  OK(vstor_device_set_status(d, 1));
  ERR(vstor_device_set_status(d, 1 | 8), EBUSY, "FEATURES_OK before DRIVER");
  ERR(vstor_device_set_driver_features(d, offered), EBUSY, "after DRIVER");
  OK(vstor_device_set_status(d, 3));
  ERR(vstor_device_set_status(d, 1), EBUSY, "cleared"); /* bits only cleared by reset */
  ERR(vstor_device_set_status(d, 3 | 0x40), EBUSY, "DEVICE_NEEDS_RESET");
  ERR(vstor_device_set_status(d, 3 | 4), EBUSY, "DRIVER_OK before FEATURES_OK");
  /* FEATURES_OK without any selection (so without VERSION_1). */
  ERR(vstor_device_set_status(d, 3 | 8), EINVAL, "VERSION_1");
  OK(vstor_device_status(d, &s));
  TRUE(s == 3); /* FEATURES_OK did not stick: the driver sees that and gives up */
  ERR(vstor_device_set_driver_features(d, offered & ~v1), EINVAL, "VERSION_1");
  ERR(vstor_device_set_driver_features(d, offered | (1ull << 63)), EINVAL, "did not offer");
  OK(vstor_device_set_driver_features(d, v1));
  OK(vstor_device_set_status(d, 3 | 8));
  ERR(vstor_device_set_driver_features(d, v1), EBUSY, "before FEATURES_OK");
  ERR(vstor_device_kick(d, 0), EBUSY, "not live");
  TRUE(virtq_init(&vq, ram, RAM_GPA, RING_OFF, 16) == 0);
  queue_cfg(&qc, &vq);
  OK(vstor_device_queue_setup(d, 0, &qc));
  OK(vstor_device_set_status(d, 15));
  /* Live: the queue and its size can no longer change; per-queue reset is not offered. */
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "live");
  ERR(vstor_device_queue_reset(d, 0), EINVAL, "live");
  ERR(vstor_device_set_status(d, 11), EBUSY, "cleared");
  TRUE(one_read(d, &vq) == VBLK_S_OK);
  OK(vstor_device_reset(d));
  OK(vstor_device_status(d, &s));
  TRUE(s == 0);
  ERR(vstor_device_kick(d, 0), EBUSY, "not live");
  OK(vstor_device_queue_reset(d, 0));
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void rings_outside_memory(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0);
  struct vstor_queue_config qc;
  struct virtq vq;
  uint8_t s;

  begin("rings outside registered memory: DRIVER_OK -EINVAL + DEVICE_NEEDS_RESET");
  /* No memory registered at all. */
  TRUE(bring_up(d, &vq, 16, 0) == -EINVAL);
  check_err("vstor_device_set_status()", -EINVAL, EINVAL, "not inside registered guest memory",
            __LINE__);
  OK(vstor_device_status(d, &s));
  TRUE(s == (0x0b | 0x40)); /* DRIVER_OK refused; DEVICE_NEEDS_RESET set */
  ERR(vstor_device_kick(d, 0), EBUSY, "not live");
  /* Memory registered, but the used ring straddles its end. */
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  OK(vstor_device_set_status(d, 0));
  OK(vstor_device_status(d, &s));
  TRUE(s == 0);
  OK(vstor_device_set_status(d, 1));
  OK(vstor_device_set_status(d, 3));
  OK(vstor_device_set_driver_features(d, 1ull << VIRTQ_F_VERSION_1));
  OK(vstor_device_set_status(d, 11));
  memset(&qc, 0, sizeof(qc));
  qc.size = sizeof(qc);
  qc.queue_size = 256;
  qc.desc_addr = RAM_GPA;
  qc.avail_addr = RAM_GPA + 4096;
  qc.used_addr = RAM_GPA + RAM_LEN - 64; /* 256 entries need 2054 bytes */
  qc.enabled = 1;
  OK(vstor_device_queue_setup(d, 0, &qc));
  ERR(vstor_device_set_status(d, 15), EINVAL, "not inside registered guest memory");
  OK(vstor_device_status(d, &s));
  TRUE((s & 0x40) != 0);
  /* A descriptor table below guest memory. */
  OK(vstor_device_reset(d));
  OK(vstor_device_set_status(d, 1));
  OK(vstor_device_set_status(d, 3));
  OK(vstor_device_set_driver_features(d, 1ull << VIRTQ_F_VERSION_1));
  OK(vstor_device_set_status(d, 11));
  qc.desc_addr = 0x1000;
  qc.used_addr = RAM_GPA + 8192;
  OK(vstor_device_queue_setup(d, 0, &qc));
  ERR(vstor_device_set_status(d, 15), EINVAL, "desc 0x1000");
  OK(vstor_device_status(d, &s));
  TRUE((s & 0x40) != 0);
  /* After a reset the device comes up fine. */
  TRUE(bring_up(d, &vq, 16, 0) == 0);
  TRUE(one_read(d, &vq) == VBLK_S_OK);
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void queue_setup_checks(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0);
  struct vstor_queue_config qc, back;
  struct vstor_device_info di;

  begin("queue setup: misaligned rings, bad sizes, bad queue index are -EINVAL");
  memset(&di, 0, sizeof(di));
  di.size = sizeof(di);
  OK(vstor_device_get_info(d, &di));
  TRUE(di.num_queues == 1 && di.max_queue_size == 256);
  memset(&qc, 0, sizeof(qc));
  qc.size = sizeof(qc);
  qc.queue_size = 16;
  qc.desc_addr = RAM_GPA;
  qc.avail_addr = RAM_GPA + 256;
  qc.used_addr = RAM_GPA + 512;
  qc.enabled = 1;
  OK(vstor_device_queue_setup(d, 0, &qc));
  qc.desc_addr = RAM_GPA + 8;
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "descriptor table address 0x100008");
  qc.desc_addr = RAM_GPA;
  qc.avail_addr = RAM_GPA + 257;
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "available ring address 0x100101");
  qc.avail_addr = RAM_GPA + 256;
  qc.used_addr = RAM_GPA + 514;
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "used ring address 0x100202");
  qc.used_addr = RAM_GPA + 512;
  qc.queue_size = 100;
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "size 100");
  qc.queue_size = 512;
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "size 512");
  qc.queue_size = 16;
  ERR(vstor_device_queue_setup(d, 1, &qc), EINVAL, "queue 1");
  ERR(vstor_device_queue_setup(d, 0xffff, &qc), EINVAL, "queue 65535");
  memset(&back, 0, sizeof(back));
  back.size = sizeof(back);
  ERR(vstor_device_queue_get(d, 1, &back), EINVAL, "queue 1");
  ERR(vstor_device_queue_reset(d, 7), EINVAL, "queue 7");
  ERR(vstor_device_set_kick_fd(d, 3, -1), EINVAL, "queue 3");
  ERR(vstor_device_set_queue_irqfd(d, 3, -1), EINVAL, "queue 3");
  /* The refused calls left the last good setup in place. */
  OK(vstor_device_queue_get(d, 0, &back));
  TRUE(back.queue_size == 16 && back.desc_addr == RAM_GPA && back.used_addr == RAM_GPA + 512);
  /* Size 0 means the maximum. */
  qc.queue_size = 0;
  qc.avail_addr = RAM_GPA + 4096;
  qc.used_addr = RAM_GPA + 8192;
  OK(vstor_device_queue_setup(d, 0, &qc));
  OK(vstor_device_queue_get(d, 0, &back));
  TRUE(back.queue_size == 256);
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void bad_fds(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);
  int fd;

  begin("descriptors that are not open are -EBADF");
  fd = eventfd(0, EFD_CLOEXEC);
  TRUE(fd >= 0);
  close(fd); /* now a closed number */
  ERR(vstor_device_set_kick_fd(d, 0, fd), EBADF, "not an open file descriptor");
  ERR(vstor_device_set_queue_irqfd(d, 0, fd), EBADF, "not an open file descriptor");
  ERR(vstor_device_set_config_irqfd(d, fd), EBADF, "not an open file descriptor");
  OK(vstor_device_set_kick_fd(d, 0, -1));
  OK(vstor_device_set_config_irqfd(d, -1));
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void config_space(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0);
  struct vstor_device_info di;
  uint8_t buf[128];
  uint64_t cap;

  begin("config accesses outside the config space are -EINVAL");
  memset(&di, 0, sizeof(di));
  di.size = sizeof(di);
  OK(vstor_device_get_info(d, &di));
  OK(vstor_device_config_read(d, 0, &cap, 8));
  TRUE(virtq_le64(cap) == 2048);
  OK(vstor_device_config_read(d, 0, buf, di.config_len));
  ERR(vstor_device_config_read(d, 0, buf, di.config_len + 1), EINVAL, "outside");
  ERR(vstor_device_config_read(d, di.config_len - 2, buf, 4), EINVAL, "outside");
  ERR(vstor_device_config_read(d, di.config_len, buf, 1), EINVAL, "outside");
  ERR(vstor_device_config_read(d, 0xffffffffu, buf, 4), EINVAL, "outside");
  ERR(vstor_device_config_write(d, di.config_len, buf, 1), EINVAL, "outside");
  ERR(vstor_device_config_write(d, 0xfffffffcu, buf, 8), EINVAL, "outside");
  /* Read-only fields ignore writes. */
  cap = 0;
  OK(vstor_device_config_write(d, 0, &cap, 8));
  OK(vstor_device_config_read(d, 0, &cap, 8));
  TRUE(virtq_le64(cap) == 2048);
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void memory_regions(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);

  begin("memory regions: overlaps, empty, wrapping -EINVAL; unknown removal -ENOENT");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN / 2, ram));
  ERR(vstor_device_add_memory(d, RAM_GPA, RAM_LEN / 2, ram), EINVAL, "overlaps");
  ERR(vstor_device_add_memory(d, RAM_GPA + 4096, 4096, ram), EINVAL, "overlaps");
  ERR(vstor_device_add_memory(d, RAM_GPA - 4096, 8192, ram), EINVAL, "overlaps");
  ERR(vstor_device_add_memory(d, RAM_GPA - 4096, RAM_LEN * 2, ram), EINVAL, "overlaps");
  ERR(vstor_device_add_memory(d, RAM_GPA + RAM_LEN, 0, ram), EINVAL, "length zero");
  ERR(vstor_device_add_memory(d, ~0ull - 4095, 8192, ram), EINVAL, "wraps");
  OK(vstor_device_add_memory(d, RAM_GPA + RAM_LEN / 2, RAM_LEN / 2, ram + RAM_LEN / 2));
  ERR(vstor_device_remove_memory(d, RAM_GPA, RAM_LEN), ENOENT, "no region");
  ERR(vstor_device_remove_memory(d, 0x5000000, 4096), ENOENT, "no region");
  ERR(vstor_device_remove_memory(d, RAM_GPA, RAM_LEN / 2 + 4096), ENOENT, "no region");
  OK(vstor_device_remove_memory(d, RAM_GPA, RAM_LEN / 2));
  ERR(vstor_device_remove_memory(d, RAM_GPA, RAM_LEN / 2), ENOENT, "no region");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN / 2, ram)); /* re-adding after removal */
  OK(vstor_device_remove_memory(d, RAM_GPA, RAM_LEN / 2));
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void memory_region_limit(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);
  unsigned i;
  int rc = 0;

  begin("more than VSTOR_MAX_MEMORY_REGIONS regions is -ENOSPC");
  for (i = 0; i < VSTOR_MAX_MEMORY_REGIONS && rc == 0; i++)
    rc = vstor_device_add_memory(d, RAM_GPA + (uint64_t)i * 4096, 4096, ram + i * 4096);
  TRUE(rc == 0);
  ERR(vstor_device_add_memory(d, 0x40000000, 4096, ram), ENOSPC, "512");
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

/* A struct of ours followed by 8 bytes a newer header would have. */
struct bigger_blk_config {
  struct vstor_blk_config c;
  uint64_t future;
};
struct bigger_opts {
  struct vstor_blockdev_opts o;
  uint64_t future;
};
struct bigger_qc {
  struct vstor_queue_config q;
  uint64_t future;
};
struct bigger_info {
  struct vstor_device_info i;
  uint64_t future;
};

static void struct_sizes(void) {
  vstor_blockdev *b = NULL, *b2 = NULL;
  vstor_device *d = NULL, *d2 = NULL;
  struct vstor_blockdev_opts o;
  struct vstor_blk_config c;
  struct vstor_queue_config qc;
  struct vstor_device_info di;
  struct vstor_blockdev_info bi;
  struct bigger_blk_config bc;
  struct bigger_opts bo;
  struct bigger_qc bq;
  struct bigger_info bigi;

  begin("struct size: too small -EINVAL, unknown non-zero tail -E2BIG, zero tail accepted");
  b = open_mem("memory:1M");
  memset(&o, 0, sizeof(o));
  o.size = 4;
  ERR(vstor_blockdev_open("memory:64K", &o, &b2), EINVAL, "vstor_blockdev_opts: size 4");
  o.size = 0;
  ERR(vstor_blockdev_open("memory:64K", &o, &b2), EINVAL, "vstor_blockdev_opts: size 0");
  o.size = sizeof(o) - 4;
  ERR(vstor_blockdev_open("memory:64K", &o, &b2), EINVAL, "smaller than");
  memset(&bo, 0, sizeof(bo));
  bo.o.size = sizeof(bo);
  bo.future = 0x1234;
  ERR(vstor_blockdev_open("memory:64K", &bo.o, &b2), E2BIG, "vstor_blockdev_opts");
  bo.future = 0;
  OK(vstor_blockdev_open("memory:64K", &bo.o, &b2));
  OK(vstor_blockdev_close(b2));

  memset(&c, 0, sizeof(c));
  c.size = 8;
  ERR(vstor_blk_new(b, &c, &d), EINVAL, "vstor_blk_config: size 8");
  memset(&bc, 0, sizeof(bc));
  bc.c.size = sizeof(bc);
  bc.future = ~0ull;
  ERR(vstor_blk_new(b, &bc.c, &d), E2BIG, "vstor_blk_config");
  TRUE(d == NULL);
  bc.future = 0;
  OK(vstor_blk_new(b, &bc.c, &d));

  memset(&qc, 0, sizeof(qc));
  qc.size = 12;
  ERR(vstor_device_queue_setup(d, 0, &qc), EINVAL, "vstor_queue_config: size 12");
  memset(&bq, 0, sizeof(bq));
  bq.q.size = sizeof(bq);
  bq.q.queue_size = 16;
  bq.q.desc_addr = RAM_GPA;
  bq.q.avail_addr = RAM_GPA + 256;
  bq.q.used_addr = RAM_GPA + 512;
  bq.future = 1;
  ERR(vstor_device_queue_setup(d, 0, &bq.q), E2BIG, "vstor_queue_config");
  bq.future = 0;
  OK(vstor_device_queue_setup(d, 0, &bq.q));

  /* Out-structs: too small refused, larger filled up to ours with size set to ours. */
  memset(&di, 0, sizeof(di));
  di.size = 4;
  ERR(vstor_device_get_info(d, &di), EINVAL, "vstor_device_info: size 4");
  memset(&bigi, 0xAB, sizeof(bigi));
  bigi.i.size = sizeof(bigi);
  OK(vstor_device_get_info(d, &bigi.i));
  TRUE(bigi.i.size == sizeof(struct vstor_device_info));
  TRUE(bigi.i.device_type == 2);
  TRUE(bigi.future == 0xABABABABABABABABull); /* bytes past ours untouched */
  memset(&bi, 0, sizeof(bi));
  bi.size = 2;
  ERR(vstor_blockdev_get_info(b, &bi), EINVAL, "vstor_blockdev_info: size 2");
  memset(&qc, 0, sizeof(qc));
  qc.size = 3;
  ERR(vstor_device_queue_get(d, 0, &qc), EINVAL, "vstor_queue_config: size 3");
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  (void)d2;
  end();
}

static void open_errors(void) {
  vstor_blockdev *b = NULL;
  vstor_device *d = NULL;
  struct vstor_blockdev_opts o;
  struct vstor_blk_config c;
  char path[512];

  begin("opening: missing file -ENOENT; bad format, cache, aio, flags, sizes");
  snprintf(path, sizeof(path), "%s/vstor-misuse-does-not-exist-%d.img", img_dir, (int)getpid());
  ERR(vstor_blockdev_open(path, NULL, &b), ENOENT, "vstor-misuse-does-not-exist");
  TRUE(b == NULL);
  memset(&o, 0, sizeof(o));
  o.size = sizeof(o);
  o.format = "qcow7";
  ERR(vstor_blockdev_open("memory:64K", &o, &b), ENOTSUP, "qcow7");
  o.format = "raw";
  o.cache_mode = 99;
  ERR(vstor_blockdev_open("memory:64K", &o, &b), EINVAL, "cache_mode = 99");
  o.cache_mode = VSTOR_CACHE_WRITEBACK;
  o.aio = 7;
  ERR(vstor_blockdev_open("memory:64K", &o, &b), EINVAL, "aio = 7");
  o.aio = VSTOR_AIO_AUTO;
  o.flags = 1u << 20;
  ERR(vstor_blockdev_open("memory:64K", &o, &b), EINVAL, "unknown bits 0x100000");
  o.flags = 0;
  o.reserved = 1;
  ERR(vstor_blockdev_open("memory:64K", &o, &b), EINVAL, "reserved");
  o.reserved = 0;
  o.logical_block_size = 1000;
  ERR(vstor_blockdev_open("memory:64K", &o, &b), EINVAL, "1000");
  o.logical_block_size = 0;
  ERR(vstor_blockdev_open("memory:lots", &o, &b), EINVAL, "lots");
  ERR(vstor_blockdev_open("", &o, &b), ENOENT, NULL);
  TRUE(b == NULL);

  b = open_mem("memory:64K");
  memset(&c, 0, sizeof(c));
  c.size = sizeof(c);
  c.serial = "a-serial-that-is-longer-than-20-bytes";
  ERR(vstor_blk_new(b, &c, &d), EINVAL, "serial");
  c.serial = NULL;
  c.num_queues = 300;
  ERR(vstor_blk_new(b, &c, &d), EINVAL, "num_queues");
  c.num_queues = 0;
  c.queue_size = 100;
  ERR(vstor_blk_new(b, &c, &d), EINVAL, "queue_size");
  c.queue_size = 0;
  c.max_discard_seg = 100000;
  ERR(vstor_blk_new(b, &c, &d), EINVAL, "max_discard_seg");
  c.max_discard_seg = 0;
  c.flags = 1u << 30;
  ERR(vstor_blk_new(b, &c, &d), EINVAL, "unknown bits 0x40000000");
  TRUE(d == NULL);
  OK(vstor_blockdev_close(b));
  end();
}

/* A refused restore must leave the device reset (vstor.h), whatever stage refused the blob. */
static void left_reset(vstor_device *d, const char *what) {
  uint8_t s = 0xff;
  OK(vstor_device_status(d, &s));
  if (s != 0) {
    printf("FAIL - restore refused (%s) but left the device live (status %#x)\n", what, s);
    failures++;
    OK(vstor_device_reset(d));
  }
}

static void save_restore(void) {
  vstor_blockdev *b = open_mem("memory:1M"), *b2 = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0), *d2;
  struct vstor_blk_config c;
  struct virtq vq;
  size_t len = 0, small;
  uint8_t *blob, *bad, s;
  unsigned i;

  begin("save: small buffer -ENOSPC + size; restore of a bad blob -EINVAL, device reset");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  TRUE(bring_up(d, &vq, 16, 1ull << VIRTQ_F_EVENT_IDX) == 0);
  TRUE(one_read(d, &vq) == VBLK_S_OK);
  ERR(vstor_device_save(d, NULL, &len), ENOSPC, "needs");
  TRUE(len > 16 && len < 4096);
  blob = (uint8_t *)malloc(len + 16);
  bad = (uint8_t *)malloc(len + 16);
  TRUE(blob && bad);
  if (!blob || !bad) exit(2);
  small = 10;
  ERR(vstor_device_save(d, blob, &small), ENOSPC, "buffer has 10");
  TRUE(small == len);
  small = len + 16; /* a larger buffer is fine; *len becomes the size used */
  OK(vstor_device_save(d, blob, &small));
  TRUE(small == len);

  /* Truncated blobs, every length, on a live device: refused, and the device left reset. */
  for (i = 0; i < len; i += (i < 64 ? 1 : 7)) {
    int rc = vstor_device_restore(d, blob, i);
    if (rc != -EINVAL) {
      FAIL("restore of %u of %zu bytes returned %d", i, len, rc);
      break;
    }
  }
  check_err("vstor_device_restore()", -EINVAL, EINVAL, "device state", __LINE__);
  left_reset(d, "truncated blob");
  /* Corrupt blobs, each restored over a live device. */
  OK(vstor_device_restore(d, blob, len));
  OK(vstor_device_status(d, &s));
  TRUE(s == 0x0f);
  memcpy(bad, blob, len);
  bad[0] ^= 0xff; /* magic */
  ERR(vstor_device_restore(d, bad, len), EINVAL, "magic");
  left_reset(d, "bad magic");
  OK(vstor_device_restore(d, blob, len));
  memcpy(bad, blob, len);
  bad[4] = 99; /* version */
  ERR(vstor_device_restore(d, bad, len), EINVAL, "version 99");
  left_reset(d, "newer version");
  OK(vstor_device_restore(d, blob, len));
  memcpy(bad, blob, len);
  bad[len] = 0; /* trailing byte */
  ERR(vstor_device_restore(d, bad, len + 1), EINVAL, "trailing");
  left_reset(d, "trailing bytes");
  OK(vstor_device_restore(d, blob, len));
  memcpy(bad, blob, len);
  bad[len - 1] = 7; /* virtio-blk writeback byte must be 0/1 */
  ERR(vstor_device_restore(d, bad, len), EINVAL, "writeback");
  left_reset(d, "bad device-specific state");
  memset(bad, 0x5a, len);
  ERR(vstor_device_restore(d, bad, len), EINVAL, "magic");
  ERR(vstor_device_restore(d, bad, 0), EINVAL, NULL);
  /* A device of another shape: 2 queues. */
  memset(&c, 0, sizeof(c));
  c.size = sizeof(c);
  c.num_queues = 2;
  OK(vstor_blk_new(b2, &c, &d2));
  OK(vstor_device_add_memory(d2, RAM_GPA, RAM_LEN, ram));
  ERR(vstor_device_restore(d2, blob, len), EINVAL, "queues");
  OK(vstor_device_free(d2));
  /* The good blob still restores and the queue continues. */
  OK(vstor_device_restore(d, blob, len));
  TRUE(one_read(d, &vq) == VBLK_S_OK);
  free(blob);
  free(bad);
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  OK(vstor_blockdev_close(b2));
  end();
}

/* Interrupt callbacks that call back into vstor. */
struct reentry {
  vstor_device *dev;
  vstor_device *other; /* another device: refused as well (no vstor call at all) */
  atomic_int rc_other;
  atomic_int rc;
  atomic_int calls;
  char msg[256];
};

static void reentrant_irq(void *opaque, uint32_t queue) {
  struct reentry *r = (struct reentry *)opaque;
  uint8_t s;
  int rc = vstor_device_status(r->dev, &s);
  (void)queue;
  if (atomic_load(&r->calls) == 0) atomic_store(&r->rc_other, vstor_device_status(r->other, &s));
  if (atomic_fetch_add(&r->calls, 1) == 0) {
    snprintf(r->msg, sizeof(r->msg), "%s", vstor_last_error());
    atomic_store(&r->rc, rc);
  }
}

static void reentrant_kick(void *opaque, uint32_t queue) {
  struct reentry *r = (struct reentry *)opaque;
  int rc = vstor_device_kick(r->dev, (uint16_t)queue);
  if (atomic_fetch_add(&r->calls, 1) == 0) {
    snprintf(r->msg, sizeof(r->msg), "%s", vstor_last_error());
    atomic_store(&r->rc, rc);
  }
}

static void callback_reentry(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *other = new_dev(b, 0);
  unsigned pass;

  begin("vstor calls from inside the interrupt callback are -EDEADLK (caller + worker thread)");
  for (pass = 0; pass < 2; pass++) {
    struct reentry r;
    struct virtq vq;
    vstor_device *d = new_dev(b, pass ? VSTOR_DEVICE_WORKER_THREADS : 0);
    memset(&r, 0, sizeof(r));
    r.dev = d;
    r.other = other;
    atomic_init(&r.rc_other, 1);
    atomic_init(&r.rc, 1);
    atomic_init(&r.calls, 0);
    OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
    OK(vstor_device_set_irq_callback(d, pass ? reentrant_kick : reentrant_irq, &r));
    TRUE(bring_up(d, &vq, 16, 0) == 0);
    TRUE(one_read(d, &vq) == VBLK_S_OK);
    {
      unsigned i;
      for (i = 0; i < 2000 && atomic_load(&r.calls) == 0; i++) usleep(1000);
    }
    TRUE(atomic_load(&r.calls) >= 1);
    TRUE(atomic_load(&r.rc) == -EDEADLK);
    if (pass == 0) TRUE(atomic_load(&r.rc_other) == -EDEADLK);
    if (!strstr(r.msg, pass ? "vstor_device_kick" : "vstor_device_status") ||
        !strstr(r.msg, "interrupt callback"))
      FAIL("callback saw message \"%s\"", r.msg);
    /* The device is fine afterwards. */
    OK(vstor_device_set_irq_callback(d, NULL, NULL));
    TRUE(one_read(d, &vq) == VBLK_S_OK);
    OK(vstor_device_free(d));
  }
  OK(vstor_device_free(other));
  OK(vstor_blockdev_close(b));
  end();
}

/* Hostile guest: corrupt chains must end in DEVICE_NEEDS_RESET (and a config interrupt), with
 * no used entry, no crash; a reset brings the device back. */
static atomic_uint hostile_cfg_irqs;
static void count_cfg(void *opaque, uint32_t queue) {
  (void)opaque;
  if (queue == VSTOR_IRQ_CONFIG) atomic_fetch_add(&hostile_cfg_irqs, 1);
}

enum hostile {
  H_DESC_OUTSIDE,    /* data descriptor far outside guest memory */
  H_DESC_STRADDLE,   /* data descriptor running off the end of guest memory */
  H_LOOP,            /* two descriptors pointing at each other */
  H_NEXT_RANGE,      /* next index past the table */
  H_NO_STATUS,       /* only device-readable buffers: nowhere to put the status */
  H_READ_AFTER_WRITE,/* readable descriptor after a writable one */
  H_AVAIL_AHEAD,     /* avail->idx more than a ring ahead */
  H_HEAD_RANGE,      /* avail ring entry naming a descriptor past the table */
  H_INDIRECT_NESTED, /* indirect table containing an indirect descriptor */
  H_INDIRECT_BADLEN, /* indirect table length not a multiple of 16 */
  H_COUNT
};

static const char *const hostile_names[H_COUNT] = {
    "descriptor outside guest memory", "descriptor straddling the end of guest memory",
    "descriptor loop", "next index out of range", "no writable status byte",
    "readable after writable", "avail idx a ring ahead", "head index out of range",
    "nested indirect table", "indirect table of bad length"};

static void hostile_one(vstor_blockdev *b, enum hostile h, uint32_t flags) {
  vstor_device *d = new_dev(b, flags);
  struct virtq vq;
  struct virtq_sg sg[3];
  unsigned n_out, n_in, i;
  uint16_t head = 0;
  uint8_t s = 0;
  unsigned cfg_before = atomic_load(&hostile_cfg_irqs);
  struct virtq_desc *t;

  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  OK(vstor_device_set_irq_callback(d, count_cfg, NULL));
  TRUE(bring_up(d, &vq, 16, 1ull << VIRTQ_F_INDIRECT_DESC) == 0);
  vblk_write_outhdr(ram + HDR_OFF, VBLK_T_IN, 0);
  ram[HDR_OFF + 16] = 0xEE;
  vblk_sg(sg, VBLK_T_IN, gpa_of(HDR_OFF), gpa_of(DATA_OFF), 4096, gpa_of(HDR_OFF + 16), &n_out,
          &n_in);
  switch (h) {
  case H_DESC_OUTSIDE:
    sg[1].gpa = 0x7000000000ull;
    break;
  case H_DESC_STRADDLE:
    sg[1].gpa = RAM_GPA + RAM_LEN - 2048;
    break;
  case H_NO_STATUS:
    n_out = 3;
    n_in = 0;
    break;
  case H_INDIRECT_NESTED:
  case H_INDIRECT_BADLEN:
    TRUE(virtq_add_indirect(&vq, sg, n_out, n_in, ram + HDR_OFF + 64, gpa_of(HDR_OFF + 64),
                            &head) == 0);
    t = (struct virtq_desc *)(void *)(ram + HDR_OFF + 64);
    if (h == H_INDIRECT_NESTED)
      t[1].flags = virtq_le16(VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
    else
      vq.desc[head].len = virtq_le32(40);
    break;
  default:
    break;
  }
  if (h != H_INDIRECT_NESTED && h != H_INDIRECT_BADLEN)
    TRUE(virtq_add(&vq, sg, n_out, n_in, &head) == 0);
  switch (h) {
  case H_LOOP:
    vq.desc[vq.desc[head].next].flags |= virtq_le16(VIRTQ_DESC_F_NEXT);
    vq.desc[vq.desc[vq.desc[head].next].next].next = head; /* 0 -> 1 -> 2 -> 0 */
    vq.desc[vq.desc[vq.desc[head].next].next].flags |= virtq_le16(VIRTQ_DESC_F_NEXT);
    break;
  case H_NEXT_RANGE:
    vq.desc[head].next = virtq_le16(5000);
    break;
  case H_READ_AFTER_WRITE:
    vq.desc[vq.desc[head].next].flags = virtq_le16(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
    vq.desc[vq.desc[vq.desc[head].next].next].flags = 0;
    break;
  case H_HEAD_RANGE:
    vq.avail[2] = virtq_le16(300);
    break;
  default:
    break;
  }
  (void)virtq_publish(&vq);
  if (h == H_AVAIL_AHEAD) vq.avail[1] = virtq_le16(40); /* 16-entry ring */
  OK(vstor_device_kick(d, 0));
  for (i = 0; i < 2000; i++) { /* workers: give them up to 2 s */
    OK(vstor_device_status(d, &s));
    if (s & 0x40) break;
    usleep(1000);
  }
  if (!(s & 0x40)) FAIL("%s: status %#x, expected DEVICE_NEEDS_RESET", hostile_names[h], s);
  TRUE(!virtq_more_used(&vq));
  TRUE(ram[HDR_OFF + 16] == 0xEE || h == H_DESC_STRADDLE);
  for (i = 0; i < 2000 && atomic_load(&hostile_cfg_irqs) == cfg_before; i++) usleep(1000);
  if (atomic_load(&hostile_cfg_irqs) == cfg_before)
    FAIL("%s: no configuration interrupt", hostile_names[h]);
  /* Kicking a broken queue again is harmless. */
  OK(vstor_device_kick(d, 0));
  /* The driver resets and re-initialises; the device works again. */
  TRUE(bring_up(d, &vq, 16, 0) == 0);
  OK(vstor_device_status(d, &s));
  TRUE(s == 0x0f);
  TRUE(one_read(d, &vq) == VBLK_S_OK);
  OK(vstor_device_free(d));
}

static void hostile_guest(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  unsigned h;
  char name[160];
  for (h = 0; h < H_COUNT; h++) {
    snprintf(name, sizeof(name), "hostile guest: %s -> DEVICE_NEEDS_RESET", hostile_names[h]);
    begin(name);
    hostile_one(b, (enum hostile)h, 0);
    end();
  }
  begin("hostile guest with worker threads: descriptor loop -> DEVICE_NEEDS_RESET");
  hostile_one(b, H_LOOP, VSTOR_DEVICE_WORKER_THREADS);
  end();
  OK(vstor_blockdev_close(b));
}

/* Requests the device can answer with a status (not fatal): the queue keeps working. */
static void bad_requests(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, VSTOR_BLK_READ_ONLY);
  struct virtq vq;
  struct virtq_sg sg[3];
  unsigned n_out, n_in;
  uint16_t head;
  uint32_t len;
  uint64_t f;

  begin("read-only device: writes get IOERR, WRITE_ZEROES not offered, queue keeps working");
  OK(vstor_device_features(d, &f));
  TRUE((f & (1ull << VBLK_F_RO)) != 0);
  TRUE((f & (1ull << VBLK_F_WRITE_ZEROES)) == 0 && (f & (1ull << VBLK_F_DISCARD)) == 0);
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  TRUE(bring_up(d, &vq, 16, 1ull << VBLK_F_RO) == 0);
  vblk_write_outhdr(ram + HDR_OFF, VBLK_T_OUT, 0);
  ram[HDR_OFF + 16] = 0xEE;
  vblk_sg(sg, VBLK_T_OUT, gpa_of(HDR_OFF), gpa_of(DATA_OFF), 4096, gpa_of(HDR_OFF + 16), &n_out,
          &n_in);
  TRUE(virtq_add(&vq, sg, n_out, n_in, &head) == 0);
  (void)virtq_publish(&vq);
  OK(vstor_device_kick(d, 0));
  TRUE(virtq_get_used(&vq, &head, &len) == 1);
  TRUE(ram[HDR_OFF + 16] == VBLK_S_IOERR && len == 1);
  /* WRITE_ZEROES was not negotiated: UNSUPP. */
  vblk_write_outhdr(ram + HDR_OFF, VBLK_T_WRITE_ZEROES, 0);
  vblk_write_seg(ram + DATA_OFF, 0, 8, 0);
  ram[HDR_OFF + 16] = 0xEE;
  vblk_sg(sg, VBLK_T_WRITE_ZEROES, gpa_of(HDR_OFF), gpa_of(DATA_OFF), 16, gpa_of(HDR_OFF + 16),
          &n_out, &n_in);
  TRUE(virtq_add(&vq, sg, n_out, n_in, &head) == 0);
  (void)virtq_publish(&vq);
  OK(vstor_device_kick(d, 0));
  TRUE(virtq_get_used(&vq, &head, &len) == 1);
  TRUE(ram[HDR_OFF + 16] == VBLK_S_UNSUPP);
  TRUE(one_read(d, &vq) == VBLK_S_OK);
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void kick_errors(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0), *w = new_dev(b, VSTOR_DEVICE_WORKER_THREADS);
  struct virtq vq;

  begin("kicks of queues that do not exist are -EINVAL; process in worker mode is 0");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  TRUE(bring_up(d, &vq, 16, 0) == 0);
  ERR(vstor_device_kick(d, 1), EINVAL, "queue 1");
  ERR(vstor_device_kick(w, 4), EINVAL, "queue 4");
  TRUE(vstor_device_process(d) == 0);
  TRUE(vstor_device_process(w) == 0);
  TRUE(vstor_device_completion_fd(d) >= 0);
  TRUE(vstor_device_completion_fd(w) >= 0);
  OK(vstor_device_free(w));
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

static void worker_kick_before_live(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *w = new_dev(b, VSTOR_DEVICE_WORKER_THREADS);
  struct virtq vq;
  int rc;

  begin("worker mode: kick before DRIVER_OK");
  OK(vstor_device_add_memory(w, RAM_GPA, RAM_LEN, ram));
  rc = vstor_device_kick(w, 0);
  check_err("vstor_device_kick()", rc, EBUSY, "not live", __LINE__);
  TRUE(bring_up(w, &vq, 16, 0) == 0);
  TRUE(one_read(w, &vq) == VBLK_S_OK);
  OK(vstor_device_free(w));
  OK(vstor_blockdev_close(b));
  end();
}

static void restore_without_memory(void) {
  vstor_blockdev *b = open_mem("memory:1M");
  vstor_device *d = new_dev(b, 0), *d2 = new_dev(b, 0);
  struct virtq vq;
  size_t len = 0;
  uint8_t blob[512], s = 0xff;

  begin("restore of a live state before guest memory is registered: -EINVAL, device reset");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  TRUE(bring_up(d, &vq, 16, 0) == 0);
  len = sizeof(blob);
  OK(vstor_device_save(d, blob, &len));
  ERR(vstor_device_restore(d2, blob, len), EINVAL, "not inside registered guest memory");
  OK(vstor_device_status(d2, &s));
  TRUE(s == 0);
  OK(vstor_device_add_memory(d2, RAM_GPA, RAM_LEN, ram));
  OK(vstor_device_restore(d2, blob, len));
  OK(vstor_device_status(d2, &s));
  TRUE(s == 0x0f);
  TRUE(one_read(d2, &vq) == VBLK_S_OK);
  OK(vstor_device_free(d));
  OK(vstor_device_free(d2));
  OK(vstor_blockdev_close(b));
  end();
}

/* The last registered region can be removed (guest memory is then empty). */
static void remove_last_region(void) {
  vstor_blockdev *b = open_mem("memory:64K");
  vstor_device *d = new_dev(b, 0);
  int rc;

  begin("removing the only memory region");
  OK(vstor_device_add_memory(d, RAM_GPA, RAM_LEN, ram));
  rc = vstor_device_remove_memory(d, RAM_GPA, RAM_LEN);
  OK(rc);
  ERR(vstor_device_remove_memory(d, RAM_GPA, RAM_LEN), ENOENT, "no region");
  OK(vstor_device_free(d));
  OK(vstor_blockdev_close(b));
  end();
}

int main(int argc, char **argv) {
  if (argc > 1) img_dir = argv[1];
  setvbuf(stdout, NULL, _IOLBF, 0);
  ram = (uint8_t *)mmap(NULL, RAM_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                        0);
  if (ram == MAP_FAILED) return 2;

  begin("vstor_last_error() is \"\" before any failure");
  TRUE(vstor_last_error() != NULL && vstor_last_error()[0] == 0);
  end();

  null_handles();
  null_out_pointers();
  bad_handles();
  double_close();
  order_of_operations();
  rings_outside_memory();
  queue_setup_checks();
  bad_fds();
  config_space();
  memory_regions();
  memory_region_limit();
  struct_sizes();
  open_errors();
  save_restore();
  callback_reentry();
  kick_errors();
  bad_requests();
  hostile_guest();
  worker_kick_before_live();
  restore_without_memory();
  remove_last_region();

  munmap(ram, RAM_LEN);
  printf("misuse: %d cases passed, %d check(s) failed\n", passed, failures);
  return failures ? 1 : 0;
}
