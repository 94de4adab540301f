/*
 * Ring 0 of the default vmfork guest: descriptor tables (GDT, TSS, IDT),
 * trap stubs, the int3 service gate, and the LAPIC timer.
 *
 * On a PVM host every ring-0 instruction is emulated (about 0.5 us each)
 * and SSE arithmetic, AVX and XSAVE kill the VM there, so this file uses
 * general-purpose registers only, and the paths taken on every boot (timer
 * start) or every tick (timer_isr) are a handful of instructions.
 *
 * Everything here lives in one section, .ring0, which guest.ld places at
 * KERNEL_BASE. That makes "label - vmfork_ring0_base" an assembly-time
 * constant, so IDT gates and the TSS descriptor, whose address fields are
 * split into pieces no ELF relocation can express, are complete static
 * data and no ring-0 loop has to build them at boot.
 */
#include "abi.h"

#define ABS(sym) (KERNEL_BASE + ((sym) - vmfork_ring0_base))

    .section .ring0, "awx"
    .code64
    .globl vmfork_ring0_base
vmfork_ring0_base:

/* ---------------------------------------------------------------------
 * Exception stubs: one 16-byte slot per vector 0..31, so the IDT below can
 * address slot v as isr_stubs + 16 * v. Vectors without a CPU error code
 * push a 0 so exception_common sees one frame layout.
 */
    .balign 16
