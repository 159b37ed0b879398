#![no_main]
// Everything read off a disk: `.idx` slots, extent headers, `member.toml`, and records from the wire.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hoard_volume::fuzzing::idx_record(data);
    hoard_volume::fuzzing::extent_headers(data);
    hoard_volume::fuzzing::member_file(data);
    hoard_volume::fuzzing::wire_record(data);
});
