// Fuzzes manifest and index parsing and their descriptors (oci_cache::fuzzing::manifest).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oci_cache::fuzzing::manifest(data);
});
