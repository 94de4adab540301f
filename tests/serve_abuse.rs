//! `vmfork serve` against hostile clients, over real sockets: clients that
//! send a request and leave, trickle headers or bodies, hold idle
//! connections, half-close, or declare huge bodies; and stopping under
//! load. Every limit holds, and a good request still gets its answer.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use vmfork_tests::server::{function_template as template, Client, Server};
use vmfork_tests::Scratch;

fn invoke_head(function: &str, length: usize) -> String {
    format!(
        "POST /v1/functions/{function}/invoke HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n"
    )
}

fn connect(client: &Client) -> TcpStream {
    let s = TcpStream::connect(&client.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    s
}

/// Everything the server sends until it closes.
fn read_all(mut s: TcpStream) -> String {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// Closes `s` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid, local value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A field of /proc/PID/status, as a number (the unit dropped).
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// (a) Clients that send a whole request and then close, or shut down
/// their write side, in a flood: the VMs they started keep counting until
/// they stop, so live clones never exceed --max-concurrency, and the
/// server's threads and memory stay bounded.
#[test]
fn request_then_close_floods_never_exceed_the_limits() {
    let scratch = Scratch::new("abuse-flood");
    let fns = [
        ("spin", template(&scratch, "spin", "spin")),
        ("echo", template(&scratch, "echo", "echo")),
    ];
    const MAX: i64 = 2;
    let server = Server::start(
        &fns,
        &[
            "--timeout",
            "500ms",
            "--max-concurrency",
            "2",
            "--queue",
            "4",
        ],
    );
    let pid = server.pid();
    assert_eq!(server.invoke("echo", b"warm").0, 200);
    let rss_before = proc_status(pid, "VmRSS:");
    let flood: Vec<_> = (0..4)
        .map(|w| {
            let client = server.client.clone();
            std::thread::spawn(move || {
                let mut unanswered = 0;
                for i in 0..30 {
                    let mut s = connect(&client);
                    let _ = s.write_all(invoke_head("spin", 0).as_bytes());
                    // Long enough for the request to start its VM (or
                    // be refused), then leave.
                    s.set_read_timeout(Some(Duration::from_millis(20)))
                        .expect("read timeout");
                    let mut first = [0u8; 64];
                    if s.read(&mut first).is_ok_and(|n| n > 0) {
                        continue;
                    }
                    if (i + w) % 3 == 0 {
                        // Reset: the server drops the request's handler.
                        reset(s);
                    } else if (i + w) % 3 == 1 {
                        // Gone: the server finds out only when it answers.
                        drop(s);
                    } else {
                        let _ = s.shutdown(Shutdown::Write);
                        s.set_read_timeout(Some(Duration::from_secs(5)))
                            .expect("read timeout");
                        // Half-closed: its answer (200, 503 or 504) comes.
                        let mut buf = [0u8; 64];
                        if !s.read(&mut buf).is_ok_and(|n| n > 0) {
                            unanswered += 1;
                        }
                    }
                }
                unanswered
            })
        })
        .collect();
    // Watch the gauges until the flood is over and its clones are gone:
    // a VM whose client left runs until --timeout, so the watch goes on
    // for twice that after the last client.
    let (mut live_max, mut threads_max, mut rss_max) = (0, 0, 0);
    let mut flood_ended = None;
    loop {
        let live = server.live_clones();
        live_max = live_max.max(live);
        threads_max = threads_max.max(proc_status(pid, "Threads:"));
        rss_max = rss_max.max(proc_status(pid, "VmRSS:"));
        if flood_ended.is_none() && flood.iter().all(|t| t.is_finished()) {
            flood_ended = Some(Instant::now());
        }
        if flood_ended.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) && live == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let unanswered: usize = flood.into_iter().map(|t| t.join().expect("flood")).sum();
    eprintln!("flood: live clones <= {live_max}, threads <= {threads_max}, RSS {rss_before} -> <= {rss_max} KiB");
    assert!(live_max > 0, "the flood ran no VM");
    assert!(
        live_max <= MAX,
        "{live_max} clones alive at once, max {MAX}"
    );
    // Blocking threads 2 x 2 + 2 + 1, 2 workers, 16 reapers, vCPU
    // runners, main, signals: far below tokio's default 512.
    assert!(threads_max <= 48, "{threads_max} threads");
    assert_eq!(unanswered, 0, "half-closed clients without an answer");
    assert!(
        rss_max <= rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_max} KiB"
    );
    let (code, _, body) = server.invoke("echo", b"still here");
    assert_eq!((code, body.as_slice()), (200, &b"still here"[..]));
    server.stop();
}

/// (b) Connections that trickle their headers are closed after
/// --header-timeout, and good requests are answered meanwhile.
#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    let scratch = Scratch::new("abuse-slowloris");
    let fns = [("echo", template(&scratch, "echo", "echo"))];
    let server = Server::start(&fns, &["--header-timeout", "1s"]);
    const SLOW: usize = 16;
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let client = server.client.clone();
            std::thread::spawn(move || {
                let mut s = connect(&client);
                let started = Instant::now();
                let head = invoke_head("echo", 0);
                for byte in head.as_bytes().iter().take(head.len() - 2) {
                    if s.write_all(&[*byte]).is_err() {
                        return started.elapsed();
                    }
                    if closed_by_server(&mut s, Duration::from_millis(100)) {
                        return started.elapsed();
                    }
                }
                Duration::MAX
            })
        })
        .collect();
    // Good requests are answered while the slow ones hold connections.
    for _ in 0..5 {
        let started = Instant::now();
        let (code, _, _) = server.invoke("echo", b"fast");
        assert_eq!(code, 200);
        assert!(started.elapsed() < Duration::from_millis(900));
    }
    for t in slow {
        let lasted = t.join().expect("slow client");
        assert!(
            lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(4),
            "a slow client's connection lasted {lasted:?}"
        );
    }
    let series = r#"vmfork_connections_closed_total{reason="header_timeout"}"#;
    assert_eq!(server.metric(series), Some(SLOW as i64));
    server.stop();
}

