/*
 * Constants of the ring-0 assembly files. Those the app or the VMM share
 * (ports, tags, service numbers, boot info) come from the vmfork-guest-abi
 * crate (guest-abi/) through the generated guest_abi.h; only what the
 * assembly alone uses is defined here. docs/guest-abi.md.
 */
#ifndef VMFORK_GUEST_ABI_H
#define VMFORK_GUEST_ABI_H

#include "guest_abi.h"

/* guest.ld asserts that the .ring0 section starts here. cpu.S relies on it
 * to compute split descriptor fields (IDT gates, TSS descriptor) at
 * assembly time, since x86-64 ELF has no relocation for "bits 16..31". */
#define KERNEL_BASE 0x100000

/* GDT selectors. 0x10/0x18 match the boot GDT of the vmfork VMM and of
 * the Linux boot protocol, so the segment registers the VMM loaded stay
 * valid across our lgdt. */
#define KERNEL_CS 0x10
#define KERNEL_DS 0x18
#define USER_DS 0x2b
#define USER_CS 0x33
#define TSS_SEL 0x40

/* RFLAGS for ring 3: IF | IOPL=3 | reserved bit 1. IOPL=3 lets the app
 * use in/out directly (a VM exit each, no ring-0 trip). */
#define USER_RFLAGS 0x3202

/* CR0 = PG | WP | NE | ET | MP | PE: MP with EM and TS clear lets ring 3
 * use x87/SSE without faulting. CR4 = OSXMMEXCPT | OSFXSR | PAE. */
#define CR0_VALUE 0x80010033
#define CR4_VALUE 0x620
#define CR4_OSXSAVE (1 << 18)
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100

/* x2APIC */
#define MSR_APIC_BASE 0x1b
#define APIC_BASE_EN 0x800
#define APIC_BASE_EXTD 0x400
#define MSR_X2APIC_EOI 0x80b
#define MSR_X2APIC_SVR 0x80f
#define MSR_X2APIC_LVT_TIMER 0x832
#define MSR_X2APIC_TIMER_INIT 0x838
#define MSR_X2APIC_TIMER_DIV 0x83e
#define MSR_X2APIC_SELF_IPI 0x83f
#define TIMER_VECTOR 0x40
/* Self-IPIs of the interrupt storm (test=interrupt_storm). */
#define STORM_VECTOR 0x41
#define SPURIOUS_VECTOR 0xff
#define LVT_TIMER_PERIODIC 0x20000
#define TIMER_DIV_1 0xb
/* Rate of the LAPIC timer when the hypervisor does not state one: KVM's
 * and QEMU's emulated LAPIC count at 1 GHz (one tick per ns). */
#define DEFAULT_APIC_HZ 1000000000

#endif
