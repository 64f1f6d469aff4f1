/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * bootsim: a boot loader's A/B step on a state file, through keel-bootflags' C interface,
 * the way U-Boot or a vendor flashing tool would call it. The tests run it boot after
 * boot on files written by the bootstate example, fw_setenv and grub-editenv, and
 * compare with the Rust model and the tools.
 *
 *   bootsim KIND FILE SIZE REDUNDANT SLOTS COMMAND [SLOT [TRIES]]
 *     KIND      android (misc image, bootloader_control at byte 2048)
 *               | uboot (SIZE bytes a copy; REDUNDANT 1: a second copy right after)
 *               | grubenv (1024-byte block)
 *               | uboot-vars (U-Boot proper, its environment already imported: the
 *                 variables come from env_get, played by getenv, and go back through
 *                 env_set, played by printing `set NAME=VALUE` lines; FILE is unused)
 *     COMMAND   boot | show | set-active SLOT TRIES | mark-good SLOT | mark-bad SLOT
 *
 * Prints one line per fact (`boot slot=B spent=1 left=2 fallback=0 reset=0`,
 * `slot A priority=15 tries=6 successful=0`, `next=B`); on error `error CODE MESSAGE`
 * and exit status 1. No heap: the store lives in static buffers, as in firmware.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel_bootflags.h"

#define MAX_ENV (64 * 1024)

static uint8_t store[2 * MAX_ENV];
static uint8_t out[MAX_ENV];

static int fail(int err)
{
    printf("error %d %s\n", err, keel_strerror(err));
    return 1;
}

static int slot_arg(const char *s)
{
    if (s && s[0] >= 'A' && s[0] <= 'D' && s[1] == '\0')
        return s[0] - 'A';
    return -1;
}

/* pread/pwrite the whole range or fail: a short transfer is an error for a boot loader. */
static int read_at(int fd, uint8_t *buf, size_t len, off_t off)
{
    ssize_t n = pread(fd, buf, len, off);
    return n == (ssize_t)len ? 0 : -1;
}

static int write_at(int fd, const uint8_t *buf, size_t len, off_t off)
{
    ssize_t n = pwrite(fd, buf, len, off);
    return (n == (ssize_t)len && fdatasync(fd) == 0) ? 0 : -1;
}

