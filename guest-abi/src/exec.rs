//! The exec protocol (docs/guest-abi.md, "Running a command"): how the VMM
//! asks a guest agent to run one program and gets its output and exit
//! status back. It rides on the function mailbox: the request is a mailbox
//! request body, [`CMD_EXEC`](crate::CMD_EXEC) runs it, and the result is
//! a mailbox response body with status [`STATUS_OK`](crate::STATUS_OK)
//! (or [`STATUS_BAD_REQUEST`](crate::STATUS_BAD_REQUEST) and a message when
//! the request itself is malformed).
//!
//! One encoding for every user of it (`vmfork clone -- CMD`, exec
//! templates, container processes), so it carries everything a process
//! needs: argv, environment, working directory, stdin, a cap on buffered
//! output and a deadline.
//!
//! The helpers here encode into and decode from byte slices without
//! allocating: the guest agent, the host and fuzzers use the same code, and
//! both directions check every length against the slice they were given.

use core::mem::size_of;

/// The encoding's version; a reader refuses any other.
pub const EXEC_VERSION: u32 = 1;

/// The start of an exec request body; all fields little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRequestHeader {
    /// [`EXEC_VERSION`].
    pub version: u32,
    /// At most one of the `EXEC_FLAG_*` values; a reader refuses any
    /// other bit.
    pub flags: u32,
    /// Bytes of stdout, and separately of stderr, the agent keeps; more is
    /// read and dropped, and the result's truncation flags say so.
    pub output_cap: u32,
    /// Milliseconds the program may run before the agent kills it (and
    /// its process group); 0 for no limit.
    pub timeout_ms: u32,
}

/// Bytes of an [`ExecRequestHeader`].
pub const EXEC_REQUEST_HEADER_SIZE: usize = size_of::<ExecRequestHeader>();

/// Start the program as an AWS Lambda function: the agent serves the
/// Lambda Runtime API to it on loopback, and answers once the function
/// waits in its first `next` (the point a template is taken at), or with
/// how it failed (it exited, posted an init error, or outran
/// `timeout_ms`) and its output. The VMM writes this request into the
/// mailbox before a cold boot; the agent looks for it once, at start.
pub const EXEC_FLAG_LAMBDA_INIT: u32 = 1;
/// One invocation of the Lambda function the agent started: stdin is the
/// event, [`EXEC_FIELD_HEADER`] fields its metadata, `timeout_ms` its
/// deadline. The result's stdout is the function's response (or, with
/// [`EXEC_OUTCOME_FUNCTION_ERROR`], its error body) and its stderr what
/// the function logged meanwhile. The argument fields name the function
/// and must match the one running.
pub const EXEC_FLAG_LAMBDA_INVOKE: u32 = 2;

/// After the header come fields, each a `u32` kind, a `u32` length and that
/// many bytes, packed. Arguments in order, `argv[0]` (the program, looked
/// up in `PATH` when it has no `/`) first; at least one.
pub const EXEC_FIELD_ARG: u32 = 1;
/// An environment entry `NAME=value`; the program's environment is exactly
/// these.
pub const EXEC_FIELD_ENV: u32 = 2;
/// The working directory (at most one; default `/`).
pub const EXEC_FIELD_CWD: u32 = 3;
/// Bytes for the program's stdin (at most one; without it stdin is
/// `/dev/null`). The agent closes stdin after writing them.
pub const EXEC_FIELD_STDIN: u32 = 4;
/// A `Name: value` line of an invocation's metadata (only with
/// [`EXEC_FLAG_LAMBDA_INVOKE`]): the Runtime API headers of its `next`.
pub const EXEC_FIELD_HEADER: u32 = 5;
/// Bytes of a field's kind and length.
pub const EXEC_FIELD_HEADER_SIZE: usize = 8;

