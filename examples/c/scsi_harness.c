/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * scsi_harness.c - a minimal "hypervisor" in C driving a libvstor virtio-scsi device the way
 * the Linux virtio_scsi driver would, in polling mode (requests run inside vstor_device_kick;
 * events are collected by polling vstor_device_completion_fd and calling
 * vstor_device_process).
 *
 *   scsi_harness IMAGE
 *
 * IMAGE is an existing raw image (1..64 MiB, a multiple of 64 KiB; e.g. `truncate -s 4M`): its
 * contents are overwritten in part and compared at the end (pread from C).
 *
 * Steps:
 *  1. API misuse with negative errno and a vstor_last_error() naming the problem: NULL
 *     pointers, wrong struct sizes, unknown flags, bad options, a stale block device handle,
 *     vstor_scsi_attach on a virtio-blk device, LUNs out of range or taken.
 *  2. A device with two units attached before the driver starts: target 0 LUN 0 on IMAGE
 *     (serial "disk0"), target 0 LUN 1 on memory:4M (own vendor / product / revision).
 *  3. Driver bring-up (features VERSION_1 | HOTPLUG | CHANGE), configuration space, control /
 *     event / request queues laid out in the harness's own guest RAM; event buffers posted.
 *  4. Commands on the request queue: INQUIRY (standard and VPD 80h), REPORT LUNS, TEST UNIT
 *     READY (power-on unit attention first, then GOOD), READ CAPACITY(10), WRITE(10) and
 *     READ(10) of a pattern on both units, a LUN with no unit, an unknown opcode.
 *  5. Hotplug while live: target 1 LUN 5 attached -> TRANSPORT_RESET / RESCAN event; it
 *     answers INQUIRY; resized (vstor_scsi_lun_resized) -> PARAM_CHANGE event, CAPACITY DATA
 *     HAS CHANGED, new READ CAPACITY; detached -> TRANSPORT_RESET / REMOVED event, then
 *     BAD_TARGET. A CD-ROM unit attached and detached on the way.
 *  6. Reset, free, and the image file checked against what was written.
 * Exit status 0 only if every check passed.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vstor.h"
#include "virtq.h"

