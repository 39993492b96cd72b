// Fuzzes docker/podman auth file parsing and its entries (oci_cache::fuzzing::auth_file).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oci_cache::fuzzing::auth_file(data);
});
