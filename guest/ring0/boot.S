/*
 * Boot entries of the default vmfork guest, its static page tables, boot
 * info, stacks and the PVH ELF note. See docs/guest-abi.md.
 *
 * Both entries do the least ring-0 work possible (about 25 instructions,
 * each emulated on a PVM host): switch to our own page tables and
 * descriptor tables, record where the boot parameters are, and iretq into
 * the ring-3 app. Parsing the command line and memory map is the app's
 * job, in ring 3, where it runs natively.
 */
#include "abi.h"

/* ---------------------------------------------------------------------
 * XEN_ELFNOTE_PHYS32_ENTRY, in the PT_NOTE segment guest.ld makes. The
 * descriptor is 8 bytes: linux-loader reads the low 4, QEMU reads a
 * 64-bit value from 64-bit ELFs.
 */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long vmfork_entry_pvh
    .long 0

    .section .text.entry, "ax"

/*
 * 64-bit entry (ELF e_entry): long mode with the VMM's paging and GDT,
 * interrupts off, RSI = Linux boot_params (zero page).
 */
    .code64
    .globl vmfork_entry64
vmfork_entry64:
    movl $BOOT_PROTO_LINUX64, vmfork_boot_info+BOOT_INFO_PROTO(%rip)
    mov %rsi, vmfork_boot_info+BOOT_INFO_PARAMS(%rip)
    mov $vmfork_pml4, %eax
    mov %rax, %cr3
    mov $CR4_VALUE, %eax        /* PAE stays set: clearing it in long mode would #GP */
    mov %rax, %cr4
    mov $CR0_VALUE, %eax
    mov %rax, %cr0
    lgdt vmfork_gdtr(%rip)
    jmp vmfork_enter_ring3

/*
 * PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off,
 * flat segments, EBX = hvm_start_info, no stack.
 */
    .code32
    .globl vmfork_entry_pvh
vmfork_entry_pvh:
    movl $BOOT_PROTO_PVH, vmfork_boot_info+BOOT_INFO_PROTO
    movl %ebx, vmfork_boot_info+BOOT_INFO_PARAMS
    mov $vmfork_pml4, %eax
    mov %eax, %cr3
    mov $CR4_VALUE, %eax
    mov %eax, %cr4
    mov $MSR_EFER, %ecx
    mov $EFER_LME, %eax
    xor %edx, %edx
    wrmsr
    mov $CR0_VALUE, %eax        /* paging on: long mode, still in a 32-bit CS */
    mov %eax, %cr0
    lgdt vmfork_gdtr
    ljmp $KERNEL_CS, $vmfork_enter_ring3

/*
 * Common tail, in 64-bit mode on our GDT. No data segment reloads: in
 * long mode their bases are ignored, and iretq to ring 3 loads SS and
 * nulls the others.
 */
    .code64
    .globl vmfork_enter_ring3
vmfork_enter_ring3:
    lidt vmfork_idtr(%rip)
    mov $TSS_SEL, %eax
    ltr %ax
    mov $vmfork_kstack_top, %esp
    /* Mask both 8259 PICs. The LAPIC's LINT0 is ExtINT after reset, so an
     * uninitialised PIC (vector base 0) would otherwise turn a pending
     * PIT interrupt, e.g. from QEMU's PIT, into a bogus "#DE". */
    mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1
    pushq $USER_DS
    /* -8: the app's entry sees the stack as if called (RSP % 16 == 8). */
    pushq $(vmfork_user_stack_top - 8)
    pushq $USER_RFLAGS
    pushq $USER_CS
    pushq $vmfork_main
    mov $vmfork_boot_info, %edi
    iretq
    .globl vmfork_boot_code_end
vmfork_boot_code_end:

/* ---------------------------------------------------------------------
 * Identity map of the first 4 GiB with 2 MiB pages, present, writable and
 * user-accessible: the app is the only tenant and the VM is the isolation
 * boundary. Static data, so the boot path only loads CR3. Accessed (and,
 * in the 2 MiB entries, Dirty) are preset: otherwise the first touch of a
 * region writes a page-table page, and with shadow paging that write is
 * made by KVM, in every clone, which turns a clone's reset from
 * refilling a few pages into dropping all of its memory (clone/reset.rs).
 */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl vmfork_pml4
vmfork_pml4:
    .quad vmfork_pdpt + 0x27    /* P | RW | US | A */
    .fill 511, 8, 0
vmfork_pdpt:
    .quad vmfork_pd + 0x0000 + 0x27
    .quad vmfork_pd + 0x1000 + 0x27
    .quad vmfork_pd + 0x2000 + 0x27
    .quad vmfork_pd + 0x3000 + 0x27
    .fill 508, 8, 0
    .globl vmfork_pd
vmfork_pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0xe7   /* P | RW | US | A | D | PS */
    .set page, page + 1
    .endr

/* ---------------------------------------------------------------------
 * Data the app reads. In .data rather than .bss so their zero start does
 * not depend on the loader clearing the bss.
 */
    .section .data.vmfork, "aw"
    .balign 16
    /* BootInfo of the vmfork-guest-abi crate; the .if checks the layout. */
    .globl vmfork_boot_info
vmfork_boot_info:
    .long 0                     /* proto: BOOT_PROTO_* */
    .long 0
    .if . - vmfork_boot_info != BOOT_INFO_PARAMS
    .error "BootInfo.params offset differs from guest_abi.h"
    .endif
    .quad 0                     /* params: boot_params or hvm_start_info address */
    .if . - vmfork_boot_info != BOOT_INFO_IMAGE_END
    .error "BootInfo.image_end offset differs from guest_abi.h"
    .endif
    .quad _end                  /* image_end: first byte past the image (guest.ld) */
    .if . - vmfork_boot_info != BOOT_INFO_SIZE
    .error "BootInfo size differs from guest_abi.h"
    .endif

    .globl vmfork_ticks
vmfork_ticks:
    .quad 0

    /* Interrupts handled on STORM_VECTOR (cpu.S storm_isr). */
    .globl vmfork_storm_irqs
vmfork_storm_irqs:
    .quad 0

/* ---------------------------------------------------------------------
 * Stacks. Only touched pages cost anything (a first-touch fault each).
 */
    .section .bss.vmfork, "aw", @nobits
    .balign 4096
    .skip 8192
    .globl vmfork_kstack_top
vmfork_kstack_top:
    .skip 4096
    .globl vmfork_df_stack_top
vmfork_df_stack_top:
    .skip 131072
    .globl vmfork_user_stack_top
vmfork_user_stack_top:
    .balign 64
    .globl vmfork_xsave_area
vmfork_xsave_area:
    .skip 4096
