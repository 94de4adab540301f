//! The CGI conventions of program functions (Wasm modules and Linux
//! `--exec` templates), as WAGI uses them: the request is described in
//! CGI environment variables and its body is stdin; stdout is the
//! response, optionally led by a CGI header block (docs/serve.md).

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// Where the function was reached, for `SCRIPT_NAME` and the `SERVER_*`
/// variables.
pub struct CgiRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// `/v1/functions/NAME/invoke`
    pub script_name: String,
    /// The part of the path after `script_name` (`PATH_INFO`).
    pub path_info: String,
    pub server_port: u16,
    pub remote_addr: Option<std::net::SocketAddr>,
}

/// Headers never passed to a function: credentials meant for vmfork, and
/// the two that have variables of their own.
const WITHHELD: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

impl CgiRequest {
    /// The request's CGI/1.1 environment (RFC 3875 section 4.1), as
    /// `NAME=value` entries.
    pub fn environment(&self, body_len: usize) -> Vec<Vec<u8>> {
        let mut env: Vec<(String, Vec<u8>)> = vec![
            ("GATEWAY_INTERFACE".into(), b"CGI/1.1".to_vec()),
            ("SERVER_SOFTWARE".into(), server_software().into_bytes()),
            ("SERVER_PROTOCOL".into(), b"HTTP/1.1".to_vec()),
            ("REQUEST_METHOD".into(), self.method.as_str().into()),
            ("SCRIPT_NAME".into(), self.script_name.clone().into_bytes()),
            ("PATH_INFO".into(), self.path_info.clone().into_bytes()),
            (
                "QUERY_STRING".into(),
                self.uri.query().unwrap_or("").as_bytes().to_vec(),
            ),
            ("REQUEST_URI".into(), self.uri.to_string().into_bytes()),
            ("CONTENT_LENGTH".into(), body_len.to_string().into_bytes()),
            (
                "SERVER_PORT".into(),
                self.server_port.to_string().into_bytes(),
            ),
        ];
        let host = self
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
            .unwrap_or("localhost");
        env.push(("SERVER_NAME".into(), host.as_bytes().to_vec()));
        if let Some(t) = self.headers.get(header::CONTENT_TYPE) {
            env.push(("CONTENT_TYPE".into(), t.as_bytes().to_vec()));
        }
        if let Some(addr) = self.remote_addr {
            env.push(("REMOTE_ADDR".into(), addr.ip().to_string().into_bytes()));
            env.push(("REMOTE_PORT".into(), addr.port().to_string().into_bytes()));
        }
        for (name, value) in &self.headers {
            if WITHHELD.contains(name) {
                continue;
            }
            let var = format!("HTTP_{}", name.as_str().to_uppercase().replace('-', "_"));
            // A header sent twice is one variable, its values joined as
            // HTTP joins them.
            match env.iter_mut().find(|(n, _)| *n == var) {
                Some((_, v)) => {
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(value.as_bytes());
                }
                None => env.push((var, value.as_bytes().to_vec())),
            }
        }
        env.into_iter()
            .map(|(name, value)| {
                let mut entry = name.into_bytes();
                entry.push(b'=');
                entry.extend_from_slice(&value);
                entry
            })
            .collect()
    }
}

fn server_software() -> String {
    format!("vmfork/{}", env!("CARGO_PKG_VERSION"))
}

/// A function's stdout as an HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub struct CgiResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

/// Longest header block looked for; output whose first blank line comes
/// later has no header block.
const MAX_HEADER_BLOCK: usize = 64 << 10;

/// Splits stdout into a response. Output that starts with header lines
/// ended by a blank line has a header block: `Status:` sets the status,
/// `Location:` without a status makes a 302, every other line is a
/// response header. Output without one is a 200 with all of it as the
/// body. A block that looks like headers but breaks the rules is an error
/// (the client gets a 502 saying why).
pub fn parse_response(stdout: &[u8]) -> Result<CgiResponse, String> {
    let Some((block, body)) = header_block(stdout) else {
        return Ok(CgiResponse {
            status: StatusCode::OK,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            body: stdout.to_vec(),
        });
    };
    let mut status = None;
    let mut headers = Vec::new();
    let mut location = false;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let bad = || {
            let line: String = text.chars().take(80).collect();
            format!("the CGI header line {line:?} is not `Name: value`")
        };
        let (name, value) = text.split_once(':').ok_or_else(bad)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let parsed = (code.len() == 3)
                .then(|| code.parse::<u16>().ok())
                .flatten()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| (200..600).contains(&c.as_u16()));
            status = Some(parsed.ok_or_else(|| {
                format!("the CGI Status {value:?} is not an HTTP status from 200 to 599")
            })?);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value).map_err(|_| bad())?;
        location |= name == header::LOCATION;
        headers.push((name, value));
    }
    let status = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(CgiResponse {
        status,
        headers,
        body: body.to_vec(),
    })
}

