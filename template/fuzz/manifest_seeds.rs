//! The manifest target's seed corpus (fuzz/corpus/manifest): manifests
//! vmfork writes, and one broken field or byte each for every rule and
//! every kind of JSON error. Names are `<class>__<what>.json`.

use serde_json::{json, Value};
use vmfork_template::manifest::{
    HostInfo, KernelInfo, Manifest, MemoryRegionInfo, TemplateKind, FORMAT_VERSION,
};

use super::GIB;

fn sample(mem_size: u64) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        kind: TemplateKind::Full,
        base: None,
        base_sha256: None,
        vcpus: 1,
        mem_size,
        memory_regions: if mem_size > 3 * GIB {
            vec![
                MemoryRegionInfo {
                    guest_addr: 0,
                    size: 3 * GIB,
                },
                MemoryRegionInfo {
                    guest_addr: 4 * GIB,
                    size: mem_size - 3 * GIB,
                },
            ]
        } else {
            vec![MemoryRegionInfo {
                guest_addr: 0,
                size: mem_size,
            }]
        },
        kernel: KernelInfo {
            source: "embedded".into(),
            sha256: "6e58096ffcc47a495751b80d13d945bc937f2f8619d0066e5f6f6d0803a7c0ec".into(),
            cmdline: "quiet=1 timer_hz=0 touch_mib=1 function=echo".into(),
        },
        host: HostInfo {
            cpu_vendor: "GenuineIntel".into(),
            cpu_model: "Intel(R) Xeon(R) Processor".into(),
            virt: "pvm".into(),
            kernel_release: "6.18.44-fc-v669".into(),
        },
        created_unix_ms: 1_795_961_239_552,
        state_bytes: 11_791,
        memory_bytes: mem_size,
        dirty_pages: None,
        rootfs: None,
        exec: None,
    }
}