static void show(const struct keel_ab *ab)
{
    int n = keel_ab_slot_count(ab);
    for (int i = 0; i < n; i++) {
        struct keel_slot_state st;
        if (keel_ab_slot(ab, (unsigned)i, &st) == KEEL_OK)
            printf("slot %c priority=%u tries=%u successful=%d bootable=%d\n", 'A' + i,
                   st.priority, st.tries, st.successful ? 1 : 0,
                   keel_ab_is_bootable(ab, (unsigned)i));
    }
    int next = KEEL_SLOT_NONE;
    if (keel_ab_next_boot(ab, &next) == KEEL_OK)
        printf("next=%c\n", next == KEEL_SLOT_NONE ? '-' : 'A' + next);
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: bootsim KIND FILE SIZE REDUNDANT SLOTS COMMAND [SLOT [TRIES]]\n");
        return 2;
    }
    const char *kind = argv[1], *file = argv[2], *cmd = argv[6];
    size_t size = strtoul(argv[3], NULL, 0);
    int redundant = atoi(argv[4]);
    unsigned slots = (unsigned)atoi(argv[5]);
    int vars = !strcmp(kind, "uboot-vars");
    int fd = vars ? -1 : open(file, O_RDWR);
    if (!vars && fd < 0) {
        perror(file);
        return 2;
    }

    struct keel_ab ab;
    int err;
    if (!strcmp(kind, "android")) {
        if (read_at(fd, store, KEEL_ANDROID_SIZE, KEEL_ANDROID_MISC_OFFSET))
            return fail(KEEL_ERR_SIZE);
        err = keel_android_read(&ab, store, KEEL_ANDROID_SIZE);
        if (err == KEEL_ERR_MAGIC || err == KEEL_ERR_VERSION || err == KEEL_ERR_CRC) {
            /* What U-Boot's android_ab does with a damaged block: start afresh. */
            printf("reinit %s\n", keel_strerror(err));
            err = keel_android_init(&ab, slots, 0);
        }
    } else if (!strcmp(kind, "uboot")) {
        if (size == 0 || size > MAX_ENV || read_at(fd, store, size * (redundant ? 2 : 1), 0))
            return fail(KEEL_ERR_SIZE);
        err = keel_uboot_read(&ab, store, redundant ? store + size : NULL, size, slots);
    } else if (vars) {
        const char *left[KEEL_MAX_SLOTS] = { NULL };
        for (unsigned i = 0; i < slots && i < KEEL_MAX_SLOTS; i++)
            left[i] = getenv(keel_uboot_var_name(i + 1));
        err = keel_uboot_from_vars(&ab, getenv(keel_uboot_var_name(0)), left, slots);
    } else if (!strcmp(kind, "grubenv")) {
        size = KEEL_GRUBENV_SIZE;
        if (read_at(fd, store, size, 0))
            return fail(KEEL_ERR_SIZE);
        err = keel_grubenv_read(&ab, store, size, slots);
    } else {
        fprintf(stderr, "bootsim: unknown kind %s\n", kind);
        return 2;
    }
    if (err)
        return fail(err);
    printf("policy %s\n", keel_policy_name(keel_ab_policy(&ab)));

    int s = slot_arg(argc > 7 ? argv[7] : NULL);
    if (!strcmp(cmd, "show")) {
        show(&ab);
        return 0;
    } else if (!strcmp(cmd, "boot")) {
        struct keel_boot boot;
        err = keel_ab_boot(&ab, &boot);
        if (err)
            return fail(err);
        printf("boot slot=%c spent=%u left=%u fallback=%d reset=%d\n",
               boot.slot == KEEL_SLOT_NONE ? '-' : 'A' + boot.slot, boot.tries_spent,
               boot.tries_left, boot.fallback, boot.reset);
    } else if (!strcmp(cmd, "set-active") && argc > 8) {
        err = keel_ab_set_active(&ab, (unsigned)s, (unsigned)atoi(argv[8]));
    } else if (!strcmp(cmd, "mark-good")) {
        err = keel_ab_mark_good(&ab, (unsigned)s);
    } else if (!strcmp(cmd, "mark-bad")) {
        err = keel_ab_mark_bad(&ab, (unsigned)s);
    } else {
        fprintf(stderr, "bootsim: unknown command %s\n", cmd);
        return 2;
    }
    if (err)
        return fail(err);

    /* Write back before "starting" the slot, as the rules require. */
    if (vars) {
        /* env_set for each, then one saveenv (the caller's single write). */
        for (unsigned i = 0; i <= slots && !err; i++) {
            char value[16];
            err = keel_uboot_var(&ab, i, value, sizeof(value));
            if (!err)
                printf("set %s=%s\n", keel_uboot_var_name(i), value);
        }
    } else if (!strcmp(kind, "android")) {
        err = keel_android_write(&ab, out, KEEL_ANDROID_SIZE);
        if (!err && write_at(fd, out, KEEL_ANDROID_SIZE, KEEL_ANDROID_MISC_OFFSET))
            err = KEEL_ERR_SIZE;
    } else if (!strcmp(kind, "uboot")) {
        unsigned copy = 0;
        int current = keel_uboot_current_copy(&ab);
        err = current < 0 ? current
                          : keel_uboot_write(&ab, store + (size_t)current * size, out, size, &copy);
        /* Only the older copy is written; the current one stays valid through a power cut. */
        if (!err && write_at(fd, out, size, (off_t)(copy * size)))
            err = KEEL_ERR_SIZE;
        if (!err)
            err = keel_uboot_committed(&ab);
    } else {
        err = keel_grubenv_write(&ab, store, out, KEEL_GRUBENV_SIZE);
        if (!err && write_at(fd, out, KEEL_GRUBENV_SIZE, 0))
            err = KEEL_ERR_SIZE;
    }
    if (err)
        return fail(err);
    show(&ab);
    return (vars || close(fd) == 0) ? 0 : 2;
}
