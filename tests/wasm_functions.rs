//! WebAssembly functions end to end: C modules (tests/wasm/*.c, built with
//! Debian's clang and wasi-libc) served by a real `vmfork serve`, each
//! request in a fresh clone, driven with curl. Templates come from
//! `vmfork template build --wasm` and from deploys over HTTP.

use std::path::PathBuf;

use vmfork_tests::server::{curl, header, Server};
use vmfork_tests::{assert_clean_error, vmfork, Scratch};

/// `tests/wasm/NAME.c` compiled to a WASI module in `scratch`.
fn module(scratch: &Scratch, name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("wasm/{name}.c"));
    let out = scratch.path(&format!("{name}.wasm"));
    vmfork_tests::compile_wasi_file(&src, &out);
    out
}

fn template(scratch: &Scratch, name: &str) -> String {
    let wasm = module(scratch, name);
    let out = scratch.str(&format!("{name}-tpl"));
    let run = vmfork(&[
        "template",
        "build",
        "--wasm",
        &wasm.to_string_lossy(),
        "--mem",
        "64M",
        "--quiet",
        "--out",
        &out,
    ]);
    assert_eq!(run.status, 0, "{run}");
    out
}

fn invoke(server: &Server, name: &str, rest: &str) -> String {
    format!("http://{}/v1/functions/{name}/invoke{rest}", server.addr)
}