isr_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if !(vec == 8 || vec == 10 || vec == 11 || vec == 12 || vec == 13 || vec == 14 || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushq $0
    .endif
    pushq $vec
    jmp exception_common
    .set vec, vec + 1
    .endr

/*
 * Any exception we do not expect is fatal: report it on the serial port
 * from here (ring 0 works even when the app's state is broken), tell the
 * VMM through the ready port, and stop. Speed does not matter here.
 *
 * Stack: 0 vector, 8 error code, 16 RIP, 24 CS, 32 RFLAGS, 40 RSP, 48 SS.
 */
exception_common:
    cld                     /* the interrupted code may have had DF set */
    lea msg_panic(%rip), %rsi
    call r0_puts
    mov (%rsp), %rax
    lea exception_names(,%rax,4), %rsi
    call r0_puts
    lea msg_vector(%rip), %rsi
    call r0_puts
    mov (%rsp), %rax
    call r0_puthex
    lea msg_error(%rip), %rsi
    call r0_puts
    mov 8(%rsp), %rax
    call r0_puthex
    lea msg_rip(%rip), %rsi
    call r0_puts
    mov 16(%rsp), %rax
    call r0_puthex
    lea msg_cs(%rip), %rsi
    call r0_puts
    mov 24(%rsp), %rax
    call r0_puthex
    lea msg_rflags(%rip), %rsi
    call r0_puts
    mov 32(%rsp), %rax
    call r0_puthex
    lea msg_rsp(%rip), %rsi
    call r0_puts
    mov 40(%rsp), %rax
    call r0_puthex
    lea msg_cr2(%rip), %rsi
    call r0_puts
    mov %cr2, %rax
    call r0_puthex
    lea msg_newline(%rip), %rsi
    call r0_puts

    mov (%rsp), %eax
    or $PANIC_TAG, %eax
    mov $READY_PORT, %edx
    out %eax, %dx
    /* Only reached without a vmfork VMM (which stops the vCPU on "PN"):
     * under QEMU with isa-debug-exit this ends QEMU with status 255. */
    mov $QEMU_EXIT_CRASH, %eax
    mov $QEMU_EXIT_PORT, %edx
    out %eax, %dx
    .globl vmfork_halt_forever
vmfork_halt_forever:
    cli
    hlt
    jmp vmfork_halt_forever

/* rsi: NUL-terminated string. Clobbers rax, rdx, rsi. */
r0_puts:
    mov $SERIAL_PORT, %edx
1:  movzbl (%rsi), %eax
    test %al, %al
    jz 2f
    out %al, %dx
    inc %rsi
    jmp 1b
2:  ret

/* rax: value, printed as 0x and its significant hex digits.
 * Clobbers rax, rcx, rdx, rdi. */
r0_puthex:
    mov %rax, %rdi
    mov $SERIAL_PORT, %edx
    mov $'0', %al
    out %al, %dx
    mov $'x', %al
    out %al, %dx
    mov $60, %ecx
1:  test %ecx, %ecx         /* skip leading zero digits, keep the last */
    jz 2f
    mov %rdi, %rax
    shr %cl, %rax
    test $0xf, %al
    jnz 2f
    sub $4, %ecx
    jmp 1b
2:  mov %rdi, %rax
    shr %cl, %rax
    and $0xf, %eax
    movzbl hex_digits(%rax), %eax
    out %al, %dx
    sub $4, %ecx
    jns 2b
    ret

/* ---------------------------------------------------------------------
 * int3 from ring 3 is the service call (RAX = service number, RAX = the
 * result). The gate has DPL 3 so ring 3 may use it; int3 is the cheapest
 * way into ring 0 that works on PVM (syscall and int $n do not).
 * Services may clobber RCX, RDX, RSI, RDI, R8-R11 (the C ABI's scratch
 * registers) and preserve everything else.
 */
service_gate:
    testb $3, 8(%rsp)       /* int3 in ring 0 is a bug, not a call */
    jz 1f
    cmp $SVC_TIMER_START, %rax
    je svc_timer_start
    cmp $SVC_HALT, %rax
    je vmfork_halt_forever
    cmp $SVC_TRIPLE_FAULT, %rax
    je svc_triple_fault
    cmp $SVC_EMULATION_ERROR, %rax
    je svc_emulation_error
    cmp $SVC_INTERRUPT_STORM, %rax
    je svc_interrupt_storm
    cmp $SVC_SWAP_KERNEL_GS_BASE, %rax
    je svc_swap_kernel_gs_base
    cmp $SVC_SWAP_CR3, %rax
    je svc_swap_cr3
    mov $-1, %rax
    iretq
1:  pushq $0
    pushq $3
    jmp exception_common

/*
 * SVC_TIMER_START: RDI = rate in Hz (0: leave the timer off).
 * Returns the LAPIC initial count programmed, or 0 if the timer is off or
 * the CPU has no x2APIC.
 *
 * Calibration: the LAPIC timer rate is taken from the hypervisor timing
 * leaf 0x40000010 (EBX = APIC bus kHz; VMware, and QEMU with
 * vmware-cpuid-freq) when present, else DEFAULT_APIC_HZ = 1 GHz, the rate
 * of KVM's and QEMU's emulated LAPIC. CPUID 0x15 is deliberately not used:
 * KVM passes the host's crystal clock through there while its emulated
 * LAPIC timer still counts at 1 GHz, so 0x15 would be wrong under KVM.
 * Measuring against the TSC or PIT would cost milliseconds of emulated
 * ring 0, and the app needs a steady tick, not an exact one.
 */
svc_timer_start:
    push %rbx
    xor %eax, %eax
    test %rdi, %rdi
    jz 9f
    mov $1, %eax
    cpuid
    xor %eax, %eax
    bt $21, %ecx            /* CPUID.1:ECX.x2APIC */
    jnc 9f
    mov $DEFAULT_APIC_HZ, %r8d
    bt $31, %ecx            /* hypervisor present: 0x4000xxxx leaves are meaningful */
    jnc 1f
    mov $0x40000000, %eax
    cpuid
    cmp $0x40000010, %eax
    jb 1f
    mov $0x40000010, %eax
    cpuid
    test %ebx, %ebx
    jz 1f
    imul $1000, %rbx, %r8
1:  mov %r8, %rax
    xor %edx, %edx
    div %rdi
    mov $0xffffffff, %ecx
    cmp %rcx, %rax
    cmova %rcx, %rax
    test %rax, %rax
    jnz 2f
    mov $1, %eax
2:  mov %rax, %r8
    call x2apic_enable
    mov $MSR_X2APIC_TIMER_DIV, %ecx
    mov $TIMER_DIV_1, %eax
    wrmsr
    mov $MSR_X2APIC_LVT_TIMER, %ecx
    mov $(LVT_TIMER_PERIODIC | TIMER_VECTOR), %eax
    wrmsr
    mov $MSR_X2APIC_TIMER_INIT, %ecx
    mov %r8d, %eax
    wrmsr
    mov %r8, %rax
9:  pop %rbx
    iretq

/* Switches the LAPIC to x2APIC mode and software-enables it; the caller
 * has checked CPUID.1:ECX.x2APIC. Leaves every LVT entry as it was (masked
 * after reset). Clobbers RAX, RCX, RDX (EDX = 0 on return). */
x2apic_enable:
    /* xAPIC -> x2APIC must go through EN=1 first: disabled -> x2APIC
     * directly is an invalid transition (#GP). */
    mov $MSR_APIC_BASE, %ecx
    rdmsr
    or $APIC_BASE_EN, %eax
    wrmsr
    or $APIC_BASE_EXTD, %eax
    wrmsr
    xor %edx, %edx
    mov $MSR_X2APIC_SVR, %ecx
    mov $(0x100 | SPURIOUS_VECTOR), %eax
    wrmsr
    ret

/*
 * SVC_INTERRUPT_STORM: RDI = number of self-IPIs to send
 * (test=interrupt_storm). Each goes through the x2APIC SELF_IPI register
 * with interrupts masked and is then taken by `sti; hlt`, so storm_isr
 * handles (and EOIs) every one before the next is sent: an interrupt
 * storm the in-kernel LAPIC has to deliver as fast as the guest raises it.
 * Why not just send them with interrupts enabled: PVM's ring-0 emulator
 * then delivered 12 of 2000 (the others merged in the IRR). `hlt` cannot
 * sleep for good: the IPI is already pending, and the sti shadow keeps a
 * host that delivers at once from doing so before the hlt.
 * Returns vmfork_storm_irqs, the storm interrupts handled since boot, or
 * 0 if the CPU has no x2APIC.
 */
svc_interrupt_storm:
    push %rbx
    mov $1, %eax
    cpuid
    pop %rbx
    xor %eax, %eax
    bt $21, %ecx            /* CPUID.1:ECX.x2APIC */
    jnc 9f
    call x2apic_enable
    mov $MSR_X2APIC_SELF_IPI, %ecx
1:  test %rdi, %rdi
    jz 2f
    mov $STORM_VECTOR, %eax
    wrmsr                   /* EDX is 0; storm_isr preserves RAX, RCX, RDX */
    sti
    hlt
    cli
    dec %rdi
    jmp 1b
2:  mov vmfork_storm_irqs(%rip), %rax
9:  iretq

/*
 * SVC_SWAP_KERNEL_GS_BASE: RDI = new IA32_KERNEL_GS_BASE (canonical, or
 * wrmsr raises #GP); returns the old value. Ring 0 never executes swapgs,
 * so the MSR is free for tests that a reused VM gets the template's MSRs
 * back (the msr-write function).
 */
svc_swap_kernel_gs_base:
    mov $0xc0000102, %ecx
    rdmsr
    shl $32, %rdx
    mov %eax, %eax
    or %rdx, %rax
    mov %rax, %rsi
    mov %edi, %eax
    mov %rdi, %rdx
    shr $32, %rdx
    wrmsr
    mov %rsi, %rax
    iretq

/*
 * SVC_SWAP_CR3: RDI = new CR3; returns the old one. The new tables must
 * map this code, the stacks and the IDT as the boot tables do (the
 * page-table-build function copies the boot PML4). KVM shadows whatever
 * tree CR3 points to, which is what the function is for.
 */
svc_swap_cr3:
    mov %cr3, %rax
    mov %rdi, %cr3
    iretq

/* SVC_TRIPLE_FAULT: with an empty IDT, ud2 raises #UD, whose delivery
 * raises #GP, then #DF, then the CPU shuts down. */
svc_triple_fault:
    lidt null_idtr(%rip)
    ud2

/*
 * SVC_EMULATION_ERROR: run XSAVE in ring 0, which PVM's instruction
 * emulator cannot do (the VMM sees KVM_EXIT_INTERNAL_ERROR). On a host
 * that runs ring 0 natively it simply works; then this returns 0 and the
 * app reports that no emulation error happened. Returns -2 if the CPU has
 * no XSAVE.
 */
svc_emulation_error:
    push %rbx
    mov $1, %eax
    cpuid
    mov $-2, %rax
    bt $26, %ecx            /* CPUID.1:ECX.XSAVE */
    jnc 1f
    mov %cr4, %rax
    or $CR4_OSXSAVE, %eax
    mov %rax, %cr4
    mov $1, %eax            /* x87 state only: fits the 576-byte minimum */
    xor %edx, %edx
    xsave vmfork_xsave_area(%rip)
    xor %eax, %eax
1:  pop %rbx
    iretq

/* Storm self-IPIs: count them for the app, then EOI as the timer does. */
storm_isr:
    incq vmfork_storm_irqs(%rip)
    jmp eoi_return

/* LAPIC timer: count the tick for the app (which reads vmfork_ticks
 * directly) and EOI. Nothing else: every instruction here is emulated. */
timer_isr:
    incq vmfork_ticks(%rip)
eoi_return:
    push %rax
    push %rcx
    push %rdx
    xor %eax, %eax
    xor %edx, %edx
    mov $MSR_X2APIC_EOI, %ecx
    wrmsr
    pop %rdx
    pop %rcx
    pop %rax
    iretq

/* Spurious LAPIC interrupts need no EOI. */
spurious_isr:
    iretq

/* Code ends here: build.sh disassembles up to this label to check that
 * ring 0 uses no vector registers. Data follows. */
    .globl vmfork_ring0_code_end
vmfork_ring0_code_end:

/* ---------------------------------------------------------------------
 * Descriptor tables. The GDT is written by the CPU (ltr sets the TSS busy
 * bit); our page tables map everything writable, so it can sit here.
 */
    .balign 16
    .globl vmfork_gdt
vmfork_gdt:
    .quad 0                     /* 0x00 null */
    .quad 0                     /* 0x08 unused */
    .quad 0x00af9b000000ffff    /* 0x10 kernel code, 64-bit */
    .quad 0x00cf93000000ffff    /* 0x18 kernel data */
    .quad 0x00cffb000000ffff    /* 0x20 user code, 32-bit (unused; sysret layout) */
    .quad 0x00cff3000000ffff    /* 0x28 user data */
    .quad 0x00affb000000ffff    /* 0x30 user code, 64-bit */
    .quad 0                     /* 0x38 unused */
    /* 0x40: 64-bit available TSS, 16 bytes; the limit covers the I/O
     * permission bitmap. */
    .word vmfork_tss_end - vmfork_tss - 1
    .word ABS(vmfork_tss) & 0xffff
    .byte (ABS(vmfork_tss) >> 16) & 0xff
    .byte 0x89
    .byte 0
    .byte (ABS(vmfork_tss) >> 24) & 0xff
    .long 0
    .long 0
vmfork_gdt_end:

    .balign 16
    .word 0, 0, 0
    .globl vmfork_gdtr
vmfork_gdtr:                    /* also read as a 6-byte 32-bit GDTR by the PVH entry */
    .word vmfork_gdt_end - vmfork_gdt - 1
    .quad vmfork_gdt

    .balign 16
    .word 0, 0, 0
    .globl vmfork_idtr
vmfork_idtr:
    .word vmfork_idt_end - vmfork_idt - 1
    .quad vmfork_idt

    .balign 16
    .word 0, 0, 0
null_idtr:
    .word 0
    .quad 0

    .balign 16
vmfork_tss:
    .long 0
    .quad vmfork_kstack_top     /* RSP0: entries from ring 3 */
    .quad 0, 0                  /* RSP1, RSP2 */
    .quad 0
    .quad vmfork_df_stack_top   /* IST1: #DF, usable even if RSP0's stack is gone */
    .quad 0, 0, 0, 0, 0, 0      /* IST2..7 */
    .quad 0
    .word 0
    .word vmfork_iomap - vmfork_tss
/*
 * I/O permission bitmap allowing ports 0..IOMAP_PORTS-1 to ring 3. On
 * VMX/SVM hosts IOPL=3 alone grants that, but PVM does not keep a guest's
 * IOPL in ring 3: a ring-3 `in`/`out` #GPs into the hypervisor, whose
 * emulator then sees IOPL=0 and consults this bitmap. Without it every
 * port access from the app raised #GP.
 */
vmfork_iomap:
    .fill IOMAP_PORTS / 8, 1, 0
    .byte 0xff                  /* terminator: the CPU may read one byte past */
vmfork_tss_end:

/* Interrupt gate (IF cleared on entry), present, code selector KERNEL_CS.
 * Bits 63:32 of the offset are 0: the kernel lives at KERNEL_BASE. */
.macro gate handler, dpl=0, ist=0
    .word ABS(\handler) & 0xffff
    .word KERNEL_CS
    .byte \ist
    .byte 0x8e | ((\dpl) << 5)
    .word (ABS(\handler) >> 16) & 0xffff
    .long 0
    .long 0
.endm

/* All 256 vectors. Vectors with no handler are not present: an interrupt
 * there raises #NP with error code (vector << 3) | 2, which
 * exception_common reports. */
    .balign 16
vmfork_idt:
    .set vec, 0
    .rept 256
    .if vec == 3
    gate service_gate, 3
    .elseif vec == 8
    gate isr_stubs+16*8, 0, 1
    .elseif vec < 32
    gate isr_stubs+16*vec
    .elseif vec == TIMER_VECTOR
    gate timer_isr
    .elseif vec == STORM_VECTOR
    gate storm_isr
    .elseif vec == SPURIOUS_VECTOR
    gate spurious_isr
    .else
    .quad 0, 0
    .endif
    .set vec, vec + 1
    .endr
vmfork_idt_end:

/* ---------------------------------------------------------------------
 * Crash report strings.
 */
msg_panic:   .asciz "vmfork-guest: panic: #"
msg_vector:  .asciz " vector="
msg_error:   .asciz " error="
msg_rip:     .asciz " rip="
msg_cs:      .asciz " cs="
msg_rflags:  .asciz " rflags="
msg_rsp:     .asciz " rsp="
msg_cr2:     .asciz " cr2="
msg_newline: .asciz "\n"
hex_digits:  .ascii "0123456789abcdef"

/* Four bytes per vector, NUL-padded. */
    .balign 4
exception_names:
    .ascii "DE\0\0", "DB\0\0", "NMI\0", "BP\0\0", "OF\0\0", "BR\0\0", "UD\0\0", "NM\0\0"
    .ascii "DF\0\0", "CSO\0", "TS\0\0", "NP\0\0", "SS\0\0", "GP\0\0", "PF\0\0", "15\0\0"
    .ascii "MF\0\0", "AC\0\0", "MC\0\0", "XM\0\0", "VE\0\0", "CP\0\0", "22\0\0", "23\0\0"
    .ascii "24\0\0", "25\0\0", "26\0\0", "27\0\0", "HV\0\0", "VC\0\0", "SX\0\0", "31\0\0"

    .globl vmfork_ring0_end
vmfork_ring0_end:
