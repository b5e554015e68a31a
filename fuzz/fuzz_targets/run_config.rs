//! A TOML run config: parsed and range-checked; one that is accepted must serialise, parse
//! back to itself, and give its adapter and echo configs without a panic.
#![no_main]
use echo_trainer::RunConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = RunConfig::parse(text) {
        let again = toml::to_string(&c).expect("an accepted config serialises");
        let back = RunConfig::parse(&again).expect("a serialised config is accepted");
        assert_eq!(back, c, "the config changed through TOML:\n{again}");
        let _ = c.adapter_config(4);
        let _ = c.echo_config(4);
    }
});