/// The header block and the body after its blank line, when stdout starts
/// with something that looks like a header line (a token, then `:`).
fn header_block(stdout: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = stdout.split(|&b| b == b'\n').next()?;
    let colon = first.iter().position(|&b| b == b':')?;
    if colon == 0 || !first[..colon].iter().all(|&b| is_token(b)) {
        return None;
    }
    let window = &stdout[..stdout.len().min(MAX_HEADER_BLOCK)];
    for (i, _) in window.iter().enumerate().filter(|(_, &b)| b == b'\n') {
        let rest = &stdout[i + 1..];
        if let Some(body) = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
        {
            let block = &stdout[..i];
            return Some((block.strip_suffix(b"\r").unwrap_or(block), body));
        }
    }
    None
}

/// RFC 9110 token characters.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> CgiRequest {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        CgiRequest {
            method: Method::PUT,
            uri: uri.parse().expect("uri"),
            headers: map,
            script_name: "/v1/functions/wc/invoke".into(),
            path_info: "/a/b".into(),
            server_port: 8080,
            remote_addr: Some("127.0.0.1:5555".parse().expect("addr")),
        }
    }

    fn var(env: &[Vec<u8>], name: &str) -> Option<String> {
        env.iter().find_map(|e| {
            let e = String::from_utf8_lossy(e);
            e.strip_prefix(&format!("{name}=")).map(str::to_string)
        })
    }

    #[test]
    fn the_request_is_in_cgi_variables() {
        let r = request(
            "/v1/functions/wc/invoke/a/b?x=1&y=2",
            &[
                ("host", "example.com:8080"),
                ("content-type", "text/plain"),
                ("x-trace", "one"),
                ("x-trace", "two"),
                ("authorization", "Bearer secret"),
            ],
        );
        let env = r.environment(12);
        assert_eq!(var(&env, "REQUEST_METHOD").as_deref(), Some("PUT"));
        assert_eq!(var(&env, "QUERY_STRING").as_deref(), Some("x=1&y=2"));
        assert_eq!(var(&env, "PATH_INFO").as_deref(), Some("/a/b"));
        assert_eq!(
            var(&env, "SCRIPT_NAME").as_deref(),
            Some("/v1/functions/wc/invoke")
        );
        assert_eq!(var(&env, "CONTENT_TYPE").as_deref(), Some("text/plain"));
        assert_eq!(var(&env, "CONTENT_LENGTH").as_deref(), Some("12"));
        assert_eq!(var(&env, "SERVER_NAME").as_deref(), Some("example.com"));
        assert_eq!(var(&env, "SERVER_PORT").as_deref(), Some("8080"));
        assert_eq!(var(&env, "REMOTE_ADDR").as_deref(), Some("127.0.0.1"));
        assert_eq!(var(&env, "HTTP_X_TRACE").as_deref(), Some("one, two"));
        assert_eq!(var(&env, "HTTP_AUTHORIZATION"), None);
        assert_eq!(var(&env, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(var(&env, "GATEWAY_INTERFACE").as_deref(), Some("CGI/1.1"));
    }

    #[test]
    fn output_without_headers_is_a_200_body() {
        for out in [
            &b"hello\n"[..],
            b"",
            b"no colon here\n\nstill body",
            b"a b: c\n\nx",
        ] {
            let r = parse_response(out).expect("parse");
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, out);
        }
        // A header-like first line never ended by a blank line is body too.
        let r = parse_response(b"Content-Type: text/plain\nhello").expect("parse");
        assert_eq!(r.body, b"Content-Type: text/plain\nhello");
    }

    #[test]
    fn a_header_block_sets_status_and_headers() {
        let r = parse_response(
            b"Content-Type: text/plain\r\nStatus: 404 Not Found\r\nX-A: 1\r\n\r\ngone\n",
        )
        .expect("parse");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body, b"gone\n");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[0].0, header::CONTENT_TYPE);
        assert_eq!(r.headers[1].1, "1");
        let r = parse_response(b"Location: /elsewhere\n\n").expect("parse");
        assert_eq!(r.status, StatusCode::FOUND);
        assert!(r.body.is_empty());
    }

    #[test]
    fn a_broken_header_block_is_refused() {
        for bad in [&b"Status: nope\n\n"[..], b"Status: 100 Continue\n\n"] {
            let e = parse_response(bad).expect_err("refused");
            assert!(e.contains("CGI Status"), "{e}");
        }
        let e =
            parse_response(b"Content-Type: text/plain\nnot a header\n\nbody").expect_err("refused");
        assert!(e.contains("not a header"), "{e}");
    }
}
