//! The search-tree programs (tree.rs) against seccompiler's linear ones:
//! both run in a classic-BPF interpreter on the same `seccomp_data` and
//! must return the same action, for every list, every call number and
//! many argument values drawn from the constants the programs compare with.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::lists::{self, List, ThreadKind};
use super::{refuse, tree};

/// `struct seccomp_data` (linux/seccomp.h), as the programs read it.
#[derive(Clone, Copy, Debug)]
struct Data {
    nr: u32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

impl Data {
    fn word(&self, offset: u32) -> Option<u32> {
        let low_high = |v: u64, high: bool| if high { (v >> 32) as u32 } else { v as u32 };
        match offset {
            0 => Some(self.nr),
            4 => Some(self.arch),
            8 | 12 => Some(low_high(self.ip, offset == 12)),
            16..=60 if offset.is_multiple_of(4) => {
                let i = ((offset - 16) / 8) as usize;
                Some(low_high(self.args[i], (offset - 16) % 8 == 4))
            }
            _ => None,
        }
    }
}

/// Runs `program` on `data` as the kernel's seccomp would; None for an
/// instruction outside what seccompiler and tree.rs emit, a bad load or a
/// jump out of the program.
fn run(program: &[sock_filter], data: &Data) -> Option<u32> {
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = program.get(pc)?;
        pc += 1;
        let cond = |taken: bool| if taken { i.jt } else { i.jf } as usize;
        match i.code {
            0x20 => a = data.word(i.k)?,      // ld [k]
            0x54 => a &= i.k,                 // and #k
            0x05 => pc += i.k as usize,       // ja
            0x15 => pc += cond(a == i.k),     // jeq #k
            0x25 => pc += cond(a > i.k),      // jgt #k
            0x35 => pc += cond(a >= i.k),     // jge #k
            0x45 => pc += cond(a & i.k != 0), // jset #k
            0x06 => return Some(i.k),         // ret #k
            _ => return None,
        }
    }
}

/// The list's program as seccompiler compiles it, with refuse.rs's open
/// check as the crate adds it.
fn linear(rules: BTreeMap<i64, Vec<SeccompRule>>, opens: bool) -> BpfProgram {
    let program = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from);
    assert!(program.is_ok(), "{:?}", program.err());
    let program = program.unwrap_or_default();
    if opens {
        program
    } else {
        refuse::refuse_opens(program)
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize].clone()
    }
}

/// Argument values worth trying: every constant the program compares with
/// or masks by, its neighbours, with and without high bits, and noise.
fn interesting(program: &[sock_filter]) -> Vec<u64> {
    let mut values = vec![0, 1, u64::MAX, 0xffff_ffff, 0x1_0000_0000];
    for i in program {
        if matches!(i.code, 0x15 | 0x25 | 0x35 | 0x45 | 0x54) {
            let k = u64::from(i.k);
            values.extend([
                k,
                k.wrapping_sub(1),
                k + 1,
                k | 0xdead_0000_0000_0000,
                !k & 0xffff_ffff,
            ]);
        }
    }
    values.sort_unstable();
    values.dedup();
    values
}

/// What the kernel's classic-BPF check (bpf_check_classic) requires of
/// the jumps: each one, taken or not, lands inside the program, whether
/// or not it can run; and the program ends in a return.
fn kernel_would_load(name: &str, program: &[sock_filter]) {
    for (pc, i) in program.iter().enumerate() {
        let landings = match i.code {
            0x05 => vec![i.k as usize],
            0x15 | 0x25 | 0x35 | 0x45 => vec![i.jt.into(), i.jf.into()],
            _ => Vec::new(),
        };
        for skip in landings {
            assert!(
                pc + skip + 1 < program.len(),
                "{name}: the jump at {pc} leaves the program: {i:?}"
            );
        }
    }
    assert!(
        matches!(program.last(), Some(i) if i.code == 0x06),
        "{name}: no return at the end"
    );
}

/// Every call number (and x32's, and another architecture) with arguments
/// from `values`, through both programs.
fn same_answers(name: &str, old: &[sock_filter], new: &[sock_filter], values: &[u64]) {
    kernel_would_load(name, new);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let numbers = (0..600u32).chain([0x4000_0000, 0x4000_0001, 0x4000_0101, u32::MAX]);
    for nr in numbers {
        for round in 0..200 {
            let mut args = [0u64; 6];
            for arg in &mut args {
                *arg = if round % 4 == 3 {
                    rng.next()
                } else {
                    rng.pick(values)
                };
            }
            let arch = if round == 0 { 0x4000_0003 } else { 0xc000_003e };
            let data = Data {
                nr,
                arch,
                ip: rng.next(),
                args,
            };
            let (a, b) = (run(old, &data), run(new, &data));
            assert!(
                a.is_some(),
                "{name}: seccompiler's program did not run on {data:x?}"
            );
            assert_eq!(a, b, "{name}: the two programs disagree on {data:x?}");
        }
    }
}

