//! The controller's build dependency on `protoc-bin-vendored` makes cargo fetch the protoc
//! binary that `scripts/protoc` runs for etcd-client's build script (`PROTOC` in
//! `.cargo/config.toml`), so a build needs nothing beyond cargo. This checks that the crate
//! has a binary for this platform and says what to do otherwise.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("PROTOC").is_none() {
        if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
            println!("cargo:warning=no vendored protoc for this platform ({e}); install protoc and set PROTOC");
        }
    }
}
