//! Which templates `vmfork serve` believes (docs/security.md, "Templates:
//! verified, not trusted"): a believed template's recorded kernel digest
//! lets its clones resume straight into their request, which
//! `GET /v1/functions` shows as `resumes_into_request`. Untrusted ones
//! still serve, with the two-step resume.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vmfork_tests::server::Server;
use vmfork_tests::{assert_clean_error, build_template, vmfork, Scratch};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A `counter` template of the embedded guest at `dir` (parents made).
fn counter(dir: &Path) -> String {
    std::fs::create_dir_all(dir.parent().expect("parent")).expect("mkdir");
    build_template(
        &dir.to_string_lossy(),
        "32M",
        "quiet=1 timer_hz=0 touch_mib=1 function=counter",
    )
}

/// Each function's `resumes_into_request`, and one request to each.
fn resumes(server: &Server, names: &[&str]) -> Vec<bool> {
    for name in names {
        let (code, _, body) = server.invoke(name, b"");
        assert_eq!((code, body.as_slice()), (200, &b"1"[..]), "{name}");
    }
    server
        .resumes_into_request(names)
        .into_iter()
        .map(|r| r.expect("resumes_into_request"))
        .collect()
}

#[test]
fn a_directory_others_can_write_above_a_template_untrusts_it_unless_sticky() {
    let scratch = Scratch::new("trust-parents");
    let open = scratch.path("open");
    let sticky = scratch.path("sticky");
    let plain = scratch.path("plain");
    let in_open = counter(&open.join("tpl"));
    let in_sticky = counter(&sticky.join("tpl"));
    let in_plain = counter(&plain.join("tpl"));
    chmod(&open, 0o777);
    chmod(&sticky, 0o1777);
    chmod(&plain, 0o755);
    let server = Server::start(
        &[
            ("open", in_open),
            ("sticky", in_sticky),
            ("plain", in_plain),
        ],
        &[],
    );
    assert_eq!(
        resumes(&server, &["open", "sticky", "plain"]),
        [false, true, true]
    );
    server.stop();
}

#[test]
fn named_stores_are_the_only_trusted_templates() {
    let scratch = Scratch::new("trust-stores");
    let store = scratch.path("store");
    let inside = counter(&store.join("tpl"));
    let outside = counter(&scratch.path("elsewhere/tpl"));
    let store_arg = store.to_string_lossy().into_owned();
    let server = Server::start(
        &[("inside", inside), ("outside", outside)],
        &["--trusted-templates", &store_arg],
    );
    // Without the flag both would be trusted (owned by this user, in
    // directories only it can write).
    assert_eq!(resumes(&server, &["inside", "outside"]), [true, false]);
    server.stop();

    let missing = scratch.str("no-such-store");
    let run = vmfork(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--trusted-templates",
        &missing,
    ]);
    assert_clean_error(&run, 3, "--trusted-templates");
}