/// The sample as JSON with `edit` applied to it.
fn edited(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(sample(32 << 20)).unwrap_or(Value::Null);
    edit(&mut v);
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

fn set(field: &'static str, value: Value) -> impl FnOnce(&mut Value) {
    move |v| v[field] = value
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let valid = edited(|_| {});
    let pretty = |m: &Manifest| serde_json::to_vec_pretty(m).unwrap_or_default();
    let diff = |v: &mut Value| {
        v["kind"] = json!("diff");
        v["base"] = json!("/srv/templates/base");
        v["base_sha256"] =
            json!("9f1c2b7e44d0a6b1c3e5f7a9b2d4c6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9");
        v["dirty_pages"] = json!(37);
    };
    let rootfs = |v: &mut Value| {
        v["rootfs"] = json!({
            "path": "/srv/images/rootfs.ext4",
            "size": 64u64 << 20,
            "dev": 65024,
            "ino": 10174524,
            "mtime_ns": 1_796_478_761_170_281_250i64,
            "sha256": "2b07811057df887086f06a67edc6ebf911de8b6741156e7a2eb1416a4b8b1b2e",
        });
    };
    let big = Manifest {
        vcpus: 8,
        ..sample(6 * GIB)
    };
    let regions = |list: Value| set("memory_regions", list);
    let kernel =
        |field: &'static str, value: Value| move |v: &mut Value| v["kernel"][field] = value;
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("ok__full", valid.clone()),
        ("ok__rootfs", edited(rootfs)),
        (
            "ok__diff-with-rootfs",
            edited(|v| {
                diff(v);
                rootfs(v);
            }),
        ),
        (
            "ok__full-without-rootfs-field",
            edited(|v| {
                v.as_object_mut().map(|m| m.remove("rootfs"));
            }),
        ),
        (
            // What vmfork wrote before templates recorded a rootfs image.
            "version__three-full",
            edited(|v| {
                v["format_version"] = json!(3);
                v.as_object_mut().map(|m| m.remove("rootfs"));
            }),
        ),
        (
            "invalid__rootfs-relative-path",
            edited(|v| {
                rootfs(v);
                v["rootfs"]["path"] = json!("rootfs.img");
            }),
        ),
        (
            "invalid__rootfs-size-unaligned",
            edited(|v| {
                rootfs(v);
                v["rootfs"]["size"] = json!((64 << 20) + 4096);
            }),
        ),
        (
            "invalid__rootfs-size-zero",
            edited(|v| {
                rootfs(v);
                v["rootfs"]["size"] = json!(0);
            }),
        ),
        (
            "invalid__rootfs-sha256-short",
            edited(|v| {
                rootfs(v);
                v["rootfs"]["sha256"] = json!("ab");
            }),
        ),
        (
            "malformed__rootfs-unknown-field",
            edited(|v| {
                rootfs(v);
                v["rootfs"]["ctime_ns"] = json!(1);
            }),
        ),
        (
            "malformed__rootfs-negative-size",
            edited(|v| {
                rootfs(v);
                v["rootfs"]["size"] = json!(-1);
            }),
        ),
        ("ok__diff", edited(diff)),
        ("ok__six-gib", pretty(&big)),
        ("ok__exactly-three-gib", pretty(&sample(3 * GIB))),
        (
            "ok__compact",
            serde_json::to_vec(&sample(64 << 20)).unwrap_or_default(),
        ),
        (
            "ok__escaped-strings",
            edited(set(
                "host",
                json!({
            "cpu_vendor": "\u{e9}\u{1f600}", "cpu_model": "tab\there", "virt": "",
            "kernel_release": "\"quoted\" \\ back"}),
            )),
        ),
        ("malformed__empty", vec![]),
        ("malformed__script", b"#!/bin/sh\nexec vmfork\n".to_vec()),
        ("malformed__truncated", valid[..valid.len() / 2].to_vec()),
        (
            "malformed__trailing-junk",
            [valid.clone(), b"x".to_vec()].concat(),
        ),
        (
            "malformed__bom",
            [b"\xef\xbb\xbf".to_vec(), valid.clone()].concat(),
        ),
        ("malformed__unknown-field", edited(set("extra", json!(1)))),
        (
            "malformed__unknown-nested-field",
            edited(kernel("initrd", json!("/x"))),
        ),
        (
            "malformed__missing-field",
            edited(|v| {
                v.as_object_mut().map(|m| m.remove("vcpus"));
            }),
        ),
        ("malformed__wrong-type", edited(set("vcpus", json!("1")))),
        ("malformed__negative", edited(set("vcpus", json!(-1)))),
        ("malformed__float", edited(set("vcpus", json!(1.5)))),
        (
            "malformed__vcpus-over-u32",
            edited(set("vcpus", json!(1u64 << 32))),
        ),
        (
            "malformed__unknown-kind",
            edited(set("kind", json!("partial"))),
        ),
        (
            "malformed__kind-with-newline",
            edited(set("kind", json!("a\nb"))),
        ),
        (
            "malformed__kind-long",
            edited(set("kind", json!("k".repeat(60_000)))),
        ),
        ("malformed__nested-arrays", deep.into_bytes()),
        ("version__zero", edited(set("format_version", json!(0)))),
        (
            "version__next",
            edited(set("format_version", json!(FORMAT_VERSION + 1))),
        ),
        (
            // What vmfork wrote before diffs recorded their base's digest.
            "version__two-full",
            edited(set("format_version", json!(2))),
        ),
        (
            "version__two-diff",
            edited(|v| {
                diff(v);
                v["format_version"] = json!(2);
                v.as_object_mut().map(|m| m.remove("base_sha256"));
            }),
        ),
        (
            "ok__full-without-base-sha256-field",
            edited(|v| {
                v.as_object_mut().map(|m| m.remove("base_sha256"));
            }),
        ),
        (
            "invalid__diff-without-base",
            edited(|v| {
                diff(v);
                v["base"] = Value::Null;
            }),
        ),
        (
            "invalid__diff-without-dirty-pages",
            edited(|v| {
                diff(v);
                v["dirty_pages"] = Value::Null;
            }),
        ),
        (
            "invalid__diff-without-base-sha256",
            edited(|v| {
                diff(v);
                v["base_sha256"] = Value::Null;
            }),
        ),
        (
            "invalid__diff-base-sha256-short",
            edited(|v| {
                diff(v);
                v["base_sha256"] = json!("9f1c");
            }),
        ),
        (
            "invalid__diff-base-sha256-uppercase",
            edited(|v| {
                diff(v);
                v["base_sha256"] = json!("AB".repeat(32));
            }),
        ),
        (
            "invalid__diff-relative-base",
            edited(|v| {
                diff(v);
                v["base"] = json!("templates/base");
            }),
        ),
        (
            "invalid__full-with-base-sha256",
            edited(set("base_sha256", json!("ab".repeat(32)))),
        ),
        (
            "invalid__full-with-base",
            edited(set("base", json!("/srv/base"))),
        ),
        (
            "invalid__full-with-dirty-pages",
            edited(set("dirty_pages", json!(1))),
        ),
        (
            "invalid__empty-base",
            edited(|v| {
                diff(v);
                v["base"] = json!("");
            }),
        ),
        (
            "invalid__dirty-pages-over-memory",
            edited(|v| {
                diff(v);
                v["dirty_pages"] = json!(8193);
            }),
        ),
        ("invalid__vcpus-zero", edited(set("vcpus", json!(0)))),
        ("invalid__vcpus-255", edited(set("vcpus", json!(255)))),
        ("invalid__vcpus-max", edited(set("vcpus", json!(u32::MAX)))),
        (
            "invalid__mem-size-zero",
            edited(|v| {
                v["mem_size"] = json!(0);
                v["memory_bytes"] = json!(0);
                v["memory_regions"] = json!([]);
            }),
        ),
        (
            "invalid__mem-size-unaligned",
            edited(set("mem_size", json!((32 << 20) + 1))),
        ),
        (
            "invalid__mem-size-max",
            edited(set("mem_size", json!(u64::MAX))),
        ),
        (
            "invalid__mem-size-disagrees",
            edited(set("mem_size", json!(64 << 20))),
        ),
        (
            "invalid__regions-thousands",
            edited(regions(Value::Array(vec![
                json!({"guest_addr": 0, "size": 4096});
                3000
            ]))),
        ),
        ("invalid__regions-empty", edited(regions(json!([])))),
        (
            "invalid__regions-split",
            edited(regions(json!([
            {"guest_addr": 0, "size": 16 << 20}, {"guest_addr": 16 << 20, "size": 16 << 20}]))),
        ),
        (
            "invalid__regions-overlap",
            edited(regions(json!([
            {"guest_addr": 0, "size": 32 << 20}, {"guest_addr": 4096, "size": 4096}]))),
        ),
        (
            "invalid__region-wraps",
            edited(regions(json!([
            {"guest_addr": u64::MAX - 4095, "size": 32 << 20}]))),
        ),
        (
            "invalid__region-in-mmio-gap",
            edited(regions(json!([
            {"guest_addr": 3 * GIB, "size": 32 << 20}]))),
        ),
        (
            "invalid__memory-bytes",
            edited(set("memory_bytes", json!(4096))),
        ),
        (
            "invalid__state-bytes-zero",
            edited(set("state_bytes", json!(0))),
        ),
        (
            "invalid__state-bytes-max",
            edited(set("state_bytes", json!(u64::MAX))),
        ),
        ("invalid__source-empty", edited(kernel("source", json!("")))),
        (
            "invalid__sha256-uppercase",
            edited(kernel("sha256", json!("AB".repeat(32)))),
        ),
        (
            "invalid__sha256-short",
            edited(kernel("sha256", json!("abc"))),
        ),
        (
            "invalid__cmdline-nul",
            edited(kernel("cmdline", json!("quiet=1\u{0}x"))),
        ),
        (
            "invalid__cmdline-long",
            edited(kernel("cmdline", json!("x".repeat(4096)))),
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| (format!("{name}.json"), bytes))
        .collect()
}
