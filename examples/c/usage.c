/* The README's usage example: what a C hypervisor's virtio-pci model calls. Built and run by
 * tests/c/run.sh. (A complete driver with a virtqueue is examples/c/blk_harness.c.) */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <vstor.h>

#define CHECK(call) do { int rc_ = (call); if (rc_ < 0) { \
    fprintf(stderr, "%s: %s\n", #call, vstor_last_error()); return 1; } } while (0)

static void irq(void *opaque, uint32_t queue) { (void)queue; ++*(unsigned *)opaque; }

int main(int argc, char **argv) {
    struct vstor_blockdev_opts o = { .size = sizeof o, .format = "raw" };
    struct vstor_blk_config c = { .size = sizeof c, .num_queues = 1, .serial = "disk0" };
    vstor_blockdev *bdev; vstor_device *dev; unsigned irqs = 0; uint64_t features, cap;
    size_t ram_len = 64 << 20;  /* guest RAM: the hypervisor's own mapping */
    void *ram = mmap(NULL, ram_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED) return 1;
    CHECK(vstor_blockdev_open(argc > 1 ? argv[1] : "null:1G", &o, &bdev));
    CHECK(vstor_blk_new(bdev, &c, &dev));
    CHECK(vstor_blockdev_close(bdev));              /* the device keeps its reference */
    CHECK(vstor_device_add_memory(dev, 0, ram_len, ram));
    CHECK(vstor_device_set_irq_callback(dev, irq, &irqs));
    /* The guest driver's register writes, forwarded by the transport model: */
    CHECK(vstor_device_set_status(dev, 1 | 2));     /* ACKNOWLEDGE | DRIVER */
    CHECK(vstor_device_features(dev, &features));
    CHECK(vstor_device_set_driver_features(dev, features & (1ull << 32 | 1ull << 29)));
    CHECK(vstor_device_set_status(dev, 1 | 2 | 8)); /* FEATURES_OK */
    CHECK(vstor_device_config_read(dev, 0, &cap, sizeof cap));
    struct vstor_queue_config q = { .size = sizeof q, .queue_size = 256, .enabled = 1,
        .desc_addr = 0x10000, .avail_addr = 0x11000, .used_addr = 0x12000 };
    CHECK(vstor_device_queue_setup(dev, 0, &q));
    CHECK(vstor_device_set_status(dev, 1 | 2 | 8 | 4)); /* DRIVER_OK: live */
    CHECK(vstor_device_kick(dev, 0));   /* on each queue notify (or hand over an ioeventfd) */
    int fd = vstor_device_completion_fd(dev);   /* add to your poll loop; when readable: */
    CHECK(fd);
    CHECK(vstor_device_process(dev));
    printf("%llu sectors, %u interrupts\n", (unsigned long long)cap, irqs);
    CHECK(vstor_device_free(dev));
    return munmap(ram, ram_len);
}
