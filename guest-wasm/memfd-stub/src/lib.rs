//! An empty stand-in for the `memfd` crate. Wasmtime's `runtime` feature
//! pulls memfd in on every Linux target, and memfd pulls in rustix with
//! std; the guest is built for x86_64-unknown-linux-gnu (the one target
//! the toolchain has) but without std, where Wasmtime uses its custom
//! platform and never touches memfd. Linking the real one would bring in
//! std and its panic handler.
#![no_std]
