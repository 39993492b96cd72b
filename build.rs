//! Gives the shared library a SONAME, so programs linked against it keep
//! working across compatible upgrades installed beside it.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liboci_cache.so.{major}");
}
