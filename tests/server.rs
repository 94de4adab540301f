//! Helpers shared by the tests that drive `vmfork serve` over real HTTP
//! (tests/serve.rs, tests/misbehave.rs): the server child process, a
//! minimal HTTP/1.1 client, and function templates. Not a test target.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{vmfork_bin, Scratch};

/// A `vmfork serve` child, killed if a test fails before stopping it.
pub struct Server {
    child: Child,
    pub client: Client,
}

/// One-request-per-connection HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    pub addr: String,
}

/// Status, headers (names lowercased) and body of one answer.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `vmfork serve` on a free loopback port with `templates`
    /// (name, template directory) and `extra` flags.
    pub fn start(templates: &[(&str, String)], extra: &[&str]) -> Server {
        Self::start_on("127.0.0.1:0", templates, extra)
    }

    /// [`Server::start`] listening on `listen`.
    pub fn start_on(listen: &str, templates: &[(&str, String)], extra: &[&str]) -> Server {
        Self::spawn(listen, templates, extra, None)
    }

    /// [`Server::start`] with the server's log (its stderr, at `info`,
    /// where functions' output goes) in `log`.
    pub fn start_logging(templates: &[(&str, String)], extra: &[&str], log: &Path) -> Server {
        let file = std::fs::File::create(log).expect("create the server log");
        Self::spawn("127.0.0.1:0", templates, extra, Some(file))
    }

    fn spawn(
        listen: &str,
        templates: &[(&str, String)],
        extra: &[&str],
        log: Option<std::fs::File>,
    ) -> Server {
        let mut args = vec!["serve".to_string(), "--listen".into(), listen.into()];
        for (name, dir) in templates {
            args.push("--template".into());
            args.push(format!("{name}={dir}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = Command::new(vmfork_bin());
        command.args(&args).stdout(Stdio::piped());
        match log {
            Some(file) => command.stderr(file).env("VMFORK_LOG", "info"),
            None => command.stderr(Stdio::inherit()),
        };
        let mut child = command.spawn().expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("first line");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(addr.contains(':'), "no listening address in {line:?}");
        Server {
            child,
            client: Client { addr },
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` ("TERM", "INT", ...) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// The server's exit status once it ends, or None if it is still
    /// running after `within`.
    pub fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then asserts a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "serve exited with {exit}");
    }
}

impl Client {
    /// Each named function's `resumes_into_request` in `GET /v1/functions`
    /// (None for a function not listed).
    pub fn resumes_into_request(&self, names: &[&str]) -> Vec<Option<bool>> {
        let (code, _, list) = self.request("GET", "/v1/functions", b"");
        assert_eq!(code, 200);
        let list: serde_json::Value = serde_json::from_slice(&list).expect("function list");
        names
            .iter()
            .map(|name| {
                list["functions"]
                    .as_array()
                    .and_then(|fs| fs.iter().find(|f| f["name"] == *name))
                    .and_then(|f| f["resumes_into_request"].as_bool())
            })
            .collect()
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("write head");
        // A server may answer (413) before reading a large body.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .expect("status");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    pub fn invoke(&self, name: &str, body: &[u8]) -> Answer {
        self.request("POST", &format!("/v1/functions/{name}/invoke"), body)
    }

    /// `vmfork_live_clones` from /metrics (-1 if absent).
    pub fn live_clones(&self) -> i64 {
        self.metric("vmfork_live_clones").unwrap_or(-1)
    }

    /// One sample from /metrics: `series` is the name with its labels,
    /// exactly as printed.
    pub fn metric(&self, series: &str) -> Option<i64> {
        let (_, _, body) = self.request("GET", "/metrics", b"");
        let prefix = format!("{series} ");
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Polls `series` until it reaches `at_least` or 10 s pass; its last
    /// value. Metrics that the reapers update trail the responses.
    pub fn metric_reaching(&self, series: &str, at_least: i64) -> Option<i64> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let value = self.metric(series);
            if value.is_some_and(|v| v >= at_least) || std::time::Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether a line holding both `a` and `b` reaches the server's `log`
    /// (from [`Server::start_logging`]) within 60 s (rig speeds): the
    /// event an asynchronous invocation's end is known by.
    pub fn log_line_within(&self, log: &Path, a: &str, b: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().any(|l| l.contains(a) && l.contains(b)) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

pub fn header<'a>(headers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Builds a template of the embedded guest's built-in `function` in
/// `scratch`/`name` (32 MiB, no timer, 1 MiB heap) and returns its path.
pub fn function_template(scratch: &Scratch, name: &str, function: &str) -> String {
    let cmdline = format!("quiet=1 timer_hz=0 touch_mib=1 function={function}");
    crate::build_template(&scratch.str(name), "32M", &cmdline)
}

/// Status, headers (names lowercased) and body of one request made with
/// curl, a real HTTP client; `args` are curl's (method, data, URL...).
pub fn curl(args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "120"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}
