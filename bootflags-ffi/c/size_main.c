/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The smallest use of the library a boot loader makes, for measuring what it adds to a
 * firmware image: read the A/B state, run one boot, write the state back, report an
 * error. Built twice: with KEEL undefined it does the same I/O without the library, so
 * the difference of the two images is the library's share.
 *
 *   KEEL_MISC   Android misc bootloader_control
 *   KEEL_UBOOT  U-Boot environment, RAUC rules
 *   KEEL_GRUB   GRUB environment block, RAUC rules
 *   KEEL_UBOOT_VARS  U-Boot proper: RAUC's variables through env_get/env_set
 *
 * No libc calls beyond the start files: the buffers are static and volatile accesses
 * keep the compiler from folding anything away.
 */
#include <stddef.h>
#include <stdint.h>
#if defined(KEEL_MISC) || defined(KEEL_UBOOT) || defined(KEEL_GRUB) || defined(KEEL_UBOOT_VARS)
#include "keel_bootflags.h"
#endif

#define ENV_SIZE 0x4000

/* Not static: gcc must not assume they stay zero and fold the baseline's reads away,
 * which would leave the buffers out of the baseline and charge them to the library. */
uint8_t store[2 * ENV_SIZE];
uint8_t scratch[ENV_SIZE];
volatile int sink;
volatile size_t env_size = ENV_SIZE;

int main(void)
{
    int err = 0;
#if defined(KEEL_MISC) || defined(KEEL_UBOOT) || defined(KEEL_GRUB) || defined(KEEL_UBOOT_VARS)
    struct keel_ab ab;
    struct keel_boot boot;
#endif
#ifdef KEEL_MISC
    err = keel_android_read(&ab, store + 2048, 32);
    if (err == KEEL_ERR_CRC || err == KEEL_ERR_MAGIC || err == KEEL_ERR_VERSION)
        err = keel_android_init(&ab, 2, 0);
    if (!err)
        err = keel_ab_boot(&ab, &boot);
    if (!err)
        err = keel_android_write(&ab, scratch, 32);
    sink = boot.slot;
#endif
#ifdef KEEL_UBOOT
    unsigned int copy = 0;
    err = keel_uboot_read(&ab, store, store + env_size, env_size, 2);
    if (!err)
        err = keel_ab_boot(&ab, &boot);
    if (!err)
        err = keel_uboot_write(&ab, store + keel_uboot_current_copy(&ab) * env_size,
                               scratch, env_size, &copy);
    sink = boot.slot + (int)copy;
#endif
#ifdef KEEL_UBOOT_VARS
    /* Never run, only linked: the strings stand for what env_get returns. */
    const char *left[2] = { (const char *)store, (const char *)store + 16 };
    err = keel_uboot_from_vars(&ab, (const char *)store + 32, left, 2);
    if (!err)
        err = keel_ab_boot(&ab, &boot);
    for (unsigned int i = 0; !err && i <= 2; i++)
        err = keel_uboot_var(&ab, i, (char *)scratch + 16 * i, 16);
    sink = boot.slot + *keel_uboot_var_name(0);
#endif
#ifdef KEEL_GRUB
    err = keel_grubenv_read(&ab, store, 1024, 2);
    if (!err)
        err = keel_ab_boot(&ab, &boot);
    if (!err)
        err = keel_grubenv_write(&ab, store, scratch, 1024);
    sink = boot.slot;
#endif
#if defined(KEEL_MISC) || defined(KEEL_UBOOT) || defined(KEEL_GRUB) || defined(KEEL_UBOOT_VARS)
    sink = *keel_strerror(err);
#else
    sink = store[(size_t)sink] + scratch[(size_t)sink] + (int)env_size;
#endif
    return err != 0;
}