/// The start of an exec result body, followed by `stdout_len` bytes of
/// stdout and then `stderr_len` bytes of stderr.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecResultHeader {
    /// [`EXEC_VERSION`].
    pub version: u32,
    /// One of the `EXEC_OUTCOME_*` values; `value` depends on it.
    pub outcome: u32,
    /// Exit status, signal number or errno, by `outcome`.
    pub value: u32,
    /// `EXEC_*_TRUNCATED` bits.
    pub flags: u32,
    /// Bytes of stdout that follow the header.
    pub stdout_len: u32,
    /// Bytes of stderr that follow stdout.
    pub stderr_len: u32,
}

/// Bytes of an [`ExecResultHeader`].
pub const EXEC_RESULT_HEADER_SIZE: usize = size_of::<ExecResultHeader>();

/// The program ran and exited with status `value` (0..=255).
pub const EXEC_OUTCOME_EXITED: u32 = 0;
/// The program was killed by signal `value`.
pub const EXEC_OUTCOME_SIGNALED: u32 = 1;
/// The program could not be started; `value` is the errno.
pub const EXEC_OUTCOME_SPAWN_FAILED: u32 = 2;
/// The program outran the request's `timeout_ms` and was killed.
pub const EXEC_OUTCOME_TIMED_OUT: u32 = 3;
/// A WebAssembly program trapped; `value` is 0 and stderr ends with the
/// trap's message.
pub const EXEC_OUTCOME_TRAPPED: u32 = 4;
/// A Lambda function answered its invocation with an error (`/error`, or
/// `/init/error` during init); stdout is the error body it posted.
pub const EXEC_OUTCOME_FUNCTION_ERROR: u32 = 5;
/// Stdout was longer than `output_cap`; what follows is its start.
pub const EXEC_STDOUT_TRUNCATED: u32 = 1;
/// Stderr was longer than `output_cap`.
pub const EXEC_STDERR_TRUNCATED: u32 = 2;

const _: () = {
    assert!(EXEC_REQUEST_HEADER_SIZE == 16);
    assert!(EXEC_RESULT_HEADER_SIZE == 24);
};

/// Why an exec request or result was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// Shorter than its header, or a field runs past the end.
    Truncated,
    /// The output buffer has no room for what is being written.
    NoRoom,
    /// Another [`EXEC_VERSION`].
    Version(u32),
    /// A flag this version does not define.
    Flags(u32),
    /// A field kind this version does not define.
    FieldKind(u32),
    /// No [`EXEC_FIELD_ARG`].
    NoProgram,
    /// A second [`EXEC_FIELD_CWD`] or [`EXEC_FIELD_STDIN`].
    Repeated(u32),
    /// An outcome this version does not define.
    Outcome(u32),
    /// A result whose lengths disagree with its body.
    Lengths,
}

impl ExecError {
    /// A short English reason, for error messages on either side.
    pub const fn reason(&self) -> &'static str {
        match self {
            ExecError::Truncated => "truncated",
            ExecError::NoRoom => "larger than the mailbox",
            ExecError::Version(_) => "unknown version",
            ExecError::Flags(_) => "unknown flags",
            ExecError::FieldKind(_) => "unknown field kind",
            ExecError::NoProgram => "no program",
            ExecError::Repeated(_) => "repeated cwd or stdin",
            ExecError::Outcome(_) => "unknown outcome",
            ExecError::Lengths => "output lengths disagree with the body",
        }
    }
}

