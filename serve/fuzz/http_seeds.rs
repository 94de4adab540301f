//! The HTTP target's seed corpus (fuzz/corpus/http): valid requests to
//! every route and function, and the edge cases of the request path:
//! percent-encoded and odd function names, pipelining, chunked bodies,
//! Content-Length against the body, huge declared lengths, malformed
//! request lines and headers. Names are `<statuses>__<what>.http`.

use super::MAX_BODY;

fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: fuzz\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    [out.into_bytes(), body.to_vec()].concat()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[&format!("Content-Length: {}", body.len())],
        body,
    )
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let invoke = |f: &str| format!("/v1/functions/{f}/invoke");
    let echo = invoke("echo");
    let close = "Connection: close";
    let chunked = "Transfer-Encoding: chunked";
    let big = vec![b'b'; MAX_BODY + 1];
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("200__echo", post(&echo, b"hello")),
        ("200__echo-empty", post(&echo, b"")),
        (
            "200__echo-binary",
            post(&echo, &(0..=255u8).collect::<Vec<u8>>()),
        ),
        ("200__echo-max-body", post(&echo, &vec![b'm'; MAX_BODY])),
        ("200__sha256", post(&invoke("sha256"), b"abc")),
        (
            "200__json-upper",
            post(&invoke("json-upper"), br#"{"key": ["value", "\u00e9\n"]}"#),
        ),
        (
            "422__json-upper-unbalanced",
            post(&invoke("json-upper"), b"[[["),
        ),
        ("422__json-upper-empty", post(&invoke("json-upper"), b"")),
        ("200__counter", post(&invoke("counter"), b"")),
        (
            "200__echo-percent-encoded-name",
            post(&invoke("%65%63%68%6f"), b"x"),
        ),
        ("200__echo-query", post(&format!("{echo}?a=b&c=%ff"), b"q")),
        (
            "200__echo-chunked",
            [
                request("POST", &echo, &[chunked], b""),
                b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "200__echo-http10",
            b"POST /v1/functions/echo/invoke HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
        ),
        (
            "200__echo-expect-continue",
            request(
                "POST",
                &echo,
                &["Content-Length: 3", "Expect: 100-continue"],
                b"abc",
            ),
        ),
        ("200__healthz", request("GET", "/healthz", &[], b"")),
        ("200__metrics", request("GET", "/metrics", &[], b"")),
        ("200__list", request("GET", "/v1/functions", &[], b"")),
        (
            "200+200__pipelined",
            [post(&echo, b"one"), post(&invoke("sha256"), b"two")].concat(),
        ),
        (
            "200+404+200__pipelined-mixed",
            [
                post(&echo, b"1"),
                post(&invoke("nope"), b""),
                request("GET", "/healthz", &[close], b""),
            ]
            .concat(),
        ),
        (
            "200+200__keep-alive-then-close",
            [
                request("GET", "/healthz", &[], b""),
                request("GET", "/healthz", &[close], b""),
                post(&echo, b"never"),
            ]
            .concat(),
        ),
        (
            "200+200__http10-keep-alive",
            [
                b"POST /v1/functions/echo/invoke HTTP/1.0\r\nConnection: keep-alive\r\n".to_vec(),
                b"Content-Length: 1\r\n\r\nx".to_vec(),
                request("GET", "/healthz", &[close], b""),
            ]
            .concat(),
        ),
        (
            "200+200__head-after-get",
            [
                request("GET", "/healthz", &[], b""),
                request("HEAD", "/healthz", &[close], b""),
            ]
            .concat(),
        ),
        ("404__unknown-function", post(&invoke("nope"), b"x")),
        ("404__empty-name", post("/v1/functions//invoke", b"")),
        ("404__trailing-slash", post(&format!("{echo}/"), b"")),
        ("404__root", request("GET", "/", &[], b"")),
        ("404__dot-dot", post("/v1/functions/../invoke", b"")),
        ("404__encoded-slash", post(&invoke("ec%2Fho"), b"")),
        ("404__nul-name", post(&invoke("%00"), b"")),
        ("400__name-bad-utf8", post(&invoke("%ff"), b"")),
        ("405__get-invoke", request("GET", &echo, &[], b"")),
        ("405__head-invoke", request("HEAD", &echo, &[], b"")),
        ("405__post-healthz", post("/healthz", b"x")),
        ("200__head-healthz", request("HEAD", "/healthz", &[], b"")),
        ("413__body-over-limit", post(&echo, &big)),
        (
            "413__declared-huge-refused-before-the-body",
            request("POST", &echo, &["Content-Length: 1099511627776"], b"short"),
        ),
        (
            "413__chunked-over-limit",
            [request("POST", &echo, &[chunked], b""), chunked_body(&big)].concat(),
        ),
        (
            "400__content-length-overflow",
            request(
                "POST",
                &echo,
                &["Content-Length: 18446744073709551616"],
                b"",
            ),
        ),
        (
            "400__content-length-negative",
            request("POST", &echo, &["Content-Length: -1"], b""),
        ),
        (
            "400__content-length-twice",
            request(
                "POST",
                &echo,
                &["Content-Length: 1", "Content-Length: 2"],
                b"ab",
            ),
        ),
        (
            "200__length-and-chunked",
            request("POST", &echo, &["Content-Length: 3", chunked], b"0\r\n\r\n"),
        ),
        (
            "400__body-cut-short",
            request("POST", &echo, &["Content-Length: 100"], b"only this"),
        ),
        (
            "400__chunk-size-huge",
            [
                request("POST", &echo, &[chunked], b""),
                b"ffffffffffffffffff\r\nx\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "400__chunk-cut",
            [
                request("POST", &echo, &[chunked], b""),
                b"10\r\nabc".to_vec(),
            ]
            .concat(),
        ),
        (
            "400__bad-method",
            b"P\x00ST /healthz HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("400__no-version", b"GET /healthz\r\n\r\n".to_vec()),
        (
            "400__http2-version",
            b"GET /healthz HTTP/2.0\r\n\r\n".to_vec(),
        ),
        (
            "200__bare-lf",
            b"GET /healthz HTTP/1.1\nHost: x\n\n".to_vec(),
        ),
        (
            "400__header-without-colon",
            request("GET", "/healthz", &["NoColon"], b""),
        ),
        (
            "400__obs-fold",
            request("GET", "/healthz", &["X-A: 1", " folded"], b""),
        ),
        (
            "200__big-header",
            request(
                "GET",
                "/healthz",
                &[&format!("X-Big: {}", "h".repeat(100_000))],
                b"",
            ),
        ),
        (
            "431__huge-header",
            request(
                "GET",
                "/healthz",
                &[&format!("X-Big: {}", "h".repeat(600_000))],
                b"",
            ),
        ),
        ("none__empty", Vec::new()),
        ("none__partial-line", b"GET /hea".to_vec()),
        (
            "400__garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| (format!("{name}.http"), bytes))
        .collect()
}

fn chunked_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in body.chunks(4096) {
        out.extend(format!("{:x}\r\n", part.len()).into_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
