//! Gives the shared library a SONAME, so programs linked against it keep
//! working across compatible upgrades installed beside it.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liboci_cache.so.{major}");
    // Without this, cargo reruns the script (and rebuilds the crate) when any
    // file in the package changes, such as the Go file `make lib` writes.
    println!("cargo:rerun-if-changed=build.rs");
}
