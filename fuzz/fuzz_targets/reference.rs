// Fuzzes image reference parsing (oci_cache::fuzzing::reference).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = oci_cache::fuzzing::reference(text);
    }
});
