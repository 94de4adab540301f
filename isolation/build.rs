//! Compiles every thread type's seccomp allow-list (src/seccomp/lists.rs)
//! into BPF at build time, so that no vmfork process spends its start-up
//! compiling: each program is written to OUT_DIR as raw
//! `sock_filter`s (8 bytes each, little-endian) and embedded by
//! src/seccomp/programs.rs. A unit test compares the embedded programs with
//! what `seccomp::compile` produces at run time, so the two cannot drift.
//!
//! The lists are this crate's own source, included as a module; the shims
//! below stand in for the crate modules they name (`crate::error`,
//! `crate::ioctls`).

use std::path::PathBuf;

use seccompiler::{BpfProgram, SeccompAction, TargetArch};

/// The lists as the crate compiles them, unused parts and all.
#[allow(dead_code)]
#[path = "src/seccomp/lists.rs"]
mod lists;

#[allow(dead_code)]
#[path = "src/ioctls.rs"]
mod ioctls;
#[path = "src/seccomp/refuse.rs"]
mod refuse;
#[path = "src/seccomp/tree.rs"]
mod tree;

/// The one error the lists build: a rule seccompiler refuses.
mod error {
    pub enum Error {
        Seccomp(String),
    }
    pub type Result<T> = std::result::Result<T, Error>;
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/seccomp/lists.rs");
    println!("cargo:rerun-if-changed=src/ioctls.rs");
    println!("cargo:rerun-if-changed=src/seccomp/refuse.rs");
    println!("cargo:rerun-if-changed=src/seccomp/tree.rs");

    // The lists name system calls and ioctls by this (the build) machine's
    // libc constants, and SIGRTMIN is asked of its glibc; the programs
    // check for the x86_64 audit architecture. So the build machine must be
    // what the binary runs on: x86_64 Linux with glibc.
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    let (arch, os, env) = (
        target("CARGO_CFG_TARGET_ARCH"),
        target("CARGO_CFG_TARGET_OS"),
        target("CARGO_CFG_TARGET_ENV"),
    );
    let host_matches = cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    ));
    if (arch.as_str(), os.as_str(), env.as_str()) != ("x86_64", "linux", "gnu") || !host_matches {
        panic!(
            "vmfork-isolation compiles its seccomp filters at build time and \
             supports only x86_64 Linux with glibc, built on the same; \
             target is {arch}-{os}-{env}"
        );
    }

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Every list, and the vCPU list once more for each lower floor.
    let lower = lists::VCPU_FD_FLOORS[1..]
        .iter()
        .map(|&f| (lists::ThreadKind::Vcpu, f, format!("vcpu-{f}")));
    let all = lists::ThreadKind::ALL
        .into_iter()
        .map(|k| (k, lists::VCPU_FD_FLOOR, k.name().to_string()))
        .chain(lower);
    for (kind, floor, name) in all {
        let program = compile(kind, floor);
        let bytes: Vec<u8> = program
            .iter()
            .flat_map(|insn| {
                let mut b = [0u8; 8];
                b[0..2].copy_from_slice(&insn.code.to_le_bytes());
                b[2] = insn.jt;
                b[3] = insn.jf;
                b[4..8].copy_from_slice(&insn.k.to_le_bytes());
                b
            })
            .collect();
        let path = out_dir.join(format!("seccomp-{name}.bpf"));
        if let Err(e) = std::fs::write(&path, bytes) {
            panic!("writing {}: {e}", path.display());
        }
    }
}

/// `seccomp::compile_at(kind, floor, SeccompAction::Trap)`, as the crate
/// does it.
fn compile(kind: lists::ThreadKind, floor: i32) -> BpfProgram {
    let rules = match lists::List::for_kind_at(kind, floor) {
        Ok(list) => list.into_rules(),
        Err(error::Error::Seccomp(e)) => panic!("building the {} list: {e}", kind.name()),
    };
    let opens = rules.contains_key(&libc::SYS_openat) || rules.contains_key(&libc::SYS_open);
    let filter = tree::compile(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    );
    match filter {
        Ok(program) if opens => program,
        Ok(program) => refuse::refuse_opens(program),
        Err(e) => panic!("compiling the {} list: {e}", kind.name()),
    }
}