#define CHECK(call)                                                                          \
  do {                                                                                       \
    int rc_ = (call);                                                                        \
    if (rc_ < 0) {                                                                           \
      fprintf(stderr, "scsi_harness: %s:%d: %s returned %d (%s): %s\n", __FILE__, __LINE__,  \
              #call, rc_, strerror(-rc_), vstor_last_error());                               \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

#define EXPECT(cond, ...)                                                                    \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "scsi_harness: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                          \
      fprintf(stderr, " (vstor_last_error: \"%s\")\n", vstor_last_error());                  \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

/* A call that must fail with -err and a message containing `what`. */
static unsigned n_misuse;
#define EXPECT_ERR(call, err, what)                                                          \
  do {                                                                                       \
    int rc_ = (call);                                                                        \
    EXPECT(rc_ == -(err), "%s returned %d, expected %d (%s)", #call, rc_, -(err),            \
           strerror(err));                                                                   \
    EXPECT(strstr(vstor_last_error(), (what)) != NULL, "%s: message lacks \"%s\"", #call,    \
           (what));                                                                          \
    n_misuse++;                                                                              \
  } while (0)

/* ------------------------------------------------------------------------------------------ */
/* virtio-scsi wire format (VIRTIO 1.2 §5.6)                                                  */

#define VSCSI_ID 8
#define VSCSI_F_INOUT 0
#define VSCSI_F_HOTPLUG 1
#define VSCSI_F_CHANGE 2
#define VSCSI_Q_CONTROL 0
#define VSCSI_Q_EVENT 1
#define VSCSI_Q_REQUEST 2
#define VSCSI_CDB_SIZE 32
#define VSCSI_SENSE_SIZE 96
#define VSCSI_REQ_BYTES (19 + VSCSI_CDB_SIZE)
#define VSCSI_RESP_BYTES (12 + VSCSI_SENSE_SIZE)
#define VSCSI_S_OK 0
#define VSCSI_S_BAD_TARGET 3
#define VSCSI_T_TRANSPORT_RESET 1
#define VSCSI_T_PARAM_CHANGE 3
#define VSCSI_EVT_RESET_RESCAN 1
#define VSCSI_EVT_RESET_REMOVED 2
/* Configuration space offsets. */
#define VSCSI_CFG_NUM_QUEUES 0
#define VSCSI_CFG_EVENT_INFO_SIZE 16
#define VSCSI_CFG_SENSE_SIZE 20
#define VSCSI_CFG_CDB_SIZE 24
#define VSCSI_CFG_MAX_TARGET 30
#define VSCSI_CFG_MAX_LUN 32

#define SAM_GOOD 0x00
#define SAM_CHECK_CONDITION 0x02

/* ------------------------------------------------------------------------------------------ */
/* Guest RAM                                                                                  */

#define RAM_GPA 0x100000ull
#define RAM_LEN (4ull << 20)
#define QSIZE 64u
#define RING_OFF(q) (0x4000ull * (q))
#define EVT_OFF 0x10000ull   /* event buffers, 16 bytes each */
#define N_EVT 8u
#define REQ_OFF 0x11000ull   /* virtio_scsi_cmd_req */
#define RESP_OFF 0x11100ull  /* virtio_scsi_cmd_resp */
#define DOUT_OFF 0x20000ull  /* data-out buffer, 128 KiB */
#define DIN_OFF 0x40000ull   /* data-in buffer, 128 KiB */
#define BUF_MAX 0x20000u

static uint8_t *ram;

static uint64_t gpa(uint64_t off) { return RAM_GPA + off; }

/* ------------------------------------------------------------------------------------------ */
/* Interrupts (callback: runs on the caller's thread in polling mode)                          */

static unsigned irq_count[3], irq_config;

static void irq_callback(void *opaque, uint32_t queue) {
  (void)opaque;
  if (queue == VSTOR_IRQ_CONFIG)
    irq_config++;
  else if (queue < 3)
    irq_count[queue]++;
}

/* ------------------------------------------------------------------------------------------ */
/* Driver                                                                                     */

struct drv {
  vstor_device *dev;
  struct virtq vq[3];
  uint64_t features;
  uint16_t evt_head[N_EVT]; /* head descriptor -> event buffer index */
  int evt_of_head[QSIZE];
  unsigned n_cmds, n_events;
};

static void post_event_buffer(struct drv *d, unsigned i) {
  struct virtq_sg sg = {gpa(EVT_OFF + 16ull * i), 16};
  uint16_t head;
  memset(ram + EVT_OFF + 16ull * i, 0xEE, 16);
  EXPECT(virtq_add(&d->vq[VSCSI_Q_EVENT], &sg, 0, 1, &head) == 0, "event virtq_add");
  d->evt_of_head[head] = (int)i;
}

static void driver_init(struct drv *d) {
  uint8_t status;
  uint64_t offered, want;
  struct vstor_device_info info;
  uint32_t v32;
  uint16_t v16, q;

  CHECK(vstor_device_set_status(d->dev, 0));
  CHECK(vstor_device_set_status(d->dev, VIRTQ_STATUS_ACKNOWLEDGE));
  CHECK(vstor_device_set_status(d->dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER));
  CHECK(vstor_device_features(d->dev, &offered));
  want = (1ull << VIRTQ_F_VERSION_1) | (1ull << VSCSI_F_HOTPLUG) | (1ull << VSCSI_F_CHANGE);
  EXPECT((offered & want) == want && (offered & (1ull << VSCSI_F_INOUT)),
         "features offered %#" PRIx64, offered);
  d->features = want;
  CHECK(vstor_device_set_driver_features(d->dev, d->features));
  CHECK(vstor_device_set_status(
      d->dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER | VIRTQ_STATUS_FEATURES_OK));
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status & VIRTQ_STATUS_FEATURES_OK, "FEATURES_OK did not stick (%#x)", status);

  info.size = sizeof(info);
  CHECK(vstor_device_get_info(d->dev, &info));
  EXPECT(info.device_type == VSCSI_ID && info.num_queues == 3 && info.config_len == 36 &&
             info.max_queue_size == 128,
         "device info: type %u queues %u config_len %u max_queue_size %u", info.device_type,
         info.num_queues, info.config_len, info.max_queue_size);
  CHECK(vstor_device_config_read(d->dev, VSCSI_CFG_NUM_QUEUES, &v32, 4));
  EXPECT(virtq_le32(v32) == 1, "config num_queues %u", virtq_le32(v32));
  CHECK(vstor_device_config_read(d->dev, VSCSI_CFG_EVENT_INFO_SIZE, &v32, 4));
  EXPECT(virtq_le32(v32) == 16, "event_info_size %u", virtq_le32(v32));
  CHECK(vstor_device_config_read(d->dev, VSCSI_CFG_SENSE_SIZE, &v32, 4));
  EXPECT(virtq_le32(v32) == VSCSI_SENSE_SIZE, "sense_size %u", virtq_le32(v32));
  CHECK(vstor_device_config_read(d->dev, VSCSI_CFG_CDB_SIZE, &v32, 4));
  EXPECT(virtq_le32(v32) == VSCSI_CDB_SIZE, "cdb_size %u", virtq_le32(v32));
  CHECK(vstor_device_config_read(d->dev, VSCSI_CFG_MAX_TARGET, &v16, 2));
  EXPECT(virtq_le16(v16) == 255, "max_target %u", virtq_le16(v16));
  CHECK(vstor_device_config_read(d->dev, VSCSI_CFG_MAX_LUN, &v32, 4));
  EXPECT(virtq_le32(v32) == 16383, "max_lun %u", virtq_le32(v32));
  EXPECT_ERR(vstor_device_config_read(d->dev, 34, &v32, 4), EINVAL, "");

  for (q = 0; q < 3; q++) {
    struct vstor_queue_config qc;
    EXPECT(virtq_init(&d->vq[q], ram, RAM_GPA, RING_OFF(q), QSIZE) == 0, "virtq_init");
    memset(&qc, 0, sizeof(qc));
    qc.size = sizeof(qc);
    qc.queue_size = QSIZE;
    qc.desc_addr = virtq_desc_gpa(&d->vq[q]);
    qc.avail_addr = virtq_avail_gpa(&d->vq[q]);
    qc.used_addr = virtq_used_gpa(&d->vq[q]);
    qc.enabled = 1;
    CHECK(vstor_device_queue_setup(d->dev, q, &qc));
  }
  CHECK(vstor_device_set_status(d->dev, VIRTQ_STATUS_ACKNOWLEDGE | VIRTQ_STATUS_DRIVER |
                                            VIRTQ_STATUS_FEATURES_OK | VIRTQ_STATUS_DRIVER_OK));
  CHECK(vstor_device_status(d->dev, &status));
  EXPECT(status == 0x0f, "status after DRIVER_OK %#x", status);

  /* virtscsi_kick_event_all: every event buffer posted up front. */
  for (q = 0; q < N_EVT; q++) post_event_buffer(d, q);
  if (virtq_publish(&d->vq[VSCSI_Q_EVENT])) CHECK(vstor_device_kick(d->dev, VSCSI_Q_EVENT));
  EXPECT(!virtq_more_used(&d->vq[VSCSI_Q_EVENT]), "an event before any hotplug");
}

/* Polls the completion fd (up to `ms`) and lets vstor handle what is ready. */
static void poll_device(struct drv *d, int ms) {
  struct pollfd p;
  int fd = vstor_device_completion_fd(d->dev);
  CHECK(fd);
  p.fd = fd;
  p.events = POLLIN;
  p.revents = 0;
  if (poll(&p, 1, ms) > 0) CHECK(vstor_device_process(d->dev));
}

struct event {
  uint32_t event;
  uint8_t lun[8];
  uint32_t reason;
};

/* Waits for the next event in the event queue (delivered through the completion fd), and
 * reposts its buffer as the Linux driver does. */
static struct event next_event(struct drv *d) {
  struct virtq *vq = &d->vq[VSCSI_Q_EVENT];
  unsigned before = irq_count[VSCSI_Q_EVENT], i;
  uint16_t head;
  uint32_t len;
  struct event e;
  const uint8_t *b;
  for (i = 0; i < 50 && !virtq_more_used(vq); i++) poll_device(d, 100);
  EXPECT(virtq_get_used(vq, &head, &len) == 1, "no event arrived in the event queue");
  EXPECT(len == 16, "event used length %u", len);
  EXPECT(irq_count[VSCSI_Q_EVENT] > before, "no event queue interrupt");
  EXPECT(head < QSIZE && d->evt_of_head[head] >= 0, "event head %u", head);
  b = ram + EVT_OFF + 16ull * (unsigned)d->evt_of_head[head];
  memcpy(&e.event, b, 4);
  memcpy(e.lun, b + 4, 8);
  memcpy(&e.reason, b + 12, 4);
  e.event = virtq_le32(e.event);
  e.reason = virtq_le32(e.reason);
  post_event_buffer(d, (unsigned)d->evt_of_head[head]);
  if (virtq_publish(vq)) CHECK(vstor_device_kick(d->dev, VSCSI_Q_EVENT));
  d->n_events++;
  return e;
}

static void expect_event(struct drv *d, uint32_t type, uint8_t target, uint16_t lun,
                         uint32_t reason) {
  struct event e = next_event(d);
  /* Events carry the LUN as REPORT LUNS lists it: peripheral addressing below 256. */
  uint8_t want[8] = {1, target, (uint8_t)(lun < 256 ? 0 : 0x40 | (lun >> 8)), (uint8_t)lun,
                     0, 0, 0, 0};
  EXPECT(e.event == type && e.reason == reason && memcmp(e.lun, want, 8) == 0,
         "event %#x reason %#x lun %02x %02x %02x %02x; expected %#x reason %#x target %u lun %u",
         e.event, e.reason, e.lun[0], e.lun[1], e.lun[2], e.lun[3], type, reason, target, lun);
}

struct result {
  uint8_t response, status;
  uint32_t resid, sense_len;
  uint8_t sense[VSCSI_SENSE_SIZE];
  uint8_t key, asc, ascq;
};

/* One command on the request queue: [req][data-out] -> [resp][data-in]. */
static struct result cmd(struct drv *d, uint8_t target, uint16_t lun, const uint8_t *cdb,
                         unsigned cdb_len, const void *dout, uint32_t out_len, uint32_t in_len) {
  struct virtq *vq = &d->vq[VSCSI_Q_REQUEST];
  uint8_t *req = ram + REQ_OFF, *resp = ram + RESP_OFF;
  struct virtq_sg sg[4];
  unsigned n_out = 0, n_in = 0, i;
  uint16_t head, used_head;
  uint32_t used_len;
  uint64_t tag = ++d->n_cmds;
  struct result r;

  EXPECT(out_len <= BUF_MAX && in_len <= BUF_MAX && cdb_len <= VSCSI_CDB_SIZE, "cmd sizes");
  memset(req, 0, VSCSI_REQ_BYTES);
  req[0] = 1;
  req[1] = target;
  req[2] = (uint8_t)(0x40 | (lun >> 8)); /* flat space addressing, as Linux sends it */
  req[3] = (uint8_t)lun;
  for (i = 0; i < 8; i++) req[8 + i] = (uint8_t)(tag >> (8 * i));
  memcpy(req + 19, cdb, cdb_len);
  memset(resp, 0xEE, VSCSI_RESP_BYTES);
  memset(ram + DIN_OFF, 0xA5, in_len);
  if (out_len) memcpy(ram + DOUT_OFF, dout, out_len);
  sg[n_out++] = (struct virtq_sg){gpa(REQ_OFF), VSCSI_REQ_BYTES};
  if (out_len) sg[n_out++] = (struct virtq_sg){gpa(DOUT_OFF), out_len};
  sg[n_out + n_in++] = (struct virtq_sg){gpa(RESP_OFF), VSCSI_RESP_BYTES};
  if (in_len) sg[n_out + n_in++] = (struct virtq_sg){gpa(DIN_OFF), in_len};
  EXPECT(virtq_add(vq, sg, n_out, n_in, &head) == 0, "virtq_add");
  if (virtq_publish(vq)) CHECK(vstor_device_kick(d->dev, VSCSI_Q_REQUEST));
  for (i = 0; i < 50 && !virtq_more_used(vq); i++) poll_device(d, 100);
  EXPECT(virtq_get_used(vq, &used_head, &used_len) == 1 && used_head == head,
         "command %#x: not completed (head %u)", cdb[0], head);
  memset(&r, 0, sizeof(r));
  memcpy(&r.sense_len, resp, 4);
  memcpy(&r.resid, resp + 4, 4);
  r.sense_len = virtq_le32(r.sense_len);
  r.resid = virtq_le32(r.resid);
  r.status = resp[10];
  r.response = resp[11];
  EXPECT(r.sense_len <= VSCSI_SENSE_SIZE, "sense_len %u", r.sense_len);
  memcpy(r.sense, resp + 12, r.sense_len);
  if (r.sense_len >= 14 && (r.sense[0] & 0x7f) == 0x70) {
    r.key = r.sense[2] & 0x0f;
    r.asc = r.sense[12];
    r.ascq = r.sense[13];
  }
  EXPECT(used_len >= VSCSI_RESP_BYTES || r.response != VSCSI_S_OK,
         "used length %u below the response size", used_len);
  return r;
}

static void expect_good(const struct result *r, const char *what) {
  EXPECT(r->response == VSCSI_S_OK && r->status == SAM_GOOD,
         "%s: response %u status %#x sense %x/%02x/%02x", what, r->response, r->status, r->key,
         r->asc, r->ascq);
}

static void expect_sense(const struct result *r, uint8_t key, uint8_t asc, uint8_t ascq,
                         const char *what) {
  EXPECT(r->response == VSCSI_S_OK && r->status == SAM_CHECK_CONDITION && r->key == key &&
             r->asc == asc && r->ascq == ascq,
         "%s: response %u status %#x sense %x/%02x/%02x, expected CHECK CONDITION %x/%02x/%02x",
         what, r->response, r->status, r->key, r->asc, r->ascq, key, asc, ascq);
}

static uint32_t be32(const uint8_t *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void put_be32(uint8_t *b, uint32_t v) {
  b[0] = (uint8_t)(v >> 24);
  b[1] = (uint8_t)(v >> 16);
  b[2] = (uint8_t)(v >> 8);
  b[3] = (uint8_t)v;
}

static struct result inquiry(struct drv *d, uint8_t t, uint16_t l, int evpd, uint8_t page) {
  uint8_t cdb[6] = {0x12, (uint8_t)(evpd ? 1 : 0), page, 0, 96, 0};
  return cmd(d, t, l, cdb, 6, NULL, 0, 96);
}

static void test_unit_ready_clears(struct drv *d, uint8_t t, uint16_t l, const uint8_t *ascs,
                                   unsigned n) {
  uint8_t cdb[6] = {0};
  unsigned i;
  struct result r;
  for (i = 0; i < n; i++) {
    r = cmd(d, t, l, cdb, 6, NULL, 0, 0);
    expect_sense(&r, 0x6, ascs[2 * i], ascs[2 * i + 1], "TEST UNIT READY (unit attention)");
  }
  r = cmd(d, t, l, cdb, 6, NULL, 0, 0);
  expect_good(&r, "TEST UNIT READY");
}

/* READ CAPACITY(10): returns the number of blocks, checks the block size. */
static uint64_t read_capacity(struct drv *d, uint8_t t, uint16_t l, uint32_t block) {
  uint8_t cdb[10] = {0x25};
  struct result r = cmd(d, t, l, cdb, 10, NULL, 0, 8);
  expect_good(&r, "READ CAPACITY(10)");
  EXPECT(be32(ram + DIN_OFF + 4) == block, "block size %u", be32(ram + DIN_OFF + 4));
  return (uint64_t)be32(ram + DIN_OFF) + 1;
}

static uint8_t pattern(uint64_t off, unsigned seed) {
  uint64_t x = off * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (uint8_t)(x ^ (x >> 17));
}

/* WRITE(10) `blocks` 512-byte blocks of a pattern at `lba`, READ(10) them back, compare; the
 * written bytes also go to `shadow` (if not NULL). */
static void write_read(struct drv *d, uint8_t t, uint16_t l, uint32_t lba, uint16_t blocks,
                       unsigned seed, uint8_t *shadow) {
  uint32_t len = blocks * 512u, i;
  uint8_t *buf = (uint8_t *)malloc(len);
  uint8_t cdb[10] = {0};
  struct result r;
  EXPECT(buf != NULL, "malloc");
  for (i = 0; i < len; i++) buf[i] = pattern((uint64_t)lba * 512 + i, seed);
  cdb[0] = 0x2a; /* WRITE(10) */
  put_be32(cdb + 2, lba);
  cdb[7] = (uint8_t)(blocks >> 8);
  cdb[8] = (uint8_t)blocks;
  r = cmd(d, t, l, cdb, 10, buf, len, 0);
  expect_good(&r, "WRITE(10)");
  cdb[0] = 0x28; /* READ(10) */
  r = cmd(d, t, l, cdb, 10, NULL, 0, len);
  expect_good(&r, "READ(10)");
  EXPECT(r.resid == 0, "READ(10) resid %u", r.resid);
  EXPECT(memcmp(ram + DIN_OFF, buf, len) == 0, "READ(10) of target %u LUN %u LBA %u: data differ",
         t, l, lba);
  if (shadow) memcpy(shadow + (uint64_t)lba * 512, buf, len);
  free(buf);
}

static vstor_blockdev *open_bdev(const char *path, const char *format) {
  struct vstor_blockdev_opts o;
  vstor_blockdev *b = NULL;
  memset(&o, 0, sizeof(o));
  o.size = sizeof(o);
  o.format = format;
  CHECK(vstor_blockdev_open(path, &o, &b));
  return b;
}

/* ------------------------------------------------------------------------------------------ */
/* Misuse                                                                                     */

static void misuse(void) {
  vstor_device *dev = NULL, *blk = NULL;
  vstor_blockdev *mem = open_bdev("memory:1M", NULL), *stale = open_bdev("memory:1M", NULL);
  struct vstor_scsi_config cfg;
  struct vstor_lun_opts lo;
  struct {
    struct vstor_lun_opts o;
    uint64_t extra;
  } big;

  CHECK(vstor_blockdev_close(stale));
  memset(&cfg, 0, sizeof(cfg));
  cfg.size = sizeof(cfg);
  EXPECT_ERR(vstor_scsi_new(&cfg, NULL), EINVAL, "out is NULL");
  cfg.size = 4;
  EXPECT_ERR(vstor_scsi_new(&cfg, &dev), EINVAL, "vstor_scsi_config: size 4");
  cfg.size = sizeof(cfg);
  cfg.flags = 1u << 20;
  EXPECT_ERR(vstor_scsi_new(&cfg, &dev), EINVAL, "vstor_scsi_config.flags");
  cfg.flags = 0;
  cfg.num_queues = 300;
  EXPECT_ERR(vstor_scsi_new(&cfg, &dev), EINVAL, "vstor_scsi_config.num_queues");
  cfg.num_queues = 0;
  cfg.queue_size = 100;
  EXPECT_ERR(vstor_scsi_new(&cfg, &dev), EINVAL, "vstor_scsi_config.queue_size");
  cfg.queue_size = 0;
  cfg.max_sectors = 1u << 20;
  EXPECT_ERR(vstor_scsi_new(&cfg, &dev), EINVAL, "vstor_scsi_config.max_sectors");
  cfg.max_sectors = 0;
  EXPECT(dev == NULL, "a failed vstor_scsi_new stored a handle");
  CHECK(vstor_scsi_new(&cfg, &dev));

  /* Not a virtio-scsi device, NULL and stale handles. */
  CHECK(vstor_blk_new(mem, NULL, &blk));
  EXPECT_ERR(vstor_scsi_attach(blk, 0, 0, mem, NULL), EINVAL, "not a virtio-scsi device");
  EXPECT_ERR(vstor_scsi_detach(blk, 0, 0), EINVAL, "not a virtio-scsi device");
  EXPECT_ERR(vstor_scsi_lun_resized(blk, 0, 0, mem), EINVAL, "not a virtio-scsi device");
  CHECK(vstor_device_free(blk));
  EXPECT_ERR(vstor_scsi_attach(blk, 0, 0, mem, NULL), EBADF, "device handle");
  EXPECT_ERR(vstor_scsi_attach(NULL, 0, 0, mem, NULL), EINVAL, "device handle is NULL");
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, NULL, NULL), EINVAL, "block device handle is NULL");
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, stale, NULL), EBADF, "block device handle");
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, (vstor_blockdev *)(void *)dev, NULL), EBADF,
             "not a block device handle");

  /* LUN range, option structs. */
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 16384, mem, NULL), EINVAL, "lun 16384 is out of range");
  EXPECT_ERR(vstor_scsi_detach(dev, 0, 0xffff), EINVAL, "lun 65535 is out of range");
  memset(&lo, 0, sizeof(lo));
  lo.size = 8;
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts: size 8");
  lo.size = sizeof(lo);
  lo.flags = 0x80;
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.flags");
  lo.flags = 0;
  lo.serial = "has space";
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.serial");
  lo.serial = "";
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.serial");
  lo.serial = NULL;
  lo.vendor = "TOO LONG VENDOR";
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.vendor");
  lo.vendor = NULL;
  lo.product = "product\x01";
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.product");
  lo.product = NULL;
  lo.revision = "12345";
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.revision");
  lo.revision = NULL;
  lo.flags = VSTOR_LUN_CDROM;
  lo.pr_file = "/nonexistent/x.pr";
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EINVAL, "vstor_lun_opts.pr_file");
  lo.pr_file = NULL;
  lo.flags = 0;
  /* A newer caller's larger struct: accepted when the unknown tail is zero only. */
  memset(&big, 0, sizeof(big));
  big.o.size = sizeof(big);
  big.extra = 1;
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &big.o), E2BIG, "vstor_lun_opts: size");
  big.extra = 0;
  CHECK(vstor_scsi_attach(dev, 0, 0, mem, &big.o));
  EXPECT_ERR(vstor_scsi_attach(dev, 0, 0, mem, &lo), EEXIST, "target 0 LUN 0 is already attached");
  EXPECT_ERR(vstor_scsi_detach(dev, 0, 1), ENOENT, "LUN 1");
  EXPECT_ERR(vstor_scsi_detach(dev, 7, 0), ENOENT, "target 7");
  EXPECT_ERR(vstor_scsi_lun_resized(dev, 0, 1, mem), ENOENT, "no unit attached");
  EXPECT_ERR(vstor_scsi_lun_resized(dev, 0, 0, stale), EBADF, "block device handle");
  /* A CD-ROM: its capacity is the disc's. */
  lo.flags = VSTOR_LUN_CDROM;
  CHECK(vstor_scsi_attach(dev, 255, 16383, mem, &lo));
  EXPECT_ERR(vstor_scsi_lun_resized(dev, 255, 16383, mem), EINVAL, "CD-ROM");
  CHECK(vstor_scsi_detach(dev, 255, 16383));
  CHECK(vstor_scsi_detach(dev, 0, 0));
  CHECK(vstor_blockdev_close(mem));
  CHECK(vstor_device_free(dev));
  EXPECT_ERR(vstor_scsi_detach(dev, 0, 0), EBADF, "device handle");
  printf("scsi_harness: misuse: %u calls refused with the right errno and message\n", n_misuse);
}