/// (c) Idle connections past --max-connections: the least recently
/// active idle ones are closed to make room, and a good request is served.
#[test]
fn idle_connections_beyond_the_cap_are_closed() {
    let scratch = Scratch::new("abuse-idle");
    let fns = [("echo", template(&scratch, "echo", "echo"))];
    const CAP: usize = 8;
    let server = Server::start(&fns, &["--max-connections", "8"]);
    let mut idle: Vec<TcpStream> = (0..2 * CAP).map(|_| connect(&server.client)).collect();
    let (code, _, body) = server.invoke("echo", b"good");
    assert_eq!((code, body.as_slice()), (200, &b"good"[..]));
    // The oldest CAP + 1 made room for the later ones and the request.
    for (i, s) in idle.iter_mut().enumerate().take(CAP + 1) {
        assert!(
            closed_by_server(s, Duration::from_secs(5)),
            "idle connection {i} is still open"
        );
    }
    let open = server.metric("vmfork_connections").expect("gauge");
    assert!(open <= CAP as i64, "{open} connections open");
    let evicted = r#"vmfork_connections_closed_total{reason="evicted"}"#;
    assert!(server.metric(evicted).unwrap_or(0) > CAP as i64);
    server.stop();
}

/// (d) SIGTERM with requests running ends within --drain-timeout; a
/// second signal ends the server at once.
#[test]
fn stopping_under_load_keeps_the_drain_deadline() {
    let scratch = Scratch::new("abuse-drain");
    let fns = [("spin", template(&scratch, "spin", "spin"))];
    let spin = |server: &Server, n: usize| -> Vec<std::thread::JoinHandle<String>> {
        let handles = (0..n)
            .map(|_| {
                let mut s = connect(&server.client);
                s.write_all(invoke_head("spin", 0).as_bytes())
                    .expect("request");
                std::thread::spawn(move || read_all(s))
            })
            .collect();
        while server.live_clones() < n as i64 {
            std::thread::sleep(Duration::from_millis(10));
        }
        handles
    };
    let flags = ["--timeout", "20s", "--max-concurrency", "2"];
    let mut server = Server::start(&fns, &[&flags[..], &["--drain-timeout", "1s"]].concat());
    let running = spin(&server, 2);
    let started = Instant::now();
    server.signal("TERM");
    let exit = server.exit_within(Duration::from_secs(10)).expect("exited");
    let took = started.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "the drain took {took:?} with a 1 s deadline"
    );
    for r in running {
        let _ = r.join();
    }

    let mut server = Server::start(&fns, &[&flags[..], &["--drain-timeout", "60s"]].concat());
    let running = spin(&server, 2);
    server.signal("TERM");
    // Draining: the listener is closed.
    let drain_started = Instant::now();
    while TcpStream::connect(&server.addr).is_ok() {
        assert!(drain_started.elapsed() < Duration::from_secs(5));
    }
    assert!(server.exit_within(Duration::from_millis(300)).is_none());
    let started = Instant::now();
    server.signal("INT");
    let exit = server.exit_within(Duration::from_secs(5)).expect("exited");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(exit.code(), Some(128 + libc::SIGINT), "{exit}");
    for r in running {
        let _ = r.join();
    }
}

/// (e) A client that half-closes after its request gets its response;
/// (f) a declared body over --max-body gets 413 before it is sent; a body
/// slower than --body-timeout gets 408.
#[test]
fn half_closed_clients_are_answered_and_bodies_are_bounded() {
    let scratch = Scratch::new("abuse-half-close");
    let fns = [("echo", template(&scratch, "echo", "echo"))];
    let server = Server::start(&fns, &["--max-body", "64KiB", "--body-timeout", "1s"]);
    for _ in 0..20 {
        let mut s = connect(&server.client);
        s.write_all(format!("{}half", invoke_head("echo", 4)).as_bytes())
            .expect("request");
        s.shutdown(Shutdown::Write).expect("half-close");
        let answer = read_all(s);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhalf"), "{answer}");
    }
    let mut s = connect(&server.client);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    s.shutdown(Shutdown::Write).expect("half-close");
    assert!(read_all(s).ends_with("ok\n"));

    // Only the head: the answer comes without a byte of the body.
    let mut s = connect(&server.client);
    s.write_all(invoke_head("echo", 2 << 20).as_bytes())
        .expect("head");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("an answer before the body");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let too_large = r#"vmfork_invocations_total{outcome="too_large"}"#;
    assert_eq!(server.metric(too_large), Some(1));

    let mut s = connect(&server.client);
    s.write_all(format!("{}sl", invoke_head("echo", 10)).as_bytes())
        .expect("part of the body");
    let started = Instant::now();
    let answer = read_all(s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop();
}
