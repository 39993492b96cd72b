// Fuzzes platform parsing and its Display round trip (oci_cache::fuzzing::platform).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = oci_cache::fuzzing::platform(text);
    }
});
