//! The guest app must take its ABI constants from this crate, not keep
//! copies: no `const NAME` in guest/app/*.rs may reuse the name of a
//! constant this crate defines.

use std::path::{Path, PathBuf};

/// Names of the `const` items defined in the Rust files of `dir`.
fn const_names(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for line in text.lines() {
            let line = line.trim_start();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            let Some(rest) = line.strip_prefix("const ") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != "_" {
                names.push((name, file.clone()));
            }
        }
    }
    names
}

#[test]
fn guest_app_keeps_no_copy_of_an_abi_constant() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let abi: Vec<String> = const_names(&here.join("src"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(abi.iter().any(|n| n == "READY_PORT"), "parsed the crate");
    for (name, file) in const_names(&here.join("../guest/app")) {
        assert!(
            !abi.contains(&name),
            "{} defines {name}, which vmfork_guest_abi already does",
            file.display()
        );
    }
}