#[test]
fn a_c_word_counter_answers_from_its_template() {
    let scratch = Scratch::new("wasm-wc");
    let tpl = template(&scratch, "wc");
    let server = Server::start(&[("wc", tpl)], &[]);
    let (status, headers, body) = curl(&[
        "--data-binary",
        "one two three\nfour five\n",
        &invoke(&server, "wc", ""),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "2 5 24\n");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    // Another request, another clone, the same answer for the same input.
    let (status, _, body) = curl(&["--data-binary", "x", &invoke(&server, "wc", "")]);
    assert_eq!((status, body.as_str()), (200, "0 1 1\n"));
    server.stop();
}

#[test]
fn a_trusted_template_resumes_into_its_run_and_an_untrusted_one_does_not() {
    let scratch = Scratch::new("wasm-resume-exec");
    let trusted = template(&scratch, "wc");
    // The same files in a folder anyone may write: the kernel digest in
    // its manifest is only a claim, so it gets RESUMED and then EXEC.
    let untrusted = scratch.str("untrusted");
    std::fs::create_dir(&untrusted).expect("mkdir");
    for file in std::fs::read_dir(&trusted).expect("template dir") {
        let file = file.expect("entry").path();
        let to = PathBuf::from(&untrusted).join(file.file_name().expect("name"));
        std::fs::copy(&file, to).expect("copy");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&untrusted, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let server = Server::start(&[("trusted", trusted), ("untrusted", untrusted)], &[]);
    assert_eq!(
        server.resumes_into_request(&["trusted", "untrusted"]),
        [Some(true), Some(false)]
    );
    // Both ways run the module once per clone, on that request's input.
    for name in ["trusted", "untrusted", "trusted", "untrusted"] {
        let (status, _, body) = curl(&["--data-binary", "a bc", &invoke(&server, name, "")]);
        assert_eq!((status, body.as_str()), (200, "0 2 4\n"), "{name}");
    }
    server.stop();
}

#[test]
fn cgi_headers_status_path_and_query() {
    let scratch = Scratch::new("wasm-cgi");
    let tpl = template(&scratch, "cgi");
    let server = Server::start(&[("cgi", tpl)], &[]);
    let (status, headers, body) = curl(&[
        "-X",
        "PATCH",
        "--data-binary",
        "12345",
        &invoke(&server, "cgi", "/a/b?x=1&y=2"),
    ]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "x-path"), Some("/a/b"));
    assert_eq!(
        body,
        "{\"method\":\"PATCH\",\"query\":\"x=1&y=2\",\"argv0\":\"cgi.wasm\",\"length\":\"5\"}\n"
    );
    server.stop();
}

#[test]
fn traps_loops_and_exit_statuses_get_5xx_and_the_server_carries_on() {
    let scratch = Scratch::new("wasm-fail");
    let tpl = template(&scratch, "fail");
    let server = Server::start(&[("fail", tpl)], &["--timeout", "3s"]);
    let (status, _, body) = curl(&[&invoke(&server, "fail", "/trap")]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("trapped"), "{body}");
    let (status, _, body) = curl(&[&invoke(&server, "fail", "/exit")]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("exited with status 3"), "{body}");
    let (status, _, body) = curl(&[&invoke(&server, "fail", "/loop")]);
    assert_eq!(status, 504, "{body}");
    let (status, _, body) = curl(&[&invoke(&server, "fail", "/")]);
    assert_eq!((status, body.as_str()), (200, "fine\n"));
    server.stop();
}

#[test]
fn random_get_differs_in_every_one_of_100_requests() {
    let scratch = Scratch::new("wasm-random");
    let tpl = template(&scratch, "random");
    let server = Server::start(&[("random", tpl)], &[]);
    let url = invoke(&server, "random", "");
    let mut seen = std::collections::HashSet::new();
    for i in 0..100 {
        let (status, _, body) = curl(&["-X", "POST", &url]);
        assert_eq!(status, 200, "request {i}: {body}");
        let hex = body.trim().to_string();
        assert_eq!(hex.len(), 32, "request {i}: {body:?}");
        assert!(seen.insert(hex), "request {i} repeated random bytes");
    }
    server.stop();
}

#[test]
fn a_module_importing_what_the_guest_lacks_is_refused_at_build() {
    let scratch = Scratch::new("wasm-badimport");
    let wasm = module(&scratch, "badimport");
    let run = vmfork(&[
        "template",
        "build",
        "--wasm",
        &wasm.to_string_lossy(),
        "--out",
        &scratch.str("tpl"),
    ]);
    assert_clean_error(&run, 3, "env::host_secret");
}

#[test]
fn deploy_replace_list_restart_and_delete_over_http() {
    let scratch = Scratch::new("wasm-deploy");
    let state = scratch.str("state");
    let cgi = module(&scratch, "cgi");
    let wc = module(&scratch, "wc");
    let bad = module(&scratch, "badimport");
    // A store named for other templates: serve's own state directory
    // counts as one too, so what it builds there is believed (below).
    let store = scratch.str("store");
    std::fs::create_dir(&store).expect("mkdir");
    let server = Server::start(&[], &["--state-dir", &state, "--trusted-templates", &store]);
    let put = |wasm: &PathBuf, query: &str| {
        let url = format!("http://{}/v1/functions/f{query}", server.addr);
        curl(&[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", wasm.display()),
            &url,
        ])
    };
    let (status, _, body) = put(&cgi, "?timeout=2s&memory=32M&max_output=64K");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"timeout_ms\":2000"), "{body}");
    let (status, _, _) = curl(&[&invoke(&server, "f", "/x")]);
    assert_eq!(status, 201);
    // A bad module is refused and the deployed one keeps serving.
    let (status, _, body) = put(&bad, "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("env::host_secret"), "{body}");
    let not_wasm = scratch.path("not.wasm");
    std::fs::write(&not_wasm, b"hello").expect("write");
    let (status, _, body) = put(&not_wasm, "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not WebAssembly"), "{body}");
    let (status, _, _) = curl(&[&invoke(&server, "f", "/x")]);
    assert_eq!(status, 201);
    // Replacing it: the next request runs the new module.
    let (status, _, body) = put(&wc, "");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = curl(&["--data-binary", "a b", &invoke(&server, "f", "")]);
    assert_eq!((status, body.as_str()), (200, "0 2 3\n"));
    let list = format!("http://{}/v1/functions", server.addr);
    let (_, _, body) = curl(&[&list]);
    assert!(
        body.contains("\"name\":\"f\"")
            && body.contains("\"deployed\":true")
            && body.contains("\"resumes_into_request\":true"),
        "{body}"
    );
    server.stop();

    // A restart with the same state directory serves it again.
    let server = Server::start(&[], &["--state-dir", &state]);
    let (status, _, body) = curl(&["--data-binary", "a b c", &invoke(&server, "f", "")]);
    assert_eq!((status, body.as_str()), (200, "0 3 5\n"));
    let url = format!("http://{}/v1/functions/f", server.addr);
    let (status, _, _) = curl(&["-X", "DELETE", &url]);
    assert_eq!(status, 204);
    let (status, _, _) = curl(&[&invoke(&server, "f", "")]);
    assert_eq!(status, 404);
    server.stop();
    assert!(
        !PathBuf::from(&state).join("functions/f").exists(),
        "the deleted function's files remain"
    );
}
