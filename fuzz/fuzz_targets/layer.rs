// Fuzzes layer decompression and verification; byte 0 picks compression and limit (oci_cache::fuzzing::layer).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oci_cache::fuzzing::layer(data);
});
