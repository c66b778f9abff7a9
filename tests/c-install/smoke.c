/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Links against an installed libvstor (found through pkg-config) and makes a few calls:
 * opens null:1M, checks its capacity, checks the ABI version of the library against the
 * header's, prints the library version. Built and run by tests/c-install/run.sh, once against
 * libvstor.so and once against libvstor.a.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <vstor.h>

#define FAIL(...)                                                                   \
    do {                                                                            \
        fprintf(stderr, "smoke: " __VA_ARGS__);                                     \
        fprintf(stderr, " (vstor_last_error: %s)\n",                                \
                vstor_last_error() ? vstor_last_error() : "none");                  \
        return 1;                                                                   \
    } while (0)

int main(void)
{
    if (vstor_abi_version() != VSTOR_ABI_VERSION) {
        FAIL("library ABI %" PRIu32 " but header ABI %d", vstor_abi_version(), VSTOR_ABI_VERSION);
    }
    const char *version = vstor_version();
    if (!version || !*version) {
        FAIL("vstor_version() returned nothing");
    }

    vstor_blockdev *bdev = NULL;
    int32_t ret = vstor_blockdev_open("null:1M", NULL, &bdev);
    if (ret != 0 || !bdev) {
        FAIL("vstor_blockdev_open(null:1M) = %" PRId32, ret);
    }

    vstor_blockdev_info info;
    memset(&info, 0, sizeof(info));
    info.size = sizeof(info);
    ret = vstor_blockdev_get_info(bdev, &info);
    if (ret != 0) {
        FAIL("vstor_blockdev_get_info = %" PRId32, ret);
    }
    if (info.capacity != UINT64_C(1) << 20) {
        FAIL("capacity %" PRIu64 ", expected 1 MiB", info.capacity);
    }

    ret = vstor_blockdev_close(bdev);
    if (ret != 0) {
        FAIL("vstor_blockdev_close = %" PRId32, ret);
    }
    ret = vstor_blockdev_close(bdev);
    if (ret >= 0) {
        FAIL("second vstor_blockdev_close = %" PRId32 ", expected -EBADF", ret);
    }

    printf("libvstor %s (ABI %" PRIu32 "): null:1M capacity %" PRIu64 " bytes, logical block %" PRIu32
           "\n",
           version, vstor_abi_version(), info.capacity, info.logical_block_size);
    return 0;
}
