//! guest/ring0/guest_abi.h is the assembly's view of this crate, generated
//! from it. This test fails when the committed header differs from what
//! the crate generates (a value changed on one side only, a constant
//! added or removed), and when guest/ring0/abi.h defines one of the
//! generated names itself (a second definition the compiler would only
//! warn about, or not at all).
//!
//! To regenerate after changing the crate:
//! `VMFORK_BLESS=1 cargo test -p vmfork-guest-abi --test asm_header`.

use std::fmt::Write as _;
use std::path::PathBuf;

use vmfork_guest_abi as abi;

/// Every value the assembly may use, by section. u64 holds them all.
fn sections() -> Vec<(&'static str, Vec<(&'static str, u64)>)> {
    vec![
        (
            "Ports (docs/guest-abi.md). The TSS I/O bitmap opens ports below\n * IOMAP_PORTS to ring 3.",
            vec![
                ("SERIAL_PORT", abi::SERIAL_PORT.into()),
                ("READY_PORT", abi::READY_PORT.into()),
                ("ACK_WAIT_PORT", abi::ACK_WAIT_PORT.into()),
                ("QEMU_EXIT_PORT", abi::QEMU_EXIT_PORT.into()),
                ("QEMU_EXIT_CRASH", abi::QEMU_EXIT_CRASH.into()),
                ("IOMAP_PORTS", abi::IOMAP_PORTS.into()),
            ],
        ),
        (
            "Guest writes to READY_PORT: a tag in the high half, an argument in\n * the low one.",
            vec![
                ("READY", abi::READY.into()),
                ("EXIT_TAG", abi::EXIT_TAG.into()),
                ("PANIC_TAG", abi::PANIC_TAG.into()),
                ("ACK_TAG", abi::ACK_TAG.into()),
                ("PANIC_GUEST_FATAL", abi::PANIC_GUEST_FATAL.into()),
            ],
        ),
        (
            "Service numbers, passed in RAX to `int3` from ring 3.",
            vec![
                ("SVC_TRIPLE_FAULT", abi::SVC_TRIPLE_FAULT),
                ("SVC_EMULATION_ERROR", abi::SVC_EMULATION_ERROR),
                ("SVC_TIMER_START", abi::SVC_TIMER_START),
                ("SVC_HALT", abi::SVC_HALT),
                ("SVC_INTERRUPT_STORM", abi::SVC_INTERRUPT_STORM),
                ("SVC_SWAP_KERNEL_GS_BASE", abi::SVC_SWAP_KERNEL_GS_BASE),
                ("SVC_SWAP_CR3", abi::SVC_SWAP_CR3),
            ],
        ),
        (
            "BootInfo: boot.S fills it, the app reads it.",
            vec![
                ("BOOT_PROTO_LINUX64", abi::BOOT_PROTO_LINUX64.into()),
                ("BOOT_PROTO_PVH", abi::BOOT_PROTO_PVH.into()),
                ("BOOT_INFO_PROTO", abi::BOOT_INFO_PROTO as u64),
                ("BOOT_INFO_PARAMS", abi::BOOT_INFO_PARAMS as u64),
                ("BOOT_INFO_IMAGE_END", abi::BOOT_INFO_IMAGE_END as u64),
                ("BOOT_INFO_SIZE", abi::BOOT_INFO_SIZE as u64),
            ],
        ),
    ]
}

fn generate() -> String {
    let mut h = String::from(
        "/*\n * GENERATED from guest-abi/ (the vmfork-guest-abi crate) by\n \
         * guest-abi/tests/asm_header.rs: do not edit. Change the crate, then\n \
         * run VMFORK_BLESS=1 cargo test -p vmfork-guest-abi --test asm_header\n \
         * See docs/guest-abi.md.\n */\n\
         #ifndef VMFORK_GUEST_ABI_GENERATED_H\n#define VMFORK_GUEST_ABI_GENERATED_H\n",
    );
    for (comment, defines) in sections() {
        let _ = write!(h, "\n/* {comment} */\n");
        for (name, value) in defines {
            if value < 10 {
                let _ = writeln!(h, "#define {name} {value}");
            } else {
                let _ = writeln!(h, "#define {name} {value:#x}");
            }
        }
    }
    h.push_str("\n#endif\n");
    h
}

fn ring0_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest/ring0")
}

/// `#define NAME VALUE` lines of a header, as (NAME, VALUE) pairs.
fn defines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("#define")).then(|| {
                let name = words.next().unwrap_or_default().to_string();
                (name, words.collect::<Vec<_>>().join(" "))
            })
        })
        .collect()
}

#[test]
fn committed_header_is_generated_from_the_crate() {
    let path = ring0_dir().join("guest_abi.h");
    let expected = generate();
    if std::env::var_os("VMFORK_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).expect("writing guest_abi.h");
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    // Name by name first, so a failure says which constant disagrees.
    let want = defines(&expected);
    let have = defines(&committed);
    for (name, value) in &want {
        match have.iter().find(|(n, _)| n == name) {
            None => panic!("{} lacks {name} (= {value})", path.display()),
            Some((_, v)) => assert_eq!(
                v,
                value,
                "{name} in {} is {v}, the crate says {value}",
                path.display()
            ),
        }
    }
    assert_eq!(
        committed,
        expected,
        "{} is stale; regenerate it with VMFORK_BLESS=1 cargo test -p vmfork-guest-abi --test asm_header",
        path.display()
    );
}

#[test]
fn hand_written_header_does_not_redefine_abi_constants() {
    let path = ring0_dir().join("abi.h");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        text.contains("#include \"guest_abi.h\""),
        "{} must include the generated guest_abi.h",
        path.display()
    );
    let generated: Vec<String> = defines(&generate()).into_iter().map(|(n, _)| n).collect();
    for (name, _) in defines(&text) {
        assert!(
            !generated.contains(&name),
            "{} defines {name}, which guest_abi.h generates from the crate",
            path.display()
        );
    }
}
