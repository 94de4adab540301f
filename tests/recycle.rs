//! What a recycled VM gets back from the template (docs/security.md,
//! "Recycled VMs: what a reset restores"), with the embedded guest's
//! test functions that report some piece of vCPU or page-table state and
//! then change it. With `--max-concurrency 1` and no warm shells, a VM
//! that is recycled is the only one in the pool, so the next request runs
//! in it; every request must still see what the first (fresh) one saw.

use vmfork_tests::server::{function_template as template, Server};
use vmfork_tests::Scratch;

const IN_PLACE: &str = r#"vmfork_recycled_vms_total{reset="in_place"}"#;
const REMAP: &str = r#"vmfork_recycled_vms_total{reset="remap"}"#;
const CLOSED: &str = r#"vmfork_unrecycled_vms_total{reason="guest_ring0"}"#;

/// (in place, remapped, closed after ring 0) so far.
fn outcomes(server: &Server) -> (i64, i64, i64) {
    let m = |s| server.metric(s).unwrap_or(-1);
    (m(IN_PLACE), m(REMAP), m(CLOSED))
}

/// Waits until `n` finished clones' VMs have been recycled or closed (the
/// reapers' last step for a clone that answered); the counts then.
fn wait_handled(server: &Server, n: i64) -> (i64, i64, i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = outcomes(server);
        if o.0 + o.1 + o.2 >= n || std::time::Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `function` `runs` times, one request after another VM is handled,
/// and checks each response against the first: what a fresh clone of the
/// template sees. Returns the first response and the final counts.
fn same_every_time(server: &Server, function: &str, runs: i64) -> (String, (i64, i64, i64)) {
    let mut first = None;
    let mut counts = (0, 0, 0);
    for run in 1..=runs {
        let (code, _, body) = server.invoke(function, b"");
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(code, 200, "{function}: {body}");
        match &first {
            None => first = Some(body),
            Some(fresh) => assert_eq!(
                &body, fresh,
                "{function}: request {run} saw what an earlier request left (counts so far {counts:?})"
            ),
        }
        counts = wait_handled(server, run);
        assert_eq!(
            counts.0 + counts.1 + counts.2,
            run,
            "{function}: {counts:?}"
        );
    }
    (first.unwrap_or_default(), counts)
}

/// x87 control word, MXCSR and XMM15: ring-3 state, so the VM is
/// recycled (in place by default, remapped with `--recycle remap`) and
/// the restore of the vCPU's FPU state is what gives them back.
#[test]
fn fpu_and_sse_state_is_the_templates_in_a_recycled_vm() {
    let scratch = Scratch::new("recycle-fpu");
    let fns = [("fpu", template(&scratch, "fpu", "fpu-write"))];
    for (mode, expect) in [("in-place", (4, 0, 0)), ("remap", (0, 4, 0))] {
        let server = Server::start(&fns, &["--max-concurrency", "1", "--recycle", mode]);
        let (fresh, counts) = same_every_time(&server, "fpu", 4);
        assert_eq!(
            fresh,
            "fcw=0x037f mxcsr=0x00001f80 xmm15=0x00000000000000000000000000000000"
        );
        // Every VM was recycled, and each next request ran in it (the
        // pool's only VM).
        assert_eq!(counts, expect, "--recycle {mode}");
        server.stop();
    }
}

/// A function that switches CR3 to page tables outside the template's
/// tree (built before READY, so in the template) and changes one entry:
/// on a shadow-paging host (PVM) its VM is closed, since an in-place
/// refill of that table leaves KVM's shadow of it mapping the previous
/// request's page (measured before this rule: the next request saw
/// `page1`). On a host without shadow paging it is recycled.
#[test]
fn page_tables_built_at_run_time_never_reach_the_next_request() {
    let scratch = Scratch::new("recycle-ptb");
    let fns = [("ptb", template(&scratch, "ptb", "page-table-build"))];
    for mode in ["in-place", "remap"] {
        let server = Server::start(&fns, &["--max-concurrency", "1", "--recycle", mode]);
        let (fresh, counts) = same_every_time(&server, "ptb", 4);
        assert_eq!(fresh, "saw=page0 now=page1");
        assert!(
            counts.2 == 4 || counts.2 == 0,
            "--recycle {mode}: {counts:?}"
        );
        server.stop();
    }
}

/// IA32_KERNEL_GS_BASE, written from ring 0: on a shadow-paging host the
/// VM is closed (ring 0 ran); elsewhere it is recycled and the MSR comes
/// back with the template's MSRs.
#[test]
fn an_msr_written_by_ring_0_is_the_templates_in_the_next_request() {
    let scratch = Scratch::new("recycle-msr");
    let fns = [("msr", template(&scratch, "msr", "msr-write"))];
    for mode in ["in-place", "remap"] {
        let server = Server::start(&fns, &["--max-concurrency", "1", "--recycle", mode]);
        let (fresh, counts) = same_every_time(&server, "msr", 3);
        assert_eq!(fresh, "kernel_gs_base=0x0");
        assert!(
            counts.2 == 3 || counts.2 == 0,
            "--recycle {mode}: {counts:?}"
        );
        server.stop();
    }
}

/// The fast path keeps its reset: a function that stays in ring 3 (echo)
/// is recycled in place every time.
#[test]
fn ring_3_functions_are_still_recycled_in_place() {
    let scratch = Scratch::new("recycle-echo");
    let fns = [("echo", template(&scratch, "echo", "echo"))];
    let server = Server::start(&fns, &["--max-concurrency", "1"]);
    for run in 1..=5 {
        let (code, _, body) = server.invoke("echo", b"hello");
        assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(wait_handled(&server, run), (run, 0, 0));
    }
    server.stop();
}
