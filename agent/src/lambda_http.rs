//! The HTTP/1.1 the Runtime API server speaks (lambda.rs): requests read
//! with limits on every part, and answers built whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

const HEAD_LIMIT: usize = 64 * 1024;
/// Lambda's payload limit.
pub(crate) const BODY_LIMIT: usize = 6 * 1024 * 1024;
pub(crate) const JSON: &str = "Content-Type: application/json\r\n";

/// Why a connection ends: an answer first (status, errorType),
/// or none when the client is gone or cut its request short.
#[derive(Clone, Copy)]
pub(crate) enum Fail {
    Status(&'static str, &'static str),
    Gone,
}

pub(crate) type Line = Result<Option<Vec<u8>>, Fail>;

pub(crate) const BAD: Fail = Fail::Status("400 Bad Request", "InvalidRequest");
pub(crate) const HEAD_TOO_LARGE: Fail =
    Fail::Status("431 Request Header Fields Too Large", "HeadTooLarge");
pub(crate) const TOO_LARGE: Fail = Fail::Status("413 Payload Too Large", "RequestEntityTooLarge");
pub(crate) const CODING: Fail = Fail::Status("501 Not Implemented", "NotImplemented");

#[derive(Default)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Names lowercased.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) keep_alive: bool,
    /// The Connection header the answer needs, if any.
    pub(crate) connection: &'static str,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        values.next().map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of every `name` header, lowercased.
    pub(crate) fn tokens(&self, name: &str) -> Vec<String> {
        let values = self.headers.iter().filter(|(n, _)| n == name);
        let tokens = values.flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()));
        tokens.filter(|t| !t.is_empty()).collect()
    }
}

/// One line without its CRLF (or bare LF), `over` past `budget`; `None` at
/// a clean end of input.
pub(crate) fn read_line(r: &mut impl BufRead, budget: &mut usize, over: Fail) -> Line {
    let mut line = Vec::new();
    let mut limited = r.take(*budget as u64 + 1);
    let n = limited.read_until(b'\n', &mut line);
    let n = n.map_err(|_| Fail::Gone)?;
    if n > *budget {
        return Err(over);
    }
    *budget -= n;
    match line.pop() {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(Fail::Gone),
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

pub(crate) fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

pub(crate) fn read_request(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
) -> Result<Option<Request>, Fail> {
    let mut budget = HEAD_LIMIT;
    // RFC 9112 2.2: empty lines before a request line are ignored.
    let line = loop {
        match read_line(r, &mut budget, HEAD_TOO_LARGE)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break String::from_utf8(l).map_err(|_| BAD)?,
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let (method, path, http11) = match parts[..] {
        [m, p, "HTTP/1.1"] => (m, p, true),
        [m, p, "HTTP/1.0"] => (m, p, false),
        _ => return Err(BAD),
    };
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(BAD);
    }
    let mut req = Request::default();
    (req.method, req.path) = (method.to_string(), path.to_string());
    loop {
        let line = read_line(r, &mut budget, HEAD_TOO_LARGE)?.ok_or(Fail::Gone)?;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|b| *b == b':').ok_or(BAD)?;
        // This also refuses obsolete line folding (RFC 9112 5.2).
        if colon == 0 || !line[..colon].iter().all(|c| tchar(*c)) {
            return Err(BAD);
        }
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim_matches([' ', '\t']).to_string();
        req.headers.push((name, value));
    }
    let connection = req.tokens("connection");
    let chunked = req.header("transfer-encoding").is_some();
    let lengths = req.tokens("content-length");
    req.keep_alive = if http11 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    // Both framings at once is a smuggling pattern: close after answering
    // (RFC 9112 6.3).
    req.keep_alive &= !chunked || lengths.is_empty();
    req.connection = match (req.keep_alive, http11) {
        (false, _) => "Connection: close\r\n",
        (true, false) => "Connection: keep-alive\r\n",
        (true, true) => "",
    };
    if chunked && req.tokens("transfer-encoding") != ["chunked"] {
        return Err(CODING);
    }
    let length = match lengths.split_first() {
        Some(_) if chunked => 0,
        None => 0,
        Some((first, rest)) => {
            if !first.bytes().all(|c| c.is_ascii_digit()) || rest.iter().any(|l| l != first) {
                return Err(BAD);
            }
            first.parse::<usize>().map_err(|_| TOO_LARGE)?
        }
    };
    if length > BODY_LIMIT {
        return Err(TOO_LARGE);
    }
    let expect = req.header("expect").unwrap_or_default();
    // libcurl waits for this before it sends a body.
    if expect.eq_ignore_ascii_case("100-continue") && http11 && (chunked || length > 0) {
        // Failing, the client is gone and reading its body says so.
        let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let read = if chunked {
        read_chunked(r, &mut req.body)?
    } else {
        let mut limited = r.take(length as u64);
        limited.read_to_end(&mut req.body).map_err(|_| Fail::Gone)? == length
    };
    // A body cut short by the end of the connection.
    read.then_some(Some(req)).ok_or(Fail::Gone)
}

/// Reads a chunked body into `body`; false if the input ended first.
pub(crate) fn read_chunked(r: &mut impl BufRead, body: &mut Vec<u8>) -> Result<bool, Fail> {
    loop {
        let mut budget = 1024;
        let Some(line) = read_line(r, &mut budget, BAD)? else {
            return Ok(false);
        };
        let end = line.iter().position(|b| *b == b';').unwrap_or(line.len());
        let size = line[..end].trim_ascii();
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(BAD);
        }
        let size = u64::from_str_radix(&String::from_utf8_lossy(size), 16).map_err(|_| BAD)?;
        if size == 0 {
            break;
        }
        if size > (BODY_LIMIT - body.len()) as u64 {
            return Err(TOO_LARGE);
        }
        if r.take(size).read_to_end(body).map_err(|_| Fail::Gone)? as u64 != size {
            return Ok(false);
        }
        if read_line(r, &mut budget, BAD)?.ok_or(Fail::Gone)? != b"" {
            return Err(BAD);
        }
    }
    // Trailers are read and dropped: nothing here needs them.
    let mut budget = HEAD_LIMIT;
    while read_line(r, &mut budget, HEAD_TOO_LARGE)?.ok_or(Fail::Gone)? != b"" {}
    Ok(true)
}

/// `head` holds whole header lines; `connection` comes from the request.
pub(crate) fn response(status: &str, head: &str, body: &[u8], connection: &str) -> Vec<u8> {
    let length = body.len();
    let head = format!("{head}Content-Length: {length}\r\n{connection}");
    let all = format!("HTTP/1.1 {status}\r\n{head}\r\n");
    [all.as_bytes(), body].concat()
}

/// An error answer, its message the status's reason; all are constants
/// that need no JSON escaping.
pub(crate) fn error(status: &str, kind: &str, head: &str, connection: &str) -> Vec<u8> {
    let message = status.get(4..).unwrap_or_default();
    let body = format!(r#"{{"errorMessage":"{message}","errorType":"{kind}"}}"#);
    let head = format!("{JSON}{head}");
    response(status, &head, body.as_bytes(), connection)
}
