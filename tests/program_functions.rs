//! Program functions in `vmfork serve`: a Linux template built with
//! `--exec` runs its program in a fresh clone per request, with the CGI
//! conventions (docs/serve.md): the request in CGI variables, the body on
//! stdin, stdout the response with an optional CGI header block. Driven
//! with curl, a real HTTP client. Linux needs hardware virtualization:
//! scripts/test-svm.sh runs this in the SVM rig; on PVM the template build
//! ends with the clear exit-11 message, which is what is checked there.

use vmfork_tests::server::{curl, header, Server};
use vmfork_tests::{assert_clean_error, exit, guest_artifact, host_is_pvm, vmfork, Run, Scratch};

/// One script, its behaviour chosen by PATH_INFO: a CGI answer echoing
/// the request, a failure, a hang, a custom status.
const SCRIPT: &str = r#"case "$PATH_INFO" in
/fail) echo "failing on purpose" >&2; exit 3 ;;
/hang) while :; do :; done ;;
/gone) printf 'Status: 410 Gone\r\nContent-Type: text/plain\r\n\r\nno more\n'; exit 0 ;;
/plain) echo "no headers here"; exit 0 ;;
esac
printf 'Content-Type: text/plain\r\nX-Method: %s\r\n\r\n' "$REQUEST_METHOD"
echo "path=$PATH_INFO query=$QUERY_STRING len=$CONTENT_LENGTH type=$CONTENT_TYPE agent=$HTTP_USER_AGENT"
echo "stdin=$(wc -c)"
echo "clone=$(cat /run/vmfork/clone-id)"
"#;

/// `vmfork template build --exec EXEC` of our Linux guest on `rootfs`.
fn build_exec(rootfs: &str, exec: &str, out: &str) -> Run {
    let kernel = guest_artifact("linux", "vmlinux");
    vmfork(&[
        "template",
        "build",
        "--kernel",
        &kernel.to_string_lossy(),
        "--rootfs",
        rootfs,
        "--mem",
        "256M",
        "--timeout",
        "120",
        "--quiet",
        "--exec",
        exec,
        "--out",
        out,
    ])
}

fn cgi_template(scratch: &Scratch) -> Option<String> {
    let rootfs = guest_artifact("rootfs", "rootfs");
    let out = scratch.str("tpl");
    let exec = format!(
        "/.vmfork/bin/busybox sh -c '{}'",
        SCRIPT.replace('\'', r"'\''")
    );
    let run = build_exec(&rootfs.to_string_lossy(), &exec, &out);
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
        return None;
    }
    assert_eq!(run.status, 0, "{run}");
    Some(out)
}

#[test]
fn an_exec_template_serves_cgi_requests_in_fresh_clones() {
    let scratch = Scratch::new("cgi");
    let Some(tpl) = cgi_template(&scratch) else {
        return;
    };
    let server = Server::start(&[("cgi", tpl)], &["--timeout", "20s"]);
    let base = format!("http://{}/v1/functions/cgi/invoke", server.addr);

    let url = format!("{base}/a/b?x=1&y=2");
    let (status, headers, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: text/plain",
        "-A",
        "tester/1",
        "--data-binary",
        "hello world",
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-method"), Some("PUT"), "{headers:?}");
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));
    assert!(
        body.contains("path=/a/b query=x=1&y=2 len=11 type=text/plain agent=tester/1"),
        "{body}"
    );
    assert!(body.contains("stdin=11"), "{body}");
    let first_clone = body
        .lines()
        .find(|l| l.starts_with("clone="))
        .map(str::to_string);

    // Another request is another clone.
    let (status, _, body) = curl(&["--data-binary", "x", &base]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path= "), "{body}");
    let second_clone = body
        .lines()
        .find(|l| l.starts_with("clone="))
        .map(str::to_string);
    assert!(
        first_clone.is_some() && first_clone != second_clone,
        "{first_clone:?} {second_clone:?}"
    );

    let (status, _, body) = curl(&[&format!("{base}/gone")]);
    assert_eq!(status, 410, "{body}");
    assert_eq!(body, "no more\n");

    let (status, headers, body) = curl(&[&format!("{base}/plain")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "no headers here\n");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );

    let (status, _, body) = curl(&[&format!("{base}/fail")]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("exited with status 3"), "{body}");

    server.stop();
}

#[test]
fn a_program_past_the_timeout_gets_504() {
    let scratch = Scratch::new("cgi-hang");
    let Some(tpl) = cgi_template(&scratch) else {
        return;
    };
    let server = Server::start(&[("cgi", tpl)], &["--timeout", "5s"]);
    let url = format!("http://{}/v1/functions/cgi/invoke/hang", server.addr);
    let (status, _, body) = curl(&[&url]);
    assert_eq!(status, 504, "{body}");
    // The server carries on.
    let url = format!("http://{}/v1/functions/cgi/invoke/gone", server.addr);
    assert_eq!(curl(&[&url]).0, 410);
    server.stop();
}

#[test]
fn exec_needs_a_guest_with_the_agent() {
    let scratch = Scratch::new("cgi-embedded");
    let run = vmfork(&[
        "template",
        "build",
        "--exec",
        "/bin/true",
        "--out",
        &scratch.str("tpl"),
    ]);
    assert_clean_error(&run, 3, "--exec needs a guest with the vmfork agent");
    let run = vmfork(&[
        "template",
        "build",
        "--exec",
        "'unbalanced",
        "--out",
        &scratch.str("t2"),
    ]);
    assert_clean_error(&run, 3, "--exec \"'unbalanced\": unbalanced quotes");
}

/// A compiled program, as most CGI functions are: static C (no libc in
/// the image), built here with the host's C compiler.
const C_PROGRAM: &str = r#"#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    const char *method = getenv("REQUEST_METHOD");
    printf("Content-Type: text/plain\r\nX-Lang: c\r\n\r\n");
    printf("method=%s body=", method ? method : "?");
    int c;
    while ((c = getchar()) != EOF) putchar(toupper(c));
    printf("\n");
    return 0;
}
"#;

#[test]
fn a_static_c_program_serves_cgi_requests() {
    let scratch = Scratch::new("cgi-c");
    let out = scratch.str("tpl");
    if host_is_pvm() {
        let plain = guest_artifact("rootfs", "rootfs");
        let run = build_exec(&plain.to_string_lossy(), "/usr/bin/upper", &out);
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
        return;
    }
    let bin = scratch.path("tree/usr/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let source = scratch.path("upper.c");
    std::fs::write(&source, C_PROGRAM).expect("write");
    let cc = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(bin.join("upper"))
        .arg(&source)
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let img = scratch.str("root.ext4");
    let run = vmfork(&[
        "rootfs",
        "build",
        &scratch.str("tree"),
        "--out",
        &img,
        "--quiet",
    ]);
    assert_eq!(run.status, 0, "{run}");
    let run = build_exec(&img, "/usr/bin/upper", &out);
    assert_eq!(run.status, 0, "{run}");
    let server = Server::start(&[("upper", out)], &["--timeout", "20s"]);
    let url = format!("http://{}/v1/functions/upper/invoke", server.addr);
    let (status, headers, body) = curl(&["--data-binary", "hello from c", &url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-lang"), Some("c"), "{headers:?}");
    assert_eq!(body, "method=POST body=HELLO FROM C\n");
    server.stop();
}
