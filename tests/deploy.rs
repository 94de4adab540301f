//! Deploying functions over HTTP (`PUT`/`DELETE /v1/functions/NAME`):
//! who may, and what a deploy refuses before anything is built. Driven with
//! curl against a real `vmfork serve`.

use vmfork_tests::server::Server;

/// Status and body of one curl request.
fn curl(args: &[&str]) -> (u16, String) {
    let (status, _, body) = vmfork_tests::server::curl(args);
    (status, body)
}
use vmfork_tests::Scratch;

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.addr)
}

#[test]
fn serve_starts_without_templates_and_lists_none() {
    let server = Server::start(&[], &[]);
    let (status, body) = curl(&[&url(&server, "/v1/functions")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), r#"{"functions":[]}"#);
    let (status, _) = curl(&["-X", "POST", &url(&server, "/v1/functions/nope/invoke")]);
    assert_eq!(status, 404);
    server.stop();
}

#[test]
fn a_token_file_guards_deploys() {
    let scratch = Scratch::new("deploy-token");
    let token = scratch.path("token");
    std::fs::write(&token, "0123456789abcdef-secret\n").expect("token");
    let server = Server::start(&[], &["--admin-token-file", &token.to_string_lossy()]);
    let put = url(&server, "/v1/functions/f");
    for auth in [None, Some("Bearer wrong-token-xxxxxxx"), Some("Basic abc")] {
        let mut args = vec!["-X", "PUT", "--data-binary", "x"];
        let header;
        if let Some(a) = auth {
            header = format!("Authorization: {a}");
            args.extend(["-H", &header]);
        }
        args.push(&put);
        let (status, body) = curl(&args);
        assert_eq!(status, 401, "{auth:?}: {body}");
    }
    let (status, _) = curl(&["-X", "DELETE", &put]);
    assert_eq!(status, 401);
    // With the token, the request gets as far as the name and limits.
    let bad = url(&server, "/v1/functions/f?memory=1K");
    let (status, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Authorization: Bearer 0123456789abcdef-secret",
        "--data-binary",
        "x",
        &bad,
    ]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("memory="), "{body}");
    server.stop();
}

#[test]
fn without_a_token_deploys_are_off_beyond_loopback() {
    let server = Server::start_on("0.0.0.0:0", &[], &[]);
    // The server prints 0.0.0.0:PORT; loopback reaches it.
    let port = server.addr.rsplit(':').next().unwrap_or_default();
    let put = format!("http://127.0.0.1:{port}/v1/functions/f");
    let (status, body) = curl(&["-X", "PUT", "--data-binary", "x", &put]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--admin-token-file"), "{body}");
    server.stop();
}

#[test]
fn bad_deploys_are_refused_before_a_build() {
    let server = Server::start(&[], &["--max-module", "1K"]);
    for (path, needle) in [
        ("/v1/functions/a%20b", "function name"),
        ("/v1/functions/f?timeout=forever", "timeout="),
        ("/v1/functions/f?max_output=2G", "max_output="),
        ("/v1/functions/f?colour=red", "unknown parameter"),
    ] {
        let (status, body) = curl(&["-X", "PUT", "--data-binary", "x", &url(&server, path)]);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }
    let big = vec![b'x'; 4096];
    let scratch = Scratch::new("deploy-big");
    let file = scratch.path("big.wasm");
    std::fs::write(&file, big).expect("write");
    let (status, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{}", file.display()),
        &url(&server, "/v1/functions/f"),
    ]);
    assert_eq!(status, 413, "{body}");
    let (status, _) = curl(&["-X", "DELETE", &url(&server, "/v1/functions/nope")]);
    assert_eq!(status, 404);
    server.stop();
}
