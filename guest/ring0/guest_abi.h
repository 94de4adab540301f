/*
 * GENERATED from guest-abi/ (the vmfork-guest-abi crate) by
 * guest-abi/tests/asm_header.rs: do not edit. Change the crate, then
 * run VMFORK_BLESS=1 cargo test -p vmfork-guest-abi --test asm_header
 * See docs/guest-abi.md.
 */
#ifndef VMFORK_GUEST_ABI_GENERATED_H
#define VMFORK_GUEST_ABI_GENERATED_H

/* Ports (docs/guest-abi.md). The TSS I/O bitmap opens ports below
 * IOMAP_PORTS to ring 3. */
#define SERIAL_PORT 0x3f8
#define READY_PORT 0xdf0
#define ACK_WAIT_PORT 0xdf4
#define QEMU_EXIT_PORT 0xf4
#define QEMU_EXIT_CRASH 0x7f
#define IOMAP_PORTS 0x1000

/* Guest writes to READY_PORT: a tag in the high half, an argument in
 * the low one. */
#define READY 0x52454459
#define EXIT_TAG 0x45580000
#define PANIC_TAG 0x504e0000
#define ACK_TAG 0x41430000
#define PANIC_GUEST_FATAL 0xff

/* Service numbers, passed in RAX to `int3` from ring 3. */
#define SVC_TRIPLE_FAULT 1
#define SVC_EMULATION_ERROR 2
#define SVC_TIMER_START 3
#define SVC_HALT 4
#define SVC_INTERRUPT_STORM 5
#define SVC_SWAP_KERNEL_GS_BASE 6
#define SVC_SWAP_CR3 7

/* BootInfo: boot.S fills it, the app reads it. */
#define BOOT_PROTO_LINUX64 1
#define BOOT_PROTO_PVH 2
#define BOOT_INFO_PROTO 0
#define BOOT_INFO_PARAMS 8
#define BOOT_INFO_IMAGE_END 0x10
#define BOOT_INFO_SIZE 0x18

#endif
