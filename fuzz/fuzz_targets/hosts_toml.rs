// Fuzzes containerd hosts.toml parsing (oci_cache::fuzzing::hosts_toml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = oci_cache::fuzzing::hosts_toml(text);
    }
});
