//! The guest channel target's seed corpus (fuzz/corpus/mailbox): scripts
//! for each documented response and signal, and the edge cases: lengths at
//! and past the 2 MiB bound, unknown statuses, RAM that ends or has a hole
//! in the mailbox, port accesses of every size at the ready port and its
//! neighbours. Names are `<class of the last read>__<what>.bin`.

use vmfork_serve::mailbox::MAX_BODY;

use super::{REQUEST_HEADER, RESPONSE_DATA};

/// A script: layout, then ops, built with the encoders below.
fn script(layout: u8, ops: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![layout];
    for op in ops {
        out.extend_from_slice(op);
    }
    out
}

/// Port field that selects the ready port (raw % 4 == 0).
const AT_READY: [u8; 2] = [0, 0];

fn out32(value: u32) -> Vec<u8> {
    [&[0u8][..], &AT_READY, &[4], &value.to_le_bytes()].concat()
}

fn out_at(port_field: u16, data: &[u8]) -> Vec<u8> {
    [
        &[0u8][..],
        &port_field.to_le_bytes(),
        &[data.len() as u8],
        data,
    ]
    .concat()
}

fn in_at(port_field: u16, size: u8, command: u32) -> Vec<u8> {
    [
        &[1u8][..],
        &port_field.to_le_bytes(),
        &[size],
        &command.to_le_bytes(),
    ]
    .concat()
}

fn header(magic: &[u8; 4], len: u32, status: u32, invocations: u32) -> Vec<u8> {
    [
        &[3u8][..],
        magic,
        &len.to_le_bytes(),
        &status.to_le_bytes(),
        &invocations.to_le_bytes(),
    ]
    .concat()
}

fn poke(offset: u32, bytes: &[u8]) -> Vec<u8> {
    [
        &[2u8][..],
        &offset.to_le_bytes()[..3],
        &[bytes.len() as u8],
        bytes,
    ]
    .concat()
}

fn fill(offset: u32, len: u32, byte: u8) -> Vec<u8> {
    [
        &[4u8][..],
        &offset.to_le_bytes()[..3],
        &len.to_le_bytes()[..3],
        &[byte],
    ]
    .concat()
}

fn request(len: u32, byte: u8) -> Vec<u8> {
    [&[6u8][..], &len.to_le_bytes()[..3], &[byte]].concat()
}

/// A port field selecting `READY_PORT - 8 + k`.
fn near(k: u16) -> u16 {
    (k << 2) | 2
}

/// A port field selecting any port below 0x1000.
fn any_port(port: u16) -> u16 {
    (port << 2) | 3
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let body_at = (RESPONSE_DATA - REQUEST_HEADER) as u32;
    let ok = |len: u32, status: u32| header(b"VMRS", len, status, 1);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "ok__echo",
            script(
                0,
                &[
                    request(5, b'h'),
                    poke(body_at, b"hello"),
                    ok(5, 0),
                    out32(0x4143_0001),
                ],
            ),
        ),
        ("ok__empty-body", script(0, &[ok(0, 0)])),
        (
            "ok__max-body",
            script(0, &[fill(0x1000, 0x1f_f000, b'x'), ok(MAX_BODY as u32, 0)]),
        ),
        (
            "rejected__message",
            script(0, &[poke(body_at, b"invalid JSON"), ok(12, 1)]),
        ),
        ("bad-request__no-function", script(0, &[ok(0, 2)])),
        ("malformed__zero-memory", script(0, &[])),
        (
            "malformed__bad-magic",
            script(0, &[header(b"VMRQ", 3, 0, 1)]),
        ),
        (
            "malformed__length-over-max",
            script(0, &[ok(MAX_BODY as u32 + 1, 0)]),
        ),
        ("malformed__length-max", script(0, &[ok(u32::MAX, 0)])),
        ("malformed__status-3", script(0, &[ok(0, 3)])),
        ("malformed__status-max", script(0, &[ok(0, u32::MAX)])),
        (
            "rejected__rewritten-after-read",
            script(0, &[ok(1, 0), vec![5], ok(4, 1)]),
        ),
        (
            "malformed__request-left-in-place",
            script(0, &[request(100, 1)]),
        ),
        ("unmapped__ram-ends-in-body", script(1, &[ok(0x2000, 0)])),
        ("ok__ram-ends-after-short-body", script(1, &[ok(0x1000, 0)])),
        ("unmapped__ram-ends-after-header", script(2, &[ok(1, 0)])),
        ("unmapped__no-response-header", script(3, &[ok(1, 0)])),
        ("unmapped__hole-in-body", script(4, &[ok(0x9_0000, 0)])),
        (
            "unmapped__no-mailbox",
            script(5, &[request(10, 0), ok(0, 0)]),
        ),
        (
            "malformed__request-too-large",
            script(0, &[request(MAX_BODY as u32 + 1, 0)]),
        ),
        (
            "malformed__every-signal",
            script(
                0,
                &[
                    out32(0x5245_4459),
                    out32(0x4143_ffff),
                    out32(0x4558_0100),
                    out32(0x504e_0100),
                    out32(0x4558_00ff),
                    out32(0x504e_0006),
                    out32(0xffff_ffff),
                    out32(0),
                ],
            ),
        ),
        (
            "malformed__narrow-writes",
            script(
                0,
                &[
                    out_at(0, &[0x59]),
                    out_at(0, &[0x59, 0x44]),
                    out_at(0, &[]),
                    out_at(0, &[0x59, 0x44, 0x45, 0x52, 0, 0, 0, 0]),
                ],
            ),
        ),
        (
            "malformed__reads-of-every-size",
            script(
                0,
                &[
                    in_at(0, 0, 1),
                    in_at(0, 1, 0x0403_0201),
                    in_at(0, 2, 5),
                    in_at(0, 4, 2),
                    in_at(0, 8, u32::MAX),
                ],
            ),
        ),
        (
            "malformed__neighbour-ports",
            script(
                0,
                &[
                    out_at(near(7), &0x5245_4459u32.to_le_bytes()),
                    out_at(near(9), &[1, 2, 3, 4]),
                    out_at(near(6), &[0x59, 0x44]),
                    in_at(near(9), 4, 1),
                    in_at(near(5), 2, 1),
                    in_at(near(16), 8, 1),
                    in_at(near(0), 1, 1),
                ],
            ),
        ),
        (
            "malformed__other-ports",
            script(
                0,
                &[
                    out_at(any_port(0x3f8), b"hi"),
                    in_at(any_port(0x3fd), 4, 0),
                    out_at(any_port(0x80), &[0x80]),
                    out_at(any_port(0x64), &[0xfe]),
                    out_at(any_port(0x64), &[0xfe, 0]),
                    in_at(any_port(0x64), 1, 0),
                    in_at(any_port(0xfff), 4, 0),
                ],
            ),
        ),
        (
            "malformed__exit-then-commands",
            script(
                0,
                &[
                    out32(0x4558_0003),
                    in_at(0, 4, 1),
                    out32(0x504e_00ff),
                    out32(0x4143_0002),
                ],
            ),
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| (format!("{name}.bin"), bytes))
        .collect()
}