/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
  struct drv d;
  struct vstor_scsi_config cfg;
  struct vstor_lun_opts lo;
  vstor_blockdev *file, *mem;
  struct result r;
  struct stat st;
  uint64_t disk_bytes, blocks;
  uint8_t *shadow, *ondisk;
  int fd;
  unsigned i;
  static const uint8_t power_on[] = {0x29, 0x00};
  static const uint8_t power_on_then_capacity[] = {0x29, 0x00, 0x2a, 0x09};

  if (argc != 2) {
    fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  EXPECT(fd >= 0, "open %s: %s", argv[1], strerror(errno));
  EXPECT(fstat(fd, &st) == 0 && st.st_size >= (1 << 20) && st.st_size <= (64 << 20) &&
             st.st_size % 65536 == 0,
         "%s: want a raw image of 1..64 MiB, a multiple of 64 KiB", argv[1]);
  disk_bytes = (uint64_t)st.st_size;
  shadow = (uint8_t *)malloc(disk_bytes);
  ondisk = (uint8_t *)malloc(disk_bytes);
  EXPECT(shadow && ondisk, "malloc");
  EXPECT(pread(fd, shadow, disk_bytes, 0) == (ssize_t)disk_bytes, "pread");

  misuse();

  ram = (uint8_t *)mmap(NULL, RAM_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                        0);
  EXPECT(ram != MAP_FAILED, "mmap: %s", strerror(errno));
  memset(&d, 0, sizeof(d));
  for (i = 0; i < QSIZE; i++) d.evt_of_head[i] = -1;

  /* 2. The device and its first two units. */
  memset(&cfg, 0, sizeof(cfg));
  cfg.size = sizeof(cfg);
  cfg.num_queues = 1;
  cfg.queue_size = 128;
  CHECK(vstor_scsi_new(&cfg, &d.dev));
  CHECK(vstor_device_add_memory(d.dev, RAM_GPA, RAM_LEN, ram));
  CHECK(vstor_device_set_irq_callback(d.dev, irq_callback, NULL));
  file = open_bdev(argv[1], "raw");
  mem = open_bdev("memory:4M", NULL);
  memset(&lo, 0, sizeof(lo));
  lo.size = sizeof(lo);
  lo.serial = "disk0";
  CHECK(vstor_scsi_attach(d.dev, 0, 0, file, &lo));
  lo.serial = NULL; /* vstor-0-1 */
  lo.vendor = "ACME";
  lo.product = "Memory Disk";
  lo.revision = "2.0";
  lo.wwn = 0x6001405abcdef012ull;
  CHECK(vstor_scsi_attach(d.dev, 0, 1, mem, &lo));
  CHECK(vstor_blockdev_close(file)); /* the units hold their own references */
  CHECK(vstor_blockdev_close(mem));

  /* 3. The driver. */
  driver_init(&d);

  /* 4. Commands. */
  r = inquiry(&d, 0, 0, 0, 0);
  expect_good(&r, "INQUIRY");
  EXPECT((ram[DIN_OFF] & 0x1f) == 0 && memcmp(ram + DIN_OFF + 8, "VSTOR   ", 8) == 0 &&
             memcmp(ram + DIN_OFF + 16, "VSTOR DISK      ", 16) == 0,
         "INQUIRY LUN 0: type %#x vendor %.8s product %.16s", ram[DIN_OFF], ram + DIN_OFF + 8,
         ram + DIN_OFF + 16);
  r = inquiry(&d, 0, 0, 1, 0x80);
  expect_good(&r, "INQUIRY VPD 80h");
  EXPECT(ram[DIN_OFF + 1] == 0x80 && ram[DIN_OFF + 3] == 5 &&
             memcmp(ram + DIN_OFF + 4, "disk0", 5) == 0,
         "VPD 80h of LUN 0: length %u", ram[DIN_OFF + 3]);
  r = inquiry(&d, 0, 1, 0, 0);
  expect_good(&r, "INQUIRY LUN 1");
  EXPECT(memcmp(ram + DIN_OFF + 8, "ACME    ", 8) == 0 &&
             memcmp(ram + DIN_OFF + 16, "Memory Disk     ", 16) == 0 &&
             memcmp(ram + DIN_OFF + 32, "2.0 ", 4) == 0,
         "INQUIRY LUN 1: vendor %.8s product %.16s revision %.4s", ram + DIN_OFF + 8,
         ram + DIN_OFF + 16, ram + DIN_OFF + 32);
  r = inquiry(&d, 0, 1, 1, 0x80);
  expect_good(&r, "INQUIRY VPD 80h LUN 1");
  EXPECT(ram[DIN_OFF + 3] == 9 && memcmp(ram + DIN_OFF + 4, "vstor-0-1", 9) == 0,
         "default serial of LUN 1: %.*s", ram[DIN_OFF + 3], ram + DIN_OFF + 4);
  {
    uint8_t cdb[12] = {0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}; /* REPORT LUNS, 256 bytes */
    static const uint8_t want[] = {0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                   0, 1, 0, 0, 0, 0, 0, 0};
    r = cmd(&d, 0, 0, cdb, 12, NULL, 0, 256);
    expect_good(&r, "REPORT LUNS");
    EXPECT(memcmp(ram + DIN_OFF, want, sizeof(want)) == 0 && r.resid == 256 - 24,
           "REPORT LUNS: list length %u, resid %u", be32(ram + DIN_OFF), r.resid);
  }
  test_unit_ready_clears(&d, 0, 0, power_on, 1);
  test_unit_ready_clears(&d, 0, 1, power_on, 1);
  blocks = read_capacity(&d, 0, 0, 512);
  EXPECT(blocks * 512 == disk_bytes, "LUN 0: %" PRIu64 " blocks for %" PRIu64 " bytes", blocks,
         disk_bytes);
  blocks = read_capacity(&d, 0, 1, 512);
  EXPECT(blocks == 8192, "LUN 1: %" PRIu64 " blocks", blocks);
  write_read(&d, 0, 0, 8, 16, 1, shadow);
  write_read(&d, 0, 0, (uint32_t)(disk_bytes / 512) - 128, 128, 2, shadow); /* the last 64 KiB */
  write_read(&d, 0, 1, 100, 255, 3, NULL);
  {
    uint8_t cdb[10] = {0x28};
    put_be32(cdb + 2, (uint32_t)(disk_bytes / 512)); /* READ(10) past the end */
    cdb[8] = 1;
    r = cmd(&d, 0, 0, cdb, 10, NULL, 0, 512);
    expect_sense(&r, 0x5, 0x21, 0x00, "READ(10) past the end");
  }
  {
    uint8_t cdb[6] = {0xd9}; /* vendor-specific, unsupported */
    r = cmd(&d, 0, 1, cdb, 6, NULL, 0, 0);
    expect_sense(&r, 0x5, 0x20, 0x00, "unknown opcode");
  }
  {
    uint8_t cdb[6] = {0};
    r = cmd(&d, 0, 9, cdb, 6, NULL, 0, 0); /* a LUN with no unit on a target with units */
    expect_sense(&r, 0x5, 0x25, 0x00, "TEST UNIT READY on an absent LUN");
    r = cmd(&d, 3, 0, cdb, 6, NULL, 0, 0); /* a target with no unit */
    EXPECT(r.response == VSCSI_S_BAD_TARGET, "absent target: response %u", r.response);
  }
  EXPECT(irq_count[VSCSI_Q_REQUEST] > 0, "no request queue interrupt");
  printf("scsi_harness: %u commands on 2 units (raw file %s, memory:4M)\n", d.n_cmds, argv[1]);

  /* 5. Hotplug, resize and hot-unplug while the driver runs. */
  mem = open_bdev("memory:1M", NULL);
  CHECK(vstor_scsi_attach(d.dev, 1, 5, mem, NULL));
  CHECK(vstor_blockdev_close(mem));
  expect_event(&d, VSCSI_T_TRANSPORT_RESET, 1, 5, VSCSI_EVT_RESET_RESCAN);
  r = inquiry(&d, 1, 5, 1, 0x80);
  expect_good(&r, "INQUIRY VPD 80h of the hotplugged unit");
  EXPECT(memcmp(ram + DIN_OFF + 4, "vstor-1-5", 9) == 0, "hotplugged serial");
  mem = open_bdev("memory:2M", NULL);
  CHECK(vstor_scsi_lun_resized(d.dev, 1, 5, mem));
  CHECK(vstor_blockdev_close(mem));
  expect_event(&d, VSCSI_T_PARAM_CHANGE, 1, 5, 0x2a | (0x09 << 8));
  test_unit_ready_clears(&d, 1, 5, power_on_then_capacity, 2);
  blocks = read_capacity(&d, 1, 5, 512);
  EXPECT(blocks == 4096, "resized unit: %" PRIu64 " blocks", blocks);
  write_read(&d, 1, 5, 4000, 96, 4, NULL); /* past the old end */
  CHECK(vstor_scsi_detach(d.dev, 1, 5));
  expect_event(&d, VSCSI_T_TRANSPORT_RESET, 1, 5, VSCSI_EVT_RESET_REMOVED);
  r = inquiry(&d, 1, 5, 0, 0);
  EXPECT(r.response == VSCSI_S_BAD_TARGET, "detached unit: response %u", r.response);
  /* A CD-ROM on target 0: attaching and detaching it tells LUNs 0 and 1 (same target) that
   * the LUN inventory changed (one unit attention, however many changes). */
  mem = open_bdev("memory:1M", NULL);
  memset(&lo, 0, sizeof(lo));
  lo.size = sizeof(lo);
  lo.flags = VSTOR_LUN_CDROM;
  CHECK(vstor_scsi_attach(d.dev, 0, 2, mem, &lo));
  CHECK(vstor_blockdev_close(mem));
  expect_event(&d, VSCSI_T_TRANSPORT_RESET, 0, 2, VSCSI_EVT_RESET_RESCAN);
  r = inquiry(&d, 0, 2, 0, 0);
  expect_good(&r, "INQUIRY of the CD-ROM");
  EXPECT((ram[DIN_OFF] & 0x1f) == 5 && (ram[DIN_OFF + 1] & 0x80),
         "CD-ROM: peripheral type %#x, RMB %#x", ram[DIN_OFF] & 0x1f, ram[DIN_OFF + 1]);
  CHECK(vstor_scsi_detach(d.dev, 0, 2));
  expect_event(&d, VSCSI_T_TRANSPORT_RESET, 0, 2, VSCSI_EVT_RESET_REMOVED);
  {
    static const uint8_t luns_changed[] = {0x3f, 0x0e};
    test_unit_ready_clears(&d, 0, 0, luns_changed, 1);
    test_unit_ready_clears(&d, 0, 1, luns_changed, 1);
  }
  EXPECT(!virtq_more_used(&d.vq[VSCSI_Q_EVENT]), "an unexpected extra event");
  printf("scsi_harness: hotplug: %u events (rescan, capacity change, removed), %u event "
         "interrupts\n", d.n_events, irq_count[VSCSI_Q_EVENT]);

  /* 6. Reset and free; the image holds what was written. */
  CHECK(vstor_device_reset(d.dev));
  CHECK(vstor_device_free(d.dev));
  EXPECT(pread(fd, ondisk, disk_bytes, 0) == (ssize_t)disk_bytes, "pread");
  for (i = 0; i < disk_bytes; i++)
    EXPECT(ondisk[i] == shadow[i], "image byte %u is %#x, expected %#x", i, ondisk[i], shadow[i]);
  EXPECT(irq_config == 0 && irq_count[VSCSI_Q_CONTROL] == 0, "unexpected interrupts");
  close(fd);
  munmap(ram, RAM_LEN);
  free(shadow);
  free(ondisk);
  printf("scsi_harness: OK: %u commands, %u events, %u misuse checks; image file matches\n",
         d.n_cmds, d.n_events, n_misuse);
  return 0;
}
