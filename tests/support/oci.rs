//! OCI image archives of several layers, with whiteouts, symlinks and an
//! image config of the test's choosing (Entrypoint, Cmd, Env,
//! WorkingDir): what a Linux image pulled from a registry looks like to
//! containerd, built in the test. Not a test target.

use crate::containerd::sha256_hex;

/// One entry of a layer's tar.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    /// `.wh.NAME` beside NAME: the layer deletes NAME from those below.
    Whiteout(&'a str),
    /// `DIR/.wh..wh..opq`: the layer hides everything below in DIR.
    Opaque(&'a str),
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add =
        |path: String, kind: tar::EntryType, mode: u32, bytes: &[u8], link: Option<&str>| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(bytes.len() as u64);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            if let Some(target) = link {
                header.set_link_name(target).expect("link name");
            }
            header.set_cksum();
            tar.append_data(&mut header, path, bytes)
                .expect("layer entry");
        };
    for entry in entries {
        match entry {
            Entry::Dir(path) => add(
                format!("{path}/"),
                tar::EntryType::Directory,
                0o755,
                &[],
                None,
            ),
            Entry::File(path, bytes, mode) => add(
                path.to_string(),
                tar::EntryType::Regular,
                *mode,
                bytes,
                None,
            ),
            Entry::Symlink(path, target) => add(
                path.to_string(),
                tar::EntryType::Symlink,
                0o777,
                &[],
                Some(target),
            ),
            Entry::Whiteout(path) => {
                let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
                let wh = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                add(wh, tar::EntryType::Regular, 0o644, &[], None)
            }
            Entry::Opaque(dir) => add(
                format!("{dir}/.wh..wh..opq"),
                tar::EntryType::Regular,
                0o644,
                &[],
                None,
            ),
        }
    }
    tar.into_inner().expect("layer tar")
}

/// An OCI image layout as a tar archive (`ctr images import` reads it):
/// `layers` bottom first, uncompressed, and `config` as the image
/// config's `config` object, for linux/amd64, named `name`.
pub fn image_archive(name: &str, layers: &[&[Entry]], config: serde_json::Value) -> Vec<u8> {
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| layer_tar(l)).collect();
    let digests: Vec<String> = tars
        .iter()
        .map(|t| format!("sha256:{}", sha256_hex(t)))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": digests },
    })
    .to_string()
    .into_bytes();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": tars.iter().zip(&digests).map(|(t, d)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d,
            "size": t.len(),
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    })
    .to_string()
    .into_bytes();
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: String, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        archive
            .append_data(&mut header, path, bytes)
            .expect("archive entry");
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    for blob in tars.iter().chain([&config, &manifest]) {
        add(format!("blobs/sha256/{}", sha256_hex(blob)), blob);
    }
    archive.into_inner().expect("archive tar")
}