fn word(bytes: &[u8], at: usize) -> Result<u32, ExecError> {
    match bytes.get(at..at + 4) {
        Some(w) => Ok(u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        None => Err(ExecError::Truncated),
    }
}

/// Appends little-endian words and byte strings to a caller's buffer.
pub struct ExecWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> ExecWriter<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        ExecWriter { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before anything is written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes` as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), ExecError> {
        let end = self.len.checked_add(bytes.len()).ok_or(ExecError::NoRoom)?;
        let to = self.buf.get_mut(self.len..end).ok_or(ExecError::NoRoom)?;
        to.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Appends one little-endian word.
    pub fn word(&mut self, w: u32) -> Result<(), ExecError> {
        self.bytes(&w.to_le_bytes())
    }

    /// Starts a request.
    pub fn request_header(&mut self, h: &ExecRequestHeader) -> Result<(), ExecError> {
        for w in [h.version, h.flags, h.output_cap, h.timeout_ms] {
            self.word(w)?;
        }
        Ok(())
    }

    /// Appends one request field.
    pub fn field(&mut self, kind: u32, bytes: &[u8]) -> Result<(), ExecError> {
        let len = u32::try_from(bytes.len()).map_err(|_| ExecError::NoRoom)?;
        self.word(kind)?;
        self.word(len)?;
        self.bytes(bytes)
    }

    /// Writes a whole result: header, stdout, stderr. The header's lengths
    /// are taken from the slices.
    pub fn result(
        &mut self,
        outcome: u32,
        value: u32,
        flags: u32,
        stdout: &[u8],
        stderr: &[u8],
    ) -> Result<(), ExecError> {
        let out = u32::try_from(stdout.len()).map_err(|_| ExecError::NoRoom)?;
        let err = u32::try_from(stderr.len()).map_err(|_| ExecError::NoRoom)?;
        for w in [EXEC_VERSION, outcome, value, flags, out, err] {
            self.word(w)?;
        }
        self.bytes(stdout)?;
        self.bytes(stderr)
    }
}

/// A checked request: its header and its fields, still encoded.
#[derive(Clone, Copy, Debug)]
pub struct ExecRequest<'a> {
    /// The checked header.
    pub header: ExecRequestHeader,
    fields: &'a [u8],
}

impl<'a> ExecRequest<'a> {
    /// Checks a whole request body: version, flags, every field's kind and
    /// length, one program at least, cwd and stdin at most once, header
    /// fields only in a Lambda invocation.
    pub fn parse(body: &'a [u8]) -> Result<ExecRequest<'a>, ExecError> {
        let header = ExecRequestHeader {
            version: word(body, 0)?,
            flags: word(body, 4)?,
            output_cap: word(body, 8)?,
            timeout_ms: word(body, 12)?,
        };
        if header.version != EXEC_VERSION {
            return Err(ExecError::Version(header.version));
        }
        if !matches!(
            header.flags,
            0 | EXEC_FLAG_LAMBDA_INIT | EXEC_FLAG_LAMBDA_INVOKE
        ) {
            return Err(ExecError::Flags(header.flags));
        }
        let request = ExecRequest {
            header,
            fields: &body[EXEC_REQUEST_HEADER_SIZE..],
        };
        let (mut args, mut cwd, mut stdin) = (0usize, 0usize, 0usize);
        for field in request.fields() {
            let (kind, _) = field?;
            match kind {
                EXEC_FIELD_ARG => args += 1,
                EXEC_FIELD_ENV => {}
                EXEC_FIELD_CWD => cwd += 1,
                EXEC_FIELD_STDIN => stdin += 1,
                EXEC_FIELD_HEADER if header.flags == EXEC_FLAG_LAMBDA_INVOKE => {}
                other => return Err(ExecError::FieldKind(other)),
            }
            if cwd > 1 || stdin > 1 {
                return Err(ExecError::Repeated(kind));
            }
        }
        if args == 0 {
            return Err(ExecError::NoProgram);
        }
        Ok(request)
    }

    /// Every field as (kind, bytes), in order.
    pub fn fields(&self) -> ExecFields<'a> {
        ExecFields { rest: self.fields }
    }

    /// The bytes of every field of `kind`, in order.
    pub fn each(&self, kind: u32) -> impl Iterator<Item = &'a [u8]> {
        self.fields()
            .filter_map(move |f| f.ok().filter(|(k, _)| *k == kind).map(|(_, b)| b))
    }

    /// The one field of `kind` (cwd, stdin), if present.
    pub fn one(&self, kind: u32) -> Option<&'a [u8]> {
        self.each(kind).next()
    }
}

/// Iterates over encoded request fields; stops after the first error.
pub struct ExecFields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ExecFields<'a> {
    type Item = Result<(u32, &'a [u8]), ExecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let kind = word(self.rest, 0)?;
            let len = word(self.rest, 4)? as usize;
            let end = EXEC_FIELD_HEADER_SIZE
                .checked_add(len)
                .ok_or(ExecError::Truncated)?;
            let bytes = self
                .rest
                .get(EXEC_FIELD_HEADER_SIZE..end)
                .ok_or(ExecError::Truncated)?;
            Ok((kind, bytes, end))
        })();
        match parsed {
            Ok((kind, bytes, end)) => {
                self.rest = &self.rest[end..];
                Some(Ok((kind, bytes)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// A checked result: its header, stdout and stderr.
#[derive(Clone, Copy, Debug)]
pub struct ExecResult<'a> {
    /// The checked header.
    pub header: ExecResultHeader,
    /// The program's stdout (at most the request's cap).
    pub stdout: &'a [u8],
    /// The program's stderr (at most the request's cap).
    pub stderr: &'a [u8],
}

impl<'a> ExecResult<'a> {
    /// Checks a whole result body; the lengths must add up to it exactly.
    pub fn parse(body: &'a [u8]) -> Result<ExecResult<'a>, ExecError> {
        let header = ExecResultHeader {
            version: word(body, 0)?,
            outcome: word(body, 4)?,
            value: word(body, 8)?,
            flags: word(body, 12)?,
            stdout_len: word(body, 16)?,
            stderr_len: word(body, 20)?,
        };
        if header.version != EXEC_VERSION {
            return Err(ExecError::Version(header.version));
        }
        if header.outcome > EXEC_OUTCOME_FUNCTION_ERROR {
            return Err(ExecError::Outcome(header.outcome));
        }
        if header.flags & !(EXEC_STDOUT_TRUNCATED | EXEC_STDERR_TRUNCATED) != 0 {
            return Err(ExecError::Flags(header.flags));
        }
        let out = header.stdout_len as usize;
        let err = header.stderr_len as usize;
        let rest = &body[EXEC_RESULT_HEADER_SIZE..];
        if out.checked_add(err) != Some(rest.len()) {
            return Err(ExecError::Lengths);
        }
        Ok(ExecResult {
            header,
            stdout: &rest[..out],
            stderr: &rest[out..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(buf: &mut [u8], fields: &[(u32, &[u8])]) -> usize {
        request_with(buf, 0, fields)
    }

    fn request_with(buf: &mut [u8], flags: u32, fields: &[(u32, &[u8])]) -> usize {
        let mut w = ExecWriter::new(buf);
        w.request_header(&ExecRequestHeader {
            version: EXEC_VERSION,
            flags,
            output_cap: 64,
            timeout_ms: 0,
        })
        .unwrap();
        for (k, b) in fields {
            w.field(*k, b).unwrap();
        }
        w.len()
    }

    #[test]
    fn a_request_round_trips() {
        let mut buf = [0u8; 256];
        let n = request(
            &mut buf,
            &[
                (EXEC_FIELD_ARG, b"echo"),
                (EXEC_FIELD_ARG, b"hi"),
                (EXEC_FIELD_ENV, b"A=1"),
                (EXEC_FIELD_CWD, b"/tmp"),
                (EXEC_FIELD_STDIN, b"in"),
            ],
        );
        let r = ExecRequest::parse(&buf[..n]).unwrap();
        let mut args = r.each(EXEC_FIELD_ARG);
        assert_eq!(args.next(), Some(&b"echo"[..]));
        assert_eq!(args.next(), Some(&b"hi"[..]));
        assert_eq!(args.next(), None);
        assert_eq!(r.one(EXEC_FIELD_CWD), Some(&b"/tmp"[..]));
        assert_eq!(r.one(EXEC_FIELD_STDIN), Some(&b"in"[..]));
        assert_eq!(r.header.output_cap, 64);
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut buf = [0u8; 256];
        let n = request(&mut buf, &[(EXEC_FIELD_ENV, b"A=1")]);
        assert_eq!(
            ExecRequest::parse(&buf[..n]).unwrap_err(),
            ExecError::NoProgram
        );
        let n = request(&mut buf, &[(EXEC_FIELD_ARG, b"x"), (9, b"")]);
        assert_eq!(
            ExecRequest::parse(&buf[..n]).unwrap_err(),
            ExecError::FieldKind(9)
        );
        let n = request(
            &mut buf,
            &[
                (EXEC_FIELD_ARG, b"x"),
                (EXEC_FIELD_CWD, b"/"),
                (EXEC_FIELD_CWD, b"/"),
            ],
        );
        assert!(matches!(
            ExecRequest::parse(&buf[..n]),
            Err(ExecError::Repeated(_))
        ));
        let n = request(&mut buf, &[(EXEC_FIELD_ARG, b"abc")]);
        assert_eq!(
            ExecRequest::parse(&buf[..n - 1]).unwrap_err(),
            ExecError::Truncated
        );
        // A length near u32::MAX must not overflow or read past the body.
        buf[EXEC_REQUEST_HEADER_SIZE + 4..EXEC_REQUEST_HEADER_SIZE + 8]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            ExecRequest::parse(&buf[..n]).unwrap_err(),
            ExecError::Truncated
        );
        assert_eq!(
            ExecRequest::parse(&buf[..3]).unwrap_err(),
            ExecError::Truncated
        );
        buf[0] = 2;
        assert_eq!(
            ExecRequest::parse(&buf[..n]).unwrap_err(),
            ExecError::Version(2)
        );
    }

    #[test]
    fn lambda_flags_and_header_fields() {
        let mut buf = [0u8; 256];
        let fields: &[(u32, &[u8])] = &[
            (EXEC_FIELD_ARG, b"/var/task/bootstrap"),
            (EXEC_FIELD_HEADER, b"Lambda-Runtime-Aws-Request-Id: 1"),
            (EXEC_FIELD_STDIN, b"{}"),
        ];
        let n = request_with(&mut buf, EXEC_FLAG_LAMBDA_INVOKE, fields);
        let r = ExecRequest::parse(&buf[..n]).unwrap();
        assert_eq!(
            r.one(EXEC_FIELD_HEADER),
            Some(&b"Lambda-Runtime-Aws-Request-Id: 1"[..])
        );
        // Metadata belongs to an invocation only.
        for flags in [0, EXEC_FLAG_LAMBDA_INIT] {
            let n = request_with(&mut buf, flags, fields);
            assert_eq!(
                ExecRequest::parse(&buf[..n]).unwrap_err(),
                ExecError::FieldKind(EXEC_FIELD_HEADER)
            );
        }
        let n = request_with(&mut buf, EXEC_FLAG_LAMBDA_INIT, &fields[..1]);
        assert!(ExecRequest::parse(&buf[..n]).is_ok());
        let both = EXEC_FLAG_LAMBDA_INIT | EXEC_FLAG_LAMBDA_INVOKE;
        let n = request_with(&mut buf, both, &fields[..1]);
        assert_eq!(
            ExecRequest::parse(&buf[..n]).unwrap_err(),
            ExecError::Flags(both)
        );
    }

    #[test]
    fn results_round_trip_and_are_checked() {
        let mut buf = [0u8; 64];
        let mut w = ExecWriter::new(&mut buf);
        w.result(
            EXEC_OUTCOME_EXITED,
            3,
            EXEC_STDERR_TRUNCATED,
            b"out",
            b"err",
        )
        .unwrap();
        let n = w.len();
        let r = ExecResult::parse(&buf[..n]).unwrap();
        assert_eq!((r.stdout, r.stderr), (&b"out"[..], &b"err"[..]));
        assert_eq!((r.header.outcome, r.header.value), (EXEC_OUTCOME_EXITED, 3));
        assert_eq!(
            ExecResult::parse(&buf[..n - 1]).unwrap_err(),
            ExecError::Lengths
        );
        let mut small = [0u8; 10];
        assert_eq!(
            ExecWriter::new(&mut small)
                .result(0, 0, 0, b"", b"")
                .unwrap_err(),
            ExecError::NoRoom
        );
        buf[4] = 9;
        assert_eq!(
            ExecResult::parse(&buf[..n]).unwrap_err(),
            ExecError::Outcome(9)
        );
    }
}
