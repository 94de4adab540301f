//! Compiles an allow-list into a BPF program that finds the call number by
//! binary search.
//!
//! seccompiler's program compares the number with each listed call in
//! turn. When a filter is installed, the kernel runs it once for every
//! call number to learn which calls it allows whatever their arguments
//! (its action cache), so a chain of N calls costs a thread start
//! (call numbers × N) emulated instructions: about 0.8 us per instruction
//! of the program here, 0.4 ms for the main thread's list (docs/seccomp.md,
//! "Cost"). Every call the cache cannot answer (the argument-checked ones,
//! such as KVM_RUN's ioctl) also walks the chain up to its own entry. A
//! search tree makes both logarithmic in the list's length.
//!
//! Only the dispatch on the number is ours. What follows a matched number
//! is seccompiler's own code for each rule (`BpfProgram::from(SeccompRule)`)
//! followed by the match action, as in its chains, and the program starts
//! with the architecture check seccompiler's programs start with. The unit
//! tests run every list through both programs in a BPF interpreter and
//! require the same answer for every call number and many arguments.
//! Shared by build.rs (the embedded programs) and the crate (run-time
//! compilation), so the two stay equal.

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    sock_filter, BackendError, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch,
};

/// Classic BPF opcodes (linux/bpf_common.h): BPF_LD | BPF_W | BPF_ABS,
/// BPF_JMP | BPF_JA, BPF_JMP | BPF_JEQ/BPF_JGE | BPF_K, BPF_RET | BPF_K.
pub(super) const BPF_LD_W_ABS: u16 = 0x20;
pub(super) const BPF_JMP_JA: u16 = 0x05;
pub(super) const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
pub(super) const BPF_RET_K: u16 = 0x06;
/// `struct seccomp_data` begins with the call number.
pub(super) const NR_OFFSET: u32 = 0;
/// The kernel's limit on a program (BPF_MAXINSNS).
const MAX_LEN: usize = 4096;
/// Calls a leaf of the tree compares one by one: below this a further
/// split saves less than it costs (a split is one or two instructions on
/// the way, a leaf's entry two).
const LEAF: usize = 4;

pub(super) fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The program for `rules`: calls that match one of their rules (or have
/// none, which allows them whatever their arguments) get `matched`, the
/// rest `mismatch`; another architecture is killed, as seccompiler does.
pub fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, TreeError> {
    // seccompiler's program for an empty list is its architecture check
    // and the mismatch action; it also refuses equal actions.
    let mut program = BpfProgram::try_from(SeccompFilter::new(
        BTreeMap::new(),
        mismatch.clone(),
        matched.clone(),
        arch,
    )?)?;
    let refuse = u32::from(mismatch);
    let allow = u32::from(matched);
    if rules.is_empty() {
        return Ok(program);
    }
    program.pop();
    program.push(insn(BPF_LD_W_ABS, 0, 0, NR_OFFSET));

    // Each call with rules gets a body: its rules in order, each ending in
    // the match action (a rule that fails jumps to the next rule), then
    // the mismatch action. Calls without rules need no body.
    let mut keys = Vec::with_capacity(rules.len());
    let mut bodies: Vec<sock_filter> = Vec::new();
    for (nr, chain) in rules {
        let nr = u32::try_from(nr).map_err(|_| TreeError::CallNumber(nr))?;
        if chain.is_empty() {
            keys.push(Key { nr, body: None });
            continue;
        }
        keys.push(Key {
            nr,
            body: Some(bodies.len()),
        });
        for rule in chain {
            bodies.extend(BpfProgram::from(rule));
            bodies.push(insn(BPF_RET_K, 0, 0, allow));
        }
        bodies.push(insn(BPF_RET_K, 0, 0, refuse));
    }
    // A rule begins with a jump past itself and the mismatch after it,
    // taken only in a chain like seccompiler's (never here), but the
    // kernel wants every jump to land in the program: the last body's
    // lands on this.
    if !bodies.is_empty() {
        bodies.push(insn(BPF_RET_K, 0, 0, refuse));
    }

    let mut tree = subtree(&keys, allow, refuse);
    let len = program.len() + tree.code.len() + bodies.len();
    if len > MAX_LEN {
        return Err(BackendError::FilterTooLarge(len).into());
    }
    // The bodies follow the tree: every jump into one is a `ja`, whose
    // offset is 32 bits wide (and below MAX_LEN here).
    for (at, body) in tree.jumps {
        tree.code[at].k = (tree.code.len() + body - (at + 1)) as u32;
    }
    program.extend(tree.code);
    program.extend(bodies);
    Ok(program)
}

/// Why a list did not compile.
#[derive(Debug)]
pub enum TreeError {
    /// seccompiler refused the actions or the program is too long.
    Seccompiler(BackendError),
    /// A negative call number.
    CallNumber(i64),
}

impl From<BackendError> for TreeError {
    fn from(e: BackendError) -> Self {
        TreeError::Seccompiler(e)
    }
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Seccompiler(e) => write!(f, "{e}"),
            TreeError::CallNumber(nr) => write!(f, "{nr} is not a system call number"),
        }
    }
}

/// A listed call: its number, and where its body starts among the bodies
/// (none when it has no rules).
struct Key {
    nr: u32,
    body: Option<usize>,
}

/// Code that ends in a return for every call number, with the `ja`
/// instructions (at, body) that still need the distance to their body.
struct Code {
    code: Vec<sock_filter>,
    jumps: Vec<(usize, usize)>,
}

/// The search over `keys` (sorted by number), with the call number in the
/// accumulator.
fn subtree(keys: &[Key], allow: u32, refuse: u32) -> Code {
    if keys.len() <= LEAF {
        let mut leaf = Code {
            code: Vec::with_capacity(2 * keys.len() + 1),
            jumps: Vec::new(),
        };
        for key in keys {
            leaf.code.push(insn(BPF_JMP_JEQ_K, 0, 1, key.nr));
            match key.body {
                None => leaf.code.push(insn(BPF_RET_K, 0, 0, allow)),
                Some(body) => {
                    leaf.jumps.push((leaf.code.len(), body));
                    leaf.code.push(insn(BPF_JMP_JA, 0, 0, 0));
                }
            }
        }
        leaf.code.push(insn(BPF_RET_K, 0, 0, refuse));
        return leaf;
    }
    let (low, high) = keys.split_at(keys.len() / 2);
    let pivot = high[0].nr;
    let low = subtree(low, allow, refuse);
    let high = subtree(high, allow, refuse);
    // Numbers >= pivot skip the lower half: directly when the distance
    // fits a conditional jump's 8 bits, else through a `ja`.
    let mut code = Vec::with_capacity(low.code.len() + high.code.len() + 2);
    match u8::try_from(low.code.len()) {
        Ok(skip) => code.push(insn(BPF_JMP_JGE_K, skip, 0, pivot)),
        Err(_) => {
            code.push(insn(BPF_JMP_JGE_K, 0, 1, pivot));
            // At most MAX_LEN in a program that compiles.
            code.push(insn(BPF_JMP_JA, 0, 0, low.code.len() as u32));
        }
    }
    let low_at = code.len();
    let high_at = low_at + low.code.len();
    code.extend(low.code);
    code.extend(high.code);
    let jumps = low
        .jumps
        .into_iter()
        .map(|(at, body)| (at + low_at, body))
        .chain(
            high.jumps
                .into_iter()
                .map(|(at, body)| (at + high_at, body)),
        )
        .collect();
    Code { code, jumps }
}