#[test]
fn search_trees_answer_every_call_as_seccompilers_chains_do() {
    let lists = ThreadKind::ALL
        .into_iter()
        .map(|k| (k, lists::VCPU_FD_FLOOR))
        .chain(
            lists::VCPU_FD_FLOORS[1..]
                .iter()
                .map(|&f| (ThreadKind::Vcpu, f)),
        );
    for (kind, floor) in lists {
        let list = List::for_kind_at(kind, floor);
        assert!(list.is_ok(), "{}", kind.name());
        let Ok(list) = list else { return };
        let rules = list.into_rules();
        let opens = rules.contains_key(&libc::SYS_openat) || rules.contains_key(&libc::SYS_open);
        let old = linear(rules, opens);
        let new = super::compile_at(kind, floor, SeccompAction::Trap);
        assert!(new.is_ok(), "{}: {:?}", kind.name(), new.err());
        let new = new.unwrap_or_default();
        assert!(
            new.len() < old.len(),
            "{}: {} >= {}",
            kind.name(),
            new.len(),
            old.len()
        );
        same_answers(kind.name(), &old, &new, &interesting(&old));
    }
}

/// The conditions lists.rs does not use (Qword, the orderings, several
/// conditions and rules on one call, a chain long enough for seccompiler's
/// helper jumps), and enough calls that the tree needs `ja` to skip halves.
#[test]
fn search_trees_keep_every_kind_of_condition() {
    let cond = |arg, len, op, value| SeccompCondition::new(arg, len, op, value);
    let ops = [
        SeccompCmpOp::Eq,
        SeccompCmpOp::Ne,
        SeccompCmpOp::Lt,
        SeccompCmpOp::Le,
        SeccompCmpOp::Gt,
        SeccompCmpOp::Ge,
        SeccompCmpOp::MaskedEq(0xf0f0_0000_00ff),
    ];
    let mut rules = BTreeMap::new();
    let mut rng = Rng(7);
    for nr in 0..300i64 {
        let mut chain = Vec::new();
        // Every fifth call has one to three rules, the rest none.
        let rule_count = if nr % 5 == 0 { 1 + nr % 3 } else { 0 };
        for r in 0..rule_count {
            let conditions = (0..=(nr + r) % 3)
                .map(|c| {
                    let len = if (nr + c) % 2 == 0 {
                        SeccompCmpArgLen::Qword
                    } else {
                        SeccompCmpArgLen::Dword
                    };
                    let value =
                        rng.pick(&[0, 5, 0x1_0000_0005, 0xffff_ffff, 0x8000_0000_0000_0000]);
                    cond(((r + c) % 6) as u8, len, rng.pick(&ops), value)
                })
                .collect::<Result<Vec<_>, _>>();
            assert!(conditions.is_ok());
            let rule = SeccompRule::new(conditions.unwrap_or_default());
            assert!(rule.is_ok());
            chain.extend(rule);
        }
        if nr % 7 != 3 {
            rules.insert(nr * 2, chain);
        }
    }
    // A call whose rules need seccompiler's helper jumps (over 255
    // instructions of conditions in one rule).
    let long = (0..90)
        .map(|i| {
            cond(
                (i % 6) as u8,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Ne,
                i as u64,
            )
        })
        .collect::<Result<Vec<_>, _>>();
    assert!(long.is_ok());
    let long = SeccompRule::new(long.unwrap_or_default());
    assert!(long.is_ok());
    rules.insert(1001, long.into_iter().collect());

    let old = linear(rules.clone(), true);
    let new = tree::compile(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    );
    assert!(new.is_ok(), "{:?}", new.err());
    let new = new.unwrap_or_default();
    assert!(
        new.iter().any(|i| i.code == 0x35 && i.jt == 0),
        "no half skipped through a ja"
    );
    let mut values = interesting(&old);
    values.extend([0x1_0000_0005, 0x8000_0000_0000_0000, 0x8000_0000_0000_0001]);
    same_answers("synthetic", &old, &new, &values);
}

#[test]
fn a_call_is_found_in_logarithmic_steps() {
    // The main thread's list: the longest path through the search must
    // stay far below the chain's (every unlisted call walks all of it).
    let list = List::for_kind(ThreadKind::Vmm);
    assert!(list.is_ok());
    let Ok(list) = list else { return };
    let calls = list.calls().count();
    let program = super::compile(ThreadKind::Vmm, SeccompAction::Trap).unwrap_or_default();
    let steps = |nr| {
        let data = Data {
            nr,
            arch: 0xc000_003e,
            ip: 0,
            args: [0; 6],
        };
        let (mut a, mut pc, mut n) = (0u32, 0usize, 0usize);
        // Counts instructions up to the first return or argument load.
        while let Some(i) = program.get(pc) {
            n += 1;
            pc += 1;
            match i.code {
                0x20 if i.k >= 16 => break,
                0x20 => a = data.word(i.k).unwrap_or_default(),
                0x05 => pc += i.k as usize,
                0x15 => pc += if a == i.k { i.jt } else { i.jf } as usize,
                0x35 => pc += if a >= i.k { i.jt } else { i.jf } as usize,
                _ => break,
            }
        }
        n
    };
    let longest = (0..600).map(steps).max().unwrap_or(usize::MAX);
    let bound = 8 + 2 * (usize::BITS - calls.leading_zeros()) as usize + 2 * 4 + 1;
    assert!(
        longest <= bound,
        "{longest} steps for {calls} calls (bound {bound})"
    );
}
